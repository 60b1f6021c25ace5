//! Everything between an accepted socket and a WebSocket session: admission, one deadline, the
//! HTTP exchange, the client's registration with the hub, the `101`, and tungstenite's
//! buffers.
//!
//! A connection enters from [`Chat::serve`] or `Chat::serve_tls` as any `AsyncRead +
//! AsyncWrite` byte stream. [`admit`] first takes one of the `--max-pending` slots ([`Slot`])
//! and the address's share of them ([`Share`]), or refuses the connection with a one-shot 503.
//! It then meters the stream ([`Metered`]) and runs the rest under one deadline,
//! `--handshake-timeout`: the TLS handshake if there is one, reading the request head,
//! routing it ([`http::route`]), and either a plain response ([`respond`], which also drains
//! what the client still sends) or the upgrade: a `--max-connections` slot, the client's
//! registration with the hub ([`register`]: in raw mode it is in its group from then on, or
//! refused with an HTTP status), the `101`, and the WebSocket, built with buffers sized from
//! our limits ([`ws_config`]).
//!
//! A connection leaves in one of two ways. Answered with a plain response (a page, `/healthz`,
//! `/metrics`, a refusal) or out of time, it is dropped here. Upgraded, it leaves as an
//! [`Upgraded`]: the WebSocket ([`Socket`]), the write [`Progress`] of its socket, its id and
//! queue from the hub, and its `--max-connections` slot, which [`Chat::serve`] hands to the
//! session
//! ([`crate::session`]). The pending slot is given back at that moment, the connection slot
//! only when the session ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Chat;
use crate::client::Verified;
use crate::deadline::within;
use crate::http::{self, HeadError, Response, Route};
use crate::hub::{Address, ClientId, Command, Outgoing, Rejected};
use crate::logger;
use crate::meter::{Metered, Progress};
use crate::metrics::{Metrics, Refusal};
use crate::protocol::LeaveReason;
use crate::queue::{self, Receiver};
use crate::wire::{self, Socket};

/// Bytes tungstenite buffers before it writes to the socket.
const WRITE_BUFFER: usize = 4096;

/// An accepted upgrade: the WebSocket, the client the hub registered, when its token expires,
/// and its `--max-connections` slot.
type Upgrade<'a, S> = (
    Box<Socket<S>>,
    (ClientId, Receiver<Outgoing>),
    Option<u64>,
    Slot<'a>,
);

/// An admitted connection, as [`Chat::serve`] hands it to the session.
pub(crate) struct Upgraded<'a, S> {
    pub(crate) socket: Box<Socket<S>>,
    /// The write progress of its socket.
    pub(crate) progress: Arc<Progress>,
    /// Its id at the hub, and the queue the hub fills for it.
    pub(crate) client: (ClientId, Receiver<Outgoing>),
    /// When its token expires (seconds since the Unix epoch); `None`: a guest.
    pub(crate) expires: Option<u64>,
    pub(crate) slot: Slot<'a>,
}

/// Everything before the session: a `--max-pending` slot, then `wrap` (the socket itself, or
/// its TLS handshake) and the HTTP exchange, together within `--handshake-timeout`. `plain`:
/// a refused connection may be answered in plain HTTP.
pub(crate) async fn admit<'a, S, T, F, Fut>(
    chat: &'a Chat,
    mut stream: S,
    peer: &str,
    wrap: F,
    plain: bool,
) -> Option<Upgraded<'a, T>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Metered<S>) -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let pending = Slot::take(&chat.metrics.pending, chat.config.max_pending as u64)
        .and_then(|slot| Some((slot, pending_share(chat, peer)?)));
    let Some(_pending) = pending else {
        chat.metrics.refuse(Refusal::Pending);
        logger::refusal(
            peer,
            "refused: too many connections waiting (--max-pending, --max-pending-per-address)",
        );
        let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
            Connection: close\r\nRetry-After: 5\r\n\r\n";
        // One try, no waiting: this connection gets nothing else from us.
        if plain {
            let _ = futures_lite::future::poll_once(stream.write_all(busy)).await;
        }
        return None;
    };
    // The socket is metered from its first byte, below TLS when there is TLS: the byte
    // budget, the yield and the write progress count what crosses the socket, so records
    // that decrypt to nothing cost a client its budget too.
    let config = &chat.config;
    let per_message = config.max_message_bytes as u64 + 64;
    let rate = u64::from(config.rate_limit) * per_message;
    let burst = u64::from(config.rate_burst) * per_message;
    let (stream, progress) = Metered::new(stream, rate, burst);
    let exchange = async {
        let stream = wrap(stream).await?;
        handshake(chat, stream, peer).await
    };
    match within(chat.config.handshake_timeout, exchange).await {
        Some(upgraded) => upgraded.map(|(socket, client, expires, slot)| Upgraded {
            socket,
            progress,
            client,
            expires,
            slot,
        }),
        None => {
            chat.metrics.refuse(Refusal::Timeout);
            logger::refusal(peer, "dropped: request not done within --handshake-timeout");
            None
        }
    }
}

