//! Counters for `/metrics`, and their rendering as Prometheus text.
//!
//! Every part of the server holds an `Arc<Metrics>` and bumps plain atomic counters with
//! relaxed ordering: each counter is independent, and a scrape that sees one a moment before
//! another is fine. Nothing decides anything from them: the admission limits are semaphores
//! of their own ([`crate::admission`]), which [`Metrics::render`] only reads. Data leaves
//! through [`Metrics::render`], called by the `/metrics` route.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::admission::Admission;

/// Why an HTTP request or upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A browser origin that is not allowed (403).
    Origin,
    /// `--max-connections` reached (503).
    Capacity,
    /// Request head over 8 KiB (431).
    HeadTooLarge,
    /// Request head not complete within `--handshake-timeout`.
    Timeout,
    /// Anything else malformed: bad method, bad upgrade headers, unparsable head.
    BadRequest,
    /// An upgrade addressed to a host name that is not allowed (403; DNS rebinding).
    Host,
    /// `--max-pending` connections were already waiting for their request or response.
    Pending,
    /// A user's connection beyond `--max-connections-per-user`: in v1 upgraded, then closed
    /// with 4002 (only the authority knows the user's connections on every node); in raw
    /// mode refused before the upgrade with 429.
    UserConnections,
    /// Raw mode: a group the token's `rooms` claim does not allow (403).
    Forbidden,
    /// Raw mode: a group that cannot be created (`--max-rooms`, `--max-rooms-per-address`;
    /// 503).
    RoomLimit,
}

impl Refusal {
    const ALL: [Refusal; 10] = [
        Refusal::Origin,
        Refusal::Capacity,
        Refusal::HeadTooLarge,
        Refusal::Timeout,
        Refusal::BadRequest,
        Refusal::Host,
        Refusal::Pending,
        Refusal::UserConnections,
        Refusal::Forbidden,
        Refusal::RoomLimit,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Capacity => "capacity",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::Timeout => "timeout",
            Refusal::BadRequest => "bad_request",
            Refusal::Host => "host",
            Refusal::Pending => "pending",
            Refusal::UserConnections => "user_connections",
            Refusal::Forbidden => "forbidden",
            Refusal::RoomLimit => "room_limit",
        }
    }
}

/// The close codes the server sends, each counted separately.
pub const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 4001, 4002,
];

/// The HTTP API's endpoints, as `/metrics` labels them.
#[cfg(feature = "api")]
pub const API_ENDPOINTS: [&str; 4] = ["publish", "history", "rooms", "other"];

/// All of the server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket sessions ever opened.
    pub connections_total: AtomicU64,
    /// Bytes of messages all rooms remember.
    pub history_bytes: AtomicU64,
    /// Rooms the hub holds now.
    pub rooms: AtomicU64,
    /// Chat and direct messages accepted from clients.
    pub messages_received: AtomicU64,
    /// Events placed in client queues.
    pub events_delivered: AtomicU64,
    /// WebSocket payload bytes received.
    pub bytes_in: AtomicU64,
    /// WebSocket payload bytes written.
    pub bytes_out: AtomicU64,
    /// Clients disconnected because their queue was full.
    pub slow_consumers: AtomicU64,
    /// Messages refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Scale-out: 1 while the node is connected to Redis, 0 while it is not (only rendered
    /// when `--redis` is set).
    #[cfg(feature = "redis")]
    pub redis_up: AtomicU64,
    /// Scale-out: set once at start when `--redis` is given.
    #[cfg(feature = "redis")]
    pub redis_enabled: std::sync::atomic::AtomicBool,
    /// Scale-out: connections to Redis made after the first one.
    #[cfg(feature = "redis")]
    pub redis_reconnects: AtomicU64,
    /// Scale-out: commands answered with `unavailable`.
    pub backend_unavailable: AtomicU64,
    /// Durable history (`--data-dir`): commits of the store.
    #[cfg(feature = "store")]
    pub store_commits: AtomicU64,
    /// Durable history: commits that failed (and are tried again).
    #[cfg(feature = "store")]
    pub store_failures: AtomicU64,
    /// Durable history: ids reserved ahead of use, over all rooms (what a crash now could
    /// leave as holes; 0 once every room is quiet).
    #[cfg(feature = "store")]
    pub store_reserved_ahead: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// TLS handshakes that failed: not TLS, protocol, I/O.
    #[cfg(feature = "tls")]
    tls_failures: [AtomicU64; 3],
    closes: [AtomicU64; CLOSE_CODES.len()],
    /// Upgrades refused for their token, by cause (`crate::token::Refusal`).
    #[cfg(feature = "auth")]
    auth_refused: [AtomicU64; crate::token::Refusal::ALL.len()],
    /// Sessions of clients that proved who they are with a token (rendered with `auth`).
    pub authenticated: AtomicU64,
    /// API calls answered, by endpoint and status (a handful of each: a small map).
    #[cfg(feature = "api")]
    api_calls: std::sync::Mutex<std::collections::BTreeMap<(usize, u16), u64>>,
}

