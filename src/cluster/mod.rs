//! Scale-out (the `redis` feature): the bridge between this node's hub and Redis.
//!
//! ```text
//!  hub (state machine, no I/O)
//!    ── Op (bounded channel, try_send; full → `unavailable`) ──► bridge (this file)
//!    ◄── Command::Cluster(Notice) (the hub's inbox) ───────────  ├ command connection
//!                                                                │  (multiplexed: Lua scripts,
//!                                                                │   one task per call)
//!                                                                ├ pub/sub connection: one
//!                                                                │  channel per room with local
//!                                                                │  members + this node's channel
//!                                                                └ heartbeat + reaper timer
//! ```
//!
//! The hub stays the only owner of local state and never waits: every step that needs Redis
//! becomes an [`Op`], and its answer comes back as a [`Notice`] through the hub's inbox, like
//! any other command. Room events (messages, joins, leaves, renames) reach every node through
//! the room's channel, the origin node included, so all nodes fan out the same events in the
//! same order (Redis delivers one connection's messages in publish order) through the same hub
//! path as a single node. The scripts in [`scripts`] assign ids and change shared state.
//!
//! When Redis cannot be reached, every call is answered at once with `unavailable`, and the
//! bridge reconnects with backoff (100 ms doubling to 5 s). After each connection it asks the
//! hub for its members ([`Notice::Resyncing`] → [`Op::Restore`]), registers them again if Redis
//! lost them, resubscribes, and sends the hub each room's state ([`Notice::Resync`]) so that
//! messages said while this node was cut off are delivered from the room's history.

mod scripts;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, WeakSender};
use async_io::Timer;
use futures_lite::{FutureExt, StreamExt};
use redis::Value;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};

use crate::config::Config;
use crate::hub::{ClientId, Command, radix36};
use crate::metrics::Metrics;
use crate::protocol::{Frame, LeaveReason};
use scripts::Scripts;

/// Ops that may wait for the bridge before the hub answers `unavailable`.
const OPS_CAPACITY: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A node whose heartbeat is this many intervals old is lost.
pub const HEARTBEATS_TO_LIVE: u32 = 3;

/// A request from the hub to the bridge.
#[derive(Debug)]
pub enum Op {
    /// A step of a client's command; the answer goes back as [`Notice::Done`].
    Call { client: ClientId, call: Call },
    /// A client is gone: it leaves its rooms with `reason` and frees its nick. Kept and
    /// retried after a reconnect if Redis is down.
    Bye { mid: String, reason: LeaveReason },
    /// No local member is left in this room.
    Unsubscribe { room: String },
    /// The hub's answer to [`Notice::Resyncing`]: every local member and room.
    Restore {
        members: Vec<(String, String, Vec<String>)>,
        rooms: Vec<String>,
    },
    /// The node is shutting down: its members leave with reason `shutdown`.
    Shutdown,
}

/// One call to a script, for one client. `mid` is the client's member id.
#[derive(Debug)]
pub enum Call {
    Guest {
        mid: String,
    },
    Nick {
        mid: String,
        nick: String,
    },
    Join {
        mid: String,
        room: String,
    },
    Leave {
        mid: String,
        room: String,
    },
    Say {
        mid: String,
        room: String,
        before: String,
        after: String,
    },
    Direct {
        mid: String,
        to: String,
        before: String,
        after: String,
    },
    Who {
        room: String,
        offset: usize,
    },
    Rooms,
}

/// What a [`Call`] found.
#[derive(Debug)]
pub enum Answer {
    Guest(String),
    Renamed {
        old: String,
    },
    NickTaken,
    Joined(Joined),
    Left,
    Said {
        id: u64,
    },
    Direct(Frame),
    UnknownRecipient,
    Members {
        count: usize,
        nicks: Vec<String>,
    },
    Rooms(Vec<(String, usize)>),
    /// Redis does not know the member (any more): it was reaped, or Redis lost its data.
    Gone,
}

/// A room as a join found it.
#[derive(Debug)]
pub struct Joined {
    pub epoch: String,
    pub last_id: u64,
    /// The room event that announced the join (or the latest, for a resync): the joiner
    /// skips live events up to this one, which the answer already reflects.
    pub ev: u64,
    pub count: usize,
    pub nicks: Vec<String>,
    /// Retained messages, oldest first, the newest with id `last_id`.
    pub history: Vec<Frame>,
}

