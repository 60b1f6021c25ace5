//! A client's commands, one unit each: `commands/say.rs` and its siblings.
//!
//! Each unit owns everything about its command: how its fields are read from the frame
//! (`parse`), what the hub decides alone (the client's own rooms, its token's claim, the
//! limit on rooms per client), the question it asks the authority, and what the client is
//! sent back. This file holds only what they share:
//!
//! - [`parse`]: one text frame into a [`Request`] (or the [`Error`] the sender should see),
//!   by the command's `type`, which picks the unit;
//! - `Hub::ask`: a question to the authority for one client, and what the unit does with the
//!   answer (`then`). An authority that answers at once (in memory) has `then` run in the same
//!   call, after the room events the answer caused have been delivered; one that answers
//!   later (Redis) has it kept until the answer arrives (`late.rs`), and the unit's code is
//!   the same either way.
//!
//! `Hub::handle` (in `hub.rs`) starts each parsed command in its unit, or has it wait behind
//! the question its client waits for (`late.rs`).
//!
//! Data enters as the frame's text (from the session's reader) or as a [`Request`] (through
//! the hub's inbox, to its unit); it leaves as a question to the authority, and the events
//! the answer caused go to the members' queues (`Hub::fan_out` in `hub.rs`) before the unit
//! replies.

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
use crate::protocol::{Error, ErrorCode, LeaveReason, Request, Wire};

/// The command types, for the error that lists them.
const COMMANDS: &str = "nick, join, leave, say, direct, who, rooms";

/// Largest `offset` passed on to the authority: every page beyond is empty anyway, and Redis'
/// Lua would take a larger number for a float.
pub(super) const MAX_OFFSET: usize = u32::MAX as usize;

/// Parses one text frame. A frame whose first non-blank character is not `{` is plain text for
/// the sender's current room, as in the classic hub chat; one that starts with `{` must be a
/// valid command object, whose `type` names the unit that reads the rest. `max_text` is the
/// longest `text` accepted, in bytes as the text is sent in events (see
/// [`crate::protocol::encoded_len`]).
pub fn parse(frame: &str, max_text: usize) -> Result<Request, Error> {
    if !frame.trim_start().starts_with('{') {
        return say::plain(frame, max_text);
    }
    let mut wire = Wire::read(frame)?;
    let Some(kind) = wire.kind.take() else {
        return Err(bad(format!("missing field \"type\", one of {COMMANDS}")));
    };
    match kind.as_str() {
        "nick" => nick::parse(wire),
        "join" => join::parse(wire),
        "leave" => leave::parse(wire),
        "say" => say::parse(wire, max_text),
        "direct" => direct::parse(wire, max_text),
        "who" => who::parse(wire),
        "rooms" => Ok(rooms::parse(wire)),
        other => Err(bad(format!(
            "unknown type {other:?}, expected one of {COMMANDS}"
        ))),
    }
}

fn bad(message: String) -> Error {
    Error::new(ErrorCode::BadRequest, message)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn code(frame: &str) -> ErrorCode {
        parse(frame, 100).unwrap_err().code
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse(
                r#"{"type":"join","room":"dev","since":4,"epoch":"e1","extra":1}"#,
                100
            ),
            Ok(Request::Join {
                room: "dev".into(),
                since: Some(4),
                epoch: Some("e1".into())
            })
        );
        assert_eq!(
            parse(r#"{"type":"rooms"}"#, 100),
            Ok(Request::Rooms { offset: 0 })
        );
        assert_eq!(
            parse("  hello {there}", 100),
            Ok(Request::Say {
                room: None,
                text: "  hello {there}".into()
            })
        );
        assert_eq!(
            parse("[1,2]", 100),
            Ok(Request::Say {
                room: None,
                text: "[1,2]".into()
            })
        );
    }

    #[test]
    fn bad_commands_get_the_right_code() {
        assert_eq!(code("{not json"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"room":"x"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"say","room":"x"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"say","room":"x","text":""}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"type":"nick","nick":""}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"nick","nick":"a b"}"#),
            ErrorCode::InvalidNick
        );
        assert_eq!(
            code(r#"{"type":"join","room":"Dev"}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(code(r#"{"type":"join","room":5}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(&format!(
                r#"{{"type":"say","room":"x","text":"{}"}}"#,
                "a".repeat(101)
            )),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn direct_to_a_name_nobody_can_have_is_refused() {
        // Regression: fuzz/regressions/protocol_parse/direct-to-invalid-nick
        let e = parse(r#"{"type":"direct","to":"bo,b","text":"t"}"#, 100).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownRecipient);
        assert!(!e.message.contains("bo,b"));
    }
}
