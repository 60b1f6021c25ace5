//! The bridge: the one future that talks to Redis for this node. It owns the connection (and
//! polls redis-rs's driver for it: nothing is spawned), reconnects with backoff, renews the
//! node's heartbeat and reaps lost nodes, keeps the room subscriptions, and after every new
//! connection gives the hub back a consistent view (restore, lost members, each room's state).
//!
//! Data enters from the hub through [`Control`](super::Control) (questions, departures,
//! rooms wanted, members to restore, shutdown) and from Redis as script replies and pub/sub
//! pushes. It leaves as script calls, and as [`Notice`]s for the hub: answers (sent by the
//! call that got them), room events and direct messages (sent by [`Pushes`] as they arrive,
//! never waiting), and [`Notice::Resyncing`] / [`Notice::Lost`] / [`Notice::Resync`] around a
//! reconnect.
//!
//! One connection (RESP3) carries the scripts and the subscriptions. Redis runs one
//! connection's commands in order, so a room's `SUBSCRIBE`, sent before its first join script,
//! is in effect before the join is announced, and the events of a room come in the order they
//! were published. Calls run concurrently, pipelined: at most [`MAX_IN_FLIGHT`] at a time,
//! each within [`CALL_TIMEOUT`].
//!
//! A session on a connection goes: subscribe to this node's channel; heartbeat (which tells
//! whether Redis lost its data since the node last saw it); [`Notice::Resyncing`], after which
//! the hub holds every room's events; wait for the hub's members; restore them, reporting the
//! ones Redis no longer knows (reaped while this node was cut off) or whose nick someone else
//! holds now as [`Notice::Lost`]; subscribe to every wanted room and send each its
//! [`Notice::Resync`]. Only then is the node up (`smolchat_redis_up 1`, `/healthz` 200, questions
//! accepted). Any failure before that, like any later loss, ends the session: the next one
//! starts with a new `Resyncing`, so no room stays held.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use async_channel::{Sender, TrySendError};
use event_listener::EventListener;
use futures_lite::FutureExt;
use futures_lite::future::poll_once;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{
    AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, RedisResult, Value,
};

use super::call::{Job, int, items, text, texts};
use super::scripts::Scripts;
use super::{Connect, Shared, wire};
use crate::authority::local::radix36;
use crate::authority::{Answer, Ask, ClientId, Member, Notice};
use crate::config::Config;
use crate::deadline::{Timer, within};
use crate::metrics::Metrics;
use crate::protocol::LeaveReason;

/// Calls (questions and batches of departures) running in Redis at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// The most any one call, subscription or heartbeat may take; past it the connection is taken
/// for lost (every script is bounded, so a slow one means Redis or the link is in trouble).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connecting (TCP and the RESP3 handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait before reconnecting after a failure, doubling up to [`BACKOFF_MAX`]; a connection that
/// stayed up for [`BACKOFF_MAX`] resets it, and is replaced at once when lost.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A node whose heartbeat is this many intervals old is lost; so is a connection on which the
/// node's own heartbeat echo has not come back for as long.
pub const HEARTBEATS_TO_LIVE: u32 = 3;
/// Members per REAP, GOODBYE, RESTORE and BYE call: what one script may walk at once.
pub const BATCH: usize = 100;

const ROOM_CHANNEL: &str = "smolchat:room:";

/// What a finished call tells the bridge.
struct Outcome {
    /// The connection is to be taken for lost.
    lost: bool,
    /// Why the call failed, if it did (logged once per heartbeat, with a count).
    failed: Option<String>,
}

type Call = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Why a session ended.
enum Ended {
    Lost,
    Shutdown,
}

/// The bridge's state across connections. See the module documentation.
pub struct Bridge {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// Opens the byte stream to Redis: the executor's owner supplies it.
    connect: Connect,
    /// This node's id: random for every start.
    node: Arc<str>,
    shared: Arc<Shared>,
    notices: Sender<Notice>,
    scripts: Arc<Scripts>,
    /// Epoch candidates handed out, for rooms this node creates.
    epochs: u64,
    /// The id of the Redis data set this node last saw; another one means Redis lost its data.
    life: Option<String>,
    /// [`Notice::Resyncing`]s sent, to match with the hub's restores.
    resyncings: u64,
    calls: FuturesUnordered<Call>,
    /// Failed calls since the last log line about them, and the last reason.
    failures: (u64, String),
}

/// One connection's state.
struct Session {
    conn: MultiplexedConnection,
    link: Arc<Link>,
    /// Rooms whose channel this connection is subscribed to.
    subscribed: HashSet<String>,
    since: Instant,
}

/// What the push handler knows about the connection it serves.
struct Link {
    /// The connection closed, or this node fell behind its channels.
    lost: AtomicBool,
    born: Instant,
    /// When this node's heartbeat echo last came back, in ms since `born`.
    last_beat: AtomicU64,
}

impl Link {
    fn new() -> Self {
        Link {
            lost: AtomicBool::new(false),
            born: Instant::now(),
            last_beat: AtomicU64::new(0),
        }
    }

