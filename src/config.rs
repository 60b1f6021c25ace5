//! Every setting and limit of the server, in one struct, with its default; and every flag, in
//! one table.
//!
//! Data enters once, at startup: [`Config::from_args`] (in `crate::cli`, the command line)
//! reads command-line flags and their `SMOLCHAT_*` environment equivalents (a flag wins over
//! the environment) through the tables declared here, and validates them.
//! Everything else receives a finished `Config` (shared behind an `Arc`) and only reads it.
//! Tests and embedders build one with [`Config::default`] and change the fields they care about.
//!
//! A flag is declared once, as one [`Flag`] of a [`Section`] (see `flags!`): its name, the
//! text and default `--help` shows, and how its text becomes a field. `--help`, the parsing of
//! flags and of their environment variables all read that table, and a section's checks
//! against other settings run in one validation step ([`Config::validate`]). The flags every
//! build has are declared here; an optional part of the server declares its own section
//! beside its code (`token.rs`, `api.rs`, `tls.rs`, `cluster/backend.rs`), plugged in by one
//! line of `cli::SECTIONS`. To add a limit: a field with its default below, and one line in a
//! table, declared with a number or duration kind (`number(field, min, max)`...), which is
//! also how `--check` finds it and reads it back.

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
    pub(crate) fn named_by(self, var: &str) -> ConfigError {
        ConfigError {
            flag: var.to_string(),
            ..self
        }
    }
}

/// One command-line flag, declared once: its name (`--history`; the environment variable
/// `SMOLCHAT_HISTORY` is derived from it), the placeholder and text `--help` shows, the default
/// `--help` names, and how its text becomes a [`Config`] field. Declared with `flags!`, one
/// line each, in the [`Section`] of the part of the server (or cargo feature) it belongs to.
pub struct Flag {
    /// The name, the placeholder (`N`, `DUR`, `PATH`...), the default as `--help` shows it
    /// (and as the flag would take it; a test checks that it gives [`Config::default`]'s
    /// value; empty: none) and `--help`'s text (a `\n` starts a new, indented line), joined
    /// by `\0`: one string, so that a flag costs the binary one pointer, not four (each
    /// pointer in a table is a relocation in a dynamic binary).
    pub(crate) text: &'static str,
    /// Repeatable: the environment variable holds a comma-separated list.
    pub(crate) list: bool,
}

/// A table of flags (see `flags!`), the one function that sets any of them, by name, and the
/// one that reads the number and duration flags back.
pub struct Flags {
    pub(crate) table: &'static [Flag],
    pub(crate) set: fn(&mut Config, &str, &str) -> Result<(), Invalid>,
    /// The value in effect of the table's flag at an index, if it was declared with a number
    /// or duration kind. `--check` lists every flag this answers for, so a new limit needs no
    /// list of its own.
    pub(crate) get: fn(&Config, usize) -> Option<Quantity>,
}

/// A number or duration flag's value in effect (`Flags::get`): what `--check` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quantity {
    Number(usize),
    Duration(Duration),
}

impl From<usize> for Quantity {
    fn from(n: usize) -> Quantity {
        Quantity::Number(n)
    }
}

impl From<u32> for Quantity {
    fn from(n: u32) -> Quantity {
        Quantity::Number(n as usize)
    }
}

impl From<Duration> for Quantity {
    fn from(d: Duration) -> Quantity {
        Quantity::Duration(d)
    }
}

impl Flag {
    /// Not inlined: the split would otherwise be copied into every caller.
    #[inline(never)]
    fn part(&self, i: usize) -> &'static str {
        self.text.split('\0').nth(i).unwrap_or("")
    }

    /// The flag without its dashes: `history`.
    pub(crate) fn name(&self) -> &'static str {
        self.part(0)
    }

    /// What `--help` shows after the flag: `N`.
    pub(crate) fn value(&self) -> &'static str {
        self.part(1)
    }

    /// The default as `--help` shows it; empty: none.
    pub(crate) fn default(&self) -> &'static str {
        self.part(2)
    }

    /// `--help`'s text.
    pub(crate) fn help(&self) -> &'static str {
        self.part(3)
    }
}

