//! The HTTP API (`/api/`): applications and scripts publish into rooms and read their history
//! over plain HTTP, with one `curl`.
//!
//! A request enters from `crate::route` once its head is read, within the connection's
//! one `--handshake-timeout`. Everything that needs no hub is checked here, cheapest first:
//! the key (`Authorization: Bearer`, compared in constant time; without `--api-key-file`
//! the router never gets here and `/api/` is 404), the rate limit of the key
//! (`--api-rate-limit`), the path and method, then for `POST` the body: a `Content-Length`
//! (411 without), at most `--max-message-bytes` (413), `application/json` (415), and fields
//! that pass the chat's own rules (400). The call then goes to the hub as
//! [`Command::Api`], whose reply (status and JSON body, see `hub::api`) leaves as the
//! response. Every call is counted in `/metrics` by endpoint and status.
//!
//! | call | answer |
//! |---|---|
//! | `POST /api/rooms/{room}/messages` `{"text", "from"?}` | 201 `{"room", "id"}` |
//! | `GET /api/rooms/{room}/messages?since=ID` | 200 `{"room", "epoch", "last_id", "complete", "messages"}` |
//! | `GET /api/rooms?offset=N` | 200 `{"rooms": [{"name", "members"}], "count", "next"?}` |

use std::time::Instant;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use serde::Deserialize;

use crate::Front;
use crate::config::{Config, Invalid, Protocol, Section, err, flags};
use crate::http::{Head, Response, query_param, respond};
use crate::hub::{ApiCall, ApiReply, Command};
use crate::logger;
use crate::protocol::{check_text, valid_nick, valid_room};
use crate::secret::Secret;

/// The name an API message is from when the call names nobody.
pub const DEFAULT_FROM: &str = "api";

/// The HTTP API's flags (feature `api`), for the flag table (`crate::config`).
pub(crate) const FLAGS: Section = Section {
    heading: "\nHTTP API (the api feature; see docs/protocol.md#the-http-api):\n",
    flags: flags! {
        "api-key-file" "PATH": "API key in a file: enables the HTTP API at /api/"
            => |c, v| key_file(c, v);
        "api-rate-limit" "N" = "20": "API calls per second, 0 = off"
            => rate(api_rate_limit, 0, 1_000_000);
    },
    footer: &[],
    // The API publishes messages and reads history: raw groups have neither.
    check: Some(|c| match c.api_key {
        Some(_) if c.protocol == Protocol::Raw => Err(err(
            "--api-key-file",
            "the HTTP API needs --protocol v1 (raw groups have no messages or history)",
        )),
        _ => Ok(()),
    }),
};

/// `--api-key-file`: reads the key, which must not be short enough to guess.
fn key_file(config: &mut Config, path: &str) -> Result<(), Invalid> {
    let key = Secret::read(path)?;
    if key.bytes().len() < crate::secret::MIN_API_KEY_BYTES {
        return Err("the API key must be at least 16 bytes".into());
    }
    config.api_key = Some(key);
    Ok(())
}

/// A publish call's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    text: Option<String>,
    from: Option<String>,
}

/// Answers one API request on `stream`; `leftover` holds the bytes read after its head.
pub(crate) async fn serve<S>(
    front: Front<'_>,
    stream: &mut S,
    head: &Head,
    leftover: Vec<u8>,
    peer: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (endpoint, reply) = answer(front, stream, head, leftover, peer).await;
    front.metrics().api_call(endpoint, reply.status);
    let mut response = Response::text(reply.status, "");
    response.content_type = "application/json";
    response.body = (reply.body + "\n").into_bytes().into();
    match reply.status {
        401 => response = response.with("WWW-Authenticate", "Bearer realm=\"smolchat-api\""),
        405 if endpoint == "rooms" => response = response.with("Allow", "GET"),
        405 => response = response.with("Allow", "GET, POST"),
        429 => response = response.with("Retry-After", "1"),
        _ => {}
    }
    respond(stream, &response).await;
}

