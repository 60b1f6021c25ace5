//! The hub: the single owner of all chat state, run as one future.
//!
//! Sessions talk to the hub only through [`Command`]s sent to its bounded inbox; the hub talks
//! back only by putting [`Outgoing`] items into each client's own bounded queue with
//! `try_send`. It never awaits on a client: a client whose queue is full is a slow consumer and
//! is disconnected on the spot, so one stalled reader can never delay anybody else.
//!
//! [`Hub`] is a plain state machine (commands in, events out, no I/O, no executor, no timer),
//! which is why its tests below need no sockets. [`run`] is the few lines that turn it into a
//! future: receive a command, handle it, repeat.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender};
use slab::Slab;

use crate::config::{Config, Protocol};
use crate::metrics::Metrics;
use crate::protocol::{Error, ErrorCode, Event, Frame, LeaveReason, Request, RoomSummary};
use crate::queue::{self, TrySendError, Weigh};
use crate::room::Room;

#[cfg(feature = "redis")]
mod clustered;
mod raw;

/// Identifies one connected client. The slab key is reused after a client leaves, so the
/// `serial` (never reused) tells a late command from a departed client apart from its
/// successor in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId {
    key: usize,
    serial: u64,
}

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

/// Where a client connects from, for limits per address: an IPv4 address, an IPv6 /64 (one
/// subscriber's network: a single host can use any of its 2^64 addresses), or for peers that
/// are not socket addresses (embedders may pass any text) a hash of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(u128);

impl Address {
    /// The address of `peer`, as `Chat::serve` receives it (`"127.0.0.1:5000"`).
    pub fn of(peer: &str) -> Address {
        let ip = peer
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| peer.parse::<IpAddr>());
        match ip.map(|ip| ip.to_canonical()) {
            Ok(IpAddr::V4(v4)) => Address(u128::from(v4.to_ipv6_mapped())),
            Ok(IpAddr::V6(v6)) => Address(u128::from(v6) & !u128::from(u64::MAX)),
            Err(_) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                peer.hash(&mut h);
                // Low bits set: no IPv6 /64 prefix key has any.
                Address(u128::from(h.finish()) | 1 << 64)
            }
        }
    }
}

/// A request to the hub from a session (or from the server, for shutdown).
#[derive(Debug)]
pub enum Command {
    /// A new client: register its queue and reply with its id (after queuing `welcome`). In
    /// raw mode it joins `group` (`None`: the default room) and is sent nothing.
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
    /// Scale-out: an answer or event from Redis.
    #[cfg(feature = "redis")]
    Cluster(crate::cluster::Notice),
}

/// Close code and reason sent to a slow consumer.
pub const SLOW_CONSUMER_CLOSE: (u16, &str) = (1013, "slow consumer");
/// Close code and reason sent to everyone at shutdown.
pub const SHUTDOWN_CLOSE: (u16, &str) = (1001, "server shutting down");

struct Client {
    queue: queue::Sender<Outgoing>,
    serial: u64,
    address: Address,
    nick: String,
    /// Rooms in join order; the last one is the "current" room for plain-text frames.
    rooms: Vec<String>,
}

/// All chat state: clients, nicks and rooms.
pub struct Hub {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    server: String,
    clients: Slab<Client>,
    /// Lowercased nick → client key; nicks are unique ignoring case.
    nicks: HashMap<String, usize>,
    rooms: HashMap<String, Room>,
    /// Bytes of messages all rooms remember together (`--history-total-bytes`).
    history_bytes: usize,
    /// Every room with history, by the server-wide sequence number of its oldest message:
    /// the first entry is the message to forget when the total is over the limit.
    oldest: BTreeMap<u64, String>,
    /// Numbers every remembered message, server-wide, oldest first.
    next_seq: u64,
    /// Non-empty rooms held by each address: a room is held by the address of the client that
    /// made it non-empty (created it, or joined it empty) until it is empty again.
    held: HashMap<Address, usize>,
    next_serial: u64,
    next_guest: u64,
    /// Prefix of every room epoch: different for every start of the server.
    epoch_base: String,
    rooms_created: u64,
    /// Counts commands, to order empty rooms by how recently they were used.
    tick: u64,
    /// Clients whose queue was found full while delivering, to disconnect after the command.
    slow: Backlog,
    shutting_down: bool,
    /// Scale-out: set when rooms are shared with other nodes through Redis.
    #[cfg(feature = "redis")]
    cluster: Option<Box<clustered::Node>>,
}

