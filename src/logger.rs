//! A tiny stderr logger for the `log` facade, and a rate limit for refusal lines.
//!
//! Log records enter through the `log` macros anywhere in the crate; [`init`] (called once by
//! the binary) sends them to stderr as `LEVEL target: message`. Embedders install their own
//! logger instead. A full-featured logger crate would cost more binary than this whole file.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{:<5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Sends log records at `level` and above to stderr. Call once.
pub fn init(level: log::LevelFilter) {
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// At most [`Limiter::PER_SECOND`] lines a second of one kind; the lines held back are counted
/// and reported with the next line that gets through.
struct Limiter {
    window: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

impl Limiter {
    const PER_SECOND: u64 = 10;

    const fn new() -> Self {
        Limiter {
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn log(&self, level: log::Level, peer: &str, what: &str) {
        if !log::log_enabled!(level) {
            return;
        }
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.window.swap(second, Relaxed) != second {
            self.in_window.store(0, Relaxed);
        }
        if self.in_window.fetch_add(1, Relaxed) < Self::PER_SECOND {
            match self.suppressed.swap(0, Relaxed) {
                0 => log::log!(level, "{peer}: {what}"),
                n => log::log!(level, "{peer}: {what} ({n} similar lines suppressed)"),
            }
        } else {
            self.suppressed.fetch_add(1, Relaxed);
        }
    }
}

/// Logs a refused request or a forced disconnect at `warn`, at most ten lines a second, so a
/// flood of bad clients cannot flood the log too.
pub fn refusal(peer: &str, what: &str) {
    static REFUSALS: Limiter = Limiter::new();
    REFUSALS.log(log::Level::Warn, peer, what);
}

/// Logs a client's arrival or departure at `info`, at most ten lines a second: a connection
/// flood must not become a log flood (or, on a gateway, a flash-wearing one).
pub fn connection(peer: &str, what: &str) {
    static CONNECTIONS: Limiter = Limiter::new();
    CONNECTIONS.log(log::Level::Info, peer, what);
}
