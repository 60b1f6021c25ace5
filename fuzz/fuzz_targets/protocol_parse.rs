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
//! - `nick`: the new nick passes `valid_nick`; `room` and `members`: the room passes
//!   `valid_room`.
//! - A larger limit never turns an accepted frame into a refused one (limits only reject by
//!   length): the same event types arrive.
//! - `error`: a JSON object `{"type":"error","code":<string>,"message":...}` whose message has
//!   at most `MAX_ERROR_CHARS` characters and no control characters, and whose encoding fits
//!   in `max_event_bytes` (the writer's bound).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use smolchat::hub::{Address, Command, Hub, Outgoing};
use smolchat::protocol::{max_event_bytes, valid_nick, valid_room, MAX_ERROR_CHARS};
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

/// The events a client in `lobby` and `dev` gets for `frame`, on a hub with text limit `max`.
fn events_for(frame: &str, max: usize) -> Vec<Value> {
    let config = Config {
        max_message_bytes: max,
        ..Config::default()
    };
    let mut hub = Hub::new(Arc::new(config), Arc::new(Metrics::default()));
    let (tx, rx) = queue::bounded(64, usize::MAX);
    let client = hub.connect(tx, Address::of("127.0.0.1:1"), None);
    let join = r#"{"type":"join","room":"dev"}"#;
    for frame in [join, frame] {
        while rx.try_recv().is_some() {}
        hub.handle(Command::Request { client, frame: frame.into() });
    }
    let mut events = Vec::new();
    while let Some(item) = rx.try_recv() {
        match item {
            Outgoing::Event(f) => events.push(serde_json::from_str(f.as_str()).expect("JSON")),
            other => panic!("{other:?} for {frame:?}"),
        }
    }
    events
}

fn check(frame: &str) {
    let mut first_ok: Option<Vec<Value>> = None;
    for max in LIMITS {
        let events = events_for(frame, max);
        let refused = events.iter().any(|e| e["type"] == "error");
        for e in &events {
            match e["type"].as_str().expect("a string type") {
                "message" => {
                    check_text(e["text"].as_str().unwrap(), max, frame);
                    let room = e["room"].as_str().unwrap();
                    assert!(valid_room(room), "invalid room {room:?} from {frame:?}");
                    if !frame.trim_start().starts_with('{') {
                        assert_eq!((room, e["text"].as_str()), ("dev", Some(frame)), "plain text");
                    }
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
                    let encoded = e.to_string();
                    assert!(e["code"].is_string(), "{encoded}");
                    let message = e["message"].as_str().expect("a message");
                    assert!(message.chars().count() <= MAX_ERROR_CHARS, "{encoded}");
                    assert!(!message.chars().any(char::is_control), "{encoded}");
                    assert!(encoded.len() <= max_event_bytes(0, 0), "{encoded}");
                }
                _ => {}
            }
        }
        // Raising the limit keeps an accepted frame accepted, with the same events.
        let kinds: Vec<Value> = events.iter().map(|e| e["type"].clone()).collect();
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
