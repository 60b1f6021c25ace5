//! Late answers: what an authority that answers later (Redis; a say that waits for the durable
//! store) needs around the hub's commands, and nothing on a single node's path.
//!
//! A unit asks and says what to do with the answer (`Hub::ask` in `commands.rs`). When the
//! answer does not come at once, the client is *busy* ([`Busy`]) until it does: its later
//! frames wait here, in order (at most [`MAX_WAITING`]), so the answer to one command always
//! comes before the answer to the next. Answers enter through `Hub::late_answer` (from
//! `Notice::Answer`) and leave through the unit's `then`, exactly as an answer given at once.
//!
//! One thing only a late answer can do is overtake the event it answers: Redis may answer a
//! `say` before the message comes back on the room's channel. Such an answer is held until
//! the message is delivered here (`Audience::waiters`), so the sender sees its message in the
//! same place among the room's events as everybody else.
//!
//! Room events from such an authority come back too (`Notice::Room`, [`Hub::room_event`]):
//! they may meet a join on its way (kept for it, `Audience::pending`), a room held until its
//! resync after a reconnect (`Audience::held`, resynced by `Hub::resync` in `audience.rs`),
//! and the senders waiting for them, before `Hub::fan_out` delivers them. Events the
//! authority in memory makes go straight to `Hub::fan_out`, without any of this.

use std::collections::VecDeque;

use super::commands::Then;
use super::{ClientId, Command, Hub, LOST_CLOSE};
use crate::authority::{Answer, RoomEvent, What};
use crate::config::Protocol;
use crate::protocol::{Error, ErrorCode, LeaveReason};

/// Frames a client may have waiting while the authority has not answered its command yet.
/// Beyond it, or beyond `--queue-bytes` for its waiting frames and its queued events together,
/// further frames are dropped, with one `rate_limited` error in their place.
pub const MAX_WAITING: usize = 64;

/// What a waiting command costs besides its strings: the command, its boxed `Wire` and their
/// allocations, rounded up (the inbox's share in the worst-case memory uses the same figure).
const WAITING_OVERHEAD: usize = 512;

/// A client waiting for the authority: what it waits for, and its frames since.
#[derive(Default)]
pub(super) struct Busy {
    /// What the unit does with the answer, until the answer arrives.
    then: Option<Then>,
    /// A `said` answer that overtook its message, with its `then`: handed over when the
    /// message comes back.
    echo: Option<(Then, Answer)>,
    pub(super) later: VecDeque<Command>,
}

impl Busy {
    /// Still waiting: for an answer, or for its message to come back.
    fn waiting(&self) -> bool {
        self.then.is_some() || self.echo.is_some()
    }
}

impl Hub {
    /// Client `key` waits for the answer to its question, which `then` will handle.
    pub(super) fn wait(&mut self, key: usize, then: Then) {
        self.busy.entry(key).or_default().then = Some(then);
    }

    /// A command of busy client `key` (a request, or a refusal the session found): it waits
    /// for its turn.
    pub(super) fn queue_behind(&mut self, key: usize, command: Command) {
        let client = self.id(key);
        // What the hub keeps for one client, its waiting commands and its queued events
        // together, stays within `--queue-bytes`: the worst-case memory counts it once.
        let budget =
            self.config.queue_bytes - self.clients[key].queue.bytes().min(self.config.queue_bytes);
        let busy = self.busy.get_mut(&key).expect("a busy client");
        let waiting: usize = busy.later.iter().map(weight).sum();
        if busy.later.len() < MAX_WAITING && waiting + weight(&command) <= budget {
            busy.later.push_back(command);
            return;
        }
        // Over the bound the frame is dropped; one refusal stands for a run of them.
        let refused = |c: &Command| matches!(c, Command::Refuse { error, .. } if error.code == ErrorCode::RateLimited && error.message == WAITING_FULL);
        if !busy.later.back().is_some_and(refused) {
            let error = Error::new(ErrorCode::RateLimited, WAITING_FULL);
            busy.later.push_back(Command::Refuse { client, error });
        }
    }

    /// The answer to what client `client` asked, arriving after the question returned (from
    /// Redis): a `said` that overtook its message waits for it.
    pub(super) fn late_answer(&mut self, client: ClientId, answer: Answer) {
        self.answered_late(client, answer, true);
    }