/// Why a flag's value was refused: what was expected (the error adds `, got "VALUE"`), or a
/// message that says everything itself.
pub enum Invalid {
    /// What a valid value looks like.
    Expected(String),
    /// The whole message.
    Said(String),
}

impl From<String> for Invalid {
    fn from(expected: String) -> Invalid {
        Invalid::Expected(expected)
    }
}

impl From<&str> for Invalid {
    fn from(expected: &str) -> Invalid {
        Invalid::Expected(expected.to_string())
    }
}

/// Declares a table of [`Flag`]s, one line each, with their setter and getter ([`Flags`]):
/// `"name" "VALUE" = "default", list: "help" => SETTER;` (`= "default"` and `, list` are
/// optional). The setter is a number or duration kind, which names the field and its bounds
/// once, so that the same line both parses the flag and reads it back for `--check`:
/// `number(field, min, max)` (a `usize`), `rate(field, min, max)` (a `u32`), `duration(field)`
/// or `duration_or_zero(field)`; or, for any other flag, `|config, text| expression`, which
/// `--check` does not list.
macro_rules! flags {
    ($($name:literal $value:literal $(= $default:literal)? $(, $list:ident)?: $help:literal
        => $($kind:ident $args:tt)? $(|$c:ident, $v:ident| $set:expr)?;)*) => {{
        // Every setter of the table in one function, a branch each: one function per table
        // is smaller than one per flag.
        fn set(
            config: &mut $crate::config::Config,
            name: &str,
            value: &str,
        ) -> Result<(), $crate::config::Invalid> {
            match name {
                $($name => {
                    $($crate::config::flags!(@set $kind $args, config, value))?
                    $({
                        let ($c, $v) = (config, value);
                        $set
                    })?
                })*
                _ => Ok(()),
            }
        }
        // The value of the table's `index`th flag, if it is a number or a duration. The
        // flags are counted, not their names compared, so that this compiles to a jump table:
        // a lookup by name cost the release binary 1,160 bytes for the main table, this 286.
        // A table without such flags (tls's) reads nothing and counts for nothing.
        #[allow(unused_variables, unused_assignments)]
        fn get(
            config: &$crate::config::Config,
            index: usize,
        ) -> Option<$crate::config::Quantity> {
            let mut i = 0;
            $(
                $(if index == i {
                    return Some($crate::config::flags!(@get $kind $args, config));
                })?
                i += 1;
            )*
            None
        }
        $crate::config::Flags {
            table: &[$($crate::config::Flag {
                text: concat!(
                    $name, "\0", $value, "\0", $crate::config::flags!(@default $($default)?),
                    "\0", $help
                ),
                list: $crate::config::flags!(@list $($list)?),
            },)*],
            set,
            get,
        }
    }};
    (@set number ($field:ident, $min:expr, $max:expr), $c:ident, $v:ident) => {
        $crate::config::number_into(&mut $c.$field, $v, $min, $max)
    };
    (@set rate ($field:ident, $min:expr, $max:expr), $c:ident, $v:ident) => {
        $crate::config::rate_into(&mut $c.$field, $v, $min, $max)
    };
    (@set duration ($field:ident), $c:ident, $v:ident) => {
        $crate::config::duration_into(&mut $c.$field, $v)
    };
    (@set duration_or_zero ($field:ident), $c:ident, $v:ident) => {
        $crate::config::put(&mut $c.$field, $crate::config::duration_or_zero($v))
    };
    // Every kind's field comes first; its type says whether it is a number or a duration.
    (@get $kind:ident ($field:ident $(, $bound:expr)*), $c:ident) => {
        $crate::config::Quantity::from($c.$field)
    };
    (@default) => { "" };
    (@default $default:literal) => { $default };
    (@list) => { false };
    (@list $list:ident) => { true };
}
pub(crate) use flags;

