//! The authority of a single node: nicks, rooms, ids and history, in memory.
//!
//! Every [`Ask`] is answered at once, and the room events it causes are pushed to the hub's
//! `events` vector before [`Local::ask`] returns, so the hub delivers them in the same step.
//! A message (a client's `say`, or the API's publish) is said in one step, `Local::said`: it
//! gets its id and is encoded, once, and the frame goes to the room's history and, inside its
//! event, to the hub for the members; it leaves history through [`Room::replay`] when a
//! client joins. With a durable store (`--data-dir`), a message first passes the store's gate
//! (`durable.rs`), which may keep it waiting until its id is reserved.
//!
//! Besides the room limits, this is where memory is bounded: `--history` and
//! `--history-bytes` per room (in [`Room`]), `--history-total-bytes` for all rooms together
//! (the server's oldest message goes first), `--max-rooms` (the least recently used empty room
//! is evicted) and `--max-rooms-per-address`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(feature = "store")]
mod durable;

use super::{Address, Answer, Ask, Authority, ClientId, History, Joined, RoomEvent, What};
use crate::config::{Config, Protocol};
use crate::metrics::Metrics;
use crate::protocol::{Error, Event, LeaveReason, ROOMS_PAGE};
use crate::room::Room;

/// One registered client.
struct Entry {
    serial: u64,
    nick: String,
    address: Address,
    /// The rooms it is in.
    rooms: Vec<String>,
    /// It proved with a token that it is user `nick`, whose other connections share the nick.
    user: bool,
}

/// A message on its way to an id: who asked (a client's `say`, or the API's slot for a
/// publish), the nick shown and whether it came through the API, the text and the time.
#[derive(Debug)]
struct Waiter {
    client: ClientId,
    from: (String, bool),
    text: String,
    ts: u64,
}

/// A room and the number of its last event.
struct Place {
    room: Room,
    ev: u64,
    /// Connections in the room of a user who is in it already through another connection:
    /// the room's members list each user once (one `join`, one line in `who`), and these
    /// stand in when that connection leaves.
    extra: Vec<ClientId>,
    /// The ids the durable store has reserved for the room (`--data-dir`).
    #[cfg(feature = "store")]
    reservation: durable::Reservation,
}

/// The in-memory authority. See the module documentation.
pub struct Local {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    clients: Registry,
    /// Lowercased nick → holder; nicks are unique ignoring case.
    nicks: HashMap<String, ClientId>,
    /// Lowercased user name → the user's connections besides its holder in `nicks`: a user
    /// may be connected several times (guests, and clients without tokens, never are).
    more: HashMap<String, Vec<ClientId>>,
    /// Every room, empty ones with history included.
    rooms: HashMap<String, Place>,
    /// Non-empty rooms held by each address: a room is held by the address of the client that
    /// made it non-empty (created it, or joined it empty) until it is empty again.
    held: HashMap<Address, usize>,
    /// Bytes of messages all rooms remember together (`--history-total-bytes`).
    history_bytes: usize,
    /// Every room with history, by the server-wide sequence number of its oldest message:
    /// the first entry is the message to forget when the total is over the limit.
    oldest: BTreeMap<u64, String>,
    /// Numbers every remembered message, server-wide, oldest first.
    next_seq: u64,
    next_guest: u64,
    /// Numbers renames, so that one rename announced in several rooms is heard once.
    renames: u64,
    /// Prefix of every room epoch: different for every start of the server.
    epoch_base: String,
    rooms_created: u64,
    /// Counts questions, to order empty rooms by how recently they were used.
    tick: u64,
    /// The durable store (`--data-dir`, feature `store`), if there is one.
    #[cfg(feature = "store")]
    durable: Option<durable::Durable>,
}

