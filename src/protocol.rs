//! Protocol v1 on the wire: what clients send, what the server sends back, and the error codes.
//!
//! Data enters as the text of one WebSocket frame, which the session's reader reads here into
//! a [`Wire`] (its JSON shape, or a plain text frame); each command's unit in the hub then
//! checks its own fields, with the checks every command shares ([`check_text`], [`valid_nick`],
//! [`valid_room`]), and refuses what is wrong with an [`Error`] the sender is sent. Data leaves as an [`Event`], which [`Event::encode`] serializes once into a
//! reference-counted [`Frame`] that the hub hands to every recipient.
//! `docs/protocol.md` is the reader's version of this file.

use serde::{Deserialize, Serialize};

/// One encoded event, ready to be written as a WebSocket text frame. Cloning it bumps a
/// reference count; the bytes are shared by every recipient.
pub type Frame = async_tungstenite::tungstenite::Utf8Bytes;

/// Longest nick or room name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Rooms per page of a `rooms` reply.
pub const ROOMS_PAGE: usize = 50;

/// Longest `message` of an `error` event, in characters; longer ones are cut. Some messages
/// quote what the client sent (a parser's complaint, an unknown type), and a reply must never
/// be allowed to grow with the input.
pub const MAX_ERROR_CHARS: usize = 200;

/// Bytes an event adds around its variable parts: type, keys, quotes, punctuation, a room and
/// a nick (32 bytes each) and three numbers of up to 20 digits. Generous on purpose; the
/// bounds below are checked by the hub's fuzz target and unit tests.
const ENVELOPE_BYTES: usize = 256;
/// Bytes one nick adds to a member list: `"` nick `",`.
const LISTED_NICK_BYTES: usize = MAX_NAME_CHARS + 3;
/// Bytes one entry adds to a `rooms` page: `{"name":"` room `","members":` 20 digits `},`.
const LISTED_ROOM_BYTES: usize = MAX_NAME_CHARS + 44;

/// The largest event the hub can build, in bytes, for messages of at most `max_text` encoded
/// bytes and member lists of at most `presence_limit` nicks. Every frame a client's writer is
/// given fits in this, so the writer's buffer is sized from it.
pub fn max_event_bytes(max_text: usize, presence_limit: usize) -> usize {
    let message = max_text.saturating_add(ENVELOPE_BYTES);
    let members = presence_limit.saturating_mul(LISTED_NICK_BYTES) + ENVELOPE_BYTES;
    let rooms = ROOMS_PAGE * LISTED_ROOM_BYTES + ENVELOPE_BYTES;
    // An error's message: each character is at most 4 bytes of UTF-8, 2 more if escaped.
    let error = MAX_ERROR_CHARS * 6 + ENVELOPE_BYTES;
    message.max(members).max(rooms).max(error)
}

/// The error codes of protocol v1, sent in `error` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, unknown type, a missing or empty field, text that is too long or
    /// holds control characters.
    BadRequest,
    /// A nick that breaks the naming rules.
    InvalidNick,
    /// A nick someone else already has (ignoring case).
    NickTaken,
    /// A room name that breaks the naming rules.
    InvalidRoom,
    /// The command needs membership of a room the client is not in.
    NotMember,
    /// A direct message to a nick nobody has.
    UnknownRecipient,
    /// The client sends faster than `--rate-limit` allows.
    RateLimited,
    /// Joining would pass `--max-rooms` or `--max-rooms-per-client`.
    RoomLimit,
    /// Scale-out only: the shared store (Redis) cannot be reached; nothing was done.
    Unavailable,
    /// Not allowed for this client: a rename when clients authenticate (`--auth-secret-file`),
    /// a room its token does not list, a connection beyond `--max-connections-per-user`.
    Forbidden,
}

/// A refusal to show the client: a code to branch on and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What kind of refusal this is.
    pub code: ErrorCode,
    /// What was wrong and what to do instead.
    pub message: String,
}

impl Error {
    /// An error with the given code and message.
    /// A message longer than [`MAX_ERROR_CHARS`] is cut, and control characters in it
    /// become `?`: messages may quote client input, and replies must stay bounded and clean.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.chars().count() > MAX_ERROR_CHARS || message.chars().any(char::is_control) {
            message = message
                .chars()
                .take(MAX_ERROR_CHARS)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
        }
        Error { code, message }
    }
}

