//! smolchat: a small WebSocket chat server with rooms, nicknames, presence and history.
//!
//! ```text
//!  accepted socket (server.rs's accept loop, or an embedder's) → Chat::serve / serve_tls
//!    1. handshake.rs, all within one --handshake-timeout:
//!         --max-pending slot → [TLS, tls.rs] → read head, route (http.rs)
//!           ├─ GET /, /healthz, /metrics; 400, 403, 404, 405, 431, 503 → answered, dropped
//!           ├─ /api/ (api.rs) → key, rate limit, body → hub::Command::Api → JSON answer
//!           └─ /ws → token (token.rs; 401) → host, origin, --max-connections → 101 → WebSocket
//!    2. session.rs: reader and writer futures in one task (race.rs), socket metered (meter.rs)
//!         reader:  frame → protocol::parse → hub::Command ──► hub inbox (bounded)
//!         writer:  own bounded queue (queue.rs) ◄── hub (try_send only)
//!                  take all queued, one vectored write (wire.rs); pings, idle and write timeouts
//!  hub.rs (one future): the chat's rules and this node's clients
//!    command in → rules → the authority decides nicks, membership, ids and history
//!                         (authority::local in memory, or cluster's Redis authority)
//!    → each event encoded ONCE → shared by refcount with the recipients' queues
//! ```
//!
//! # Layout
//!
//! One line per module: what it owns.
//!
//! * `server`: the smol side (feature `smol`): the listener, the accept loop, the executor
//!   threads and the graceful shutdown.
//! * `handshake`: everything between an accepted socket and a WebSocket session: the
//!   `--max-pending` slots, the one `--handshake-timeout` deadline, HTTP routing, the `101`,
//!   and tungstenite's buffers.
//! * `http`: HTTP/1.1 request heads, the routing decision, plain responses, the built-in page.
//! * `token`: signed tokens (HS256 JWTs): who a client is, checked at the upgrade.
//! * `api`: the HTTP API's requests (`/api/`), from head and body to a call for the hub.
//! * `bucket`: the token bucket behind the clients' and the API's rate limits.
//! * `tls`: certificates and their reload on SIGHUP (feature `tls`).
//! * `meter`: the byte stream under tungstenite: the byte budget, the yield after a long read,
//!   and the count of writes that made progress.
//! * `session`: one client's WebSocket session: the reader (frames into commands, the rate
//!   limit) and the writer (batches out, pings, the idle and write timeouts, close codes).
//! * `wire`: a session's WebSocket on the wire: the writer's frames, written from the shared
//!   payloads with vectored writes, and tungstenite's own frames parked for the writer.
//! * `race`: two futures in one task, the first polled only when its own waker fired.
//! * `deadline`: timeouts that cost a timer only when an operation has to wait. Apart from
//!   `server`'s smol timer, the one module that touches `async-io`'s timer: the others take
//!   its `Timer` from here.
//! * `queue`: a client's outgoing queue, bounded in items and bytes, filled only by the hub.
//! * `hub`: the chat's rules and this node's clients, as one future: commands in, events out
//!   into the clients' queues. Its files: `requests.rs` (a client's commands, from request to
//!   the authority's answer), `audience.rs` (room events on this node: who hears what),
//!   `api.rs` (the HTTP API's calls) and `raw.rs` (the Go hub's protocol, `--protocol raw`).
//! * `access`: the access rules: which rooms a client's token lets it enter and see, checked
//!   in this one place for every path (join, `who`, `rooms`, `direct`, raw groups).
//! * `authority`: the interface between the hub's rules and who decides ids, history, nicks
//!   and membership; `authority::local` decides in memory, for a single node.
//! * `client`: a client's id, the address it connects from, and the user its token proved.
//! * `room`: one room: its members, its history ring and the rules for replaying it.
//! * `cluster`: the Redis authority and its bridge future, for nodes that share rooms
//!   (feature `redis`).
//! * `store`: durable history (`--data-dir`, feature `store`): the writer thread that commits
//!   the local authority's changes to a redb file, and reads them back at start-up.
//! * `protocol`: protocol v1 on the wire: requests parsed, events encoded once.
//! * `config`: every setting and limit, from flags and the environment.
//! * `metrics`: the counters, rendered at `/metrics` as Prometheus text.
//! * `logger`: a small stderr logger, and the rate limit on refusal lines.
//!
//! Everything but `server` and `cluster` (whose Redis client, redis-rs, runs on smol) is
//! written against `futures-io` traits, `async-channel` and `async-io`'s
//! timer (which drives itself), so it runs on any executor: the library builds without smol
//! (`--no-default-features`).
//!
//! # Two ways in
//!
//! - [`server::start`] binds a listener, runs everything on its own executor threads and
//!   reports the bound address (port 0 works), which is what the binary and the tests use.
//! - [`Chat::new`] gives a handle plus the hub future, for embedding: spawn the future on any
//!   executor, then hand each accepted connection to [`Chat::serve`] (or, with feature `tls`,
//!   `Chat::serve_tls`).

