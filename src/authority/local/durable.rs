//! The local authority's side of durable history (`--data-dir`, feature `store`): what it
//! tells the store, and the rule that no id is given before the store has reserved it.
//!
//! Every change to a room's epoch or history enters [`crate::store`] as an op from here. Ids
//! are given only under a room's durable reservation ([`Reservation::granted`]), which every
//! new message passes first (`Local::gate`): one that finds none waits ([`Waiter`]), its
//! client busy, until the store's report that the reservation was committed comes back
//! through the hub ([`Local::stored`]), and is said then, in arrival order. Reservations are asked for in blocks ahead of need, so a busy room
//! does not wait; a room that was not used between two reports gives back what it did not
//! use, so that a crash in a quiet moment leaves no hole (see [`crate::store`]). Each ask
//! carries a serial that is never reused, so the report of an old ask (an earlier life of the
//! room, or one overtaken by a give-back) never grants anything.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use super::{Answer, ClientId, Local, RoomEvent, Waiter};
use crate::metrics::Metrics;
use crate::store::{Grant, Op, Report, Saved, Store};

/// The first block of ids a room reserves, and the most (blocks double while a room keeps
/// running out before the store answers).
const FIRST_BLOCK: u64 = 32;
const MAX_BLOCK: u64 = 4096;
/// Messages that may wait for a room's reservation; more get `unavailable`.
const MAX_WAITERS: usize = 1024;

/// The store, whether its last commit failed, and the serial of the next ask.
pub(super) struct Durable {
    pub(super) store: Store,
    failing: bool,
    serial: u64,
}

impl Durable {
    pub(super) fn new(store: Store) -> Durable {
        Durable {
            store,
            failing: false,
            serial: 0,
        }
    }

    /// The grant to ask for ids up to `up_to`, with a serial never used before.
    fn grant(&mut self, up_to: u64) -> Grant {
        self.serial += 1;
        Grant {
            up_to,
            serial: self.serial,
        }
    }

    /// Asks the store for room `name`'s reservation to be `up_to` (and remembers the ask in
    /// `r`): `urgent` when a message waits for it.
    fn ask(&mut self, name: &str, r: &mut Reservation, up_to: u64, urgent: bool) {
        let grant = self.grant(up_to);
        (r.asked, r.serial) = (up_to, grant.serial);
        let room = name.to_string();
        self.store.send(Op::Reserve {
            room,
            grant,
            urgent,
        });
    }
}

/// A room's reservation of ids.
#[derive(Debug)]
pub(super) struct Reservation {
    /// Ids up to this are durably reserved: they may be given.
    granted: u64,
    /// The reservation the store holds on disk now (after a room gave some back, more than
    /// `granted`): what a crash now would leave as a hole.
    on_disk: u64,
    /// The newest reservation asked of the store (committed or not), and its serial.
    asked: u64,
    serial: u64,
    block: u64,
    /// An id was given since the store's last report.
    used: bool,
    /// Messages waiting for ids, in arrival order.
    pub(super) waiting: VecDeque<Waiter>,
}

impl Reservation {
    /// A room whose ids up to `last_id` are all accounted for, with none reserved ahead.
    pub(super) fn at(last_id: u64) -> Reservation {
        Reservation {
            granted: last_id,
            on_disk: last_id,
            asked: last_id,
            serial: 0,
            block: FIRST_BLOCK,
            used: false,
            waiting: VecDeque::new(),
        }
    }
}

impl Local {
    /// Tells the store, if there is one.
    pub(super) fn store(&self, op: Op) {
        if let Some(durable) = &self.durable {
            durable.store.send(op);
        }
    }

    /// Room `name` forgot its messages before `oldest` (all of them, for `None`).
    pub(super) fn trimmed(&self, name: &str, oldest: Option<u64>) {
        let Some(place) = self.rooms.get(name) else {
            return;
        };
        let below = oldest.unwrap_or(place.room.last_id() + 1);
        self.store(Op::Trim {
            room: name.to_string(),
            below,
        });
    }

    /// A new room: the store learns of it with its first block of ids, which it may use at
    /// once (see [`Op::Create`]); none while the store is failing or behind, so that a disk
    /// that does not keep up cannot be outrun by rooms coming and going.
    pub(super) fn created(&mut self, name: &str, epoch: &str) -> Reservation {
        let Some(durable) = &mut self.durable else {
            return Reservation::at(0);
        };
        let block = match durable.failing || durable.store.behind() {
            true => 0,
            false => FIRST_BLOCK,
        };
        let grant = durable.grant(block);
        durable.store.send(Op::Create {
            room: name.to_string(),
            epoch: epoch.to_string(),
            reserved: Some(grant),
        });
        let mut reservation = Reservation::at(block);
        (reservation.on_disk, reservation.serial) = (0, grant.serial);
        reservation
    }

    /// Rooms read back from the store, as they were, within today's limits.
    pub(super) fn reopen(&mut self, saved: Vec<Saved>) {
        for room in saved {
            let seq = room.messages.iter().map(|m| m.1).max().unwrap_or(0);
            self.next_seq = self.next_seq.max(seq + 1);
            self.restore_room(room);
        }
        // A lower --history-total-bytes than last time: forget the oldest now.
        self.forget_over_total();
    }

