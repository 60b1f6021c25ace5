//! The hub's side of scale-out (the `redis` feature, with `--redis`).
//!
//! The hub stays a state machine without I/O. What a single node decides alone (nicks, ids,
//! membership, history) is decided in Redis here, so a command that needs it becomes an
//! [`Op`] for the bridge (`crate::cluster`) and the client is *busy* until the answer comes
//! back as a [`Notice`]. A busy client's later frames wait in order, which keeps the protocol's
//! promise that the answer to one command arrives before the answer to the next.
//!
//! Room events come back from Redis through the room's channel, on every node alike, and are
//! fanned out here to the local members, with the same `deliver` as a single node. A `say` is
//! answered when its own message has come back that way, so the sender sees it in the same
//! place among the room's events as everybody else.

use std::collections::{HashMap, VecDeque};

use super::*;
use crate::cluster::{Answer, Bridge, Call, Envelope, Joined, Kind, Notice, Op};

/// Close code and reason for a client that cannot be registered because Redis is down.
const UNAVAILABLE_CLOSE: (u16, &str) = (1011, "chat backend unavailable");

/// Scale-out state of the hub.
pub(crate) struct Node {
    bridge: Bridge,
    /// Clients waiting for the bridge: what they wait for, and their frames since.
    busy: HashMap<usize, Busy>,
    /// Rooms with local members (or joins on the way), by name.
    rooms: HashMap<String, Local>,
    /// The last rename fanned out (`mid#tag`) and the local clients that got it: a rename is
    /// published once per room, and a client sharing several rooms gets it once.
    last_rename: (String, Vec<usize>),
}

struct Busy {
    waiting: Waiting,
    later: VecDeque<Result<Request, Error>>,
}

/// What a busy client waits for.
enum Waiting {
    Welcome,
    Nick(String),
    Join {
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
        resync: bool,
    },
    Leave(String),
    /// The script's answer to a `say` in this room...
    Say(String),
    /// ...then the message's own event (see [`Local::waiters`]).
    Echo(String),
    Who(String, usize),
    /// A `rooms` page from this offset.
    Rooms(usize),
    Answer,
    /// The answer arrived and is being handled.
    Done,
}

/// A room as this node sees it.
#[derive(Default)]
struct Local {
    /// Local clients that get the room's live events.
    members: Vec<usize>,
    /// Members that joined at room event `ev`: they skip events up to it.
    fresh: Vec<(usize, u64)>,
    /// Joins on the way, with the events that arrived meanwhile.
    pending: Vec<(usize, Vec<Envelope>)>,
    epoch: String,
    /// The newest message id fanned out here.
    last_id: u64,
    /// Senders waiting for their message (by id) to come back.
    waiters: Vec<(usize, u64)>,
    /// Events held back between a reconnect and the room's resync.
    held: Option<Vec<Envelope>>,
}

impl Hub {
    /// A hub whose rooms, nicks and history live in Redis, shared with other nodes.
    pub(crate) fn clustered(mut self, bridge: Bridge) -> Self {
        self.cluster = Some(Box::new(Node {
            bridge,
            busy: HashMap::new(),
            rooms: HashMap::new(),
            last_rename: (String::new(), Vec::new()),
        }));
        self
    }

    fn node(&mut self) -> &mut Node {
        self.cluster.as_mut().expect("clustered")
    }

    /// The member id of a local client: `node.key.serial`, unique across nodes and restarts.
    fn mid(&self, key: usize) -> String {
        let node = self.cluster.as_ref().expect("clustered").bridge.node();
        format!("{node}.{key}.{}", self.clients[key].serial)
    }

    /// The local client a member id names, if it is one of ours.
    fn local_key(&self, mid: &str) -> Option<usize> {
        let node = self.cluster.as_ref()?.bridge.node();
        let rest = mid.strip_prefix(node)?.strip_prefix('.')?;
        let (key, serial) = rest.split_once('.')?;
        let (key, serial): (usize, u64) = (key.parse().ok()?, serial.parse().ok()?);
        (self.clients.get(key)?.serial == serial).then_some(key)
    }