impl Local {
    /// An authority with no clients and no rooms.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        Local {
            config,
            metrics,
            clients: Registry::default(),
            nicks: HashMap::new(),
            more: HashMap::new(),
            rooms: HashMap::new(),
            held: HashMap::new(),
            history_bytes: 0,
            oldest: BTreeMap::new(),
            next_seq: 0,
            next_guest: 1,
            renames: 0,
            epoch_base: radix36(started),
            rooms_created: 0,
            tick: 0,
            #[cfg(feature = "store")]
            durable: None,
        }
    }

    /// An authority whose rooms are kept in `store` too (`--data-dir`), starting with the
    /// rooms the store read back.
    #[cfg(feature = "store")]
    pub fn with_store(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        store: crate::store::Store,
        (saved, starts): (Vec<crate::store::Saved>, u64),
    ) -> Self {
        let mut local = Local::new(config, metrics);
        // The store counts its starts: with it in every new epoch, epochs differ across
        // restarts even where the clock does not (a gateway without a real-time clock).
        local.epoch_base = format!("{}.{}", radix36(starts.into()), local.epoch_base);
        local.reopen(saved);
        local.durable = Some(durable::Durable::new(store));
        local
    }

    /// A room as the store kept it, back in memory (no members, so it is held by nobody).
    #[cfg(feature = "store")]
    fn restore_room(&mut self, saved: crate::store::Saved) {
        let capacity = (self.config.history, self.config.history_bytes);
        let ids = (saved.last_id, saved.reserved, saved.floor);
        let room = Room::reopened(saved.epoch, capacity, ids, saved.messages);
        self.history_bytes += room.history_bytes();
        if let Some(seq) = room.oldest_seq() {
            self.oldest.insert(seq, saved.name.clone());
        }
        let place = Place {
            reservation: durable::Reservation::at(room.last_id()),
            room,
            ev: 0,
            extra: Vec::new(),
        };
        self.rooms.insert(saved.name, place);
        Metrics::add(&self.metrics.rooms, 1);
        self.metrics
            .history_bytes
            .store(self.history_bytes as u64, Relaxed);
    }

    fn raw(&self) -> bool {
        self.config.protocol == Protocol::Raw
    }

    fn register(
        &mut self,
        client: ClientId,
        address: Address,
        named: bool,
        user: Option<String>,
    ) -> Answer {
        let is_user = user.is_some();
        let nick = if let Some(name) = user {
            // Guests cannot rename when tokens are in use and a user's name cannot look like
            // a guest's (see `crate::token`), so the name is free or the user's own.
            let lower = name.to_ascii_lowercase();
            let connected = match self.nicks.get(&lower) {
                Some(_) => 1 + self.more.get(&lower).map_or(0, Vec::len),
                None => 0,
            };
            if connected >= self.config.max_connections_per_user {
                return Answer::Refused(super::user_has_too_many(
                    self.config.max_connections_per_user,
                ));
            }
            match self.nicks.get(&lower) {
                // Another connection of the same user (names are one ignoring case): it takes
                // the spelling the user already has, so that all its connections share one
                // nick, as `part` (heirs) and the members lists expect.
                Some(holder) => {
                    let nick = self.clients[holder].nick.clone();
                    self.more.entry(lower).or_default().push(client);
                    nick
                }
                None => {
                    self.nicks.insert(lower, client);
                    name
                }
            }
        } else if named {
            let nick = loop {
                let candidate = format!("guest-{}", self.next_guest);
                self.next_guest += 1;
                if !self.nicks.contains_key(&candidate) {
                    break candidate;
                }
            };
            self.nicks.insert(nick.clone(), client);
            nick
        } else {
            String::new()
        };
        let entry = Entry {
            serial: client.serial,
            nick: nick.clone(),
            address,
            rooms: Vec::new(),
            user: is_user,
        };
        self.clients.insert(client, entry);
        Answer::Registered(nick)
    }

    fn rename(&mut self, client: ClientId, nick: String, events: &mut Vec<RoomEvent>) -> Answer {
        let lower = nick.to_ascii_lowercase();
        if self
            .nicks
            .get(&lower)
            .is_some_and(|&holder| holder != client)
        {
            return Answer::NickTaken;
        }
        let entry = self.clients.get_mut(&client).expect("registered");
        let old = std::mem::replace(&mut entry.nick, nick);
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(lower, client);
        self.renames += 1;
        for name in &entry.rooms {
            let place = self.rooms.get_mut(name).expect("a client's rooms exist");
            place.ev += 1;
            events.push(RoomEvent {
                room: name.clone(),
                ev: place.ev,
                subject: Some(client),
                what: What::Nick {
                    old: old.clone(),
                    nick: entry.nick.clone(),
                    count: place.room.members().len(),
                    tag: self.renames,
                },
            });
        }
        Answer::Renamed { old }
    }

    fn join(
        &mut self,
        client: ClientId,
        name: String,
        since: Option<u64>,
        epoch: Option<String>,
        events: &mut Vec<RoomEvent>,
    ) -> Answer {
        let entry = &self.clients[&client];
        let ev = if entry.rooms.contains(&name) {
            self.rooms[&name].ev // a resync: nothing to announce
        } else if let Some(place) = self.user_is_in(client, &name) {
            // Another connection of the same user is in the room: nothing to announce.
            place.extra.push(client);
            let ev = place.ev;
            let entry = self.clients.get_mut(&client).expect("registered");
            entry.rooms.reserve_exact(1);
            entry.rooms.push(name.clone());
            ev
        } else {
            if let Err(error) = self.enter(client, &name) {
                return Answer::Refused(error);
            }
            let place = self.rooms.get_mut(&name).expect("entered");
            place.ev += 1;
            if self.config.protocol != Protocol::Raw {
                events.push(RoomEvent {
                    room: name.clone(),
                    ev: place.ev,
                    subject: Some(client),
                    what: What::Join {
                        nick: self.clients[&client].nick.clone(),
                        count: place.room.members().len(),
                    },
                });
            }
            place.ev
        };
        if self.raw() {
            // Raw clients are sent nothing about the group.
            return Answer::Joined(Joined {
                epoch: String::new(),
                last_id: 0,
                ev,
                count: 0,
                nicks: Vec::new(),
                replay: Vec::new(),
                complete: None,
            });
        }
        let room = &self.rooms[&name].room;
        let replay = room.replay(since, epoch.as_deref());
        Answer::Joined(Joined {
            epoch: room.epoch().to_string(),
            last_id: room.last_id(),
            ev,
            count: room.members().len(),
            nicks: self.nicks_of(room, 0),
            replay: replay.messages.into_iter().cloned().collect(),
            complete: replay.complete,
        })
    }

    /// Room `name`, if another connection of `client`'s user is in it.
    fn user_is_in(&mut self, client: ClientId, name: &str) -> Option<&mut Place> {
        let entry = &self.clients[&client];
        if !entry.user {
            return None;
        }
        let lower = entry.nick.to_ascii_lowercase();
        let first = self.nicks.get(&lower).into_iter();
        let others = self.more.get(&lower).into_iter().flatten();
        let mut connections = first.chain(others);
        let clients = &self.clients;
        let there = connections.any(|c| *c != client && clients[c].rooms.iter().any(|r| r == name));
        if there {
            self.rooms.get_mut(name)
        } else {
            None
        }
    }

    /// Makes `client` a member of room `name`, creating the room if needed, within the limits
    /// on rooms per address and in all (the hub checks the limit per client).
    fn enter(&mut self, client: ClientId, name: &str) -> Result<(), Error> {
        let address = self.clients[&client].address;
        // The default room is everybody's: nobody holds it, no limit keeps it from being
        // created, and it is never evicted (otherwise a few addresses filling the limits could
        // leave newcomers without one).
        let default = name == self.config.default_room;
        let empty = !default
            && self
                .rooms
                .get(name)
                .is_none_or(|p| p.room.members().is_empty());
        if empty
            && self.held.get(&address).copied().unwrap_or(0) >= self.config.max_rooms_per_address
        {
            return Err(super::address_holds_too_many(
                self.config.max_rooms_per_address,
            ));
        }
        if !self.rooms.contains_key(name) {
            if !default {
                self.make_room_for_one_more()?;
            }
            self.add_room(name);
        }
        let room = &mut self.rooms.get_mut(name).expect("room exists").room;
        if empty {
            *self.held.entry(address).or_default() += 1;
            room.holder = Some(address);
        }
        room.add(client);
        let entry = self.clients.get_mut(&client).expect("registered");
        // Most clients are in one room or two: no spare capacity for four.
        entry.rooms.reserve_exact(1);
        entry.rooms.push(name.to_string());
        Ok(())
    }

    fn add_room(&mut self, name: &str) {
        self.rooms_created += 1;
        let epoch = format!("{}-{}", self.epoch_base, radix36(self.rooms_created.into()));
        #[cfg(feature = "store")]
        let reservation = self.created(name, &epoch);
        let room = Room::new(epoch, self.config.history, self.config.history_bytes);
        let place = Place {
            room,
            ev: 0,
            extra: Vec::new(),
            #[cfg(feature = "store")]
            reservation,
        };
        self.rooms.insert(name.to_string(), place);
        Metrics::add(&self.metrics.rooms, 1);
    }

    /// Evicts the least recently used empty room if the server holds `--max-rooms` rooms
    /// besides the default room.
    fn make_room_for_one_more(&mut self) -> Result<(), Error> {
        let default = &self.config.default_room;
        let others = self.rooms.len() - usize::from(self.rooms.contains_key(default));
        if others < self.config.max_rooms {
            return Ok(());
        }
        #[cfg(feature = "store")]
        let idle = |p: &Place| p.reservation.waiting.is_empty();
        #[cfg(not(feature = "store"))]
        let idle = |_: &Place| true;
        let oldest_empty = self
            .rooms
            .iter()
            // A room whose messages wait for their ids is in use, members or not.
            .filter(|(name, p)| p.room.members().is_empty() && idle(p) && *name != default)
            .min_by_key(|(_, p)| p.room.idle_since)
            .map(|(name, _)| name.clone());
        let Some(name) = oldest_empty else {
            return Err(super::too_many_rooms(self.config.max_rooms));
        };
        self.drop_room(&name);
        Ok(())
    }

    fn drop_room(&mut self, name: &str) {
        let place = self.rooms.remove(name).expect("the room exists");
        #[cfg(feature = "store")]
        self.store(crate::store::Op::Drop {
            room: name.to_string(),
        });
        if let Some(seq) = place.room.oldest_seq() {
            self.oldest.remove(&seq);
        }
        self.history_bytes -= place.room.history_bytes();
        self.metrics
            .history_bytes
            .store(self.history_bytes as u64, Relaxed);
        self.metrics.rooms.fetch_sub(1, Relaxed);
    }

    /// Takes `client` out of room `name` and announces why.
    fn part(
        &mut self,
        client: ClientId,
        name: &str,
        reason: LeaveReason,
        events: &mut Vec<RoomEvent>,
    ) {
        let Some(place) = self.rooms.get_mut(name) else {
            return;
        };
        if let Some(i) = place.extra.iter().position(|&c| c == client) {
            place.extra.swap_remove(i);
            return; // the user is still in the room through its other connection
        }
        let clients = &self.clients;
        let nick = &clients[&client].nick;
        // The user's other connection in the room, if any, takes this one's place.
        let heir = place
            .extra
            .iter()
            .position(|c| clients[c].user && clients[c].nick.eq_ignore_ascii_case(nick));
        let room = &mut place.room;
        let before = room.members().len();
        match heir {
            Some(i) => {
                room.replace(client, place.extra.swap_remove(i));
            }
            None => {
                room.remove(client);
            }
        }
        // The room stays held by an address while a client from it is in the room; when the
        // last one leaves, the hold passes to a remaining member's address (or ends with the
        // last member). Otherwise another address could pin this one's quota by staying in
        // rooms it created.
        let leaver = clients[&client].address;
        let still_there = |k: &ClientId| clients[k].address == leaver;
        if room.holder == Some(leaver) && !room.members().iter().any(still_there) {
            let heir = room.members().first().map(|k| clients[k].address);
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
        let empty = room.members().is_empty();
        if empty {
            room.idle_since = self.tick;
        }
        if self.config.protocol == Protocol::Raw {
            // A group has no history to keep and nobody to tell; the default one stays.
            if empty && name != self.config.default_room {
                self.drop_room(name);
            }
            return;
        }
        if heir.is_some() {
            return; // the user is still there
        }
        place.ev += 1;
        events.push(RoomEvent {
            room: name.to_string(),
            ev: place.ev,
            subject: Some(client),
            what: What::Leave {
                nick: clients[&client].nick.clone(),
                reason,
                count: before,
            },
        });
    }

    /// A message from the HTTP API: like a `say`, by nobody in the room, which is created if
    /// need be (within `--max-rooms`, held by nobody).
    fn publish(
        &mut self,
        client: ClientId,
        name: String,
        from: String,
        text: String,
        ts: u64,
        events: &mut Vec<RoomEvent>,
    ) -> Option<Answer> {
        if !self.rooms.contains_key(&name) {
            if name != self.config.default_room
                && let Err(error) = self.make_room_for_one_more()
            {
                return Some(Answer::Refused(error));
            }
            self.add_room(&name);
        }
        let place = self.rooms.get_mut(&name).expect("the room exists");
        if place.room.members().is_empty() {
            // A room only the API uses is in use: the least recently used goes first.
            place.room.idle_since = self.tick;
        }
        let waiter = Waiter {
            client,
            from: (from, true),
            text,
            ts,
        };
        #[cfg(feature = "store")]
        let waiter = match self.gate(&name, waiter) {
            Ok(waiter) => waiter,
            Err(later) => return later,
        };
        Some(self.said(name, waiter, events))
    }

    /// Says `waiter`'s message in room `name`: it gets the room's next id, is encoded once,
    /// announced, and kept in the room's history (and the durable store, if there is one):
    /// the history and the members get the same bytes.
    fn said(&mut self, name: String, waiter: Waiter, events: &mut Vec<RoomEvent>) -> Answer {
        let place = self.rooms.get_mut(&name).expect("the room exists");
        let id = place.room.next_id();
        place.ev += 1;
        let (nick, api) = waiter.from;
        let frame = Event::Message {
            room: &name,
            id,
            from: &nick,
            text: &waiter.text,
            ts: waiter.ts,
            api,
        }
        .encode();
        events.push(RoomEvent {
            room: name.clone(),
            ev: place.ev,
            subject: (!api).then_some(waiter.client),
            what: What::Message {
                id,
                frame: frame.clone(),
            },
        });
        // Kept in history, the very bytes the members get, numbered server-wide: past
        // `--history-total-bytes` the server's oldest message goes first.
        let seq = self.next_seq;
        self.next_seq += 1;
        let room = &mut place.room;
        let oldest_before = room.oldest_seq();
        // The durable store (`--data-dir`) keeps it too: a reference count, only if there is one.
        #[cfg(feature = "store")]
        let durable = self.durable.is_some().then(|| frame.clone());
        let (added, forgotten) = room.remember(frame, seq);
        #[cfg(feature = "store")]
        {
            let oldest = room.oldest_id();
            if let Some(frame) = durable.filter(|_| added > 0) {
                let room = name.clone();
                self.store(crate::store::Op::Put {
                    room,
                    id,
                    seq,
                    frame,
                });
            }
            if forgotten > 0 {
                self.trimmed(&name, oldest);
            }
        }
        self.history_changed(&name, oldest_before, added, forgotten);
        #[cfg(feature = "store")]
        self.given(&name);
        Answer::Said { room: name, id }
    }

    /// The API's view of a room's history.
    fn history(&self, name: &str, since: u64) -> Answer {
        let Some(place) = self.rooms.get(name) else {
            return Answer::History(None);
        };
        let room = &place.room;
        let replay = room.replay(Some(since), Some(room.epoch()));
        Answer::History(Some(History {
            epoch: room.epoch().to_string(),
            last_id: room.last_id(),
            complete: replay.complete.unwrap_or(true),
            messages: replay.messages.into_iter().cloned().collect(),
        }))
    }

    /// Whoever holds nick `to` (all its connections), if one of them is in a room of `within`
    /// (sorted, see `crate::access`; `None`: anywhere); else unknown, as a nick nobody holds.
    fn direct(&self, to: &str, within: Option<Vec<String>>) -> Answer {
        let lower = to.to_ascii_lowercase();
        let Some(&target) = self.nicks.get(&lower) else {
            return Answer::UnknownRecipient;
        };
        let mut targets = vec![target];
        targets.extend(self.more.get(&lower).into_iter().flatten());
        let reachable = within.is_none_or(|rooms| {
            targets.iter().any(|t| {
                let theirs = &self.clients[t].rooms;
                theirs.iter().any(|r| rooms.binary_search(r).is_ok())
            })
        });
        match reachable {
            true => Answer::Direct {
                to: self.clients[&target].nick.clone(),
                targets,
            },
            false => Answer::UnknownRecipient,
        }
    }

    /// Which of `names` exist, with their member counts, in the order given.
    fn sizes(&self, names: Vec<String>) -> Answer {
        let page: Vec<(String, usize)> = names
            .into_iter()
            .filter_map(|name| {
                let members = self.rooms.get(&name)?.room.members().len();
                Some((name, members))
            })
            .collect();
        Answer::Rooms {
            count: page.len(),
            page,
        }
    }

    /// A page of every room, sorted by name, from `offset`.
    fn rooms_page(&self, offset: usize) -> Answer {
        // Sorted here rather than kept sorted: a `rooms` request is rare and rate limited,
        // and a hash map is the cheaper index for every other question.
        let mut names: Vec<&String> = self.rooms.keys().collect();
        names.sort_unstable();
        Answer::Rooms {
            count: names.len(),
            page: names
                .into_iter()
                .skip(offset)
                .take(ROOMS_PAGE)
                .map(|name| (name.clone(), self.rooms[name].room.members().len()))
                .collect(),
        }
    }

    /// One page of a room's member nicks: at most `--presence-limit`, from `offset`.
    fn nicks_of(&self, room: &Room, offset: usize) -> Vec<String> {
        room.members()
            .iter()
            .skip(offset)
            .take(self.config.presence_limit)
            .map(|k| self.clients[k].nick.clone())
            .collect()
    }
}

