//! Scale-out (the `redis` feature): the Redis authority, for a chat of several nodes that share
//! their rooms through one Redis.
//!
//! ```text
//!  hub ── ask / bye / unused / restore / shutdown ──► Redis (this file: never blocks, never drops a bye)
//!   ▲                                                   │ Control (a Mutex + an Event)
//!   │                                                   ▼
//!   └──── Notice (bounded channel) ◄──────────────── bridge (bridge.rs: one future, no task)
//!          answers, room events, directs,               ├ one RESP3 connection: Lua scripts
//!          Resyncing / Resync / Lost                     │  (scripts.rs), pipelined, and pub/sub
//!                                                       └ heartbeat, reaper, reconnect, restore
//! ```
//!
//! [`Redis`] is the hub's side. It answers nothing itself: an [`Ask`] is queued for the bridge
//! and answered later with [`Notice::Answer`], or refused at once with
//! [`Answer::Unavailable`] when the queue is full or Redis is known to be down. Departures
//! ([`Authority::bye`]), rooms no longer used here, the hub's members after a reconnect and
//! the shutdown are kept in the same shared `Control` state, bounded by the number of
//! clients and rooms rather than by a channel's capacity, so none of them can be lost to a
//! full queue.
//!
//! The bridge (`bridge.rs`) is the future [`start`] returns, which the embedder runs beside the
//! hub's: it takes the queued work, runs the scripts concurrently on one multiplexed
//! connection (`call.rs`: one question as a script call), and sends answers and room events
//! back through the notice channel. The
//! semantics of every answer and event are those of [`crate::authority::local::Local`], with
//! the same error texts, users with several connections (on any nodes) and the HTTP API's
//! calls included; `wire.rs` reads what the scripts write.

pub(crate) mod backend;
mod bridge;
mod call;
mod scripts;
mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use async_channel::{Receiver, Sender};
use event_listener::Event;
use redis::RedisResult;

use crate::authority::{Answer, Ask, Authority, ClientId, Member, Notice, RoomEvent};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::LeaveReason;

pub use bridge::{
    BACKOFF_MAX, BACKOFF_MIN, BATCH, CALL_TIMEOUT, CONNECT_TIMEOUT, HEARTBEATS_TO_LIVE,
    MAX_IN_FLIGHT,
};

/// Questions that may wait for the bridge; beyond it the hub's client is answered
/// `unavailable`. (A client has at most one question out at a time, so this is reached only
/// when thousands of clients ask at once and Redis is slow to answer.)
pub const OPS_CAPACITY: usize = 4096;
/// Notices that may wait for the hub. Answers wait for room in it; a room event or direct
/// message that finds it full means this node is behind its room channels: the bridge drops
/// the connection and catches up from history after reconnecting, instead of letting
/// redis-rs buffer messages without bound.
pub const NOTICES_CAPACITY: usize = 4096;

/// A byte stream to Redis, as redis-rs reads and writes it.
pub type RedisStream = Pin<Box<dyn redis::aio::AsyncStream + Send + Sync>>;

/// Opens a byte stream to Redis at an address (TCP or a Unix socket). The module that owns the
/// executor supplies it (`server::redis_stream` for smol), so that this module names no
/// runtime: the bridge only polls what it is given.
pub type Connect =
    fn(redis::ConnectionAddr) -> Pin<Box<dyn Future<Output = RedisResult<RedisStream>> + Send>>;

/// Starts the Redis authority for `config.redis`. Returns the authority (the hub's side), the
/// notices the hub must receive, and the bridge's future, which runs until the node has said
/// goodbye after [`Authority::shutdown`] (or the authority is dropped), then drops `done`.
/// The future spawns nothing: the embedder's executor runs it, beside the hub's.
pub fn start(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    connect: Connect,
    done: Sender<()>,
) -> (
    Redis,
    Receiver<Notice>,
    impl Future<Output = ()> + Send + 'static,
) {
    metrics.redis_enabled.store(true, Relaxed);
    let shared = Arc::new(Shared::default());
    let (notices_tx, notices) = async_channel::bounded(NOTICES_CAPACITY);
    let bridge = bridge::Bridge::new(config, metrics, connect, shared.clone(), notices_tx);
    let run = async move {
        bridge.run().await;
        drop(done);
    };
    (Redis { shared }, notices, run)
}

/// What the hub hands the bridge, and what both must see: a lock held for a few field updates
/// at a time, never across an await.
#[derive(Default)]
struct Control {
    /// True between a completed resync and the loss of the connection: questions are queued
    /// only then.
    up: bool,
    /// Questions waiting for the bridge, oldest first (at most [`OPS_CAPACITY`]).
    ops: VecDeque<(ClientId, Ask)>,
    /// Clients with a question queued or running in Redis, with how many. A departure waits
    /// until its client has none, so that no script can run for a member after its bye.
    busy: HashMap<ClientId, u32>,
    /// Departures not yet told to Redis (one per departed client).
    byes: Vec<(ClientId, LeaveReason)>,
    /// Rooms with local interest (members, joins or senders on the way): the bridge subscribes
    /// to their channels. A join adds its room before its question is queued.
    wanted: HashSet<String>,
    /// Rooms that were given up since the bridge last looked, to unsubscribe unless wanted
    /// again.
    dropped: HashSet<String>,
    /// The hub's members, from its latest [`Authority::restore`], and how many restores it
    /// sent: one per [`Notice::Resyncing`] it handled.
    members: Option<Vec<Member>>,
    restores: u64,
    /// The node is shutting down (or the hub is gone).
    shutdown: bool,
    /// Per subscribed room, the epoch this node last knew it under (from its last read or its
    /// channel's events), and the rooms whose channel showed another one since, to read again.
    epochs: HashMap<String, String>,
    stale: Vec<String>,
}

