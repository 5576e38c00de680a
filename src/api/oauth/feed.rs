//! The revocation feed: the revocation watch (`broker::watch`, the stream gRPC's
//! `WatchRevocations` serves) as Server-Sent Events, for resource servers that
//! cannot hold a gRPC stream. Each event's `id:` is its sequence, so that an
//! EventSource client resumes where it was with `Last-Event-ID`; heartbeats
//! carry the head and no `id:`; a cursor the store cannot serve is refused
//! with 409 before the stream opens, and ends an open stream with a last
//! `event: resync`.
use super::super::verifier::VERIFIERS;
use super::{Form, OauthState, answer};

use crate::domain::text::{quote, rfc3339};
use crate::error::oauth::OauthError;
use crate::identity::ConnInfo;
use crate::revocation::{Pace, WatchError, Watched};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use std::convert::Infallible;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The endpoint, as refusals are audited.
const ENDPOINT: &str = "GET /oauth/revocations";
/// The header an EventSource client sends when it reconnects: the `id:` of the
/// last event it received.
const LAST_EVENT_ID: &str = "last-event-id";
/// What the feed needs besides the front door's state.
#[derive(Clone)]
pub(super) struct Feed {
    state: OauthState,
    pace: Pace,
    /// Cancelled at shutdown: every feed ends (and its connection can close).
    shutdown: CancellationToken,
}

impl Feed {
    pub(super) fn new(state: &OauthState) -> Self {
        Feed {
            pace: state.watch,
            shutdown: state.shutdown.clone(),
            state: state.clone(),
        }
    }
}

pub(super) async fn feed(State(f): State<Feed>, req: Request) -> Response {
    answer(open(&f, req).await)
}

async fn open(f: &Feed, req: Request) -> Result<Response, OauthError> {
    // A GET: its body, if any, is never read.
    let (parts, _) = req.into_parts();
    let caller = f
        .state
        .auth
        .check(parts.extensions.get::<ConnInfo>(), ENDPOINT, VERIFIERS)
        .await?;
    let Cursor { after, at } = Cursor::parse(&parts.headers, parts.uri.query())?;
    let watch = f
        .state
        .broker
        .watch_revocations(&caller, after, at, f.pace, f.shutdown.clone())
        .await
        .map_err(OauthError::from)?;
    // The watch yields at most one error, last: it becomes the last message.
    let messages = watch.map(|item| {
        Ok::<_, Infallible>(match item {
            Ok(watched) => message(&watched),
            Err(e) => ending(e),
        })
    });
    let mut resp = Sse::new(messages).into_response();
    // Sse says `no-cache`; what a verifier is told is revoked is nobody's to keep.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Where a feed starts: after sequence `after`, whose event the client may say
/// was at `at`.
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    after: u64,
    at: Option<OffsetDateTime>,
}

impl Cursor {
    /// From `Last-Event-ID` (what an EventSource client sends when it
    /// reconnects) or the query's `after` (and `after_event_at`, the time of
    /// that event, as gRPC's `after_event_at`); neither: from the start.
    ///
    /// Both: an EventSource client opened at `?after=N` reconnects to the same
    /// URL, with the `id:` of the last event it received, which is later. That
    /// one is where it stands, and `after_event_at` (the time of event N) no
    /// longer applies. A `Last-Event-ID` before `after` contradicts it: refused.
    fn parse(headers: &HeaderMap, query: Option<&str>) -> Result<Cursor, OauthError> {
        // As a form: each parameter at most once, an empty one as if omitted,
        // others ignored.
        let q = Form::parse(query.unwrap_or_default().as_bytes())?;
        let after = q.get("after").map(|v| sequence("after", v)).transpose()?;
        let at =
            q.get("after_event_at")
                .map(|v| {
                    OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| {
                            OauthError::invalid(
                                "after_event_at",
                                format!("is not an RFC 3339 time: {}", quote(v)),
                            )
                        })
                })
                .transpose()?;
        let mut ids = headers.get_all(LAST_EVENT_ID).iter();
        let last = match (ids.next(), ids.next()) {
            (Some(_), Some(_)) => {
                return Err(OauthError::invalid(
                    "Last-Event-ID",
                    "is given more than once",
                ));
            }
            (Some(v), None) => {
                let v = v.to_str().map_err(|_| {
                    OauthError::invalid("Last-Event-ID", "is not a sequence number")
                })?;
                // The SSE spec's "no last event ID".
                (!v.is_empty())
                    .then(|| sequence("Last-Event-ID", v))
                    .transpose()?
            }
            (None, _) => None,
        };
        if at.is_some() && after.is_none_or(|a| a == 0) {
            return Err(OauthError::invalid(
                "after_event_at",
                "is the time of the event at `after`, which is not given",
            ));
        }
        match (last, after) {
            (Some(last), Some(after)) if last < after => Err(OauthError::invalid(
                "Last-Event-ID",
                format!("is {last}, before after={after}: they cannot both be the last event seen"),
            )),
            (Some(last), Some(after)) if last == after => Ok(Cursor { after, at }),
            (Some(last), _) => Ok(Cursor {
                after: last,
                at: None,
            }),
            (None, after) => Ok(Cursor {
                after: after.unwrap_or(0),
                at,
            }),
        }
    }
}