/// The TLS handshake with `acceptor` (feature `tls`), as [`admit`]'s `wrap`: the encrypted
/// stream, or `None` (counted and logged) if the handshake failed.
#[cfg(feature = "tls")]
pub(crate) async fn tls<S>(
    chat: &Chat,
    stream: S,
    peer: &str,
    acceptor: futures_rustls::TlsAcceptor,
) -> Option<futures_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // rustls buffers up to 64 KiB of outgoing plaintext by default: 16 KiB holds more than
    // the largest default event, and bounds what a client that stops reading costs.
    let limit = |conn: &mut futures_rustls::rustls::ServerConnection| {
        conn.set_buffer_limit(Some(crate::tls::BUFFER_LIMIT));
    };
    match acceptor.accept_with(stream, limit).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            let failure = crate::tls::Failure::of(&e);
            chat.metrics.tls_failed(failure);
            logger::refusal(peer, &format!("TLS handshake failed ({failure:?}): {e}"));
            None
        }
    }
}

/// One of the address's `--max-pending-per-address` share of the `--max-pending` slots,
/// so that one address cannot hold every slot and lock everyone else out.
fn pending_share(chat: &Chat, peer: &str) -> Option<Share> {
    let address = Address::of(peer);
    let share = chat.config.max_pending_per_address as u32;
    let mut pending = chat.pending.lock().unwrap_or_else(|e| e.into_inner());
    let count = pending.entry(address).or_default();
    if *count >= share {
        return None;
    }
    *count += 1;
    Some(Share {
        pending: chat.pending.clone(),
        address,
    })
}

/// Reads the request head and answers it. For an accepted upgrade, returns the WebSocket,
/// its raw-mode group and the connection's slot under `--max-connections`.
async fn handshake<'a, S>(chat: &'a Chat, mut stream: S, peer: &str) -> Option<Upgrade<'a, S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (head, leftover) = match http::read_head(&mut stream).await {
        Ok(read) => read,
        Err(HeadError::Io) => return None,
        Err(HeadError::TooLarge) => {
            let response = Response::text(431, "request head too large");
            refuse(chat, &mut stream, peer, response, Refusal::HeadTooLarge).await;
            return None;
        }
        Err(HeadError::Malformed) => {
            let response = Response::text(400, "malformed HTTP request");
            refuse(chat, &mut stream, peer, response, Refusal::BadRequest).await;
            return None;
        }
    };
    let user = match authenticate(chat, &head, peer) {
        Ok(user) => user,
        Err(unauthorized) => {
            respond(&mut stream, &unauthorized).await;
            return None;
        }
    };
    let response = match http::route(&head, &chat.config) {
        Route::Upgrade { accept_key, group } => {
            return upgrade(chat, stream, leftover, &accept_key, group, user, peer).await;
        }
        #[cfg(feature = "api")]
        Route::Api => {
            crate::api::serve(chat, &mut stream, &head, leftover, peer).await;
            return None;
        }
        Route::Page => http::page(chat.config.protocol, head.accepts_gzip),
        Route::Health => health(chat),
        Route::Metrics => {
            let mut r = Response::text(200, "");
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r.body = chat.metrics.render().into_bytes().into();
            r
        }
        Route::Refuse(response, None) => response,
        Route::Refuse(response, Some(why)) => {
            refuse(chat, &mut stream, peer, response, why).await;
            return None;
        }
    };
    respond(&mut stream, &response).await;
    None
}

