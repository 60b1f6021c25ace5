//! One room: who is in it, the messages it remembers, and the rules for replaying them.
//!
//! The hub owns every [`Room`] and is the only caller. Members enter and leave through
//! [`Room::add`] and [`Room::remove`]; messages enter through [`Room::next_id`] (which assigns
//! the id) and [`Room::remember`], and leave again through [`Room::replay`] when a client joins
//! or recovers after a reconnect. The room stores each message already encoded, so a replay
//! re-sends the very bytes the live recipients got, without encoding anything again.
//!
//! History is bounded by a count (`--history`) and by bytes (`--history-bytes`); the oldest
//! message goes first. The hub also forgets a room's oldest message through
//! [`Room::forget_oldest`] to keep all rooms within `--history-total-bytes`. Whatever evicts
//! a message, [`Room::replay`] reports `complete: false` to a client that missed it.

use std::collections::VecDeque;

use crate::client::{Address, ClientId};
use crate::protocol::Frame;

/// One remembered message.
#[derive(Debug)]
struct Stored {
    /// The message's id in this room.
    id: u64,
    /// Its place in the server-wide order of remembered messages (the hub's numbering).
    seq: u64,
    /// The encoded `message` event.
    frame: Frame,
}

/// A room's members (hub client keys, in join order) and its history ring.
#[derive(Debug)]
pub struct Room {
    /// Identifies this life of the room's history; message ids are only comparable within it.
    epoch: String,
    members: Vec<ClientId>,
    /// The retained messages, oldest first.
    history: VecDeque<Stored>,
    /// Most messages retained.
    capacity: usize,
    /// Most bytes of messages retained.
    byte_capacity: usize,
    /// Bytes of the retained messages.
    bytes: usize,
    last_id: u64,
    /// Hub tick of the last time the room became empty, for evicting the least recently used.
    pub(crate) idle_since: u64,
    /// The address whose client made the room non-empty, while it has members
    /// (`--max-rooms-per-address`).
    pub(crate) holder: Option<Address>,
    /// Ids up to this may have named messages a crash lost (`--data-dir`: the end of the
    /// latest hole the durable store found at start-up); 0 for none.
    floor: u64,
}

/// What a join replays: the messages to re-send and whether nothing in between was lost.
#[derive(Debug)]
pub struct Replay<'a> {
    /// Encoded `message` events to send, oldest first.
    pub messages: Vec<&'a Frame>,
    /// For a recovering client: false when some messages after its cursor were evicted or its
    /// epoch is not the room's. `None` for a plain join, which asked for no cursor.
    pub complete: Option<bool>,
}

impl Room {
    /// An empty room that will remember up to `capacity` messages of `byte_capacity` bytes in
    /// all.
    pub fn new(epoch: String, capacity: usize, byte_capacity: usize) -> Self {
        Room {
            epoch,
            members: Vec::new(),
            history: VecDeque::new(),
            capacity,
            byte_capacity,
            bytes: 0,
            last_id: 0,
            idle_since: 0,
            holder: None,
            floor: 0,
        }
    }

    /// A room read back from the durable store (`--data-dir`): `messages` are the retained
    /// ones, oldest first, as (id, server-wide order, encoded event); the room goes on after
    /// `reserved`. Ids up to `floor` (and between the last message committed, `last_id`, and
    /// `reserved`) may have named messages lost in a crash.
    pub fn reopened(
        epoch: String,
        (capacity, byte_capacity): (usize, usize),
        (last_id, reserved, floor): (u64, u64, u64),
        messages: Vec<(u64, u64, Frame)>,
    ) -> Self {
        let mut room = Room::new(epoch, capacity, byte_capacity);
        for (id, seq, frame) in messages {
            room.last_id = id;
            room.remember(frame, seq);
        }
        room.last_id = last_id.max(reserved);
        room.floor = match reserved > last_id {
            true => floor.max(reserved),
            false => floor,
        };
        room
    }

    /// A room rebuilt from a shared store (scale-out), for its replay rules: `history` holds
    /// the retained messages, oldest first, the newest with id `last_id`.
    pub fn restored(epoch: String, last_id: u64, history: Vec<Frame>) -> Self {
        let first = (last_id + 1).saturating_sub(history.len() as u64);
        let bytes = history.iter().map(|f| f.len()).sum();
        Room {
            epoch,
            members: Vec::new(),
            capacity: history.len(),
            byte_capacity: bytes,
            bytes,
            history: (first..)
                .zip(history)
                .map(|(id, frame)| Stored { id, seq: 0, frame })
                .collect(),
            last_id,
            idle_since: 0,
            holder: None,
            floor: 0,
        }
    }

    /// This life of the room's history.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The id of the newest message ever said here (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Member keys in join order.
    pub fn members(&self) -> &[ClientId] {
        &self.members
    }

    /// True when `key` is a member.
    pub fn contains(&self, key: ClientId) -> bool {
        self.members.contains(&key)
    }

