//! smolchat: a small WebSocket chat server with rooms, nicknames, presence and history.
//!
//! ```text
//!  accepted socket (server.rs's accept loop, or an embedder's) → Chat::serve / serve_tls
//!    1. handshake.rs, all within one --handshake-timeout:
//!         --max-pending permit (admission.rs) → [TLS, tls.rs] → read head (http.rs)
//!         → token (token.rs; 401), route (route.rs):
//!           ├─ GET /, /healthz, /metrics; 400, 403, 404, 405, 431, 503 → answered, dropped
//!           ├─ /api/ (api.rs) → key, rate limit, body → hub::Command::Api → JSON answer
//!           └─ /ws → host, origin → upgrade.rs: --max-connections permit, register → 101
//!    2. session.rs: reader and writer futures in one task (race.rs), socket metered (meter.rs)
//!         reader:  frame → its JSON shape (protocol::Wire) → hub::Command ──► hub inbox
//!         writer:  own bounded queue (queue.rs) ◄── hub (try_send only)
//!                  take all queued, one vectored write (wire.rs); pings, idle and write timeouts
//!  hub.rs (one future): the chat's rules and this node's clients
//!    command in → its unit (commands/*.rs): fields checked → rules → the authority decides nicks, membership, ids and history
//!                         (authority::local in memory, or cluster's Redis authority)
//!    → each event encoded ONCE → shared by refcount with the recipients' queues
//! ```
//!
//! # Layout
//!
//! One line per module: what it owns.
//!
//! * `server`: the smol side (feature `smol`): the listener, the accept loop, the executor
//!   threads and the graceful shutdown; `server::executor`, the threads' one run queue.
//! * `admission`: the front door's limits as counting semaphores with RAII permits
//!   (`--max-pending` and each address's share, `--max-connections`), and the API key's rate.
//!   `/metrics` reads them; nothing else counts them.
//! * `handshake`: everything between an accepted socket and a routed request: the pending
//!   permit, the one `--handshake-timeout` deadline, TLS, the request head. It sees the chat
//!   through `Front`, a narrow view: settings, counters, admission, the hub's inbox.
//! * `route`: what each request gets, decided in one place (page, `/healthz`, `/metrics`,
//!   `/api/`, the upgrade, refusals), the token checked first.
//! * `upgrade`: the WebSocket upgrade: the session permit, the registration with the hub, the
//!   `101`, and tungstenite's buffers.
//! * `http`: HTTP/1.1 request heads, plain responses (and refusals), the built-in page.
//! * `token`: signed tokens (HS256 JWTs): who a client is, checked at the upgrade.
//! * `api`: the HTTP API's requests (`/api/`), from head and body to a call for the hub.
//! * `bucket`: the token bucket behind the clients' and the API's rate limits.
//! * `tls`: certificates and their reload on SIGHUP (feature `tls`).
//! * `meter`: the byte stream under tungstenite: the byte budget, the yield after a long read,
//!   and the count of writes that made progress.
//! * `session`: one client's WebSocket session: the reader (frames to the hub, the rate
//!   limit) and the writer (batches out, pings, the idle and write timeouts, close codes).
//! * `wire`: a session's WebSocket on the wire: the writer's frames, written from the shared
//!   payloads with vectored writes, and tungstenite's own frames parked for the writer.
//! * `race`: two futures in one task, the first polled only when its own waker fired.
//! * `deadline`: timeouts that cost a timer only when an operation has to wait. Apart from
//!   `server`'s smol timer, the one module that touches `async-io`'s timer: the others take
//!   its `Timer` from here.
//! * `queue`: a client's outgoing queue, bounded in items and bytes, filled only by the hub.
//! * `hub`: the chat's rules and this node's clients, as one future: commands in, events out
//!   into the clients' queues. Its files: `commands/*.rs` (one unit per command: its fields, hub
//!   step, question, reply), `late.rs` (answers that come later: Redis), `audience.rs` (room
//!   events on this node: who hears what), `api.rs` (the HTTP API's calls) and `raw.rs` (the
//!   Go hub's protocol, `--protocol raw`).
//! * `access`: the access rules: which rooms a client's token lets it enter and see, checked
//!   in this one place for every path (join, `who`, `rooms`, `direct`, raw groups).
//! * `authority`: the interface between the hub's rules and who decides ids, history, nicks
//!   and membership; `authority::local` decides in memory, for a single node.
//! * `client`: a client's id, the address it connects from, and the user its token proved.
//! * `room`: one room: its members, its history ring and the rules for replaying it.
//! * `cluster`: the Redis authority and its bridge future, for nodes that share rooms
//!   (feature `redis`); `cluster::backend` is what the rest of the server sees of it: its
//!   flags, its start and its health. The backend is chosen in one place, `Backend::choose`.
//! * `store`: durable history (`--data-dir`, feature `store`): the writer thread that commits
//!   the local authority's changes to a redb file, and reads them back at start-up.
//! * `protocol`: protocol v1 on the wire: the JSON shape of a client's frame (`Wire`),
//!   the checks names and texts share, events encoded once, error codes.
//! * `config`: every setting and limit with its default, and the flag table's parts: `Flag`,
//!   `Section`, the `flags!` macro, the flags every build has. Optional parts declare their
//!   own section beside their code (`token`, `api`, `tls`, `cluster::backend`).
//! * `cli`: the command line: the sections this build has, `--help`, flags and environment
//!   into a validated `Config`, and `smolchat token`.
//! * `metrics`: the counters, rendered at `/metrics` as Prometheus text with the admission
//!   gauges.
//! * `logger`: a small stderr logger, and the rate limit on refusal lines.
//!
//! Everything but `server` is written against `futures-io` traits, `async-channel` and
//! `async-io`'s timer (which drives itself), so it runs on any executor: the library builds
//! without smol (`--no-default-features`). The Redis backend (`cluster`) names no runtime
//! either: its byte stream to Redis comes from a connector that the executor's owner passes
//! to `Chat::try_new_with_redis` (`server::redis_stream`, smol's sockets, for the binary).
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
pub mod admission;
#[cfg(feature = "api")]
mod api;
pub mod authority;
mod bucket;
pub mod cli;
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
pub mod route;
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
mod upgrade;
mod wire;