    fn lost(&self) -> bool {
        self.lost.load(Relaxed)
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Time since the last heartbeat echo (or since the connection was made).
    fn silent_for(&self) -> Duration {
        Duration::from_millis(self.now().saturating_sub(self.last_beat.load(Relaxed)))
    }
}

/// The heartbeat's findings.
struct Beat {
    alive_before: bool,
    life: String,
}

impl Bridge {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        connect: Connect,
        shared: Arc<Shared>,
        notices: Sender<Notice>,
    ) -> Self {
        Bridge {
            config,
            metrics,
            connect,
            node: node_id().into(),
            shared,
            notices,
            scripts: Arc::new(Scripts::new()),
            epochs: 0,
            life: None,
            resyncings: 0,
            calls: FuturesUnordered::new(),
            failures: (0, String::new()),
        }
    }

    /// Connects, serves, reconnects, until the node has said goodbye.
    pub async fn run(mut self) {
        let url = self.config.redis.clone().unwrap_or_default();
        let info = match url.as_str().into_connection_info() {
            Ok(info) => info,
            Err(e) => {
                log::error!("redis: bad URL {url:?}: {e}");
                self.pause(Duration::MAX).await;
                return;
            }
        };
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        loop {
            if self.shared.lock().shutdown {
                log::warn!(
                    "redis: stopping while Redis is unreachable: other nodes will take this \
                     node's members for lost when its heartbeat expires"
                );
                return;
            }
            let link = Arc::new(Link::new());
            let pushes = Pushes {
                node: self.node.clone(),
                node_channel: node_channel(&self.node),
                notices: self.notices.clone(),
                link: link.clone(),
                shared: self.shared.clone(),
            };
            match within(CONNECT_TIMEOUT, connect(self.connect, &info, pushes)).await {
                Some(Ok((conn, driver))) => {
                    if connected_before {
                        Metrics::add(&self.metrics.redis_reconnects, 1);
                    }
                    connected_before = true;
                    log::info!("redis: connected to {url} as node {}", self.node);
                    let session = Session {
                        conn,
                        link,
                        subscribed: HashSet::new(),
                        since: Instant::now(),
                    };
                    let mut up_since = None;
                    let ended = self
                        .session(session, &mut up_since)
                        .or(async {
                            driver.await;
                            Ended::Lost
                        })
                        .await;
                    self.set_up(false);
                    self.drain().await;
                    if let Ended::Shutdown = ended {
                        return;
                    }
                    // After a connection that served a while, at once; after one that failed
                    // early (or flaps), the backoff keeps growing.
                    if up_since.is_some_and(|t: Instant| t.elapsed() >= BACKOFF_MAX) {
                        log::warn!("redis: connection lost; reconnecting");
                        backoff = BACKOFF_MIN;
                        continue;
                    }
                    log::warn!("redis: connection lost early; reconnecting in {backoff:?}");
                }
                Some(Err(e)) => {
                    log::warn!("redis: cannot connect to {url}: {e}; retrying in {backoff:?}")
                }
                None => log::warn!(
                    "redis: no connection to {url} within {CONNECT_TIMEOUT:?}; retrying in \
                     {backoff:?}"
                ),
            }
            if self.pause(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Waits `how_long`, unless the node shuts down first (true).
    async fn pause(&mut self, how_long: Duration) -> bool {
        let until = Instant::now().checked_add(how_long);
        loop {
            let listener = self.shared.wake.listen();
            if self.shared.lock().shutdown {
                return true;
            }
            let timer = async {
                match until {
                    Some(until) => Timer::at(until).await,
                    None => std::future::pending().await,
                };
                true
            };
            if timer
                .or(async {
                    listener.await;
                    false
                })
                .await
            {
                return false;
            }
        }
    }

    fn set_up(&self, up: bool) {
        self.shared.lock().up = up;
        self.metrics.redis_up.store(u64::from(up), Relaxed);
    }

    /// After a connection ends, or before the goodbye: lets the calls still running finish
    /// (or fail, if their requests died with the connection), and answers the questions still
    /// queued with `unavailable`.
    async fn drain(&mut self) {
        while let Some(outcome) = self.calls.next().await {
            self.count(outcome);
        }
        self.log_failures();
        let ops: Vec<_> = self.shared.lock().ops.drain(..).collect();
        for (client, _) in ops {
            self.answer(client, Answer::Unavailable).await;
        }
    }

    async fn answer(&mut self, client: ClientId, answer: Answer) {
        self.shared.done(client);
        let _ = self.notices.send(Notice::Answer { client, answer }).await;
    }

    fn count(&mut self, outcome: Outcome) -> bool {
        if let Some(why) = outcome.failed {
            self.failures.0 += 1;
            self.failures.1 = why;
        }
        outcome.lost
    }

    fn log_failures(&mut self) {
        let (n, why) = std::mem::take(&mut self.failures);
        if n > 0 {
            log::warn!("redis: {n} calls failed (answered `unavailable`), the last: {why}");
        }
    }

    /// One connection, from the first subscription to its loss or the goodbye.
    async fn session(&mut self, mut s: Session, up_since: &mut Option<Instant>) -> Ended {
        if !self.subscribe(&mut s, vec![node_channel(&self.node)]).await {
            return Ended::Lost;
        }
        let Some(beat) = self.heartbeat(&mut s).await else {
            return Ended::Lost;
        };
        // A new life: Redis lost everything (restarted without persistence, flushed), and
        // nobody was reaped, so this node's members may be registered again.
        let fresh = self.life.as_ref().is_some_and(|life| *life != beat.life);
        if fresh {
            log::warn!("redis: Redis lost its data; registering this node's members again");
        }
        if !self.witness(&mut s).await {
            return Ended::Lost;
        }
        if let Some(ended) = self.resync(&mut s, beat.life).await {
            return ended;
        }
        self.set_up(true);
        *up_since = Some(Instant::now());
        self.serve(&mut s).await
    }

    /// Gives the hub a consistent view again (see the module documentation). `life` is the id
    /// of Redis's data set now. `None` when done.
    async fn resync(&mut self, s: &mut Session, life: String) -> Option<Ended> {
        let fresh = self.life.as_ref().is_some_and(|known| *known != life);
        if self.notices.send(Notice::Resyncing).await.is_err() {
            return Some(Ended::Shutdown); // the hub is gone
        }
        // Counted once sent (the send may be dropped with the session): the hub restores once
        // per Resyncing it handles.
        self.resyncings += 1;
        // The hub answers each Resyncing with its members; the latest answer is current once
        // it has answered them all.
        let members = loop {
            let listener = self.shared.wake.listen();
            let (shutdown, members) = {
                let mut c = self.shared.lock();
                let answered = c.restores >= self.resyncings;
                (
                    c.shutdown,
                    answered.then(|| c.members.take().unwrap_or_default()),
                )
            };
            if shutdown {
                return Some(self.goodbye(s).await);
            }
            if let Some(members) = members {
                break members;
            }
            if s.link.lost() {
                return Some(Ended::Lost);
            }
            listener.await;
        };
        let mut lost = Vec::new();
        for batch in members.chunks(BATCH) {
            let Some(batch_lost) = self.restore(s, batch, fresh).await else {
                return Some(Ended::Lost);
            };
            lost.extend(batch_lost);
        }
        // Only now: if a batch failed, the next connection must still know that Redis lost
        // its data, or it would take the members not yet registered again for reaped ones.
        self.life = Some(life);
        if !lost.is_empty() {
            log::warn!(
                "redis: {} of this node's clients were taken for lost while it was cut off \
                 (or their nicks are held by others now); closing them",
                lost.len()
            );
            if self.notices.send(Notice::Lost(lost)).await.is_err() {
                return Some(Ended::Shutdown);
            }
        }
        let wanted: Vec<String> = {
            let mut c = self.shared.lock();
            c.dropped.clear();
            // This resync reads every room again.
            c.stale.clear();
            c.epochs.clear();
            c.wanted.iter().cloned().collect()
        };
        for chunk in wanted.chunks(BATCH) {
            let channels = chunk.iter().map(|r| room_channel(r)).collect();
            if !self.subscribe(s, channels).await {
                return Some(Ended::Lost);
            }
            s.subscribed.extend(chunk.iter().cloned());
        }
        for room in wanted {
            let Some(notice) = self.state(s, room).await else {
                return Some(Ended::Lost);
            };
            if self.notices.send(notice).await.is_err() {
                return Some(Ended::Shutdown);
            }
        }
        if s.link.lost() {
            return Some(Ended::Lost);
        }
        None
    }

    /// Restores a batch of the hub's members; returns the clients that cannot be restored, or
    /// `None` if the call failed (the connection is then taken for lost).
    async fn restore(
        &mut self,
        s: &mut Session,
        members: &[Member],
        fresh: bool,
    ) -> Option<Vec<ClientId>> {
        let prefix = self.next_epoch();
        let mut call = self.scripts.restore.prepare_invoke();
        call.arg(&*self.node)
            .arg(if fresh { "1" } else { "0" })
            .arg(&self.config.default_room)
            .arg(prefix);
        for m in members {
            call.arg(wire::member_id(&self.node, m.client))
                .arg(&m.nick)
                .arg(m.address.value().to_string())
                .arg(if m.user { "1" } else { "0" })
                .arg(m.rooms.len());
            for room in &m.rooms {
                call.arg(room);
            }
        }
        let lost: Vec<String> = match within(CALL_TIMEOUT, call.invoke_async(&mut s.conn)).await {
            Some(Ok(lost)) => lost,
            Some(Err(e)) => {
                log::warn!("redis: restoring this node's members failed: {e}");
                return None;
            }
            None => return None,
        };
        Some(
            lost.iter()
                .filter_map(|mid| wire::local_client(&self.node, mid))
                .collect(),
        )
    }

    /// Tells Redis which run it is and whether that run keeps every acknowledged write, so
    /// that a data set that came back older than it was starts a new era (scripts.rs's
    /// WITNESS): no id is then handed out twice, and every room's members are told of its new
    /// epoch at their resync. Persistence counts as safe only with AOF and `appendfsync
    /// always`; a Redis that will not say (`CONFIG` renamed away) counts as unsafe. False if
    /// the connection failed.
    async fn witness(&mut self, s: &mut Session) -> bool {
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let run = match within(CALL_TIMEOUT, info.query_async::<String>(&mut s.conn)).await {
            Some(Ok(info)) => info_field(&info, "run_id").unwrap_or_default().to_string(),
            Some(Err(e)) => {
                log::warn!("redis: INFO server failed: {e}");
                return false;
            }
            None => return false,
        };
        let mut config = redis::cmd("CONFIG");
        config.arg("GET").arg("append*");
        // A map in RESP3, pairs in an array in RESP2: redis-rs reads either into a HashMap.
        let reply = config.query_async::<HashMap<String, String>>(&mut s.conn);
        let safe = match within(CALL_TIMEOUT, reply).await {
            Some(Ok(settings)) => {
                let get = |name: &str| settings.get(name).map(String::as_str);
                get("appendonly") == Some("yes") && get("appendfsync") == Some("always")
            }
            Some(Err(e)) => {
                log::warn!("redis: CONFIG GET failed ({e}); taking persistence for unsafe");
                false
            }
            None => return false,
        };
        let era = self.next_epoch();
        let mut call = self.scripts.witness.prepare_invoke();
        call.arg(&run).arg(if safe { "1" } else { "0" }).arg(era);
        match within(CALL_TIMEOUT, call.invoke_async::<u64>(&mut s.conn)).await {
            Some(Ok(began)) => {
                if began == 1 {
                    log::warn!(
                        "redis: Redis restarted (run {run}) with persistence that may have lost \
                         acknowledged writes (not AOF with appendfsync always); every room \
                         starts a new epoch"
                    );
                }
                true
            }
            Some(Err(e)) => {
                log::warn!("redis: checking Redis's run failed: {e}");
                false
            }
            None => false,
        }
    }

    /// A room's state, as the hub's [`Notice::Resync`]; `None` if the call failed.
    async fn state(&mut self, s: &mut Session, room: String) -> Option<Notice> {
        let mut invocation = self.scripts.state.prepare_invoke();
        invocation.arg(&room).arg(self.config.presence_limit);
        let reply: Value = match within(CALL_TIMEOUT, invocation.invoke_async(&mut s.conn)).await {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                log::warn!("redis: reading room {room:?} failed: {e}");
                return None;
            }
            None => return None,
        };
        let v = items(reply);
        let last_id = int(v.get(1));
        let history = wire::history(&room, last_id, &texts(v.get(3)));
        let epoch = text(v.first());
        let mut c = self.shared.lock();
        if epoch.is_empty() {
            // No such room (yet): its first event, whatever its epoch, is no change.
            c.epochs.remove(&room);
        } else {
            c.epochs.insert(room.clone(), epoch.clone());
        }
        drop(c);
        Some(Notice::Resync {
            epoch,
            last_id,
            ev: int(v.get(2)),
            history,
            count: int(v.get(4)) as usize,
            nicks: texts(v.get(5)),
            room,
        })
    }

    /// Serves the hub until the connection is lost or the node says goodbye.
    async fn serve(&mut self, s: &mut Session) -> Ended {
        let every = self.config.redis_heartbeat;
        let mut next_beat = Instant::now() + every;
        loop {
            if s.link.lost() {
                return Ended::Lost;
            }
            while let Some(Some(outcome)) = poll_once(self.calls.next()).await {
                if self.count(outcome) {
                    return Ended::Lost;
                }
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + every;
                if !self.beat(s).await {
                    return Ended::Lost;
                }
            }
            let listener = self.shared.wake.listen();
            let work = self.take(&s.subscribed);
            if work.shutdown {
                return self.goodbye(s).await;
            }
            if let Some(ended) = self.reread(s, work.stale).await {
                return ended;
            }
            if work.ops.is_empty() && work.byes.is_empty() && work.unsubscribe.is_empty() {
                if !self.idle(listener, next_beat).await {
                    return Ended::Lost;
                }
                continue;
            }
            if !work.unsubscribe.is_empty() {
                let channels = work.unsubscribe.iter().map(|r| room_channel(r)).collect();
                for room in &work.unsubscribe {
                    s.subscribed.remove(room);
                }
                if !self.unsubscribe(s, channels).await {
                    self.requeue(work.ops);
                    return Ended::Lost;
                }
            }
            let mut ops = work.ops.into_iter();
            while let Some((client, ask)) = ops.next() {
                if let Ask::Join { room, .. } = &ask
                    && !s.subscribed.contains(room)
                {
                    // Subscribed before the join script runs: no event of the room is missed.
                    if !self.subscribe(s, vec![room_channel(room)]).await {
                        // Answered by `drain`, outside this session's future (which the
                        // connection's end may drop at any await).
                        self.requeue(std::iter::once((client, ask)).chain(ops).collect());
                        return Ended::Lost;
                    }
                    s.subscribed.insert(room.clone());
                }
                let call = self.ask(s, client, ask);
                self.calls.push(call);
            }
            if !work.byes.is_empty() {
                let call = self.byes(s, work.byes);
                self.calls.push(call);
            }
        }
    }

    /// Nothing to start: waits for new work (`listener`), a call's end or the next heartbeat.
    /// False if a call's failure means the connection is lost.
    async fn idle(&mut self, listener: EventListener, next_beat: Instant) -> bool {
        let calls = &mut self.calls;
        let wake = async {
            listener.await;
            None
        }
        .or(async {
            match calls.next().await {
                Some(outcome) => Some(outcome),
                None => std::future::pending().await,
            }
        })
        .or(async {
            Timer::at(next_beat).await;
            None
        })
        .await;
        !wake.is_some_and(|outcome| self.count(outcome))
    }

    /// Reads again the rooms whose channel showed a new epoch, for the hub (which holds
    /// their events meanwhile). `Some` if the connection or the hub is gone.
    async fn reread(&mut self, s: &mut Session, stale: Vec<String>) -> Option<Ended> {
        for room in stale {
            log::warn!("redis: room {room:?} has a new epoch; reading it again");
            let Some(notice) = self.state(s, room).await else {
                return Some(Ended::Lost);
            };
            if self.notices.send(notice).await.is_err() {
                return Some(Ended::Shutdown);
            }
        }
        None
    }

    /// Takes the work waiting in the control state: questions (while fewer than
    /// [`MAX_IN_FLIGHT`] calls run), departures of clients with nothing running, rooms to
    /// unsubscribe.
    fn take(&self, subscribed: &HashSet<String>) -> Work {
        let mut c = self.shared.lock();
        if c.shutdown {
            // The goodbye answers the questions still queued and covers the departures.
            return Work {
                shutdown: true,
                ops: Vec::new(),
                byes: Vec::new(),
                unsubscribe: Vec::new(),
                stale: Vec::new(),
            };
        }
        let room = MAX_IN_FLIGHT.saturating_sub(self.calls.len());
        let n = room.min(c.ops.len());
        let ops = c.ops.drain(..n).collect();
        let mut byes = Vec::new();
        if room > n {
            let mut i = 0;
            while i < c.byes.len() && byes.len() < BATCH {
                if c.busy.contains_key(&c.byes[i].0) {
                    i += 1;
                } else {
                    byes.push(c.byes.swap_remove(i));
                }
            }
        }
        let dropped = std::mem::take(&mut c.dropped);
        let unsubscribe: Vec<String> = dropped
            .into_iter()
            .filter(|r| !c.wanted.contains(r) && subscribed.contains(r))
            .collect();
        for room in &unsubscribe {
            c.epochs.remove(room);
        }
        let stale = std::mem::take(&mut c.stale);
        // A restore for an earlier Resyncing that arrived after this session's resync.
        c.members = None;
        Work {
            shutdown: false,
            ops,
            byes,
            unsubscribe,
            stale,
        }
    }

    /// Puts questions back for [`Bridge::drain`] to answer.
    fn requeue(&self, ops: Vec<(ClientId, Ask)>) {
        let mut c = self.shared.lock();
        for op in ops.into_iter().rev() {
            c.ops.push_front(op);
        }
    }

    /// One question, as a call: runs its script and sends the answer.
    fn ask(&mut self, s: &Session, client: ClientId, ask: Ask) -> Call {
        let epoch = match ask {
            Ask::Join { .. } | Ask::Publish { .. } => self.next_epoch(),
            _ => String::new(),
        };
        let job = Job {
            scripts: self.scripts.clone(),
            conn: s.conn.clone(),
            config: self.config.clone(),
            node: self.node.clone(),
            mid: wire::member_id(&self.node, client),
            epoch,
        };
        let shared = self.shared.clone();
        let notices = self.notices.clone();
        Box::pin(async move {
            let (answer, outcome) = match within(CALL_TIMEOUT, job.run(ask)).await {
                Some(Ok(answer)) => (
                    answer,
                    Outcome {
                        lost: false,
                        failed: None,
                    },
                ),
                Some(Err(e)) => (Answer::Unavailable, failure(&e)),
                None => (Answer::Unavailable, timeout()),
            };
            shared.done(client);
            let _ = notices.send(Notice::Answer { client, answer }).await;
            outcome
        })
    }

    /// A batch of departures, as a call. If it fails they are kept for the next connection.
    fn byes(&self, s: &Session, byes: Vec<(ClientId, LeaveReason)>) -> Call {
        let mut conn = s.conn.clone();
        let scripts = self.scripts.clone();
        let shared = self.shared.clone();
        let mut args = vec![self.config.default_room.clone()];
        for &(client, reason) in &byes {
            args.push(wire::member_id(&self.node, client));
            args.push(reason.name().to_string());
        }
        Box::pin(async move {
            let mut call = scripts.bye.prepare_invoke();
            for arg in args {
                call.arg(arg);
            }
            let outcome = match within(CALL_TIMEOUT, call.invoke_async::<Value>(&mut conn)).await {
                Some(Ok(_)) => {
                    return Outcome {
                        lost: false,
                        failed: None,
                    };
                }
                Some(Err(e)) => failure(&e),
                None => timeout(),
            };
            // Never dropped: retried after reconnecting.
            shared.update(|c| c.byes.extend(byes));
            Outcome {
                lost: true,
                ..outcome
            }
        })
    }

    /// Renews the heartbeat, checks the echo, reaps lost nodes, refreshes the rooms gauge.
    /// False if the connection is to be taken for lost.
    async fn beat(&mut self, s: &mut Session) -> bool {
        self.log_failures();
        let ttl = self.config.redis_heartbeat * HEARTBEATS_TO_LIVE;
        if s.link.silent_for() > ttl {
            log::warn!(
                "redis: this node's heartbeat did not come back through pub/sub within {ttl:?}; reconnecting"
            );
            return false;
        }
        let Some(beat) = self.heartbeat(s).await else {
            return false;
        };
        if !beat.alive_before || self.life.as_deref() != Some(&beat.life) {
            // Other nodes may have reaped this one while it could not renew its heartbeat
            // (frozen, or cut off with the connection still open), or Redis lost its data:
            // a new session finds out which members survived.
            log::warn!("redis: this node's heartbeat had expired; resyncing");
            return false;
        }
        // Right after connecting, other nodes get a whole time to live to renew theirs.
        if s.since.elapsed() < ttl {
            return true;
        }
        loop {
            let mut reap = self.scripts.reap.prepare_invoke();
            reap.arg(&*self.node)
                .arg(&self.config.default_room)
                .arg(BATCH);
            match within(CALL_TIMEOUT, reap.invoke_async::<u64>(&mut s.conn)).await {
                Some(Ok(n)) => {
                    if n > 0 {
                        log::warn!("redis: removed {n} members of lost nodes");
                    }
                    if n < BATCH as u64 {
                        return true;
                    }
                }
                Some(Err(e)) => {
                    log::warn!("redis: reaping lost nodes failed: {e}");
                    return false;
                }
                None => return false,
            }
        }
    }

    async fn heartbeat(&mut self, s: &mut Session) -> Option<Beat> {
        let every = self.config.redis_heartbeat;
        let ttl = every * HEARTBEATS_TO_LIVE;
        // The life id to use if Redis has none: unique to this call, not only to this node,
        // or a node that found Redis empty first, both before and after Redis lost its data,
        // would take the new data set for the one it knew (and its members for reaped ones).
        let life = self.next_epoch();
        let mut beat = self.scripts.heartbeat.prepare_invoke();
        beat.arg(&*self.node).arg(ttl.as_millis() as u64).arg(life);
        let call = beat.invoke_async::<Value>(&mut s.conn);
        let reply = match within(CALL_TIMEOUT.min(ttl), call).await {
            Some(Ok(v)) => items(v),
            Some(Err(e)) => {
                log::warn!("redis: heartbeat failed: {e}");
                return None;
            }
            None => {
                log::warn!(
                    "redis: no heartbeat reply within {:?}",
                    CALL_TIMEOUT.min(ttl)
                );
                return None;
            }
        };
        self.metrics.rooms.store(int(reply.get(2)), Relaxed);
        Some(Beat {
            alive_before: int(reply.first()) == 1,
            life: text(reply.get(1)),
        })
    }

    /// The node is shutting down: after the calls running now, its members leave with reason
    /// `shutdown`, in batches, and its heartbeat goes. Departures still queued are covered.
    async fn goodbye(&mut self, s: &mut Session) -> Ended {
        self.drain().await;
        loop {
            let mut goodbye = self.scripts.goodbye.prepare_invoke();
            goodbye
                .arg(&*self.node)
                .arg(&self.config.default_room)
                .arg(BATCH);
            match within(CALL_TIMEOUT, goodbye.invoke_async::<u64>(&mut s.conn)).await {
                Some(Ok(0)) => {
                    log::info!("redis: said goodbye");
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    log::warn!(
                        "redis: goodbye failed ({e}); others will take this node's members for lost"
                    );
                    break;
                }
                None => {
                    log::warn!(
                        "redis: goodbye timed out; others will take this node's members for lost"
                    );
                    break;
                }
            }
        }
        Ended::Shutdown
    }

    async fn subscribe(&mut self, s: &mut Session, channels: Vec<String>) -> bool {
        let done = within(CALL_TIMEOUT, s.conn.subscribe(channels)).await;
        settled(done, "subscribing")
    }

    async fn unsubscribe(&mut self, s: &mut Session, channels: Vec<String>) -> bool {
        let done = within(CALL_TIMEOUT, s.conn.unsubscribe(channels)).await;
        settled(done, "unsubscribing")
    }

    /// A fresh epoch for a room this node creates (or a life id for Redis's data set): unique
    /// to this node and call.
    fn next_epoch(&mut self) -> String {
        self.epochs += 1;
        format!("{}-{}", self.node, radix36(self.epochs.into()))
    }
}

/// The value of `name` in an `INFO` reply (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Work taken from the control state in one look.
struct Work {
    shutdown: bool,
    ops: Vec<(ClientId, Ask)>,
    byes: Vec<(ClientId, LeaveReason)>,
    unsubscribe: Vec<String>,
    /// Rooms whose channel showed a new epoch, to read again.
    stale: Vec<String>,
}

fn failure(e: &RedisError) -> Outcome {
    Outcome {
        lost: connection_error(e),
        failed: Some(e.to_string()),
    }
}

fn timeout() -> Outcome {
    Outcome {
        lost: true,
        failed: Some(format!("no reply within {CALL_TIMEOUT:?}")),
    }
}

/// Errors after which the connection cannot be trusted. A script refused by Redis (`BUSY`,
/// `OOM`, `READONLY`, ...) is not one: the call is answered `unavailable` and the next may
/// work.
fn connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Connects to Redis over RESP3 through `open` (the byte stream) and returns the connection
/// and its driver, which the caller polls (redis-rs would otherwise spawn it on a global
/// executor). `pushes` gets the pub/sub messages.
async fn connect(
    open: Connect,
    info: &ConnectionInfo,
    pushes: Pushes,
) -> RedisResult<(
    MultiplexedConnection,
    Pin<Box<dyn Future<Output = ()> + Send>>,
)> {
    let stream = open(info.addr().clone()).await?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(None)
        .set_push_sender(pushes);
    let (conn, driver) = MultiplexedConnection::new_with_config(&settings, stream, config).await?;
    Ok((conn, Box::pin(driver)))
}

/// Takes pub/sub messages from redis-rs's driver as they arrive and hands them to the hub
/// without waiting: a full notice channel means the hub is behind, so the connection is given
/// up (and the node catches up from history after reconnecting) rather than buffered.
struct Pushes {
    node: Arc<str>,
    node_channel: String,
    notices: Sender<Notice>,
    link: Arc<Link>,
    shared: Arc<Shared>,
}

impl Pushes {
    fn lose(&self, why: &str) {
        if !self.link.lost.swap(true, Relaxed) {
            log::warn!("redis: {why}; reconnecting");
            self.shared.wake.notify(1);
        }
    }

    /// The notice for a pub/sub message, if it is one for the hub.
    fn notice(&self, channel: &str, payload: &str) -> Option<Notice> {
        if channel == self.node_channel {
            return match wire::node_message(payload) {
                Some(wire::NodeMessage::Beat) => {
                    self.link.last_beat.store(self.link.now(), Relaxed);
                    None
                }
                Some(wire::NodeMessage::Direct(d)) => Some(Notice::Direct {
                    target: d.target,
                    from: d.from,
                    to: d.to,
                    text: d.text,
                    ts: d.ts,
                }),
                None => {
                    log::warn!("redis: malformed message on {channel}");
                    None
                }
            };
        }
        let room = channel.strip_prefix(ROOM_CHANNEL)?;
        // `EPOCH EV ...`: the epoch is the bridge's ([`Pushes::epoch_changed`]), the rest wire's.
        let event = payload.split_once(' ').map_or("", |(_, rest)| rest);
        match wire::room_event(room, event, &self.node) {
            Some(event) => Some(Notice::Room(event)),
            None => {
                log::warn!("redis: malformed event on {channel}");
                None
            }
        }
    }
}

impl AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message => {}
            PushKind::Disconnection => {
                self.lose("connection to Redis closed");
                return Ok(());
            }
            _ => return Ok(()),
        }
        if self.link.lost() {
            // Once one message is dropped, later ones must not overtake it: the resync after
            // reconnecting delivers them in order.
            return Err(SendError);
        }
        let [Value::BulkString(channel), Value::BulkString(payload)] = info.data.as_slice() else {
            return Ok(());
        };
        let (Ok(channel), Ok(payload)) =
            (std::str::from_utf8(channel), std::str::from_utf8(payload))
        else {
            return Ok(());
        };
        let Some(notice) = self.notice(channel, payload) else {
            return Ok(());
        };
        if let Notice::Room(event) = &notice
            && self.epoch_changed(&event.room, payload)
        {
            // Held until the bridge has read the room again ([`Bridge::reread`]).
            self.forward(Notice::Hold(event.room.clone()))?;
            self.shared.wake.notify(1);
        }
        self.forward(notice)
    }
}