    /// The answer to a question that waited for the durable store, whose room events were
    /// delivered just before it: nothing can have been overtaken.
    #[cfg(feature = "store")]
    pub(super) fn stored_answer(&mut self, client: ClientId, answer: Answer) {
        self.answered_late(client, answer, false);
    }

    fn answered_late(&mut self, client: ClientId, answer: Answer, may_overtake: bool) {
        let Some(key) = self.key(client) else {
            return;
        };
        let Some(then) = self.busy.get_mut(&key).and_then(|b| b.then.take()) else {
            return;
        };
        if let Answer::Gone = answer {
            return self.close(key, LOST_CLOSE, LeaveReason::Disconnected);
        }
        if let Answer::Said { room, id } = &answer
            && may_overtake
            && self.clients[key].rooms.contains(room)
            && let Some(audience) = self.audiences.get_mut(room)
            && audience.await_echo(key, *id)
        {
            let busy = self.busy.get_mut(&key).expect("busy");
            busy.echo = Some((then, answer));
            return;
        }
        then(self, key, answer);
        self.resume(key);
    }

    /// A room event from an authority that answers later (`Notice::Room`): kept while the
    /// room is held (a resync is on its way) and for the joins on their way, and delivered to
    /// the room's local members; a message that comes back answers its sender.
    pub(super) fn room_event(&mut self, event: RoomEvent) {
        if self.config.protocol == Protocol::Raw {
            return; // raw clients hear nothing but their group's frames
        }
        // Nobody here listens (any more): the authority kept what history needs.
        let Some(audience) = self.audiences.get_mut(&event.room) else {
            return;
        };
        let Some(event) = audience.hold(event) else {
            return;
        };
        let back = match event.what {
            What::Message { id, .. } => Some((event.room.clone(), id)),
            _ => None,
        };
        self.events.push(event);
        self.fan_out(None);
        if let Some((room, id)) = back {
            self.message_back(&room, id);
        }
    }

    /// Message `id` of `room` was delivered here: its sender (and anyone waiting for an
    /// earlier one) is answered.
    pub(super) fn message_back(&mut self, room: &str, id: u64) {
        let Some(audience) = self.audiences.get_mut(room) else {
            return;
        };
        let done = audience.back(id);
        if done.is_empty() {
            return;
        }
        for key in done {
            self.echoed(key);
        }
        self.drop_if_unused(room);
    }

    /// Client `key`'s message came back: its held answer is handed over.
    pub(super) fn echoed(&mut self, key: usize) {
        if let Some((then, answer)) = self.busy.get_mut(&key).and_then(|b| b.echo.take()) {
            then(self, key, answer);
        }
        self.resume(key);
    }

    /// Client `key`'s message will never come back (the store lost the room's history while
    /// it was on its way): the client is told `unavailable`.
    pub(super) fn echo_lost(&mut self, key: usize) {
        if let Some((then, _)) = self.busy.get_mut(&key).and_then(|b| b.echo.take()) {
            then(self, key, Answer::Unavailable);
        }
        self.resume(key);
    }

    /// Unless it waits again (the welcome's answer starts the first join), client `key`'s
    /// wait is over: its waiting commands are handled, in order, until one has to wait again.
    fn resume(&mut self, key: usize) {
        if !self.clients.contains(key) || self.busy.get(&key).is_none_or(Busy::waiting) {
            return;
        }
        let busy = self.busy.remove(&key).expect("busy");
        let mut later = busy.later;
        while let Some(command) = later.pop_front() {
            self.handle(command);
            if !self.clients.contains(key) {
                return; // closed by what it started
            }
            if let Some(busy) = self.busy.get_mut(&key) {
                busy.later = later;
                return;
            }
        }
    }
}

/// What waiting `command` keeps, against the client's `--queue-bytes`.
fn weight(command: &Command) -> usize {
    WAITING_OVERHEAD
        + match command {
            Command::Request { wire, .. } => wire.bytes(),
            Command::Refuse { error, .. } => error.message.len(),
            _ => 0,
        }
}

/// The refusal that stands for frames dropped while a client waits for the authority.
const WAITING_FULL: &str = "too many commands are waiting for the chat backend; later ones \
     were dropped";