use std::future::Future;
use std::sync::Arc;

use async_channel::Sender;
use futures_lite::{AsyncRead, AsyncWrite};

use admission::Admission;
pub use config::Config;
use hub::{Command, Hub};
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
    /// The front door's limits: pending connections, sessions, the API's rate.
    admission: Arc<Admission>,
    /// Whether the backend takes new sessions (see [`Backend`]'s `up`).
    backend_up: fn(&Metrics) -> bool,
    /// Scale-out: closed when the Redis bridge has said goodbye and stopped.
    #[cfg(feature = "redis")]
    bridge_stopped: Option<async_channel::Receiver<()>>,
}

/// What the front door (`handshake`, `route`, `upgrade`, `api`) sees of the chat: the
/// settings, the counters, admission, and the way to the hub; nothing else. One pointer to
/// the [`Chat`], so that the handshake's futures are no larger for it.
#[derive(Clone, Copy)]
pub(crate) struct Front<'a>(&'a Chat);

impl<'a> Front<'a> {
    pub(crate) fn config(self) -> &'a Config {
        &self.0.config
    }

    pub(crate) fn metrics(self) -> &'a Metrics {
        &self.0.metrics
    }

    pub(crate) fn admission(self) -> &'a Admission {
        &self.0.admission
    }

    /// The hub's inbox: registrations and API calls.
    pub(crate) fn inbox(self) -> &'a Sender<Command> {
        &self.0.inbox
    }

    /// Where a registered client whose `Disconnect` did not fit the inbox is left.
    pub(crate) fn orphans(self) -> &'a hub::Orphans {
        &self.0.orphans
    }

    /// True while the backend takes new sessions: always on one node; with Redis, while Redis
    /// can be reached. `/healthz` says 503 while it does not.
    pub(crate) fn backend_up(self) -> bool {
        (self.0.backend_up)(&self.0.metrics)
    }
}

