//! The conditions of a list query, written only for the filters given: a
//! condition like `($1 IS NULL OR agent = $1)` keeps a prepared statement from
//! using the index on `agent` (a generic plan must serve both cases), so each
//! query names only what it filters by, with its arguments numbered in order.
use super::arg::Arg;

#[derive(Default)]
pub(super) struct Filter<'a> {
    conditions: Vec<String>,
    args: Vec<Arg<'a>>,
}

impl<'a> Filter<'a> {
    /// The next argument's placeholder.
    pub fn next(&self) -> String {
        format!("${}", self.args.len() + 1)
    }

    /// Adds `condition`, whose `?` is replaced by `arg`'s placeholder.
    pub fn and(&mut self, condition: &str, arg: impl Into<Arg<'a>>) -> &mut Self {
        let placeholder = self.next();
        self.conditions.push(condition.replace('?', &placeholder));
        self.args.push(arg.into());
        self
    }

    /// Adds `condition` with `arg` when there is one.
    pub fn and_some<T: Into<Arg<'a>>>(&mut self, condition: &str, arg: Option<T>) -> &mut Self {
        if let Some(arg) = arg {
            self.and(condition, arg);
        }
        self
    }

    /// `AND`-joined conditions (`TRUE` when there are none).
    pub fn conditions(&self) -> String {
        match self.conditions.is_empty() {
            true => "1 = 1".into(),
            false => self.conditions.join(" AND "),
        }
    }

    /// Binds one more argument, for the query around the conditions (a limit):
    /// its placeholder.
    pub fn arg(&mut self, arg: impl Into<Arg<'a>>) -> String {
        let placeholder = self.next();
        self.args.push(arg.into());
        placeholder
    }

    pub fn args(self) -> Vec<Arg<'a>> {
        self.args
    }
}