    pub(super) fn handle_clustered(&mut self, command: Command) {
        match command {
            Command::Connect {
                queue,
                reply,
                address,
                ..
            } => {
                if self.shutting_down {
                    return;
                }
                // Registered like any client; if Redis is down, the bridge's refusal closes it
                // with 1011 (upgrades are refused with 503 before that while Redis is down).
                let id = self.register(queue, address, String::new());
                let key = id.key;
                let _ = reply.try_send(id);
                let mid = self.mid(key);
                self.call(key, Waiting::Welcome, Call::Guest { mid });
            }
            Command::Request { client, request } => {
                if let Some(key) = self.key(client) {
                    self.submit(key, Ok(request));
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
            Command::Shutdown => {
                self.shutdown();
                self.node().bridge.send(Op::Shutdown);
            }
            Command::Cluster(notice) => self.notice(notice),
            // Raw mode is single-node only (`Config::validate` refuses --redis with it).
            Command::Publish { .. } => {}
        }
    }

    /// Starts `item` now, or after what the client is waiting for.
    fn submit(&mut self, key: usize, item: Result<Request, Error>) {
        match self.node().busy.get_mut(&key) {
            Some(busy) => busy.later.push_back(item),
            None => self.start(key, item),
        }
    }

    fn start(&mut self, key: usize, item: Result<Request, Error>) {
        match item {
            Ok(request) => {
                if let Err(error) = self.start_request(key, request) {
                    self.send_error(key, error);
                }
            }
            Err(error) => self.send_error(key, error),
        }
    }

    /// The client's wait is over: starts its waiting frames until one has to wait again.
    fn finish(&mut self, key: usize) {
        let Some(busy) = self.node().busy.remove(&key) else {
            return;
        };
        let mut later = busy.later;
        while let Some(item) = later.pop_front() {
            self.start(key, item);
            if let Some(busy) = self.node().busy.get_mut(&key) {
                busy.later = later;
                return;
            }
        }
    }

    /// Sends `call` to the bridge; the client is busy until the answer.
    fn call(&mut self, key: usize, waiting: Waiting, call: Call) {
        let client = ClientId {
            key,
            serial: self.clients[key].serial,
        };
        if self.node().bridge.send(Op::Call { client, call }) {
            match self.node().busy.get_mut(&key) {
                Some(busy) => busy.waiting = waiting,
                None => {
                    let later = VecDeque::new();
                    self.node().busy.insert(key, Busy { waiting, later });
                }
            }
        } else {
            self.fail(key, waiting);
        }
    }

    fn unavailable(&mut self, key: usize) {
        Metrics::add(&self.metrics.redis_unavailable, 1);
        let error = Error::new(
            ErrorCode::Unavailable,
            "the chat backend is unavailable; nothing was done, try again shortly",
        );
        self.send_error(key, error);
    }

    fn start_request(&mut self, key: usize, request: Request) -> Result<(), Error> {
        let mid = self.mid(key);
        match request {
            Request::Nick { nick } => {
                let call = Call::Nick {
                    mid,
                    nick: nick.clone(),
                };
                self.call(key, Waiting::Nick(nick), call);
            }
            Request::Join { room, since, epoch } => self.start_join(key, room, since, epoch)?,
            Request::Leave { room } => {
                if !self.clients[key].rooms.contains(&room) {
                    return Err(not_member(&room));
                }
                let call = Call::Leave {
                    mid,
                    room: room.clone(),
                };
                self.call(key, Waiting::Leave(room), call);
            }
            Request::Say { room, text } => {
                let room = self.say_target(key, room)?;
                let client = &self.clients[key];
                Metrics::add(&self.metrics.messages_received, 1);
                // The event as a single node would encode it, cut where Redis puts the id.
                let frame = Event::Message {
                    room: &room,
                    id: u64::MAX,
                    from: &client.nick,
                    text: &text,
                    ts: now_ms(),
                }
                .encode();
                // Cut at the `id` key, not at the first run of the placeholder's digits: a room
                // may be named with digits ("18446744073709551615" is a valid room name), and the
                // key comes before every value a client chose but the room's name.
                let id_key = format!(r#""id":{}"#, u64::MAX);
                let (before, after) = frame
                    .as_str()
                    .split_once(&id_key)
                    .expect("the id is in the event");
                let call = Call::Say {
                    mid,
                    room: room.clone(),
                    before: format!(r#"{before}"id":"#),
                    after: after.to_string(),
                };
                self.call(key, Waiting::Say(room), call);
            }
            Request::Direct { to, text } => {
                Metrics::add(&self.metrics.messages_received, 1);
                // A nick never contains `*`, so it marks where Redis puts the recipient's.
                let frame = Event::Direct {
                    from: &self.clients[key].nick,
                    to: "*",
                    text: &text,
                    ts: now_ms(),
                }
                .encode();
                let (before, after) = frame
                    .as_str()
                    .split_once(r#""to":"*""#)
                    .expect("the recipient is in the event");
                let call = Call::Direct {
                    mid,
                    to,
                    before: format!(r#"{before}"to":""#),
                    after: format!(r#""{after}"#),
                };
                self.call(key, Waiting::Answer, call);
            }
            Request::Who { room, offset } => {
                let waiting = Waiting::Who(room.clone(), offset);
                self.call(key, waiting, Call::Who { room, offset });
            }
            Request::Rooms { offset } => self.call(key, Waiting::Rooms(offset), Call::Rooms),
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
        if !resync && self.clients[key].rooms.len() >= self.config.max_rooms_per_client {
            return Err(Error::new(
                ErrorCode::RoomLimit,
                format!(
                    "you are in {} rooms, the most allowed; leave one first",
                    self.config.max_rooms_per_client
                ),
            ));
        }
        let max_rooms = self.config.max_rooms;
        let node = self.node();
        if !node.rooms.contains_key(&room) && node.rooms.len() >= max_rooms {
            return Err(Error::new(
                ErrorCode::RoomLimit,
                format!(
                    "this server has members in {max_rooms} rooms, the most allowed; join one of them"
                ),
            ));
        }
        let local = node.rooms.entry(room.clone()).or_default();
        // A resync stops live events until the replay is out, like a join.
        local.members.retain(|&k| k != key);
        local.fresh.retain(|&(k, _)| k != key);
        local.pending.push((key, Vec::new()));
        let rooms = self.node().rooms.len() as u64;
        self.metrics
            .rooms
            .store(rooms, std::sync::atomic::Ordering::Relaxed);
        let mid = self.mid(key);
        let call = Call::Join {
            mid,
            room: room.clone(),
        };
        let waiting = Waiting::Join {
            room,
            since,
            epoch,
            resync,
        };
        self.call(key, waiting, call);
        Ok(())
    }

    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Done { client, answer } => {
                let Some(key) = self.key(client) else {
                    return; // gone meanwhile; the bridge has its goodbye
                };
                let Some(busy) = self.node().busy.get_mut(&key) else {
                    return;
                };
                let waiting = std::mem::replace(&mut busy.waiting, Waiting::Done);
                match answer {
                    Some(answer) => self.answered(key, waiting, answer),
                    None => {
                        self.fail(key, waiting);
                        self.finish(key);
                    }
                }
            }
            Notice::Room { room, event } => self.room_event(&room, event),
            Notice::Direct { target, frame } => {
                let key = target.split_once('.').and_then(|(key, serial)| {
                    let (key, serial) = (key.parse::<usize>().ok()?, serial.parse::<u64>().ok()?);
                    (self.clients.get(key)?.serial == serial).then_some(key)
                });
                if let Some(key) = key {
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
        }
    }

    /// The bridge could not do what `key` waits for: undo what was prepared, say so.
    fn fail(&mut self, key: usize, waiting: Waiting) {
        match waiting {
            Waiting::Welcome => {
                let (code, reason) = UNAVAILABLE_CLOSE;
                self.clients[key]
                    .queue
                    .send_last(Outgoing::Close(code, reason));
                self.remove(key, LeaveReason::Disconnected);
                return;
            }
            Waiting::Join { room, resync, .. } => {
                let local = self.node().rooms.get_mut(&room).expect("pending join");
                local.pending.retain(|(k, _)| *k != key);
                if resync {
                    local.members.push(key);
                }
                self.drop_if_unused(&room);
            }
            _ => {}
        }
        self.unavailable(key);
    }

    fn answered(&mut self, key: usize, waiting: Waiting, answer: Answer) {
        match (waiting, answer) {
            (waiting, Answer::Gone) => self.fail(key, waiting),
            (Waiting::Welcome, Answer::Guest(nick)) => {
                self.clients[key].nick = nick;
                self.send_welcome(key);
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
            (
                Waiting::Join {
                    room, since, epoch, ..
                },
                Answer::Joined(joined),
            ) => self.joined(key, room, since, epoch, joined),
            (Waiting::Leave(room), Answer::Left) => {
                self.clients[key].rooms.retain(|r| *r != room);
                if let Some(local) = self.node().rooms.get_mut(&room) {
                    local.members.retain(|&k| k != key);
                    local.fresh.retain(|&(k, _)| k != key);
                }
                self.drop_if_unused(&room);
            }
            (Waiting::Say(room), Answer::Said { id }) => {
                let node = self.node();
                if let Some(local) = node.rooms.get_mut(&room)
                    && local.last_id < id
                {
                    local.waiters.push((key, id));
                    // Answered when the message comes back.
                    node.busy.get_mut(&key).expect("busy").waiting = Waiting::Echo(room);
                }
            }
            (_, Answer::Direct(frame)) => self.send(key, &frame),
            (_, Answer::UnknownRecipient) => {
                let error = Error::new(
                    ErrorCode::UnknownRecipient,
                    "nobody is called that; `who` lists a room's members",
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
            (Waiting::Rooms(offset), Answer::Rooms(rooms)) => {
                let rooms = rooms
                    .iter()
                    .map(|(name, members)| RoomSummary {
                        name,
                        members: *members,
                    })
                    .collect();
                let frame = Event::rooms_page(rooms, offset);
                self.send(key, &frame);
            }
            (waiting, _) => self.fail(key, waiting),
        }
        // Unless the answer started another wait (the welcome starts the first join).
        if self
            .node()
            .busy
            .get(&key)
            .is_some_and(|b| matches!(b.waiting, Waiting::Done))
        {
            self.finish(key);
        }
    }

    fn send_welcome(&mut self, key: usize) {
        let limits = self.config.limits();
        let frame = Event::Welcome {
            nick: &self.clients[key].nick,
            server: &self.server,
            limits,
        }
        .encode();
        self.send(key, &frame);
    }

    fn joined(
        &mut self,
        key: usize,
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
        joined: Joined,
    ) {
        let client = &mut self.clients[key];
        client.rooms.retain(|r| *r != room);
        client.rooms.push(room.clone());
        let history =
            crate::room::Room::restored(joined.epoch.clone(), joined.last_id, joined.history);
        let replay = history.replay(since, epoch.as_deref());
        let frame = Event::Room {
            room: &room,
            epoch: &joined.epoch,
            members: joined.nicks.iter().map(String::as_str).collect(),
            count: joined.count,
            last_id: joined.last_id,
            complete: replay.complete,
        }
        .encode();
        self.send(key, &frame);
        for message in replay.messages {
            deliver(&self.clients, &mut self.slow, &self.metrics, key, message);
        }
        let node = self.cluster.as_mut().expect("clustered");
        let local = node.rooms.get_mut(&room).expect("pending join");
        let i = local
            .pending
            .iter()
            .position(|(k, _)| *k == key)
            .expect("pending join");
        let (_, meanwhile) = local.pending.swap_remove(i);
        if local.members.is_empty() && local.pending.is_empty() && local.waiters.is_empty() {
            local.last_id = joined.last_id;
        }
        local.epoch = joined.epoch;
        local.members.push(key);
        local.fresh.push((key, joined.ev));
        for event in meanwhile {
            if event.ev > joined.ev {
                self.fan_out(&room, &event, Some(key));
            }
        }
    }

    /// A room event from the room's channel.
    fn room_event(&mut self, room: &str, event: Envelope) {
        let Some(local) = self.node().rooms.get_mut(room) else {
            return; // unsubscribed meanwhile
        };
        if let Some(held) = &mut local.held {
            held.push(event);
            return;
        }
        for (_, meanwhile) in &mut local.pending {
            meanwhile.push(event.clone());
        }
        self.fan_out(room, &event, None);
        if event.kind == Kind::Message {
            self.message_back(room, event.n);
        }
    }

    /// Delivers `event` to the room's local members (or to `only`) that should get it.
    fn fan_out(&mut self, room: &str, event: &Envelope, only: Option<usize>) {
        let limit = self.config.presence_limit as u64;
        let (subject, tag) = match event.subject.split_once('#') {
            Some((mid, _)) => (mid, event.subject.as_str()),
            None => (event.subject.as_str(), ""),
        };
        let subject = self.local_key(subject);
        let announced = match event.kind {
            Kind::Message => true,
            Kind::Join | Kind::Leave | Kind::Nick => event.n <= limit,
        };
        if !announced {
            return;
        }
        let node = self.cluster.as_mut().expect("clustered");
        let Some(local) = node.rooms.get_mut(room) else {
            return;
        };
        // Fresh members skip what their join already reflected; once an event is past a
        // member's join, every later one is too.
        local.fresh.retain(|&(_, ev)| ev >= event.ev);
        if event.kind == Kind::Nick && node.last_rename.0 != tag {
            node.last_rename = (tag.to_string(), Vec::new());
        }
        let recipients: Vec<usize> = match only {
            Some(k) => vec![k],
            None => local.members.clone(),
        };
        for k in recipients {
            if Some(k) == subject && event.kind != Kind::Message {
                continue; // others hear of a join, leave or rename; the client itself not
            }
            if local.fresh.iter().any(|&(f, ev)| f == k && ev >= event.ev) {
                continue;
            }
            if event.kind == Kind::Nick {
                if node.last_rename.1.contains(&k) {
                    continue;
                }
                node.last_rename.1.push(k);
            }
            deliver(
                &self.clients,
                &mut self.slow,
                &self.metrics,
                k,
                &event.frame,
            );
        }
    }

    /// Message `id` of `room` was fanned out: its sender (and anyone waiting for an earlier
    /// one) is answered.
    fn message_back(&mut self, room: &str, id: u64) {
        let Some(local) = self.node().rooms.get_mut(room) else {
            return;
        };
        local.last_id = local.last_id.max(id);
        let last = local.last_id;
        let done: Vec<usize> = local
            .waiters
            .iter()
            .filter(|&&(_, w)| w <= last)
            .map(|&(k, _)| k)
            .collect();
        local.waiters.retain(|&(_, w)| w > last);
        for key in done {
            self.finish(key);
        }
        self.drop_if_unused(room);
    }

    /// Forgets a local room nobody here uses any more, and stops listening to it.
    fn drop_if_unused(&mut self, room: &str) {
        let node = self.node();
        let unused = node
            .rooms
            .get(room)
            .is_some_and(|l| l.members.is_empty() && l.pending.is_empty() && l.waiters.is_empty());
        if unused {
            node.rooms.remove(room);
            node.bridge.send(Op::Unsubscribe {
                room: room.to_string(),
            });
            let n = node.rooms.len() as u64;
            self.metrics
                .rooms
                .store(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A new connection to Redis: hold room events until each room is resynced, and tell the
    /// bridge who is here.
    fn resyncing(&mut self) {
        let mut members = Vec::new();
        for (key, client) in self.clients.iter() {
            if !client.nick.is_empty() {
                members.push((self.mid(key), client.nick.clone(), client.rooms.clone()));
            }
        }
        let node = self.node();
        for local in node.rooms.values_mut() {
            local.held.get_or_insert_with(Vec::new);
        }
        let rooms = node.rooms.keys().cloned().collect();
        if !node.bridge.send(Op::Restore { members, rooms }) {
            log::warn!("redis: the bridge is behind; members not restored");
        }
    }

    /// A room's state after a reconnect: deliver what was said while this node was cut off
    /// (as far as the history still has it), then the events held back since.
    fn resync(&mut self, room: &str, epoch: String, last_id: u64, ev: u64, history: Vec<Frame>) {
        let node = self.cluster.as_mut().expect("clustered");
        let Some(local) = node.rooms.get_mut(room) else {
            return;
        };
        let held = local.held.take().unwrap_or_default();
        let mut lost_waiters = Vec::new();
        if local.epoch == epoch || local.epoch.is_empty() {
            let first = last_id + 1 - history.len() as u64;
            if first > local.last_id + 1 && local.last_id < last_id && !local.epoch.is_empty() {
                log::warn!(
                    "room {room}: messages {}..{} were evicted before this node could deliver them",
                    local.last_id + 1,
                    first - 1
                );
            }
            let members = local.members.clone();
            for (id, frame) in (first..).zip(&history) {
                if id > local.last_id {
                    for &k in &members {
                        deliver(&self.clients, &mut self.slow, &self.metrics, k, frame);
                    }
                }
            }
        } else {
            // Redis lost the room's history: a new life. Senders still waiting for a message
            // of the old life will never see it.
            lost_waiters = local.waiters.drain(..).map(|(k, _)| k).collect();
            local.fresh.clear();
        }
        local.epoch = epoch;
        local.last_id = local.last_id.max(last_id);
        if !lost_waiters.is_empty() {
            local.last_id = last_id;
        }
        for key in lost_waiters {
            self.unavailable(key);
            self.finish(key);
        }
        self.message_back(room, last_id);
        for event in held {
            if event.ev > ev {
                self.room_event(room, event);
            }
        }
    }

    /// Forgets a departed client here and tells the bridge, which tells the other nodes.
    pub(super) fn remove_clustered(&mut self, key: usize, reason: LeaveReason) {
        let mid = self.mid(key);
        let busy = self.node().busy.remove(&key);
        let client = self.clients.remove(key);
        let mut rooms = client.rooms;
        if let Some(Busy {
            waiting: Waiting::Join { room, .. } | Waiting::Say(room) | Waiting::Echo(room),
            ..
        }) = busy
        {
            rooms.push(room);
        }
        let node = self.node();
        for room in &rooms {
            if let Some(local) = node.rooms.get_mut(room) {
                local.members.retain(|&k| k != key);
                local.fresh.retain(|&(k, _)| k != key);
                local.pending.retain(|&(k, _)| k != key);
                local.waiters.retain(|&(k, _)| k != key);
            }
        }
        node.bridge.send(Op::Bye { mid, reason });
        for room in rooms {
            self.drop_if_unused(&room);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::Frame;
    use crate::room::Room;

    #[test]
    fn a_room_restored_from_redis_replays_by_the_same_rules() {
        let frames = ["3", "4", "5"].map(Frame::from).to_vec();
        let room = Room::restored("e1".into(), 5, frames);
        let ids = |since, epoch| {
            let r = room.replay(since, epoch);
            let ids: Vec<String> = r.messages.iter().map(|f| f.as_str().to_string()).collect();
            (ids, r.complete)
        };
        assert_eq!(
            ids(Some(2), Some("e1")),
            (vec!["3".into(), "4".into(), "5".into()], Some(true))
        );
        assert_eq!(ids(Some(1), Some("e1")).1, Some(false), "2 was evicted");
        assert_eq!(ids(Some(4), None), (vec!["5".to_string()], Some(true)));
        assert_eq!(ids(Some(5), Some("e0")).1, Some(false), "another life");
        let empty = Room::restored("e2".into(), 0, Vec::new());
        assert_eq!(empty.replay(Some(0), Some("e2")).complete, Some(true));
    }
}