/// The user a request for the chat (`/ws`, `/ws/NAME`) proves with its token, if the server
/// checks tokens (`--auth-secret-file`), or the 401 to answer. The token comes as the query
/// parameter `token` (browsers cannot set headers on a WebSocket) or as `Authorization:
/// Bearer`; without one, a guest if `--auth optional`. It is checked before anything else
/// about the request, upgrade or not, so that a page whose WebSocket failed to open can learn
/// why with a plain GET (browsers do not show a failed upgrade's status to scripts).
#[cfg(feature = "auth")]
fn authenticate(
    chat: &Chat,
    head: &http::Head,
    peer: &str,
) -> Result<Option<Box<Verified>>, Response> {
    let chat_path = head.path == "/ws" || head.path.starts_with("/ws/");
    let Some(auth) = chat.config.auth.as_ref().filter(|_| chat_path) else {
        return Ok(None);
    };
    let checked = match http::query_param(head, "token").or(head.bearer.as_deref()) {
        Some(token) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            crate::token::verify(token, &auth.secret, now).map(|v| Some(Box::new(v)))
        }
        None if auth.guests => Ok(None),
        None => Err(crate::token::Refusal::Missing),
    };
    checked.map_err(|why| {
        chat.metrics.auth_refused(why);
        // The line names the cause, never the token.
        logger::refusal(peer, &format!("refused: 401 {}", why.reason()));
        // No error code when no token was sent (RFC 6750, section 3.1).
        let challenge = match why {
            crate::token::Refusal::Missing => "Bearer realm=\"smolchat\"".to_string(),
            _ => format!(
                "Bearer realm=\"smolchat\", error=\"invalid_token\", error_description=\"{}\"",
                why.reason()
            ),
        };
        Response::text(401, why.reason()).with("WWW-Authenticate", challenge)
    })
}

/// Without the `auth` feature every client is a guest.
#[cfg(not(feature = "auth"))]
fn authenticate(_: &Chat, _: &http::Head, _: &str) -> Result<Option<Box<Verified>>, Response> {
    Ok(None)
}

/// `/healthz`: 200, or 503 while a scale-out node cannot reach Redis.
#[cfg_attr(not(feature = "redis"), allow(unused_variables))]
fn health(chat: &Chat) -> Response {
    #[cfg(feature = "redis")]
    if chat.metrics.redis_down() {
        return Response::text(503, "redis unavailable");
    }
    Response::text(200, "ok")
}

/// Takes a connection slot, registers the client with the hub, answers `101`, and wraps the
/// stream as a WebSocket.
async fn upgrade<'a, S>(
    chat: &'a Chat,
    mut stream: S,
    leftover: Vec<u8>,
    accept_key: &str,
    group: Option<String>,
    user: Option<Box<Verified>>,
    peer: &str,
) -> Option<Upgrade<'a, S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[cfg(feature = "redis")]
    if chat.metrics.redis_down() {
        let down = Response::text(503, "chat backend unavailable; try again later")
            .with("Retry-After", "5");
        refuse(chat, &mut stream, peer, down, Refusal::Capacity).await;
        return None;
    }
    let max = chat.config.max_connections as u64;
    let Some(slot) = Slot::take(&chat.metrics.connections, max) else {
        let busy = Response::text(503, "server full; try again later").with("Retry-After", "5");
        refuse(chat, &mut stream, peer, busy, Refusal::Capacity).await;
        return None;
    };
    let expires = user.as_ref().map(|v| v.expires);
    let authenticated = user.is_some();
    let registration = match register(chat, group, user.map(|v| v.user), peer).await {
        Ok(registration) => registration,
        Err(refused) => {
            logger::refusal(
                peer,
                &format!("refused: {} {}", refused.status, refused.reason()),
            );
            respond(&mut stream, &refused).await;
            return None;
        }
    };
    Metrics::add(&chat.metrics.connections_total, 1);
    if authenticated {
        Metrics::add(&chat.metrics.authenticated, 1);
    }
    let written = async {
        stream
            .write_all(http::switching_protocols(accept_key).as_bytes())
            .await?;
        stream.flush().await
    };
    written.await.ok()?;
    // Boxed: the session's future holds a pointer, not the WebSocket's whole size.
    let socket = wire::accept(stream, leftover, ws_config(chat)).await;
    Some((socket, registration.into_parts(), expires, slot))
}

