//! Shared secrets: the tokens' HS256 key (feature `auth`) and the HTTP API's key (feature
//! `api`).
//!
//! A secret enters once, at start-up, read from a file by [`Secret::read`]; it leaves only as
//! a key for HMAC, or through [`Secret::matches`], which compares in constant time. Its
//! `Debug` shows its length, never its bytes, so a `Config` printed for debugging leaks
//! nothing.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A shared secret (the HS256 key, or the API key). Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Secret {
        Secret(bytes.into())
    }

    /// The secret's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// True when `other` is the same secret, compared in constant time: the HMACs of both
    /// under a fixed key are compared with `hmac`'s constant-time check, so neither the
    /// length nor the content of the secret leaks through the time a refusal takes.
    pub fn matches(&self, other: &[u8]) -> bool {
        let mac = |bytes: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"smolchat key comparison")
                .expect("HMAC takes any key");
            mac.update(bytes);
            mac
        };
        let theirs = mac(other).finalize().into_bytes();
        mac(&self.0).verify_slice(&theirs).is_ok()
    }

    /// Reads a secret from a file (never from the command line, where `ps` would show it),
    /// without one trailing newline.
    pub fn read(path: &str) -> Result<Secret, String> {
        let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Ok(Secret::new(bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_and_do_not_print() {
        let s = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec());
        assert!(s.matches(b"0123456789abcdef0123456789abcdef"));
        assert!(!s.matches(b"0123456789abcdef0123456789abcdeX"));
        assert!(!s.matches(b""));
        assert_eq!(format!("{s:?}"), "Secret(32 bytes)");
    }
}
