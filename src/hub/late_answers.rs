//! The hub against an authority that answers late, the way Redis does: without sockets or a
//! Redis server. [`Late`] asks a real in-memory authority, but instead of answering at once
//! it keeps every answer and room event as the [`Notice`] Redis would send, and the test
//! decides when each arrives, in which order, whether it arrives at all, or whether it is
//! turned into a failure.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::tests::{TestClient, join};
use super::*;
use crate::authority::Joined;
use crate::authority::local::Local;
use crate::authority::{Answer, Ask, What};
use crate::protocol::Event;
use serde_json::json;

/// Notices on their way to the hub, shared by the fake and the test.
#[derive(Clone, Default)]
struct Wire(Arc<Mutex<VecDeque<Notice>>>);

impl Wire {
    fn push(&self, notice: Notice) {
        self.0.lock().unwrap().push_back(notice);
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Takes the first notice that `pick` chooses.
    fn take(&self, pick: impl Fn(&Notice) -> bool) -> Option<Notice> {
        let mut queue = self.0.lock().unwrap();
        let i = queue.iter().position(pick)?;
        queue.remove(i)
    }

    /// Delivers every notice in order, including those their delivery causes.
    fn deliver_all(&self, hub: &mut Hub) {
        while let Some(notice) = self.take(|_| true) {
            hub.notice(notice);
        }
    }

    /// Delivers the first notice `pick` chooses; panics if there is none.
    fn deliver(&self, hub: &mut Hub, pick: impl Fn(&Notice) -> bool) {
        let notice = self.take(pick).expect("a notice to deliver");
        hub.notice(notice);
    }
}

fn answer(n: &Notice) -> bool {
    matches!(n, Notice::Answer { .. })
}

fn room_event(n: &Notice) -> bool {
    matches!(n, Notice::Room(_))
}

/// The fake: a real in-memory authority whose answers and events travel on a [`Wire`].
struct Late {
    inner: Local,
    wire: Wire,
}

impl Authority for Late {
    fn ask(&mut self, client: ClientId, ask: Ask, _events: &mut Vec<RoomEvent>) -> Option<Answer> {
        let mut events = Vec::new();
        let answer = self
            .inner
            .ask(client, ask, &mut events)
            .expect("local answers");
        // Like Redis, the store keeps a message as it assigns its id, not when the event
        // comes back.
        for event in events {
            self.wire.push(Notice::Room(event));
        }
        self.wire.push(Notice::Answer { client, answer });
        None
    }

    fn bye(&mut self, client: ClientId, reason: LeaveReason, _events: &mut Vec<RoomEvent>) {
        let mut events = Vec::new();
        self.inner.bye(client, reason, &mut events);
        for event in events {
            self.wire.push(Notice::Room(event));
        }
    }
}

fn late_hub(config: Config) -> (Hub, Wire) {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let wire = Wire::default();
    let late = Late {
        inner: Local::new(config.clone(), metrics.clone()),
        wire: wire.clone(),
    };
    let hub = Hub::with_authority(config, metrics, Box::new(late));
    (hub, wire)
}

/// A client whose welcome and first join have been answered.
fn connect(hub: &mut Hub, wire: &Wire) -> TestClient {
    let (tx, rx) = queue::bounded(1000, usize::MAX);
    let id = hub.connect(tx, Address::of("127.0.0.1:1"), None);
    wire.deliver_all(hub);
    let c = TestClient { id, queue: rx };
    c.drain();
    c
}

fn types(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.get("type") {
            Some(t) => t.as_str().unwrap().to_string(),
            None => format!("close {}", e["close"]),
        })
        .collect()
}

#[test]
fn a_busy_clients_frames_wait_and_are_answered_in_order() {
    let (mut hub, wire) = late_hub(Config::default());
    let (tx, rx) = queue::bounded(100, usize::MAX);
    let id = hub.connect(tx, Address::of("127.0.0.1:1"), None);
    let a = TestClient { id, queue: rx };
    // While its registration is on the way, the client sends three commands.
    a.send(&mut hub, join("dev"));
    a.say(&mut hub, "dev", "hello");
    let who = json!({"type": "who", "room": "dev", "offset": 0});
    a.send(&mut hub, who);
    assert!(
        a.events().is_empty(),
        "nothing is answered before the authority"
    );
    assert_eq!(wire.len(), 1, "one question at a time: the registration");
    wire.deliver_all(&mut hub);
    let got = a.events();
    assert_eq!(
        types(&got),
        ["welcome", "room", "room", "message", "members"],
        "{got:?}"
    );
    assert_eq!(got[1]["room"], "lobby");
    assert_eq!(got[2]["room"], "dev");
    assert_eq!(got[3]["text"], "hello");
    assert_eq!(got[4]["members"], serde_json::json!(["guest-1"]));
}

