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
//! Room events (messages, joins, leaves, renames) come from the authority as values and are
//! encoded here, once per event, into a shared [`Frame`] for every local member.
//!
//! [`Hub`] is a plain state machine (commands in, events out, no I/O, no executor, no timer),
//! which is why its tests below need no sockets: the clustered paths are tested against a fake
//! authority that answers late, out of order, or never. [`run`] is the few lines that turn it
//! into a future: receive a command or notice, handle it, repeat.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender};
use slab::Slab;

use crate::authority::local::Local;
use crate::authority::{Answer, Ask, Authority, Joined, Member, Notice, RoomEvent, What};
pub use crate::client::{Address, ClientId};
use crate::config::{Config, Protocol};
use crate::metrics::Metrics;
use crate::protocol::{Error, ErrorCode, Event, Frame, LeaveReason, Request, RoomSummary};
use crate::queue::{self, TrySendError, Weigh};

mod raw;

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
    /// and is sent nothing.
    Connect {
        queue: queue::Sender<Outgoing>,
        reply: Sender<ClientId>,
        address: Address,
        group: Option<String>,
    },
    /// A parsed command from a client.
    Request { client: ClientId, request: Request },
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

/// Close code and reason sent to a slow consumer.
pub const SLOW_CONSUMER_CLOSE: (u16, &str) = (1013, "slow consumer");
/// Close code and reason sent to everyone at shutdown.
pub const SHUTDOWN_CLOSE: (u16, &str) = (1001, "server shutting down");
/// Close code and reason for a client the authority cannot register (Redis is down).
pub const UNAVAILABLE_CLOSE: (u16, &str) = (1011, "chat backend unavailable");
/// Close code and reason for a client the authority no longer knows (its node was taken for
/// lost while cut off from Redis): it must connect again, and recover with its cursor.
pub const LOST_CLOSE: (u16, &str) = (1012, "session lost by the chat backend; reconnect");

/// Frames a client may have waiting while the authority has not answered its command yet.
/// Beyond it, further frames are dropped, with one `rate_limited` error in their place.
pub const MAX_WAITING: usize = 64;
/// Room events kept for one room while its state is fetched again after a reconnect, or for
/// one join on the way; beyond it the oldest go (messages are still recovered from history).
pub const MAX_HELD_EVENTS: usize = 1024;
/// Largest `offset` passed on to the authority: every page beyond is empty anyway, and Redis'
/// Lua would take a larger number for a float.
const MAX_OFFSET: usize = u32::MAX as usize;

struct Client {
    queue: queue::Sender<Outgoing>,
    serial: u64,
    address: Address,
    /// Empty until the authority registered the client (and always, in raw mode).
    nick: String,
    /// Rooms in join order; the last one is the "current" room for plain-text frames.
    rooms: Vec<String>,
}

/// A client waiting for the authority: what it waits for, and its frames since.
struct Busy {
    waiting: Waiting,
    later: VecDeque<Result<Request, Error>>,
}

/// What a client waits for.
#[derive(Debug)]
enum Waiting {
    Register,
    Nick(String),
    Join {
        room: String,
        resync: bool,
    },
    Leave(String),
    /// The answer to a `say` in this room...
    Say(String),
    /// ...then the message's own event (see [`Audience::waiters`]).
    Echo(String),
    Direct {
        to: String,
        text: String,
        ts: u64,
    },
    Who(String, usize),
    Rooms(usize),
    /// The answer arrived and is being handled.
    Done,
}

/// The local side of a room: this node's clients that hear its events.
#[derive(Default)]
struct Audience {
    /// Local clients that get the room's live events, in join order.
    members: Vec<usize>,
    /// Members that joined at room event `ev`: they skip events up to it, which their join
    /// already reflected.
    fresh: Vec<(usize, u64)>,
    /// Joins on the way, with the events that arrived meanwhile.
    pending: Vec<(usize, VecDeque<RoomEvent>)>,
    epoch: String,
    /// The newest message id delivered here.
    last_id: u64,
    /// Senders waiting for their message (by id) to come back.
    waiters: Vec<(usize, u64)>,
    /// Events held back between a reconnect and the room's resync.
    held: Option<VecDeque<RoomEvent>>,
    /// Members that joined while the room was held, with the last message id their join
    /// replayed: the resync must not send them those again.
    floors: Vec<(usize, u64)>,
}