/// A section's checks against other settings: the first that fails names the flag to change.
pub type Check = fn(&Config) -> Result<(), ConfigError>;

/// A group of flags, as `--help` prints them, with the checks that relate them to other
/// settings. Each optional part of the server declares its own (`crate::token::FLAGS`,
/// `crate::cluster::backend::FLAGS`...); `cli::SECTIONS` lists them in `--help`'s order, which is
/// also the order flags are applied in.
pub struct Section {
    /// Printed before the flags (a blank line and a title, for the optional parts).
    pub(crate) heading: &'static str,
    pub(crate) flags: Flags,
    /// Lines printed after the flags, as `(synopsis, text)`: what is not a flag with a value.
    pub(crate) footer: &'static [(&'static str, &'static str)],
    /// The section's checks against other settings, run by [`Config::validate`], if it has
    /// any.
    pub(crate) check: Option<Check>,
}

/// The flags every build has.
pub(crate) const MAIN: Section = Section {
    heading: "\
smolchat: a small WebSocket chat server

Usage: smolchat [OPTIONS]

Every option can also be set through the environment variable named after it
(--max-message-bytes is SMOLCHAT_MAX_MESSAGE_BYTES); a flag wins over the environment.
Durations are whole seconds, or take a unit: 500ms, 10s, 2m, 1h (at most 1d).

Options:
",
    flags: flags! {
        "protocol" "v1|raw" = "v1": "v1: rooms, nicks, history (docs/protocol.md); raw: the Go hub's\nprotocol, every frame to every client of the group"
            => |c, v| put(&mut c.protocol, one_of(v, &[("v1", Protocol::V1), ("raw", Protocol::Raw)], "expected v1 or raw"));
        "listen" "ADDR" = "127.0.0.1:8080": "address to listen on"
            => |c, v| put(&mut c.listen, parsed(v, "expected an address like 127.0.0.1:8080 or [::1]:8080"));
        "history" "N" = "100": "messages each room keeps for replay"
            => number(history, 0, 1_000_000);
        "history-bytes" "N" = "65536": "bytes of messages each room keeps"
            => number(history_bytes, 0, 1 << 30);
        "history-total-bytes" "N" = "16777216": "bytes of messages all rooms keep together"
            => number(history_total_bytes, 0, 1 << 30);
        "threads" "N" = "0": "executor threads, 0 = one per core"
            => number(threads, 0, 1024);
        "default-room" "NAME" = "lobby": "room every client joins on connect"
            => |c, v| put(&mut c.default_room, checked(v, crate::protocol::valid_room, "expected a room name of 1-32 characters a-z, 0-9, _ or -"));
        "log-level" "LEVEL" = "info": "off, error, warn, info, debug, trace"
            => |c, v| put(&mut c.log_level, parsed(v, "expected off, error, warn, info, debug or trace"));
        "max-message-bytes" "N" = "4096": "largest message or frame a client may send"
            => number(max_message_bytes, 64, 16 << 20);
        "queue" "N" = "256": "events queued per client before it is a slow consumer"
            => number(queue, 1, 1 << 20);
        "queue-bytes" "N" = "131072": "bytes queued per client before it is a slow consumer"
            => number(queue_bytes, 1, 1 << 30);
        "max-connections" "N" = "10000": "concurrent WebSocket connections"
            => number(max_connections, 1, 10_000_000);
        "handshake-timeout" "DUR" = "10s": "time for a whole plain HTTP exchange or upgrade"
            => duration(handshake_timeout);
        "max-pending" "N" = "512": "connections not yet WebSocket sessions"
            => number(max_pending, 1, 1_000_000);
        "max-pending-per-address" "N" = "64": "of those, from one address (IPv6: /64)"
            => number(max_pending_per_address, 1, 1_000_000);
        "allow-host" "NAME", list: "host name /ws may be reached by besides IP literals and\nlocalhost; repeatable; * = any"
            => |c, v| allow_host(c, v);
        "allow-origin" "ORIGIN", list: "browser origin allowed besides our own; repeatable; * = any"
            => |c, v| allow_origin(c, v);
        "rate-limit" "N" = "10": "frames per second per client, pings and pongs included,\n0 = off"
            => rate(rate_limit, 0, 1_000_000);
        "rate-burst" "N" = "20": "burst allowance above the rate"
            => rate(rate_burst, 1, 1_000_000);
        "ping-interval" "DUR" = "30s": "interval between server pings"
            => duration(ping_interval);
        "idle-timeout" "DUR" = "75s": "close a client silent for this long"
            => duration(idle_timeout);
        "write-timeout" "DUR" = "10s": "close a client whose writes stall this long"
            => duration(write_timeout);
        "coalesce" "DUR" = "0": "hold a bursting client's frames this long after its last write, to\nwrite them together; 0 = never hold"
            => duration_or_zero(coalesce);
        "max-rooms" "N" = "1000": "rooms the server keeps"
            => number(max_rooms, 1, 10_000_000);
        "max-rooms-per-client" "N" = "32": "rooms one client may be in"
            => number(max_rooms_per_client, 1, 100_000);
        "max-rooms-per-address" "N" = "100": "existing rooms created from one address (IPv6: /64)"
            => number(max_rooms_per_address, 1, 10_000_000);
        "presence-limit" "N" = "100": "largest room with join/leave events and full member lists"
            => number(presence_limit, 1, 1_000_000);
        "shutdown-timeout" "DUR" = "5s": "time writers get to flush on shutdown"
            => duration(shutdown_timeout);
    },
    footer: &[
        (
            "--check",
            "validate, print the limits and worst-case memory, and exit",
        ),
        ("-h, --help", "print this help"),
        ("-V, --version", "print the version and enabled features"),
    ],
    check: Some(Config::check_main),
};