/// Gives the hub a new client's queue and waits for its id, before the `101`: from then on a
/// raw client is in its group and hears every frame, and a v1 client's `welcome` is on its
/// way. The hub may refuse a raw client (its token's claim, its user's connections, the room
/// limits), which is answered here with an HTTP status and the reason, since a raw client
/// reads no JSON. A hub that is shutting down takes no one: 503.
async fn register<'a>(
    chat: &'a Chat,
    group: Option<String>,
    user: Option<crate::client::User>,
    peer: &str,
) -> Result<Registration<'a>, Response> {
    let (queue_tx, queue) = queue::bounded(chat.config.queue, chat.config.queue_bytes);
    let (reply, answer) = async_channel::bounded(1);
    let command = Command::Connect {
        queue: queue_tx,
        reply,
        address: Address::of(peer),
        group,
        user,
    };
    let shutting_down =
        || Response::text(503, crate::hub::SHUTDOWN_CLOSE.1).with("Retry-After", "5");
    chat.inbox
        .send(command)
        .await
        .map_err(|_| shutting_down())?;
    match answer.recv().await {
        Ok(Ok(client)) => Ok(Registration {
            chat,
            client,
            queue: Some(queue),
        }),
        Ok(Err(Rejected::Forbidden(why))) => Err(Response::text(403, &why)),
        Ok(Err(Rejected::UserLimit(why))) => Err(Response::text(429, &why)),
        Ok(Err(Rejected::Busy(why))) => Err(Response::text(503, &why).with("Retry-After", "5")),
        Err(_) => Err(shutting_down()),
    }
}

/// A client the hub registered, until its session takes it over. Dropped before that (the
/// `101` could not be written, or the handshake's deadline passed), it tells the hub the
/// client is gone, as the session would have.
struct Registration<'a> {
    chat: &'a Chat,
    client: ClientId,
    queue: Option<Receiver<Outgoing>>,
}

impl Registration<'_> {
    /// The client's id and queue, for its session, which now owns its departure.
    fn into_parts(mut self) -> (ClientId, Receiver<Outgoing>) {
        let queue = self.queue.take().expect("taken once");
        (self.client, queue)
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.queue.is_some() {
            // No await in a drop. A full inbox cannot take the `Disconnect`: the client is
            // left to the hub, which forgets it before its next command.
            let gone = Command::Disconnect {
                client: self.client,
                reason: LeaveReason::Disconnected,
            };
            if self.chat.inbox.try_send(gone).is_err() {
                self.chat.orphans.add(self.client);
            }
        }
    }
}

/// Counts and logs a refusal, then answers it like any plain response.
pub(crate) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    chat: &Chat,
    stream: &mut S,
    peer: &str,
    response: Response,
    why: Refusal,
) {
    chat.metrics.refuse(why);
    logger::refusal(
        peer,
        &format!("refused: {} {}", response.status, response.reason()),
    );
    respond(stream, &response).await;
}

