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

/// Logs a refused request or a forced disconnect at `warn`, at most ten lines a second, so a
/// flood of bad clients cannot flood the log too. Lines held back are counted and reported
/// with the next line that gets through.
pub fn refusal(peer: &str, what: &str) {
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static IN_WINDOW: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if WINDOW.swap(second, Relaxed) != second {
        IN_WINDOW.store(0, Relaxed);
    }
    if IN_WINDOW.fetch_add(1, Relaxed) < 10 {
        match SUPPRESSED.swap(0, Relaxed) {
            0 => log::warn!("{peer}: {what}"),
            n => log::warn!("{peer}: {what} ({n} similar lines suppressed)"),
        }
    } else {
        SUPPRESSED.fetch_add(1, Relaxed);
    }
}
