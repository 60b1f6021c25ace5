//! The Redis backend's flags (`--redis`, `--redis-heartbeat`) and their checks, declared in the
//! flag table's style (`crate::config::Section`) and plugged into it by one line there.
//!
//! Values enter as text from the command line or the environment and leave as the fields
//! `Config::redis` and `Config::redis_heartbeat`, which the bridge reads.

use crate::config::{Config, ConfigError, Protocol, Section, duration, err, flags, put};

/// Scale-out's flags (feature `redis`).
pub(crate) const FLAGS: Section = Section {
    heading: "\nScale-out (the redis feature; see docs/scale-out.md):\n",
    flags: flags! {
        "redis" "URL": "share rooms with other nodes through Redis (redis://host:6379)" => url;
        "redis-heartbeat" "DUR" = "5s": "node heartbeat; a node silent for 3 beats is lost"
            => |c, v| put(&mut c.redis_heartbeat, duration(v));
    },
    footer: &[],
    check,
};

/// `--redis URL`: a `redis://` or `unix://` URL; redis-rs reads the rest when it connects.
fn url(config: &mut Config, value: &str) -> Result<(), crate::config::Invalid> {
    if !value.starts_with("redis://") && !value.starts_with("unix://") {
        return Err("expected a URL like redis://127.0.0.1:6379".into());
    }
    config.redis = Some(value.to_string());
    Ok(())
}

/// What cannot run with Redis: raw mode (one node only) and a store of its own.
fn check(config: &Config) -> Result<(), ConfigError> {
    if config.redis.is_none() {
        return Ok(());
    }
    if config.protocol == Protocol::Raw {
        return Err(err(
            "--protocol",
            "raw mode runs on one node; it cannot be combined with --redis",
        ));
    }
    #[cfg(feature = "store")]
    if config.data_dir.is_some() {
        return Err(err(
            "--data-dir",
            "with --redis, Redis keeps the history; leave --data-dir out (or use Redis's \
             own persistence)",
        ));
    }
    Ok(())
}
