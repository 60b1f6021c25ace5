//! One frame, as a v1 client sends it, read by a `smolchat::hub::Hub` (each command's unit
//! checking its own fields) on arbitrary input.
//!
//! The input is tried as UTF-8 (when it is) and always as its lossy conversion, each with a
//! few `--max-message-bytes` limits, each on a fresh hub whose client is in `lobby` and `dev`
//! (`dev` joined last). Invariants checked on what the client gets, besides "no panic":
//! - `message` (a `say`): `text` is non-empty, holds no control character but tab, newline and
//!   carriage return, and is at most `max` bytes once JSON-encoded (as serde_json writes it,
//!   measured); the room is valid; a frame that does not start (after blanks) with `{` is said
//!   verbatim in `dev`.
//! - `direct` (to `guest-2`, also connected): `text` as for `message`, `to` passes
//!   `valid_nick`; `nick`: the new nick passes `valid_nick`; `room` and `members`: the room
//!   passes `valid_room`.
//! - A larger limit never turns an accepted frame into a refused one (limits only reject by
//!   length): the same event types arrive.
//! - `error`: a JSON object `{"type":"error","code":<string>,"message":...}` whose message has
//!   at most `MAX_ERROR_CHARS` characters and no control characters, and which, as written,
//!   fits in `max_event_bytes` (the writer's bound); the refusal of a `direct` to a name nobody
//!   can have does not quote the name.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use smolchat::hub::{Address, Command, Hub, Outgoing};
use smolchat::protocol::{max_event_bytes, valid_nick, valid_room, Wire, MAX_ERROR_CHARS};
use smolchat::queue;
use smolchat::{Config, Metrics};

const LIMITS: [usize; 4] = [1, 16, 4096, 1 << 20];

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

/// The events a client in `lobby` and `dev` gets for `frame`, on a hub with text limit `max`
/// where `guest-2` is connected too: each as written, and read back.
fn events_for(frame: &str, max: usize) -> Vec<(String, Value)> {
    let config = Config {
        max_message_bytes: max,
        ..Config::default()
    };
    let mut hub = Hub::new(Arc::new(config), Arc::new(Metrics::default()));
    let (tx, rx) = queue::bounded(64, usize::MAX);
    let client = hub.connect(tx, Address::of("127.0.0.1:1"), None);
    let (other, _others) = queue::bounded(64, usize::MAX);
    hub.connect(other, Address::of("127.0.0.1:2"), None);
    let join = r#"{"type":"join","room":"dev"}"#;
    for frame in [join, frame] {
        while rx.try_recv().is_some() {}
        // As the session's reader does: the JSON shape read, or refused.
        hub.handle(match Wire::read(frame) {
            Ok(wire) => Command::Request { client, wire: Box::new(wire) },
            Err(error) => Command::Refuse { client, error },
        });
    }
    let mut events = Vec::new();
    while let Some(item) = rx.try_recv() {
        match item {
            Outgoing::Event(f) => {
                let value = serde_json::from_str(f.as_str()).expect("JSON");
                events.push((f.as_str().to_string(), value));
            }
            other => panic!("{other:?} for {frame:?}"),
        }
    }
    events
}

fn check(frame: &str) {
    let mut first_ok: Option<Vec<Value>> = None;
    for max in LIMITS {
        let events = events_for(frame, max);
        let refused = events.iter().any(|(_, e)| e["type"] == "error");
        for (written, e) in &events {
            match e["type"].as_str().expect("a string type") {
                "message" => {
                    check_text(e["text"].as_str().unwrap(), max, frame);
                    let room = e["room"].as_str().unwrap();
                    assert!(valid_room(room), "invalid room {room:?} from {frame:?}");
                    if !frame.trim_start().starts_with('{') {
                        assert_eq!((room, e["text"].as_str()), ("dev", Some(frame)), "plain text");
                    }
                }
                "direct" => {
                    check_text(e["text"].as_str().unwrap(), max, frame);
                    let to = e["to"].as_str().unwrap();
                    assert!(valid_nick(to), "direct to invalid nick {to:?} from {frame:?}")
                }
                "nick" => {
                    let nick = e["nick"].as_str().unwrap();
                    assert!(valid_nick(nick), "invalid nick {nick:?} from {frame:?}")
                }
                "room" | "members" => {
                    let room = e["room"].as_str().unwrap();
                    assert!(valid_room(room), "invalid room {room:?} from {frame:?}")
                }
                "error" => {
                    assert!(e["code"].is_string(), "{written}");
                    let message = e["message"].as_str().expect("a message");
                    assert!(message.chars().count() <= MAX_ERROR_CHARS, "{written}");
                    assert!(!message.chars().any(char::is_control), "{written}");
                    assert!(written.len() <= max_event_bytes(0, 0), "{written}");
                    // A `direct` to a name nobody can have does not quote the name back
                    // (regressions/protocol_parse/direct-to-invalid-nick).
                    let sent: Value = serde_json::from_str(frame).unwrap_or(Value::Null);
                    if let (Some("direct"), Some(to)) = (sent["type"].as_str(), sent["to"].as_str()) {
                        if !valid_nick(to) && to.len() > 3 {
                            assert!(!message.contains(to), "{to:?} quoted: {written}");
                        }
                    }
                }
                _ => {}
            }
        }
        // Raising the limit keeps an accepted frame accepted, with the same events.
        let kinds: Vec<Value> = events.iter().map(|(_, e)| e["type"].clone()).collect();
        match &first_ok {
            Some(prev) => assert_eq!(prev, &kinds, "result changed with max {max}: {frame:?}"),
            None if !refused => first_ok = Some(kinds),
            None => {}
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