/// Writes a plain response, then reads and drops what the client is still sending (at most
/// 64 KiB, until it pauses for 100 ms or closes, within the exchange's one deadline)
/// before the socket is dropped. Dropping a socket with unread input makes the kernel
/// answer with a reset, which can destroy the response before the client reads it: a
/// refused oversized head would never see its 431. (A generic stream cannot half-close, so
/// the pause is how we know it is done.)
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
) {
    if response.write(stream).await.is_err() {
        return;
    }
    let mut scratch = [0u8; 512];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match within(Duration::from_millis(100), stream.read(&mut scratch)).await {
            Some(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// tungstenite's buffers, sized from our limits: its defaults (128 KiB read buffer,
/// 128 KiB write threshold, 64 MiB messages) would cost more per connection than
/// everything else together. The read buffer is allocated eagerly for every connection, so
/// it is small; a larger message just takes more reads. Frames are written to the socket
/// whenever 4 KiB are buffered, which bounds what an active connection holds.
///
/// tungstenite refuses a frame that would take its buffer past `max_write_buffer_size`
/// (`WriteBufferFull`), and a writer that took that for a dead client would drop a healthy
/// one. The buffer therefore holds what may be pending (4 KiB) plus the largest event the
/// hub can build with this configuration, plus the largest frame header.
fn ws_config(chat: &Chat) -> WebSocketConfig {
    let max = chat.config.max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + chat.config.max_event_bytes() + 14)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// A connection's place in its address's share of `--max-pending`.
struct Share {
    pending: Arc<std::sync::Mutex<HashMap<Address, u32>>>,
    address: Address,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = pending.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.address);
            }
        }
    }
}

/// One unit of a gauge with a limit (`connections` under `--max-connections`, `pending` under
/// `--max-pending`), held for as long as the connection is in that state.
pub(crate) struct Slot<'a>(&'a AtomicU64);

impl<'a> Slot<'a> {
    fn take(gauge: &'a AtomicU64, max: u64) -> Option<Self> {
        let now = gauge.fetch_add(1, Relaxed);
        if now >= max {
            gauge.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Slot(gauge))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_lite::FutureExt;

    use super::*;
    use crate::config::{Config, Protocol};

    /// A socket whose client sent one upgrade request and is gone by the time the `101` is
    /// written: its first write fails, after `on_write` ran.
    struct Vanishing {
        request: &'static [u8],
        on_write: Option<Box<dyn FnOnce()>>,
    }

    impl AsyncRead for Vanishing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.request.len());
            if n == 0 {
                return Poll::Pending; // nothing more: the upgrade is all it sent
            }
            buf[..n].copy_from_slice(&self.request[..n]);
            self.request = &self.request[n..];
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Vanishing {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            if let Some(on_write) = self.on_write.take() {
                on_write();
            }
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Review of issue 22: a raw client is registered before its `101`; when that write fails
    /// while the hub's inbox is full, its `Disconnect` cannot be queued. It must not stay a
    /// member of its group (or count against its user's connections) forever: the hub forgets
    /// it before its next command.
    #[test]
    fn a_client_whose_101_fails_while_the_inbox_is_full_is_forgotten() {
        let config = Config {
            protocol: Protocol::Raw,
            ..Config::default()
        };
        let (chat, hub) = Chat::new(config);
        let inbox = chat.inbox.clone();
        // A busy hub: the inbox fills up (with commands about nobody) while the 101 is on
        // its way.
        let fill = move || {
            let nobody = ClientId {
                key: usize::MAX,
                serial: 0,
            };
            let gone = || Command::Disconnect {
                client: nobody,
                reason: LeaveReason::Disconnected,
            };
            while inbox.try_send(gone()).is_ok() {}
        };
        let socket = Vanishing {
            request: b"GET /ws/ghost HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                Sec-WebSocket-Version: 13\r\n\r\n",
            on_write: Some(Box::new(fill)),
        };
        let rooms = || chat.metrics.rooms.load(Relaxed);
        let scenario = async {
            chat.serve(socket, "127.0.0.1:1").await;
            assert_eq!(
                rooms(),
                1,
                "registered; its Disconnect did not fit the inbox"
            );
            while !chat.inbox.is_empty() {
                futures_lite::future::yield_now().await;
            }
            assert_eq!(rooms(), 0, "forgotten: its group is gone");
        };
        futures_lite::future::block_on(scenario.or(hub));
    }
}