impl Metrics {
    /// Counts one refusal.
    pub fn refuse(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts one failed TLS handshake.
    #[cfg(feature = "tls")]
    pub fn tls_failed(&self, why: crate::tls::Failure) {
        self.tls_failures[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts an upgrade refused for its token.
    #[cfg(feature = "auth")]
    pub fn auth_refused(&self, why: crate::token::Refusal) {
        self.auth_refused[why as usize].fetch_add(1, Relaxed);
    }

    /// Upgrades refused for their token with this cause so far.
    #[cfg(feature = "auth")]
    pub fn auth_refusals(&self, why: crate::token::Refusal) -> u64 {
        self.auth_refused[why as usize].load(Relaxed)
    }

    /// Counts an API call to `endpoint` (one of [`API_ENDPOINTS`]) answered with `status`.
    #[cfg(feature = "api")]
    pub fn api_call(&self, endpoint: &str, status: u16) {
        let i = API_ENDPOINTS
            .iter()
            .position(|&e| e == endpoint)
            .unwrap_or(API_ENDPOINTS.len() - 1);
        let mut calls = self.api_calls.lock().unwrap_or_else(|e| e.into_inner());
        *calls.entry((i, status)).or_default() += 1;
    }

    /// Refusals of one kind so far.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    /// The token counters (feature `auth`).
    #[cfg(feature = "auth")]
    fn render_auth(&self, out: &mut String) {
        out.push_str(
            "# HELP smolchat_authenticated_total Sessions of clients that proved who they are with a token.\n",
        );
        out.push_str("# TYPE smolchat_authenticated_total counter\n");
        let _ = writeln!(
            out,
            "smolchat_authenticated_total {}",
            self.authenticated.load(Relaxed)
        );
        out.push_str(
            "# HELP smolchat_auth_refused_total WebSocket upgrades refused for their token, by cause.\n",
        );
        out.push_str("# TYPE smolchat_auth_refused_total counter\n");
        for why in crate::token::Refusal::ALL {
            let _ = writeln!(
                out,
                "smolchat_auth_refused_total{{cause=\"{}\"}} {}",
                why.name(),
                self.auth_refusals(why)
            );
        }
    }

    /// The API's counters (feature `api`).
    #[cfg(feature = "api")]
    fn render_api(&self, out: &mut String) {
        out.push_str(
            "# HELP smolchat_api_requests_total HTTP API calls, by endpoint and status.\n",
        );
        out.push_str("# TYPE smolchat_api_requests_total counter\n");
        let calls = self.api_calls.lock().unwrap_or_else(|e| e.into_inner());
        for (&(endpoint, status), n) in calls.iter() {
            let _ = writeln!(
                out,
                "smolchat_api_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                API_ENDPOINTS[endpoint]
            );
        }
    }

    /// Counts one close frame sent with `code`.
    pub fn close_sent(&self, code: u16) {
        if let Some(i) = CLOSE_CODES.iter().position(|&c| c == code) {
            self.closes[i].fetch_add(1, Relaxed);
        }
    }

    /// Close frames sent with `code` so far.
    pub fn closes_sent(&self, code: u16) -> u64 {
        CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .map_or(0, |i| self.closes[i].load(Relaxed))
    }

    /// Scale-out: true when `--redis` is set and Redis cannot be reached right now.
    #[cfg(feature = "redis")]
    pub fn redis_down(&self) -> bool {
        self.redis_enabled.load(Relaxed) && self.redis_up.load(Relaxed) == 0
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The Prometheus text exposition of every counter, and of the admission gauges
    /// (`connections`, `pending_connections`), read from `admission`.
    pub fn render(&self, admission: &Admission) -> String {
        let mut out = String::with_capacity(2048);
        let sessions = admission.sessions.taken() as u64;
        let pending = admission.pending.taken() as u64;
        let load = |counter: &AtomicU64| counter.load(Relaxed);
        // In the order of `BASICS`.
        let values = [
            sessions,
            load(&self.connections_total),
            pending,
            load(&self.history_bytes),
            load(&self.rooms),
            load(&self.messages_received),
            load(&self.events_delivered),
            load(&self.bytes_in),
            load(&self.bytes_out),
            load(&self.slow_consumers),
            load(&self.rate_limited),
        ];
        for (&(name, kind, help), value) in BASICS.iter().zip(values) {
            scalar(&mut out, &(name, kind, help, value));
        }
        #[cfg(feature = "redis")]
        self.render_redis(&mut out);
        #[cfg(feature = "store")]
        self.render_store(&mut out);
        family(
            &mut out,
            "refused_total",
            COUNTER,
            "HTTP requests, upgrades and sessions refused, by cause.",
        );
        for why in Refusal::ALL {
            let (cause, n) = (why.label(), self.refused(why));
            let _ = writeln!(out, "smolchat_refused_total{{cause=\"{cause}\"}} {n}");
        }
        #[cfg(feature = "tls")]
        self.render_tls(&mut out);
        #[cfg(feature = "auth")]
        self.render_auth(&mut out);
        #[cfg(feature = "api")]
        self.render_api(&mut out);
        family(
            &mut out,
            "close_codes_total",
            COUNTER,
            "WebSocket close frames sent, by code.",
        );
        for code in CLOSE_CODES {
            let n = self.closes_sent(code);
            let _ = writeln!(out, "smolchat_close_codes_total{{code=\"{code}\"}} {n}");
        }
        out
    }

    /// Scale-out's counters, when `--redis` is set.
    #[cfg(feature = "redis")]
    fn render_redis(&self, out: &mut String) {
        if !self.redis_enabled.load(Relaxed) {
            return;
        }
        let load = |counter: &AtomicU64| counter.load(Relaxed);
        #[rustfmt::skip]
        let families = [
            ("redis_up", GAUGE, "1 while the node is connected to Redis, else 0.", load(&self.redis_up)),
            ("redis_reconnects_total", COUNTER, "Connections to Redis made after the first.", load(&self.redis_reconnects)),
            ("redis_unavailable_total", COUNTER, "Commands answered with error unavailable.", load(&self.backend_unavailable)),
        ];
        families.iter().for_each(|family| scalar(out, family));
    }

    /// The durable store's counters (feature `store`).
    #[cfg(feature = "store")]
    fn render_store(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Relaxed);
        #[rustfmt::skip]
        let families = [
            ("store_commits_total", COUNTER, "Commits of the durable history store.", load(&self.store_commits)),
            ("store_failures_total", COUNTER, "Commits of the store that failed (tried again).", load(&self.store_failures)),
            ("store_reserved_ahead", GAUGE, "Message ids reserved ahead of use, all rooms together.", load(&self.store_reserved_ahead)),
        ];
        families.iter().for_each(|family| scalar(out, family));
    }

    /// The failed TLS handshakes, by cause (feature `tls`).
    #[cfg(feature = "tls")]
    fn render_tls(&self, out: &mut String) {
        family(
            out,
            "tls_handshake_failures_total",
            COUNTER,
            "TLS handshakes that failed, by cause.",
        );
        for (i, cause) in ["not_tls", "protocol", "io"].iter().enumerate() {
            let n = self.tls_failures[i].load(Relaxed);
            let _ = writeln!(
                out,
                "smolchat_tls_handshake_failures_total{{cause=\"{cause}\"}} {n}"
            );
        }
    }
}

const GAUGE: &str = "gauge";
const COUNTER: &str = "counter";

/// The families every build has, without labels, as `(name, kind, help)`; `render` reads their
/// values in this order. A table in read-only data rather than code that builds one.
#[rustfmt::skip]
const BASICS: [(&str, &str, &str); 11] = [
    ("connections", GAUGE, "WebSocket sessions open now."),
    ("connections_total", COUNTER, "WebSocket sessions opened."),
    ("pending_connections", GAUGE, "Connections reading a request head or writing a plain response."),
    ("history_bytes", GAUGE, "Bytes of messages all rooms remember."),
    ("rooms", GAUGE, "Rooms held, empty ones with history included."),
    ("messages_received_total", COUNTER, "Chat and direct messages accepted."),
    ("events_delivered_total", COUNTER, "Events queued to clients."),
    ("bytes_in_total", COUNTER, "WebSocket payload bytes received."),
    ("bytes_out_total", COUNTER, "WebSocket payload bytes sent."),
    ("slow_consumers_total", COUNTER, "Clients disconnected because their queue filled."),
    ("rate_limited_total", COUNTER, "Messages refused by the rate limit."),
];

/// One family of one sample without labels: `(name, kind, help, value)`.
fn scalar(out: &mut String, &(name, kind, help, value): &(&str, &str, &str, u64)) {
    family(out, name, kind, help);
    let _ = writeln!(out, "smolchat_{name} {value}");
}

/// The `HELP` and `TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(
        out,
        "# HELP smolchat_{name} {help}\n# TYPE smolchat_{name} {kind}\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_with_help_and_type() {
        let m = Metrics::default();
        Metrics::add(&m.messages_received, 3);
        m.refuse(Refusal::Origin);
        m.close_sent(1013);
        let text = m.render(&Admission::new(&crate::Config::default()));
        assert!(text.contains(
            "# TYPE smolchat_messages_received_total counter\nsmolchat_messages_received_total 3\n"
        ));
        assert!(text.contains("smolchat_refused_total{cause=\"origin\"} 1\n"));
        assert!(text.contains("smolchat_close_codes_total{code=\"1013\"} 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
    }
}
