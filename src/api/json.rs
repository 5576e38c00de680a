//! How the messages the services answer with show as JSON (the CLI's `--output
//! json`): the serializers that build.rs attaches to their fields, and the
//! `Serialize` of their oneofs. The conventions are listed in build.rs.
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

/// An enum field: the value's name without the enum's prefix, in lower case (the
/// enum's own derive); a number it does not know, quoted.
pub fn enumeration<E, S>(v: &i32, s: S) -> Result<S::Ok, S::Error>
where
    E: TryFrom<i32> + Serialize,
    S: Serializer,
{
    match E::try_from(*v) {
        Ok(e) => e.serialize(s),
        Err(_) => s.collect_str(v),
    }
}

/// A time: RFC 3339 in UTC, to the second; unset (or beyond the calendar), null.
pub fn timestamp<S: Serializer>(
    t: &Option<prost_types::Timestamp>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let text = t.as_ref().and_then(|t| {
        time::OffsetDateTime::from_unix_timestamp(t.seconds)
            .ok()?
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    text.serialize(s)
}

/// A string that holds JSON text: the JSON it holds; null when it holds none.
/// An empty string as `null` (build.rs `EMPTY_IS_NONE`).
pub fn empty_is_none<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    match v {
        "" => s.serialize_none(),
        v => s.serialize_str(v),
    }
}

pub fn json_text<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    serde_json::from_str::<serde_json::Value>(v)
        .unwrap_or(serde_json::Value::Null)
        .serialize(s)
}

/// A oneof's member: `{"name": value}`.
pub fn member<S: Serializer, T: Serialize + ?Sized>(
    s: S,
    name: &str,
    v: &T,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry(name, v)?;
    map.end()
}

/// A oneof's `bool` member, a marker that must be true: its name; false (which
/// the broker refuses) as it is.
pub fn marker<S: Serializer>(s: S, name: &str, v: &bool) -> Result<S::Ok, S::Error> {
    if *v {
        s.serialize_str(name)
    } else {
        member(s, name, v)
    }
}

include!(concat!(env!("OUT_DIR"), "/mayfly_json.rs"));

#[cfg(test)]
mod tests;
