//! smolchat: a small WebSocket chat server with rooms, nicknames, presence and history.
//!
//! ```text
//!  TCP accept (server.rs)
//!    └─ read HTTP head (http.rs) ── GET /healthz, /metrics, 404, 405, 431, 503 ...
//!                                 └ GET /ws → origin + capacity check → 101 → session.rs
//!    reader future:  frame → protocol::parse → hub::Command ──► hub inbox (bounded)
//!    writer future:  own bounded queue ◄── hub (try_send only)
//!                    recv → feed, drain what is queued, flush once; pings; close codes
//!  hub.rs (one future, owns all chat state):
//!    Slab<Client{ queue, nick, rooms }>, rooms: name → Room{ members, history ring, ids }
//!    command in → state change → each event encoded ONCE → shared by refcount with recipients
//! ```
//!
//! The pieces that hold chat logic ([`hub`], [`room`], [`protocol`], the session) are written
//! against `futures-io` traits and `async-channel` and run on any executor. Only [`server`]
//! (the accept loop and its threads) uses smol.
//!
//! Two ways in:
//! - [`server::start`] binds a listener, runs everything on its own executor threads and
//!   reports the bound address (port 0 works), which is what the binary and the tests use.
//! - [`Chat::new`] gives a handle plus the hub future, for embedding: spawn the future on any
//!   executor, then hand each accepted connection to [`Chat::serve`].

#![forbid(unsafe_code)]

/// The README's code examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod authority;
pub mod client;
#[cfg(feature = "redis")]
pub mod cluster;
pub mod config;
mod deadline;
pub mod http;
pub mod hub;
pub mod logger;
mod meter;
pub mod metrics;
pub mod protocol;
pub mod queue;
mod race;
pub mod room;
#[cfg(feature = "smol")]
pub mod server;
mod session;
#[cfg(feature = "tls")]
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use async_channel::Sender;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::{WebSocketReceiver, WebSocketSender, WebSocketStream};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use config::Config;
use deadline::within;
use http::{HeadError, Response, Route};
use hub::{Address, Command, Hub};
use meter::{Metered, Progress};
pub use metrics::Metrics;
use metrics::Refusal;

/// The cargo features this build was compiled with, as `smolchat --version` prints them.
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "smol")]
    "smol",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "tls")]
    "tls",
];

/// Commands that may wait in the hub's inbox before readers have to wait their turn.
const INBOX_CAPACITY: usize = 1024;

/// A handle to a running hub: cheap to clone, one per accepted connection if you like.
#[derive(Clone)]
pub struct Chat {
    inbox: Sender<Command>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// Pending connections per address, for each address's share of `--max-pending`.
    pending: Arc<std::sync::Mutex<HashMap<Address, u32>>>,
    /// Scale-out: closed when the Redis bridge has said goodbye and stopped.
    #[cfg(feature = "redis")]
    bridge_stopped: Option<async_channel::Receiver<()>>,
}

impl Chat {
    /// Creates the hub for `config`. Returns the handle and the hub's future, which must be
    /// spawned (or otherwise polled) for anything to happen; it ends once every handle and
    /// session is gone.
    pub fn new(config: Config) -> (Chat, impl Future<Output = ()> + Send + 'static) {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let (inbox, commands) = async_channel::bounded(INBOX_CAPACITY);
        #[cfg(feature = "redis")]
        if config.redis.is_some() {
            let (done, stopped) = async_channel::bounded(1);
            let (authority, notices, bridge) =
                cluster::start(config.clone(), metrics.clone(), done);
            let hub = Hub::with_authority(config.clone(), metrics.clone(), Box::new(authority));
            let chat = Chat {
                inbox,
                config,
                metrics,
                pending: Arc::default(),
                bridge_stopped: Some(stopped),
            };
            // The bridge is part of the hub's future: the embedder's executor runs both, and
            // the library spawns nothing of its own.
            let run = futures_lite::future::zip(hub::run(hub, commands, Some(notices)), bridge);
            return (
                chat,
                Either::Left(async move {
                    run.await;
                }),
            );
        }
        let hub = Hub::new(config.clone(), metrics.clone());
        let chat = Chat {
            inbox,
            config,
            metrics,
            pending: Arc::default(),
            #[cfg(feature = "redis")]
            bridge_stopped: None,
        };
        let run = hub::run(hub, commands, None);
        #[cfg(feature = "redis")]
        let run = Either::Right(run);
        (chat, run)
    }

    /// Scale-out: waits until the Redis bridge has told the other nodes this one is leaving
    /// (after [`Chat::shutdown`]).
    #[cfg(feature = "redis")]
    pub async fn bridge_stopped(&self) {
        if let Some(stopped) = &self.bridge_stopped {
            let _ = stopped.recv().await;
        }
    }

    /// The configuration the hub was created with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Asks the hub to close every client with 1001 and to accept no new ones.
    pub async fn shutdown(&self) {
        let _ = self.inbox.send(Command::Shutdown).await;
    }