/// How the Redis backend reaches Redis, if this build has one: supplied by the executor's
/// owner ([`Chat::try_new_with_redis`]).
#[derive(Default)]
struct Connector(#[cfg(feature = "redis")] Option<cluster::Connect>);

/// The authority a configuration asks for, as [`Backend::choose`] starts it: the hub that asks
/// it, what it tells the hub later (`notices`), what runs beside the hub (the Redis bridge),
/// and whether it takes new sessions now.
pub(crate) struct Backend {
    pub(crate) hub: Hub,
    pub(crate) notices: Option<async_channel::Receiver<authority::Notice>>,
    pub(crate) beside: Option<HubFuture>,
    /// Whether it takes new sessions now, judged from the counters it keeps: a plain function,
    /// so that the single node's answer (always) costs nothing.
    pub(crate) up: fn(&Metrics) -> bool,
    /// Scale-out: closed when the bridge has said goodbye.
    #[cfg(feature = "redis")]
    pub(crate) stopped: Option<async_channel::Receiver<()>>,
}

impl Backend {
    /// The one place the backend is chosen: Redis with `--redis` (feature `redis`), the local
    /// authority with its durable store with `--data-dir` (feature `store`), else the local
    /// authority in memory.
    fn choose(
        config: &Arc<Config>,
        metrics: &Arc<Metrics>,
        connector: Connector,
    ) -> Result<Backend, String> {
        #[cfg(feature = "redis")]
        if config.redis.is_some() {
            let connect = connector.0.ok_or(
                "--redis needs a way to reach Redis on this executor: pass one to \
                 Chat::try_new_with_redis (server::start passes server::redis_stream)",
            )?;
            return Ok(cluster::backend::start(
                config.clone(),
                metrics.clone(),
                connect,
            ));
        }
        let _ = connector;
        #[cfg(feature = "store")]
        if let Some(dir) = &config.data_dir {
            return Backend::stored(config, metrics, dir);
        }
        Ok(Backend::local(Hub::new(config.clone(), metrics.clone())))
    }

    /// A backend that decides at once, in this process: always up, nothing beside the hub.
    fn local(hub: Hub) -> Backend {
        Backend {
            hub,
            notices: None,
            beside: None,
            up: |_| true,
            #[cfg(feature = "redis")]
            stopped: None,
        }
    }

    /// The local authority with its durable store in `dir` (`--data-dir`).
    #[cfg(feature = "store")]
    fn stored(config: &Arc<Config>, metrics: &Arc<Metrics>, dir: &str) -> Result<Backend, String> {
        // The writer reports each commit (one at most per commit, small): unbounded, so
        // that it never waits on a hub that is waiting for it to end (a clean stop).
        let (reports, notices) = async_channel::unbounded();
        // Changes may wait for the writer up to about twice the history itself.
        let limit = config.history_total_bytes.max(1 << 20).saturating_mul(2);
        let report = move |r| {
            let _ = reports.try_send(authority::Notice::Stored(r));
        };
        let (store, saved, starts) = store::Store::open(dir, config.sync_interval, limit, report)?;
        let local = authority::local::Local::with_store(
            config.clone(),
            metrics.clone(),
            store,
            (saved, starts),
        );
        let hub = Hub::with_authority(config.clone(), metrics.clone(), Box::new(local));
        Ok(Backend {
            notices: Some(notices),
            ..Backend::local(hub)
        })
    }
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
    /// cannot be opened: the message names the file and says what to do. With `--redis`, see
    /// `Chat::try_new_with_redis` (feature `redis`).
    pub fn try_new(config: Config) -> Result<(Chat, HubFuture), String> {
        Chat::build(config, Connector::default())
    }

    /// [`Chat::try_new`] for `--redis` (feature `redis`): `connect` opens the byte stream to
    /// Redis on the embedder's executor (`server::redis_stream` for smol, which
    /// [`server::start`] passes).
    #[cfg(feature = "redis")]
    pub fn try_new_with_redis(
        config: Config,
        connect: cluster::Connect,
    ) -> Result<(Chat, HubFuture), String> {
        Chat::build(config, Connector(Some(connect)))
    }

    fn build(config: Config, connector: Connector) -> Result<(Chat, HubFuture), String> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let (inbox, commands) = async_channel::bounded(INBOX_CAPACITY);
        let backend = Backend::choose(&config, &metrics, connector)?;
        let chat = Chat {
            inbox,
            orphans: backend.hub.orphans(),
            admission: Arc::new(Admission::new(&config)),
            backend_up: backend.up,
            config,
            metrics,
            #[cfg(feature = "redis")]
            bridge_stopped: backend.stopped,
        };
        let hub: HubFuture = match backend.notices {
            Some(notices) => Box::pin(hub::run_with_notices(backend.hub, commands, notices)),
            None => Box::pin(hub::run(backend.hub, commands)),
        };
        // What runs beside the hub is part of the hub's future: the embedder's executor runs
        // both, and the library spawns nothing of its own.
        let run: HubFuture = match backend.beside {
            Some(beside) => Box::pin(async move {
                futures_lite::future::zip(hub, beside).await;
            }),
            None => hub,
        };
        Ok((chat, run))
    }

    /// The view of the chat the front door gets.
    fn front(&self) -> Front<'_> {
        Front(self)
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

    /// The front door's limits, and how many of each are taken now.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The `/metrics` text: the counters, and the admission gauges.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.admission)
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
        let tls = move |stream| handshake::tls(self.front(), stream, peer, acceptor);
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
                permit,
            }) = Box::pin(handshake::admit(self.front(), stream, peer, wrap, plain)).await
            else {
                return;
            };
            session::run(self, socket, &progress, client, expires, peer).await;
            drop(permit);
        }
    }
}

/// The hub's future, as [`Chat::try_new`] returns it: boxed, since each kind of authority
/// makes a future of its own type (one allocation for the server's life).
pub type HubFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
