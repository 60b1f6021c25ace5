//! The hub: the chat's rules, and the single owner of this node's clients, run as one future.
//!
//! Sessions talk to the hub only through [`Command`]s sent to its bounded inbox; the hub talks
//! back only by putting [`Outgoing`] items into each client's own bounded queue with
//! `try_send`. It never awaits on a client: a client whose queue is full is a slow consumer and
//! is disconnected on the spot, so one stalled reader can never delay anybody else.
//!
//! What all nodes of a chat must agree on (nicks, membership, message ids, history, the rooms
//! that exist) the hub asks of its [`Authority`] (see [`crate::authority`]): in memory on a
//! single node, which answers at once, or Redis, which answers later through [`Hub::notice`].
//! Every rule lives here once, for both: what a command may do, the order of a client's
//! answers, who hears of which room event, presence above `--presence-limit`, replay and
//! recovery, every error and its text. A client whose question is not answered yet is *busy*:
//! its later frames wait, in order, so the answer to one command always arrives before the
//! answer to the next.
//!
//! Room events come from the authority: a message already encoded by whoever gave it its id,
//! joins, leaves and renames as values encoded here, once per event, into a shared [`Frame`]
//! for every local member.
//!
//! The hub's files: this one (clients, commands in and to their unit, deliveries to the
//! clients' queues, room events included, closes, shutdown, the future); `commands.rs` and
//! `commands/*.rs` (a client's commands, one unit per command: its fields, its step here,
//! its question to the authority and its reply); `late.rs` (the adapter for an authority that
//! answers later: busy clients, their waiting commands, answers held until their message
//! comes back, the room events it sends); `audience.rs` (each room's local members, and when
//! which of them hear its events); raw mode is `raw.rs`, and the HTTP API's calls are
//! `api.rs`.
//!
//! A `say` on a single node, for example: the session's reader sends the frame's JSON shape
//! ([`Wire`]), [`run`] receives it, [`Hub::handle`] hands it to its unit, `Hub::say`, which
//! checks its fields and asks with `Hub::ask`; the authority answers with the message's event,
//! and `Hub::fan_out` puts it into every member's queue.
//!
//! A client that proved who it is with a token (a [`User`]) gets its name from the token; it
//! may not rename, and only joins the rooms its token allows. That it shares its name with its
//! other connections, and is one member of a room however many of its connections are in it,
//! is the authority's business: membership is what nodes agree on.
//!
//! [`Hub`] is a plain state machine (commands in, events out, no I/O, no executor, no timer),
//! which is why its tests below need no sockets: the clustered paths are tested against a fake
//! authority that answers late, out of order, or never. [`run`] is the few lines that turn it
//! into a future: receive a command or notice, handle it, repeat.

use std::collections::HashMap;
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use slab::Slab;

use crate::access::Access;
use crate::authority::local::Local;
use crate::authority::{Authority, Notice, RoomEvent, What};
pub use crate::client::{Address, ClientId, User};
use crate::config::{Config, Protocol};
use crate::metrics::Metrics;
use crate::protocol::{Error, Frame, LeaveReason, Wire};
use crate::queue::{self, TrySendError, Weigh};

#[cfg(feature = "api")]
mod api;
mod audience;
mod commands;
mod late;
mod raw;

#[cfg(feature = "api")]
pub use api::{ApiCall, ApiReply};

use audience::Audience;
pub use audience::MAX_HELD_EVENTS;
use late::Busy;
pub use late::MAX_WAITING;

/// What the hub puts into a client's queue for its writer.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An encoded event to write as a text frame (in raw mode, a text frame as received).
    Event(Frame),
    /// Raw mode: a binary frame as received.
    Binary(async_tungstenite::tungstenite::Bytes),
    /// Close the connection with this code and reason, then stop.
    Close(u16, &'static str),
}

