//! How a command's result is shown: JSON, a table for people, or one field as
//! text for scripts; a closed stdout ends a command quietly.
use super::{Failed, exit};
use crate::cli::Output;
use serde::Serialize;
use serde_json::Value;

/// Where a command's result goes and how: JSON or a table, or one field as text
/// (`--field`). Made once per command from its flags and passed to it.
pub struct Printer {
    output: Output,
    field: Option<String>,
}

/// The field a dotted path names in `v`, as plain text (a string without quotes,
/// anything else as compact JSON).
pub fn field_text(v: &Value, path: &str) -> Option<String> {
    let mut at = v;
    for part in path.split('.') {
        at = match at {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(match at {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

impl Printer {
    pub fn new(output: Output, field: Option<String>) -> Self {
        Printer { output, field }
    }

    /// Prints a command's result.
    pub fn print(&self, v: &impl Serialize) -> anyhow::Result<()> {
        let v = &serde_json::to_value(v)?;
        if let Some(path) = &self.field {
            let text = field_text(v, path).ok_or_else(|| Failed {
                code: exit::USAGE,
                message: format!(
                    "--field {path}: the result has no such field; it has: {}",
                    match v {
                        Value::Object(m) => m.keys().cloned().collect::<Vec<_>>().join(", "),
                        _ => "no fields".into(),
                    }
                ),
            })?;
            return emit(&format!("{text}\n"));
        }
        match self.output {
            Output::Json => emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
            )),
            Output::Table => emit(&table(v)),
        }
    }

    /// Prints a command's result as [`Printer::print`] does, but to people as
    /// `text` rather than as the table of its fields.
    pub fn print_or_text(
        &self,
        v: &impl Serialize,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        match (self.output, &self.field) {
            (Output::Table, None) => emit(&text()),
            _ => self.print(v),
        }
    }

    /// A stream's line: a closed stdout ends the stream (`Ok(false)`).
    pub fn emit_line(&self, text: &str) -> anyhow::Result<bool> {
        match emit(&format!("{text}\n")) {
            Err(e) if e.is::<StdoutClosed>() => Ok(false),
            r => r.map(|()| true),
        }
    }
}

/// A message as JSON without the fields a command does not show.
pub fn without(v: &impl Serialize, fields: &[&str]) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(v)?;
    if let Value::Object(m) = &mut v {
        for f in fields {
            m.shift_remove(*f);
        }
    }
    Ok(v)
}

/// Stdout's reader went away (`mayfly watch | head`): the binary exits quietly
/// with 141, as a process killed by SIGPIPE does; the streaming commands (`watch`,
/// `audit events --jsonl`) end with success instead, as their reader chose to stop.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Writes to stdout.
pub(super) fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        r => Ok(r?),
    }
}

/// A value for people: a list of records as a table (a column per field), a
/// record as aligned `field  value` lines, nested values as compact JSON.
pub fn table(v: &Value) -> String {
    fn cell(v: &Value) -> String {
        match v {
            Value::Null => "-".into(),
            Value::String(s) if s.is_empty() => "-".into(),
            Value::String(s) => safe(s),
            other => other.to_string(),
        }
    }
    // Text from the broker (an objective, a reason) is shown escaped where it could
    // fake rows or reorder what a person reads: the characters the broker refuses
    // in such text (`domain::text`), which text stored before that rule may hold.
    fn safe(s: &str) -> String {
        s.chars()
            .flat_map(|c| {
                let shown: Vec<char> = if crate::domain::text::is_hidden(c) {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                shown
            })
            .collect()
    }
    match v {
        Value::Array(rows) if rows.is_empty() => "(none)\n".into(),
        Value::Array(rows) => {
            let mut columns: Vec<String> = vec![];
            for r in rows {
                if let Value::Object(m) = r {
                    for k in m.keys() {
                        if !columns.contains(k) {
                            columns.push(k.clone());
                        }
                    }
                }
            }
            if columns.is_empty() {
                return rows.iter().map(|r| cell(r) + "\n").collect();
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| columns.iter().map(|c| cell(&r[c.as_str()])).collect())
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |row: Vec<String>| {
                let padded: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(s, w)| format!("{s:<w$}"))
                    .collect();
                padded.join("  ").trim_end().to_string() + "\n"
            };
            let mut out = line(columns.iter().map(|c| c.to_uppercase()).collect());
            for row in cells {
                out.push_str(&line(row));
            }
            out
        }
        Value::Object(m) => {
            let w = m.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            m.iter()
                .map(|(k, v)| format!("{k:<w$}  {}\n", cell(v)))
                .collect()
        }
        other => cell(other) + "\n",
    }
}
