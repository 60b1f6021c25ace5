//! Room events on this node: which of its clients hear what, and when.
//!
//! The delivery itself is `Hub::fan_out` (in `hub.rs`, beside the hub's other deliveries):
//! every room event, from the authority's answer in the same call or from the room's Redis
//! channel (`Hub::room_event` in `late.rs`), goes from there into the queues of the local
//! members that should hear it. What it asks of a room is here: an [`Audience`], its local
//! members in join order, and the members whose join already reflected an event
//! ([`Audience::reflects`]). With an authority that answers later, events and answers cross
//! on the way, so an [`Audience`] also keeps the joins on their way, the senders waiting for
//! their message to come back, and, after a reconnect, the events held until the room's
//! resync ([`Hub::resync`], which delivers what a node missed while cut off).

use std::collections::VecDeque;

use super::{ClientId, Hub, deliver};
use crate::authority::{Joined, Member, RoomEvent};
use crate::protocol::{Event, Frame};

/// Room events kept for one room while its state is fetched again after a reconnect, or for
/// one join on the way; beyond it the oldest go (messages are still recovered from history).
pub const MAX_HELD_EVENTS: usize = 1024;

/// The local side of a room: this node's clients that hear its events. Its fields change only
/// here, through the methods below and the hub's event paths in this file.
#[derive(Default)]
pub(super) struct Audience {
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
    /// Members whose join replayed further than the messages delivered here so far (or that
    /// joined while the room was held), with the last message id their join replayed: a
    /// resync must not send them those again. Gone once the room's `last_id` reaches it.
    floors: Vec<(usize, u64)>,
}

impl Audience {
    pub(super) fn unused(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty() && self.waiters.is_empty()
    }

    /// The local clients that hear the room's events, in join order.
    pub(super) fn members(&self) -> &[usize] {
        &self.members
    }

    /// This life of the room, as the latest join or resync found it.
    pub(super) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// How many senders wait for their message to come back.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// The events held until the room's resync, if it waits for one.
    #[cfg(test)]
    pub(super) fn held(&self) -> Option<&VecDeque<RoomEvent>> {
        self.held.as_ref()
    }

    /// A raw client in its group: it hears the group's frames from now on.
    pub(super) fn enter(&mut self, key: usize) {
        self.members.push(key);
    }

    /// Client `key` asked to join (or resync): it hears no live event until its answer, and
    /// the events meanwhile are kept for it.
    pub(super) fn expect_join(&mut self, key: usize) {
        self.members.retain(|&k| k != key);
        self.fresh.retain(|&(k, _)| k != key);
        self.pending.push((key, VecDeque::new()));
    }

    /// True while a join of client `key` is on its way.
    pub(super) fn expects(&self, key: usize) -> bool {
        self.pending.iter().any(|(k, _)| *k == key)
    }

    /// Client `key`'s join did not happen: it is back where it was (a member, for a resync).
    pub(super) fn unexpect_join(&mut self, key: usize, resync: bool) {
        self.pending.retain(|(k, _)| *k != key);
        if resync {
            self.members.push(key);
        }
    }

    /// Client `key` is a member as `joined` found the room: returns the events that happened
    /// meanwhile, for it to get those its join did not reflect.
    pub(super) fn admit(&mut self, key: usize, joined: Joined) -> VecDeque<RoomEvent> {
        let i = (self.pending.iter().position(|(k, _)| *k == key)).expect("pending join");
        let (_, meanwhile) = self.pending.swap_remove(i);
        if self.members.is_empty() && self.waiters.is_empty() {
            self.last_id = joined.last_id;
        }
        self.epoch = joined.epoch;
        self.members.push(key);
        self.fresh.push((key, joined.ev));
        if self.held.is_some() || joined.last_id > self.last_id {
            self.floors.push((key, joined.last_id));
        }
        meanwhile
    }

    /// Room event `ev` is being delivered: the members whose join it is past are fresh no
    /// more (once an event is past a member's join, every later one is too).
    pub(super) fn passed(&mut self, ev: u64) {
        self.fresh.retain(|&(_, joined_at)| joined_at >= ev);
    }

    /// Whether member `key`'s join already reflected room event `ev`: it skips it.
    pub(super) fn reflects(&self, key: usize, ev: u64) -> bool {
        self.fresh
            .iter()
            .any(|&(k, joined_at)| k == key && joined_at >= ev)
    }

    /// Client `key` left the room.
    pub(super) fn leave(&mut self, key: usize) {
        self.members.retain(|&k| k != key);
        self.fresh.retain(|&(k, _)| k != key);
        self.floors.retain(|&(k, _)| k != key);
    }

    /// Client `key` is gone: nothing here waits for it or delivers to it any more.
    pub(super) fn forget(&mut self, key: usize) {
        self.leave(key);
        self.pending.retain(|(k, _)| *k != key);
        self.waiters.retain(|&(k, _)| k != key);
        self.floors.retain(|&(k, _)| k != key);
    }

    /// An event from an authority that answers later: kept (`None`) while the room is held
    /// until its resync; else kept for each join on its way too, and given back to deliver.
    pub(super) fn hold(&mut self, event: RoomEvent) -> Option<RoomEvent> {
        if let Some(held) = &mut self.held {
            keep(held, event);
            return None;
        }
        for (_, meanwhile) in &mut self.pending {
            keep(meanwhile, event.clone());
        }
        Some(event)
    }