#[test]
fn a_sender_is_answered_when_its_message_comes_back() {
    let (mut hub, wire) = late_hub(Config::default());
    let a = connect(&mut hub, &wire);
    let b = connect(&mut hub, &wire);
    a.drain();
    a.say(&mut hub, "lobby", "one");
    a.send(&mut hub, json!({"type": "rooms", "offset": 0}));
    // The answer (`said`, with the id) overtakes the message's own event.
    wire.deliver(&mut hub, answer);
    assert!(a.events().is_empty(), "said, but not yet heard");
    assert_eq!(wire.len(), 1, "`rooms` waits for the echo");
    wire.deliver(&mut hub, room_event);
    wire.deliver_all(&mut hub);
    assert_eq!(types(&a.events()), ["message", "rooms"]);
    assert_eq!(types(&b.events()), ["message"]);
}

#[test]
fn a_join_answered_after_newer_events_skips_what_it_already_reflects() {
    let (mut hub, wire) = late_hub(Config::default());
    let a = connect(&mut hub, &wire);
    let b = connect(&mut hub, &wire);
    a.drain();
    b.send(&mut hub, join("dev"));
    wire.deliver_all(&mut hub);
    b.drain();
    // b says one thing before a's join and one after. The join's answer replays the first
    // message; it arrives last, after every event, including b's second message.
    b.say(&mut hub, "dev", "before");
    a.send(&mut hub, join("dev"));
    b.say(&mut hub, "dev", "after");
    let joined = wire
        .take(|n| matches!(n, Notice::Answer { client, .. } if *client == a.id))
        .expect("a's answer");
    wire.deliver_all(&mut hub);
    assert!(
        a.events().is_empty(),
        "not a member of dev until its answer"
    );
    assert_eq!(types(&b.events()), ["message", "join", "message"]);
    hub.notice(joined);
    let got = a.events();
    assert_eq!(types(&got), ["room", "message", "message"], "{got:?}");
    assert_eq!(got[0]["last_id"], 1);
    assert_eq!(
        [&got[1]["text"], &got[2]["text"]],
        ["before", "after"],
        "each once: the first from the join's replay, the second from the events meanwhile"
    );
}

#[test]
fn failures_undo_what_was_prepared_and_say_unavailable() {
    let (mut hub, wire) = late_hub(Config::default());
    let a = connect(&mut hub, &wire);
    a.send(&mut hub, join("dev"));
    a.say(&mut hub, "dev", "x");
    // The join fails (Redis down): its event is lost and its answer is `unavailable`.
    wire.take(room_event).unwrap();
    let Some(Notice::Answer { client, .. }) = wire.take(answer) else {
        panic!("an answer");
    };
    let failed = Answer::Unavailable;
    hub.notice(Notice::Answer {
        client,
        answer: failed,
    });
    let got = a.events();
    assert_eq!(got[0]["code"], "unavailable", "{got:?}");
    assert_eq!(got[1]["code"], "not_member", "the join was undone: {got:?}");
    assert_eq!(hub.metrics.backend_unavailable.load(Relaxed), 1, "counted");
    // A registration that fails closes the connection: there is nothing to chat with.
    let (tx, rx) = queue::bounded(10, usize::MAX);
    let id = hub.connect(tx, Address::of("127.0.0.1:1"), None);
    wire.take(answer).unwrap();
    hub.notice(Notice::Answer {
        client: id,
        answer: Answer::Unavailable,
    });
    let c = TestClient { id, queue: rx };
    assert_eq!(c.events()[0]["close"], UNAVAILABLE_CLOSE.0);
    assert_eq!(hub.client_count(), 1);
}