impl Authority for Local {
    fn ask(&mut self, client: ClientId, ask: Ask, events: &mut Vec<RoomEvent>) -> Option<Answer> {
        self.tick += 1;
        // Registration, and the HTTP API (whose calls are nobody's), need no registered client.
        let anyone = matches!(
            ask,
            Ask::Register { .. }
                | Ask::Publish { .. }
                | Ask::History { .. }
                | Ask::Rooms { .. }
                | Ask::Sizes(_)
        );
        if !anyone && self.clients.get(&client).is_none() {
            return Some(Answer::Gone);
        }
        Some(match ask {
            Ask::Register {
                address,
                named,
                user,
            } => self.register(client, address, named, user),
            Ask::Publish {
                room,
                from,
                text,
                ts,
            } => return self.publish(client, room, from, text, ts, events),
            Ask::History { room, since } => self.history(&room, since),
            Ask::Nick(nick) => self.rename(client, nick, events),
            Ask::Join { room, since, epoch } => self.join(client, room, since, epoch, events),
            Ask::Leave(room) => {
                let entry = self.clients.get_mut(&client).expect("registered");
                match entry.rooms.iter().position(|r| *r == room) {
                    Some(i) => {
                        entry.rooms.remove(i);
                        self.part(client, &room, LeaveReason::Left, events);
                        Answer::Left
                    }
                    None => Answer::NotMember,
                }
            }
            Ask::Say { room, text, ts } => {
                let entry = &self.clients[&client];
                if !entry.rooms.contains(&room) {
                    return Some(Answer::NotMember);
                }
                let from = (entry.nick.clone(), false);
                let waiter = Waiter {
                    client,
                    from,
                    text,
                    ts,
                };
                #[cfg(feature = "store")]
                let waiter = match self.gate(&room, waiter) {
                    Ok(waiter) => waiter,
                    Err(later) => return later,
                };
                self.said(room, waiter, events)
            }
            Ask::Direct { to, within, .. } => self.direct(&to, within),
            Ask::Who { room, offset } => match self.rooms.get(&room) {
                Some(p) => Answer::Members {
                    count: p.room.members().len(),
                    nicks: self.nicks_of(&p.room, offset),
                },
                None => Answer::Members {
                    count: 0,
                    nicks: Vec::new(),
                },
            },
            Ask::Sizes(names) => self.sizes(names),
            Ask::Rooms { offset } => self.rooms_page(offset),
        })
    }