    /// Message `id` was delivered here: returns the senders that waited for it (or for an
    /// earlier one), which wait no more.
    pub(super) fn back(&mut self, id: u64) -> Vec<usize> {
        self.last_id = self.last_id.max(id);
        // Every member has what a join's replay gave ahead of the others now.
        let last = self.last_id;
        self.floors.retain(|&(_, floor)| floor > last);
        if self.waiters.is_empty() {
            return Vec::new();
        }
        let last = self.last_id;
        let mut done = Vec::new();
        self.waiters.retain(|&(k, w)| {
            if w <= last {
                done.push(k);
            }
            w > last
        });
        done
    }

    /// Client `key` said message `id`, whose event has not come back yet: it waits for it
    /// (true), or the message is out already (false).
    pub(super) fn await_echo(&mut self, key: usize, id: u64) -> bool {
        let waits = self.last_id < id;
        if waits {
            self.waiters.push((key, id));
        }
        waits
    }
}

impl Hub {
    /// Forgets a room nobody here uses any more, and tells the authority.
    pub(super) fn drop_if_unused(&mut self, room: &str) {
        if self.audiences.get(room).is_some_and(Audience::unused) {
            self.audiences.remove(room);
            self.authority.unused(room);
        }
    }

    /// A new connection to the authority's store: hold room events until each room is
    /// resynced, and tell the authority who is here.
    pub(super) fn resyncing(&mut self) {
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
                user: c.user,
                rooms: c.rooms.clone(),
            })
            .collect();
        self.authority.restore(members);
    }

    /// One room changed epoch under this node: hold its events until its resync.
    pub(super) fn hold(&mut self, room: &str) {
        if let Some(audience) = self.audiences.get_mut(room) {
            audience.held.get_or_insert_with(VecDeque::new);
        }
    }

    /// A room's state after a reconnect or a [`Hub::hold`]: `(epoch, last id, last event)`,
    /// its history and `(member count, first nicks)`. Delivers what was said while this node
    /// was cut off (as far as the history still has it), then the events held back since; or,
    /// if the room's epoch changed, tells every member so ([`Hub::new_epoch`]).
    pub(super) fn resync(
        &mut self,
        room: &str,
        (epoch, last_id, ev): (String, u64, u64),
        history: Vec<Frame>,
        (count, nicks): (usize, Vec<String>),
    ) {
        let Some(audience) = self.audiences.get_mut(room) else {
            return;
        };
        let held = audience.held.take().unwrap_or_default();
        let floors = std::mem::take(&mut audience.floors);
        if audience.epoch == epoch || audience.epoch.is_empty() {
            let first = (last_id + 1).saturating_sub(history.len() as u64);
            let Hub {
                clients,
                slow,
                metrics,
                ..
            } = self;
            if first > audience.last_id + 1 && !audience.epoch.is_empty() {
                // Messages were forgotten before this node could deliver them: the members
                // that missed them are told, as a recovery would tell them (`complete:
                // false`), and get what is left.
                log::warn!(
                    "room {room}: messages {}..{} were evicted before this node could deliver them",
                    audience.last_id + 1,
                    first - 1
                );
                let told = Event::Room {
                    room,
                    epoch: &epoch,
                    members: nicks.iter().map(String::as_str).collect(),
                    count,
                    last_id,
                    complete: Some(false),
                }
                .encode();
                for &k in &audience.members {
                    let floor = floors.iter().find(|&&(f, _)| f == k).map(|&(_, l)| l);
                    if floor.unwrap_or(audience.last_id) + 1 < first {
                        deliver(clients, slow, metrics, k, &told);
                    }
                }
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
            audience.epoch = epoch;
            audience.last_id = audience.last_id.max(last_id);
        } else {
            let presence = (count, nicks.iter().map(String::as_str).collect());
            self.new_epoch(room, &epoch, last_id, &history, presence);
        }
        self.message_back(room, last_id);
        for event in held {
            if event.ev > ev {
                self.room_event(event);
            }
        }
    }

    /// `room` has a new epoch: the store lost the room (Redis flushed) or came back older
    /// than it was (a restart that may have lost writes starts a new era, see scripts.rs's
    /// WITNESS), and this node learned it from a resync or from a join's answer. Senders
    /// still waiting for a message of the old epoch will never see it. Every member is told,
    /// as if it had joined again with a cursor of the old epoch: `room` with the new epoch
    /// and `complete: false`, then `replay`, the new epoch's history.
    pub(super) fn new_epoch(
        &mut self,
        room: &str,
        epoch: &str,
        last_id: u64,
        replay: &[Frame],
        (count, members): (usize, Vec<&str>),
    ) {
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
        log::warn!(
            "room {room}: epoch {} became {epoch}; telling its {} members here",
            audience.epoch,
            audience.members.len()
        );
        let told = Event::Room {
            room,
            epoch,
            members,
            count,
            last_id,
            complete: Some(false),
        }
        .encode();
        for &k in &audience.members {
            deliver(clients, slow, metrics, k, &told);
            for frame in replay {
                deliver(clients, slow, metrics, k, frame);
            }
        }
        let lost_waiters: Vec<usize> = audience.waiters.drain(..).map(|(k, _)| k).collect();
        audience.fresh.clear();
        audience.epoch = epoch.to_string();
        audience.last_id = last_id;
        for key in lost_waiters {
            self.echo_lost(key);
        }
    }
}

/// Keeps `event` in a bounded buffer of held events, forgetting the oldest when it is full.
fn keep(buffer: &mut VecDeque<RoomEvent>, event: RoomEvent) {
    if buffer.len() >= MAX_HELD_EVENTS {
        buffer.pop_front();
    }
    buffer.push_back(event);
}