#![forbid(unsafe_code)]

/// The README's code examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod access;
#[cfg(feature = "api")]
mod api;
pub mod authority;
mod bucket;
pub mod client;
#[cfg(feature = "redis")]
pub mod cluster;
pub mod config;
mod deadline;
mod handshake;
pub mod http;
pub mod hub;
pub mod logger;
mod meter;
pub mod metrics;
pub mod protocol;
pub mod queue;
mod race;
pub mod room;
#[cfg(any(feature = "auth", feature = "api"))]
pub mod secret;
#[cfg(feature = "smol")]
pub mod server;
mod session;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "auth")]
pub mod token;
mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_channel::Sender;
use futures_lite::{AsyncRead, AsyncWrite};

pub use config::Config;
use hub::{Address, Command, Hub};
use meter::Metered;
pub use metrics::Metrics;

/// The cargo features this build was compiled with, as `smolchat --version` prints them.
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "smol")]
    "smol",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "tls")]
    "tls",
    #[cfg(feature = "auth")]
    "auth",
    #[cfg(feature = "api")]
    "api",
    #[cfg(feature = "store")]
    "store",
];

/// Commands that may wait in the hub's inbox before readers have to wait their turn.
const INBOX_CAPACITY: usize = 1024;

/// A handle to a running hub: cheap to clone, one per accepted connection if you like.
#[derive(Clone)]
pub struct Chat {
    inbox: Sender<Command>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// Clients whose handshake failed after the hub registered them (see [`hub::Orphans`]).
    orphans: Arc<hub::Orphans>,
    /// Pending connections per address, for each address's share of `--max-pending`.
    pending: Arc<std::sync::Mutex<HashMap<Address, u32>>>,
    /// The HTTP API key's rate limit (`--api-rate-limit`).
    #[cfg(feature = "api")]
    api_calls: Arc<std::sync::Mutex<bucket::TokenBucket>>,
    /// Scale-out: closed when the Redis bridge has said goodbye and stopped.
    #[cfg(feature = "redis")]
    bridge_stopped: Option<async_channel::Receiver<()>>,
}