/// What a room event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Join,
    Leave,
    Nick,
}

/// One event from a room's channel.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The room's event number: every node sees them in increasing order.
    pub ev: u64,
    pub kind: Kind,
    /// Message id; member count after a join; before a leave; of the room for a rename.
    pub n: u64,
    /// Member id of who said, joined, left or was renamed (`mid#tag` for renames).
    pub subject: String,
    pub frame: Frame,
}

/// From the bridge to the hub, through its inbox.
#[derive(Debug)]
pub enum Notice {
    /// The answer to a [`Call`]; `None` means Redis could not be reached.
    Done {
        client: ClientId,
        answer: Option<Answer>,
    },
    /// An event of a room this node is subscribed to.
    Room { room: String, event: Envelope },
    /// A direct message for local client `target` (`key.serial`).
    Direct { target: String, frame: Frame },
    /// A new connection to Redis: buffer room events until each room's [`Notice::Resync`],
    /// and send [`Op::Restore`].
    Resyncing,
    /// A room's state after a reconnect.
    Resync {
        room: String,
        epoch: String,
        last_id: u64,
        ev: u64,
        history: Vec<Frame>,
    },
}

/// The hub's end: sends ops without waiting.
#[derive(Debug, Clone)]
pub struct Bridge {
    node: Arc<str>,
    ops: Sender<Op>,
}

impl Bridge {
    /// This node's id: random for every start.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Queues `op`; false if the bridge is too far behind (or gone).
    pub fn send(&self, op: Op) -> bool {
        self.ops.try_send(op).is_ok()
    }
}

/// Creates the bridge for `config.redis`. Returns the hub's end and the bridge's future, which
/// runs until the hub asks it to shut down (or is gone), then drops `done`.
pub fn start(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    inbox: WeakSender<Command>,
    done: Sender<()>,
) -> (Bridge, impl Future<Output = ()> + Send + 'static) {
    let node: Arc<str> = node_id().into();
    let (ops_tx, ops) = async_channel::bounded(OPS_CAPACITY);
    metrics.redis_enabled.store(true, Relaxed);
    let bridge = Bridge {
        node: node.clone(),
        ops: ops_tx,
    };
    let url = config.redis.clone().unwrap_or_default();
    let state = State {
        node,
        config,
        metrics,
        inbox,
        ops,
        scripts: Arc::new(Scripts::new()),
        byes: Vec::new(),
        epochs: 0,
    };
    let run = async move {
        state.run(&url).await;
        drop(done);
    };
    (bridge, run)
}

/// A node id: time since the epoch in base 36 plus a per-process count, so nodes started in
/// one process (tests) differ too. It never contains `.` or spaces.
fn node_id() -> String {
    use std::sync::atomic::AtomicU64;
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let n = STARTED.fetch_add(1, Relaxed);
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    format!("{}{}x{n}", radix36(micros), std::process::id())
}

struct State {
    node: Arc<str>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    inbox: WeakSender<Command>,
    ops: Receiver<Op>,
    scripts: Arc<Scripts>,
    /// Departures that could not be told to Redis yet.
    byes: Vec<(String, LeaveReason)>,
    /// Epoch candidates handed out, for new rooms.
    epochs: u64,
}

/// What woke the bridge up.
enum Wake {
    Op(Option<Op>),
    Lost,
    Beat,
}

/// Why a connection's session ended.
enum Ended {
    Lost,
    Shutdown,
}