    /// Whether `waiter`, a message for room `name`, may have its id now: given back to be
    /// said (`Ok`), or it waits (`Err(None)`: its answer comes with the store's report), or it
    /// is refused when the store cannot keep up (`Err(Some(Answer::Unavailable))`).
    pub(super) fn gate(&mut self, name: &str, waiter: Waiter) -> Result<Waiter, Option<Answer>> {
        let Some(durable) = &mut self.durable else {
            return Ok(waiter);
        };
        let Some(place) = self.rooms.get_mut(name) else {
            return Ok(waiter);
        };
        let r = &mut place.reservation;
        if r.waiting.is_empty() && place.room.last_id() < r.granted {
            return Ok(waiter);
        }
        if durable.failing || durable.store.behind() || r.waiting.len() >= MAX_WAITERS {
            return Err(Some(Answer::Unavailable));
        }
        let first = r.waiting.is_empty();
        r.waiting.push_back(waiter);
        let needed = place.room.last_id() + r.waiting.len() as u64;
        if first || r.asked < needed {
            // It ran out before the store answered: a bigger block, asked for at once (an
            // ask already on its way would wait for the interval).
            r.block = (r.block * 2).min(MAX_BLOCK);
            let up_to = r.asked.max(needed + r.block);
            durable.ask(name, r, up_to, true);
        }
        Err(None)
    }

    /// After an id was given in room `name`: asks for the next block before this one runs out.
    pub(super) fn given(&mut self, name: &str) {
        let Some(durable) = &mut self.durable else {
            return;
        };
        let Some(place) = self.rooms.get_mut(name) else {
            return;
        };
        let r = &mut place.reservation;
        r.used = true;
        let last_id = place.room.last_id();
        if r.asked < last_id + r.block / 2 {
            durable.ask(name, r, last_id + r.block, false);
        }
    }

    /// The store's report: reservations that hold now let waiting messages be said; rooms
    /// not used since the last report give back what they reserved.
    pub(super) fn stored(
        &mut self,
        report: Report,
        events: &mut Vec<RoomEvent>,
    ) -> Vec<(ClientId, Answer)> {
        let Some(durable) = &mut self.durable else {
            return Vec::new();
        };
        let mut answers = Vec::new();
        let reserved = match report {
            Report::Committed(reserved) => {
                durable.failing = false;
                Metrics::add(&self.metrics.store_commits, 1);
                reserved
            }
            Report::Failed(_) => {
                durable.failing = true;
                Metrics::add(&self.metrics.store_failures, 1);
                for place in self.rooms.values_mut() {
                    let waiting = std::mem::take(&mut place.reservation.waiting);
                    answers.extend(waiting.into_iter().map(|w| (w.client, Answer::Unavailable)));
                }
                return answers;
            }
        };
        for (name, grant) in reserved {
            // Only the newest ask of this life of the room grants: the report of an older
            // one (overtaken by a give-back, or of an evicted life) is what the disk held for
            // a moment, no more.
            if let Some(place) = self.rooms.get_mut(&name)
                && place.reservation.serial == grant.serial
            {
                let r = &mut place.reservation;
                (r.on_disk, r.granted) = (grant.up_to, grant.up_to);
            }
        }
        let ready: Vec<String> = (self.rooms.iter())
            .filter(|(_, p)| !p.reservation.waiting.is_empty())
            .filter(|(_, p)| p.room.last_id() < p.reservation.granted)
            .map(|(name, _)| name.clone())
            .collect();
        for name in ready {
            while let Some(waiter) = self.next_ready(&name) {
                let client = waiter.client;
                answers.push((client, self.said(name.clone(), waiter, events)));
            }
        }
        self.give_back_unused();
        answers
    }

    /// The next waiting message of room `name` whose id is reserved now.
    fn next_ready(&mut self, name: &str) -> Option<Waiter> {
        let place = self.rooms.get_mut(name)?;
        let r = &mut place.reservation;
        if place.room.last_id() >= r.granted {
            return None;
        }
        r.waiting.pop_front()
    }

    /// Rooms not used since the last report give their unused reservation back, so that a
    /// crash from now on leaves no hole in them; a room that was used is looked at again after
    /// the next commit, which an empty op asks for.
    fn give_back_unused(&mut self) {
        let Some(durable) = &mut self.durable else {
            return;
        };
        let mut again = false;
        let mut ahead = 0;
        for (name, place) in &mut self.rooms {
            let r = &mut place.reservation;
            let last_id = place.room.last_id();
            if r.used {
                r.used = false;
                again = true;
            } else if r.asked > last_id && r.waiting.is_empty() {
                (r.granted, r.block) = (last_id, FIRST_BLOCK);
                durable.ask(name, r, last_id, false);
            }
            ahead += r.on_disk.saturating_sub(last_id);
        }
        self.metrics.store_reserved_ahead.store(ahead, Relaxed);
        if again {
            durable.store.send(Op::Tick);
        }
    }

    /// A client is gone: its messages that were waiting are dropped with it.
    pub(super) fn forget_waiting(&mut self, client: ClientId) {
        for place in self.rooms.values_mut() {
            place.reservation.waiting.retain(|w| w.client != client);
        }
    }

    /// A clean stop: every room gives its reservation back, and the store commits everything
    /// before the process ends.
    pub(super) fn close_store(&mut self) {
        let Some(mut durable) = self.durable.take() else {
            return;
        };
        for (name, place) in &mut self.rooms {
            let last_id = place.room.last_id();
            if place.reservation.asked > last_id {
                durable.ask(name, &mut place.reservation, last_id, false);
            }
        }
        durable.store.close();
    }
}
