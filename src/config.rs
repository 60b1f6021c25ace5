//! Every setting and limit of the server, in one struct, with its default.
//!
//! Data enters here once, at startup: [`Config::from_args`] reads command-line flags and their
//! `SMOLCHAT_*` environment equivalents (a flag wins over the environment) and validates them.
//! Everything else receives a finished `Config` (shared behind an `Arc`) and only reads it.
//! Tests and embedders build one with [`Config::default`] and change the fields they care about.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

#[cfg(any(feature = "auth", feature = "api"))]
use crate::secret::Secret;

/// What `/ws` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Protocol v1 (docs/protocol.md): rooms, nicks, presence, history, JSON events.
    V1,
    /// The Go hub's protocol: every data frame a client sends goes, as it is, to every client
    /// of its group, the sender included. Nothing else is ever sent.
    Raw,
}

/// The server's settings. See the README's configuration table for what each one means.
#[derive(Clone, Debug)]
pub struct Config {
    /// What `/ws` speaks (`--protocol`).
    pub protocol: Protocol,
    /// Address to listen on (`--listen`).
    pub listen: SocketAddr,
    /// Messages each room remembers for replay and recovery (`--history`).
    pub history: usize,
    /// Bytes of encoded messages each room remembers at most (`--history-bytes`).
    pub history_bytes: usize,
    /// Bytes of encoded messages all rooms together remember at most; past it the oldest
    /// message on the server is forgotten first (`--history-total-bytes`).
    pub history_total_bytes: usize,
    /// Executor threads; 0 means one per available core (`--threads`).
    pub threads: usize,
    /// The room every client joins on connect (`--default-room`).
    pub default_room: String,
    /// Log level: off, error, warn, info, debug or trace (`--log-level`).
    pub log_level: log::LevelFilter,
    /// Largest text message or frame a client may send, in bytes (`--max-message-bytes`).
    pub max_message_bytes: usize,
    /// Events that may wait in one client's outgoing queue before it counts as a slow
    /// consumer and is disconnected (`--queue`).
    pub queue: usize,
    /// Bytes of events that may wait for one client, those its writer holds included, before
    /// it counts as a slow consumer (`--queue-bytes`).
    pub queue_bytes: usize,
    /// Concurrent WebSocket connections (`--max-connections`).
    pub max_connections: usize,
    /// Time a connection has from its first byte until it is a WebSocket session: the whole
    /// exchange of a plain HTTP request, response included (`--handshake-timeout`).
    pub handshake_timeout: Duration,
    /// Connections that are not (yet) WebSocket sessions: request heads being read and plain
    /// responses being written. More are closed at once (`--max-pending`).
    pub max_pending: usize,
    /// Of those, how many one address (IPv4, or IPv6 /64) may have at once
    /// (`--max-pending-per-address`), so that one address cannot lock everyone else out.
    pub max_pending_per_address: usize,
    /// Host names a WebSocket upgrade may be addressed to besides IP literals and `localhost`;
    /// `*` allows any (`--allow-host`, repeatable). Guards against DNS rebinding.
    pub allow_hosts: Vec<String>,
    /// Browser origins allowed besides the server's own; `*` allows every origin
    /// (`--allow-origin`, repeatable).
    pub allow_origins: Vec<String>,
    /// Frames (text, pings and pongs) per second each client may send; 0 turns rate limiting
    /// off (`--rate-limit`).
    pub rate_limit: u32,
    /// Frames a client may send in a burst above the steady rate (`--rate-burst`).
    pub rate_burst: u32,
    /// Interval between the server's pings (`--ping-interval`).
    pub ping_interval: Duration,
    /// A client from which nothing arrived for this long is disconnected (`--idle-timeout`).
    pub idle_timeout: Duration,
    /// A write that makes no progress for this long ends the connection (`--write-timeout`).
    pub write_timeout: Duration,
    /// A client that is receiving a burst (its previous write was less than half this long
    /// ago) gets its frames written together this long after that write; 0 writes at once
    /// (`--coalesce`).
    pub coalesce: Duration,
    /// Rooms the server keeps, empty ones with history included (`--max-rooms`).
    pub max_rooms: usize,
    /// Rooms one client may be in at once (`--max-rooms-per-client`).
    pub max_rooms_per_client: usize,
    /// Rooms the clients of one address (an IPv4 address or an IPv6 /64) may have created
    /// and that still exist (`--max-rooms-per-address`).
    pub max_rooms_per_address: usize,
    /// Connections one user (a token's subject) may have at once, on all nodes together
    /// (`--max-connections-per-user`, feature `auth`). Guests are one connection each.
    pub max_connections_per_user: usize,
    /// Largest room that still gets presence: `join`/`leave`/`nick` events and full member
    /// lists. Bigger rooms get member counts, and `who` answers in pages of this size
    /// (`--presence-limit`).
    pub presence_limit: usize,
    /// Time writers get to flush their last frames on shutdown (`--shutdown-timeout`).
    pub shutdown_timeout: Duration,
    /// Tokens (feature `auth`): with a secret (`--auth-secret-file`), every `/ws` upgrade
    /// needs a token signed with it, unless guests are admitted too (`--auth optional`). See
    /// [`crate::token`].
    #[cfg(feature = "auth")]
    pub auth: Option<Auth>,
    /// The HTTP API's key (feature `api`, `--api-key-file`): with it, `/api/` is served to
    /// requests that carry it; without it every `/api/` path is 404.
    #[cfg(feature = "api")]
    pub api_key: Option<Secret>,
    /// API calls per second (`--api-rate-limit`), bursts of as many; 0: no limit.
    #[cfg(feature = "api")]
    pub api_rate_limit: u32,
    /// Durable history (feature `store`, `--data-dir`): the directory whose store keeps every
    /// room's epoch, ids and messages across restarts; `None` keeps them in memory only.
    #[cfg(feature = "store")]
    pub data_dir: Option<String>,
    /// How long the store gathers changes before it commits them (`--sync-interval`); zero:
    /// each batch as soon as the previous commit ends.
    #[cfg(feature = "store")]
    pub sync_interval: Duration,
    /// Scale-out: the Redis URL that nodes share rooms through (`--redis`); `None` runs a
    /// single node with everything in memory.
    #[cfg(feature = "redis")]
    pub redis: Option<String>,
    /// Scale-out: how often a node renews its heartbeat and looks for lost nodes
    /// (`--redis-heartbeat`). A node whose heartbeat is 3 intervals old is lost.
    #[cfg(feature = "redis")]
    pub redis_heartbeat: Duration,
    /// TLS: the certificate chain, PEM (`--tls-cert`). With `tls_key`, the port serves https
    /// and wss only.
    #[cfg(feature = "tls")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS: the private key, PEM (`--tls-key`).
    #[cfg(feature = "tls")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protocol: Protocol::V1,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            history: 100,
            history_bytes: 64 * 1024,
            history_total_bytes: 16 << 20,
            threads: 0,
            default_room: "lobby".to_string(),
            log_level: log::LevelFilter::Info,
            max_message_bytes: 4096,
            queue: 256,
            queue_bytes: 128 * 1024,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_pending: 512,
            max_pending_per_address: 64,
            allow_hosts: Vec::new(),
            allow_origins: Vec::new(),
            rate_limit: 10,
            rate_burst: 20,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(10),
            coalesce: Duration::ZERO,
            max_rooms: 1000,
            max_rooms_per_client: 32,
            max_rooms_per_address: 100,
            max_connections_per_user: 16,
            presence_limit: 100,
            shutdown_timeout: Duration::from_secs(5),
            #[cfg(feature = "auth")]
            auth: None,
            #[cfg(feature = "api")]
            api_key: None,
            #[cfg(feature = "api")]
            api_rate_limit: 20,
            #[cfg(feature = "store")]
            data_dir: None,
            #[cfg(feature = "store")]
            sync_interval: Duration::from_secs(1),
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "redis")]
            redis_heartbeat: Duration::from_secs(5),
            #[cfg(feature = "tls")]
            tls_cert: None,
            #[cfg(feature = "tls")]
            tls_key: None,
        }
    }
}

