//! The hub's rules with the in-memory authority, which answers at once: no sockets, no
//! executor, commands in and queued events out.

use super::*;
use crate::protocol::ErrorCode;
use serde_json::{Value, json};

pub(super) struct TestClient {
    pub(super) id: ClientId,
    pub(super) queue: queue::Receiver<Outgoing>,
}

fn hub_with(config: Config) -> Hub {
    Hub::new(Arc::new(config), Arc::new(Metrics::default()))
}

fn hub() -> Hub {
    hub_with(Config::default())
}

fn connect(hub: &mut Hub, queue: usize) -> TestClient {
    let (tx, rx) = queue::bounded(queue, usize::MAX);
    let id = hub.connect(tx, Address::of("127.0.0.1:1"), None);
    let c = TestClient { id, queue: rx };
    c.drain();
    c
}

impl TestClient {
    pub(super) fn events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(item) = self.queue.try_recv() {
            match item {
                Outgoing::Event(f) => out.push(serde_json::from_str(f.as_str()).unwrap()),
                Outgoing::Binary(b) => out.push(serde_json::json!({"binary": b.to_vec()})),
                Outgoing::Close(code, reason) => {
                    out.push(serde_json::json!({"close": code, "reason": reason}))
                }
            }
        }
        out
    }
    pub(super) fn drain(&self) {
        self.events();
    }
    /// Sends the command `command` as a client sends it: a text frame.
    pub(super) fn send(&self, hub: &mut Hub, command: Value) {
        self.send_text(hub, &command.to_string());
    }
    /// Sends the text frame `frame`, as the session's reader does: its JSON shape read, or
    /// refused.
    pub(super) fn send_text(&self, hub: &mut Hub, frame: &str) {
        let client = self.id;
        hub.handle(match Wire::read(frame) {
            Ok(wire) => Command::Request {
                client,
                wire: Box::new(wire),
            },
            Err(error) => Command::Refuse { client, error },
        });
    }
    pub(super) fn say(&self, hub: &mut Hub, room: &str, text: &str) {
        self.send(hub, json!({"type": "say", "room": room, "text": text}));
    }
}

pub(super) fn join(room: &str) -> Value {
    json!({"type": "join", "room": room, "since": null, "epoch": null})
}

#[test]
fn connect_sends_welcome_then_room() {
    let mut hub = hub();
    let (tx, rx) = queue::bounded(8, usize::MAX);
    hub.connect(tx, Address::of("127.0.0.1:1"), None);
    let c = TestClient {
        id: ClientId { key: 0, serial: 1 },
        queue: rx,
    };
    let events = c.events();
    assert_eq!(events[0]["type"], "welcome");
    assert_eq!(events[0]["nick"], "guest-1");
    assert_eq!(events[0]["limits"]["max_message_bytes"], 4096);
    assert_eq!(events[1]["type"], "room");
    assert_eq!(events[1]["room"], "lobby");
    assert_eq!(events[1]["members"], serde_json::json!(["guest-1"]));
    assert_eq!(events.len(), 2);
}

