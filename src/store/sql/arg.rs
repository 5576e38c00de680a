//! A statement's typed arguments, which `driver` binds as each database stores
//! them.
use crate::domain::SpiffeId;
use crate::store::StoreError;
use std::borrow::Cow;
use time::OffsetDateTime;
use uuid::Uuid;

/// One typed argument of a statement.
#[derive(Debug, Clone)]
pub(super) enum Arg<'a> {
    Uuid(Option<Uuid>),
    Time(Option<OffsetDateTime>),
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
    Bool(bool),
    Json(Cow<'a, serde_json::Value>),
    Bytes(&'a [u8]),
    /// One value per row, for a statement whose text is the same for any number
    /// of rows (prepared once).
    List(List<'a>),
}

/// A list of values of one type.
#[derive(Debug, Clone)]
pub(super) enum List<'a> {
    Uuid(Vec<Option<Uuid>>),
    Time(Vec<OffsetDateTime>),
    Text(Vec<Option<&'a str>>),
    Json(Vec<&'a serde_json::Value>),
    Int(Vec<i64>),
}

/// `Arg`s from each type, made by `$how`.
macro_rules! args {
    ($($t:ty => |$v:ident| $how:expr;)*) => {
        $(impl<'a> From<$t> for Arg<'a> {
            fn from($v: $t) -> Self {
                $how
            }
        })*
    };
}

args! {
    Uuid => |v| Arg::Uuid(Some(v));
    Option<Uuid> => |v| Arg::Uuid(v);
    OffsetDateTime => |v| Arg::Time(Some(v));
    Option<OffsetDateTime> => |v| Arg::Time(v);
    &'a str => |v| Arg::Text(Some(Cow::Borrowed(v)));
    &'a String => |v| Arg::Text(Some(Cow::Borrowed(v)));
    String => |v| Arg::Text(Some(Cow::Owned(v)));
    Option<&'a str> => |v| Arg::Text(v.map(Cow::Borrowed));
    &'a Option<String> => |v| Arg::Text(v.as_deref().map(Cow::Borrowed));
    // A SPIFFE ID is stored as its text.
    &'a SpiffeId => |v| Arg::Text(Some(Cow::Borrowed(v.as_str())));
    Option<&'a SpiffeId> => |v| Arg::Text(v.map(|v| Cow::Borrowed(v.as_str())));
    &'a Option<SpiffeId> => |v| Arg::Text(v.as_ref().map(|v| Cow::Borrowed(v.as_str())));
    i64 => |v| Arg::Int(Some(v));
    u32 => |v| Arg::Int(Some(i64::from(v)));
    // A position or count beyond `i64::MAX` reads as `i64::MAX`.
    u64 => |v| Arg::Int(Some(i64::try_from(v).unwrap_or(i64::MAX)));
    bool => |v| Arg::Bool(v);
    serde_json::Value => |v| Arg::Json(Cow::Owned(v));
    &'a serde_json::Value => |v| Arg::Json(Cow::Borrowed(v));
    &'a [u8] => |v| Arg::Bytes(v);
    &'a Vec<u8> => |v| Arg::Bytes(v);
    List<'a> => |v| Arg::List(v);
}

/// A JSON argument from anything serialisable.
pub(super) fn json(v: &impl serde::Serialize) -> Result<Arg<'static>, StoreError> {
    serde_json::to_value(v)
        .map(|v| Arg::Json(Cow::Owned(v)))
        .map_err(|e| StoreError::Other(format!("encoding JSON: {e}")))
}
