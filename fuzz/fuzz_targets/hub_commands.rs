//! Drives a `smolchat::hub::Hub` with a sequence of operations from several clients with small
//! queues: connects (directly and through `Command::Connect`), frames (command objects or
//! plain text), refusals, disconnects (also with ids of clients
//! already gone), shutdown, queue drains and receivers dropped.
//!
//! Invariants checked, besides "no panic":
//! - every event a client receives is a JSON object with a string `type`, and fits in
//!   `Config::max_event_bytes()`, the bound the server sizes each writer's buffer by (an
//!   event over it would be undeliverable);
//! - the rooms' history together stays within `--history-total-bytes`;
//! - nothing is queued for a client after its close;
//! - `client_count` equals the clients the target believes connected (within the clients
//!   whose receivers it dropped, whose closes it cannot see).
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use smolchat::hub::{Address, ClientId, Command, Hub, Outgoing};
use smolchat::protocol::{Error, ErrorCode, LeaveReason, Wire};
use smolchat::queue::{self, Receiver};
use smolchat::{Config, Metrics};

const ROOMS: [&str; 7] =
    ["lobby", "dev", "r1", "r2", "a-b_c", "Bad Room", "the-longest-room-name-there-is-3"];
const NICKS: [&str; 8] =
    ["ada", "ADA", "bob", "guest-1", "guest-2", "Guest-3", "b b", "The.Longest-Nick_Anyone_Can_Hav"];
const TEXTS: [&str; 7] = [
    "hi",
    "",
    "é\u{0}\"\\\n",
    "{not json",
    "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"",
    "\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}",
    "tab\tcr\rnl\n\\\\\\\\",
];
const ADDRESSES: [&str; 3] = ["127.0.0.1:1", "127.0.0.2:1", "[2001:db8::1]:1"];

#[derive(Arbitrary, Debug)]
struct Setup {
    max_rooms: u8,
    max_rooms_per_client: u8,
    history: u8,
    default_room: u8,
    max_message_bytes: u8,
    presence_limit: u8,
    history_bytes: u16,
    history_total_bytes: u16,
    max_rooms_per_address: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// `hub.connect` with a queue of 1..=8 items and up to 64 KiB, from one of [`ADDRESSES`].
    Connect { queue: u8, bytes: u16, from: u8 },
    /// `Command::Connect` (refused after shutdown).
    ConnectCommand { queue: u8, bytes: u16, from: u8 },
    /// A frame from client `client` (any id ever handed out, gone or not).
    Frame { client: u8, frame: Frame },
    Refuse { client: u8, code: u8 },
    Disconnect { client: u8, reason: u8 },
    /// Read everything queued for a client.
    Drain { client: u8 },
    /// Drop a client's receiver: its queue closes without a disconnect.
    DropReceiver { client: u8 },
    Shutdown,
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Raw(String),
    Plain(u8),
    Nick(u8),
    Join {
        room: u8,
        since: Option<u64>,
        /// Index into the epochs seen so far; none when out of range.
        epoch: Option<u8>,
    },
    Leave(u8),
    Say { room: u8, text: u8 },
    Direct { to: u8, text: u8 },
    Who { room: u8, offset: Option<u64> },
    Rooms { offset: Option<u64> },
}

struct Client {
    id: ClientId,
    queue: Option<Receiver<Outgoing>>,
    closed: bool,
    /// Still connected, as far as the target can tell.
    connected: bool,
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[i as usize % list.len()]
}