/// Every frame is read by the hub: a command object goes to the unit its `type` names, which
/// checks its fields; anything else is plain text for the current room.
#[test]
fn frames_are_read_by_their_unit() {
    let mut hub = hub();
    let a = connect(&mut hub, 64);
    a.send_text(
        &mut hub,
        r#"{"type":"join","room":"dev","since":4,"epoch":"e1","extra":1}"#,
    );
    let joined = a.events();
    // `since` was read: a join with a cursor is told whether its replay is complete.
    assert!(joined[0]["complete"].is_boolean(), "{joined:?}");
    assert_eq!(
        (joined[0]["type"].as_str(), joined[0]["room"].as_str()),
        (Some("room"), Some("dev"))
    );
    a.send_text(&mut hub, r#"{"type":"rooms"}"#);
    assert_eq!(a.events()[0]["type"], "rooms");
    // Plain text, verbatim, in the room joined last: even when it has braces or is JSON.
    for text in ["  hello {there}", "[1,2]"] {
        a.send_text(&mut hub, text);
        let said = a.events();
        assert_eq!(
            (said[0]["room"].as_str(), said[0]["text"].as_str()),
            (Some("dev"), Some(text))
        );
    }
}

/// A frame the hub cannot take gets one `error` event with the right code.
#[test]
fn bad_frames_get_the_right_code() {
    let mut hub = hub();
    let a = connect(&mut hub, 64);
    let too_long = "a".repeat(Config::default().max_message_bytes + 1);
    let frames = [
        ("{not json".to_string(), "bad_request"),
        (r#"{"type":"dance"}"#.into(), "bad_request"),
        (r#"{"room":"x"}"#.into(), "bad_request"),
        (r#"{"type":"say","room":"lobby"}"#.into(), "bad_request"),
        (
            r#"{"type":"say","room":"lobby","text":""}"#.into(),
            "bad_request",
        ),
        (
            format!(r#"{{"type":"say","room":"lobby","text":"{too_long}"}}"#),
            "bad_request",
        ),
        (too_long.clone(), "bad_request"),
        (r#"{"type":"nick","nick":""}"#.into(), "bad_request"),
        (r#"{"type":"nick","nick":"a b"}"#.into(), "invalid_nick"),
        (r#"{"type":"join","room":"Dev"}"#.into(), "invalid_room"),
        (r#"{"type":"join","room":5}"#.into(), "bad_request"),
        (r#"{"type":"who","room":"a b"}"#.into(), "invalid_room"),
        (r#"{"type":"leave"}"#.into(), "bad_request"),
        (
            r#"{"type":"say","room":"dev","text":"x"}"#.into(),
            "not_member",
        ),
    ];
    for (frame, code) in frames {
        a.send_text(&mut hub, &frame);
        let events = a.events();
        assert_eq!(events.len(), 1, "{frame}: {events:?}");
        assert_eq!(
            (events[0]["type"].as_str(), events[0]["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame}"
        );
    }
}

/// Regression: fuzz/regressions/protocol_parse/direct-to-invalid-nick. A name nobody can
/// have is nobody's, and the error does not quote it.
#[test]
fn direct_to_a_name_nobody_can_have_is_refused() {
    let mut hub = hub();
    let a = connect(&mut hub, 64);
    a.send_text(&mut hub, r#"{"type":"direct","to":"bo,b","text":"t"}"#);
    let events = a.events();
    assert_eq!(events[0]["code"], "unknown_recipient");
    assert!(!events[0]["message"].as_str().unwrap().contains("bo,b"));
}

#[test]
fn messages_reach_members_only_and_history_replays() {
    let mut hub = hub();
    let a = connect(&mut hub, 64);
    let b = connect(&mut hub, 64);
    a.drain();
    a.send(&mut hub, join("dev"));
    a.say(&mut hub, "dev", "one");
    a.say(&mut hub, "lobby", "two");
    let got_a = a.events();
    let got_b = b.events();
    assert_eq!(got_a.iter().filter(|e| e["type"] == "message").count(), 2);
    let b_messages: Vec<_> = got_b.iter().filter(|e| e["type"] == "message").collect();
    assert_eq!(b_messages.len(), 1, "b is not in dev: {got_b:?}");
    assert_eq!(b_messages[0]["text"], "two");
    assert_eq!(b_messages[0]["id"], 1);

    b.send(&mut hub, join("dev"));
    let got_b = b.events();
    assert_eq!(got_b[0]["type"], "room");
    assert_eq!(got_b[0]["last_id"], 1);
    assert_eq!(got_b[1]["text"], "one");
    assert_eq!(
        a.events()[0],
        serde_json::json!({"type":"join","room":"dev","nick":"guest-2"})
    );
}

#[test]
fn nick_rules_and_events() {
    let mut hub = hub();
    let a = connect(&mut hub, 64);
    let b = connect(&mut hub, 64);
    a.drain();
    a.send(&mut hub, json!({"type": "nick", "nick": "Ada"}));
    assert_eq!(
        b.events()[0],
        serde_json::json!({"type":"nick","old":"guest-1","nick":"Ada"})
    );
    assert_eq!(a.events()[0]["type"], "nick");
    b.send(&mut hub, json!({"type": "nick", "nick": "aDA"}));
    assert_eq!(b.events()[0]["code"], "nick_taken");
    a.send(&mut hub, json!({"type": "nick", "nick": "ADA"}));
    assert_eq!(
        a.events()[0]["nick"],
        "ADA",
        "a client may change its own nick's case"
    );
}

#[test]
fn direct_and_errors() {
    let mut hub = hub();
    let a = connect(&mut hub, 64);
    let b = connect(&mut hub, 64);
    a.drain();
    a.send(
        &mut hub,
        json!({"type": "direct", "to": "GUEST-2", "text": "psst"}),
    );
    assert_eq!(b.events()[0]["type"], "direct");
    assert_eq!(a.events()[0]["to"], "guest-2");
    a.send(
        &mut hub,
        json!({"type": "direct", "to": "nobody", "text": "x"}),
    );
    assert_eq!(a.events()[0]["code"], "unknown_recipient");
    a.say(&mut hub, "dev", "x");
    assert_eq!(a.events()[0]["code"], "not_member");
    a.send(&mut hub, json!({"type": "leave", "room": "dev"}));
    assert_eq!(a.events()[0]["code"], "not_member");
    assert!(b.events().is_empty());
}

#[test]
fn disconnect_announces_leave_and_frees_the_nick() {
    let mut hub = hub();
    let a = connect(&mut hub, 64);
    let b = connect(&mut hub, 64);
    a.drain();
    hub.handle(Command::Disconnect {
        client: b.id,
        reason: LeaveReason::Disconnected,
    });
    assert_eq!(
        a.events()[0],
        serde_json::json!({"type":"leave","room":"lobby","nick":"guest-2","reason":"disconnected"})
    );
    // A late command from the departed client must not act for the slot's next owner.
    let c = connect(&mut hub, 64);
    a.drain();
    b.say(&mut hub, "lobby", "ghost");
    assert!(c.events().is_empty());
    assert!(a.events().is_empty());
    a.send(&mut hub, json!({"type": "nick", "nick": "guest-2"}));
    assert_eq!(a.events()[0]["type"], "nick");
}

#[test]
fn a_full_queue_disconnects_only_that_client() {
    let mut hub = hub();
    let fast = connect(&mut hub, 64);
    let slow = connect(&mut hub, 4);
    fast.drain();
    for i in 0..10 {
        fast.say(&mut hub, "lobby", &format!("m{i}"));
        let got = fast.events();
        assert!(got.iter().any(|e| e["text"] == format!("m{i}")), "{got:?}");
    }
    let got = slow.events();
    assert_eq!(got.last().unwrap()["close"], 1013);
    assert!(slow.queue.is_closed());
    assert_eq!(hub.client_count(), 1);
    assert_eq!(
        hub.metrics
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_queue_more_than_half_full_marks_congestion() {
    let mut hub = hub();
    let a = connect(&mut hub, 64);
    let b = connect(&mut hub, 8);
    a.drain();
    assert!(
        !std::mem::take(&mut hub.slow.congested),
        "b's queue is empty"
    );
    for text in ["1", "2", "3"] {
        a.say(&mut hub, "lobby", text);
    }
    assert!(!std::mem::take(&mut hub.slow.congested), "3 of 8 waiting");
    a.say(&mut hub, "lobby", "4");
    a.say(&mut hub, "lobby", "5");
    assert!(hub.slow.congested, "5 of 8 waiting: the writers are behind");
    assert_eq!(b.events().len(), 5, "nothing was dropped");
}

#[test]
fn room_limits_evict_the_least_recently_used_empty_room() {
    let mut hub = hub_with(Config {
        max_rooms: 2, // besides lobby, the default room
        max_rooms_per_client: 2,
        ..Config::default()
    });
    let a = connect(&mut hub, 64);
    a.send(&mut hub, join("r1"));
    a.send(&mut hub, join("r2"));
    assert_eq!(
        a.events().last().unwrap()["code"],
        "room_limit",
        "lobby + r1 is the most"
    );
    a.send(&mut hub, json!({"type": "leave", "room": "r1"}));
    a.send(&mut hub, json!({"type": "leave", "room": "lobby"}));
    a.send(&mut hub, join("r2"));
    a.send(&mut hub, join("r3")); // evicts r1, the older empty room
    a.drain();
    a.send(&mut hub, json!({"type": "rooms", "offset": 0}));
    let rooms = &a.events()[0]["rooms"];
    assert_eq!(
        *rooms,
        serde_json::json!([{"name":"lobby","members":0},{"name":"r2","members":1},{"name":"r3","members":1}])
    );
}

/// A client with a queue of `items` and `bytes`, from `peer`.
fn connect_from(hub: &mut Hub, items: usize, bytes: usize, peer: &str) -> TestClient {
    let (tx, rx) = queue::bounded(items, bytes);
    let id = hub.connect(tx, Address::of(peer), None);
    let c = TestClient { id, queue: rx };
    c.drain();
    c
}

fn frames(c: &TestClient) -> Vec<Frame> {
    std::iter::from_fn(|| c.queue.try_recv())
        .filter_map(|item| match item {
            Outgoing::Event(f) => Some(f),
            Outgoing::Binary(_) | Outgoing::Close(..) => None,
        })
        .collect()
}

#[test]
fn the_largest_events_fit_the_bound_the_writers_are_sized_by() {
    let config = Config {
        presence_limit: 40,
        max_message_bytes: 300,
        rate_limit: 0,
        ..Config::default()
    };
    let bound = config.max_event_bytes();
    let mut hub = hub_with(config);
    // 40 members with the longest nicks, 60 rooms with the longest names.
    let clients: Vec<TestClient> = (0..40)
        .map(|i| {
            let c = connect_from(&mut hub, 10_000, usize::MAX, "127.0.0.1:1");
            c.send(
                &mut hub,
                json!({"type": "nick", "nick": format!("{i:02}{}", "N".repeat(30))}),
            );
            c
        })
        .collect();
    let a = &clients[0];
    for i in 0..60 {
        let room = format!("{i:02}{}", "r".repeat(30));
        a.send(&mut hub, join(&room));
        a.send(&mut hub, json!({"type": "leave", "room": room}));
    }
    a.drain();
    let longest_text = "\"".repeat(150); // 300 bytes once escaped
    a.send(
        &mut hub,
        json!({"type": "who", "room": "lobby", "offset": 0}),
    );
    a.send(&mut hub, json!({"type": "rooms", "offset": 0}));
    a.say(&mut hub, "lobby", &longest_text);
    let direct =
        json!({"type": "direct", "to": format!("39{}", "N".repeat(30)), "text": longest_text});
    a.send(&mut hub, direct);
    let error = Error::new(ErrorCode::BadRequest, "\"é".repeat(500));
    hub.handle(Command::Refuse {
        client: a.id,
        error,
    });
    // Its `room` event lists 40 of 41 members.
    let (tx, late) = queue::bounded(10, usize::MAX);
    hub.connect(tx, Address::of("127.0.0.1:1"), None);
    let late = TestClient {
        id: a.id,
        queue: late,
    };
    let got = frames(a);
    let kinds: Vec<&str> = got
        .iter()
        .map(|f| f.as_str().split('"').nth(3).unwrap_or(""))
        .collect();
    for ty in ["members", "rooms", "message", "direct", "error"] {
        assert!(kinds.contains(&ty), "no {ty} in {kinds:?}");
    }
    let more = [frames(&clients[1]), frames(&late)].concat();
    assert!(more.iter().any(|f| f.as_str().contains(r#""count":41"#)));
    for f in got.iter().chain(more.iter()) {
        assert!(f.len() <= bound, "{} > {bound}: {}", f.len(), f.as_str());
    }
}

#[test]
fn a_client_over_its_queue_bytes_is_a_slow_consumer() {
    let mut hub = hub_with(Config {
        rate_limit: 0,
        ..Config::default()
    });
    let a = connect_from(&mut hub, 1000, usize::MAX, "127.0.0.1:1");
    // Room for 1000 events, but only about 5 KB of them.
    let slow = connect_from(&mut hub, 1000, 5000, "127.0.0.1:1");
    a.drain();
    for _ in 0..6 {
        a.say(&mut hub, "lobby", &"x".repeat(900));
    }
    let got = slow.events();
    assert_eq!(got.last().unwrap()["close"], 1013, "{got:?}");
    let leave = a
        .events()
        .into_iter()
        .find(|e| e["type"] == "leave")
        .unwrap();
    assert_eq!(leave["reason"], "slow_consumer");
}

#[test]
fn history_is_bounded_in_total_oldest_message_first() {
    let config = Config {
        rate_limit: 0,
        history_bytes: 4 * 1024,
        history_total_bytes: 6 * 1024,
        ..Config::default()
    };
    let metrics = Arc::new(Metrics::default());
    let mut hub = Hub::new(Arc::new(config), metrics.clone());
    let a = connect(&mut hub, 1000);
    let text = "y".repeat(900);
    a.send(&mut hub, join("one"));
    a.send(&mut hub, join("two"));
    for _ in 0..3 {
        a.say(&mut hub, "one", &text);
    }
    for _ in 0..4 {
        a.say(&mut hub, "two", &text);
    }
    // 7 messages of ~1 KB in 6 KiB: room one's oldest went first.
    let total = metrics
        .history_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(total <= 6 * 1024, "{total}");
    a.drain();
    let b = connect(&mut hub, 1000);
    b.send(
        &mut hub,
        json!({"type": "join", "room": "one", "since": 0, "epoch": null}),
    );
    let got = b.events();
    assert_eq!(got[0]["complete"], false, "message 1 of one was forgotten");
    let ids: Vec<u64> = got[1..].iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [2, 3]);
    b.send(
        &mut hub,
        json!({"type": "join", "room": "two", "since": 0, "epoch": null}),
    );
    let got = b.events();
    assert_eq!(got[0]["complete"], true, "room two lost nothing");
    assert_eq!(got.len(), 5);
}

#[test]
fn presence_stops_above_the_limit_and_who_pages() {
    let mut hub = hub_with(Config {
        presence_limit: 2,
        ..Config::default()
    });
    let a = connect(&mut hub, 64);
    let b = connect(&mut hub, 64);
    assert_eq!(a.events()[0]["type"], "join", "2 members: still announced");
    let (tx, rx) = queue::bounded(64, usize::MAX);
    let c_id = hub.connect(tx, Address::of("127.0.0.1:1"), None);
    let c = TestClient {
        id: c_id,
        queue: rx,
    };
    let got = c.events();
    assert_eq!(got[1]["members"], serde_json::json!(["guest-1", "guest-2"]));
    assert_eq!(got[1]["count"], 3);
    assert!(
        a.events().is_empty() && b.events().is_empty(),
        "3 > limit: no join"
    );

    c.send(
        &mut hub,
        json!({"type": "who", "room": "lobby", "offset": 0}),
    );
    let page = &c.events()[0];
    assert_eq!(page["members"], serde_json::json!(["guest-1", "guest-2"]));
    assert_eq!(
        (page["count"].as_u64(), page["next"].as_u64()),
        (Some(3), Some(2))
    );
    c.send(
        &mut hub,
        json!({"type": "who", "room": "lobby", "offset": 2}),
    );
    let page = &c.events()[0];
    assert_eq!(page["members"], serde_json::json!(["guest-3"]));
    assert!(page.get("next").is_none());

    c.send(&mut hub, json!({"type": "nick", "nick": "carol"}));
    assert_eq!(
        c.events()[0]["type"],
        "nick",
        "the renamed client always hears it"
    );
    hub.handle(Command::Disconnect {
        client: c.id,
        reason: LeaveReason::Disconnected,
    });
    assert!(
        a.events().is_empty(),
        "its arrival was not announced, nor is its leaving"
    );
    b.send(&mut hub, json!({"type": "leave", "room": "lobby"}));
    assert_eq!(
        a.events()[0]["reason"],
        "left",
        "back at 2 members: announced"
    );
}

#[test]
fn shutdown_closes_everyone_with_1001() {
    let mut hub = hub();
    let a = connect(&mut hub, 64);
    let b = connect(&mut hub, 64);
    a.drain();
    hub.handle(Command::Shutdown);
    assert_eq!(
        a.events(),
        [serde_json::json!({"close": 1001, "reason": "server shutting down"})]
    );
    let got = b.events();
    assert_eq!(got[0]["reason"], "shutdown", "b saw a leave first: {got:?}");
    assert_eq!(got[1]["close"], 1001);
    assert_eq!(hub.client_count(), 0);
    let (tx, _rx) = queue::bounded(8, usize::MAX);
    let (reply, replies) = async_channel::bounded(1);
    hub.handle(Command::Connect {
        queue: tx,
        reply,
        address: Address::of("127.0.0.1:1"),
        group: None,
        user: None,
    });
    assert!(replies.try_recv().is_err(), "no new clients after shutdown");
}

fn connect_user(hub: &mut Hub, name: &str, rooms: Option<&[&str]>) -> TestClient {
    let (tx, rx) = queue::bounded(64, usize::MAX);
    let user = User {
        name: name.into(),
        rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
    };
    let id = hub.connect(tx, Address::of("127.0.0.1:1"), Some(user));
    TestClient { id, queue: rx }
}

#[cfg(feature = "auth")]
fn with_tokens() -> Config {
    Config {
        auth: Some(crate::config::Auth {
            secret: crate::token::Secret::new(vec![7; 32]),
            guests: true,
        }),
        ..Config::default()
    }
}

#[cfg(feature = "auth")]
#[test]
fn with_tokens_nobody_renames_and_a_token_limits_the_rooms() {
    let mut hub = hub_with(with_tokens());
    let guest = connect(&mut hub, 64);
    guest.send(&mut hub, json!({"type": "nick", "nick": "ada"}));
    assert_eq!(guest.events()[0]["code"], "forbidden");

    let ada = connect_user(&mut hub, "ada", Some(&["dev"]));
    let events = ada.events();
    assert_eq!(events[0]["nick"], "ada");
    assert_eq!(events.len(), 1, "not in the default room: {events:?}");
    ada.send(&mut hub, join("lobby"));
    assert_eq!(ada.events()[0]["code"], "forbidden");
    ada.send(&mut hub, join("dev"));
    assert_eq!(ada.events()[0]["type"], "room");
    assert!(guest.events().is_empty(), "nothing reached the lobby");
}

#[test]
fn a_users_connections_are_one_member_until_the_last_leaves() {
    let mut hub = hub();
    let bob = connect_user(&mut hub, "bob", None);
    let one = connect_user(&mut hub, "ada", None);
    bob.drain();
    one.drain();
    let two = connect_user(&mut hub, "ada", None);
    let room = two
        .events()
        .into_iter()
        .find(|e| e["type"] == "room")
        .unwrap();
    assert_eq!(room["members"], serde_json::json!(["bob", "ada"]));
    assert!(
        bob.events().is_empty(),
        "a second connection is not a second join"
    );

    bob.send(
        &mut hub,
        json!({"type": "direct", "to": "ada", "text": "hi"}),
    );
    assert_eq!(one.events()[0]["text"], "hi");
    assert_eq!(two.events()[0]["text"], "hi");
    bob.drain();

    // The first connection goes; the second takes its place, unannounced.
    hub.handle(Command::Disconnect {
        client: one.id,
        reason: LeaveReason::Disconnected,
    });
    assert!(bob.events().is_empty());
    bob.send(
        &mut hub,
        json!({"type": "who", "room": "lobby", "offset": 0}),
    );
    assert_eq!(
        bob.events()[0]["members"],
        serde_json::json!(["bob", "ada"])
    );
    // The name stays the user's while a connection holds it.
    bob.send(
        &mut hub,
        json!({"type": "direct", "to": "ADA", "text": "still?"}),
    );
    assert_eq!(two.events()[0]["text"], "still?");
    bob.drain();

    hub.handle(Command::Disconnect {
        client: two.id,
        reason: LeaveReason::Disconnected,
    });
    let left = bob.events();
    assert_eq!(
        (left[0]["type"].as_str(), left[0]["nick"].as_str()),
        (Some("leave"), Some("ada"))
    );
    bob.send(
        &mut hub,
        json!({"type": "direct", "to": "ada", "text": "gone"}),
    );
    assert_eq!(bob.events()[0]["code"], "unknown_recipient");
}

#[cfg(feature = "api")]
#[test]
fn an_api_call_publishes_into_history_and_frees_its_slot() {
    let mut hub = hub();
    let member = connect(&mut hub, 64);
    let (reply, answer) = async_channel::bounded(1);
    let call = ApiCall::Publish {
        room: "news".into(),
        from: "bot".into(),
        text: "first".into(),
    };
    hub.handle(Command::Api { call, reply });
    assert_eq!(answer.try_recv().unwrap().status, 201);
    assert_eq!(hub.client_count(), 1, "the call's slot is free again");
    assert!(member.events().is_empty(), "not a member of news");
    member.send(&mut hub, join("news"));
    let events = member.events();
    assert_eq!(events[1]["text"], "first");
    assert_eq!(events[1]["api"], true);
    let (reply, answer) = async_channel::bounded(1);
    hub.handle(Command::Api {
        call: ApiCall::History {
            room: "news".into(),
            since: 0,
        },
        reply,
    });
    let body: Value = serde_json::from_str(&answer.try_recv().unwrap().body).unwrap();
    assert_eq!(body["messages"][0]["text"], "first");
    assert_eq!(body["complete"], true);
}

// Found by review (an attacker's reading of the change); each failed before its fix.

/// Two tokens whose `sub` differ only in case ("Ada", "ada") are one user (nicks are unique
/// ignoring case): the second connection takes the first one's spelling, and when "Ada"
/// leaves a room the other connection stays its member, unannounced. (Before: it was left
/// behind as a ghost that spoke in a room whose members no longer listed it.)
#[cfg(feature = "auth")]
#[test]
fn a_users_name_is_one_ignoring_case() {
    let mut hub = hub_with(with_tokens());
    let bob = connect_user(&mut hub, "bob", None);
    let upper = connect_user(&mut hub, "Ada", None);
    let lower = connect_user(&mut hub, "ada", None);
    for c in [&bob, &upper, &lower] {
        c.drain();
    }
    upper.send(&mut hub, join("dev"));
    lower.send(&mut hub, join("dev"));
    bob.send(&mut hub, join("dev"));
    for c in [&bob, &upper, &lower] {
        c.drain();
    }
    // "Ada" leaves dev; "ada" is still in it.
    upper.send(&mut hub, json!({"type": "leave", "room": "dev"}));
    let seen = bob.events();
    lower.say(&mut hub, "dev", "still here");
    let got = bob.events();
    bob.send(&mut hub, json!({"type": "who", "room": "dev", "offset": 0}));
    let who = bob.events();
    assert_eq!(
        (seen.len(), who[0]["members"].clone()),
        (0, serde_json::json!(["Ada", "bob"])),
        "bob saw {seen:?}, then {got:?}; who says {who:?}"
    );
}

/// The same, then a new room needs space: the room must not look empty and be evicted under
/// its remaining member (before: the ghost's next `say` panicked the hub).
#[cfg(feature = "auth")]
#[test]
fn a_room_with_a_users_other_connection_is_not_evicted() {
    let mut hub = hub_with(Config {
        max_rooms: 1,
        ..with_tokens()
    });
    let upper = connect_user(&mut hub, "Ada", None);
    let lower = connect_user(&mut hub, "ada", None);
    upper.send(&mut hub, join("dev"));
    lower.send(&mut hub, join("dev"));
    upper.send(&mut hub, json!({"type": "leave", "room": "dev"}));
    upper.drain();
    lower.drain();
    // A new room would need dev's place, but dev still has a member.
    upper.send(&mut hub, join("other"));
    assert_eq!(upper.events()[0]["code"], "room_limit");
    lower.say(&mut hub, "dev", "still here");
    let events = lower.events();
    assert_eq!(
        (events[0]["from"].as_str(), events[0]["text"].as_str()),
        (Some("Ada"), Some("still here"))
    );
}

/// Random joins, leaves, messages, reconnects and API publishes (with eviction at
/// `--max-rooms` 2) of two users with three connections each: `who` must list exactly the
/// users with a connection in the room, and nothing may panic.
#[cfg(all(feature = "auth", feature = "api"))]
#[test]
fn random_connections_of_two_users_keep_presence_exact() {
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..300 {
        let mut hub = hub_with(Config {
            max_rooms: 2,
            ..with_tokens()
        });
        let names = ["ada", "bob"];
        let rooms = ["lobby", "r1", "r2", "r3"];
        let watcher = connect(&mut hub, 100_000);
        let mut conns: Vec<(usize, TestClient, Vec<&str>)> = Vec::new();
        for (u, name) in names.iter().enumerate() {
            for _ in 0..3 {
                let c = connect_user(&mut hub, name, None);
                conns.push((u, c, vec!["lobby"]));
            }
        }
        let mut log = Vec::new();
        for _ in 0..60 {
            let i = rnd(conns.len() as u64) as usize;
            let op = rnd(5);
            let room = rooms[rnd(4) as usize];
            if op == 4 {
                let (reply, _answer) = async_channel::bounded(1);
                let call = ApiCall::Publish {
                    room: room.into(),
                    from: "ada".into(),
                    text: "p".into(),
                };
                hub.handle(Command::Api { call, reply });
                log.push(format!("publish {room}"));
                continue;
            }
            log.push(format!("conn {i} op {op} room {room}"));
            match op {
                0 => {
                    conns[i].1.send(&mut hub, join(room));
                    let ok = conns[i].1.events().iter().any(|e| e["type"] == "room");
                    if ok && !conns[i].2.contains(&room) {
                        conns[i].2.push(room);
                    }
                }
                1 => {
                    conns[i]
                        .1
                        .send(&mut hub, json!({"type": "leave", "room": room}));
                    conns[i].2.retain(|r| *r != room);
                }
                2 => {
                    if conns[i].2.contains(&room) {
                        conns[i].1.say(&mut hub, room, "x");
                    }
                }
                _ => {
                    let u = conns[i].0;
                    let old = conns.swap_remove(i);
                    hub.handle(Command::Disconnect {
                        client: old.1.id,
                        reason: LeaveReason::Disconnected,
                    });
                    let c = connect_user(&mut hub, names[u], None);
                    conns.push((u, c, vec!["lobby"]));
                }
            }
            for c in &conns {
                c.1.drain();
            }
            watcher.drain();
            for room in rooms {
                watcher.send(&mut hub, json!({"type": "who", "room": room, "offset": 0}));
                let who = watcher.events();
                let mut got: Vec<String> = who[0]["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .filter(|n| !n.starts_with("guest-"))
                    .collect();
                got.sort();
                let mut want: Vec<String> = names
                    .iter()
                    .enumerate()
                    .filter(|(u, _)| conns.iter().any(|c| c.0 == *u && c.2.contains(&room)))
                    .map(|(_, n)| n.to_string())
                    .collect();
                want.sort();
                assert_eq!(got, want, "round {round}, room {room}, after {log:#?}");
            }
        }
    }
}

#[cfg(feature = "api")]
fn api_call(hub: &mut Hub, call: ApiCall) -> ApiReply {
    let (reply, answer) = async_channel::bounded(1);
    hub.handle(Command::Api { call, reply });
    answer.try_recv().unwrap()
}

/// A room only the API uses (devices publish, applications read its history) is in use: a
/// publish refreshes it for eviction, so a room nobody touched since goes first. (Before:
/// the room published to a moment ago was evicted, history and all.)
#[cfg(feature = "api")]
#[test]
fn a_room_the_api_publishes_to_is_in_use() {
    let mut hub = hub_with(Config {
        max_rooms: 2,
        ..Config::default()
    });
    let publish = |hub: &mut Hub, text: &str| {
        let call = ApiCall::Publish {
            room: "alerts".into(),
            from: "door".into(),
            text: text.into(),
        };
        api_call(hub, call).status
    };
    assert_eq!(publish(&mut hub, "first"), 201);
    let a = connect(&mut hub, 64);
    a.send(&mut hub, join("idle"));
    a.send(&mut hub, json!({"type": "leave", "room": "idle"})); // "idle": empty since now
    for i in 0..10 {
        assert_eq!(publish(&mut hub, &format!("busy {i}")), 201); // alerts: in use
    }
    a.send(&mut hub, join("new")); // the server needs room for one more
    a.drain();
    let history = api_call(
        &mut hub,
        ApiCall::History {
            room: "alerts".into(),
            since: 0,
        },
    );
    assert_eq!(history.status, 200, "alerts was evicted: {history:?}");
}