/// Durable history's flags (feature `store`).
#[cfg(feature = "store")]
pub(crate) const STORE: Section = Section {
    heading: "\nDurable history (the store feature; see docs/durability.md):\n",
    flags: flags! {
        "data-dir" "DIR": "keep every room's history, ids and epoch in DIR across restarts"
            => |c, v| put(&mut c.data_dir, Ok(Some(v.to_string())));
        "sync-interval" "DUR" = "1s": "gather changes this long per commit; 0 = commit as soon as the\nprevious commit ends"
            => duration_or_zero(sync_interval);
    },
    footer: &[],
    check: Some(|c| match &c.data_dir {
        Some(_) if c.protocol == Protocol::Raw => Err(err(
            "--data-dir",
            "raw mode keeps no history, so there is nothing to store; leave --data-dir out",
        )),
        _ => Ok(()),
    }),
};

/// Stores a flag's parsed value, or passes its error on.
pub(crate) fn put<T>(field: &mut T, value: Result<T, String>) -> Result<(), Invalid> {
    *field = value?;
    Ok(())
}

/// A whole number flag: its value, from `min` to `max`, into `field`. One function for every
/// such flag (not inlined), so that each of the table's lines costs a call.
#[inline(never)]
pub(crate) fn number_into(
    field: &mut usize,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), Invalid> {
    put(field, number(value, min, max))
}

/// A whole number flag held in a `u32` (the rates), through [`number_into`]: one copy of the
/// parsing for every number flag.
pub(crate) fn rate_into(field: &mut u32, value: &str, min: u32, max: u32) -> Result<(), Invalid> {
    let mut n = 0;
    number_into(&mut n, value, min as usize, max as usize)?;
    *field = n as u32;
    Ok(())
}

/// A duration flag (see [`duration`]) into `field`; not inlined, like [`number_into`].
#[inline(never)]
pub(crate) fn duration_into(field: &mut Duration, value: &str) -> Result<(), Invalid> {
    put(field, duration(value))
}

/// One of the words in `choices`.
fn one_of<T: Copy>(value: &str, choices: &[(&str, T)], expected: &str) -> Result<T, String> {
    match choices.iter().find(|(word, _)| *word == value) {
        Some((_, chosen)) => Ok(*chosen),
        None => Err(expected.to_string()),
    }
}

