//! Bounded sets of connections (or handshakes) that make room by evicting a
//! member that has not proved an identity, so that a flood of anonymous
//! connections can neither exhaust file descriptors nor lock out a client that
//! can prove who it is. Members are evicted by [`Standing`], lowest first, and
//! oldest first within a standing: a connection that is getting somewhere (its
//! ClientHello came in) outlasts the ones that are not.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// At most `max` members at once. An evicted member is counted until it has
/// gone, so the count can pass `max` by the evictions still under way, never by
/// more than [`OVERSHOOT`]: past that, [`Slots::room`] waits for victims to leave.
pub struct Slots {
    max: usize,
    inner: Mutex<Inner>,
    /// A member left.
    left: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    next: u64,
    count: usize,
    /// Members that may be evicted, by standing, then oldest (lowest id) first.
    evictable: BTreeMap<(Standing, u64), CancellationToken>,
}

/// How far an evictable member has got, lowest evicted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Finished TLS without a valid X.509-SVID: it can never make a call that
    /// is not refused.
    Anonymous,
    /// Nothing yet: no ClientHello (gRPC port), or any connection to the HTTP
    /// port, whose documents are public.
    New,
    /// A TLS handshake under way (its ClientHello came in).
    Handshaking,
}

/// How far evictions under way may take the count past the cap.
pub const OVERSHOOT: usize = 32;

/// What [`Slots::admit`] decided.
pub enum Admit {
    /// Room was free.
    Admitted(Slot),
    /// The oldest evictable member was told to go, to make room.
    Evicted(Slot),
    /// Every member is protected: the newcomer is refused.
    Full,
    /// Evicted members are still leaving (past the cap by [`OVERSHOOT`]): wait
    /// for [`Slots::room`] and ask again.
    Busy,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Slots {
            max,
            inner: Mutex::new(Inner::default()),
            left: tokio::sync::Notify::new(),
        })
    }

    /// Resolves once a newcomer could be admitted without passing the cap by more
    /// than [`OVERSHOOT`]: the acceptor waits here (new connections wait in the
    /// kernel's backlog) while evicted members are still leaving, instead of
    /// refusing the newcomer.
    pub async fn room(&self) {
        loop {
            let left = self.left.notified();
            if self.lock().count < self.max + OVERSHOOT {
                return;
            }
            // A missed wake-up costs at most this long.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), left).await;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections cannot panic; a poisoned lock still holds
        // consistent counts.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new member, evictable until [`Slot::protect`].
    pub fn admit(self: &Arc<Self>) -> Admit {
        let mut inner = self.lock();
        let mut evicted = false;
        // Past the overshoot (the caller did not wait for `room`): no more
        // evictions until victims have left.
        if inner.count >= self.max + OVERSHOOT {
            return Admit::Busy;
        }
        if inner.count >= self.max {
            match inner.evictable.pop_first() {
                Some((_, victim)) => {
                    victim.cancel();
                    evicted = true;
                }
                None => return Admit::Full,
            }
        }
        let id = inner.next;
        inner.next += 1;
        inner.count += 1;
        let cancel = CancellationToken::new();
        inner.evictable.insert((Standing::New, id), cancel.clone());
        drop(inner);
        let slot = Slot {
            id,
            standing: Some(Standing::New),
            slots: self.clone(),
            cancel,
        };
        if evicted {
            Admit::Evicted(slot)
        } else {
            Admit::Admitted(slot)
        }
    }
}

/// Membership of a [`Slots`] set; leaving is dropping it.
pub struct Slot {
    id: u64,
    /// `None` once protected.
    standing: Option<Standing>,
    slots: Arc<Slots>,
    cancel: CancellationToken,
}

impl Slot {
    /// Moves to another standing (keeping its age within it).
    pub fn stand(&mut self, standing: Standing) {
        let Some(was) = self.standing else { return };
        let mut inner = self.slots.lock();
        // Gone from the map: it was evicted meanwhile, and stays so.
        if let Some(cancel) = inner.evictable.remove(&(was, self.id)) {
            inner.evictable.insert((standing, self.id), cancel);
            self.standing = Some(standing);
        }
    }

    /// Never evicted from now on (it proved an identity).
    pub fn protect(&mut self) {
        if let Some(was) = self.standing.take() {
            self.slots.lock().evictable.remove(&(was, self.id));
        }
    }

    /// Resolves when this member was evicted to make room for another.
    pub async fn evicted(&self) {
        self.cancel.cancelled().await
    }

    #[cfg(test)]
    fn is_evicted(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        inner.count -= 1;
        if let Some(was) = self.standing {
            inner.evictable.remove(&(was, self.id));
        }
        drop(inner);
        self.slots.left.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(a: Admit) -> Slot {
        match a {
            Admit::Admitted(s) | Admit::Evicted(s) => s,
            Admit::Full | Admit::Busy => panic!("full"),
        }
    }

    #[test]
    fn a_full_set_evicts_the_lowest_standing_first_and_the_oldest_within_it() {
        let slots = Slots::new(3);
        let mut hello = slot(slots.admit());
        hello.stand(Standing::Handshaking);
        let mut anonymous = slot(slots.admit());
        let new = slot(slots.admit());
        anonymous.stand(Standing::Anonymous);
        // The anonymous one goes first, though younger than the handshake.
        let d = slot(slots.admit());
        assert!(anonymous.is_evicted() && !new.is_evicted() && !hello.is_evicted());
        drop(anonymous);
        // Then those that sent nothing, oldest first; the handshake outlasts them.
        let e = slot(slots.admit());
        assert!(new.is_evicted() && !hello.is_evicted());
        drop(new);
        let _f = slot(slots.admit());
        assert!(d.is_evicted() && !e.is_evicted() && !hello.is_evicted());
        drop(d);
        // An evicted member stays evicted when it moves on: it is not offered
        // for eviction again.
        let mut e = e;
        let _g = slot(slots.admit());
        assert!(e.is_evicted());
        e.stand(Standing::Handshaking);
        assert_eq!(slots.lock().evictable.len(), 3, "hello, _f and _g");
    }

    #[test]
    fn a_full_set_evicts_its_oldest_unprotected_member_and_refuses_once_all_are_protected() {
        let slots = Slots::new(2);
        let mut a = slot(slots.admit());
        let b = slot(slots.admit());
        a.protect();
        // Full: b (the oldest evictable) makes room.
        let c = match slots.admit() {
            Admit::Evicted(c) => c,
            _ => panic!("expected an eviction"),
        };
        assert!(b.is_evicted() && !a.is_evicted());
        drop(b);
        assert_eq!(slots.len(), 2);
        let mut c = c;
        c.protect();
        assert!(matches!(slots.admit(), Admit::Full));
        drop(a);
        let d = slot(slots.admit());
        assert!(!d.is_evicted() && !c.is_evicted());
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn past_the_cap_while_victims_leave_a_newcomer_is_asked_to_wait_not_refused() {
        let slots = Slots::new(1);
        // Each newcomer evicts the one before, which has not left yet.
        let mut leaving = vec![slot(slots.admit())];
        for _ in 0..OVERSHOOT {
            leaving.push(match slots.admit() {
                Admit::Evicted(s) => s,
                _ => panic!("an eviction within the overshoot"),
            });
        }
        assert!(matches!(slots.admit(), Admit::Busy));
        drop(leaving);
        assert!(matches!(slots.admit(), Admit::Admitted(_)));
    }
}