impl Chat {
    /// Creates the hub for `config`. Returns the handle and the hub's future, which must be
    /// spawned (or otherwise polled) for anything to happen; it ends once every handle and
    /// session is gone.
    ///
    /// # Panics
    ///
    /// With `--data-dir` (feature `store`), if the store cannot be opened; [`Chat::try_new`]
    /// returns that error instead.
    pub fn new(config: Config) -> (Chat, impl Future<Output = ()> + Send + 'static) {
        match Chat::try_new(config) {
            Ok(created) => created,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Chat::new`], with an error instead of a panic when the durable store (`--data-dir`)
    /// cannot be opened: the message names the file and says what to do.
    pub fn try_new(config: Config) -> Result<(Chat, HubFuture), String> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let (inbox, commands) = async_channel::bounded(INBOX_CAPACITY);
        #[cfg(feature = "redis")]
        if config.redis.is_some() {
            let (done, stopped) = async_channel::bounded(1);
            let (authority, notices, bridge) =
                cluster::start(config.clone(), metrics.clone(), done);
            let hub = Hub::with_authority(config.clone(), metrics.clone(), Box::new(authority));
            let mut chat = Chat::handle(inbox, &hub, config, metrics);
            chat.bridge_stopped = Some(stopped);
            // The bridge is part of the hub's future: the embedder's executor runs both, and
            // the library spawns nothing of its own.
            let run =
                futures_lite::future::zip(hub::run_with_notices(hub, commands, notices), bridge);
            return Ok((
                chat,
                Box::pin(async move {
                    run.await;
                }),
            ));
        }
        #[cfg(feature = "store")]
        if let Some(dir) = &config.data_dir {
            // The writer reports each commit (one at most per commit, small): unbounded, so
            // that it never waits on a hub that is waiting for it to end (a clean stop).
            let (reports, notices) = async_channel::unbounded();
            // Changes may wait for the writer up to about twice the history itself.
            let limit = config.history_total_bytes.max(1 << 20).saturating_mul(2);
            let report = move |r| {
                let _ = reports.try_send(authority::Notice::Stored(r));
            };
            let (store, saved, starts) =
                store::Store::open(dir, config.sync_interval, limit, report)?;
            let local = authority::local::Local::with_store(
                config.clone(),
                metrics.clone(),
                store,
                (saved, starts),
            );
            let hub = Hub::with_authority(config.clone(), metrics.clone(), Box::new(local));
            let chat = Chat::handle(inbox, &hub, config, metrics);
            return Ok((
                chat,
                Box::pin(hub::run_with_notices(hub, commands, notices)),
            ));
        }
        let hub = Hub::new(config.clone(), metrics.clone());
        let chat = Chat::handle(inbox, &hub, config, metrics);
        Ok((chat, Box::pin(hub::run(hub, commands))))
    }

    /// The handle to `hub`, which takes commands from `inbox`.
    fn handle(
        inbox: Sender<Command>,
        hub: &Hub,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Chat {
        Chat {
            inbox,
            orphans: hub.orphans(),
            #[cfg(feature = "api")]
            api_calls: api::bucket(&config),
            config,
            metrics,
            pending: Arc::default(),
            #[cfg(feature = "redis")]
            bridge_stopped: None,
        }
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
    pub fn serve<'a, S>(&'a self, stream: S, peer: &'a str) -> impl Future<Output = ()> + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin + 'a,
    {
        // Not an `async fn`: that would wrap the connection's future in one more layer, with
        // its own copy of the arguments, for the connection's whole life.
        let plain = |stream| async { Some(stream) };
        self.serve_over(stream, peer, plain, true)
    }

    /// Serves one accepted connection that speaks TLS (feature `tls`): the TLS handshake with
    /// `acceptor` first, then everything [`Chat::serve`] does, over the encrypted stream. The
    /// TLS handshake is part of the exchange that `--handshake-timeout` and `--max-pending`
    /// bound.
    #[cfg(feature = "tls")]
    pub fn serve_tls<'a, S>(
        &'a self,
        stream: S,
        peer: &'a str,
        acceptor: futures_rustls::TlsAcceptor,
    ) -> impl Future<Output = ()> + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin + 'a,
    {
        let tls = move |stream| handshake::tls(self, stream, peer, acceptor);
        // No plain-HTTP 503 on a TLS port: the client could not read it.
        self.serve_over(stream, peer, tls, false)
    }

    /// A connection's whole life: the handshake ([`handshake::admit`]) over the stream `wrap`
    /// makes of the socket (the socket itself, or its TLS stream), then the session.
    /// `plain`: a refused connection may be answered in plain HTTP.
    #[allow(clippy::manual_async_fn)] // see `session::run`: no copy of the arguments
    fn serve_over<'a, S, T, F, Fut>(
        &'a self,
        stream: S,
        peer: &'a str,
        wrap: F,
        plain: bool,
    ) -> impl Future<Output = ()> + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin + 'a,
        T: AsyncRead + AsyncWrite + Unpin + 'a,
        F: FnOnce(Metered<S>) -> Fut + 'a,
        Fut: Future<Output = Option<T>> + 'a,
    {
        async move {
            // The handshake's futures are large and short-lived. Boxed, they are freed before
            // the session starts instead of sitting inside every connection's future for its
            // whole life (rustc does not reuse their space for the session's state).
            let Some(handshake::Upgraded {
                socket,
                progress,
                client,
                expires,
                slot,
            }) = Box::pin(handshake::admit(self, stream, peer, wrap, plain)).await
            else {
                return;
            };
            session::run(self, socket, &progress, client, expires, peer).await;
            drop(slot);
        }
    }
}

/// The hub's future, as [`Chat::try_new`] returns it: boxed, since each kind of authority
/// makes a future of its own type (one allocation for the server's life).
pub type HubFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