/// The endpoint a request is for (its `/metrics` label) and its reply.
async fn answer<S>(
    front: Front<'_>,
    stream: &mut S,
    head: &Head,
    leftover: Vec<u8>,
    peer: &str,
) -> (&'static str, ApiReply)
where
    S: AsyncRead + Unpin,
{
    if let Err(reply) = admit(front, head, peer) {
        return ("other", reply);
    }
    let segments: Vec<&str> = head.path.split('/').collect();
    let (endpoint, call) = match (head.method.as_str(), segments.as_slice()) {
        ("GET", ["", "api", "rooms"]) => match number(head, "offset") {
            Ok(n) => {
                let offset = n.unwrap_or(0) as usize;
                ("rooms", Ok(ApiCall::Rooms { offset }))
            }
            Err(reply) => ("rooms", Err(reply)),
        },
        (_, ["", "api", "rooms"]) => ("rooms", Err(method_not_allowed())),
        (method, ["", "api", "rooms", room, "messages"]) => {
            let call = room_call(front.config(), stream, head, leftover, method, room).await;
            match method {
                "POST" => ("publish", call),
                _ => ("history", call),
            }
        }
        _ => {
            let reply = ApiReply::error(
                404,
                "not_found",
                "no such API path; see /api/rooms and /api/rooms/{room}/messages",
            );
            ("other", Err(reply))
        }
    };
    match call {
        Ok(call) => (endpoint, call_hub(front, call).await),
        Err(reply) => (endpoint, reply),
    }
}

/// The key (401 without it) and its rate limit (429 past it), checked before the path.
fn admit(front: Front<'_>, head: &Head, peer: &str) -> Result<(), ApiReply> {
    let config = front.config();
    let key = config
        .api_key
        .as_ref()
        .expect("routed here only with a key");
    if !head
        .bearer
        .as_ref()
        .is_some_and(|b| key.matches(b.as_bytes()))
    {
        logger::refusal(peer, "refused: API call without a valid key (401)");
        return Err(ApiReply::error(
            401,
            "unauthorized",
            "an API key is required: Authorization: Bearer KEY",
        ));
    }
    let allowed = front
        .admission()
        .api_calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(Instant::now());
    if !allowed {
        return Err(ApiReply::error(
            429,
            "rate_limited",
            &format!("at most {} API calls a second", config.api_rate_limit),
        ));
    }
    Ok(())
}

/// A call on one room's messages: `GET` reads its history, `POST` publishes (reading the
/// body).
async fn room_call<S: AsyncRead + Unpin>(
    config: &Config,
    stream: &mut S,
    head: &Head,
    leftover: Vec<u8>,
    method: &str,
    room: &str,
) -> Result<ApiCall, ApiReply> {
    if !valid_room(room) {
        return Err(ApiReply::error(
            400,
            "invalid_room",
            "a room name is 1-32 characters: a-z, 0-9, '_' or '-'",
        ));
    }
    let room = room.to_string();
    match method {
        "GET" => number(head, "since").map(|since| ApiCall::History {
            room,
            since: since.unwrap_or(0),
        }),
        "POST" => publish(config, stream, head, leftover, room).await,
        _ => Err(method_not_allowed()),
    }
}

/// Checks a publish call's head and reads its body.
async fn publish<S: AsyncRead + Unpin>(
    config: &Config,
    stream: &mut S,
    head: &Head,
    mut body: Vec<u8>,
    room: String,
) -> Result<ApiCall, ApiReply> {
    let max = config.max_message_bytes;
    let Some(length) = head
        .content_length
        .as_deref()
        .filter(|_| !head.transfer_encoding)
    else {
        return Err(ApiReply::error(
            411,
            "length_required",
            "send the body with a Content-Length (no chunked encoding)",
        ));
    };
    let digits = !length.is_empty() && length.bytes().all(|b| b.is_ascii_digit());
    let Some(length) = length.parse::<usize>().ok().filter(|_| digits) else {
        return Err(ApiReply::error(
            400,
            "bad_request",
            "Content-Length is not a number",
        ));
    };
    if length > max {
        return Err(ApiReply::error(
            413,
            "too_large",
            &format!("the body may be at most {max} bytes (--max-message-bytes)"),
        ));
    }
    if body.len() > length {
        return Err(ApiReply::error(
            400,
            "bad_request",
            "more bytes arrived than Content-Length says; one call per connection",
        ));
    }
    let json = head.content_type.as_deref().is_some_and(|t| {
        let media = t.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("application/json")
    });
    if !json {
        return Err(ApiReply::error(
            415,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let start = body.len();
    body.resize(length, 0);
    if stream.read_exact(&mut body[start..]).await.is_err() {
        return Err(ApiReply::error(400, "bad_request", "the body ended early"));
    }
    // From text, like every other JSON the server reads: one deserializer in the binary.
    let body = std::str::from_utf8(&body)
        .map_err(|_| ApiReply::error(400, "bad_request", "the body is not UTF-8"))?;
    let publish: Publish = serde_json::from_str(body).map_err(|e| {
        ApiReply::error(
            400,
            "bad_request",
            &format!("the body is not a valid message: {e}"),
        )
    })?;
    let text = check_text(publish.text, max)
        .map_err(|e| ApiReply::error(400, "bad_request", &e.message))?;
    let from = publish.from.unwrap_or_else(|| DEFAULT_FROM.to_string());
    if !valid_nick(&from) {
        return Err(ApiReply::error(
            400,
            "invalid_nick",
            "from is 1-32 characters: letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(ApiCall::Publish { room, from, text })
}

/// Hands `call` to the hub and waits for its reply.
async fn call_hub(front: Front<'_>, call: ApiCall) -> ApiReply {
    let (reply, answer) = async_channel::bounded(1);
    if front
        .inbox()
        .send(Command::Api { call, reply })
        .await
        .is_ok()
        && let Ok(reply) = answer.recv().await
    {
        return reply;
    }
    ApiReply::error(503, "unavailable", "the server is shutting down")
}

/// Query parameter `name` as a whole number, if present.
fn number(head: &Head, name: &str) -> Result<Option<u64>, ApiReply> {
    match query_param(head, name) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiReply::error(
                400,
                "bad_request",
                &format!("{name} must be a whole number"),
            )
        }),
    }
}

fn method_not_allowed() -> ApiReply {
    ApiReply::error(
        405,
        "method_not_allowed",
        "this path does not take that method",
    )
}
