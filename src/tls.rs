//! TLS (feature `tls`): https and wss on the one port, with certificates reloaded on SIGHUP.
//!
//! Certificates enter from two PEM files (`--tls-cert`, `--tls-key`) through [`Tls::load`],
//! which checks that the key matches the certificate. The accept loop takes the current
//! [`TlsAcceptor`] with [`Tls::acceptor`] for each new connection and hands it to
//! `Chat::serve_tls`, which runs the TLS handshake inside the connection's handshake deadline
//! and `--max-pending` slot. [`Tls::reload`] (SIGHUP) reads the files again: new connections
//! get the new certificate, open ones keep theirs, and a bad file keeps the old one.
//!
//! The crypto is rustls with the `ring` provider (pure Rust and a little assembly, no cmake,
//! cross-compiles to ARM), through `futures-rustls`, which fits any futures-io stream.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use futures_rustls::rustls::{self, ServerConfig};

use crate::config::{ConfigError, Section, err, flags, put};

/// The TLS flags, for the flag table (`crate::config`).
pub(crate) const FLAGS: Section = Section {
    heading: "\nTLS (the tls feature; SIGHUP reloads both files):\n",
    flags: flags! {
        "tls-cert" "PATH": "certificate chain, PEM; with --tls-key the port serves https/wss only"
            => |c, v| put(&mut c.tls_cert, Ok(Some(v.into())));
        "tls-key" "PATH": "private key, PEM" => |c, v| put(&mut c.tls_key, Ok(Some(v.into())));
    },
    footer: &[],
    check: Some(|c| match (&c.tls_cert, &c.tls_key) {
        (Some(_), None) => Err(err("--tls-key", "is needed with --tls-cert")),
        (None, Some(_)) => Err(err("--tls-cert", "is needed with --tls-key")),
        _ => Ok(()),
    }),
};

/// Outgoing plaintext a TLS connection may buffer in rustls before writes wait (rustls's
/// default is 64 KiB). The session's own buffers come on top; see the README's memory
/// formula.
pub const BUFFER_LIMIT: usize = 16 * 1024;

/// The certificate files and the acceptor built from them.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads and checks the certificate chain and key. Errors name the flag to fix.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, ConfigError> {
        let acceptor = RwLock::new(acceptor(cert, key)?);
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            acceptor,
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files again. On success new connections get the new certificate; on failure
    /// the old one stays and the error says why.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let fresh = acceptor(&self.cert, &self.key)?;
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ConfigError> {
    let fail = |flag: &str, path: &Path, what: String| ConfigError {
        flag: flag.to_string(),
        message: format!("{}: {what}", path.display()),
    };
    let cert_pem = std::fs::read(cert).map_err(|e| fail("--tls-cert", cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail("--tls-cert", cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(fail("--tls-cert", cert, "no certificate in it".into()));
    }
    let key_pem = std::fs::read(key).map_err(|e| fail("--tls-key", key, e.to_string()))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| fail("--tls-key", key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail("--tls-cert", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => "does not match the certificate".into(),
                other => other.to_string(),
            };
            fail("--tls-key", key, why)
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Why a TLS handshake failed, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client spoke something else than TLS, usually plain HTTP on the TLS port.
    NotTls,
    /// A TLS protocol error: no common version or cipher, a bad record, an alert.
    Protocol,
    /// The connection failed or closed during the handshake.
    Io,
}

impl Failure {
    /// Classifies the error `TlsAcceptor::accept` returned.
    pub fn of(error: &std::io::Error) -> Failure {
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
                Failure::NotTls
            }
            Some(_) => Failure::Protocol,
            // rustls reports some refusals (a handshake message over its buffer) as bad data.
            None if error.kind() == std::io::ErrorKind::InvalidData => Failure::Protocol,
            None => Failure::Io,
        }
    }
}