impl State {
    async fn run(mut self, url: &str) {
        let client = match redis::Client::open(url) {
            Ok(c) => c,
            Err(e) => {
                log::error!("redis: bad URL {url:?}: {e}");
                return;
            }
        };
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        loop {
            match connect(&client).await {
                Ok((conn, pubsub)) => {
                    if connected_before {
                        Metrics::add(&self.metrics.redis_reconnects, 1);
                    }
                    connected_before = true;
                    backoff = BACKOFF_MIN;
                    log::info!("redis: connected to {url} as node {}", self.node);
                    let ended = self.session(conn, pubsub).await;
                    self.metrics.redis_up.store(0, Relaxed);
                    match ended {
                        Ended::Shutdown => return,
                        Ended::Lost => log::warn!("redis: connection lost; reconnecting"),
                    }
                }
                Err(e) => {
                    log::warn!("redis: cannot connect to {url}: {e}; retrying in {backoff:?}");
                    let until = Instant::now() + backoff;
                    if self.refuse_until(until).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// While Redis is down: answers every call with `unavailable` until `until`. Returns true
    /// if the hub asked to shut down (or is gone).
    async fn refuse_until(&mut self, until: Instant) -> bool {
        loop {
            let op = async { Some(self.ops.recv().await) }
                .or(async {
                    Timer::at(until).await;
                    None
                })
                .await;
            match op {
                None => return false,
                Some(Err(_)) | Some(Ok(Op::Shutdown)) => return true,
                Some(Ok(op)) => self.refuse(op).await,
            }
        }
    }

    async fn refuse(&mut self, op: Op) {
        match op {
            Op::Call { client, .. } => self.done(client, None).await,
            Op::Bye { mid, reason } => self.byes.push((mid, reason)),
            Op::Unsubscribe { .. } | Op::Restore { .. } | Op::Shutdown => {}
        }
    }

    async fn done(&self, client: ClientId, answer: Option<Answer>) {
        notify(&self.inbox, Notice::Done { client, answer }).await;
    }

    /// Serves ops over one pair of connections until one of them fails or the hub shuts down.
    async fn session(&mut self, conn: MultiplexedConnection, pubsub: redis::aio::PubSub) -> Ended {
        let (mut sink, stream) = pubsub.split();
        let node_channel = format!("smolchat:node:{}", self.node);
        if sink.subscribe(&node_channel).await.is_err() {
            return Ended::Lost;
        }
        let (lost_tx, lost) = async_channel::bounded::<()>(1);
        let (stop_reader, stop) = async_channel::bounded::<()>(1);
        smol::spawn(read_pubsub(
            stream,
            self.inbox.clone(),
            node_channel,
            lost_tx.clone(),
            stop,
        ))
        .detach();
        let mut session = Session {
            conn,
            sink,
            subscribed: HashSet::new(),
            lost: lost_tx,
            connected: Instant::now(),
            beats: 0,
        };
        let ended = self.serve(&mut session, &lost).await;
        drop(stop_reader);
        ended
    }

    async fn serve(&mut self, s: &mut Session, lost: &Receiver<()>) -> Ended {
        let beat = self.config.redis_heartbeat;
        let ttl = beat * HEARTBEATS_TO_LIVE;
        if !self.heartbeat(s, ttl).await {
            return Ended::Lost;
        }
        self.metrics.redis_up.store(1, Relaxed);
        notify(&self.inbox, Notice::Resyncing).await;
        for (mid, reason) in std::mem::take(&mut self.byes) {
            self.spawn_bye(s, mid, reason);
        }
        let mut next_beat = Instant::now() + beat;
        loop {
            if lost.try_recv().is_ok() {
                return Ended::Lost;
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + beat;
                if !self.heartbeat(s, ttl).await {
                    return Ended::Lost;
                }
                // Right after (re)connecting, give the other nodes a full time-to-live to
                // renew their own heartbeats before taking theirs for lost.
                if s.connected.elapsed() >= ttl && !self.reap(s).await {
                    return Ended::Lost;
                }
            }
            let wake = async { Wake::Op(self.ops.recv().await.ok()) }
                .or(async {
                    let _ = lost.recv().await;
                    Wake::Lost
                })
                .or(async {
                    Timer::at(next_beat).await;
                    Wake::Beat
                })
                .await;
            match wake {
                Wake::Beat => {}
                Wake::Lost => return Ended::Lost,
                Wake::Op(None) => return Ended::Shutdown,
                Wake::Op(Some(Op::Shutdown)) => {
                    let mut conn = s.conn.clone();
                    let said = self
                        .scripts
                        .goodbye
                        .arg(&*self.node)
                        .invoke_async::<Value>(&mut conn)
                        .await;
                    if let Err(e) = said {
                        log::warn!("redis: goodbye failed: {e}");
                    }
                    return Ended::Shutdown;
                }
                Wake::Op(Some(op)) => {
                    if !self.apply(s, op).await {
                        return Ended::Lost;
                    }
                }
            }
        }
    }

    /// Handles one op; false if the connection failed.
    async fn apply(&mut self, s: &mut Session, op: Op) -> bool {
        match op {
            Op::Call { client, call } => {
                if let Call::Join { room, .. } = &call
                    && !s.subscribed.contains(room)
                {
                    if s.sink.subscribe(room_channel(room)).await.is_err() {
                        self.done(client, None).await;
                        return false;
                    }
                    s.subscribed.insert(room.clone());
                }
                self.spawn_call(s, client, call);
            }
            Op::Bye { mid, reason } => self.spawn_bye(s, mid, reason),
            Op::Unsubscribe { room } => {
                if !room.is_empty() && s.subscribed.remove(&room) {
                    return s.sink.unsubscribe(room_channel(&room)).await.is_ok();
                }
            }
            Op::Restore { members, rooms } => return self.restore(s, members, rooms).await,
            Op::Shutdown => unreachable!("handled by serve"),
        }
        true
    }

    fn spawn_call(&mut self, s: &Session, client: ClientId, call: Call) {
        let mut conn = s.conn.clone();
        let scripts = self.scripts.clone();
        let inbox = self.inbox.clone();
        let lost = s.lost.clone();
        let config = self.config.clone();
        let epoch = self.next_epoch();
        let node = self.node.clone();
        smol::spawn(async move {
            let answer = match call_script(&scripts, &mut conn, &config, &node, &epoch, call).await
            {
                Ok(answer) => Some(answer),
                Err(e) => {
                    log::warn!("redis: call failed: {e}");
                    if connection_error(&e) {
                        let _ = lost.try_send(());
                    }
                    None
                }
            };
            notify(&inbox, Notice::Done { client, answer }).await;
        })
        .detach();
    }

    fn spawn_bye(&mut self, s: &Session, mid: String, reason: LeaveReason) {
        let mut conn = s.conn.clone();
        let scripts = self.scripts.clone();
        let lost = s.lost.clone();
        smol::spawn(async move {
            let said = scripts
                .bye
                .arg(&mid)
                .arg(reason_name(reason))
                .invoke_async::<Value>(&mut conn)
                .await;
            if let Err(e) = said {
                // Not retried: after a reconnect the node restores only its live members,
                // and a departed one is left to the reaper when this node stops.
                log::warn!("redis: could not remove {mid}: {e}");
                if connection_error(&e) {
                    let _ = lost.try_send(());
                }
            }
        })
        .detach();
    }

    fn next_epoch(&mut self) -> String {
        self.epochs += 1;
        format!("{}-{}", self.node, radix36(self.epochs.into()))
    }

    async fn heartbeat(&self, s: &mut Session, ttl: Duration) -> bool {
        let was: Result<i64, _> = self
            .scripts
            .heartbeat
            .arg(&*self.node)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut s.conn)
            .await;
        match was {
            Ok(was) => {
                // Expired while connected: another node may have reaped our members.
                if was == 0 && s.beats > 0 {
                    log::warn!("redis: this node's heartbeat had expired; registering again");
                    notify(&self.inbox, Notice::Resyncing).await;
                }
                s.beats += 1;
                true
            }
            Err(e) => {
                log::warn!("redis: heartbeat failed: {e}");
                false
            }
        }
    }

    async fn reap(&self, s: &mut Session) -> bool {
        let reaped: Result<i64, _> = self
            .scripts
            .reap
            .arg(&*self.node)
            .invoke_async(&mut s.conn)
            .await;
        match reaped {
            Ok(0) => true,
            Ok(n) => {
                log::warn!("redis: removed {n} members of lost nodes");
                true
            }
            Err(e) => {
                log::warn!("redis: reaper failed: {e}");
                !connection_error(&e)
            }
        }
    }

    /// Registers the hub's members again where Redis lost them, subscribes to exactly the
    /// hub's rooms, and sends the hub each room's state.
    async fn restore(
        &mut self,
        s: &mut Session,
        members: Vec<(String, String, Vec<String>)>,
        rooms: Vec<String>,
    ) -> bool {
        let prefix = self.next_epoch();
        for (mid, nick, member_rooms) in members {
            let mut call = self.scripts.restore.prepare_invoke();
            call.arg(&*self.node).arg(&mid).arg(&nick).arg(&prefix);
            for room in &member_rooms {
                call.arg(room);
            }
            if let Err(e) = call.invoke_async::<Value>(&mut s.conn).await {
                log::warn!("redis: restore failed: {e}");
                return !connection_error(&e);
            }
        }
        let wanted: HashSet<String> = rooms.into_iter().collect();
        let stale: Vec<String> = s.subscribed.difference(&wanted).cloned().collect();
        for room in stale {
            s.subscribed.remove(&room);
            if s.sink.unsubscribe(room_channel(&room)).await.is_err() {
                return false;
            }
        }
        for room in wanted {
            if !s.subscribed.contains(&room) {
                if s.sink.subscribe(room_channel(&room)).await.is_err() {
                    return false;
                }
                s.subscribed.insert(room.clone());
            }
            let epoch = self.next_epoch();
            let state: Result<Value, _> = self
                .scripts
                .state
                .arg(&room)
                .arg(&epoch)
                .invoke_async(&mut s.conn)
                .await;
            let state = match state {
                Ok(v) => v,
                Err(e) => {
                    log::warn!("redis: room state failed: {e}");
                    return !connection_error(&e);
                }
            };
            let v = items(state);
            let notice = Notice::Resync {
                room,
                epoch: text(v.first()),
                last_id: int(v.get(1)),
                ev: int(v.get(2)),
                history: frames(v.get(3)),
            };
            notify(&self.inbox, notice).await;
        }
        true
    }
}

struct Session {
    conn: MultiplexedConnection,
    sink: PubSubSink,
    subscribed: HashSet<String>,
    lost: Sender<()>,
    connected: Instant,
    beats: u64,
}

async fn connect(
    client: &redis::Client,
) -> redis::RedisResult<(MultiplexedConnection, redis::aio::PubSub)> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let pubsub = client.get_async_pubsub().await?;
    Ok((conn, pubsub))
}

fn connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Sends a notice to the hub; nothing to do if the hub is gone.
async fn notify(inbox: &WeakSender<Command>, notice: Notice) {
    if let Some(inbox) = inbox.upgrade() {
        let _ = inbox.send(Command::Cluster(notice)).await;
    }
}

fn room_channel(room: &str) -> String {
    format!("smolchat:room:{room}")
}

/// The wire name of a leave reason, as in `leave` events.
fn reason_name(reason: LeaveReason) -> String {
    let json = serde_json::to_string(&reason).expect("reasons serialize");
    json.trim_matches('"').to_string()
}

/// Forwards pub/sub messages to the hub until the connection ends or `stop` closes, then
/// reports the connection lost.
async fn read_pubsub(
    mut stream: PubSubStream,
    inbox: WeakSender<Command>,
    node_channel: String,
    lost: Sender<()>,
    stop: Receiver<()>,
) {
    loop {
        let msg = async { stream.next().await }
            .or(async {
                let _ = stop.recv().await;
                None
            })
            .await;
        let Some(msg) = msg else { break };
        let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
            continue;
        };
        let channel = msg.get_channel_name();
        let notice = if channel == node_channel {
            match payload.split_once(' ') {
                Some((target, frame)) => Notice::Direct {
                    target: target.to_string(),
                    frame: Frame::from(frame.to_string()),
                },
                None => continue,
            }
        } else if let Some(room) = channel.strip_prefix("smolchat:room:") {
            match parse_envelope(payload) {
                Some(event) => Notice::Room {
                    room: room.to_string(),
                    event,
                },
                None => {
                    log::warn!("redis: malformed room event on {channel}");
                    continue;
                }
            }
        } else {
            continue;
        };
        let Some(inbox) = inbox.upgrade() else { break };
        if inbox.send(Command::Cluster(notice)).await.is_err() {
            break;
        }
    }
    let _ = lost.try_send(());
}

fn parse_envelope(payload: &str) -> Option<Envelope> {
    let mut parts = payload.splitn(5, ' ');
    let ev = parts.next()?.parse().ok()?;
    let kind = match parts.next()? {
        "m" => Kind::Message,
        "j" => Kind::Join,
        "l" => Kind::Leave,
        "n" => Kind::Nick,
        _ => return None,
    };
    let n = parts.next()?.parse().ok()?;
    let subject = parts.next()?.to_string();
    let frame = Frame::from(parts.next()?.to_string());
    Some(Envelope {
        ev,
        kind,
        n,
        subject,
        frame,
    })
}

async fn call_script(
    scripts: &Scripts,
    conn: &mut MultiplexedConnection,
    config: &Config,
    node: &str,
    epoch: &str,
    call: Call,
) -> redis::RedisResult<Answer> {
    Ok(match call {
        Call::Guest { mid } => {
            let v: Value = scripts.guest.arg(&mid).arg(node).invoke_async(conn).await?;
            match v {
                Value::Nil => Answer::Gone,
                v => Answer::Guest(text(Some(&v))),
            }
        }
        Call::Nick { mid, nick } => {
            let v = items(scripts.nick.arg(&mid).arg(&nick).invoke_async(conn).await?);
            match text(v.first()).as_str() {
                "ok" => Answer::Renamed {
                    old: text(v.get(1)),
                },
                "taken" => Answer::NickTaken,
                _ => Answer::Gone,
            }
        }
        Call::Join { mid, room } => {
            let v = items(
                scripts
                    .join
                    .arg(&mid)
                    .arg(&room)
                    .arg(epoch)
                    .arg(config.presence_limit)
                    .invoke_async(conn)
                    .await?,
            );
            if text(v.first()) != "ok" {
                return Ok(Answer::Gone);
            }
            Answer::Joined(Joined {
                epoch: text(v.get(1)),
                last_id: int(v.get(2)),
                ev: int(v.get(3)),
                count: int(v.get(4)) as usize,
                nicks: texts(v.get(5)),
                history: frames(v.get(6)),
            })
        }
        Call::Leave { mid, room } => {
            let _: i64 = scripts
                .leave
                .arg(&mid)
                .arg(&room)
                .invoke_async(conn)
                .await?;
            Answer::Left
        }
        Call::Say {
            mid,
            room,
            before,
            after,
        } => {
            let id: i64 = scripts
                .say
                .arg(&mid)
                .arg(&room)
                .arg(&before)
                .arg(&after)
                .arg(config.history)
                .invoke_async(conn)
                .await?;
            match u64::try_from(id) {
                Ok(id) => Answer::Said { id },
                Err(_) => Answer::Gone,
            }
        }
        Call::Direct {
            mid,
            to,
            before,
            after,
        } => {
            let v: Value = scripts
                .direct
                .arg(to.to_ascii_lowercase())
                .arg(&before)
                .arg(&after)
                .arg(&mid)
                .invoke_async(conn)
                .await?;
            match v {
                Value::Nil => Answer::UnknownRecipient,
                v => Answer::Direct(Frame::from(text(items(v).get(1)))),
            }
        }
        Call::Who { room, offset } => {
            let v = items(
                scripts
                    .who
                    .arg(&room)
                    // Lua's numbers are doubles: a huge offset would reach the script as a
                    // float and fail it. Past any member count, the page is empty anyway.
                    .arg(offset.min(1 << 40))
                    .arg(config.presence_limit)
                    .invoke_async(conn)
                    .await?,
            );
            Answer::Members {
                count: int(v.first()) as usize,
                nicks: texts(v.get(1)),
            }
        }
        Call::Rooms => {
            let v = items(scripts.rooms.prepare_invoke().invoke_async(conn).await?);
            Answer::Rooms(
                v.chunks(2)
                    .map(|pair| (text(pair.first()), int(pair.get(1)) as usize))
                    .collect(),
            )
        }
    })
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(n)) => n.to_string(),
        Some(Value::Okay) => "OK".to_string(),
        _ => String::new(),
    }
}

fn int(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// A reply's list of strings (nicks), empty when missing.
fn texts(value: Option<&Value>) -> Vec<String> {
    value
        .cloned()
        .map(items)
        .unwrap_or_default()
        .iter()
        .map(|n| text(Some(n)))
        .collect()
}

fn frames(v: Option<&Value>) -> Vec<Frame> {
    v.cloned()
        .map(items)
        .unwrap_or_default()
        .iter()
        .map(|f| Frame::from(text(Some(f))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_parse() {
        let e = parse_envelope(r#"7 m 3 n1.0.1 {"type":"message","text":"a b"}"#).unwrap();
        assert_eq!((e.ev, e.kind, e.n), (7, Kind::Message, 3));
        assert_eq!(e.subject, "n1.0.1");
        assert_eq!(e.frame.as_str(), r#"{"type":"message","text":"a b"}"#);
        assert!(parse_envelope("7 x 3 s {}").is_none());
        assert_eq!(reason_name(LeaveReason::NodeLost), "node_lost");
        assert!(!node_id().contains(['.', ' ', '#']));
    }
}