/// The JSON shape of every client command at once: `type` plus every field any command
/// uses. Unknown fields are ignored, so newer clients can add optional fields without breaking
/// older servers. A flat struct rather than a serde-tagged enum: it parses in one pass without
/// buffering, and its generated code is a third of the size. A plain text frame is a `Wire`
/// too: its `text`, marked `plain` (see [`Wire::read`]).
#[derive(Debug, Deserialize, Default)]
pub struct Wire {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) nick: Option<String>,
    pub(crate) room: Option<String>,
    pub(crate) since: Option<u64>,
    pub(crate) epoch: Option<String>,
    pub(crate) text: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) offset: Option<usize>,
    /// A plain text frame, not a command object.
    #[serde(skip)]
    pub(crate) plain: bool,
}

impl Wire {
    /// The bytes of its strings: what a waiting command keeps besides itself.
    pub(crate) fn bytes(&self) -> usize {
        let fields = [
            &self.kind,
            &self.nick,
            &self.room,
            &self.epoch,
            &self.text,
            &self.to,
        ];
        fields
            .iter()
            .map(|f| f.as_ref().map_or(0, String::len))
            .sum()
    }

    /// One text frame. A frame whose first non-blank character is not `{` is plain text for
    /// the sender's current room, as in the classic hub chat. One that starts with `{` must be
    /// a valid command object, whose `type` names the unit that checks the rest
    /// (`Hub::handle`).
    pub fn read(frame: &str) -> Result<Wire, Error> {
        if !frame.trim_start().starts_with('{') {
            let text = Some(frame.to_string());
            return Ok(Wire {
                text,
                plain: true,
                ..Wire::default()
            });
        }
        serde_json::from_str(frame).map_err(|e| {
            Error::new(
                ErrorCode::BadRequest,
                format!("not a valid command: {e}; see docs/protocol.md"),
            )
        })
    }
}

fn bad(message: String) -> Error {
    Error::new(ErrorCode::BadRequest, message)
}

/// A field the command needs: present and not empty.
pub(crate) fn required(field: &str, value: Option<String>) -> Result<String, Error> {
    match value {
        None => Err(bad(format!("missing field \"{field}\""))),
        Some(v) => {
            nonempty(field, &v)?;
            Ok(v)
        }
    }
}

fn nonempty(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        Err(Error::new(
            ErrorCode::BadRequest,
            format!("field \"{field}\" must not be empty"),
        ))
    } else {
        Ok(())
    }
}

/// A room name the command needs: present and valid.
pub(crate) fn room_name(room: Option<String>) -> Result<String, Error> {
    let room = required("room", room)?;
    if valid_room(&room) {
        Ok(room)
    } else {
        Err(Error::new(
            ErrorCode::InvalidRoom,
            "a room name is 1-32 characters: a-z, 0-9, '_' or '-'",
        ))
    }
}

/// Chat text: not empty, no control characters but tab, newline and carriage return, and at
/// most `max_text` bytes once encoded in an event. Both rules keep every `message` event the
/// hub stores and sends within [`max_event_bytes`]: JSON writes a control character as six
/// bytes (`\u0001`), so 1,600 of them would otherwise make a 9.6 KB event out of a 1.6 KB
/// frame. Control characters are refused rather than counted because they are never chat:
/// they garble terminals (escape sequences) and logs.
pub fn check_text(text: Option<String>, max_text: usize) -> Result<String, Error> {
    let text = required("text", text)?;
    // One pass over the bytes, for both rules (the hub runs it for every message). In UTF-8 a
    // control character is a byte below 0x20, 0x7f, or U+0080-U+009F: 0xc2, then 0x80-0x9f.
    let bytes = text.as_bytes();
    let (mut escaped, mut control) = (0, false);
    for (i, &b) in bytes.iter().enumerate() {
        if escapes(b) {
            escaped += 1;
        } else if b < 0x20
            || b == 0x7f
            || (b == 0xc2 && matches!(bytes.get(i + 1), Some(0x80..0xa0)))
        {
            control = true;
        }
    }
    if let Some(c) = control
        .then(|| {
            text.chars()
                .find(|&c| c.is_control() && !allowed_control(c))
        })
        .flatten()
    {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!(
                "text contains the control character U+{:04X}; only tab, newline and carriage \
                 return are allowed",
                c as u32
            ),
        ));
    }
    let encoded = text.len() + escaped;
    if encoded > max_text {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!(
                "text is {encoded} bytes as sent (quotes, backslashes, tabs and line breaks \
                 count twice); the limit is {max_text}"
            ),
        ));
    }
    Ok(text)
}

