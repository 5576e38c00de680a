//! Bounded sets of connections (or handshakes) that make room by evicting the
//! oldest member that has not proved an identity, so that a flood of
//! anonymous connections can neither exhaust file descriptors nor lock out a
//! client that can prove who it is.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// At most `max` members at once. An evicted member is counted until it has
/// gone, so the count can pass `max` by the evictions still under way, never by
/// more than [`OVERSHOOT`]: past that, newcomers are refused until victims leave.
pub struct Slots {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    count: usize,
    /// Members that may be evicted, oldest (lowest id) first.
    evictable: BTreeMap<u64, CancellationToken>,
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
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Slots {
            max,
            inner: Mutex::new(Inner::default()),
        })
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
        if inner.count >= self.max + OVERSHOOT {
            return Admit::Full;
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
        inner.evictable.insert(id, cancel.clone());
        drop(inner);
        let slot = Slot {
            id,
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
    slots: Arc<Slots>,
    cancel: CancellationToken,
}

impl Slot {
    /// Never evicted from now on (it proved an identity).
    pub fn protect(&self) {
        self.slots.lock().evictable.remove(&self.id);
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
        inner.evictable.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(a: Admit) -> Slot {
        match a {
            Admit::Admitted(s) | Admit::Evicted(s) => s,
            Admit::Full => panic!("full"),
        }
    }

    #[test]
    fn a_full_set_evicts_its_oldest_unprotected_member_and_refuses_once_all_are_protected() {
        let slots = Slots::new(2);
        let a = slot(slots.admit());
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
        c.protect();
        assert!(matches!(slots.admit(), Admit::Full));
        drop(a);
        let d = slot(slots.admit());
        assert!(!d.is_evicted() && !c.is_evicted());
        assert_eq!(slots.len(), 2);
    }
}
