//! `join`: enter a room (or, for a room the client is in, get its state again: a resync),
//! with the history after the client's cursor.
//!
//! In: `{"type":"join","room":R}`, with `since` and `epoch` to recover after a reconnect. The
//! hub checks the token's claim and `--max-rooms-per-client`; the authority makes the client a
//! member, within the room limits it alone can check ([`Ask::Join`]), and answers with the
//! room's state and the messages to replay ([`Joined`]). Out: the `room` event and the
//! replayed messages to the client, `join` to the room's other members (the authority's room
//! event), or a `room_limit` error.
//!
//! Until the answer, the client is a join on its way: it hears none of the room's live
//! events, which the room's audience keeps for it, and after the answer gets only those its
//! join did not already reflect (`Audience::pending`, `Audience::fresh`).

use super::Hub;
use crate::authority::{Answer, Ask, Joined};
use crate::protocol::{Error, ErrorCode, Event, Wire, room_name};

impl Hub {
    /// `{"type":"join",...}` from client `key`.
    pub(in crate::hub) fn join(&mut self, key: usize, wire: Wire) -> Result<(), Error> {
        self.enter(key, room_name(wire.room)?, wire.since, wire.epoch)
    }

    /// Client `key` joins (or resyncs) `room`, replaying history after its cursor.
    pub(in crate::hub) fn enter(
        &mut self,
        key: usize,
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), Error> {
        let client = &self.clients[key];
        client.access.check(&room)?;
        let resync = client.rooms.contains(&room);
        let max = self.config.max_rooms_per_client;
        if !resync && client.rooms.len() >= max {
            return Err(Error::new(
                ErrorCode::RoomLimit,
                format!("you are in {max} rooms, the most allowed; leave one first"),
            ));
        }
        // A resync stops live events until the replay is out, like a join.
        self.audiences
            .entry(room.clone())
            .or_default()
            .expect_join(key);
        let ask = Ask::Join {
            room: room.clone(),
            since,
            epoch,
        };
        self.ask(key, ask, move |hub, key, answer| match answer {
            Answer::Joined(joined) => hub.joined(key, room, joined),
            Answer::Refused(error) => {
                hub.undo_join(key, &room, resync);
                hub.send_error(key, error);
            }
            other => {
                hub.undo_join(key, &room, resync);
                hub.unfit(key, other);
            }
        });
        Ok(())
    }

    /// A join that did not happen: the client is back where it was.
    fn undo_join(&mut self, key: usize, room: &str, resync: bool) {
        if let Some(audience) = self.audiences.get_mut(room) {
            audience.unexpect_join(key, resync);
        }
        self.drop_if_unused(room);
    }

    /// The client is a member: it gets the room's state and the replay, then whatever
    /// happened in the room since its join that the answer did not reflect.
    fn joined(&mut self, key: usize, room: String, joined: Joined) {
        let client = &mut self.clients[key];
        client.rooms.retain(|r| *r != room);
        // Most clients are in one room or two: no spare capacity for four.
        client.rooms.reserve_exact(1);
        client.rooms.push(room.clone());
        let frame = Event::Room {
            room: &room,
            epoch: &joined.epoch,
            members: joined.nicks.iter().map(String::as_str).collect(),
            count: joined.count,
            last_id: joined.last_id,
            complete: joined.complete,
        }
        .encode();
        self.send(key, &frame);
        for message in &joined.replay {
            self.send(key, message);
        }
        let ev = joined.ev;
        let known = self.audiences[&room].epoch();
        if !known.is_empty() && known != joined.epoch {
            // The join's answer is the first sign of a new epoch: the others are told too.
            let presence = (
                joined.count,
                joined.nicks.iter().map(String::as_str).collect(),
            );
            self.new_epoch(
                &room,
                &joined.epoch,
                joined.last_id,
                &joined.replay,
                presence,
            );
        }
        let audience = self.audiences.get_mut(&room).expect("pending join");
        let meanwhile = audience.admit(key, joined);
        // Nothing else is waiting to be delivered: this client alone catches up.
        debug_assert!(self.events.is_empty());
        self.events
            .extend(meanwhile.into_iter().filter(|e| e.ev > ev));
        self.fan_out(Some(key));
    }
}