/// True for the bytes JSON writes as two (`\"`, `\\`, `\t`, `\n`, `\r`), in text without other
/// control characters.
fn escapes(b: u8) -> bool {
    matches!(b, b'"' | b'\\' | b'\t' | b'\n' | b'\r')
}

fn allowed_control(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r')
}

/// True for 1-32 characters of ASCII letters, digits, `_`, `-` and `.`.
pub fn valid_nick(nick: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&nick.len())
        && nick
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// True for 1-32 characters of `a-z`, `0-9`, `_` and `-`.
pub fn valid_room(room: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Why a client left a room, carried by `leave` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The client sent `leave`.
    Left,
    /// The connection ended.
    Disconnected,
    /// Nothing arrived from the client for `--idle-timeout`.
    Timeout,
    /// The client's queue filled up: it did not read fast enough.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// Scale-out only: the member's node stopped without saying goodbye (its heartbeat expired).
    NodeLost,
}

impl LeaveReason {
    /// Every reason.
    pub const ALL: [LeaveReason; 6] = [
        LeaveReason::Left,
        LeaveReason::Disconnected,
        LeaveReason::Timeout,
        LeaveReason::SlowConsumer,
        LeaveReason::Shutdown,
        LeaveReason::NodeLost,
    ];

    /// The reason's name on the wire, as `leave` events carry it.
    pub fn name(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::Timeout => "timeout",
            LeaveReason::SlowConsumer => "slow_consumer",
            LeaveReason::Shutdown => "shutdown",
            LeaveReason::NodeLost => "node_lost",
        }
    }

    /// The reason with this wire name.
    pub fn from_name(name: &str) -> Option<LeaveReason> {
        LeaveReason::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The limits a client is told about in `welcome`, so it can stay within them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// Largest frame the server accepts, in bytes.
    pub max_message_bytes: usize,
    /// Messages each room keeps for replay.
    pub history: usize,
    /// Messages per second allowed (0: no limit).
    pub rate_limit: u32,
    /// Burst allowed above the rate.
    pub rate_burst: u32,
    /// Rooms one client may be in.
    pub max_rooms_per_client: usize,
    /// Rooms larger than this send no join/leave/nick events and list only this many members.
    pub presence_limit: usize,
}

/// One entry of a `rooms` event.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary<'a> {
    /// The room's name.
    pub name: &'a str,
    /// How many clients are in it.
    pub members: usize,
}