    fn bye(&mut self, client: ClientId, reason: LeaveReason, events: &mut Vec<RoomEvent>) {
        self.tick += 1;
        #[cfg(feature = "store")]
        self.forget_waiting(client);
        let Some(entry) = self.clients.get_mut(&client) else {
            return;
        };
        let rooms = std::mem::take(&mut entry.rooms);
        for name in &rooms {
            self.part(client, name, reason, events);
        }
        let entry = self.clients.remove(&client).expect("registered");
        let lower = entry.nick.to_ascii_lowercase();
        if let Some(others) = self.more.get_mut(&lower) {
            // A user with other connections: one of them holds the name now, if this did.
            others.retain(|&c| c != client);
            if self.nicks.get(&lower) == Some(&client) {
                let next = others.pop().expect("more holds no empty lists");
                self.nicks.insert(lower.clone(), next);
            }
            if others.is_empty() {
                self.more.remove(&lower);
            }
        } else if self.nicks.get(&lower) == Some(&client) {
            self.nicks.remove(&lower);
        }
    }

    #[cfg(feature = "store")]
    fn stored(
        &mut self,
        report: crate::store::Report,
        events: &mut Vec<RoomEvent>,
    ) -> Vec<(ClientId, Answer)> {
        Local::stored(self, report, events)
    }

