//! Counters for `/metrics`, and their rendering as Prometheus text.
//!
//! Every part of the server holds an `Arc<Metrics>` and bumps plain atomic counters with
//! relaxed ordering: each counter is independent, and a scrape that sees one a moment before
//! another is fine. Data leaves through [`Metrics::render`], called by the HTTP route.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// WebSocket sessions open now.
    pub connections: AtomicU64,
    /// WebSocket sessions ever opened.
    pub connections_total: AtomicU64,
    /// Connections that are not WebSocket sessions (yet): reading a request head or writing a
    /// plain response.
    pub pending: AtomicU64,
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

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut one = |name: &str, kind: &str, help: &str, value: &AtomicU64| {
            let _ = write!(
                out,
                "# HELP smolchat_{name} {help}\n# TYPE smolchat_{name} {kind}\nsmolchat_{name} {}\n",
                value.load(Relaxed)
            );
        };
        one(
            "connections",
            "gauge",
            "WebSocket sessions open now.",
            &self.connections,
        );
        one(
            "connections_total",
            "counter",
            "WebSocket sessions opened.",
            &self.connections_total,
        );
        one(
            "pending_connections",
            "gauge",
            "Connections reading a request head or writing a plain response.",
            &self.pending,
        );
        one(
            "history_bytes",
            "gauge",
            "Bytes of messages all rooms remember.",
            &self.history_bytes,
        );
        one(
            "rooms",
            "gauge",
            "Rooms held, empty ones with history included.",
            &self.rooms,
        );
        one(
            "messages_received_total",
            "counter",
            "Chat and direct messages accepted.",
            &self.messages_received,
        );
        one(
            "events_delivered_total",
            "counter",
            "Events queued to clients.",
            &self.events_delivered,
        );
        one(
            "bytes_in_total",
            "counter",
            "WebSocket payload bytes received.",
            &self.bytes_in,
        );
        one(
            "bytes_out_total",
            "counter",
            "WebSocket payload bytes sent.",
            &self.bytes_out,
        );
        one(
            "slow_consumers_total",
            "counter",
            "Clients disconnected because their queue filled.",
            &self.slow_consumers,
        );
        one(
            "rate_limited_total",
            "counter",
            "Messages refused by the rate limit.",
            &self.rate_limited,
        );

        #[cfg(feature = "redis")]
        if self.redis_enabled.load(Relaxed) {
            one(
                "redis_up",
                "gauge",
                "1 while the node is connected to Redis, else 0.",
                &self.redis_up,
            );
            one(
                "redis_reconnects_total",
                "counter",
                "Connections to Redis made after the first.",
                &self.redis_reconnects,
            );
            one(
                "redis_unavailable_total",
                "counter",
                "Commands answered with error unavailable.",
                &self.backend_unavailable,
            );
        }

        #[cfg(feature = "store")]
        {
            one(
                "store_commits_total",
                "counter",
                "Commits of the durable history store.",
                &self.store_commits,
            );
            one(
                "store_failures_total",
                "counter",
                "Commits of the store that failed (tried again).",
                &self.store_failures,
            );
            one(
                "store_reserved_ahead",
                "gauge",
                "Message ids reserved ahead of use, all rooms together.",
                &self.store_reserved_ahead,
            );
        }

        out.push_str(
            "# HELP smolchat_refused_total HTTP requests, upgrades and sessions refused, by cause.\n",
        );
        out.push_str("# TYPE smolchat_refused_total counter\n");
        for why in Refusal::ALL {
            let _ = writeln!(
                out,
                "smolchat_refused_total{{cause=\"{}\"}} {}",
                why.label(),
                self.refused(why)
            );
        }
        #[cfg(feature = "tls")]
        {
            out.push_str(
                "# HELP smolchat_tls_handshake_failures_total TLS handshakes that failed, by cause.\n",
            );
            out.push_str("# TYPE smolchat_tls_handshake_failures_total counter\n");
            for (i, cause) in ["not_tls", "protocol", "io"].iter().enumerate() {
                let n = self.tls_failures[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "smolchat_tls_handshake_failures_total{{cause=\"{cause}\"}} {n}"
                );
            }
        }
        #[cfg(feature = "auth")]
        self.render_auth(&mut out);
        #[cfg(feature = "api")]
        self.render_api(&mut out);
        out.push_str("# HELP smolchat_close_codes_total WebSocket close frames sent, by code.\n");
        out.push_str("# TYPE smolchat_close_codes_total counter\n");
        for code in CLOSE_CODES {
            let _ = writeln!(
                out,
                "smolchat_close_codes_total{{code=\"{code}\"}} {}",
                self.closes_sent(code)
            );
        }
        out
    }
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
        let text = m.render();
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