impl<'a> RoomSummary<'a> {
    /// A page of rooms as the authority lists them (name, members), for the `rooms` event and
    /// the HTTP API's room list.
    pub fn page(rooms: &'a [(String, usize)]) -> Vec<RoomSummary<'a>> {
        rooms
            .iter()
            .map(|(name, members)| RoomSummary {
                name,
                members: *members,
            })
            .collect()
    }
}

/// An event from the server, borrowing its fields from the hub's state while it is encoded.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event<'a> {
    /// First event on every connection.
    Welcome {
        nick: &'a str,
        server: &'a str,
        limits: Limits,
    },
    /// To a client that joined (or resynced) a room.
    Room {
        room: &'a str,
        epoch: &'a str,
        /// At most `--presence-limit` nicks, in join order.
        members: Vec<&'a str>,
        /// How many members the room has.
        count: usize,
        last_id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        complete: Option<bool>,
    },
    /// To a room's other members when someone joins it.
    Join { room: &'a str, nick: &'a str },
    /// To a room's remaining members when someone leaves it.
    Leave {
        room: &'a str,
        nick: &'a str,
        reason: LeaveReason,
    },
    /// A chat message, to every member of the room (the sender included).
    Message {
        room: &'a str,
        id: u64,
        from: &'a str,
        text: &'a str,
        ts: u64,
        /// Published through the HTTP API (`/api/`), not said by a client.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        api: bool,
    },
    /// A rename, to the renamed client and everyone who shares a room with it.
    Nick { old: &'a str, nick: &'a str },
    /// A private message, to its recipient and back to its sender.
    Direct {
        from: &'a str,
        to: &'a str,
        text: &'a str,
        ts: u64,
    },
    /// The answer to `who`: one page of at most `--presence-limit` nicks.
    Members {
        room: &'a str,
        members: Vec<&'a str>,
        /// How many members the room has.
        count: usize,
        /// The `offset` of the next page, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<usize>,
    },
    /// The answer to `rooms`: one page of at most [`ROOMS_PAGE`] rooms, sorted by name.
    Rooms {
        rooms: Vec<RoomSummary<'a>>,
        /// How many rooms the server has.
        count: usize,
        /// The `offset` of the next page, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<usize>,
    },
    /// A refusal; the connection stays open.
    Error { code: ErrorCode, message: &'a str },
}

impl Event<'_> {
    /// Serializes the event once; the result is shared by all its recipients.
    pub fn encode(&self) -> Frame {
        // Serializing these types cannot fail: every key is a string and no value is a float.
        let json = serde_json::to_string(self).expect("events always serialize");
        // serde_json grows its buffer by doubling, so up to half of it is spare. A frame may
        // live long (in history, in slow clients' queues): keep only the bytes.
        Frame::from(json.into_boxed_str().into_string())
    }

    /// One page of the `rooms` reply: `page`, the rooms from `offset` in order of name, of
    /// `count` in all.
    pub fn rooms_page(page: Vec<RoomSummary<'_>>, count: usize, offset: usize) -> Frame {
        let end = offset.saturating_add(page.len());
        Event::Rooms {
            rooms: page,
            count,
            next: (end < count).then_some(end),
        }
        .encode()
    }
}

impl Error {
    /// The `error` event for this refusal.
    pub fn encode(&self) -> Frame {
        Event::Error {
            code: self.code,
            message: &self.message,
        }
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text check's byte scan refuses exactly the control characters (Unicode's `Cc`) but
    /// tab, newline and carriage return, and counts the text's length as serde_json writes it.
    #[test]
    fn the_text_check_refuses_exactly_the_control_characters() {
        let samples = (0..0x3000)
            .chain([0xfeff, 0x1_f600])
            .filter_map(char::from_u32);
        for c in samples {
            let text = format!("a{c}\"b");
            let refused = c.is_control() && !matches!(c, '\t' | '\n' | '\r');
            match check_text(Some(text.clone()), usize::MAX) {
                Ok(_) => assert!(!refused, "U+{:04X} accepted", c as u32),
                Err(e) => assert!(refused, "U+{:04X} refused: {}", c as u32, e.message),
            }
            if !refused {
                let limit = serde_json::to_string(&text).unwrap().len() - 2;
                assert!(check_text(Some(text.clone()), limit).is_ok());
                assert!(check_text(Some(text), limit - 1).is_err());
            }
        }
    }

    #[test]
    fn names() {
        assert!(valid_nick("Ada.L-1_x"));
        assert!(!valid_nick(&"a".repeat(33)));
        assert!(!valid_nick("é"));
        assert!(valid_room("dev-ops_2"));
        assert!(!valid_room("Dev"));
        assert!(!valid_room(""));
    }

    #[test]
    fn events_encode_with_exact_field_names() {
        let f = Event::Leave {
            room: "dev",
            nick: "ada",
            reason: LeaveReason::SlowConsumer,
        }
        .encode();
        assert_eq!(
            f.as_str(),
            r#"{"type":"leave","room":"dev","nick":"ada","reason":"slow_consumer"}"#
        );
        let e = Error::new(ErrorCode::UnknownRecipient, "no such nick").encode();
        assert_eq!(
            e.as_str(),
            r#"{"type":"error","code":"unknown_recipient","message":"no such nick"}"#
        );
    }

    #[test]
    fn leave_reasons_are_named_as_clients_see_them() {
        for r in LeaveReason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json.trim_matches('"'), r.name());
            assert_eq!(LeaveReason::from_name(r.name()), Some(r));
        }
        assert_eq!(LeaveReason::from_name("gone"), None);
    }
}
