//! `say`: a message to one of the client's rooms.
//!
//! In: `{"type":"say","room":R,"text":T}`, or a plain-text frame, which is said in the
//! client's current room (the last it joined). The text must be non-empty and at most
//! `--max-message-bytes` as it is written in the event. The hub checks that the client is in
//! the room;
//! the authority gives the message the room's next id, encodes its event once and keeps it in
//! the room's history ([`Ask::Say`]). Out: the `message` event, to every member of the room,
//! the sender included: that is the reply, and how the sender learns the id. The authority
//! in memory has delivered it by the time it answers; an answer from Redis that overtakes its
//! message is held until the message comes back (`late.rs`).

use super::{Hub, not_member, now_ms};
use crate::authority::{Answer, Ask};
use crate::metrics::Metrics;
use crate::protocol::{Error, ErrorCode, Wire, check_text, room_name};

impl Hub {
    /// Client `key` says `text` in `room`; a plain text frame in its current room.
    pub(in crate::hub) fn say(&mut self, key: usize, wire: Wire) -> Result<(), Error> {
        let room = match wire.plain {
            true => None,
            false => Some(room_name(wire.room)?),
        };
        let text = check_text(wire.text, self.config.max_message_bytes)?;
        let rooms = &self.clients[key].rooms;
        let room = match room {
            Some(name) if rooms.contains(&name) => name,
            Some(name) => return Err(not_member(&name)),
            None => rooms.last().cloned().ok_or_else(|| {
                Error::new(
                    ErrorCode::NotMember,
                    "you are in no room; join one before sending plain text",
                )
            })?,
        };
        Metrics::add(&self.metrics.messages_received, 1);
        let ask = Ask::Say {
            room: room.clone(),
            text,
            ts: now_ms(),
        };
        self.ask(key, ask, move |hub, key, answer| match answer {
            // The message's own event, delivered to every member, is the reply.
            Answer::Said { .. } => {}
            Answer::NotMember => hub.send_error(key, not_member(&room)),
            other => hub.unfit(key, other),
        });
        Ok(())
    }
}
