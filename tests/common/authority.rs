//! The conformance suite's two authorities (issue 23): the same chat scenarios run against
//! the in-memory authority and against Redis, which keeps the Rust rules
//! (`src/authority/local.rs`) and the Lua ones (`src/cluster/scripts.rs`) equal.
//!
//! A test file includes this with `#[macro_use] #[path = "common/authority.rs"] mod authority;`
//! (after `mod common;` and, with the `redis` feature, `mod redis_server;`), writes each
//! scenario as `fn name(authority: Authority)` that starts its server with [`setup`], and
//! lists the scenarios in [`on_every_authority!`]: each runs as `name::local` and, with
//! `--features redis` (which needs `redis-server`), `name::redis`, each with a Redis of its own
//! on a loopback port.
#![allow(dead_code)]

#[cfg(feature = "redis")]
use std::time::{Duration, Instant};

#[cfg(feature = "redis")]
use crate::common::DEADLINE;
use crate::common::{TestServer, server_with};

/// Which authority decides: every scenario runs against each.
#[derive(Clone, Copy, Debug)]
pub enum Authority {
    Local,
    #[cfg(feature = "redis")]
    Redis,
}

/// A server (a node, for Redis) and its Redis if it has one; derefs to the server.
pub struct Setup {
    pub server: TestServer,
    #[cfg(feature = "redis")]
    _redis: Option<crate::redis_server::RedisServer>,
}

impl std::ops::Deref for Setup {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.server
    }
}

/// A server configured by `change`, deciding through `authority`; for Redis, once the node
/// has reached it.
pub fn setup(authority: Authority, change: impl FnOnce(&mut smolchat::Config)) -> Setup {
    match authority {
        Authority::Local => Setup {
            server: server_with(change),
            #[cfg(feature = "redis")]
            _redis: None,
        },
        #[cfg(feature = "redis")]
        Authority::Redis => {
            let redis = crate::redis_server::RedisServer::start();
            let server = server_with(|c| {
                c.redis = Some(redis.url());
                // Long enough that a busy test machine never misses a beat by accident.
                c.redis_heartbeat = Duration::from_secs(1);
                change(c);
            });
            let deadline = Instant::now() + DEADLINE;
            while server.running().chat().metrics().redis_down() {
                assert!(Instant::now() < deadline, "the node never reached Redis");
                std::thread::sleep(Duration::from_millis(10));
            }
            Setup {
                server,
                _redis: Some(redis),
            }
        }
    }
}

/// Runs each scenario against every authority: `NAME::local` and, with the `redis` feature,
/// `NAME::redis`.
macro_rules! on_every_authority {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn local() {
                super::$name($crate::authority::Authority::Local);
            }
            #[cfg(feature = "redis")]
            #[test]
            fn redis() {
                super::$name($crate::authority::Authority::Redis);
            }
        }
    )*};
}