    /// Adds a member; returns false if it was already in.
    pub fn add(&mut self, key: ClientId) -> bool {
        if self.contains(key) {
            return false;
        }
        self.members.push(key);
        true
    }

    /// Puts `new` in `old`'s place among the members (another connection of the same user).
    pub fn replace(&mut self, old: ClientId, new: ClientId) -> bool {
        match self.members.iter_mut().find(|k| **k == old) {
            Some(k) => {
                *k = new;
                true
            }
            None => false,
        }
    }

    /// Removes a member; returns false if it was not in.
    pub fn remove(&mut self, key: ClientId) -> bool {
        match self.members.iter().position(|&k| k == key) {
            Some(i) => {
                // Order matters for the member list clients see, so no swap_remove.
                self.members.remove(i);
                true
            }
            None => false,
        }
    }

    /// Assigns the next message id. The caller encodes the event with it and hands it back
    /// through [`Room::remember`].
    pub fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// Stores the encoded message with id [`Room::last_id`] as the hub's message number
    /// `seq`, evicting the oldest while over either bound. Returns the bytes added and the
    /// bytes evicted. A message larger than the whole byte bound is not stored.
    pub fn remember(&mut self, frame: Frame, seq: u64) -> (usize, usize) {
        let size = frame.len();
        if self.capacity == 0 || size > self.byte_capacity {
            // Not kept: neither is anything older, so that a replay from before it reports
            // the gap. (With the flags' own checks this happens only to a room read back from
            // the store under a lower --history-bytes than it was written with.)
            let mut forgotten = 0;
            while !self.history.is_empty() {
                forgotten += self.forget_oldest();
            }
            return (0, forgotten);
        }
        let mut forgotten = 0;
        while self.history.len() >= self.capacity || self.bytes + size > self.byte_capacity {
            forgotten += self.forget_oldest();
        }
        self.history.push_back(Stored {
            id: self.last_id,
            seq,
            frame,
        });
        self.bytes += size;
        (size, forgotten)
    }

    /// Forgets the oldest retained message; returns its size in bytes (0 if there was none).
    pub fn forget_oldest(&mut self) -> usize {
        let size = self.history.pop_front().map_or(0, |m| m.frame.len());
        self.bytes -= size;
        if self.history.is_empty() {
            // An idle room with no history should not keep a burst's worth of slots.
            self.history = VecDeque::new();
        }
        size
    }

    /// The id of the oldest retained message.
    pub fn oldest_id(&self) -> Option<u64> {
        self.history.front().map(|m| m.id)
    }