/// A sequence number: decimal digits only (no sign, no spaces).
fn sequence(name: &str, v: &str) -> Result<u64, OauthError> {
    v.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| v.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| OauthError::invalid(name, format!("is not a sequence number: {}", quote(v))))
}

/// An event or a heartbeat as an SSE message. The data is JSON on one line
/// (serde_json escapes every control character in a string), so no value can
/// break the framing; an event names a token by its `jti` only.
fn message(w: &Watched) -> Event {
    match w {
        Watched::Event(e) => {
            let r = &e.revocation;
            let target = match &r.target {
                crate::domain::Target::All => json!({"all": true}),
                t => Value::Object(
                    [(t.kind().to_string(), t.value().into())]
                        .into_iter()
                        .collect(),
                ),
            };
            let data = json!({
                "sequence": e.seq,
                "target": target,
                "reason": r.reason,
                "actor": r.actor,
                "trigger": r.trigger.as_str(),
                "at": rfc3339(r.at),
            });
            Event::default()
                .id(e.seq.to_string())
                .event("revocation")
                .data(data.to_string())
        }
        // No `id:`: the client's Last-Event-ID stays its last event.
        Watched::Heartbeat { head, at } => Event::default()
            .event("heartbeat")
            .data(json!({"head": head, "at": rfc3339(*at)}).to_string()),
    }
}

