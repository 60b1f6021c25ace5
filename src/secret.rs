//! Shared secrets: the tokens' HS256 key (feature `auth`) and the HTTP API's key (feature
//! `api`).
//!
//! A secret enters at start-up, read from a file by [`Secret::read`], and again whenever the
//! server gets SIGHUP ([`Secret::reload`]: a leaked secret is replaced without a restart); it
//! leaves only as a key for HMAC, or through [`Secret::matches`], which compares in constant
//! time. Its `Debug` shows its length, never its bytes, so a `Config` printed for debugging
//! leaks nothing.

use std::fmt;
use std::sync::{Arc, RwLock};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The least API key length accepted, in bytes.
pub const MIN_API_KEY_BYTES: usize = 16;

/// A shared secret (the HS256 key, or the API key). Its `Debug` does not show it. Clones share
/// it: a reload is seen by every clone.
#[derive(Clone)]
pub struct Secret {
    current: Arc<RwLock<Arc<[u8]>>>,
    /// The file it was read from, to read again on SIGHUP.
    path: Option<Arc<str>>,
}

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Secret {
        let bytes: Box<[u8]> = bytes.into();
        Secret {
            current: Arc::new(RwLock::new(bytes.into())),
            path: None,
        }
    }

    /// The secret's bytes, as they are now.
    pub fn bytes(&self) -> Arc<[u8]> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file the secret came from again (what SIGHUP does), for every clone. A file
    /// that cannot be read, or holds fewer than `min` bytes, keeps the old secret: the error
    /// says why. `Ok(false)`: the secret came from no file.
    pub fn reload(&self, min: usize) -> Result<bool, String> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let bytes = read_file(path)?;
        if bytes.len() < min {
            return Err(format!(
                "{path:?} holds {} bytes, fewer than the {min} needed",
                bytes.len()
            ));
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = bytes.into();
        Ok(true)
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
        mac(&self.bytes()).verify_slice(&theirs).is_ok()
    }

    /// Reads a secret from a file (never from the command line, where `ps` would show it),
    /// without one trailing newline.
    pub fn read(path: &str) -> Result<Secret, String> {
        let mut secret = Secret::new(read_file(path)?);
        secret.path = Some(path.into());
        Ok(secret)
    }
}

/// A secret file's bytes, without one trailing newline.
fn read_file(path: &str) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.bytes().len())
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

    #[test]
    fn a_reload_replaces_the_secret_for_every_clone_or_keeps_the_old_one() {
        let path = std::env::temp_dir().join(format!("smolchat-secret-{}", std::process::id()));
        let path_text = path.to_str().unwrap();
        std::fs::write(&path, "the first secret\n").unwrap();
        let secret = Secret::read(path_text).unwrap();
        let clone = secret.clone();
        assert!(clone.matches(b"the first secret"));
        std::fs::write(&path, "the second secret").unwrap();
        assert_eq!(secret.reload(16), Ok(true));
        assert!(
            clone.matches(b"the second secret"),
            "clones share the secret"
        );
        std::fs::write(&path, "short").unwrap();
        assert!(secret.reload(16).unwrap_err().contains("fewer than the 16"));
        std::fs::remove_file(&path).unwrap();
        assert!(secret.reload(16).unwrap_err().contains("cannot read"));
        assert!(
            clone.matches(b"the second secret"),
            "a failed reload keeps the old one"
        );
        assert_eq!(Secret::new(b"no file".to_vec()).reload(1), Ok(false));
    }
}