/// How clients authenticate, when they must (`--auth-secret-file`).
#[cfg(feature = "auth")]
#[derive(Clone, Debug)]
pub struct Auth {
    /// The HS256 secret tokens are signed with.
    pub secret: Secret,
    /// Clients without a token are admitted as guests (`--auth optional`).
    pub guests: bool,
}

/// What the command line asked for: run with a configuration, or print something and exit.
#[derive(Debug)]
pub enum Action {
    /// Start the server.
    Run(Box<Config>),
    /// Print the help text (`--help`).
    Help,
    /// Print the version (`--version`).
    Version,
    /// Validate the configuration, print it and the worst-case memory, and exit (`--check`).
    Check(Box<Config>),
    /// Print a signed token (`smolchat token`, feature `auth`).
    #[cfg(feature = "auth")]
    Token(TokenRequest),
    /// Print `smolchat token --help`.
    #[cfg(feature = "auth")]
    TokenHelp,
}

/// What `smolchat token --sub NAME [--ttl DUR] [--rooms a,b]` asks for.
#[cfg(feature = "auth")]
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub secret: Secret,
    pub sub: String,
    pub ttl: Duration,
    pub rooms: Option<Vec<String>>,
}

/// The help text of `smolchat token`.
#[cfg(feature = "auth")]
pub const TOKEN_HELP: &str = "\
smolchat token: print a token signed with the server's secret

Usage: smolchat token --sub NAME [--ttl DUR] [--rooms a,b] [--auth-secret-file PATH]

  --sub NAME                  the user: 1-32 letters, digits, '_', '-', '.'; not guest-...
  --ttl DUR                   how long the token is valid: 30m, 8h, 14d; at most 90d
                              (a token cannot be revoked before it expires) [default: 1h]
  --rooms a,b                 the only rooms the user may join [default: any]
  --auth-secret-file PATH     the server's HS256 secret (env SMOLCHAT_AUTH_SECRET_FILE)
";

/// A flag or environment variable had a value the server cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag as the user would type it (`--history`), or the environment variable
    /// (`SMOLCHAT_HISTORY`) when the value came from there.
    pub flag: String,
    /// What was wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The same error, named after the environment variable the value came from.
    fn named_by(self, var: &str) -> ConfigError {
        ConfigError {
            flag: var.to_string(),
            ..self
        }
    }
}

/// The help text printed by `smolchat --help`.
pub const HELP: &str = "\
smolchat: a small WebSocket chat server

Usage: smolchat [OPTIONS]

Every option can also be set through the environment variable named after it
(--max-message-bytes is SMOLCHAT_MAX_MESSAGE_BYTES); a flag wins over the environment.
Durations are whole seconds, or take a unit: 500ms, 10s, 2m, 1h (at most 1d).

Options:
  --protocol v1|raw           v1: rooms, nicks, history (docs/protocol.md); raw: the Go hub's
                              protocol, every frame to every client of the group [default: v1]
  --listen ADDR               address to listen on [default: 127.0.0.1:8080]
  --history N                 messages each room keeps for replay [default: 100]
  --history-bytes N           bytes of messages each room keeps [default: 65536]
  --history-total-bytes N     bytes of messages all rooms keep together [default: 16777216]
  --threads N                 executor threads, 0 = one per core [default: 0]
  --default-room NAME         room every client joins on connect [default: lobby]
  --log-level LEVEL           off, error, warn, info, debug, trace [default: info]
  --max-message-bytes N       largest message or frame a client may send [default: 4096]
  --queue N                   events queued per client before it is a slow consumer [default: 256]
  --queue-bytes N             bytes queued per client before it is a slow consumer [default: 131072]
  --max-connections N         concurrent WebSocket connections [default: 10000]
  --handshake-timeout DUR     time for a whole plain HTTP exchange or upgrade [default: 10s]
  --max-pending N             connections not yet WebSocket sessions [default: 512]
  --max-pending-per-address N   of those, from one address (IPv6: /64) [default: 64]
  --allow-host NAME           host name /ws may be reached by besides IP literals and
                              localhost; repeatable; * = any
  --allow-origin ORIGIN       browser origin allowed besides our own; repeatable; * = any
  --rate-limit N              frames per second per client, pings and pongs included,
                              0 = off [default: 10]
  --rate-burst N              burst allowance above the rate [default: 20]
  --ping-interval DUR         interval between server pings [default: 30s]
  --idle-timeout DUR          close a client silent for this long [default: 75s]
  --write-timeout DUR         close a client whose writes stall this long [default: 10s]
  --coalesce DUR              hold a bursting client's frames this long after its last write, to
                              write them together; 0 = never hold [default: 0]
  --max-rooms N               rooms the server keeps [default: 1000]
  --max-rooms-per-client N    rooms one client may be in [default: 32]
  --max-rooms-per-address N   existing rooms created from one address (IPv6: /64) [default: 100]
  --presence-limit N          largest room with join/leave events and full member lists [default: 100]
  --shutdown-timeout DUR      time writers get to flush on shutdown [default: 5s]
  --check                     validate, print the limits and worst-case memory, and exit
  -h, --help                  print this help
  -V, --version               print the version and enabled features