    /// The hub's number of the oldest retained message.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.history.front().map(|m| m.seq)
    }

    /// Bytes of the retained messages.
    pub fn history_bytes(&self) -> usize {
        self.bytes
    }

    /// What to replay for a join. `since` and `epoch` are the client's cursor, if it sent one:
    /// with neither, everything retained is replayed and `complete` is not reported.
    pub fn replay(&self, since: Option<u64>, epoch: Option<&str>) -> Replay<'_> {
        let all = || self.history.iter().map(|m| &m.frame).collect();
        if since.is_none() && epoch.is_none() {
            return Replay {
                messages: all(),
                complete: None,
            };
        }
        if epoch.is_some_and(|e| e != self.epoch) {
            // The cursor belongs to an earlier life of this room: its ids mean nothing here.
            return Replay {
                messages: all(),
                complete: Some(false),
            };
        }
        let since = since.unwrap_or(0);
        let messages: Vec<&Frame> = self
            .history
            .iter()
            .filter(|m| m.id > since)
            .map(|m| &m.frame)
            .collect();
        // Complete when every id in since+1 ..= last_id is still here, and none of them is in
        // a hole a crash may have left.
        let oldest = self.history.front().map_or(self.last_id + 1, |m| m.id);
        let holed = since < self.floor;
        let complete = since >= self.last_id || (oldest <= since + 1 && !holed);
        Replay {
            messages,
            complete: Some(complete),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room_with(capacity: usize, messages: u64) -> Room {
        let mut r = Room::new("e1".into(), capacity, usize::MAX);
        for _ in 0..messages {
            let id = r.next_id();
            r.remember(Frame::from(id.to_string()), id);
        }
        r
    }

    #[test]
    fn history_is_bounded_in_bytes_and_stays_truthful() {
        let mut r = Room::new("e1".into(), 100, 10);
        for text in ["aaaa", "bbbb", "cc"] {
            r.next_id();
            assert_eq!(r.remember(Frame::from(text), 0).1, 0);
        }
        assert_eq!(r.history_bytes(), 10);
        r.next_id();
        assert_eq!(r.remember(Frame::from("ddd"), 0), (3, 4), "aaaa goes");
        assert_eq!(ids(&r.replay(None, None)), ["bbbb", "cc", "ddd"]);
        assert_eq!(r.replay(Some(1), Some("e1")).complete, Some(true));
        assert_eq!(r.replay(Some(0), Some("e1")).complete, Some(false));
        r.next_id();
        assert_eq!(
            r.remember(Frame::from("x".repeat(11)), 0),
            (0, 9),
            "too big: not kept, and neither is anything older (bbbb, cc, ddd)"
        );
        let complete = |since| r.replay(Some(since), Some("e1")).complete;
        assert_eq!(complete(4), Some(false), "5 is not kept");
        assert_eq!(complete(5), Some(true));
        assert_eq!(r.history_bytes(), 0);
    }

    fn ids(replay: &Replay) -> Vec<String> {
        replay
            .messages
            .iter()
            .map(|f| f.as_str().to_string())
            .collect()
    }

    #[test]
    fn history_is_a_ring_with_increasing_ids() {
        let r = room_with(3, 5);
        assert_eq!(r.last_id(), 5);
        let all = r.replay(None, None);
        assert_eq!(ids(&all), ["3", "4", "5"]);
        assert_eq!(all.complete, None);
    }

    #[test]
    fn recovery_reports_gaps() {
        let r = room_with(3, 5);
        let caught_up = r.replay(Some(5), Some("e1"));
        assert!(caught_up.messages.is_empty());
        assert_eq!(caught_up.complete, Some(true));

        let small_gap = r.replay(Some(2), Some("e1"));
        assert_eq!(ids(&small_gap), ["3", "4", "5"]);
        assert_eq!(small_gap.complete, Some(true));

        let lost = r.replay(Some(1), None);
        assert_eq!(ids(&lost), ["3", "4", "5"]);
        assert_eq!(lost.complete, Some(false), "message 2 was evicted");

        let other_life = r.replay(Some(4), Some("e0"));
        assert_eq!(ids(&other_life), ["3", "4", "5"]);
        assert_eq!(other_life.complete, Some(false));
    }

    #[test]
    fn no_history_means_incomplete_unless_caught_up() {
        let r = room_with(0, 2);
        assert_eq!(r.replay(Some(1), None).complete, Some(false));
        assert_eq!(r.replay(Some(2), None).complete, Some(true));
        let empty = room_with(0, 0);
        assert_eq!(empty.replay(Some(0), Some("e1")).complete, Some(true));
    }

    #[test]
    fn a_reopened_room_goes_on_after_its_reservation_and_reports_the_hole() {
        let messages = (3..=5)
            .map(|id| (id, id, Frame::from(id.to_string())))
            .collect();
        let r = Room::reopened("e1".into(), (100, usize::MAX), (5, 8, 0), messages);
        assert_eq!(
            r.last_id(),
            8,
            "ids 6-8 may have been given before the crash"
        );
        assert_eq!(ids(&r.replay(None, None)), ["3", "4", "5"]);
        assert_eq!(
            r.replay(Some(2), Some("e1")).complete,
            Some(false),
            "6-8 may be lost"
        );
        assert_eq!(r.replay(Some(7), Some("e1")).complete, Some(false));
        assert_eq!(r.replay(Some(8), Some("e1")).complete, Some(true));
        let quiet = Room::reopened("e1".into(), (100, usize::MAX), (5, 5, 0), Vec::new());
        assert_eq!(quiet.replay(Some(5), Some("e1")).complete, Some(true));
        let messages = (3..=5)
            .map(|id| (id, id, Frame::from(id.to_string())))
            .collect();
        let clean = Room::reopened("e1".into(), (100, usize::MAX), (5, 5, 0), messages);
        assert_eq!(
            clean.replay(Some(2), Some("e1")).complete,
            Some(true),
            "no hole"
        );
        assert_eq!(
            clean.replay(Some(1), Some("e1")).complete,
            Some(false),
            "2 was trimmed"
        );
        // A hole from an earlier crash, kept as the floor after later messages were committed.
        let messages = (3..=12)
            .map(|id| (id, id, Frame::from(id.to_string())))
            .collect();
        let later = Room::reopened("e1".into(), (100, usize::MAX), (12, 12, 8), messages);
        let complete = |since| later.replay(Some(since), Some("e1")).complete;
        assert_eq!(complete(6), Some(false), "7 and 8 may be lost");
        assert_eq!(complete(8), Some(true));
        // A message too big for today's --history-bytes: nothing older is claimed complete.
        let sized = vec![
            (1, 1, Frame::from("aaaa")),
            (2, 2, Frame::from("b".repeat(50))),
            (3, 3, Frame::from("cccc")),
        ];
        let lowered = Room::reopened("e1".into(), (100, 20), (3, 3, 0), sized);
        let complete = |since| lowered.replay(Some(since), Some("e1")).complete;
        assert_eq!(complete(1), Some(false), "2 is gone");
        assert_eq!(complete(2), Some(true));
    }

    #[test]
    fn members_keep_join_order() {
        let id = |key| ClientId { key, serial: 1 };
        let mut r = Room::new("e".into(), 1, 100);
        assert!(r.add(id(3)));
        assert!(r.add(id(1)));
        assert!(!r.add(id(3)));
        assert!(r.add(id(2)));
        assert!(r.remove(id(3)));
        assert!(!r.remove(id(3)));
        assert_eq!(r.members(), &[id(1), id(2)]);
    }
}