/// The last message of a feed that ends for `e`. An EventSource client
/// reconnects by itself once the stream ends; after `resync` it would be
/// refused its cursor (409), so it must start again without one.
fn ending(e: WatchError) -> Event {
    let (event, data) = match e {
        WatchError::Resync(r) => (
            "resync",
            json!({
                "error_description": r.to_string(),
                "first": r.bounds.first,
                "head": r.bounds.head,
            }),
        ),
        other => {
            let o = OauthError::from(other);
            (
                "error",
                json!({"error": o.code.as_str(), "error_description": o.description}),
            )
        }
    };
    Event::default().event(event).data(data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Revocation, Target, Trigger};
    use crate::error::oauth::Code;
    use crate::revocation::Resync;
    use crate::store::RevocationBounds;

    fn cursor(last: &[&str], query: Option<&str>) -> Result<Cursor, OauthError> {
        let mut h = HeaderMap::new();
        for v in last {
            h.append(LAST_EVENT_ID, HeaderValue::from_str(v).unwrap());
        }
        Cursor::parse(&h, query)
    }

    fn at(rfc3339: &str) -> OffsetDateTime {
        OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap()
    }

    /// What the client reads for `messages`: the response body as sent.
    async fn wire(messages: Vec<Event>) -> String {
        let stream = futures::stream::iter(messages.into_iter().map(Ok::<_, Infallible>));
        let body = Sse::new(stream).into_response().into_body();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn the_cursor_is_the_last_event_id_or_after_or_the_start() {
        let start = Cursor { after: 0, at: None };
        let after = |after| Cursor { after, at: None };
        assert_eq!(cursor(&[], None).unwrap(), start);
        assert_eq!(cursor(&[], Some("")).unwrap(), start);
        assert_eq!(cursor(&[], Some("after=")).unwrap(), start);
        assert_eq!(cursor(&[""], None).unwrap(), start);
        assert_eq!(cursor(&["7"], None).unwrap(), after(7));
        assert_eq!(cursor(&[], Some("after=7")).unwrap(), after(7));
        assert_eq!(cursor(&["7"], Some("after=7")).unwrap(), after(7));
        // Parameters the feed does not know are ignored.
        assert_eq!(cursor(&[], Some("after=7&x=1")).unwrap(), after(7));
        let t = "2030-01-02T03:04:05.123456Z";
        assert_eq!(
            cursor(&[], Some(&format!("after=7&after_event_at={t}"))).unwrap(),
            Cursor {
                after: 7,
                at: Some(at(t))
            }
        );
    }

    #[test]
    fn an_event_source_reconnecting_to_its_after_url_resumes_at_its_last_event_id() {
        let t = "2030-01-02T03:04:05Z";
        let q = format!("after=7&after_event_at={t}");
        // The time was event 7's: it does not apply to 9.
        assert_eq!(
            cursor(&["9"], Some(&q)).unwrap(),
            Cursor { after: 9, at: None }
        );
        assert_eq!(
            cursor(&["7"], Some(&q)).unwrap(),
            Cursor {
                after: 7,
                at: Some(at(t))
            }
        );
    }

    #[test]
    fn a_bad_or_contradictory_cursor_is_an_invalid_request_naming_it() {
        let cases: [(&[&str], Option<&str>, &str); 10] = [
            (
                &["3"],
                Some("after=7"),
                "Last-Event-ID: is 3, before after=7",
            ),
            (&["x"], None, "Last-Event-ID: is not a sequence number: 'x'"),
            (&["-1"], None, "Last-Event-ID: is not a sequence number"),
            (&["+1"], None, "Last-Event-ID: is not a sequence number"),
            (&[" 1"], None, "Last-Event-ID: is not a sequence number"),
            (&["1", "2"], None, "Last-Event-ID: is given more than once"),
            (
                &[],
                Some("after=1e3"),
                "after: is not a sequence number: '1e3'",
            ),
            (
                &[],
                Some("after=18446744073709551616"),
                "after: is not a sequence number",
            ),
            (
                &[],
                Some("after=1&after=2"),
                "parameter 'after' is repeated",
            ),
            (
                &[],
                Some("after_event_at=2030-01-02T03:04:05Z"),
                "after_event_at: is the time of the event at `after`",
            ),
        ];
        for (last, query, says) in cases {
            let e = cursor(last, query).expect_err(says);
            assert_eq!(
                (e.code, e.status.as_u16()),
                (Code::InvalidRequest, 400),
                "{says}"
            );
            assert!(e.description.starts_with(says), "{}", e.description);
        }
        let e = cursor(&[], Some("after=1&after_event_at=yesterday")).unwrap_err();
        assert!(
            e.description
                .starts_with("after_event_at: is not an RFC 3339 time"),
            "{}",
            e.description
        );
    }

    #[test]
    fn a_cursor_the_store_cannot_serve_is_a_409_with_where_the_history_stands() {
        let bounds = RevocationBounds { first: 3, head: 9 };
        let resync = Resync::at_open(12, bounds).unwrap();
        let sentence = resync.to_string();
        let e = OauthError::from(WatchError::from(resync));
        assert_eq!((e.code, e.status.as_u16()), (Code::InvalidRequest, 409));
        assert_eq!(e.description, sentence);
        assert_eq!(
            (e.extra["first"].as_u64(), e.extra["head"].as_u64()),
            (Some(3), Some(9))
        );
    }

    #[tokio::test]
    async fn events_carry_their_sequence_as_id_and_heartbeats_no_id_each_data_one_line() {
        let event = |seq, target, reason: &str| {
            Watched::Event(crate::domain::Event {
                seq,
                revocation: Revocation {
                    target,
                    reason: reason.into(),
                    actor: "spiffe://example.org/admin/s1".into(),
                    trigger: Trigger::Admin,
                    at: at("2030-01-02T03:04:05.5Z"),
                },
            })
        };
        let jti = uuid::Uuid::nil();
        let sent = wire(vec![
            message(&event(41, Target::Token(jti), "leaked")),
            // One-line text is checked where reasons come in; the framing does
            // not rely on it.
            message(&event(42, Target::All, "two\nlines\r\ndata: id: 99")),
            message(&Watched::Heartbeat {
                head: 42,
                at: at("2030-01-02T03:04:06Z"),
            }),
        ])
        .await;
        let blocks: Vec<&str> = sent.split_terminator("\n\n").collect();
        assert_eq!(blocks.len(), 3, "{sent:?}");
        assert_eq!(
            blocks[0],
            format!(
                "id: 41\nevent: revocation\ndata: {}",
                json!({"sequence": 41, "target": {"token": jti.to_string()}, "reason": "leaked",
                       "actor": "spiffe://example.org/admin/s1", "trigger": "admin",
                       "at": "2030-01-02T03:04:05.5Z"})
            )
        );
        let lines: Vec<&str> = blocks[1].lines().collect();
        assert_eq!(lines.len(), 3, "{:?}", blocks[1]);
        assert_eq!(lines[..2], ["id: 42", "event: revocation"]);
        let data: Value = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["reason"], "two\nlines\r\ndata: id: 99");
        assert_eq!(data["target"], json!({"all": true}));
        let beat = blocks[2].strip_prefix("event: heartbeat\ndata: ").unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(beat).unwrap(),
            json!({"head": 42, "at": "2030-01-02T03:04:06Z"})
        );
    }

    #[tokio::test]
    async fn a_feed_that_ends_says_why_in_its_last_message() {
        let bounds = RevocationBounds { first: 1, head: 2 };
        let resync = Resync::diverged(5, bounds, crate::revocation::Diverged::Missing);
        let sentence = resync.to_string();
        let sent = wire(vec![ending(resync.into()), ending(WatchError::SvidExpired)]).await;
        let blocks: Vec<&str> = sent.split_terminator("\n\n").collect();
        assert_eq!(
            blocks[0],
            format!(
                "event: resync\ndata: {}",
                json!({"error_description": sentence, "first": 1, "head": 2})
            )
        );
        let expired = blocks[1].strip_prefix("event: error\ndata: ").unwrap();
        let expired: Value = serde_json::from_str(expired).unwrap();
        assert_eq!(expired["error"], "invalid_client");
        assert!(
            expired["error_description"]
                .as_str()
                .unwrap()
                .contains("reconnect with a fresh SVID"),
            "{expired}"
        );
    }
}
