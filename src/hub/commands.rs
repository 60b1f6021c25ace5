//! A client's commands, one unit each: `commands/say.rs` and its siblings.
//!
//! Each unit owns everything about its command, in one function on the hub: how its fields
//! are checked (the frame's JSON shape is read by `protocol::Wire::read`; the unit refuses
//! what is missing or wrong), what the hub decides alone (the client's own rooms, its token's
//! claim, the limit on rooms per client), the question it asks the authority, and what the
//! client is sent back. This file holds only what they share:
//!
//! - `Hub::ask`: a question to the authority for one client, and what the unit does with the
//!   answer (`then`). An authority that answers at once (in memory) has `then` run in the same
//!   call, after the room events the answer caused have been delivered; one that answers
//!   later (Redis) has it kept until the answer arrives (`late.rs`), and the unit's code is
//!   the same either way;
//! - the refusals and helpers several units use.
//!
//! `Hub::handle` (in `hub.rs`) reads each frame and hands it to the unit its `type` names, or
//! has it wait behind the question its client waits for (`late.rs`). Data enters a unit as
//! the frame's [`Wire`](crate::protocol) fields; it leaves as a question to the authority,
//! and the events the answer caused go to the members' queues (`Hub::fan_out` in `hub.rs`)
//! before the unit replies.

mod connect;
mod direct;
mod join;
mod leave;
mod nick;
mod rooms;
mod say;
mod who;

use super::{Hub, LOST_CLOSE};
use crate::authority::Answer;
use crate::authority::Ask;
use crate::metrics::Metrics;
use crate::protocol::{Error, ErrorCode, LeaveReason, Wire};

/// A command's unit: its one function on the hub, for client `key` and the frame's fields.
pub(super) type Unit = fn(&mut Hub, usize, Wire) -> Result<(), Error>;

/// Each command's unit, by the `type` that names it in a frame. A new command is a file above
/// and a line here.
const UNITS: [(&str, Unit); 7] = [
    ("nick", Hub::nick),
    ("join", Hub::join),
    ("leave", Hub::leave),
    ("say", Hub::say),
    ("direct", Hub::direct),
    ("who", Hub::who),
    ("rooms", Hub::rooms),
];

/// The unit a frame goes to: `say` for plain text, else the one its `type` names; a command
/// object whose `type` is missing or names no unit is refused.
pub(super) fn unit(wire: &Wire) -> Result<Unit, Error> {
    if wire.plain {
        return Ok(Hub::say);
    }
    let kind = wire.kind.as_deref();
    if let Some(&(_, unit)) = UNITS.iter().find(|(name, _)| Some(*name) == kind) {
        return Ok(unit);
    }
    let names: Vec<&str> = UNITS.iter().map(|(name, _)| *name).collect();
    let names = names.join(", ");
    let message = match kind {
        None => format!("missing field \"type\", one of {names}"),
        Some(kind) => format!("unknown type {kind:?}, expected one of {names}"),
    };
    Err(Error::new(ErrorCode::BadRequest, message))
}

/// Largest `offset` passed on to the authority: every page beyond is empty anyway, and Redis'
/// Lua would take a larger number for a float.
pub(super) const MAX_OFFSET: usize = u32::MAX as usize;

/// What a unit does with the authority's answer to its question, for client `key`.
pub(super) type Then = Box<dyn FnOnce(&mut Hub, usize, Answer) + Send>;

impl Hub {
    /// Asks the authority for client `key`; `then` handles the answer. Answered at once, it
    /// runs now, after the room events the question caused; answered later, the client waits
    /// for it (`late.rs`). An authority that no longer knows the client closes it, whatever
    /// the question.
    pub(super) fn ask<F>(&mut self, key: usize, ask: Ask, then: F)
    where
        F: FnOnce(&mut Hub, usize, Answer) + Send + 'static,
    {
        let client = self.id(key);
        let answer = self.authority.ask(client, ask, &mut self.events);
        self.fan_out(None);
        match answer {
            Some(Answer::Gone) => self.close(key, LOST_CLOSE, LeaveReason::Disconnected),
            Some(answer) => then(self, key, answer),
            None => self.wait(key, Box::new(then)),
        }
    }

    /// The authority could not be asked (`Answer::Unavailable`: Redis down, or too far
    /// behind): nothing was done, and the client is told so.
    pub(super) fn unavailable(&mut self, key: usize) {
        Metrics::add(&self.metrics.backend_unavailable, 1);
        let error = Error::new(
            ErrorCode::Unavailable,
            "the chat backend is unavailable; nothing was done, try again shortly",
        );
        self.send_error(key, error);
    }

    /// An answer a unit does not expect: `Unavailable`, or an authority's mistake (never the
    /// client's), which the client is told as `unavailable` too. (The answer is not formatted
    /// into the log: its Debug code would cost every build.)
    pub(super) fn unfit(&mut self, key: usize, answer: Answer) {
        misfit(&answer);
        self.unavailable(key);
    }
}

/// Logs an answer that does not fit its question, unless it is `Unavailable` (which fits
/// every question).
pub(super) fn misfit(answer: &Answer) {
    if !matches!(answer, Answer::Unavailable) {
        log::warn!("hub: an answer that does not fit the question");
    }
}

/// The refusal of a command about a room the client is not in.
pub(super) fn not_member(room: &str) -> Error {
    Error::new(
        ErrorCode::NotMember,
        format!("you are not in room {room:?}; join it first"),
    )
}

/// Milliseconds since the Unix epoch, for the `ts` of messages.
pub(super) fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