impl Audience {
    fn unused(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty() && self.waiters.is_empty()
    }
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
    /// Room events the authority produced while answering, to deliver (reused).
    events: Vec<RoomEvent>,
    /// The last rename delivered (its tag) and the clients that got it: a rename is announced
    /// in each room of the renamed client, and a client sharing several of them hears it once.
    last_rename: (u64, Vec<usize>),
    next_serial: u64,
    /// Clients whose queue was found full while delivering, to disconnect after the command.
    slow: Backlog,
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
            events: Vec::new(),
            last_rename: (0, Vec::new()),
            next_serial: 1,
            slow: Backlog::default(),
            shutting_down: false,
        }
    }

    /// Handles one command. Everything the command causes (and the authority answers at once)
    /// is queued before this returns.
    pub fn handle(&mut self, command: Command) {
        match command {
            Command::Connect {
                queue,
                reply,
                address,
                group,
            } => {
                if !self.shutting_down {
                    let id = match self.config.protocol {
                        Protocol::V1 => self.connect(queue, address),
                        Protocol::Raw => self.connect_raw(queue, address, group),
                    };
                    // The session waits on `reply`; if it already went away, its queue is
                    // closed and the next delivery (or its Disconnect) cleans up.
                    let _ = reply.try_send(id);
                }
            }
            Command::Request { client, request } => {
                if let Some(key) = self.key(client) {
                    self.submit(key, Ok(request));
                }
            }
            Command::Publish { client, item } => {
                if let Some(key) = self.key(client) {
                    self.publish(key, item);
                }
            }
            Command::Refuse { client, error } => {
                if let Some(key) = self.key(client) {
                    self.submit(key, Err(error));
                }
            }
            Command::Disconnect { client, reason } => {
                if let Some(key) = self.key(client) {
                    self.remove(key, reason);
                }
            }
            Command::Shutdown => self.shutdown(),
        }
        self.drop_slow_consumers();
    }

    /// Handles what an authority that answers later sends back.
    pub fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Answer { client, answer } => {
                if let Some(key) = self.key(client)
                    && let Some(busy) = self.busy.get_mut(&key)
                {
                    let waiting = std::mem::replace(&mut busy.waiting, Waiting::Done);
                    self.answered(key, waiting, answer);
                }
            }
            Notice::Room(event) => self.room_event(event),
            Notice::Direct {
                target,
                from,
                to,
                text,
                ts,
            } => {
                if let Some(key) = self.key(target) {
                    let frame = Event::Direct {
                        from: &from,
                        to: &to,
                        text: &text,
                        ts,
                    }
                    .encode();
                    self.send(key, &frame);
                }
            }
            Notice::Resyncing => self.resyncing(),
            Notice::Resync {
                room,
                epoch,
                last_id,
                ev,
                history,
            } => self.resync(&room, epoch, last_id, ev, history),
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

    /// Registers a client and asks the authority for its nick; its `welcome` and the join of
    /// the default room follow the answer.
    pub fn connect(&mut self, queue: queue::Sender<Outgoing>, address: Address) -> ClientId {
        let id = self.register(queue, address);
        let ask = Ask::Register {
            address,
            named: true,
        };
        self.ask(id.key, Waiting::Register, ask);
        id
    }

    /// Gives a new client its slot and serial.
    fn register(&mut self, queue: queue::Sender<Outgoing>, address: Address) -> ClientId {
        let serial = self.next_serial;
        self.next_serial += 1;
        let key = self.clients.insert(Client {
            queue,
            serial,
            address,
            nick: String::new(),
            rooms: Vec::new(),
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

    /// Starts `item` now, or after what the client is waiting for.
    fn submit(&mut self, key: usize, item: Result<Request, Error>) {
        let Some(busy) = self.busy.get_mut(&key) else {
            return self.start(key, item);
        };
        if busy.later.len() < MAX_WAITING {
            busy.later.push_back(item);
            return;
        }
        // Over the bound the frame is dropped; one refusal stands for a run of them.
        let refused = |i: &Result<Request, Error>| matches!(i, Err(e) if e.code == ErrorCode::RateLimited && e.message == WAITING_FULL);
        if !busy.later.back().is_some_and(refused) {
            let error = Error::new(ErrorCode::RateLimited, WAITING_FULL);
            busy.later.push_back(Err(error));
        }
    }

    fn start(&mut self, key: usize, item: Result<Request, Error>) {
        let result = item.and_then(|request| self.start_request(key, request));
        if let Err(error) = result {
            self.send_error(key, error);
        }
    }

    /// The client's wait is over: starts its waiting frames until one has to wait again.
    fn finish(&mut self, key: usize) {
        let Some(busy) = self.busy.remove(&key) else {
            return;
        };
        let mut later = busy.later;
        while let Some(item) = later.pop_front() {
            self.start(key, item);
            if !self.clients.contains(key) {
                return; // closed by what it started
            }
            if let Some(busy) = self.busy.get_mut(&key) {
                busy.later = later;
                return;
            }
        }
    }

    /// Asks the authority for client `key`, which waits for the answer. An answer given at once
    /// is handled at once, after the room events it caused.
    fn ask(&mut self, key: usize, waiting: Waiting, ask: Ask) {
        let client = self.id(key);
        let answer = self.authority.ask(client, ask, &mut self.events);
        self.deliver_events();
        match answer {
            Some(answer) => self.answered(key, waiting, answer),
            None => match self.busy.get_mut(&key) {
                Some(busy) => busy.waiting = waiting,
                None => {
                    let later = VecDeque::new();
                    self.busy.insert(key, Busy { waiting, later });
                }
            },
        }
    }

    fn start_request(&mut self, key: usize, request: Request) -> Result<(), Error> {
        match request {
            Request::Nick { nick } => self.ask(key, Waiting::Nick(nick.clone()), Ask::Nick(nick)),
            Request::Join { room, since, epoch } => self.start_join(key, room, since, epoch)?,
            Request::Leave { room } => {
                if !self.clients[key].rooms.contains(&room) {
                    return Err(not_member(&room));
                }
                self.ask(key, Waiting::Leave(room.clone()), Ask::Leave(room));
            }
            Request::Say { room, text } => {
                let room = self.say_target(key, room)?;
                Metrics::add(&self.metrics.messages_received, 1);
                let ask = Ask::Say {
                    room: room.clone(),
                    text,
                    ts: now_ms(),
                };
                self.ask(key, Waiting::Say(room), ask);
            }
            Request::Direct { to, text } => {
                Metrics::add(&self.metrics.messages_received, 1);
                let ts = now_ms();
                let ask = Ask::Direct {
                    to: to.clone(),
                    text: text.clone(),
                    ts,
                };
                self.ask(key, Waiting::Direct { to, text, ts }, ask);
            }
            Request::Who { room, offset } => {
                let offset = offset.min(MAX_OFFSET);
                let waiting = Waiting::Who(room.clone(), offset);
                self.ask(key, waiting, Ask::Who { room, offset });
            }
            Request::Rooms { offset } => {
                let offset = offset.min(MAX_OFFSET);
                self.ask(key, Waiting::Rooms(offset), Ask::Rooms { offset });
            }
        }
        Ok(())
    }

    fn start_join(
        &mut self,
        key: usize,
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), Error> {
        let resync = self.clients[key].rooms.contains(&room);
        let max = self.config.max_rooms_per_client;
        if !resync && self.clients[key].rooms.len() >= max {
            return Err(Error::new(
                ErrorCode::RoomLimit,
                format!("you are in {max} rooms, the most allowed; leave one first"),
            ));
        }
        let audience = self.audiences.entry(room.clone()).or_default();
        // A resync stops live events until the replay is out, like a join.
        audience.members.retain(|&k| k != key);
        audience.fresh.retain(|&(k, _)| k != key);
        audience.pending.push((key, VecDeque::new()));
        let waiting = Waiting::Join {
            room: room.clone(),
            resync,
        };
        self.ask(key, waiting, Ask::Join { room, since, epoch });
        Ok(())
    }

    fn answered(&mut self, key: usize, waiting: Waiting, answer: Answer) {
        match (waiting, answer) {
            (waiting, Answer::Unavailable) => self.fail(key, waiting),
            (_, Answer::Gone) => {
                self.close(key, LOST_CLOSE, LeaveReason::Disconnected);
                return;
            }
            (Waiting::Register, Answer::Registered(nick)) => {
                self.clients[key].nick = nick;
                let welcome = Event::Welcome {
                    nick: &self.clients[key].nick,
                    server: &self.server,
                    limits: self.config.limits(),
                }
                .encode();
                self.send(key, &welcome);
                let room = self.config.default_room.clone();
                if let Err(error) = self.start_join(key, room, None, None) {
                    self.send_error(key, error);
                }
            }
            (Waiting::Nick(nick), Answer::Renamed { old }) => {
                self.clients[key].nick = nick;
                let frame = Event::Nick {
                    old: &old,
                    nick: &self.clients[key].nick,
                }
                .encode();
                self.send(key, &frame);
            }
            (Waiting::Nick(nick), Answer::NickTaken) => {
                let error = Error::new(
                    ErrorCode::NickTaken,
                    format!("the nick {nick:?} is taken; choose another"),
                );
                self.send_error(key, error);
            }
            (Waiting::Join { room, .. }, Answer::Joined(joined)) => {
                self.joined(key, room, joined);
            }
            (Waiting::Join { room, resync }, Answer::Refused(error)) => {
                self.undo_join(key, &room, resync);
                self.send_error(key, error);
            }
            (Waiting::Leave(room), Answer::Left) => {
                self.clients[key].rooms.retain(|r| *r != room);
                if let Some(audience) = self.audiences.get_mut(&room) {
                    audience.members.retain(|&k| k != key);
                    audience.fresh.retain(|&(k, _)| k != key);
                }
                self.drop_if_unused(&room);
            }
            (Waiting::Leave(room) | Waiting::Say(room), Answer::NotMember) => {
                self.send_error(key, not_member(&room));
            }
            (Waiting::Say(room), Answer::Said { id }) => {
                if let Some(audience) = self.audiences.get_mut(&room)
                    && audience.last_id < id
                {
                    // Answered when the message comes back, so the sender sees it in the same
                    // place among the room's events as everybody else.
                    audience.waiters.push((key, id));
                    let busy = self.busy.entry(key).or_insert_with(|| Busy {
                        waiting: Waiting::Done,
                        later: VecDeque::new(),
                    });
                    busy.waiting = Waiting::Echo(room);
                }
            }
            (Waiting::Direct { text, ts, .. }, Answer::Direct { to, target }) => {
                let frame = Event::Direct {
                    from: &self.clients[key].nick,
                    to: &to,
                    text: &text,
                    ts,
                }
                .encode();
                if let Some(target) = target.and_then(|t| self.key(t))
                    && target != key
                {
                    self.send(target, &frame);
                }
                self.send(key, &frame);
            }
            (Waiting::Direct { to, .. }, Answer::UnknownRecipient) => {
                let error = Error::new(
                    ErrorCode::UnknownRecipient,
                    format!("nobody is called {to:?}; `who` lists a room's members"),
                );
                self.send_error(key, error);
            }
            (Waiting::Who(room, offset), Answer::Members { count, nicks }) => {
                let end = offset.saturating_add(nicks.len());
                let frame = Event::Members {
                    room: &room,
                    members: nicks.iter().map(String::as_str).collect(),
                    count,
                    next: (end < count).then_some(end),
                }
                .encode();
                self.send(key, &frame);
            }
            (Waiting::Rooms(offset), Answer::Rooms { count, page }) => {
                let rooms = page
                    .iter()
                    .map(|(name, members)| RoomSummary {
                        name,
                        members: *members,
                    })
                    .collect();
                self.send(key, &Event::rooms_page(rooms, count, offset));
            }
            (waiting, answer) => {
                log::warn!("hub: answer {answer:?} does not fit {waiting:?}");
                self.fail(key, waiting);
            }
        }
        // Unless the answer started another wait (the welcome starts the first join).
        if self
            .busy
            .get(&key)
            .is_some_and(|b| matches!(b.waiting, Waiting::Done))
        {
            self.finish(key);
        }
    }

    /// The authority could not do what `key` waits for: undo what was prepared, say so.
    fn fail(&mut self, key: usize, waiting: Waiting) {
        match waiting {
            Waiting::Register => {
                Metrics::add(&self.metrics.backend_unavailable, 1);
                return self.close(key, UNAVAILABLE_CLOSE, LeaveReason::Disconnected);
            }
            Waiting::Join { room, resync } => self.undo_join(key, &room, resync),
            _ => {}
        }
        Metrics::add(&self.metrics.backend_unavailable, 1);
        let error = Error::new(
            ErrorCode::Unavailable,
            "the chat backend is unavailable; nothing was done, try again shortly",
        );
        self.send_error(key, error);
    }

    /// A join that did not happen: the client is back where it was.
    fn undo_join(&mut self, key: usize, room: &str, resync: bool) {
        if let Some(audience) = self.audiences.get_mut(room) {
            audience.pending.retain(|(k, _)| *k != key);
            if resync {
                audience.members.push(key);
            }
        }
        self.drop_if_unused(room);
    }

    fn joined(&mut self, key: usize, room: String, joined: Joined) {
        let client = &mut self.clients[key];
        client.rooms.retain(|r| *r != room);
        client.rooms.push(room.clone());
        let frame = Event::Room {
            room: &room,
            epoch: &joined.epoch,
            members: joined.nicks.iter().map(String::as_str).collect(),
            count: joined.count,
            last_id: joined.last_id,
            complete: joined.complete,
        }
        .encode();
        self.send(key, &frame);
        for message in &joined.replay {
            self.send(key, message);
        }
        let audience = self.audiences.get_mut(&room).expect("pending join");
        let i = audience
            .pending
            .iter()
            .position(|(k, _)| *k == key)
            .expect("pending join");
        let (_, meanwhile) = audience.pending.swap_remove(i);
        if audience.members.is_empty() && audience.waiters.is_empty() {
            audience.last_id = joined.last_id;
        }
        audience.epoch = joined.epoch;
        audience.members.push(key);
        audience.fresh.push((key, joined.ev));
        if audience.held.is_some() {
            audience.floors.push((key, joined.last_id));
        }
        for event in meanwhile {
            if event.ev > joined.ev {
                self.fan_out(&event, Some(key));
            }
        }
    }

    /// Delivers the room events the authority produced while answering.
    fn deliver_events(&mut self) {
        while !self.events.is_empty() {
            let mut events = std::mem::take(&mut self.events);
            for event in events.drain(..) {
                self.room_event(event);
            }
            if self.events.is_empty() {
                self.events = events; // keep the capacity
            }
        }
    }

    /// A room event: delivered to the room's local members now, or kept while the room is held
    /// (a resync is on the way) and for the joins on the way.
    fn room_event(&mut self, event: RoomEvent) {
        if self.config.protocol == Protocol::Raw {
            return; // raw clients hear nothing but their group's frames
        }
        let Some(audience) = self.audiences.get_mut(&event.room) else {
            return; // nobody here listens (any more)
        };
        if let Some(held) = &mut audience.held {
            keep(held, event);
            return;
        }
        for (_, meanwhile) in &mut audience.pending {
            keep(meanwhile, event.clone());
        }
        let frame = self.fan_out(&event, None);
        if let (What::Message { id, .. }, Some(frame)) = (&event.what, frame) {
            self.authority.remember(&event.room, *id, &frame);
            self.message_back(&event.room, *id);
        }
    }

    /// Delivers `event` to the room's local members (or to `only`) that should get it.
    /// Returns the encoded frame, if the event is announced at all.
    fn fan_out(&mut self, event: &RoomEvent, only: Option<usize>) -> Option<Frame> {
        let limit = self.config.presence_limit;
        let (frame, tag) = match &event.what {
            What::Message { id, nick, text, ts } => {
                let frame = Event::Message {
                    room: &event.room,
                    id: *id,
                    from: nick,
                    text,
                    ts: *ts,
                };
                (frame.encode(), None)
            }
            // Above the presence limit, members see counts instead of every arrival; a leave
            // is announced only if the arrival was (the count before includes the leaver).
            What::Join { count, .. } | What::Leave { count, .. } | What::Nick { count, .. }
                if *count > limit =>
            {
                return None;
            }
            What::Join { nick, .. } => (
                Event::Join {
                    room: &event.room,
                    nick,
                }
                .encode(),
                None,
            ),
            What::Leave { nick, reason, .. } => (
                Event::Leave {
                    room: &event.room,
                    nick,
                    reason: *reason,
                }
                .encode(),
                None,
            ),
            What::Nick { old, nick, tag, .. } => (Event::Nick { old, nick }.encode(), Some(*tag)),
        };
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
            return Some(frame);
        };
        // Fresh members skip what their join already reflected; once an event is past a
        // member's join, every later one is too.
        audience.fresh.retain(|&(_, ev)| ev >= event.ev);
        if let Some(tag) = tag
            && last_rename.0 != tag
        {
            *last_rename = (tag, Vec::new());
        }
        let count = if only.is_some() {
            1
        } else {
            audience.members.len()
        };
        for i in 0..count {
            let k = only.unwrap_or_else(|| audience.members[i]);
            if Some(k) == subject && !matches!(event.what, What::Message { .. }) {
                continue; // others hear of a join, leave or rename; the client itself not
            }
            if audience
                .fresh
                .iter()
                .any(|&(f, ev)| f == k && ev >= event.ev)
            {
                continue;
            }
            if tag.is_some() {
                if last_rename.1.contains(&k) {
                    continue;
                }
                last_rename.1.push(k);
            }
            deliver(clients, slow, metrics, k, &frame);
        }
        Some(frame)
    }

    /// Message `id` of `room` was delivered here: its sender (and anyone waiting for an
    /// earlier one) is answered.
    fn message_back(&mut self, room: &str, id: u64) {
        let Some(audience) = self.audiences.get_mut(room) else {
            return;
        };
        audience.last_id = audience.last_id.max(id);
        if audience.waiters.is_empty() {
            return;
        }
        let last = audience.last_id;
        let mut done = Vec::new();
        audience.waiters.retain(|&(k, w)| {
            if w <= last {
                done.push(k);
            }
            w > last
        });
        for key in done {
            self.finish(key);
        }
        self.drop_if_unused(room);
    }

    /// Forgets a room nobody here uses any more, and tells the authority.
    fn drop_if_unused(&mut self, room: &str) {
        if self.audiences.get(room).is_some_and(Audience::unused) {
            self.audiences.remove(room);
            self.authority.unused(room);
        }
    }

    /// A new connection to the authority's store: hold room events until each room is
    /// resynced, and tell the authority who is here.
    fn resyncing(&mut self) {
        for audience in self.audiences.values_mut() {
            audience.held.get_or_insert_with(VecDeque::new);
        }
        let members = self
            .clients
            .iter()
            .filter(|(_, c)| !c.nick.is_empty())
            .map(|(key, c)| Member {
                client: ClientId {
                    key,
                    serial: c.serial,
                },
                address: c.address,
                nick: c.nick.clone(),
                rooms: c.rooms.clone(),
            })
            .collect();
        self.authority.restore(members);
    }

    /// A room's state after a reconnect: deliver what was said while this node was cut off
    /// (as far as the history still has it), then the events held back since.
    fn resync(&mut self, room: &str, epoch: String, last_id: u64, ev: u64, history: Vec<Frame>) {
        let Hub {
            audiences,
            clients,
            slow,
            metrics,
            ..
        } = self;
        let Some(audience) = audiences.get_mut(room) else {
            return;
        };
        let held = audience.held.take().unwrap_or_default();
        let floors = std::mem::take(&mut audience.floors);
        let mut lost_waiters = Vec::new();
        if audience.epoch == epoch || audience.epoch.is_empty() {
            let first = (last_id + 1).saturating_sub(history.len() as u64);
            if first > audience.last_id + 1 && !audience.epoch.is_empty() {
                log::warn!(
                    "room {room}: messages {}..{} were evicted before this node could deliver them",
                    audience.last_id + 1,
                    first - 1
                );
            }
            for (id, frame) in (first..).zip(&history) {
                if id <= audience.last_id {
                    continue;
                }
                for &k in &audience.members {
                    // A member that joined meanwhile had its join replay up to its floor.
                    let floor = floors.iter().find(|&&(f, _)| f == k).map(|&(_, l)| l);
                    if floor.is_none_or(|floor| id > floor) {
                        deliver(clients, slow, metrics, k, frame);
                    }
                }
            }
        } else {
            // The store lost the room's history: a new life. Senders still waiting for a
            // message of the old life will never see it.
            lost_waiters = audience.waiters.drain(..).map(|(k, _)| k).collect();
            audience.fresh.clear();
            audience.last_id = last_id;
        }
        audience.epoch = epoch;
        audience.last_id = audience.last_id.max(last_id);
        for key in lost_waiters {
            self.fail(key, Waiting::Done);
            self.finish(key);
        }
        self.message_back(room, last_id);
        for event in held {
            if event.ev > ev {
                self.room_event(event);
            }
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
        let id = self.id(key);
        let busy = self.busy.remove(&key);
        self.authority.bye(id, reason, &mut self.events);
        self.deliver_events();
        let client = self.clients.remove(key);
        let mut rooms = client.rooms;
        if let Some(Busy {
            waiting: Waiting::Join { room, .. } | Waiting::Say(room) | Waiting::Echo(room),
            ..
        }) = busy
        {
            rooms.push(room);
        }
        for room in &rooms {
            if let Some(audience) = self.audiences.get_mut(room) {
                audience.members.retain(|&k| k != key);
                audience.fresh.retain(|&(k, _)| k != key);
                audience.pending.retain(|(k, _)| *k != key);
                audience.waiters.retain(|&(k, _)| k != key);
                audience.floors.retain(|&(k, _)| k != key);
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

    /// The room a `say` goes to: the one named, which the client must be in, or for plain
    /// text (`None`) its current room.
    fn say_target(&self, key: usize, room: Option<String>) -> Result<String, Error> {
        let client = &self.clients[key];
        match room {
            Some(name) if client.rooms.contains(&name) => Ok(name),
            Some(name) => Err(not_member(&name)),
            None => client.rooms.last().cloned().ok_or_else(|| {
                Error::new(
                    ErrorCode::NotMember,
                    "you are in no room; join one before sending plain text",
                )
            }),
        }
    }

    fn send_error(&mut self, key: usize, error: Error) {
        self.send(key, &error.encode());
    }

    fn send(&mut self, key: usize, frame: &Frame) {
        deliver(&self.clients, &mut self.slow, &self.metrics, key, frame);
    }
}

/// The refusal that stands for frames dropped while a client waits for the authority.
const WAITING_FULL: &str = "too many commands are waiting for the chat backend; later ones \
     were dropped";

/// Keeps `event` in a bounded buffer of held events, forgetting the oldest when it is full.
fn keep(buffer: &mut VecDeque<RoomEvent>, event: RoomEvent) {
    if buffer.len() >= MAX_HELD_EVENTS {
        buffer.pop_front();
    }
    buffer.push_back(event);
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

/// Queues `frame` for client `key` without waiting (see [`deliver_item`]).
fn deliver(
    clients: &Slab<Client>,
    backlog: &mut Backlog,
    metrics: &Metrics,
    key: usize,
    frame: &Frame,
) {
    deliver_item(
        clients,
        backlog,
        metrics,
        key,
        Outgoing::Event(frame.clone()),
    );
}

/// Queues `item` for client `key` without waiting. A full queue marks a slow consumer; a
/// closed one means the writer is gone and the session's `Disconnect` is on its way.
fn deliver_item(
    clients: &Slab<Client>,
    backlog: &mut Backlog,
    metrics: &Metrics,
    key: usize,
    item: Outgoing,
) {
    let queue = &clients[key].queue;
    match queue.try_send(item) {
        Ok(half_full) => {
            Metrics::add(&metrics.events_delivered, 1);
            backlog.congested |= half_full;
        }
        Err(TrySendError::Full) => backlog.full.push(key),
        Err(TrySendError::Closed) => {}
    }
}

fn not_member(room: &str) -> Error {
    Error::new(
        ErrorCode::NotMember,
        format!("you are not in room {room:?}; join it first"),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the hub until every sender of `inbox` is gone. `notices` carries what an authority
/// that answers later sends back (`None` for one that always answers at once).
pub async fn run(mut hub: Hub, inbox: Receiver<Command>, notices: Option<Receiver<Notice>>) {
    use futures_lite::FutureExt;
    enum Next {
        Command(Command),
        Notice(Notice),
        Stop,
    }
    let mut budget = BUDGET;
    loop {
        let next = match &notices {
            None => inbox.recv().await.map_or(Next::Stop, Next::Command),
            Some(notices) => {
                let command = async { inbox.recv().await.map_or(Next::Stop, Next::Command) };
                // A closed notice channel (the bridge stopped) leaves only the inbox.
                let notice = async {
                    match notices.recv().await {
                        Ok(notice) => Next::Notice(notice),
                        Err(_) => std::future::pending().await,
                    }
                };
                // Either may be ready all the time under load: neither may starve the other
                // (answers and room events unblock clients; commands are what they send).
                command.race(notice).await
            }
        };
        match next {
            Next::Command(command) => hub.handle(command),
            Next::Notice(notice) => hub.notice(notice),
            Next::Stop => return,
        }
        let congested = std::mem::take(&mut hub.slow.congested);
        // With an authority that answers later, its bridge runs in the same task as this loop
        // (zipped by `Chat::new`); a loop that never waits, its inbox never empty, would
        // starve the bridge and the Redis connection it drives.
        let spent = notices.is_some() && {
            budget -= 1;
            budget == 0
        };
        if congested || spent {
            budget = BUDGET;
            futures_lite::future::yield_now().await;
        }
    }
}

/// Commands and notices the hub handles in a row, with an authority that answers later, before
/// it lets the other futures of its task run.
const BUDGET: u32 = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    struct TestClient {
        id: ClientId,
        queue: queue::Receiver<Outgoing>,
    }

    fn hub_with(config: Config) -> Hub {
        Hub::new(Arc::new(config), Arc::new(Metrics::default()))
    }

    fn hub() -> Hub {
        hub_with(Config::default())
    }

    fn connect(hub: &mut Hub, queue: usize) -> TestClient {
        let (tx, rx) = queue::bounded(queue, usize::MAX);
        let id = hub.connect(tx, Address::of("127.0.0.1:1"));
        let c = TestClient { id, queue: rx };
        c.drain();
        c
    }

    impl TestClient {
        fn events(&self) -> Vec<Value> {
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
        fn drain(&self) {
            self.events();
        }
        fn send(&self, hub: &mut Hub, request: Request) {
            hub.handle(Command::Request {
                client: self.id,
                request,
            });
        }
        fn say(&self, hub: &mut Hub, room: &str, text: &str) {
            self.send(
                hub,
                Request::Say {
                    room: Some(room.into()),
                    text: text.into(),
                },
            );
        }
    }

    fn join(room: &str) -> Request {
        Request::Join {
            room: room.into(),
            since: None,
            epoch: None,
        }
    }

    #[test]
    fn connect_sends_welcome_then_room() {
        let mut hub = hub();
        let (tx, rx) = queue::bounded(8, usize::MAX);
        hub.connect(tx, Address::of("127.0.0.1:1"));
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
        a.send(&mut hub, Request::Nick { nick: "Ada".into() });
        assert_eq!(
            b.events()[0],
            serde_json::json!({"type":"nick","old":"guest-1","nick":"Ada"})
        );
        assert_eq!(a.events()[0]["type"], "nick");
        b.send(&mut hub, Request::Nick { nick: "aDA".into() });
        assert_eq!(b.events()[0]["code"], "nick_taken");
        a.send(&mut hub, Request::Nick { nick: "ADA".into() });
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
            Request::Direct {
                to: "GUEST-2".into(),
                text: "psst".into(),
            },
        );
        assert_eq!(b.events()[0]["type"], "direct");
        assert_eq!(a.events()[0]["to"], "guest-2");
        a.send(
            &mut hub,
            Request::Direct {
                to: "nobody".into(),
                text: "x".into(),
            },
        );
        assert_eq!(a.events()[0]["code"], "unknown_recipient");
        a.say(&mut hub, "dev", "x");
        assert_eq!(a.events()[0]["code"], "not_member");
        a.send(&mut hub, Request::Leave { room: "dev".into() });
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
        a.send(
            &mut hub,
            Request::Nick {
                nick: "guest-2".into(),
            },
        );
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
        a.send(&mut hub, Request::Leave { room: "r1".into() });
        a.send(
            &mut hub,
            Request::Leave {
                room: "lobby".into(),
            },
        );
        a.send(&mut hub, join("r2"));
        a.send(&mut hub, join("r3")); // evicts r1, the older empty room
        a.drain();
        a.send(&mut hub, Request::Rooms { offset: 0 });
        let rooms = &a.events()[0]["rooms"];
        assert_eq!(
            *rooms,
            serde_json::json!([{"name":"lobby","members":0},{"name":"r2","members":1},{"name":"r3","members":1}])
        );
    }

    /// A client with a queue of `items` and `bytes`, from `peer`.
    fn connect_from(hub: &mut Hub, items: usize, bytes: usize, peer: &str) -> TestClient {
        let (tx, rx) = queue::bounded(items, bytes);
        let id = hub.connect(tx, Address::of(peer));
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
                    Request::Nick {
                        nick: format!("{i:02}{}", "N".repeat(30)),
                    },
                );
                c
            })
            .collect();
        let a = &clients[0];
        for i in 0..60 {
            let room = format!("{i:02}{}", "r".repeat(30));
            a.send(&mut hub, join(&room));
            a.send(&mut hub, Request::Leave { room });
        }
        a.drain();
        let longest_text = "\"".repeat(150); // 300 bytes once escaped
        a.send(
            &mut hub,
            Request::Who {
                room: "lobby".into(),
                offset: 0,
            },
        );
        a.send(&mut hub, Request::Rooms { offset: 0 });
        a.say(&mut hub, "lobby", &longest_text);
        let direct = Request::Direct {
            to: format!("39{}", "N".repeat(30)),
            text: longest_text,
        };
        a.send(&mut hub, direct);
        let error = Error::new(ErrorCode::BadRequest, "\"é".repeat(500));
        hub.handle(Command::Refuse {
            client: a.id,
            error,
        });
        // Its `room` event lists 40 of 41 members.
        let (tx, late) = queue::bounded(10, usize::MAX);
        hub.connect(tx, Address::of("127.0.0.1:1"));
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
            Request::Join {
                room: "one".into(),
                since: Some(0),
                epoch: None,
            },
        );
        let got = b.events();
        assert_eq!(got[0]["complete"], false, "message 1 of one was forgotten");
        let ids: Vec<u64> = got[1..].iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [2, 3]);
        b.send(
            &mut hub,
            Request::Join {
                room: "two".into(),
                since: Some(0),
                epoch: None,
            },
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
        let c_id = hub.connect(tx, Address::of("127.0.0.1:1"));
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
            Request::Who {
                room: "lobby".into(),
                offset: 0,
            },
        );
        let page = &c.events()[0];
        assert_eq!(page["members"], serde_json::json!(["guest-1", "guest-2"]));
        assert_eq!(
            (page["count"].as_u64(), page["next"].as_u64()),
            (Some(3), Some(2))
        );
        c.send(
            &mut hub,
            Request::Who {
                room: "lobby".into(),
                offset: 2,
            },
        );
        let page = &c.events()[0];
        assert_eq!(page["members"], serde_json::json!(["guest-3"]));
        assert!(page.get("next").is_none());

        c.send(
            &mut hub,
            Request::Nick {
                nick: "carol".into(),
            },
        );
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
        b.send(
            &mut hub,
            Request::Leave {
                room: "lobby".into(),
            },
        );
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
        });
        assert!(replies.try_recv().is_err(), "no new clients after shutdown");
    }
}