    /// Serves one accepted connection from its first byte to its end: reads the HTTP request,
    /// answers it, and for `GET /ws` runs the WebSocket session. `peer` appears in logs.
    ///
    /// Until it is a WebSocket session, a connection holds one of `--max-pending` slots, and the
    /// whole exchange (request head, response, the drain after it, or the upgrade) must be over
    /// within `--handshake-timeout`. Beyond the slots, a connection gets a 503 if its socket
    /// takes it at once, and is closed.
    pub async fn serve<S>(&self, stream: S, peer: &str)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let plain = |stream| async { Some(stream) };
        self.serve_over(stream, peer, plain, true).await;
    }

    /// Serves one accepted connection that speaks TLS (feature `tls`): the TLS handshake with
    /// `acceptor` first, then everything [`Chat::serve`] does, over the encrypted stream. The
    /// TLS handshake is part of the exchange that `--handshake-timeout` and `--max-pending`
    /// bound.
    #[cfg(feature = "tls")]
    pub async fn serve_tls<S>(&self, stream: S, peer: &str, acceptor: futures_rustls::TlsAcceptor)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = |stream| async move {
            // rustls buffers up to 64 KiB of outgoing plaintext by default: 16 KiB holds more
            // than the largest default event, and bounds what a client that stops reading costs.
            let limit = |conn: &mut futures_rustls::rustls::ServerConnection| {
                conn.set_buffer_limit(Some(tls::BUFFER_LIMIT));
            };
            match acceptor.accept_with(stream, limit).await {
                Ok(tls) => Some(tls),
                Err(e) => {
                    let failure = tls::Failure::of(&e);
                    self.metrics.tls_failed(failure);
                    logger::refusal(peer, &format!("TLS handshake failed ({failure:?}): {e}"));
                    None
                }
            }
        };
        // No plain-HTTP 503 on a TLS port: the client could not read it.
        self.serve_over(stream, peer, handshake, false).await;
    }

    /// Admission, then the session, over the stream `wrap` makes of the socket (the socket
    /// itself, or its TLS stream). `plain`: a refused connection may be answered in plain HTTP.
    async fn serve_over<S, T, F, Fut>(&self, stream: S, peer: &str, wrap: F, plain: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin,
        T: AsyncRead + AsyncWrite + Unpin,
        F: FnOnce(Metered<S>) -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        // Admission's futures are large and short-lived. Boxed, they are freed before the
        // session starts instead of sitting inside every connection's future for its whole
        // life (rustc does not reuse their space for the session's state).
        let admitted = Box::pin(self.admit(stream, peer, wrap, plain)).await;
        if let Some((halves, progress, group, slot)) = admitted {
            session::run(self, halves, &progress, group, peer).await;
            drop(slot);
        }
    }

    /// One of the address's `--max-pending-per-address` share of the `--max-pending` slots,
    /// so that one address cannot hold every slot and lock everyone else out.
    fn pending_share(&self, peer: &str) -> Option<Share> {
        let address = Address::of(peer);
        let share = self.config.max_pending_per_address as u32;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let count = pending.entry(address).or_default();
        if *count >= share {
            return None;
        }
        *count += 1;
        Some(Share {
            pending: self.pending.clone(),
            address,
        })
    }

    /// Everything before the session: a `--max-pending` slot, then `wrap` and the HTTP
    /// exchange, together within `--handshake-timeout`.
    async fn admit<S, T, F, Fut>(
        &self,
        mut stream: S,
        peer: &str,
        wrap: F,
        plain: bool,
    ) -> Option<Upgraded<'_, T>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        T: AsyncRead + AsyncWrite + Unpin,
        F: FnOnce(Metered<S>) -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let pending = Slot::take(&self.metrics.pending, self.config.max_pending as u64)
            .and_then(|slot| Some((slot, self.pending_share(peer)?)));
        let Some(_pending) = pending else {
            self.metrics.refuse(Refusal::Pending);
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
        let config = &self.config;
        let per_message = config.max_message_bytes as u64 + 64;
        let rate = u64::from(config.rate_limit) * per_message;
        let burst = u64::from(config.rate_burst) * per_message;
        let (stream, progress) = Metered::new(stream, rate, burst);
        let exchange = async {
            let stream = wrap(stream).await?;
            self.handshake(stream, peer).await
        };
        match within(self.config.handshake_timeout, exchange).await {
            Some(upgraded) => upgraded.map(|(halves, group, slot)| (halves, progress, group, slot)),
            None => {
                self.metrics.refuse(Refusal::Timeout);
                logger::refusal(peer, "dropped: request not done within --handshake-timeout");
                None
            }
        }
    }

    /// Reads the request head and answers it. For an accepted upgrade, returns the WebSocket,
    /// its raw-mode group and the connection's slot under `--max-connections`.
    async fn handshake<S>(&self, mut stream: S, peer: &str) -> Option<Upgrade<'_, S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (head, leftover) = match http::read_head(&mut stream).await {
            Ok(read) => read,
            Err(HeadError::Io) => return None,
            Err(HeadError::TooLarge) => {
                let response = Response::text(431, "request head too large");
                self.refuse(&mut stream, peer, response, Refusal::HeadTooLarge)
                    .await;
                return None;
            }
            Err(HeadError::Malformed) => {
                let response = Response::text(400, "malformed HTTP request");
                self.refuse(&mut stream, peer, response, Refusal::BadRequest)
                    .await;
                return None;
            }
        };
        let response = match http::route(&head, &self.config) {
            Route::Upgrade { accept_key, group } => {
                return self
                    .upgrade(stream, leftover, &accept_key, group, peer)
                    .await;
            }
            Route::Page => http::page(self.config.protocol),
            Route::Health => self.health(),
            Route::Metrics => {
                let mut r = Response::text(200, "");
                r.content_type = "text/plain; version=0.0.4; charset=utf-8";
                r.body = self.metrics.render().into();
                r
            }
            Route::Refuse(response, None) => response,
            Route::Refuse(response, Some(why)) => {
                self.refuse(&mut stream, peer, response, why).await;
                return None;
            }
        };
        self.respond(&mut stream, &response).await;
        None
    }

    /// `/healthz`: 200, or 503 while a scale-out node cannot reach Redis.
    fn health(&self) -> Response {
        #[cfg(feature = "redis")]
        if self.metrics.redis_down() {
            return Response::text(503, "redis unavailable");
        }
        Response::text(200, "ok")
    }

    /// Takes a connection slot, answers `101`, and wraps the stream as a WebSocket.
    async fn upgrade<S>(
        &self,
        mut stream: S,
        leftover: Vec<u8>,
        accept_key: &str,
        group: Option<String>,
        peer: &str,
    ) -> Option<Upgrade<'_, S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        #[cfg(feature = "redis")]
        if self.metrics.redis_down() {
            let down = Response::text(503, "chat backend unavailable; try again later")
                .with("Retry-After", "5");
            self.refuse(&mut stream, peer, down, Refusal::Capacity)
                .await;
            return None;
        }
        let max = self.config.max_connections as u64;
        let Some(slot) = Slot::take(&self.metrics.connections, max) else {
            let busy = Response::text(503, "server full; try again later").with("Retry-After", "5");
            self.refuse(&mut stream, peer, busy, Refusal::Capacity)
                .await;
            return None;
        };
        Metrics::add(&self.metrics.connections_total, 1);
        let written = async {
            stream
                .write_all(http::switching_protocols(accept_key).as_bytes())
                .await?;
            stream.flush().await
        };
        written.await.ok()?;
        let ws_config = Some(self.ws_config());
        let ws =
            WebSocketStream::from_partially_read(stream, leftover, Role::Server, ws_config).await;
        // Split here: the halves are two pointers to the shared WebSocket, while the stream
        // itself would take its whole size in every connection's future.
        Some((ws.split(), group, slot))
    }

    async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        peer: &str,
        response: Response,
        why: Refusal,
    ) {
        self.metrics.refuse(why);
        logger::refusal(
            peer,
            &format!("refused: {} {}", response.status, response.body.trim_end()),
        );
        self.respond(stream, &response).await;
    }

    /// Writes a plain response, then reads and drops what the client is still sending (at most
    /// 64 KiB, until it pauses for 100 ms or closes, within the exchange's one deadline)
    /// before the socket is dropped. Dropping a socket with unread input makes the kernel
    /// answer with a reset, which can destroy the response before the client reads it: a
    /// refused oversized head would never see its 431. (A generic stream cannot half-close, so
    /// the pause is how we know it is done.)
    async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
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
    fn ws_config(&self) -> WebSocketConfig {
        let max = self.config.max_message_bytes;
        WebSocketConfig::default()
            .read_buffer_size(512)
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(WRITE_BUFFER + self.config.max_event_bytes() + 14)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

/// One of two futures, for `Chat::new`'s two kinds of hub.
#[cfg(feature = "redis")]
use futures_util::future::Either;

/// Bytes tungstenite buffers before it writes to the socket.
const WRITE_BUFFER: usize = 4096;

/// An accepted upgrade: the WebSocket's two halves, its raw-mode group and its
/// `--max-connections` slot.
type Upgrade<'a, S> = (
    (WebSocketSender<S>, WebSocketReceiver<S>),
    Option<String>,
    Slot<'a>,
);

/// An admitted connection: the upgrade, with the write progress of its socket.
type Upgraded<'a, S> = (
    (WebSocketSender<S>, WebSocketReceiver<S>),
    Arc<Progress>,
    Option<String>,
    Slot<'a>,
);

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
struct Slot<'a>(&'a AtomicU64);

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