impl Outgoing {
    /// The same frame in a buffer of its own. A frame tungstenite hands over shares its read
    /// buffer with the bytes read after it; one the hub hands to every member's queue must not
    /// pin that buffer (a small frame could keep a large one, out of `--queue-bytes`' sight).
    pub fn unshared(self) -> Outgoing {
        match self {
            Outgoing::Event(text) => Outgoing::Event(text.as_str().to_owned().into()),
            Outgoing::Binary(bytes) => Outgoing::Binary(bytes.to_vec().into()),
            close => close,
        }
    }
}

impl Weigh for Outgoing {
    fn bytes(&self) -> usize {
        match self {
            Outgoing::Event(frame) => frame.len(),
            Outgoing::Binary(bytes) => bytes.len(),
            Outgoing::Close(..) => 0,
        }
    }
}

/// A request to the hub from a session (or from the server, for shutdown).
#[derive(Debug)]
pub enum Command {
    /// A new client: register its queue and reply with its id (its `welcome` follows once the
    /// authority has given it a nick). In raw mode it joins `group` (`None`: the default room)
    /// and is sent nothing, or is [`Rejected`]. Sent before the upgrade's `101`, so that a
    /// raw client whose handshake completed hears every frame sent after it.
    Connect {
        queue: queue::Sender<Outgoing>,
        reply: Sender<Result<ClientId, Rejected>>,
        address: Address,
        group: Option<String>,
        /// Who the client proved to be with a token; `None`: a guest.
        user: Option<User>,
    },
    /// A call of the HTTP API (`/api/`, feature `api`), answered on `reply`.
    #[cfg(feature = "api")]
    Api {
        call: ApiCall,
        reply: Sender<ApiReply>,
    },
    /// A text frame from a v1 client, its JSON shape read by the session's reader
    /// ([`Wire::read`]): a command object, or plain text for the client's current room. The
    /// unit its `type` names checks its fields, so the rules of protocol v1 are in the hub.
    /// Boxed: the inbox's slots stay as small as the other commands need.
    Request { client: ClientId, wire: Box<Wire> },
    /// Raw mode: a data frame from a client, for every client of its group.
    Publish { client: ClientId, item: Outgoing },
    /// A refusal the session found itself (for example the rate limit), to be queued in order
    /// with the client's other events.
    Refuse { client: ClientId, error: Error },
    /// The client is gone, or is being closed by its session for `reason`.
    Disconnect {
        client: ClientId,
        reason: LeaveReason,
    },
    /// Close every client with 1001 and accept no new ones.
    Shutdown,
}

/// Why the hub would not take a raw-mode connection. It is answered before the upgrade, with
/// an HTTP status and this text (a raw client reads no JSON): 403, 429 or 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The token's `rooms` claim does not allow the group.
    Forbidden(String),
    /// The user has `--max-connections-per-user` connections already.
    UserLimit(String),
    /// The group cannot be created (`--max-rooms`, `--max-rooms-per-address`), or the
    /// backend cannot take the client now.
    Busy(String),
}

/// Clients registered whose handshake then failed (the `101` could not be written, or the
/// deadline passed) and whose `Disconnect` could not be queued because the inbox was full.
/// The hub forgets them before its next command, so none outlives its connection: a full
/// inbox means the hub runs again soon. Shared between the hub and its handles.
#[derive(Debug, Default)]
pub struct Orphans {
    any: std::sync::atomic::AtomicBool,
    clients: std::sync::Mutex<Vec<ClientId>>,
}

