//! `say`: a message to one of the client's rooms.
//!
//! In: `{"type":"say","room":R,"text":T}`, or a plain-text frame, which is said in the
//! client's current room (the last it joined). The hub checks that the client is in the room;
//! the authority gives the message the room's next id, encodes its event once and keeps it in
//! the room's history ([`Ask::Say`]). Out: the `message` event, to every member of the room,
//! the sender included: that is the reply, and how the sender learns the id. The authority
//! in memory has delivered it by the time it answers; an answer from Redis that overtakes its
//! message is held until the message comes back (`late.rs`).

use super::{Hub, not_member, now_ms};
use crate::authority::{Answer, Ask};
use crate::metrics::Metrics;
use crate::protocol::{Error, ErrorCode, Request, Wire, check_text, room_name};

/// `{"type":"say",...}`.
pub(super) fn parse(wire: Wire, max_text: usize) -> Result<Request, Error> {
    Ok(Request::Say {
        room: Some(room_name(wire.room)?),
        text: check_text(wire.text, max_text)?,
    })
}

/// A frame that is not a command object: its text, for the client's current room.
pub(super) fn plain(frame: &str, max_text: usize) -> Result<Request, Error> {
    let text = check_text(Some(frame.to_string()), max_text)?;
    Ok(Request::Say { room: None, text })
}

impl Hub {
    /// Client `key` says `text` in `room` (`None`: its current room).
    pub(in crate::hub) fn say(
        &mut self,
        key: usize,
        room: Option<String>,
        text: String,
    ) -> Result<(), Error> {
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
