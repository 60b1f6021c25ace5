//! Admission: how many connections the front door lets in, and in what state.
//!
//! Three limits, each a counting semaphore whose permit is held for as long as the connection
//! is in that state: [`Slots`] for `--max-pending` (connections that are not WebSocket
//! sessions yet) and `--max-connections` (sessions), and [`Shares`] for each address's
//! `--max-pending-per-address` share of the pending slots, so that one address cannot lock
//! everyone else out; with the HTTP API, the key's `--api-rate-limit` beside them. (Whether
//! the backend takes sessions at all is the backend's to say: `Backend::up`, in lib.rs.)
//!
//! A permit is taken by the handshake (`crate::handshake`, `crate::upgrade`) and given back
//! when it is dropped, whatever way the connection ends. Nothing else changes the counts;
//! `/metrics` reads them ([`Slots::taken`]) as its `connections` and `pending_connections`
//! gauges.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::client::Address;
use crate::config::Config;

/// A counting semaphore without waiting: a permit now, or none.
#[derive(Debug)]
pub struct Slots {
    taken: AtomicUsize,
    max: usize,
}

impl Slots {
    /// `max` permits.
    pub fn new(max: usize) -> Slots {
        Slots {
            taken: AtomicUsize::new(0),
            max,
        }
    }

    /// A permit, if one is free. Relaxed: the count is the only state it guards.
    pub fn try_take(&self) -> Option<Permit<'_>> {
        let before = self.taken.fetch_add(1, Relaxed);
        if before >= self.max {
            self.taken.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Permit(self))
    }

    /// Permits held now.
    pub fn taken(&self) -> usize {
        self.taken.load(Relaxed)
    }
}

/// One of [`Slots`]' permits, given back when dropped.
#[derive(Debug)]
pub struct Permit<'a>(&'a Slots);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Relaxed);
    }
}

/// A semaphore per address (an IPv4 address or an IPv6 /64), each with `max` permits; an
/// address without permits out takes no memory.
#[derive(Debug)]
pub struct Shares {
    taken: Mutex<HashMap<Address, u32>>,
    max: u32,
}

impl Shares {
    /// `max` permits per address.
    pub fn new(max: u32) -> Shares {
        Shares {
            taken: Mutex::default(),
            max,
        }
    }

    /// A permit of `address`'s, if it has one free.
    pub fn try_take(&self, address: Address) -> Option<Share<'_>> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let count = taken.entry(address).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Share {
            shares: self,
            address,
        })
    }
}

/// One of an address's [`Shares`], given back when dropped.
#[derive(Debug)]
pub struct Share<'a> {
    shares: &'a Shares,
    address: Address,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mut taken = self.shares.taken.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = taken.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                taken.remove(&self.address);
            }
        }
    }
}

/// Every admission limit of one server.
pub struct Admission {
    /// `--max-pending`: connections that are not WebSocket sessions.
    pub pending: Slots,
    /// `--max-pending-per-address`: of those, one address's.
    pub pending_per_address: Shares,
    /// `--max-connections`: WebSocket sessions.
    pub sessions: Slots,
    /// The HTTP API key's rate limit: `--api-rate-limit` calls a second, bursts of as many.
    #[cfg(feature = "api")]
    pub(crate) api_calls: Mutex<crate::bucket::TokenBucket>,
}

impl Admission {
    /// The limits of `config`.
    pub fn new(config: &Config) -> Admission {
        Admission {
            pending: Slots::new(config.max_pending),
            pending_per_address: Shares::new(config.max_pending_per_address as u32),
            sessions: Slots::new(config.max_connections),
            #[cfg(feature = "api")]
            api_calls: Mutex::new(crate::bucket::TokenBucket::new(
                config.api_rate_limit,
                config.api_rate_limit.max(1),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_given_back_when_dropped() {
        let slots = Slots::new(2);
        let (a, b) = (slots.try_take(), slots.try_take());
        assert!(a.is_some() && b.is_some());
        assert!(slots.try_take().is_none(), "full");
        assert_eq!(slots.taken(), 2, "a refused try takes nothing");
        drop(a);
        assert!(slots.try_take().is_some());

        let shares = Shares::new(1);
        let here = Address::of("10.0.0.1:1");
        let one = shares.try_take(here);
        assert!(one.is_some());
        assert!(
            shares.try_take(here).is_none(),
            "the address's share is used"
        );
        assert!(shares.try_take(Address::of("10.0.0.2:1")).is_some());
        drop(one);
        assert!(shares.try_take(here).is_some());
        assert!(
            shares.taken.lock().unwrap().is_empty(),
            "no permits out, no entries"
        );
    }
}