impl Orphans {
    /// Leaves `client` for the hub to forget.
    pub fn add(&self, client: ClientId) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.push(client);
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The clients left, if any (one atomic load when there are none: it runs before every
    /// command).
    fn take(&self) -> Vec<ClientId> {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        // A plain load first: no read-modify-write on the hub's path while there are none.
        if !self.any.load(Relaxed) || !self.any.swap(false, Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.clients.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Close code and reason sent to a slow consumer.
pub const SLOW_CONSUMER_CLOSE: (u16, &str) = (1013, "slow consumer");
/// Close code and reason sent to everyone at shutdown.
pub const SHUTDOWN_CLOSE: (u16, &str) = (1001, "server shutting down");
/// Close code and reason for a client the authority cannot register (Redis is down).
pub const UNAVAILABLE_CLOSE: (u16, &str) = (1011, "chat backend unavailable");
/// Close code and reason for a user's connection beyond `--max-connections-per-user` (after
/// a `forbidden` error that says so). 4000-4999 are the application's own codes.
pub const USER_LIMIT_CLOSE: (u16, &str) = (4002, "too many connections for this user");
/// Close code and reason for a client the authority no longer knows (its node was taken for
/// lost while cut off from Redis): it must connect again, and recover with its cursor.
pub const LOST_CLOSE: (u16, &str) = (1012, "session lost by the chat backend; reconnect");

struct Client {
    queue: queue::Sender<Outgoing>,
    serial: u64,
    address: Address,
    /// Empty until the authority registered the client (and always, in raw mode).
    nick: String,
    /// Rooms in join order; the last one is the "current" room for plain-text frames.
    rooms: Vec<String>,
    /// It proved with a token that it is user `nick`.
    user: bool,
    /// The rooms it may enter and see (its token's `rooms` claim).
    access: Access,
}

/// This node's clients, and the rules of the chat.
pub struct Hub {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    server: String,
    authority: Box<dyn Authority>,
    clients: Slab<Client>,
    /// Rooms with local members, or joins or senders on the way, by name.
    audiences: HashMap<String, Audience>,
    busy: HashMap<usize, Busy>,
    /// API calls waiting for the authority, by their slot among the clients (see `api.rs`).
    #[cfg(feature = "api")]
    api_calls: HashMap<usize, Sender<ApiReply>>,
    /// Room events to deliver ([`Hub::fan_out`]): the authority's, produced while it
    /// answered, one from a room's Redis channel, or those a join catches up on (reused).
    events: Vec<RoomEvent>,
    /// The last rename delivered (its tag) and the clients that got it: a rename is announced
    /// in each room of the renamed client, and a client sharing several of them hears it once.
    last_rename: (u64, Vec<usize>),
    next_serial: u64,
    /// Clients whose queue was found full while delivering, to disconnect after the command.
    slow: Backlog,
    orphans: Arc<Orphans>,
    shutting_down: bool,
}

impl Hub {
    /// A single node's hub: the authority is in memory.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let local = Local::new(config.clone(), metrics.clone());
        Hub::with_authority(config, metrics, Box::new(local))
    }

    /// A hub that asks `authority` what all nodes must agree on.
    pub fn with_authority(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        authority: Box<dyn Authority>,
    ) -> Self {
        Hub {
            config,
            metrics,
            server: format!("smolchat/{}", env!("CARGO_PKG_VERSION")),
            authority,
            clients: Slab::new(),
            audiences: HashMap::new(),
            busy: HashMap::new(),
            #[cfg(feature = "api")]
            api_calls: HashMap::new(),
            events: Vec::new(),
            last_rename: (0, Vec::new()),
            next_serial: 1,
            slow: Backlog::default(),
            orphans: Arc::default(),
            shutting_down: false,
        }
    }

    /// Where handles leave clients whose handshake failed after registration.
    pub fn orphans(&self) -> Arc<Orphans> {
        self.orphans.clone()
    }

    /// Handles one command. Everything the command causes (and the authority answers at once)
    /// is queued before this returns. A client's frame is read and started by its unit
    /// (`commands/`);
    /// a client that waits for a late answer has its commands wait their turn (`late.rs`),
    /// which hands them back here when it comes.
    pub fn handle(&mut self, command: Command) {
        for client in self.orphans.take() {
            if let Some(key) = self.key(client) {
                self.remove(key, LeaveReason::Disconnected);
            }
        }
        match command {
            Command::Connect {
                queue,
                reply,
                address,
                group,
                user,
            } => self.admit(queue, reply, address, group, user),
            Command::Request { client, wire } => match self.key(client) {
                // Its client waits for a late answer: the command waits its turn.
                Some(key) if self.busy.contains_key(&key) => {
                    self.queue_behind(key, Command::Request { client, wire });
                }
                // The unit its `type` names checks its fields and starts it, or refuses it
                // with the error the client is sent. Plain text has no type: it is a `say`.
                Some(key) => {
                    let started = commands::unit(&wire).and_then(|unit| unit(self, key, *wire));
                    if let Err(error) = started {
                        self.send_error(key, error);
                    }
                }
                None => {}
            },
            Command::Refuse { client, error } => match self.key(client) {
                Some(key) if self.busy.contains_key(&key) => {
                    self.queue_behind(key, Command::Refuse { client, error });
                }
                Some(key) => self.send_error(key, error),
                None => {}
            },
            Command::Publish { client, item } => {
                if let Some(key) = self.key(client) {
                    self.publish(key, item);
                }
            }
            Command::Disconnect { client, reason } => {
                if let Some(key) = self.key(client) {
                    self.remove(key, reason);
                }
            }
            #[cfg(feature = "api")]
            Command::Api { call, reply } => self.api(call, reply),
            Command::Shutdown => self.shutdown(),
        }
        self.drop_slow_consumers();
    }

    /// A new connection, unless the hub is shutting down: registered (v1), or put in its
    /// group (raw), and answered on `reply`.
    fn admit(
        &mut self,
        queue: queue::Sender<Outgoing>,
        reply: Sender<Result<ClientId, Rejected>>,
        address: Address,
        group: Option<String>,
        user: Option<User>,
    ) {
        if self.shutting_down {
            return;
        }
        let admitted = match self.config.protocol {
            Protocol::V1 => Ok(self.connect(queue, address, user)),
            Protocol::Raw => self.connect_raw(queue, address, group, user),
        };
        // The handshake waits on `reply`. If it gave up meanwhile (its deadline), nobody
        // will ever send this client's `Disconnect`: forget it now.
        if let Err(unsent) = reply.try_send(admitted)
            && let Ok(client) = unsent.into_inner()
            && let Some(key) = self.key(client)
        {
            self.remove(key, LeaveReason::Disconnected);
        }
    }

    /// Handles what an authority that answers later sends back.
    pub fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Answer { client, answer } => self.late_answer(client, answer),
            #[cfg(feature = "store")]
            Notice::Stored(report) => {
                // The local store made reservations durable: the messages that waited for
                // them are said now, their events delivered before the answers.
                let answers = self.authority.stored(report, &mut self.events);
                self.fan_out(None);
                for (client, answer) in answers {
                    self.stored_answer(client, answer);
                }
            }
            Notice::Room(event) => self.room_event(event),
            Notice::Direct {
                target,
                from,
                to,
                text,
                ts,
            } => self.direct_from_elsewhere(target, (&from, &to), &text, ts),
            Notice::Resyncing => self.resyncing(),
            Notice::Hold(room) => self.hold(&room),
            Notice::Resync {
                room,
                epoch,
                last_id,
                ev,
                history,
                count,
                nicks,
            } => self.resync(&room, (epoch, last_id, ev), history, (count, nicks)),
            Notice::Lost(clients) => {
                for client in clients {
                    if let Some(key) = self.key(client) {
                        self.close(key, LOST_CLOSE, LeaveReason::Disconnected);
                    }
                }
            }
        }
        self.drop_slow_consumers();
    }

    /// Gives a new client its slot and serial, and `user`'s access.
    fn register(
        &mut self,
        queue: queue::Sender<Outgoing>,
        address: Address,
        user: Option<&User>,
    ) -> ClientId {
        let serial = self.next_serial;
        self.next_serial += 1;
        let key = self.clients.insert(Client {
            queue,
            serial,
            address,
            nick: String::new(),
            rooms: Vec::new(),
            user: user.is_some(),
            access: Access::of(user),
        });
        ClientId { key, serial }
    }

    /// The number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    fn key(&self, id: ClientId) -> Option<usize> {
        match self.clients.get(id.key) {
            Some(c) if c.serial == id.serial => Some(id.key),
            _ => None,
        }
    }

