//! The HTTP API's calls (`/api/`, see `crate::api`) inside the hub.
//!
//! A call enters as [`Command::Api`](super::Command::Api) and is answered on its own channel
//! with an [`ApiReply`]: a status and a JSON body. To ask the authority, a call takes a slot
//! among the hub's clients for as long as it waits: answers come back by client id, at once
//! from the in-memory authority or later from Redis, through the same `Hub::ask` as a
//! client's command, each call with its own reply. A call has no nick, joins nothing, is sent
//! no event, and leaves no trace with the authority when it is answered. A published message
//! is a room event like any other: its members get it (with `"api": true`) and the room's
//! history keeps it.

use async_channel::Sender;
use serde::Serialize;

use super::commands::{MAX_OFFSET, misfit, now_ms};
use super::{Address, Hub};
use crate::authority::{Answer, Ask, History};
use crate::metrics::Metrics;
use crate::protocol::RoomSummary;
use crate::queue;

// The bodies, as typed structs: `serde_json::Value` (the `json!` macro) would bring a map
// type and its serializer into the binary for a handful of fields.

#[derive(Serialize)]
struct Refusal<'a, C: Serialize> {
    error: C,
    message: &'a str,
}

#[derive(Serialize)]
struct Published<'a> {
    room: &'a str,
    id: u64,
}

#[derive(Serialize)]
struct HistoryHead<'a> {
    room: &'a str,
    epoch: &'a str,
    last_id: u64,
    complete: bool,
}

#[derive(Serialize)]
struct RoomsPage<'a> {
    rooms: Vec<RoomSummary<'a>>,
    count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<usize>,
}

/// A call of the HTTP API.
#[derive(Debug, Clone)]
pub enum ApiCall {
    /// `POST /api/rooms/{room}/messages`: a message from `from`, like a `say`.
    Publish {
        room: String,
        from: String,
        text: String,
    },
    /// `GET /api/rooms/{room}/messages?since=ID`: what the room remembers after `since`.
    History { room: String, since: u64 },
    /// `GET /api/rooms?offset=N`: a page of rooms, sorted by name, with member counts.
    Rooms { offset: usize },
}

/// The answer to an API call: an HTTP status and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiReply {
    pub status: u16,
    pub body: String,
}

impl ApiReply {
    /// A refusal: `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: &str) -> ApiReply {
        let refusal = Refusal {
            error: code,
            message,
        };
        ApiReply::json(status, &refusal)
    }

    fn json(status: u16, body: &impl Serialize) -> ApiReply {
        // Serializing these types cannot fail: string keys, no floats.
        let body = serde_json::to_string(body).expect("API bodies always serialize");
        ApiReply { status, body }
    }
}

/// The reply when the authority cannot be asked (Redis down) or the server is stopping.
pub(super) fn unavailable() -> ApiReply {
    ApiReply::error(
        503,
        "unavailable",
        "the chat backend is unavailable; nothing was done, try again shortly",
    )
}

impl Hub {
    /// Starts an API call: a slot, then the question to the authority, whose answer is the
    /// call's reply.
    pub(super) fn api(&mut self, call: ApiCall, reply: Sender<ApiReply>) {
        if self.shutting_down {
            let _ = reply.try_send(unavailable());
            return;
        }
        // Nothing is ever delivered to a call: its queue's receiver is dropped at once.
        let (queue, _) = queue::bounded(1, 1);
        let key = self.register(queue, Address::of("api"), None).key;
        self.api_calls.insert(key, reply);
        match call {
            ApiCall::Publish { room, from, text } => {
                Metrics::add(&self.metrics.messages_received, 1);
                let ts = now_ms();
                let ask = Ask::Publish {
                    room,
                    from,
                    text,
                    ts,
                };
                self.ask(key, ask, |hub, key, answer| {
                    let reply = published(&hub.metrics, answer);
                    hub.api_reply(key, reply);
                });
            }
            ApiCall::History { room, since } => {
                let ask = Ask::History {
                    room: room.clone(),
                    since,
                };
                self.ask(key, ask, move |hub, key, answer| {
                    let reply = history(&hub.metrics, &room, answer);
                    hub.api_reply(key, reply);
                });
            }
            ApiCall::Rooms { offset } => {
                let offset = offset.min(MAX_OFFSET);
                self.ask(key, Ask::Rooms { offset }, move |hub, key, answer| {
                    let reply = rooms(&hub.metrics, offset, answer);
                    hub.api_reply(key, reply);
                });
            }
        }
    }

    /// Answers call `key` and gives its slot back.
    pub(super) fn api_reply(&mut self, key: usize, reply: ApiReply) {
        self.busy.remove(&key);
        if let Some(sender) = self.api_calls.remove(&key) {
            let _ = sender.try_send(reply);
        }
        self.clients.remove(key);
    }

    /// Call `key` is dropped unanswered (the server is shutting down).
    pub(super) fn api_gone(&mut self, key: usize) {
        self.api_reply(key, unavailable());
    }
}

/// The reply to `POST /api/rooms/{room}/messages`.
fn published(metrics: &Metrics, answer: Answer) -> ApiReply {
    match answer {
        Answer::Said { room, id } => ApiReply::json(201, &Published { room: &room, id }),
        Answer::Refused(error) => {
            let refusal = Refusal {
                error: error.code,
                message: &error.message,
            };
            ApiReply::json(409, &refusal)
        }
        other => unfit(metrics, other),
    }
}

/// The reply to `GET /api/rooms/{room}/messages`.
fn history(metrics: &Metrics, room: &str, answer: Answer) -> ApiReply {
    let history: History = match answer {
        Answer::History(Some(history)) => history,
        Answer::History(None) => {
            return ApiReply::error(404, "not_found", &format!("there is no room {room:?}"));
        }
        other => return unfit(metrics, other),
    };
    let head = HistoryHead {
        room,
        epoch: &history.epoch,
        last_id: history.last_id,
        complete: history.complete,
    };
    // The messages are the frames members got, put in the body as they are.
    let mut body = serde_json::to_string(&head).expect("always serializes");
    body.pop(); // the closing brace
    body.push_str(",\"messages\":[");
    for (i, message) in history.messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(message);
    }
    body.push_str("]}");
    ApiReply { status: 200, body }
}

/// The reply to `GET /api/rooms`.
fn rooms(metrics: &Metrics, offset: usize, answer: Answer) -> ApiReply {
    let Answer::Rooms { count, page } = answer else {
        return unfit(metrics, answer);
    };
    let end = offset.saturating_add(page.len());
    let rooms = RoomSummary::page(&page);
    let next = (end < count).then_some(end);
    ApiReply::json(200, &RoomsPage { rooms, count, next })
}

/// An answer that does not fit the call: the authority could not be asked, or made a mistake.
fn unfit(metrics: &Metrics, answer: Answer) -> ApiReply {
    misfit(&answer);
    if let Answer::Unavailable = answer {
        Metrics::add(&metrics.backend_unavailable, 1);
    }
    unavailable()
}
