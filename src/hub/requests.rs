//! A client's commands, from its request to the authority's answer, one at a time.
//!
//! A request enters through [`Hub::submit`]. What the hub can decide alone (the client's own
//! rooms, the limit on rooms per client) it decides at once; the rest becomes an [`Ask`]. The
//! answer enters through [`Hub::answered`], at once from the in-memory authority or later from
//! Redis; until it arrives the client is *busy* and its later frames wait in order (at most
//! [`MAX_WAITING`]), so the answer to one command always comes before the answer to the next.
//! Replies leave as events in the client's queue.

use std::collections::VecDeque;

use super::*;
use crate::protocol::ROOMS_PAGE;

/// Frames a client may have waiting while the authority has not answered its command yet.
/// Beyond it, further frames are dropped, with one `rate_limited` error in their place.
pub const MAX_WAITING: usize = 64;

/// Largest `offset` passed on to the authority: every page beyond is empty anyway, and Redis'
/// Lua would take a larger number for a float.
const MAX_OFFSET: usize = u32::MAX as usize;

/// A client waiting for the authority: what it waits for, and its frames since.
pub(super) struct Busy {
    pub(super) waiting: Waiting,
    pub(super) later: VecDeque<Result<Request, Error>>,
}

/// What a client waits for.
#[derive(Debug)]
pub(super) enum Waiting {
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
    /// `limited`: the answer lists every room of the client's claim that exists, to page here.
    Rooms {
        offset: usize,
        limited: bool,
    },
    /// An API call (see `api.rs`).
    #[cfg(feature = "api")]
    Api(super::api::Calling),
    /// The answer arrived and is being handled.
    Done,
}

impl Hub {
    /// Starts `item` now, or after what the client is waiting for.
    pub(super) fn submit(&mut self, key: usize, item: Result<Request, Error>) {
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

    pub(super) fn start(&mut self, key: usize, item: Result<Request, Error>) {
        let result = item.and_then(|request| self.start_request(key, request));
        if let Err(error) = result {
            self.send_error(key, error);
        }
    }

    /// The client's wait is over: starts its waiting frames until one has to wait again.
    pub(super) fn finish(&mut self, key: usize) {
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
    pub(super) fn ask(&mut self, key: usize, waiting: Waiting, ask: Ask) {
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

    pub(super) fn start_request(&mut self, key: usize, request: Request) -> Result<(), Error> {
        match request {
            Request::Nick { .. } if self.config.names_from_tokens() => {
                // A user's name is its token's; a guest may not take a name a user could have.
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    "names come from tokens on this server; renaming is not allowed",
                ));
            }
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
                    within: self.clients[key].access.reach(),
                };
                self.ask(key, Waiting::Direct { to, text, ts }, ask);
            }
            Request::Who { room, offset } => {
                self.clients[key].access.check(&room)?;
                let offset = offset.min(MAX_OFFSET);
                let waiting = Waiting::Who(room.clone(), offset);
                self.ask(key, waiting, Ask::Who { room, offset });
            }
            Request::Rooms { offset } => {
                let offset = offset.min(MAX_OFFSET);
                // A client limited by its token's claim sees only the claim's rooms: the
                // authority says which of them exist, and the page is cut here.
                let (ask, limited) = match self.clients[key].access.rooms() {
                    Some(rooms) => (Ask::Sizes(rooms.to_vec()), true),
                    None => (Ask::Rooms { offset }, false),
                };
                self.ask(key, Waiting::Rooms { offset, limited }, ask);
            }
        }
        Ok(())
    }

    pub(super) fn start_join(
        &mut self,
        key: usize,
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), Error> {
        self.clients[key].access.check(&room)?;
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

    pub(super) fn answered(&mut self, key: usize, waiting: Waiting, answer: Answer) {
        match (waiting, answer) {
            (waiting, Answer::Unavailable) => self.fail(key, waiting),
            (_, Answer::Gone) => {
                self.close(key, LOST_CLOSE, LeaveReason::Disconnected);
                return;
            }
            // The only refusal of a registration: the user's `--max-connections-per-user`.
            (Waiting::Register, Answer::Refused(error)) => {
                self.metrics
                    .refuse(crate::metrics::Refusal::UserConnections);
                self.send_error(key, error);
                self.close(key, super::USER_LIMIT_CLOSE, LeaveReason::Disconnected);
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
                let room = &self.config.default_room;
                // A user whose token does not list the default room starts in no room.
                if self.clients[key].access.allows(room)
                    && let Err(error) = self.start_join(key, room.clone(), None, None)
                {
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
            (Waiting::Direct { text, ts, .. }, Answer::Direct { to, targets }) => {
                let frame = Event::Direct {
                    from: &self.clients[key].nick,
                    to: &to,
                    text: &text,
                    ts,
                }
                .encode();
                // Every connection of the recipient on this node (a user may have several).
                for target in targets {
                    if let Some(target) = self.key(target)
                        && target != key
                    {
                        self.send(target, &frame);
                    }
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
            (Waiting::Rooms { offset, limited }, Answer::Rooms { count, page }) => {
                let (count, page) = match limited {
                    true => {
                        let end = page.len().min(offset.saturating_add(ROOMS_PAGE));
                        (page.len(), page.get(offset..end).unwrap_or_default())
                    }
                    false => (count, &page[..]),
                };
                let rooms = RoomSummary::page(page);
                self.send(key, &Event::rooms_page(rooms, count, offset));
            }
            #[cfg(feature = "api")]
            (Waiting::Api(calling), answer) => return self.api_answered(key, calling, answer),
            (waiting, _) => {
                // An authority's mistake, never the client's: it is told `unavailable`. (The
                // answer is not formatted into the log: its Debug code would cost every build.)
                log::warn!("hub: an answer that does not fit the question");
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
    pub(super) fn fail(&mut self, key: usize, waiting: Waiting) {
        match waiting {
            #[cfg(feature = "api")]
            Waiting::Api(_) => {
                Metrics::add(&self.metrics.backend_unavailable, 1);
                return self.api_reply(key, super::api::unavailable());
            }
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
    pub(super) fn undo_join(&mut self, key: usize, room: &str, resync: bool) {
        if let Some(audience) = self.audiences.get_mut(room) {
            audience.pending.retain(|(k, _)| *k != key);
            if resync {
                audience.members.push(key);
            }
        }
        self.drop_if_unused(room);
    }

    pub(super) fn joined(&mut self, key: usize, room: String, joined: Joined) {
        let client = &mut self.clients[key];
        client.rooms.retain(|r| *r != room);
        // Most clients are in one room or two: no spare capacity for four.
        client.rooms.reserve_exact(1);
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
        let audience = &self.audiences[&room];
        if !audience.epoch.is_empty() && audience.epoch != joined.epoch {
            // The join's answer is the first sign of a new epoch: the others are told too.
            let presence = (
                joined.count,
                joined.nicks.iter().map(String::as_str).collect(),
            );
            self.new_epoch(
                &room,
                &joined.epoch,
                joined.last_id,
                &joined.replay,
                presence,
            );
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
}

/// The refusal that stands for frames dropped while a client waits for the authority.
const WAITING_FULL: &str = "too many commands are waiting for the chat backend; later ones \
     were dropped";