    fn id(&self, key: usize) -> ClientId {
        ClientId {
            key,
            serial: self.clients[key].serial,
        }
    }

    /// Closes client `key` with `close` (after what is queued, or instead of the oldest if the
    /// queue is full) and forgets it.
    fn close(&mut self, key: usize, close: (u16, &'static str), reason: LeaveReason) {
        let (code, why) = close;
        self.clients[key]
            .queue
            .send_last(Outgoing::Close(code, why));
        self.remove(key, reason);
    }

    /// Forgets a client: it leaves its rooms (announced with `reason`) and its nick is freed,
    /// and its queue sender is dropped, which ends its writer once the queue is drained.
    fn remove(&mut self, key: usize, reason: LeaveReason) {
        #[cfg(feature = "api")]
        if self.api_calls.contains_key(&key) {
            return self.api_gone(key);
        }
        let id = self.id(key);
        let busy = self.busy.remove(&key);
        self.authority.bye(id, reason, &mut self.events);
        self.fan_out(None);
        let mut rooms = self.clients.remove(key).rooms;
        if busy.is_some() {
            // A join on its way is known to its room's audience, not yet to the client's
            // rooms. (Only a client waiting for a late answer can have one.)
            let joining = self.audiences.iter().filter(|(_, a)| a.expects(key));
            rooms.extend(joining.map(|(room, _)| room.clone()));
        }
        for room in &rooms {
            if let Some(audience) = self.audiences.get_mut(room) {
                audience.forget(key);
            }
            self.drop_if_unused(room);
        }
    }

    /// Disconnects every client whose queue was found full, which may find more (their leave
    /// events go to others), so it repeats until none are left.
    fn drop_slow_consumers(&mut self) {
        while let Some(key) = self.slow.full.pop() {
            if !self.clients.contains(key) {
                continue; // found full twice, already gone
            }
            Metrics::add(&self.metrics.slow_consumers, 1);
            // The queue is full; `send_last` makes room for the close by dropping the oldest
            // event. The client is being disconnected anyway, and the close must come last.
            self.close(key, SLOW_CONSUMER_CLOSE, LeaveReason::SlowConsumer);
        }
    }

    /// Closes every client with 1001. Clients go one by one, so each remaining member of a
    /// room learns who left (reason `shutdown`) before its own close arrives.
    fn shutdown(&mut self) {
        self.shutting_down = true;
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key, SHUTDOWN_CLOSE, LeaveReason::Shutdown);
        }
        self.authority.shutdown();
    }

    fn send_error(&mut self, key: usize, error: Error) {
        self.send(key, &error.encode());
    }

    fn send(&mut self, key: usize, frame: &Frame) {
        deliver(&self.clients, &mut self.slow, &self.metrics, key, frame);
    }

    /// Delivers the room events in `self.events` (put there by the authority's answer, by a
    /// room's Redis channel, or by a join catching up) to the local members that should hear
    /// them, or to client `only`. Each is encoded once (a message comes encoded), and its one
    /// frame goes into every member's queue, shared by reference count: not to the subject of
    /// its own join, leave or rename, not to a member whose join already reflected it, to
    /// nobody above the presence limit, and a rename heard in several rooms only once.
    fn fan_out(&mut self, only: Option<usize>) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            // Above the presence limit, members see counts instead of every arrival; a leave
            // is announced only if the arrival was (the count before includes the leaver).
            if (event.count()).is_some_and(|n| n > self.config.presence_limit) {
                continue;
            }
            let subject = event.subject.and_then(|c| self.key(c));
            let Hub {
                audiences,
                clients,
                slow,
                metrics,
                last_rename,
                ..
            } = self;
            let Some(audience) = audiences.get_mut(&event.room) else {
                continue; // nobody here hears this room
            };
            audience.passed(event.ev);
            let tag = match event.what {
                What::Nick { tag, .. } => Some(tag),
                _ => None,
            };
            if let Some(tag) = tag
                && last_rename.0 != tag
            {
                *last_rename = (tag, Vec::new());
            }
            let frame = event.encode();
            let to = if only.is_some() {
                only.as_slice()
            } else {
                audience.members()
            };
            for &k in to {
                if Some(k) == subject && !matches!(event.what, What::Message { .. }) {
                    continue; // others hear of a join, leave or rename; the client itself not
                }
                if audience.reflects(k, event.ev) {
                    continue;
                }
                if tag.is_some() {
                    if last_rename.1.contains(&k) {
                        continue;
                    }
                    last_rename.1.push(k);
                }
                let sent = clients[k].queue.try_send(Outgoing::Event(frame.clone()));
                slow.note(k, sent, metrics);
            }
        }
        self.events = events; // keep the capacity
    }
}

