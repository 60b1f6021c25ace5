//! Who a client is, to the hub and to the authority: its [`ClientId`] (a slot and a serial),
//! the [`Address`] it connects from, for the limits per address, and the [`User`] its token
//! proved it is, if it gave one.
//!
//! Ids enter when the hub registers a client and leave with every command, answer and event
//! about it; addresses enter from the peer `Chat::serve` is given; users from the token the
//! handshake verified.

use std::net::{IpAddr, SocketAddr};

/// Identifies one connected client. The slab key is reused after a client leaves, so the
/// `serial` (never reused) tells a late command from a departed client apart from its
/// successor in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    pub(crate) key: usize,
    pub(crate) serial: u64,
}

/// Where a client connects from, for limits per address: an IPv4 address, an IPv6 /64 (one
/// subscriber's network: a single host can use any of its 2^64 addresses), or for peers that
/// are not socket addresses (embedders may pass any text) a hash of the text.
///
/// Kept as two halves, high first, rather than a `u128`, whose 16-byte alignment would pad
/// every command and every connection's task that holds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address([u64; 2]);

impl Address {
    /// The address of `peer`, as `Chat::serve` receives it (`"127.0.0.1:5000"`).
    pub fn of(peer: &str) -> Address {
        let ip = peer
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| peer.parse::<IpAddr>());
        let value = match ip.map(|ip| ip.to_canonical()) {
            Ok(IpAddr::V4(v4)) => u128::from(v4.to_ipv6_mapped()),
            Ok(IpAddr::V6(v6)) => u128::from(v6) & !u128::from(u64::MAX),
            Err(_) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                peer.hash(&mut h);
                // Low bits set: no IPv6 /64 prefix key has any.
                u128::from(h.finish()) | 1 << 64
            }
        };
        Address([(value >> 64) as u64, value as u64])
    }

    /// The address as a number, for stores that key by it (Redis).
    pub fn value(self) -> u128 {
        u128::from(self.0[0]) << 64 | u128::from(self.0[1])
    }
}

/// A verified token (feature `auth`): the user, and when the token expires (seconds since the
/// Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: User,
    pub expires: u64,
}

/// A client that proved with a token who it is (see `crate::token`): the user's name, which
/// is its nick, and the rooms its token allows it to join (`None`: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub rooms: Option<Vec<String>>,
}
