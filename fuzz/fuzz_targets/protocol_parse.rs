//! `smolchat::hub::parse` (each command's unit reading its frame) on arbitrary frames.
//!
//! The input is tried as UTF-8 (when it is) and always as its lossy conversion, each with a
//! few `max_text` limits. Invariants checked, besides "no panic":
//! - `Ok(Say { text, room })`: `text` is non-empty, holds no control character but tab, newline
//!   and carriage return, and is at most `max` bytes once JSON-encoded (as serde_json writes
//!   it, measured); `room`, if any, is a
//!   valid room; a frame that does not start (after blanks) with `{` is said verbatim to the
//!   current room.
//! - `Ok(Nick)`, `Ok(Join/Leave/Who)`: the nick / room passes `valid_nick` / `valid_room`.
//! - `Ok(Direct { to, text })`: `text` as for `Say`, `to` passes `valid_nick`.
//! - A larger limit never turns an `Ok` into something else (limits only reject by length).
//! - `Err(e)`: `e.encode()` is a JSON object `{"type":"error","code":<string>,"message":...}`
//!   whose message round-trips, has at most `MAX_ERROR_CHARS` characters and no control
//!   characters, and whose encoding fits in `max_event_bytes` (the writer's bound).
//!
//! Set `SMOLCHAT_FUZZ_SKIP_KNOWN=1` to skip the checks of findings already reported (see
//! fuzz/README.md), so a long run can look for new ones.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smolchat::hub::parse;
use smolchat::protocol::{max_event_bytes, valid_nick, valid_room, Request, MAX_ERROR_CHARS};

const LIMITS: [usize; 5] = [0, 1, 16, 4096, usize::MAX];

fn skip_known() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("SMOLCHAT_FUZZ_SKIP_KNOWN").is_some_and(|v| v != "0"))
}

fn check_text(text: &str, max: usize, frame: &str) {
    assert!(!text.is_empty(), "empty text accepted from {frame:?}");
    let encoded = serde_json::to_string(text).unwrap().len() - 2;
    assert!(
        encoded <= max,
        "text of {encoded} encoded bytes accepted with max {max} from {frame:?}"
    );
    assert!(
        !text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')),
        "control character accepted from {frame:?}"
    );
}

fn check(frame: &str) {
    let mut first_ok: Option<Request> = None;
    for max in LIMITS {
        match parse(frame, max) {
            Ok(request) => {
                match &request {
                    Request::Say { room, text } => {
                        check_text(text, max, frame);
                        if let Some(room) = room {
                            assert!(valid_room(room), "invalid room {room:?} from {frame:?}");
                        } else {
                            assert!(
                                !frame.trim_start().starts_with('{'),
                                "plain Say from a command frame {frame:?}"
                            );
                            assert_eq!(text, frame, "plain text must be said verbatim");
                        }
                    }
                    Request::Nick { nick } => {
                        assert!(valid_nick(nick), "invalid nick {nick:?} from {frame:?}")
                    }
                    Request::Join { room, .. }
                    | Request::Leave { room }
                    | Request::Who { room, .. } => {
                        assert!(valid_room(room), "invalid room {room:?} from {frame:?}")
                    }
                    Request::Direct { to, text } => {
                        check_text(text, max, frame);
                        if !skip_known() {
                            assert!(
                                valid_nick(to),
                                "direct to invalid nick {to:?} accepted from {frame:?}"
                            );
                        }
                    }
                    Request::Rooms { .. } => {}
                }
                // Raising the limit keeps an accepted frame accepted, unchanged.
                match &first_ok {
                    Some(prev) => assert_eq!(prev, &request, "result changed with max {max}"),
                    None => first_ok = Some(request),
                }
            }
            Err(e) => {
                assert!(
                    first_ok.is_none(),
                    "accepted with a smaller limit, refused with max {max}: {e:?}"
                );
                let encoded = e.encode();
                let v: serde_json::Value = serde_json::from_str(encoded.as_str())
                    .unwrap_or_else(|err| panic!("error event is not JSON ({err}): {encoded:?}"));
                assert_eq!(v["type"], "error", "{encoded:?}");
                assert!(v["code"].is_string(), "{encoded:?}");
                assert_eq!(v["message"].as_str(), Some(e.message.as_str()), "{encoded:?}");
                assert!(e.message.chars().count() <= MAX_ERROR_CHARS, "{encoded:?}");
                assert!(!e.message.chars().any(char::is_control), "{encoded:?}");
                assert!(encoded.len() <= max_event_bytes(0, 0), "{encoded:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check(s);
    }
    let lossy = String::from_utf8_lossy(data);
    if let std::borrow::Cow::Owned(s) = &lossy {
        check(s);
    }
});