/// What deliveries learned about the clients' queues while the hub handled a command.
#[derive(Debug, Default)]
struct Backlog {
    /// Clients whose queue was full: slow consumers, disconnected after the command.
    full: Vec<usize>,
    /// Some queue is more than half full. Either that client is slow, or the writers as a
    /// whole are behind because the server is busy; in both cases the hub lets the writers
    /// run before it takes its next command ([`run`]), so that an overloaded server slows its
    /// senders down (they wait on the inbox) instead of disconnecting every client at once.
    congested: bool,
}

impl Backlog {
    /// Notes what `try_send` said of client `key`'s queue. A full queue marks a slow
    /// consumer; a closed one means the writer is gone and the session's `Disconnect` is on
    /// its way.
    fn note(&mut self, key: usize, sent: Result<bool, TrySendError>, metrics: &Metrics) {
        match sent {
            Ok(half_full) => {
                Metrics::add(&metrics.events_delivered, 1);
                self.congested |= half_full;
            }
            Err(TrySendError::Full) => self.full.push(key),
            Err(TrySendError::Closed) => {}
        }
    }
}

/// Queues `frame` for client `key` without waiting.
fn deliver(
    clients: &Slab<Client>,
    backlog: &mut Backlog,
    metrics: &Metrics,
    key: usize,
    frame: &Frame,
) {
    let sent = clients[key].queue.try_send(Outgoing::Event(frame.clone()));
    backlog.note(key, sent, metrics);
}

