//! Who decides: the narrow interface between the hub's rules and the state a chat of several
//! nodes must agree on.
//!
//! The hub ([`crate::hub`]) owns the chat's rules and every client connected to this node.
//! What all nodes must agree on is decided by an **authority**: who holds which nick, who is
//! in which room, each room's message ids and history, which rooms exist and who holds them.
//! There are two:
//!
//! - [`local::Local`], in memory, for a single node. It answers at once.
//! - `cluster::Redis` (feature `redis`), which asks Redis through the bridge and answers
//!   later, through the hub's inbox.
//!
//! Data enters the authority as an [`Ask`] for one client ([`Authority::ask`]) or as a
//! departure ([`Authority::bye`]). It leaves in two ways:
//!
//! - an [`Answer`] to the client that asked: returned at once (`Some`), or later as
//!   [`Notice::Answer`];
//! - [`RoomEvent`]s: what happened in a room (a message with its id, a join, a leave, a
//!   rename), for every node with members there. The local authority puts them in the `events`
//!   vector it is given; the Redis authority publishes them on the room's channel, and they
//!   come back to every node, this one included, as [`Notice::Room`].
//!
//! Either way the hub handles answers and events with the same code, so the rules exist once.
//! Joins, leaves and renames travel as values, which the hub encodes (through
//! [`crate::protocol`]) only if it announces them. A message travels encoded: whoever gives it
//! its id encodes it once, so the local authority keeps in history the very bytes the members
//! get, and the hub visits it once per message.

pub mod local;

pub use crate::client::{Address, ClientId};
use crate::protocol::{Error, ErrorCode, Event, Frame, LeaveReason};

/// A question from the hub, for one client.
#[derive(Debug, Clone)]
pub enum Ask {
    /// Register a new client from `address`. `named`: give it a free `guest-N` nick (v1);
    /// raw mode has no nicks. `user`: the client proved with a token that it is this user
    /// (see [`crate::token`]): its nick is the user's name, which it shares with the user's
    /// other connections, on this node or another. Refused ([`Answer::Refused`], the only
    /// refusal of a registration) when the user has `--max-connections-per-user` already.
    Register {
        address: Address,
        named: bool,
        user: Option<String>,
    },
    /// Change the client's nick.
    Nick(String),
    /// Make the client a member of `room` (or, if it is one, give it the room's state again
    /// without announcing anything), replaying history after the cursor.
    Join {
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
    },
    /// Take the client out of `room`.
    Leave(String),
    /// Give the client's message in `room` the room's next id and keep it in the history.
    Say { room: String, text: String, ts: u64 },
    /// A private message to whoever holds nick `to` (any case). `within`: only if one of the
    /// recipient's connections is a member of one of these rooms (the sender's token limits
    /// what it may learn, see [`crate::access`]); else it is answered as unknown, exactly as a
    /// nick nobody holds.
    Direct {
        to: String,
        text: String,
        ts: u64,
        within: Option<Vec<String>>,
    },
    /// A page of `room`'s members from `offset`.
    Who { room: String, offset: usize },
    /// A page of the rooms from `offset`, sorted by name.
    Rooms { offset: usize },
    /// Which of these rooms exist, with their member counts, in the order given: answered
    /// with [`Answer::Rooms`] listing all of them (no page). For a client whose token limits
    /// the rooms it may see.
    Sizes(Vec<String>),
    /// The HTTP API (not a chat client): a message in `room` from `from`, like a `say`, but
    /// by nobody in the room. The room is created if it does not exist (within
    /// `--max-rooms`). Answered with [`Answer::Said`] or [`Answer::Refused`].
    Publish {
        room: String,
        from: String,
        text: String,
        ts: u64,
    },
    /// The HTTP API: the messages `room` remembers after `since` (all of them for 0).
    /// Answered with [`Answer::History`].
    History { room: String, since: u64 },
}