impl Pushes {
    /// Whether a room event's epoch (the payload's first field) differs from the one this
    /// node last knew for the room: Redis lost the room or came back older, and this node
    /// has not read it since. The room is then queued to be read again.
    fn epoch_changed(&self, room: &str, payload: &str) -> bool {
        let epoch = payload.split_once(' ').map_or("", |(e, _)| e);
        let mut c = self.shared.lock();
        match c.epochs.get_mut(room) {
            Some(known) if known != epoch => {
                *known = epoch.to_string();
                c.stale.push(room.to_string());
                true
            }
            Some(_) => false,
            None => {
                c.epochs.insert(room.to_string(), epoch.to_string());
                false
            }
        }
    }

    fn forward(&self, notice: Notice) -> Result<(), SendError> {
        match self.notices.try_send(notice) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.lose("this node fell behind its rooms' events (notice channel full)");
                Err(SendError)
            }
            Err(TrySendError::Closed(_)) => {
                self.lose("the hub is gone");
                Err(SendError)
            }
        }
    }
}

fn node_channel(node: &str) -> String {
    format!("smolchat:node:{node}")
}

fn room_channel(room: &str) -> String {
    format!("{ROOM_CHANNEL}{room}")
}

/// A node id: time since the epoch in base 36, the process id and a count of nodes started in
/// this process (tests run several). Never contains `.`, `-` or a space.
fn node_id() -> String {
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let n = STARTED.fetch_add(1, Relaxed);
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    format!("{}{}x{n}", radix36(micros), std::process::id())
}

