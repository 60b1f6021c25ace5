//! The Redis backend as the rest of the server sees it: its flags and their checks, its start
//! and its health.
//!
//! Its flags (`--redis`, `--redis-heartbeat`) are a section of the flag table
//! (`crate::config::Section`), plugged in by one line there: values enter as text from the
//! command line or the environment and leave as the fields `Config::redis` and
//! `Config::redis_heartbeat`, which the bridge reads. [`start`] is what `Backend::choose`
//! (lib.rs) calls with `--redis`: it starts the authority and its bridge and hands them over
//! as a `Backend`, whose health says whether Redis can be reached (new sessions and
//! `/healthz` wait for it).

use std::sync::Arc;

use crate::Backend;
use crate::config::{Config, ConfigError, Protocol, Section, err, flags};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Starts the Redis authority (see [`super::start`]) and the hub that asks it.
pub(crate) fn start(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    connect: super::Connect,
) -> Backend {
    let (done, stopped) = async_channel::bounded(1);
    let (authority, notices, bridge) = super::start(config.clone(), metrics.clone(), connect, done);
    let hub = Hub::with_authority(config, metrics, Box::new(authority));
    Backend {
        hub,
        notices: Some(notices),
        beside: Some(Box::pin(bridge)),
        // The bridge keeps the `redis_up` gauge; a node that cannot reach Redis could
        // answer no command, so it takes no session.
        up: |metrics| !metrics.redis_down(),
        stopped: Some(stopped),
    }
}

/// Scale-out's flags (feature `redis`).
pub(crate) const FLAGS: Section = Section {
    heading: "\nScale-out (the redis feature; see docs/scale-out.md):\n",
    flags: flags! {
        "redis" "URL": "share rooms with other nodes through Redis (redis://host:6379)"
            => |c, v| url(c, v);
        "redis-heartbeat" "DUR" = "5s": "node heartbeat; a node silent for 3 beats is lost"
            => duration(redis_heartbeat);
    },
    footer: &[],
    check: Some(check),
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