/// The authority's answer to an [`Ask`].
#[derive(Debug, Clone)]
pub enum Answer {
    /// Registered, with this nick (empty for raw clients).
    Registered(String),
    /// Renamed; the old nick.
    Renamed {
        old: String,
    },
    NickTaken,
    Joined(Joined),
    /// Refused by a rule only the authority can check (the room limits; a registration
    /// beyond `--max-connections-per-user`).
    Refused(Error),
    Left,
    NotMember,
    /// The message in `room` has this id; its [`RoomEvent`] is on the way (or already out).
    Said {
        room: String,
        id: u64,
    },
    /// Delivered to nick `to` (as its holder spells it). `targets`: the recipient's
    /// connections on this node (a user may have several); those elsewhere get it through
    /// [`Notice::Direct`].
    Direct {
        to: String,
        targets: Vec<ClientId>,
    },
    UnknownRecipient,
    Members {
        count: usize,
        nicks: Vec<String>,
    },
    Rooms {
        count: usize,
        page: Vec<(String, usize)>,
    },
    /// A room's history for the API; `None`: no such room.
    History(Option<History>),
    /// The authority does not know this client any more (its node was taken for lost, or the
    /// store lost its data): the client must reconnect.
    Gone,
    /// The authority could not be asked (Redis down, or too far behind); nothing was done.
    Unavailable,
}

/// A room as a join found it.
#[derive(Debug, Clone)]
pub struct Joined {
    pub epoch: String,
    pub last_id: u64,
    /// The room event that announced the join (or the latest, for a resync): the joiner
    /// skips live events up to this one, which the answer already reflects.
    pub ev: u64,
    pub count: usize,
    /// The first `--presence-limit` members' nicks, in join order.
    pub nicks: Vec<String>,
    /// The messages to replay, oldest first, and whether nothing after the cursor was lost
    /// (`None` for a join without a cursor). Computed by [`crate::room::Room::replay`].
    pub replay: Vec<Frame>,
    pub complete: Option<bool>,
}

/// What a room remembers, for [`Ask::History`].
#[derive(Debug, Clone)]
pub struct History {
    pub epoch: String,
    pub last_id: u64,
    /// Whether every message after the cursor is among `messages`.
    pub complete: bool,
    /// The messages after the cursor, oldest first, encoded as members got them.
    pub messages: Vec<Frame>,
}

/// Something that happened in a room, for the room's members on every node.
#[derive(Debug, Clone)]
pub struct RoomEvent {
    pub room: String,
    /// The room's event number: every node sees a room's events in increasing order.
    pub ev: u64,
    /// The client of this node the event is about (who said, joined, left or was renamed),
    /// if it is one.
    pub subject: Option<ClientId>,
    pub what: What,
}

impl RoomEvent {
    /// The event as clients get it, encoded once for all of them. A message comes encoded
    /// already (see [`What::Message`]); the others are encoded here, only if announced.
    pub fn encode(&self) -> Frame {
        let room = &self.room;
        match &self.what {
            What::Message { frame, .. } => frame.clone(),
            What::Join { nick, .. } => Event::Join { room, nick }.encode(),
            What::Leave { nick, reason, .. } => Event::Leave {
                room,
                nick,
                reason: *reason,
            }
            .encode(),
            What::Nick { old, nick, .. } => Event::Nick { old, nick }.encode(),
        }
    }

    /// Members the room had when this event happened (after a join, before a leave), for
    /// the presence limit; `None` for a message, which is always delivered.
    pub fn count(&self) -> Option<usize> {
        match self.what {
            What::Message { .. } => None,
            What::Join { count, .. } | What::Leave { count, .. } | What::Nick { count, .. } => {
                Some(count)
            }
        }
    }
}

/// What a [`RoomEvent`] is.
#[derive(Debug, Clone)]
pub enum What {
    /// Message `id`, as the `message` event every member gets. It is encoded once, by whoever
    /// gives it its id (the local authority, which keeps these very bytes in the room's
    /// history; or, for Redis, `cluster::wire` as it reads the room's channel), and never
    /// again: a message is always announced, so nothing is spent on one nobody gets.
    Message { id: u64, frame: Frame },
    /// `count`: members after the join.
    Join { nick: String, count: usize },
    /// `count`: members before the leave.
    Leave {
        nick: String,
        reason: LeaveReason,
        count: usize,
    },
    /// A rename, announced in each of the client's rooms; `tag` is the same in all of them,
    /// so a client that shares several rooms with it hears of it once.
    Nick {
        old: String,
        nick: String,
        count: usize,
        tag: u64,
    },
}