/// [`Control`] and the event that wakes the bridge when it changes.
#[derive(Default)]
struct Shared {
    control: Mutex<Control>,
    wake: Event,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the control state and wakes the bridge.
    fn update<T>(&self, change: impl FnOnce(&mut Control) -> T) -> T {
        let out = change(&mut self.lock());
        self.wake.notify(1);
        out
    }

    /// One of `client`'s questions is over.
    fn done(&self, client: ClientId) {
        self.update(|c| {
            if let Some(n) = c.busy.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    c.busy.remove(&client);
                }
            }
        });
    }
}

/// The hub's side of the Redis authority. See the module documentation.
pub struct Redis {
    shared: Arc<Shared>,
}

impl Authority for Redis {
    fn ask(&mut self, client: ClientId, ask: Ask, _events: &mut Vec<RoomEvent>) -> Option<Answer> {
        self.shared.update(|c| {
            if !c.up || c.shutdown || c.ops.len() >= OPS_CAPACITY {
                return Some(Answer::Unavailable);
            }
            if let Ask::Join { room, .. } = &ask {
                c.wanted.insert(room.clone());
            }
            *c.busy.entry(client).or_default() += 1;
            c.ops.push_back((client, ask));
            None
        })
    }

    fn bye(&mut self, client: ClientId, reason: LeaveReason, _events: &mut Vec<RoomEvent>) {
        self.shared.update(|c| c.byes.push((client, reason)));
    }

    fn unused(&mut self, room: &str) {
        self.shared.update(|c| {
            if c.wanted.remove(room) {
                c.dropped.insert(room.to_string());
            }
        });
    }

    fn restore(&mut self, members: Vec<Member>) {
        self.shared.update(|c| {
            c.members = Some(members);
            c.restores += 1;
        });
    }

    fn shutdown(&mut self) {
        self.shared.update(|c| c.shutdown = true);
    }
}

impl Drop for Redis {
    /// The hub is gone: the bridge says goodbye for whoever is left and stops.
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::Address;

    fn client(key: usize) -> ClientId {
        ClientId { key, serial: 1 }
    }

    fn join(room: &str) -> Ask {
        Ask::Join {
            room: room.into(),
            since: None,
            epoch: None,
        }
    }

    #[test]
    fn questions_wait_for_the_bridge_and_departures_are_never_refused() {
        let shared = Arc::new(Shared::default());
        let mut redis = Redis {
            shared: shared.clone(),
        };
        let mut events = Vec::new();
        // Redis not (yet) known to be up: refused at once, nothing kept.
        let refused = redis.ask(client(1), join("dev"), &mut events);
        assert!(matches!(refused, Some(Answer::Unavailable)));
        assert!(shared.lock().wanted.is_empty() && shared.lock().busy.is_empty());

        shared.lock().up = true;
        assert!(redis.ask(client(1), join("dev"), &mut events).is_none());
        {
            let c = shared.lock();
            assert_eq!(c.ops.len(), 1);
            assert_eq!(c.busy[&client(1)], 1);
            assert!(
                c.wanted.contains("dev"),
                "wanted before the bridge sees the join"
            );
        }
        // A full queue refuses; departures, unused rooms and restores are kept regardless.
        for i in 0..OPS_CAPACITY {
            let ask = Ask::Rooms { offset: 0 };
            let _ = redis.ask(client(100 + i), ask, &mut events);
        }
        let full = redis.ask(client(2), Ask::Rooms { offset: 0 }, &mut events);
        assert!(matches!(full, Some(Answer::Unavailable)));
        redis.bye(client(1), LeaveReason::Disconnected, &mut events);
        redis.unused("dev");
        let member = Member {
            user: false,
            client: client(1),
            address: Address::of("127.0.0.1:1"),
            nick: "ada".into(),
            rooms: Vec::new(),
        };
        redis.restore(vec![member]);
        {
            let c = shared.lock();
            assert_eq!(c.byes, [(client(1), LeaveReason::Disconnected)]);
            assert!(!c.wanted.contains("dev") && c.dropped.contains("dev"));
            assert_eq!((c.restores, c.members.as_ref().map(Vec::len)), (1, Some(1)));
        }
        assert!(
            events.is_empty(),
            "the Redis authority never answers with local events"
        );
        drop(redis);
        assert!(
            shared.lock().shutdown,
            "a dropped authority lets the bridge say goodbye"
        );
    }
}