/// The value, parsed with its `FromStr`.
fn parsed<T: std::str::FromStr>(value: &str, expected: &str) -> Result<T, String> {
    value.parse().map_err(|_| expected.to_string())
}

/// The value itself, if `valid` says it is.
fn checked(value: &str, valid: fn(&str) -> bool, expected: &str) -> Result<String, String> {
    match valid(value) {
        true => Ok(value.to_string()),
        false => Err(expected.to_string()),
    }
}

/// `--allow-host`: one more host name, in lower case.
fn allow_host(config: &mut Config, value: &str) -> Result<(), Invalid> {
    let host = value.to_ascii_lowercase();
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-');
    if host != "*" && (host.is_empty() || !host.chars().all(name_char)) {
        return Err("expected a host name like chat.example.com (no port), or *".into());
    }
    config.allow_hosts.push(host);
    Ok(())
}

/// `--allow-origin`: one more origin, in lower case, without a trailing `/`.
fn allow_origin(config: &mut Config, value: &str) -> Result<(), Invalid> {
    let origin = value.trim_end_matches('/');
    if origin != "*" && !origin.contains("://") {
        return Err("expected an origin like https://chat.example.com, or *".into());
    }
    config.allow_origins.push(origin.to_ascii_lowercase());
    Ok(())
}

impl Config {
    /// The checks that relate the flags every build has.
    pub(crate) fn check_main(&self) -> Result<(), ConfigError> {
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
        self.check_history()?;
        self.check_queue()
    }

    /// History must hold one message (or none at all), and all rooms' at least one room's.
    fn check_history(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// A client's queue must take what the server may send it at once.
    fn check_queue(&self) -> Result<(), ConfigError> {
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
            inbox: 1024 * (m + 512),
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

    /// True when names come from tokens (`--auth-secret-file`): nobody renames.
    pub fn names_from_tokens(&self) -> bool {
        #[cfg(feature = "auth")]
        return self.auth.is_some();
        #[cfg(not(feature = "auth"))]
        false
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
    /// The hub's inbox: 1,024 × (M + 512).
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

pub(crate) fn err(flag: &str, message: &str) -> ConfigError {
    ConfigError {
        flag: flag.to_string(),
        message: message.to_string(),
    }
}

pub(crate) fn lex_error(e: &lexopt::Error) -> ConfigError {
    match e {
        lexopt::Error::MissingValue { option: Some(o) } => err(o, "needs a value"),
        other => err("command line", &other.to_string()),
    }
}

pub(crate) fn number<T>(value: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    match value.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

pub(crate) const DAY: Duration = Duration::from_secs(24 * 3600);

/// The longest `smolchat token --ttl`: 90 days (its error message says so). A token cannot be revoked before it expires
/// (short of changing the secret, which revokes every token), so a device token is renewed.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Parses a server flag's duration: `10`, `10s`, `500ms`, `2m`, `1h` or `1d`, up to a day.
/// Zero is refused: every duration here is a timeout or an interval, and zero would make the
/// server close or ping without pause; more than a day is no timeout at all, and would
/// overflow the clock's arithmetic.
pub(crate) fn duration(value: &str) -> Result<Duration, String> {
    let expected = "expected a positive duration up to a day, like 10, 10s, 500ms, 2m or 8h";
    duration_up_to(value, DAY, expected)
}

/// A duration as [`duration`] parses it, or `0` for none.
pub(crate) fn duration_or_zero(value: &str) -> Result<Duration, String> {
    match value {
        "0" => Ok(Duration::ZERO),
        _ => duration(value),
    }
}

/// Parses a positive duration of whole seconds or with a unit (`ms`, `s`, `m`, `h`, `d`), up
/// to `max`; else the error is `expected`.
pub(crate) fn duration_up_to(
    value: &str,
    max: Duration,
    expected: &str,
) -> Result<Duration, String> {
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