/// From an authority that answers later (Redis), through the hub's inbox.
#[derive(Debug)]
pub enum Notice {
    /// The answer to a client's [`Ask`].
    Answer { client: ClientId, answer: Answer },
    /// An event of a room this node has members in.
    Room(RoomEvent),
    /// A private message for a client of this node.
    Direct {
        target: ClientId,
        from: String,
        to: String,
        text: String,
        ts: u64,
    },
    /// A new connection to the store: hold room events until each room's [`Notice::Resync`],
    /// and hand the authority this node's members ([`Authority::restore`]).
    Resyncing,
    /// A room changed epoch under this node (its events showed a new one): hold its events
    /// until its [`Notice::Resync`].
    Hold(String),
    /// A room's state after a reconnect, or after a [`Notice::Hold`].
    Resync {
        room: String,
        epoch: String,
        last_id: u64,
        ev: u64,
        /// The retained messages, oldest first, the newest with id `last_id`.
        history: Vec<Frame>,
        /// How many members the room has, and the first `--presence-limit` nicks: what the
        /// local members are told if the room's epoch changed.
        count: usize,
        nicks: Vec<String>,
    },
    /// The store no longer knows these clients (their node was taken for lost while it was cut
    /// off, and others may hold their nicks now): they must reconnect.
    Lost(Vec<ClientId>),
    /// Durable history (feature `store`): what a commit of the local store made durable.
    #[cfg(feature = "store")]
    Stored(crate::store::Report),
}

/// The refusal of a join that would create a room beyond `--max-rooms`, with no empty room
/// left to evict. Both authorities refuse with this text.
pub fn too_many_rooms(max: usize) -> Error {
    Error::new(
        ErrorCode::RoomLimit,
        format!("the server holds {max} rooms, the most allowed; join an existing room"),
    )
}

/// The refusal of a join that would make the client's address hold more than
/// `--max-rooms-per-address` rooms. Both authorities refuse with this text.
pub fn address_holds_too_many(max: usize) -> Error {
    Error::new(
        ErrorCode::RoomLimit,
        format!(
            "clients from your address hold {max} rooms, the most allowed; join a room that \
             has members"
        ),
    )
}

/// The refusal of a connection that would give its user more than
/// `--max-connections-per-user` connections (the session is then closed with
/// [`crate::hub::USER_LIMIT_CLOSE`]). Both authorities refuse with this text.
pub fn user_has_too_many(max: usize) -> Error {
    Error::new(
        ErrorCode::Forbidden,
        format!(
            "you are connected {max} times already, the most allowed \
             (--max-connections-per-user); close a connection and try again"
        ),
    )
}

/// One of this node's clients, for [`Authority::restore`].
#[derive(Debug, Clone)]
pub struct Member {
    pub client: ClientId,
    pub address: Address,
    pub nick: String,
    /// The client proved with a token that it is user `nick`.
    pub user: bool,
    pub rooms: Vec<String>,
}

/// The questions the hub asks. See the module documentation.
pub trait Authority: Send {
    /// Asks on behalf of `client`. `Some`: the answer, now, with the room events it caused
    /// pushed to `events`. `None`: the answer comes later as [`Notice::Answer`].
    fn ask(&mut self, client: ClientId, ask: Ask, events: &mut Vec<RoomEvent>) -> Option<Answer>;

    /// `client` is gone: it leaves its rooms (announced with `reason`) and its nick is free.
    /// Never refused: an authority that cannot pass it on now keeps it until it can.
    fn bye(&mut self, client: ClientId, reason: LeaveReason, events: &mut Vec<RoomEvent>);

    /// No client of this node is in `room`, or waits for it, any more.
    fn unused(&mut self, room: &str) {
        let _ = room;
    }

    /// After [`Notice::Resyncing`]: this node's members, to register again where the store
    /// lost them.
    fn restore(&mut self, members: Vec<Member>) {
        let _ = members;
    }

    /// The node is shutting down; its clients are gone.
    fn shutdown(&mut self) {}

    /// Durable history (feature `store`): what the store's last commit made durable. Returns
    /// the answers to questions that waited for it, with their room events in `events`.
    #[cfg(feature = "store")]
    fn stored(
        &mut self,
        report: crate::store::Report,
        events: &mut Vec<RoomEvent>,
    ) -> Vec<(ClientId, Answer)> {
        let _ = (report, events);
        Vec::new()
    }
}