#[test]
fn a_dropped_answer_holds_one_client_within_its_bound_and_nobody_else() {
    let (mut hub, wire) = late_hub(Config::default());
    let a = connect(&mut hub, &wire);
    let b = connect(&mut hub, &wire);
    a.drain();
    b.send(&mut hub, json!({"type": "nick", "nick": "bob"}));
    wire.take(answer).expect("dropped: never answered");
    for i in 0..MAX_WAITING * 3 {
        b.say(&mut hub, "lobby", &format!("{i}"));
    }
    let busy = &hub.busy[&b.id.key];
    assert_eq!(
        busy.later.len(),
        MAX_WAITING + 1,
        "the bound, and one refusal for everything beyond it"
    );
    a.say(&mut hub, "lobby", "still here");
    wire.deliver_all(&mut hub);
    let got = a.events();
    assert!(got.iter().any(|e| e["text"] == "still here"), "{got:?}");
}

/// A busy client's waiting frames are bounded in bytes too: with its queued events, within
/// `--queue-bytes`, so that the worst-case memory counts them once; beyond, one
/// `rate_limited` refusal stands for the rest, delivered in order once the wait is over.
#[test]
fn a_busy_clients_waiting_frames_stay_within_its_queue_bytes() {
    let config = Config {
        queue_bytes: 16 * 1024,
        ..Config::default()
    };
    let (mut hub, wire) = late_hub(config);
    let a = connect(&mut hub, &wire);
    a.send(&mut hub, json!({"type": "nick", "nick": "ada"}));
    let renamed = wire.take(answer).expect("the nick's answer, held back");
    // About 4.5 KB each as they wait: three fit in 16 KiB, not four.
    let text = "x".repeat(4000);
    for _ in 0..10 {
        a.say(&mut hub, "lobby", &text);
    }
    assert_eq!(
        hub.busy[&a.id.key].later.len(),
        3 + 1,
        "three, and one refusal"
    );
    hub.notice(renamed);
    wire.deliver_all(&mut hub);
    let got = a.events();
    let said = got.iter().filter(|e| e["type"] == "message").count();
    let refused: Vec<_> = got.iter().filter(|e| e["type"] == "error").collect();
    assert_eq!(said, 3, "{got:?}");
    assert_eq!(refused.len(), 1, "{got:?}");
    assert_eq!(refused[0]["code"], "rate_limited");
}

#[test]
fn a_member_the_authority_lost_is_closed_so_it_reconnects() {
    let (mut hub, wire) = late_hub(Config::default());
    let a = connect(&mut hub, &wire);
    let b = connect(&mut hub, &wire);
    a.drain();
    a.say(&mut hub, "lobby", "x");
    wire.take(room_event).unwrap();
    wire.take(answer).unwrap();
    hub.notice(Notice::Answer {
        client: a.id,
        answer: Answer::Gone,
    });
    assert_eq!(
        a.events(),
        [serde_json::json!({"close": 1012, "reason": LOST_CLOSE.1})]
    );
    hub.notice(Notice::Lost(vec![b.id]));
    assert_eq!(b.events().last().unwrap()["close"], 1012);
    assert_eq!(hub.client_count(), 0);
}