";

/// The token options, printed after [`HELP`] in builds with the `auth` feature.
pub const HELP_AUTH: &str = if cfg!(feature = "auth") {
    "
Tokens (the auth feature; see docs/protocol.md#authentication):
  --auth-secret-file PATH     HS256 secret (at least 32 bytes) in a file: /ws then needs a
                              signed token (query ?token= or Authorization: Bearer)
  --auth required|optional    optional also admits guests without a token [default: required]
  --max-connections-per-user N  connections one user may have at once; one more is closed
                              with 4002 [default: 16]
  smolchat token --sub NAME   print a signed token for user NAME (see smolchat token --help)
"
} else {
    ""
};

/// The HTTP API's options, printed after [`HELP`] in builds with the `api` feature.
pub const HELP_API: &str = if cfg!(feature = "api") {
    "
HTTP API (the api feature; see docs/protocol.md#the-http-api):
  --api-key-file PATH         API key in a file: enables the HTTP API at /api/
  --api-rate-limit N          API calls per second, 0 = off [default: 20]
"
} else {
    ""
};

/// The scale-out options, printed after [`HELP`] in builds with the `redis` feature.
pub const HELP_REDIS: &str = if cfg!(feature = "redis") {
    "
Scale-out (the redis feature; see docs/scale-out.md):
  --redis URL                 share rooms with other nodes through Redis (redis://host:6379)
  --redis-heartbeat DUR       node heartbeat; a node silent for 3 beats is lost [default: 5s]
"
} else {
    ""
};

/// The durable history's options, printed after [`HELP`] in builds with the `store` feature.
pub const HELP_STORE: &str = if cfg!(feature = "store") {
    "
Durable history (the store feature; see docs/durability.md):
  --data-dir DIR              keep every room's history, ids and epoch in DIR across restarts
  --sync-interval DUR         gather changes this long per commit; 0 = commit as soon as the
                              previous commit ends [default: 1s]
"
} else {
    ""
};

/// The TLS options, printed after [`HELP`] in builds with the `tls` feature.
pub const HELP_TLS: &str = if cfg!(feature = "tls") {
    "
TLS (the tls feature; SIGHUP reloads both files):
  --tls-cert PATH             certificate chain, PEM; with --tls-key the port serves https/wss only
  --tls-key PATH              private key, PEM
"
} else {
    ""
};

/// Every option that takes a value, as `(flag, environment variable)`.
const OPTIONS: &[(&str, &str)] = &[
    ("protocol", "SMOLCHAT_PROTOCOL"),
    ("listen", "SMOLCHAT_LISTEN"),
    ("history", "SMOLCHAT_HISTORY"),
    ("history-bytes", "SMOLCHAT_HISTORY_BYTES"),
    ("history-total-bytes", "SMOLCHAT_HISTORY_TOTAL_BYTES"),
    ("threads", "SMOLCHAT_THREADS"),
    ("default-room", "SMOLCHAT_DEFAULT_ROOM"),
    ("log-level", "SMOLCHAT_LOG_LEVEL"),
    ("max-message-bytes", "SMOLCHAT_MAX_MESSAGE_BYTES"),
    ("queue", "SMOLCHAT_QUEUE"),
    ("queue-bytes", "SMOLCHAT_QUEUE_BYTES"),
    ("max-connections", "SMOLCHAT_MAX_CONNECTIONS"),
    ("handshake-timeout", "SMOLCHAT_HANDSHAKE_TIMEOUT"),
    ("max-pending", "SMOLCHAT_MAX_PENDING"),
    (
        "max-pending-per-address",
        "SMOLCHAT_MAX_PENDING_PER_ADDRESS",
    ),
    ("allow-host", "SMOLCHAT_ALLOW_HOST"),
    ("allow-origin", "SMOLCHAT_ALLOW_ORIGIN"),
    ("rate-limit", "SMOLCHAT_RATE_LIMIT"),
    ("rate-burst", "SMOLCHAT_RATE_BURST"),
    ("ping-interval", "SMOLCHAT_PING_INTERVAL"),
    ("idle-timeout", "SMOLCHAT_IDLE_TIMEOUT"),
    ("write-timeout", "SMOLCHAT_WRITE_TIMEOUT"),
    ("coalesce", "SMOLCHAT_COALESCE"),
    ("max-rooms", "SMOLCHAT_MAX_ROOMS"),
    ("max-rooms-per-client", "SMOLCHAT_MAX_ROOMS_PER_CLIENT"),
    ("max-rooms-per-address", "SMOLCHAT_MAX_ROOMS_PER_ADDRESS"),
    ("presence-limit", "SMOLCHAT_PRESENCE_LIMIT"),
    ("shutdown-timeout", "SMOLCHAT_SHUTDOWN_TIMEOUT"),
    #[cfg(feature = "auth")]
    ("auth-secret-file", "SMOLCHAT_AUTH_SECRET_FILE"),
    #[cfg(feature = "auth")]
    (
        "max-connections-per-user",
        "SMOLCHAT_MAX_CONNECTIONS_PER_USER",
    ),
    #[cfg(feature = "auth")]
    ("auth", "SMOLCHAT_AUTH"),
    #[cfg(feature = "api")]
    ("api-key-file", "SMOLCHAT_API_KEY_FILE"),
    #[cfg(feature = "api")]
    ("api-rate-limit", "SMOLCHAT_API_RATE_LIMIT"),
    #[cfg(feature = "store")]
    ("data-dir", "SMOLCHAT_DATA_DIR"),
    #[cfg(feature = "store")]
    ("sync-interval", "SMOLCHAT_SYNC_INTERVAL"),
    #[cfg(feature = "redis")]
    ("redis", "SMOLCHAT_REDIS"),
    #[cfg(feature = "redis")]
    ("redis-heartbeat", "SMOLCHAT_REDIS_HEARTBEAT"),
    #[cfg(feature = "tls")]
    ("tls-cert", "SMOLCHAT_TLS_CERT"),
    #[cfg(feature = "tls")]
    ("tls-key", "SMOLCHAT_TLS_KEY"),
];

impl Config {
    /// Reads the process's command line and environment.
    pub fn from_env() -> Result<Action, ConfigError> {
        Self::from_args(std::env::args_os().skip(1), |key| std::env::var(key).ok())
    }

    /// Reads `args` (without the program name), falling back to `env` for options not given.
    /// `--allow-origin` and `--allow-host` in the environment are comma-separated lists.
    pub fn from_args<I, E>(args: I, env: E) -> Result<Action, ConfigError>
    where
        I: IntoIterator<Item = OsString>,
        E: Fn(&str) -> Option<String>,
    {
        use lexopt::Arg;

        #[cfg(feature = "auth")]
        let mut args = args.into_iter().peekable();
        #[cfg(feature = "auth")]
        if args.peek().is_some_and(|a| a == "token") {
            args.next();
            return token_request(args, env);
        }
        let mut given: Vec<(&'static str, String)> = Vec::new();
        let mut check = false;
        let mut parser = lexopt::Parser::from_args(args);
        while let Some(arg) = parser.next().map_err(|e| lex_error(&e))? {
            let name = match arg {
                Arg::Short('h') | Arg::Long("help") => return Ok(Action::Help),
                Arg::Short('V') | Arg::Long("version") => return Ok(Action::Version),
                Arg::Long("check") => {
                    check = true;
                    continue;
                }
                Arg::Long(name) => name.to_string(),
                Arg::Short(c) => return Err(err(&format!("-{c}"), "unknown option; see --help")),
                Arg::Value(v) => {
                    let v = v.to_string_lossy();
                    return Err(err(&v, "unexpected argument; options start with --"));
                }
            };
            let Some(&(flag, _)) = OPTIONS.iter().find(|(f, _)| *f == name) else {
                return Err(err(&format!("--{name}"), "unknown option; see --help"));
            };
            let value = parser.value().map_err(|e| lex_error(&e))?;
            let Some(value) = value.to_str() else {
                return Err(err(&format!("--{flag}"), "value is not valid UTF-8"));
            };
            given.push((flag, value.to_string()));
        }

        let mut config = Config::default();
        // Options whose value came from the environment: their errors name the variable.
        let mut from_env: Vec<(&str, &str)> = Vec::new();
        for &(flag, var) in OPTIONS {
            let from_flags: Vec<&String> = given
                .iter()
                .filter(|(f, _)| *f == flag)
                .map(|(_, v)| v)
                .collect();
            if !from_flags.is_empty() {
                for value in from_flags {
                    config.set(flag, value)?;
                }
            } else if let Some(value) = env(var) {
                let named = |e: ConfigError| e.named_by(var);
                if flag == "allow-origin" || flag == "allow-host" {
                    for item in value.split(',').filter(|o| !o.trim().is_empty()) {
                        config.set(flag, item.trim()).map_err(named)?;
                    }
                } else {
                    config.set(flag, &value).map_err(named)?;
                }
                from_env.push((flag, var));
            }
        }
        // Unless set, `--queue-bytes` grows to what the other settings need (see
        // `min_queue_bytes`), so that raising `--max-message-bytes` alone keeps a working server.
        let queue_bytes_set =
            given.iter().any(|(f, _)| *f == "queue-bytes") || env("SMOLCHAT_QUEUE_BYTES").is_some();
        if !queue_bytes_set {
            config.queue_bytes = config.queue_bytes.max(config.min_queue_bytes());
        }
        config.validate().map_err(|e| {
            match from_env
                .iter()
                .find(|(f, _)| e.flag.strip_prefix("--") == Some(f))
            {
                Some((_, var)) => e.named_by(var),
                None => e,
            }
        })?;
        Ok(if check {
            Action::Check(Box::new(config))
        } else {
            Action::Run(Box::new(config))
        })
    }

    /// The limits a client is told about in `welcome`.
    pub fn limits(&self) -> crate::protocol::Limits {
        crate::protocol::Limits {
            max_message_bytes: self.max_message_bytes,
            history: self.history,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            max_rooms_per_client: self.max_rooms_per_client,
            presence_limit: self.presence_limit,
        }
    }

    /// The largest event the hub can send with these settings, in bytes: every frame a
    /// client's writer gets fits in it (see [`crate::protocol::max_event_bytes`]).
    pub fn max_event_bytes(&self) -> usize {
        crate::protocol::max_event_bytes(self.max_message_bytes, self.presence_limit)
    }

    /// The least `--queue-bytes` that works: a queue must take one client's whole permitted
    /// burst of the largest messages (or, with the rate limit off, two of them: one in the
    /// writer's hands and one waiting) without its reader counting as slow, and in v1 a
    /// join's replay of a full history plus two of the largest events.
    pub fn min_queue_bytes(&self) -> usize {
        let frame = self.max_message_event_bytes() + 14;
        let burst = match self.rate_limit {
            0 => 2 * frame,
            _ => self.rate_burst as usize * frame,
        };
        match self.protocol {
            Protocol::Raw => burst,
            Protocol::V1 => burst.max(self.history_bytes + 2 * self.max_event_bytes()),
        }
    }

    /// The largest `message` event, in bytes: what one history entry can cost.
    pub fn max_message_event_bytes(&self) -> usize {
        crate::protocol::max_event_bytes(self.max_message_bytes, 0)
    }

    /// The README's worst-case memory ("Limits and guarantees") for these settings, term by
    /// term: what `smolchat --check` prints.
    pub fn worst_case_memory(&self) -> WorstCase {
        const KIB: u64 = 1024;
        let (m, e) = (self.max_message_bytes as u64, self.max_event_bytes() as u64);
        let (c, pending) = (self.max_connections as u64, self.max_pending as u64);
        let per_session = 8 * KIB + (self.queue_bytes as u64).max(e) + 4 * KIB + e + 2 * m;
        #[cfg(feature = "tls")]
        let tls = self.tls_cert.is_some();
        #[cfg(not(feature = "tls"))]
        let tls = false;
        WorstCase {
            base: 6 * KIB * KIB,
            per_session,
            sessions: c * per_session,
            pending: pending * 12 * KIB,
            inbox: 1024 * (m + 128),
            history: self.history_total_bytes as u64 * 5 / 4,
            bookkeeping: self.max_rooms as u64 * self.history as u64 * 96,
            rooms: self.max_rooms as u64 * KIB,
            tls: if tls {
                c * 96 * KIB + pending * 90 * KIB
            } else {
                0
            },
            store: self.store_memory(),
        }
    }

    /// The durable store's share of the worst case (`--data-dir`): changes waiting for the
    /// writer (at most 2 × max(`--history-total-bytes`, 1 MiB)), the batch it is committing
    /// (no more than the history it mirrors) and redb's 1 MiB page cache; 0 without a store.
    fn store_memory(&self) -> u64 {
        #[cfg(feature = "store")]
        if self.data_dir.is_some() {
            const MIB: u64 = 1 << 20;
            return 3 * (self.history_total_bytes as u64).max(MIB) + MIB;
        }
        0
    }

    /// The numeric limits in effect, as `(flag, value)`: what `smolchat --check` prints.
    pub fn numeric_limits(&self) -> Vec<(&'static str, usize)> {
        #[allow(unused_mut)]
        let mut limits = vec![
            ("history", self.history),
            ("history-bytes", self.history_bytes),
            ("history-total-bytes", self.history_total_bytes),
            ("threads", self.threads),
            ("max-message-bytes", self.max_message_bytes),
            ("queue", self.queue),
            ("queue-bytes", self.queue_bytes),
            ("max-connections", self.max_connections),
            ("max-pending", self.max_pending),
            ("max-pending-per-address", self.max_pending_per_address),
            ("rate-limit", self.rate_limit as usize),
            ("rate-burst", self.rate_burst as usize),
            ("max-rooms", self.max_rooms),
            ("max-rooms-per-client", self.max_rooms_per_client),
            ("max-rooms-per-address", self.max_rooms_per_address),
            ("presence-limit", self.presence_limit),
        ];
        #[cfg(feature = "auth")]
        limits.push(("max-connections-per-user", self.max_connections_per_user));
        #[cfg(feature = "api")]
        limits.push(("api-rate-limit", self.api_rate_limit as usize));
        limits
    }

    /// The timeouts and intervals in effect, as `(flag, value)`.
    pub fn durations(&self) -> Vec<(&'static str, Duration)> {
        #[allow(unused_mut)]
        let mut durations = vec![
            ("handshake-timeout", self.handshake_timeout),
            ("ping-interval", self.ping_interval),
            ("idle-timeout", self.idle_timeout),
            ("write-timeout", self.write_timeout),
            ("coalesce", self.coalesce),
            ("shutdown-timeout", self.shutdown_timeout),
        ];
        #[cfg(feature = "redis")]
        durations.push(("redis-heartbeat", self.redis_heartbeat));
        durations
    }

    /// True when names come from tokens (`--auth-secret-file`): nobody renames.
    pub fn names_from_tokens(&self) -> bool {
        #[cfg(feature = "auth")]
        return self.auth.is_some();
        #[cfg(not(feature = "auth"))]
        false
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        #[cfg(feature = "tls")]
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(err("--tls-key", "is needed with --tls-cert")),
            (None, Some(_)) => return Err(err("--tls-cert", "is needed with --tls-key")),
            _ => {}
        }
        if self.ping_interval >= self.idle_timeout {
            return Err(err(
                "--ping-interval",
                &format!(
                    "must be shorter than --idle-timeout ({:?}), or idle clients that only answer \
                     pings are closed; got {:?}",
                    self.idle_timeout, self.ping_interval
                ),
            ));
        }
        #[cfg(feature = "redis")]
        if self.protocol == Protocol::Raw && self.redis.is_some() {
            return Err(err(
                "--protocol",
                "raw mode runs on one node; it cannot be combined with --redis",
            ));
        }
        #[cfg(feature = "store")]
        if self.data_dir.is_some() && self.protocol == Protocol::Raw {
            return Err(err(
                "--data-dir",
                "raw mode keeps no history, so there is nothing to store; leave --data-dir out",
            ));
        }
        #[cfg(all(feature = "store", feature = "redis"))]
        if self.data_dir.is_some() && self.redis.is_some() {
            return Err(err(
                "--data-dir",
                "with --redis, Redis keeps the history; leave --data-dir out (or use Redis's \
                 own persistence)",
            ));
        }
        // The API publishes messages and reads history: raw groups have neither.
        #[cfg(feature = "api")]
        if self.api_key.is_some() && self.protocol == Protocol::Raw {
            return Err(err(
                "--api-key-file",
                "the HTTP API needs --protocol v1 (raw groups have no messages or history)",
            ));
        }
        if self.protocol == Protocol::V1
            && self.history_bytes != 0
            && self.history_bytes < self.max_message_event_bytes()
        {
            return Err(err(
                "--history-bytes",
                &format!(
                    "must be 0 (no history) or hold one message of --max-message-bytes: at \
                     least {}, got {}",
                    self.max_message_event_bytes(),
                    self.history_bytes
                ),
            ));
        }
        if self.history_total_bytes < self.history_bytes {
            return Err(err(
                "--history-total-bytes",
                &format!(
                    "must be at least --history-bytes ({}), got {}",
                    self.history_bytes, self.history_total_bytes
                ),
            ));
        }
        // A join queues the room event and the whole history replay at once; a queue smaller
        // than that would disconnect a client as a slow consumer on its first join.
        if self.protocol == Protocol::V1 && self.queue < self.history + 8 {
            return Err(err(
                "--queue",
                &format!(
                    "must be at least --history + 8 = {} (a join replays the whole history at \
                     once), got {}",
                    self.history + 8,
                    self.queue
                ),
            ));
        }
        let needed = self.min_queue_bytes();
        if self.queue_bytes < needed {
            return Err(err(
                "--queue-bytes",
                &format!(
                    "must be at least {needed} with these settings: a client's burst of \
                     --rate-burst largest messages (two with the rate limit off) must fit, and \
                     in v1 a join's replay of --history-bytes plus two of the largest events \
                     ({} bytes); got {}",
                    self.max_event_bytes(),
                    self.queue_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Sets one option from its text form, validating it.
    fn set(&mut self, flag: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |what: &str| err(&format!("--{flag}"), &format!("{what}, got {value:?}"));
        match flag {
            "protocol" => {
                self.protocol = match value {
                    "v1" => Protocol::V1,
                    "raw" => Protocol::Raw,
                    _ => return Err(bad("expected v1 or raw")),
                }
            }
            "listen" => {
                self.listen = value
                    .parse()
                    .map_err(|_| bad("expected an address like 127.0.0.1:8080 or [::1]:8080"))?
            }
            "history" => self.history = number(value, 0, 1_000_000).map_err(|m| bad(&m))?,
            "history-bytes" => {
                self.history_bytes = number(value, 0, 1 << 30).map_err(|m| bad(&m))?
            }
            "history-total-bytes" => {
                self.history_total_bytes = number(value, 0, 1 << 30).map_err(|m| bad(&m))?
            }
            "threads" => self.threads = number(value, 0, 1024).map_err(|m| bad(&m))?,
            "default-room" => {
                if !crate::protocol::valid_room(value) {
                    return Err(bad(
                        "expected a room name of 1-32 characters a-z, 0-9, _ or -",
                    ));
                }
                self.default_room = value.to_string();
            }
            "log-level" => {
                self.log_level = value
                    .parse()
                    .map_err(|_| bad("expected off, error, warn, info, debug or trace"))?
            }
            "max-message-bytes" => {
                self.max_message_bytes = number(value, 64, 16 << 20).map_err(|m| bad(&m))?
            }
            "queue" => self.queue = number(value, 1, 1 << 20).map_err(|m| bad(&m))?,
            "queue-bytes" => self.queue_bytes = number(value, 1, 1 << 30).map_err(|m| bad(&m))?,
            "max-pending" => self.max_pending = number(value, 1, 1_000_000).map_err(|m| bad(&m))?,
            "max-pending-per-address" => {
                self.max_pending_per_address = number(value, 1, 1_000_000).map_err(|m| bad(&m))?
            }
            "allow-host" => {
                let host = value.to_ascii_lowercase();
                let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-');
                if host != "*" && (host.is_empty() || !host.chars().all(name_char)) {
                    return Err(bad(
                        "expected a host name like chat.example.com (no port), or *",
                    ));
                }
                self.allow_hosts.push(host);
            }
            "max-connections" => {
                self.max_connections = number(value, 1, 10_000_000).map_err(|m| bad(&m))?
            }
            "handshake-timeout" => self.handshake_timeout = duration(value).map_err(|m| bad(&m))?,
            "allow-origin" => {
                let origin = value.trim_end_matches('/');
                if origin != "*" && !origin.contains("://") {
                    return Err(bad(
                        "expected an origin like https://chat.example.com, or *",
                    ));
                }
                self.allow_origins.push(origin.to_ascii_lowercase());
            }
            #[cfg(feature = "auth")]
            "auth-secret-file" => {
                let secret = Secret::read(value).map_err(|m| bad(&m))?;
                if secret.bytes().len() < crate::token::MIN_SECRET_BYTES {
                    return Err(err(
                        "--auth-secret-file",
                        &format!(
                            "the secret in {value:?} is {} bytes; HS256 needs at least {} \
                             (for example: head -c 48 /dev/urandom | base64 > {value})",
                            secret.bytes().len(),
                            crate::token::MIN_SECRET_BYTES
                        ),
                    ));
                }
                self.auth = Some(Auth {
                    secret,
                    guests: false,
                });
            }
            #[cfg(feature = "auth")]
            "max-connections-per-user" => {
                self.max_connections_per_user = number(value, 1, 1_000_000).map_err(|m| bad(&m))?
            }
            #[cfg(feature = "auth")]
            "auth" => {
                let guests = match value {
                    "required" => false,
                    "optional" => true,
                    _ => return Err(bad("expected required or optional")),
                };
                // Options are set in the order of `OPTIONS`: the secret is read by now.
                match &mut self.auth {
                    Some(auth) => auth.guests = guests,
                    None => {
                        return Err(err(
                            "--auth",
                            "needs --auth-secret-file: without a secret nobody authenticates",
                        ));
                    }
                }
            }
            #[cfg(feature = "api")]
            "api-key-file" => {
                let key = Secret::read(value).map_err(|m| bad(&m))?;
                if key.bytes().len() < crate::secret::MIN_API_KEY_BYTES {
                    return Err(bad("the API key must be at least 16 bytes"));
                }
                self.api_key = Some(key);
            }
            #[cfg(feature = "api")]
            "api-rate-limit" => {
                self.api_rate_limit = number(value, 0, 1_000_000).map_err(|m| bad(&m))?
            }
            "rate-limit" => self.rate_limit = number(value, 0, 1_000_000).map_err(|m| bad(&m))?,
            "rate-burst" => self.rate_burst = number(value, 1, 1_000_000).map_err(|m| bad(&m))?,
            "ping-interval" => self.ping_interval = duration(value).map_err(|m| bad(&m))?,
            "idle-timeout" => self.idle_timeout = duration(value).map_err(|m| bad(&m))?,
            "write-timeout" => self.write_timeout = duration(value).map_err(|m| bad(&m))?,
            "coalesce" => {
                self.coalesce = if value == "0" {
                    Duration::ZERO
                } else {
                    duration(value).map_err(|m| bad(&m))?
                }
            }
            "max-rooms" => self.max_rooms = number(value, 1, 10_000_000).map_err(|m| bad(&m))?,
            "max-rooms-per-client" => {
                self.max_rooms_per_client = number(value, 1, 100_000).map_err(|m| bad(&m))?
            }
            "max-rooms-per-address" => {
                self.max_rooms_per_address = number(value, 1, 10_000_000).map_err(|m| bad(&m))?
            }
            "presence-limit" => {
                self.presence_limit = number(value, 1, 1_000_000).map_err(|m| bad(&m))?
            }
            "shutdown-timeout" => self.shutdown_timeout = duration(value).map_err(|m| bad(&m))?,
            #[cfg(feature = "redis")]
            "redis" => {
                if !value.starts_with("redis://") && !value.starts_with("unix://") {
                    return Err(bad("expected a URL like redis://127.0.0.1:6379"));
                }
                self.redis = Some(value.to_string());
            }
            #[cfg(feature = "redis")]
            "redis-heartbeat" => self.redis_heartbeat = duration(value).map_err(|m| bad(&m))?,
            #[cfg(feature = "store")]
            "data-dir" => self.data_dir = Some(value.into()),
            #[cfg(feature = "store")]
            "sync-interval" => {
                self.sync_interval = match value {
                    "0" => Duration::ZERO,
                    _ => duration(value).map_err(|m| bad(&m))?,
                }
            }
            #[cfg(feature = "tls")]
            "tls-cert" => self.tls_cert = Some(value.into()),
            #[cfg(feature = "tls")]
            "tls-key" => self.tls_key = Some(value.into()),
            _ => unreachable!("every flag in OPTIONS is handled"),
        }
        Ok(())
    }
}

/// The README's worst-case memory formula, term by term, in bytes ([`Config::worst_case_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorstCase {
    /// The binary, threads and executor: 6 MiB.
    pub base: u64,
    /// One session: task, buffers, its queue, tungstenite's write and read buffers, the message
    /// being assembled: 8 KiB + max(`--queue-bytes`, E) + 4 KiB + E + 2 × M.
    pub per_session: u64,
    /// `--max-connections` sessions.
    pub sessions: u64,
    /// `--max-pending` × 12 KiB: request heads and handshake futures.
    pub pending: u64,
    /// The hub's inbox: 1,024 × (M + 128).
    pub inbox: u64,
    /// `--history-total-bytes` × 1.25: history, with the allocator's share.
    pub history: u64,
    /// `--max-rooms` × `--history` × 96 B: history bookkeeping.
    pub bookkeeping: u64,
    /// `--max-rooms` × 1 KiB: names, epochs, member lists.
    pub rooms: u64,
    /// With a TLS certificate (feature `tls`): 96 KiB a session and 90 KiB a pending
    /// connection of rustls's buffers; 0 without.
    pub tls: u64,
    /// With `--data-dir` (feature `store`): 3 × max(`--history-total-bytes`, 1 MiB) + 1 MiB;
    /// 0 without.
    pub store: u64,
}

impl WorstCase {
    /// The sum of every term.
    pub fn total(&self) -> u64 {
        self.base
            + self.sessions
            + self.pending
            + self.inbox
            + self.history
            + self.bookkeeping
            + self.rooms
            + self.tls
            + self.store
    }
}

/// Reads `smolchat token`'s options.
#[cfg(feature = "auth")]
fn token_request<I, E>(args: I, env: E) -> Result<Action, ConfigError>
where
    I: IntoIterator<Item = OsString>,
    E: Fn(&str) -> Option<String>,
{
    use lexopt::Arg;

    let mut parser = lexopt::Parser::from_args(args);
    let (mut sub, mut ttl, mut rooms) = (None, Duration::from_secs(3600), None);
    let mut secret_file = env("SMOLCHAT_AUTH_SECRET_FILE");
    let mut from_env = secret_file.is_some();
    while let Some(arg) = parser.next().map_err(|e| lex_error(&e))? {
        let flag = match arg {
            Arg::Short('h') | Arg::Long("help") => return Ok(Action::TokenHelp),
            Arg::Long(name) => format!("--{name}"),
            _ => {
                return Err(err(
                    "token",
                    "unexpected argument; see smolchat token --help",
                ));
            }
        };
        let value = parser.value().map_err(|e| lex_error(&e))?;
        let value = value.to_string_lossy().into_owned();
        let bad = |what: &str| err(&flag, &format!("{what}, got {value:?}"));
        match flag.as_str() {
            "--sub" if crate::token::valid_user_name(&value) => sub = Some(value),
            "--sub" => {
                return Err(bad(
                    "expected 1-32 letters, digits, '_', '-' or '.', not starting with guest-",
                ));
            }
            "--ttl" => {
                let expected = "expected a positive duration up to 90 days, like 30m, 8h or 14d";
                ttl = duration_up_to(&value, MAX_TOKEN_TTL, expected).map_err(|m| bad(&m))?;
                if ttl.as_secs() == 0 {
                    return Err(bad("expected at least 1s (tokens count whole seconds)"));
                }
            }
            "--rooms" => {
                let list: Vec<String> = value.split(',').map(|r| r.trim().to_string()).collect();
                if !list.iter().all(|r| crate::protocol::valid_room(r)) {
                    return Err(bad(
                        "expected room names (a-z, 0-9, _ or -) separated by commas",
                    ));
                }
                rooms = Some(list);
            }
            "--auth-secret-file" => {
                secret_file = Some(value);
                from_env = false;
            }
            _ => return Err(err(&flag, "unknown option; see smolchat token --help")),
        }
    }
    let sub = sub.ok_or_else(|| err("--sub", "is required: the user the token is for"))?;
    let path = secret_file.ok_or_else(|| {
        err(
            "--auth-secret-file",
            "is required (or SMOLCHAT_AUTH_SECRET_FILE): the secret to sign with",
        )
    })?;
    let mut config = Config::default();
    config.set("auth-secret-file", &path).map_err(|e| {
        if from_env {
            e.named_by("SMOLCHAT_AUTH_SECRET_FILE")
        } else {
            e
        }
    })?;
    let secret = config.auth.expect("set above").secret;
    Ok(Action::Token(TokenRequest {
        secret,
        sub,
        ttl,
        rooms,
    }))
}

fn err(flag: &str, message: &str) -> ConfigError {
    ConfigError {
        flag: flag.to_string(),
        message: message.to_string(),
    }
}

fn lex_error(e: &lexopt::Error) -> ConfigError {
    match e {
        lexopt::Error::MissingValue { option: Some(o) } => err(o, "needs a value"),
        other => err("command line", &other.to_string()),
    }
}

fn number<T>(value: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    match value.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The longest `smolchat token --ttl`: 90 days (its error message says so). A token cannot be revoked before it expires
/// (short of changing the secret, which revokes every token), so a device token is renewed.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Parses a server flag's duration: `10`, `10s`, `500ms`, `2m`, `1h` or `1d`, up to a day.
/// Zero is refused: every duration here is a timeout or an interval, and zero would make the
/// server close or ping without pause; more than a day is no timeout at all, and would
/// overflow the clock's arithmetic.
fn duration(value: &str) -> Result<Duration, String> {
    let expected = "expected a positive duration up to a day, like 10, 10s, 500ms, 2m or 8h";
    duration_up_to(value, DAY, expected)
}

/// Parses a positive duration of whole seconds or with a unit (`ms`, `s`, `m`, `h`, `d`), up
/// to `max`; else the error is `expected`.
fn duration_up_to(value: &str, max: Duration, expected: &str) -> Result<Duration, String> {
    let expected = || expected.to_string();
    let (digits, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => value.split_at(i),
        None => (value, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| expected())?;
    let seconds = |per: u64| Duration::from_secs(n.saturating_mul(per));
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(DAY.as_secs()),
        _ => return Err(expected()),
    };
    if d.is_zero() || d > max {
        Err(expected())
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let action = Config::from_args(args.iter().map(OsString::from), |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })?;
        match action {
            Action::Run(c) => Ok(*c),
            other => panic!("expected a config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_flags_and_environment() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.history, 100);

        let c = parse(
            &["--history", "5", "--listen=[::1]:0"],
            &[("SMOLCHAT_HISTORY", "7"), ("SMOLCHAT_QUEUE", "90")],
        )
        .unwrap();
        assert_eq!(c.history, 5, "a flag wins over the environment");
        assert_eq!(c.queue, 90, "the environment fills what flags leave out");
        assert_eq!(c.listen.to_string(), "[::1]:0");
    }

    #[test]
    fn durations_and_repeated_origins() {
        let c = parse(
            &[
                "--ping-interval",
                "500ms",
                "--idle-timeout",
                "2m",
                "--allow-origin",
                "https://a.example/",
                "--allow-origin",
                "*",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.ping_interval, Duration::from_millis(500));
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.allow_origins, vec!["https://a.example", "*"]);
    }

    #[test]
    fn durations_take_hours_and_days() {
        let c = parse(&["--idle-timeout", "1h", "--write-timeout", "1d"], &[]).unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.write_timeout, Duration::from_secs(24 * 3600));
        assert!(
            parse(&["--write-timeout", "25h"], &[]).is_err(),
            "a day at most"
        );
        assert!(
            parse(&["--write-timeout", "2d"], &[]).is_err(),
            "a day at most"
        );
        assert!(parse(&["--write-timeout", "1w"], &[]).is_err());
        assert_eq!(duration_up_to("14d", MAX_TOKEN_TTL, ""), Ok(14 * DAY));
        assert!(duration_up_to("91d", MAX_TOKEN_TTL, "").is_err());
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let e = parse(&[], &[("SMOLCHAT_HISTORY", "lots")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SMOLCHAT_HISTORY: expected a whole number from 0 to 1000000, got \"lots\""
        );
        let e = parse(&[], &[("SMOLCHAT_QUEUE", "20")]).unwrap_err();
        assert_eq!(
            e.flag, "SMOLCHAT_QUEUE",
            "checked against other settings: {e}"
        );
        let e = parse(&["--queue", "20"], &[("SMOLCHAT_QUEUE", "300")]).unwrap_err();
        assert_eq!(e.flag, "--queue", "the flag won: {e}");
        let e = parse(&[], &[("SMOLCHAT_ALLOW_ORIGIN", "https://a.example,nope")]).unwrap_err();
        assert_eq!(e.flag, "SMOLCHAT_ALLOW_ORIGIN");
    }

    #[test]
    fn check_is_a_run_that_stops_short() {
        let args = ["--history", "5", "--check"].map(OsString::from);
        match Config::from_args(args, |_| None) {
            Ok(Action::Check(c)) => assert_eq!(c.history, 5),
            other => panic!("expected a check, got {other:?}"),
        }
        let args = ["--check", "--history", "x"].map(OsString::from);
        assert!(Config::from_args(args, |_| None).is_err());
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (&["--history", "lots"][..], "--history"),
            (&["--listen", "8080"][..], "--listen"),
            (&["--default-room", "No Spaces"][..], "--default-room"),
            (&["--queue", "0"][..], "--queue"),
            (&["--write-timeout", "0"][..], "--write-timeout"),
            (
                &["--ping-interval", "18446744073709551615"][..],
                "--ping-interval",
            ),
            (&["--ping-interval", "80s"][..], "--ping-interval"),
            (&["--nope", "1"][..], "--nope"),
            (&["--history"][..], "--history"),
        ] {
            let e = parse(args, &[]).unwrap_err();
            assert_eq!(e.flag, flag, "{args:?} gave {e}");
        }
        let e = parse(&["--history", "500"], &[]).unwrap_err();
        assert_eq!(
            e.flag, "--queue",
            "the default queue cannot hold a 500-message replay"
        );
        assert!(parse(&["--history", "500", "--queue", "508"], &[]).is_ok());
        let e = parse(&["--queue-bytes", "70000"], &[]).unwrap_err();
        assert_eq!(e.flag, "--queue-bytes", "a join replays up to 64 KiB: {e}");
        let e = parse(&["--history-bytes", "1000"], &[]).unwrap_err();
        assert_eq!(
            e.flag, "--history-bytes",
            "cannot hold one 4 KiB message: {e}"
        );
        let e = parse(&["--history-total-bytes", "1000"], &[]).unwrap_err();
        assert_eq!(e.flag, "--history-total-bytes");
        let c = parse(
            &["--protocol", "raw", "--max-message-bytes", "16777216"],
            &[],
        )
        .unwrap();
        assert_eq!(c.protocol, Protocol::Raw);
        assert!(
            c.queue_bytes >= 2 * 16_777_216,
            "an unset --queue-bytes grows to hold two of the largest messages (no rate limit)"
        );
        let e = parse(
            &[
                "--max-message-bytes",
                "65536",
                "--history-bytes",
                "0",
                "--queue-bytes",
                "131072",
            ],
            &[],
        );
        assert_eq!(
            e.unwrap_err().flag,
            "--queue-bytes",
            "a set value is checked, not grown"
        );
        assert_eq!(
            parse(&["--protocol", "v2"], &[]).unwrap_err().flag,
            "--protocol"
        );
        let e = parse(&["--allow-host", "a b"], &[]).unwrap_err();
        assert_eq!(e.flag, "--allow-host");
        let c = parse(&[], &[("SMOLCHAT_ALLOW_HOST", "a.example, B.example")]).unwrap();
        assert_eq!(c.allow_hosts, ["a.example", "b.example"]);
        let e = parse(&[], &[("SMOLCHAT_LOG_LEVEL", "loud")]).unwrap_err();
        assert_eq!(e.flag, "SMOLCHAT_LOG_LEVEL");
    }
}