impl Hub {
    /// A hub with no clients and no rooms.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        Hub {
            config,
            metrics,
            server: format!("smolchat/{}", env!("CARGO_PKG_VERSION")),
            clients: Slab::new(),
            nicks: HashMap::new(),
            rooms: HashMap::new(),
            history_bytes: 0,
            oldest: BTreeMap::new(),
            next_seq: 0,
            held: HashMap::new(),
            next_serial: 1,
            next_guest: 1,
            epoch_base: radix36(started),
            rooms_created: 0,
            tick: 0,
            slow: Backlog::default(),
            shutting_down: false,
            #[cfg(feature = "redis")]
            cluster: None,
        }
    }

    /// Handles one command. Everything the command causes is queued before this returns.
    pub fn handle(&mut self, command: Command) {
        self.tick += 1;
        #[cfg(feature = "redis")]
        if self.cluster.is_some() {
            self.handle_clustered(command);
            self.drop_slow_consumers();
            return;
        }
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
                    self.request(key, request);
                }
            }
            Command::Publish { client, item } => {
                if let Some(key) = self.key(client) {
                    self.publish(key, item);
                }
            }
            Command::Refuse { client, error } => {
                if let Some(key) = self.key(client) {
                    self.send_error(key, error);
                }
            }
            Command::Disconnect { client, reason } => {
                if let Some(key) = self.key(client) {
                    self.remove(key, reason);
                }
            }
            Command::Shutdown => self.shutdown(),
            #[cfg(feature = "redis")]
            Command::Cluster(_) => {}
        }
        self.drop_slow_consumers();
    }

    /// Registers a client, queues its `welcome` and joins it to the default room.
    pub fn connect(&mut self, queue: queue::Sender<Outgoing>, address: Address) -> ClientId {
        let nick = loop {
            let candidate = format!("guest-{}", self.next_guest);
            self.next_guest += 1;
            if !self.nicks.contains_key(&candidate) {
                break candidate;
            }
        };
        let ClientId { key, serial } = self.register(queue, address, nick.clone());
        self.nicks.insert(nick.clone(), key);
        let limits = self.config.limits();
        let welcome = Event::Welcome {
            nick: &nick,
            server: &self.server,
            limits,
        };
        self.send(key, &welcome.encode());
        let room = self.config.default_room.clone();
        if let Err(error) = self.join(key, room, None, None) {
            self.send_error(key, error);
        }
        ClientId { key, serial }
    }

    /// Gives a new client its slot and serial.
    fn register(
        &mut self,
        queue: queue::Sender<Outgoing>,
        address: Address,
        nick: String,
    ) -> ClientId {
        let serial = self.next_serial;
        self.next_serial += 1;
        let key = self.clients.insert(Client {
            queue,
            serial,
            address,
            nick,
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

    fn request(&mut self, key: usize, request: Request) {
        let result = match request {
            Request::Nick { nick } => self.rename(key, nick),
            Request::Join { room, since, epoch } => self.join(key, room, since, epoch),
            Request::Leave { room } => self.leave(key, &room),
            Request::Say { room, text } => self.say(key, room, &text),
            Request::Direct { to, text } => self.direct(key, &to, &text),
            Request::Who { room, offset } => {
                let (members, count) = match self.rooms.get(&room) {
                    Some(r) => (self.nicks_of(r, offset), r.members().len()),
                    None => (Vec::new(), 0),
                };
                let end = offset.saturating_add(members.len());
                let frame = Event::Members {
                    room: &room,
                    members,
                    count,
                    next: (end < count).then_some(end),
                }
                .encode();
                self.send(key, &frame);
                Ok(())
            }
            Request::Rooms { offset } => {
                let rooms: Vec<RoomSummary> = self
                    .rooms
                    .iter()
                    .map(|(name, r)| RoomSummary {
                        name,
                        members: r.members().len(),
                    })
                    .collect();
                let frame = Event::rooms_page(rooms, offset);
                self.send(key, &frame);
                Ok(())
            }
        };
        if let Err(error) = result {
            self.send_error(key, error);
        }
    }

    fn send_error(&mut self, key: usize, error: Error) {
        self.send(key, &error.encode());
    }

    fn rename(&mut self, key: usize, nick: String) -> Result<(), Error> {
        let lower = nick.to_ascii_lowercase();
        if self.nicks.get(&lower).is_some_and(|&owner| owner != key) {
            return Err(Error::new(
                ErrorCode::NickTaken,
                format!("the nick {nick:?} is taken; choose another"),
            ));
        }
        let client = &mut self.clients[key];
        let old = std::mem::replace(&mut client.nick, nick);
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(lower, key);
        let client = &self.clients[key];
        let frame = Event::Nick {
            old: &old,
            nick: &client.nick,
        }
        .encode();
        // The client itself and everyone sharing a room with it, each once.
        let mut recipients = vec![key];
        for room in &client.rooms {
            let members = self.rooms[room].members();
            if members.len() <= self.config.presence_limit {
                recipients.extend_from_slice(members);
            }
        }
        recipients.sort_unstable();
        recipients.dedup();
        for k in recipients {
            self.send(k, &frame);
        }
        Ok(())
    }

    fn join(
        &mut self,
        key: usize,
        name: String,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), Error> {
        let already_in = !self.enter(key, &name)?;
        let client = &mut self.clients[key];
        // Joining moves the room to the end: it becomes the client's current room.
        client.rooms.retain(|r| *r != name);
        client.rooms.push(name.clone());
        let room = self.rooms.get_mut(&name).expect("room exists");
        // Above the presence limit, members see counts instead of every arrival.
        if !already_in && room.members().len() <= self.config.presence_limit {
            let frame = Event::Join {
                room: &name,
                nick: &client.nick,
            }
            .encode();
            for &k in room.members().iter().filter(|&&k| k != key) {
                deliver(&self.clients, &mut self.slow, &self.metrics, k, &frame);
            }
        }

        let room = &self.rooms[&name];
        let replay = room.replay(since, epoch.as_deref());
        let members = self.nicks_of(room, 0);
        let frame = Event::Room {
            room: &name,
            epoch: room.epoch(),
            members,
            count: room.members().len(),
            last_id: room.last_id(),
            complete: replay.complete,
        }
        .encode();
        deliver(&self.clients, &mut self.slow, &self.metrics, key, &frame);
        for message in replay.messages {
            deliver(&self.clients, &mut self.slow, &self.metrics, key, message);
        }
        Ok(())
    }

    /// Makes `key` a member of room `name`, creating the room if needed, within the limits on
    /// rooms per client, per address and in all. Returns false if it was a member already.
    /// Announces nothing: that is the caller's (and the protocol's) business.
    fn enter(&mut self, key: usize, name: &str) -> Result<bool, Error> {
        if self.clients[key].rooms.iter().any(|r| r == name) {
            return Ok(false);
        }
        if self.clients[key].rooms.len() >= self.config.max_rooms_per_client {
            return Err(Error::new(
                ErrorCode::RoomLimit,
                format!(
                    "you are in {} rooms, the most allowed; leave one first",
                    self.config.max_rooms_per_client
                ),
            ));
        }
        let address = self.clients[key].address;
        // The default room is everybody's: nobody holds it, no limit keeps it from being
        // created, and it is never evicted (otherwise a few addresses filling the limits could
        // leave newcomers without one).
        let default = name == self.config.default_room;
        let empty = !default && self.rooms.get(name).is_none_or(|r| r.members().is_empty());
        if empty
            && self.held.get(&address).copied().unwrap_or(0) >= self.config.max_rooms_per_address
        {
            return Err(Error::new(
                ErrorCode::RoomLimit,
                format!(
                    "clients from your address hold {} rooms, the most allowed; join a room \
                     that has members",
                    self.config.max_rooms_per_address
                ),
            ));
        }
        if !self.rooms.contains_key(name) {
            if !default {
                self.make_room_for_one_more()?;
            }
            self.rooms_created += 1;
            let epoch = format!("{}-{}", self.epoch_base, radix36(self.rooms_created.into()));
            let room = Room::new(epoch, self.config.history, self.config.history_bytes);
            self.rooms.insert(name.to_string(), room);
            Metrics::add(&self.metrics.rooms, 1);
        }
        let room = self.rooms.get_mut(name).expect("room exists");
        if empty {
            *self.held.entry(address).or_default() += 1;
            room.holder = Some(address);
        }
        room.add(key);
        self.clients[key].rooms.push(name.to_string());
        Ok(true)
    }

    /// Evicts the least recently used empty room if the server holds `--max-rooms` rooms
    /// besides the default room.
    fn make_room_for_one_more(&mut self) -> Result<(), Error> {
        let default = &self.config.default_room;
        let others = self.rooms.len() - usize::from(self.rooms.contains_key(default));
        if others < self.config.max_rooms {
            return Ok(());
        }
        let oldest_empty = self
            .rooms
            .iter()
            .filter(|(name, r)| r.members().is_empty() && *name != default)
            .min_by_key(|(_, r)| r.idle_since)
            .map(|(name, _)| name.clone());
        match oldest_empty {
            Some(name) => {
                let room = self.rooms.remove(&name).expect("the room exists");
                if let Some(seq) = room.oldest_seq() {
                    self.oldest.remove(&seq);
                }
                self.history_bytes -= room.history_bytes();
                self.metrics.history_bytes.store(
                    self.history_bytes as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                self.metrics
                    .rooms
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            None => Err(Error::new(
                ErrorCode::RoomLimit,
                format!(
                    "the server holds {} rooms, the most allowed; join an existing room",
                    self.config.max_rooms
                ),
            )),
        }
    }

    fn leave(&mut self, key: usize, name: &str) -> Result<(), Error> {
        let client = &mut self.clients[key];
        let Some(i) = client.rooms.iter().position(|r| r == name) else {
            return Err(not_member(name));
        };
        client.rooms.remove(i);
        self.part(key, name, LeaveReason::Left);
        Ok(())
    }

    /// Takes `key` out of room `name` and tells the remaining members why.
    fn part(&mut self, key: usize, name: &str, reason: LeaveReason) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        room.remove(key);
        // The room stays held by an address while a client from it is in the room; when the
        // last one leaves, the hold passes to a remaining member's address (or ends with the
        // last member). Otherwise another address could pin this one's quota by staying in
        // rooms it created.
        let leaver = self.clients[key].address;
        let still_there = |k: &usize| self.clients[*k].address == leaver;
        if room.holder == Some(leaver) && !room.members().iter().any(still_there) {
            let heir = room.members().first().map(|&k| self.clients[k].address);
            if let Some(held) = self.held.get_mut(&leaver) {
                *held -= 1;
                if *held == 0 {
                    self.held.remove(&leaver);
                }
            }
            if let Some(heir) = heir {
                *self.held.entry(heir).or_default() += 1;
            }
            room.holder = heir;
        }
        if room.members().is_empty() {
            room.idle_since = self.tick;
        }
        if self.config.protocol == Protocol::Raw {
            // A group has no history to keep and nobody to tell; the default one stays.
            if room.members().is_empty() && name != self.config.default_room {
                self.rooms.remove(name);
                self.metrics
                    .rooms
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            return;
        }
        // Announced only if the leaver's arrival was: the size then included the leaver.
        if room.members().len() + 1 > self.config.presence_limit {
            return;
        }
        let frame = Event::Leave {
            room: name,
            nick: &self.clients[key].nick,
            reason,
        }
        .encode();
        for &k in room.members() {
            deliver(&self.clients, &mut self.slow, &self.metrics, k, &frame);
        }
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

    fn say(&mut self, key: usize, room: Option<String>, text: &str) -> Result<(), Error> {
        let name = self.say_target(key, room)?;
        let client = &self.clients[key];
        Metrics::add(&self.metrics.messages_received, 1);
        let room = self.rooms.get_mut(&name).expect("a client's rooms exist");
        let id = room.next_id();
        let frame = Event::Message {
            room: &name,
            id,
            from: &client.nick,
            text,
            ts: now_ms(),
        }
        .encode();
        for &k in room.members() {
            deliver(&self.clients, &mut self.slow, &self.metrics, k, &frame);
        }
        self.remember(&name, frame);
        Ok(())
    }

    /// Stores a message in its room's history, then forgets the oldest messages on the server
    /// until all rooms together are within `--history-total-bytes`.
    fn remember(&mut self, name: &str, frame: Frame) {
        let room = self.rooms.get_mut(name).expect("the room exists");
        let before = room.oldest_seq();
        let (added, forgotten) = room.remember(frame, self.next_seq);
        self.next_seq += 1;
        self.history_bytes = self.history_bytes + added - forgotten;
        if room.oldest_seq() != before {
            if let Some(seq) = before {
                self.oldest.remove(&seq);
            }
            if let Some(seq) = room.oldest_seq() {
                self.oldest.insert(seq, name.to_string());
            }
        }
        while self.history_bytes > self.config.history_total_bytes {
            let Some((_, name)) = self.oldest.pop_first() else {
                break;
            };
            let room = self.rooms.get_mut(&name).expect("indexed rooms exist");
            self.history_bytes -= room.forget_oldest();
            if let Some(seq) = room.oldest_seq() {
                self.oldest.insert(seq, name);
            }
        }
        self.metrics.history_bytes.store(
            self.history_bytes as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn direct(&mut self, key: usize, to: &str, text: &str) -> Result<(), Error> {
        let Some(&target) = self.nicks.get(&to.to_ascii_lowercase()) else {
            return Err(Error::new(
                ErrorCode::UnknownRecipient,
                format!("nobody is called {to:?}; `who` lists a room's members"),
            ));
        };
        Metrics::add(&self.metrics.messages_received, 1);
        let frame = Event::Direct {
            from: &self.clients[key].nick,
            to: &self.clients[target].nick,
            text,
            ts: now_ms(),
        }
        .encode();
        self.send(target, &frame);
        if target != key {
            self.send(key, &frame);
        }
        Ok(())
    }

    /// Forgets a client: frees its nick, leaves its rooms (announcing `reason`), and drops its
    /// queue sender, which ends its writer once the queue is drained.
    fn remove(&mut self, key: usize, reason: LeaveReason) {
        #[cfg(feature = "redis")]
        if self.cluster.is_some() {
            return self.remove_clustered(key, reason);
        }
        let rooms = std::mem::take(&mut self.clients[key].rooms);
        for name in &rooms {
            self.part(key, name, reason);
        }
        let client = self.clients.remove(key);
        if !client.nick.is_empty() {
            self.nicks.remove(&client.nick.to_ascii_lowercase());
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
            let (code, reason) = SLOW_CONSUMER_CLOSE;
            self.clients[key]
                .queue
                .send_last(Outgoing::Close(code, reason));
            self.remove(key, LeaveReason::SlowConsumer);
        }
    }

    /// Closes every client with 1001. Clients go one by one, so each remaining member of a
    /// room learns who left (reason `shutdown`) before its own close arrives.
    fn shutdown(&mut self) {
        self.shutting_down = true;
        let (code, reason) = SHUTDOWN_CLOSE;
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.clients[key]
                .queue
                .send_last(Outgoing::Close(code, reason));
            self.remove(key, LeaveReason::Shutdown);
        }
    }

    /// One page of a room's member nicks: at most `--presence-limit`, from `offset`.
    fn nicks_of<'a>(&'a self, room: &Room, offset: usize) -> Vec<&'a str> {
        room.members()
            .iter()
            .skip(offset)
            .take(self.config.presence_limit)
            .map(|&k| self.clients[k].nick.as_str())
            .collect()
    }

    fn send(&mut self, key: usize, frame: &Frame) {
        deliver(&self.clients, &mut self.slow, &self.metrics, key, frame);
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

/// `n` in base 36, for short identifiers.
pub(crate) fn radix36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// Runs the hub until every sender of `inbox` is gone.
pub async fn run(mut hub: Hub, inbox: Receiver<Command>) {
    while let Ok(command) = inbox.recv().await {
        hub.handle(command);
        if std::mem::take(&mut hub.slow.congested) {
            futures_lite::future::yield_now().await;
        }
    }
}

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