impl Frame {
    fn text(&self, epochs: &[String]) -> String {
        let room = |i: &u8| pick(&ROOMS, *i);
        let text = |i: &u8| pick(&TEXTS, *i);
        let q = |s: &str| serde_json::to_string(s).unwrap();
        match self {
            Frame::Raw(s) => s.clone(),
            Frame::Plain(t) => text(t).to_string(),
            Frame::Nick(n) => format!(r#"{{"type":"nick","nick":{}}}"#, q(pick(&NICKS, *n))),
            Frame::Join { room: r, since, epoch } => {
                let mut s = format!(r#"{{"type":"join","room":{}"#, q(room(r)));
                if let Some(since) = since {
                    s += &format!(r#","since":{since}"#);
                }
                if let Some(e) = epoch {
                    let e = epochs.get(*e as usize).map_or("stale-1", |e| e.as_str());
                    s += &format!(r#","epoch":{}"#, q(e));
                }
                s + "}"
            }
            Frame::Leave(r) => format!(r#"{{"type":"leave","room":{}}}"#, q(room(r))),
            Frame::Say { room: r, text: t } => format!(
                r#"{{"type":"say","room":{},"text":{}}}"#,
                q(room(r)),
                q(text(t))
            ),
            Frame::Direct { to, text: t } => format!(
                r#"{{"type":"direct","to":{},"text":{}}}"#,
                q(pick(&NICKS, *to)),
                q(text(t))
            ),
            Frame::Who { room: r, offset } => match offset {
                Some(o) => format!(r#"{{"type":"who","room":{},"offset":{o}}}"#, q(room(r))),
                None => format!(r#"{{"type":"who","room":{}}}"#, q(room(r))),
            },
            Frame::Rooms { offset: None } => r#"{"type":"rooms"}"#.to_string(),
            Frame::Rooms { offset: Some(o) } => format!(r#"{{"type":"rooms","offset":{o}}}"#),
        }
    }
}

const CODES: [ErrorCode; 3] = [ErrorCode::RateLimited, ErrorCode::BadRequest, ErrorCode::RoomLimit];
const REASONS: [LeaveReason; 5] = [
    LeaveReason::Left,
    LeaveReason::Disconnected,
    LeaveReason::Timeout,
    LeaveReason::SlowConsumer,
    LeaveReason::Shutdown,
];

fn drain(client: &mut Client, epochs: &mut Vec<String>, max_event: usize) {
    let Some(queue) = &client.queue else { return };
    loop {
        match queue.try_recv() {
            Some(Outgoing::Event(frame)) => {
                assert!(!client.closed, "event after close: {frame:?}");
                assert!(
                    frame.len() <= max_event,
                    "an event of {} bytes, over the bound of {max_event}: {frame:?}",
                    frame.len()
                );
                let v: serde_json::Value = serde_json::from_str(frame.as_str())
                    .unwrap_or_else(|e| panic!("event is not JSON ({e}): {frame:?}"));
                assert!(v["type"].is_string(), "{frame:?}");
                if v["type"] == "room" {
                    if let Some(e) = v["epoch"].as_str() {
                        if epochs.len() < 16 && !epochs.iter().any(|x| x == e) {
                            epochs.push(e.to_string());
                        }
                    }
                }
            }
            Some(Outgoing::Binary(_)) => panic!("a binary frame in protocol v1"),
            Some(Outgoing::Close(..)) => {
                assert!(!client.closed, "closed twice");
                client.closed = true;
            }
            None => {
                // Drained; a closed queue means the hub let go of this client.
                if queue.is_closed() {
                    client.closed = true;
                }
                return;
            }
        }
    }
}

fuzz_target!(|setup: Setup| {
    let config = Config {
        max_rooms: 1 + setup.max_rooms as usize % 6,
        max_rooms_per_client: 1 + setup.max_rooms_per_client as usize % 4,
        history: setup.history as usize % 5,
        default_room: pick(&ROOMS[..5], setup.default_room).to_string(),
        max_message_bytes: 1 + setup.max_message_bytes as usize % 64,
        presence_limit: 1 + setup.presence_limit as usize % 4,
        history_bytes: setup.history_bytes as usize,
        history_total_bytes: setup.history_total_bytes as usize,
        max_rooms_per_address: 1 + setup.max_rooms_per_address as usize % 4,
        ..Config::default()
    };
    let max_event = config.max_event_bytes();
    let history_total = config.history_total_bytes as u64;
    let metrics = Arc::new(Metrics::default());
    let mut hub = Hub::new(Arc::new(config), metrics.clone());
    let mut clients: Vec<Client> = Vec::new();
    let mut epochs: Vec<String> = Vec::new();
    let mut shut_down = false;

    for op in setup.ops.into_iter().take(256) {
        match op {
            Op::Connect { .. } | Op::ConnectCommand { .. } if clients.len() >= 32 => {}
            Op::Connect { queue, bytes, from } => {
                let (tx, rx) = queue::bounded(1 + queue as usize % 8, bytes as usize);
                let id = hub.connect(tx, Address::of(pick(&ADDRESSES, from)), None);
                clients.push(Client { id, queue: Some(rx), closed: false, connected: true });
            }
            Op::ConnectCommand { queue, bytes, from } => {
                let (tx, rx) = queue::bounded(1 + queue as usize % 8, bytes as usize);
                let (reply, replies) = async_channel::bounded(1);
                let address = Address::of(pick(&ADDRESSES, from));
                hub.handle(Command::Connect { queue: tx, reply, address, group: None, user: None });
                match replies.try_recv() {
                    Ok(id) => {
                        assert!(!shut_down, "a client was accepted after shutdown");
                        let id = id.expect("v1 registers every guest");
                        clients.push(Client { id, queue: Some(rx), closed: false, connected: true });
                    }
                    Err(_) => assert!(shut_down, "no reply to Connect"),
                }
            }
            Op::Frame { client, frame } => {
                let i = client as usize % clients.len().max(1);
                let Some(c) = clients.get(i) else {
                    continue;
                };
                let client = c.id;
                // As the session's reader does: the JSON shape read, or refused.
                hub.handle(match Wire::read(&frame.text(&epochs)) {
                    Ok(wire) => Command::Request { client, wire: Box::new(wire) },
                    Err(error) => Command::Refuse { client, error },
                });
            }
            Op::Refuse { client, code } => {
                let i = client as usize % clients.len().max(1);
                let Some(c) = clients.get(i) else {
                    continue;
                };
                let error = Error::new(CODES[code as usize % CODES.len()], "fuzz");
                hub.handle(Command::Refuse { client: c.id, error });
            }
            Op::Disconnect { client, reason } => {
                let i = client as usize % clients.len().max(1);
                let Some(c) = clients.get_mut(i) else {
                    continue;
                };
                hub.handle(Command::Disconnect {
                    client: c.id,
                    reason: REASONS[reason as usize % REASONS.len()],
                });
                c.connected = false;
            }
            Op::Drain { client } => {
                let i = client as usize % clients.len().max(1);
                let Some(c) = clients.get_mut(i) else {
                    continue;
                };
                drain(c, &mut epochs, max_event);
            }
            Op::DropReceiver { client } => {
                let i = client as usize % clients.len().max(1);
                let Some(c) = clients.get_mut(i) else {
                    continue;
                };
                drain(c, &mut epochs, max_event);
                c.queue = None;
            }
            Op::Shutdown => {
                hub.handle(Command::Shutdown);
                shut_down = true;
            }
        }
        // A client whose queue the hub closed (slow consumer) is gone from the hub; so is one
        // that was disconnected. Everything queued so far must be well-formed.
        let history = metrics.history_bytes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(history <= history_total, "history {history} over {history_total} bytes");
        for c in &mut clients {
            drain(c, &mut epochs, max_event);
            if c.closed && !shut_down {
                c.connected = false;
            }
        }
        if !shut_down {
            // A client whose receiver was dropped may still be removed as a slow consumer
            // (found full by a direct `hub.connect`, dropped at the next command) without the
            // target seeing its close: it counts as "maybe".
            let sure = clients.iter().filter(|c| c.connected && c.queue.is_some()).count();
            let maybe = clients.iter().filter(|c| c.connected).count();
            let count = hub.client_count();
            assert!(sure <= count && count <= maybe, "client count {count} not in {sure}..={maybe}");
        }
    }
});
