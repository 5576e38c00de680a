//! Step-up polling (RFC 8628 §3.5): a client polls a pending approval at most
//! once per interval; sooner is `slow_down`, and its interval grows by 5 s for
//! that approval. Judged before the store is read, so polling too fast costs
//! the broker a map lookup; kept per replica, in memory, and only for
//! approvals the broker handed out or their requester polled, with the
//! requester: a poll by anyone else neither slows the requester down nor
//! learns from a `slow_down` that the approval exists (it goes to the store,
//! which refuses it).
use crate::domain::SpiffeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// RFC 8628 §3.5: each `slow_down` adds 5 s to the interval.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Approvals tracked at most. Past it, the ones not polled for the longest
/// interval a client can be told go first.
const MAX_TRACKED: usize = 10_000;

pub struct Polls {
    interval: Duration,
    seen: Mutex<HashMap<Uuid, Seen>>,
}

#[derive(Clone)]
struct Seen {
    requester: SpiffeId,
    last: OffsetDateTime,
    interval: Duration,
}

impl Polls {
    pub fn new(interval: Duration) -> Self {
        Polls {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The interval a client is told to poll `id` at.
    pub fn interval(&self, id: Uuid) -> Duration {
        self.lock().get(&id).map_or(self.interval, |s| s.interval)
    }

    /// `Some(new interval)` when `caller` polled its approval `id` less than
    /// its interval ago: the poll is answered `slow_down`. Either way the poll
    /// counts as the latest, so polls racing each other are slowed down too.
    pub fn too_soon(&self, id: Uuid, caller: &SpiffeId, now: OffsetDateTime) -> Option<Duration> {
        let mut seen = self.lock();
        let s = seen.get_mut(&id).filter(|s| s.requester == *caller)?;
        let early = now - s.last < s.interval;
        s.last = now;
        if !early {
            return None;
        }
        s.interval += SLOW_DOWN_STEP;
        Some(s.interval)
    }

    /// Records a poll of (or the handing out of) `requester`'s own approval.
    pub fn polled(&self, id: Uuid, requester: &SpiffeId, now: OffsetDateTime) {
        let mut seen = self.lock();
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&id) {
            let horizon = self.interval * 4 + SLOW_DOWN_STEP * 8;
            seen.retain(|_, s| now - s.last < horizon);
            if seen.len() >= MAX_TRACKED {
                // Every entry is recent: forget the oldest, which costs its
                // client at most one poll that should have been slowed down.
                if let Some(oldest) = seen.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k) {
                    seen.remove(&oldest);
                }
            }
        }
        let interval = seen.get(&id).map_or(self.interval, |s| s.interval);
        seen.insert(
            id,
            Seen {
                requester: requester.clone(),
                last: now,
                interval,
            },
        );
    }

    /// The approval is settled (its token issued, denied, lapsed).
    pub fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Seen>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(n: u32) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://example.org/agent/a{n}")).unwrap()
    }

    fn at(s: u64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    #[test]
    fn polling_sooner_than_the_interval_slows_the_client_down_by_five_seconds() {
        let p = Polls::new(Duration::from_secs(5));
        let (id, a) = (Uuid::new_v4(), agent(1));
        assert_eq!(p.too_soon(id, &a, at(0)), None, "never polled");
        p.polled(id, &a, at(0));
        assert_eq!(p.too_soon(id, &a, at(1)), Some(Duration::from_secs(10)));
        // The interval now counts from the slowed-down poll, at 10 s.
        assert!(p.too_soon(id, &a, at(9)).is_some());
        assert_eq!(p.interval(id), Duration::from_secs(15));
        assert_eq!(p.too_soon(id, &a, at(24)), None);
        // A poll let through counts: another right after it is too soon.
        assert!(p.too_soon(id, &a, at(25)).is_some());
        p.forget(id);
        assert_eq!(p.interval(id), Duration::from_secs(5));
    }

    #[test]
    fn another_agent_polling_neither_slows_the_requester_nor_is_slowed() {
        let p = Polls::new(Duration::from_secs(5));
        let (id, a, b) = (Uuid::new_v4(), agent(1), agent(2));
        p.polled(id, &a, at(0));
        for s in 1..5 {
            assert_eq!(p.too_soon(id, &b, at(s)), None);
        }
        assert_eq!(p.interval(id), Duration::from_secs(5));
        assert_eq!(p.too_soon(id, &a, at(5)), None);
    }

    #[test]
    fn the_map_stays_bounded() {
        let p = Polls::new(Duration::from_secs(1));
        let a = agent(1);
        for i in 0..(MAX_TRACKED + 10) {
            p.polled(Uuid::new_v4(), &a, at(0) + Duration::from_millis(i as u64));
        }
        assert!(p.lock().len() <= MAX_TRACKED);
    }
}