    fn shutdown(&mut self) {
        #[cfg(feature = "store")]
        self.close_store();
    }
}

impl Local {
    /// Room `name`'s history grew by `added` bytes and forgot `forgotten` (its oldest message
    /// was number `oldest_before` on the server): the total and the index of every room's
    /// oldest message follow, then the oldest messages on the server are forgotten until all
    /// rooms together are within `--history-total-bytes`.
    fn history_changed(
        &mut self,
        name: &str,
        oldest_before: Option<u64>,
        added: usize,
        forgotten: usize,
    ) {
        self.history_bytes = self.history_bytes + added - forgotten;
        let oldest = self.rooms.get(name).and_then(|p| p.room.oldest_seq());
        if oldest != oldest_before {
            if let Some(seq) = oldest_before {
                self.oldest.remove(&seq);
            }
            if let Some(seq) = oldest {
                self.oldest.insert(seq, name.to_string());
            }
        }
        self.forget_over_total();
    }

    /// Forgets the oldest messages on the server until all rooms together are within
    /// `--history-total-bytes`.
    fn forget_over_total(&mut self) {
        while self.history_bytes > self.config.history_total_bytes {
            let Some((_, name)) = self.oldest.pop_first() else {
                break;
            };
            let room = &mut self.rooms.get_mut(&name).expect("indexed rooms exist").room;
            self.history_bytes -= room.forget_oldest();
            #[cfg(feature = "store")]
            let oldest = room.oldest_id();
            if let Some(seq) = room.oldest_seq() {
                self.oldest.insert(seq, name.clone());
            }
            #[cfg(feature = "store")]
            self.trimmed(&name, oldest);
        }
        self.metrics
            .history_bytes
            .store(self.history_bytes as u64, Relaxed);
    }
}

/// The registered clients, by their slot in the hub: the hub's slab keys are dense and reused,
/// so a vector indexed by key holds them without a hash table's spare buckets.
#[derive(Default)]
struct Registry(Vec<Option<Entry>>);

impl Registry {
    fn get(&self, id: &ClientId) -> Option<&Entry> {
        let entry = self.0.get(id.key)?.as_ref()?;
        (entry.serial == id.serial).then_some(entry)
    }

    fn get_mut(&mut self, id: &ClientId) -> Option<&mut Entry> {
        let entry = self.0.get_mut(id.key)?.as_mut()?;
        (entry.serial == id.serial).then_some(entry)
    }

    fn insert(&mut self, id: ClientId, entry: Entry) {
        if self.0.len() <= id.key {
            self.0.resize_with(id.key + 1, || None);
        }
        self.0[id.key] = Some(entry);
    }

    fn remove(&mut self, id: &ClientId) -> Option<Entry> {
        self.get(id)?;
        self.0[id.key].take()
    }
}

impl std::ops::Index<&ClientId> for Registry {
    type Output = Entry;

    fn index(&self, id: &ClientId) -> &Entry {
        self.get(id).expect("a registered client")
    }
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