/// Runs the hub until every sender of `inbox` is gone, with an authority that answers at once.
pub async fn run(mut hub: Hub, inbox: Receiver<Command>) {
    while let Ok(command) = inbox.recv().await {
        hub.handle(command);
        if std::mem::take(&mut hub.slow.congested) {
            futures_lite::future::yield_now().await;
        }
    }
}

/// Runs the hub until every sender of `inbox` is gone, with an authority that answers later:
/// its answers and room events arrive on `notices`. (A separate function from [`run`], so
/// that a build without such an authority carries none of this.)
pub async fn run_with_notices(mut hub: Hub, inbox: Receiver<Command>, notices: Receiver<Notice>) {
    use futures_lite::FutureExt;
    enum Next {
        Command(Command),
        Notice(Notice),
        Stop,
    }
    let mut budget = BUDGET;
    loop {
        let command = async { inbox.recv().await.map_or(Next::Stop, Next::Command) };
        // A closed notice channel (the bridge stopped) leaves only the inbox.
        let notice = async {
            match notices.recv().await {
                Ok(notice) => Next::Notice(notice),
                Err(_) => std::future::pending().await,
            }
        };
        // Either may be ready all the time under load: neither may starve the other (answers
        // and room events unblock clients; commands are what they send).
        match command.race(notice).await {
            Next::Command(command) => hub.handle(command),
            Next::Notice(notice) => hub.notice(notice),
            Next::Stop => return,
        }
        // The authority's bridge runs in the same task as this loop (zipped by `Chat::new`); a
        // loop that never waits, its inbox never empty, would starve the bridge and the
        // connection it drives.
        budget -= 1;
        if std::mem::take(&mut hub.slow.congested) || budget == 0 {
            budget = BUDGET;
            futures_lite::future::yield_now().await;
        }
    }
}

/// Commands and notices the hub handles in a row, with an authority that answers later, before
/// it lets the other futures of its task run.
const BUDGET: u32 = 64;

#[cfg(test)]
mod late_answers;
#[cfg(test)]
mod tests;