/// Whether a (un)subscription, bounded by [`CALL_TIMEOUT`], went through; says why not.
fn settled(done: Option<redis::RedisResult<()>>, what: &str) -> bool {
    match done {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            log::warn!("redis: {what} failed: {e}");
            false
        }
        None => {
            log::warn!("redis: {what} took more than {CALL_TIMEOUT:?}");
            false
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::RoomEvent;

    fn pushes(capacity: usize) -> (Pushes, async_channel::Receiver<Notice>) {
        let (tx, rx) = async_channel::bounded(capacity);
        let node: Arc<str> = "n1x0".into();
        let p = Pushes {
            node_channel: node_channel(&node),
            node,
            notices: tx,
            link: Arc::new(Link::new()),
            shared: Arc::new(Shared::default()),
        };
        (p, rx)
    }

    fn message(channel: &str, payload: &str) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(channel.as_bytes().to_vec()),
                Value::BulkString(payload.as_bytes().to_vec()),
            ],
        }
    }

    #[test]
    fn pushes_become_notices_and_a_full_channel_loses_the_link() {
        let (p, rx) = pushes(2);
        p.send(message(
            "smolchat:room:dev",
            "e1 1 m 1 5 n1x0.0.1 ada hi there",
        ))
        .unwrap();
        p.send(message("smolchat:node:n1x0", "beat")).unwrap();
        p.send(message("smolchat:node:n1x0", "0.1 5 bob ada psst"))
            .unwrap();
        match rx.try_recv().unwrap() {
            Notice::Room(RoomEvent {
                room,
                ev: 1,
                subject,
                ..
            }) => {
                assert_eq!(room, "dev");
                assert_eq!(subject, Some(ClientId { key: 0, serial: 1 }));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(rx.try_recv().unwrap(), Notice::Direct { ref text, .. } if text == "psst")
        );
        assert!(
            rx.try_recv().is_err(),
            "the beat is the bridge's, not the hub's"
        );
        assert!(!p.link.lost());
        // Two fit; the third finds the channel full: the link is lost, and nothing after it
        // overtakes the dropped event.
        for ev in 2..=4 {
            let _ = p.send(message(
                "smolchat:room:dev",
                &format!("e1 {ev} j 2 x.1.1 bob"),
            ));
        }
        assert!(p.link.lost());
        rx.try_recv().unwrap();
        rx.try_recv().unwrap();
        assert!(
            p.send(message("smolchat:room:dev", "e1 5 j 2 x.1.1 bob"))
                .is_err()
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_event_of_another_epoch_holds_the_room_and_queues_it_to_be_read_again() {
        let (p, rx) = pushes(10);
        p.send(message("smolchat:room:dev", "e1 1 j 1 x.1.1 bob"))
            .unwrap();
        assert!(matches!(rx.try_recv().unwrap(), Notice::Room(_)));
        // Redis lost the room and made it again: the next event shows a new epoch.
        p.send(message("smolchat:room:dev", "e2 1 m 1 5 x.1.1 bob hi"))
            .unwrap();
        assert!(matches!(rx.try_recv().unwrap(), Notice::Hold(ref r) if r == "dev"));
        assert!(
            matches!(rx.try_recv().unwrap(), Notice::Room(_)),
            "held by the hub"
        );
        assert_eq!(p.shared.lock().stale, ["dev"]);
        // Later events of the new epoch are plain events.
        p.send(message("smolchat:room:dev", "e2 2 m 2 5 x.1.1 bob again"))
            .unwrap();
        assert!(matches!(rx.try_recv().unwrap(), Notice::Room(_)));
        assert!(rx.try_recv().is_err());
        assert_eq!(p.shared.lock().stale.len(), 1);
    }

    #[test]
    fn a_disconnection_loses_the_link() {
        let (p, _rx) = pushes(2);
        p.send(PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        })
        .unwrap();
        assert!(p.link.lost());
    }

    fn client(key: usize) -> ClientId {
        ClientId { key, serial: 1 }
    }

    #[test]
    fn a_departure_waits_for_its_clients_call_and_unused_rooms_are_left() {
        let shared = Arc::new(Shared::default());
        let (notices, _rx) = async_channel::bounded(8);
        let config = Arc::new(Config::default());
        // Never connects: this test only takes work from the control state.
        fn unreachable(
            _: redis::ConnectionAddr,
        ) -> Pin<Box<dyn Future<Output = RedisResult<super::super::RedisStream>> + Send>> {
            Box::pin(async { Err(std::io::Error::other("no Redis in this test").into()) })
        }
        let bridge = Bridge::new(config, Arc::default(), unreachable, shared.clone(), notices);
        {
            let mut c = shared.lock();
            c.busy.insert(client(1), 1);
            c.byes.push((client(1), LeaveReason::Disconnected));
            c.byes.push((client(2), LeaveReason::Left));
            c.wanted.insert("dev".into());
            c.dropped
                .extend(["dev".to_string(), "old".into(), "never".into()]);
        }
        let subscribed: HashSet<String> = ["dev", "old"].map(String::from).into();
        let work = bridge.take(&subscribed);
        assert_eq!(work.byes.len(), 1, "client 1's call is still running");
        assert_eq!(work.byes[0].0, client(2));
        assert_eq!(
            work.unsubscribe,
            ["old"],
            "dev is wanted again; never was subscribed"
        );
        shared.done(client(1));
        let work = bridge.take(&subscribed);
        assert_eq!(work.byes.len(), 1);
        assert_eq!(work.byes[0].0, client(1));
        assert!(work.unsubscribe.is_empty());
        assert!(!work.shutdown);
    }

    #[test]
    fn node_ids_hold_no_separator() {
        assert!(!node_id().contains(['.', ' ', '-']));
    }
}