/// The room's messages as the history of a store would return them, encoded by the hub's
/// rules: every `message` event `c` received.
fn messages(events: &[serde_json::Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn after_a_gap_the_resync_delivers_what_was_missed_once_then_what_was_held() {
    let (mut hub, wire) = late_hub(Config::default());
    let [a, b, d, e] = [(); 4].map(|_| connect(&mut hub, &wire));
    b.say(&mut hub, "lobby", "1");
    wire.deliver_all(&mut hub);
    for c in [&a, &b, &d, &e] {
        c.drain();
    }
    // The connection to the store drops: the events of messages 2 and 3 are lost; their
    // senders wait for them. The reconnect holds the room's events until its resync.
    b.say(&mut hub, "lobby", "2");
    wire.take(room_event).unwrap();
    wire.deliver_all(&mut hub);
    hub.notice(Notice::Resyncing);
    d.say(&mut hub, "lobby", "3");
    wire.take(room_event).unwrap();
    wire.deliver_all(&mut hub);
    // Message 4 comes through the new subscription, before the resync: held.
    e.say(&mut hub, "lobby", "4");
    wire.deliver_all(&mut hub);
    for c in [&a, &b, &d, &e] {
        assert!(c.events().is_empty(), "held until the resync");
    }
    // The resync reads the room's state now: after message 4, before c joins.
    let epoch = hub.audiences["lobby"].epoch().to_string();
    let ev = 8; // four joins, four messages
    // c joins while the room is held: its join replays 1..=4 from history.
    let (tx, rx) = queue::bounded(100, usize::MAX);
    let id = hub.connect(tx, Address::of("127.0.0.1:1"), None);
    wire.deliver_all(&mut hub);
    let c = TestClient { id, queue: rx };
    assert_eq!(messages(&c.events()), [1, 2, 3, 4]);
    let history: Vec<Frame> = (1..=4).map(lobby_message).collect();
    hub.notice(Notice::Resync {
        room: "lobby".into(),
        epoch,
        last_id: 4,
        ev,
        history,
        count: 5,
        nicks: Vec::new(),
    });
    wire.deliver_all(&mut hub);
    for x in [&a, &b, &d, &e] {
        let got = x.events();
        assert_eq!(
            messages(&got),
            [2, 3, 4],
            "each missed message once, in order"
        );
        assert_eq!(
            got.last().unwrap()["type"],
            "join",
            "then what was held: c's join"
        );
    }
    assert!(
        c.events().is_empty(),
        "c's join replayed them already: no duplicates"
    );
    // The senders were answered by the resync: they may speak again.
    b.say(&mut hub, "lobby", "5");
    wire.deliver_all(&mut hub);
    assert_eq!(messages(&c.events()), [5]);
}

/// The `message` event of id `id` in `lobby`, as the store would replay it.
fn lobby_message(id: u64) -> Frame {
    Event::Message {
        room: "lobby",
        id,
        from: "someone",
        text: &id.to_string(),
        ts: 0,
        api: false,
    }
    .encode()
}

#[test]
fn a_room_whose_epoch_changed_is_announced_to_every_member_with_its_history() {
    let (mut hub, wire) = late_hub(Config::default());
    let [a, b] = [(); 2].map(|_| connect(&mut hub, &wire));
    b.say(&mut hub, "lobby", "1");
    wire.deliver_all(&mut hub);
    // b's next message waits for its echo when the store loses the room (Redis flushed, or
    // came back older): the bridge sees an event of another epoch, holds and rereads it.
    b.say(&mut hub, "lobby", "2");
    wire.take(room_event).unwrap();
    wire.deliver_all(&mut hub);
    for c in [&a, &b] {
        c.drain();
    }
    hub.notice(Notice::Hold("lobby".into()));
    hub.notice(Notice::Resync {
        room: "lobby".into(),
        epoch: "era-1".into(),
        last_id: 1,
        ev: 3,
        history: vec![lobby_message(1)],
        count: 2,
        nicks: vec!["x".into(), "y".into()],
    });
    for c in [&a, &b] {
        let got = c.events();
        let room = got.iter().find(|e| e["type"] == "room").expect("told");
        assert_eq!(room["epoch"], "era-1");
        assert_eq!(
            room["complete"], false,
            "a new epoch: they may have missed some"
        );
        assert_eq!(room["last_id"], 1);
        assert_eq!(room["members"], serde_json::json!(["x", "y"]));
        assert_eq!(messages(&got), [1], "then the new epoch's history");
    }
    assert_eq!(hub.audiences["lobby"].epoch(), "era-1");
    // b's message of the old epoch will never come back: b was told and may speak again.
    assert_eq!(hub.audiences["lobby"].waiting(), 0);
}

#[test]
fn a_resync_does_not_send_a_fresh_member_what_its_join_replayed() {
    // Regression (found by the history checker): a member whose join replayed a message the
    // room's other members had not been delivered yet got it again from the next resync.
    let (mut hub, wire) = late_hub(Config::default());
    let [a, b] = [(); 2].map(|_| connect(&mut hub, &wire));
    b.say(&mut hub, "lobby", "1");
    wire.take(room_event)
        .expect("message 1's event, on its way");
    wire.deliver_all(&mut hub);
    let c = connect(&mut hub, &wire); // its join replays message 1
    let epoch = hub.audiences["lobby"].epoch().to_string();
    hub.notice(Notice::Hold("lobby".into()));
    hub.notice(Notice::Resync {
        room: "lobby".into(),
        epoch,
        last_id: 1,
        ev: 100,
        history: vec![lobby_message(1)],
        count: 3,
        nicks: Vec::new(),
    });
    for x in [&a, &b] {
        assert_eq!(messages(&x.events()), [1], "the resync delivers it");
    }
    assert!(c.events().is_empty(), "c's join replayed it already");
}

#[test]
fn messages_evicted_before_a_resync_could_deliver_them_are_told() {
    let (mut hub, wire) = late_hub(Config::default());
    let [a, b] = [(); 2].map(|_| connect(&mut hub, &wire));
    b.say(&mut hub, "lobby", "1");
    wire.deliver_all(&mut hub);
    for c in [&a, &b] {
        c.drain();
    }
    // Cut off while messages 2 to 4 were said elsewhere; the history kept only 3 and 4.
    hub.notice(Notice::Resyncing);
    let epoch = hub.audiences["lobby"].epoch().to_string();
    hub.notice(Notice::Resync {
        room: "lobby".into(),
        epoch: epoch.clone(),
        last_id: 4,
        ev: 9,
        history: vec![lobby_message(3), lobby_message(4)],
        count: 2,
        nicks: vec!["x".into(), "y".into()],
    });
    for c in [&a, &b] {
        let got = c.events();
        assert_eq!(got[0]["type"], "room", "told first: {got:?}");
        assert_eq!(got[0]["epoch"], epoch.as_str(), "the same epoch");
        assert_eq!(got[0]["complete"], false, "message 2 is missing");
        assert_eq!(messages(&got), [3, 4], "then what is left");
    }
}

#[test]
fn a_join_answered_in_a_new_epoch_tells_the_members_already_there() {
    let (mut hub, wire) = late_hub(Config::default());
    let [a, c] = [(); 2].map(|_| connect(&mut hub, &wire));
    assert!(!hub.audiences["lobby"].epoch().is_empty());
    // The store lost the room and made it again; this node has not heard of it yet when a
    // new client's join is answered in the new epoch.
    let (tx, _rx) = queue::bounded(100, usize::MAX);
    let d = hub.connect(tx, Address::of("127.0.0.1:1"), None);
    wire.deliver(&mut hub, answer); // registered: d asks to join the lobby
    wire.take(answer)
        .expect("d's join, answered below in the new epoch");
    let joined = Joined {
        epoch: "era-2".into(),
        last_id: 0,
        ev: 100,
        count: 3,
        nicks: vec!["a".into(), "c".into(), "d".into()],
        replay: Vec::new(),
        complete: None,
    };
    hub.notice(Notice::Answer {
        client: d,
        answer: Answer::Joined(joined),
    });
    for x in [&a, &c] {
        let got = x.events();
        let room = got.iter().find(|e| e["type"] == "room");
        let room = room.expect("told of the new epoch");
        assert_eq!(room["epoch"], "era-2");
        assert_eq!(room["complete"], false);
    }
    assert_eq!(hub.audiences["lobby"].epoch(), "era-2");
}

#[test]
fn held_events_are_bounded() {
    let (mut hub, wire) = late_hub(Config::default());
    let a = connect(&mut hub, &wire);
    hub.notice(Notice::Resyncing);
    for id in 1..=(MAX_HELD_EVENTS as u64 + 10) {
        hub.notice(Notice::Room(RoomEvent {
            room: "lobby".into(),
            ev: 100 + id,
            subject: None,
            what: What::Message {
                id,
                frame: Frame::from("{}"),
            },
        }));
    }
    let held = hub.audiences["lobby"].held().unwrap();
    assert_eq!(held.len(), MAX_HELD_EVENTS, "the oldest went");
    assert!(a.events().is_empty());
}

#[test]
fn shutdown_closes_clients_that_wait_for_the_authority() {
    let (mut hub, wire) = late_hub(Config::default());
    let a = connect(&mut hub, &wire);
    a.send(&mut hub, join("dev"));
    hub.handle(Command::Shutdown);
    assert_eq!(a.events().last().unwrap()["close"], 1001);
    wire.deliver_all(&mut hub);
    assert_eq!(hub.client_count(), 0);
    assert!(hub.audiences.is_empty(), "nothing waits for anything");
}

use std::sync::atomic::Ordering::Relaxed;
