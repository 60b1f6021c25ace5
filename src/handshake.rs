//! Everything between an accepted socket and a routed request: admission to the pending
//! state, one deadline, TLS, and the request head.
//!
//! A connection enters from [`Chat::serve`](crate::Chat::serve) or `Chat::serve_tls` as any `AsyncRead +
//! AsyncWrite` byte stream, with the chat's [`Front`] view (settings, counters, admission and
//! the hub's inbox; nothing else of the chat). [`admit`] first takes a `--max-pending` permit
//! and one of the address's share of them ([`crate::admission`]), or refuses the connection
//! with a one-shot 503. It then meters the stream ([`Metered`]) and runs the rest under one
//! deadline, `--handshake-timeout`: the TLS handshake if there is one, reading the request
//! head, and what [`crate::route`] answers, the upgrade ([`crate::upgrade`]) included.
//!
//! A connection leaves in one of two ways. Answered with a plain response or out of time, it
//! is dropped here. Upgraded, it leaves as an [`Upgraded`]: the WebSocket ([`crate::wire::Socket`]), the
//! write [`Progress`] of its socket, its id and queue from the hub, and its `--max-connections`
//! permit, which [`Chat::serve`](crate::Chat::serve) hands to the session ([`crate::session`]). The pending permit
//! is given back at that moment, the session permit only when the session ends.

use std::future::Future;
use std::sync::Arc;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::Front;
use crate::admission::Permit;
use crate::deadline::within;
use crate::http::{self, HeadError, Response};
use crate::hub::{Address, ClientId, Outgoing};
use crate::logger;
use crate::meter::{Metered, Progress};
use crate::metrics::Refusal;
use crate::queue::Receiver;
use crate::upgrade::Upgrade;

/// An admitted connection, as [`Chat::serve`](crate::Chat::serve) hands it to the session.
pub(crate) struct Upgraded<'a, S> {
    pub(crate) socket: Box<crate::wire::Socket<S>>,
    /// The write progress of its socket.
    pub(crate) progress: Arc<Progress>,
    /// Its id at the hub, and the queue the hub fills for it.
    pub(crate) client: (ClientId, Receiver<Outgoing>),
    /// When its token expires (seconds since the Unix epoch); `None`: a guest.
    pub(crate) expires: Option<u64>,
    /// Its `--max-connections` permit.
    pub(crate) permit: Permit<'a>,
}

/// Everything before the session: a `--max-pending` permit, then `wrap` (the socket itself, or
/// its TLS handshake) and the HTTP exchange, together within `--handshake-timeout`. `plain`:
/// a refused connection may be answered in plain HTTP.
pub(crate) async fn admit<'a, S, T, F, Fut>(
    front: Front<'a>,
    mut stream: S,
    peer: &str,
    wrap: F,
    plain: bool,
) -> Option<Upgraded<'a, T>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Metered<S>) -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let admission = front.admission();
    let pending = admission.pending.try_take().and_then(|permit| {
        let share = admission.pending_per_address.try_take(Address::of(peer))?;
        Some((permit, share))
    });
    let Some(_pending) = pending else {
        front.metrics().refuse(Refusal::Pending);
        logger::refusal(
            peer,
            "refused: too many connections waiting (--max-pending, --max-pending-per-address)",
        );
        let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
            Connection: close\r\nRetry-After: 5\r\n\r\n";
        // One try, no waiting: this connection gets nothing else from us.
        if plain {
            let _ = futures_lite::future::poll_once(stream.write_all(busy)).await;
        }
        return None;
    };
    // The socket is metered from its first byte, below TLS when there is TLS: the byte
    // budget, the yield and the write progress count what crosses the socket, so records
    // that decrypt to nothing cost a client its budget too.
    let config = front.config();
    let per_message = config.max_message_bytes as u64 + 64;
    let rate = u64::from(config.rate_limit) * per_message;
    let burst = u64::from(config.rate_burst) * per_message;
    let (stream, progress) = Metered::new(stream, rate, burst);
    let exchange = async {
        let stream = wrap(stream).await?;
        exchange(front, stream, peer).await
    };
    match within(config.handshake_timeout, exchange).await {
        Some(upgraded) => upgraded.map(|(socket, client, expires, permit)| Upgraded {
            socket,
            progress,
            client,
            expires,
            permit,
        }),
        None => {
            front.metrics().refuse(Refusal::Timeout);
            logger::refusal(peer, "dropped: request not done within --handshake-timeout");
            None
        }
    }
}

/// The TLS handshake with `acceptor` (feature `tls`), as [`admit`]'s `wrap`: the encrypted
/// stream, or `None` (counted and logged) if the handshake failed.
#[cfg(feature = "tls")]
pub(crate) async fn tls<S>(
    front: Front<'_>,
    stream: S,
    peer: &str,
    acceptor: futures_rustls::TlsAcceptor,
) -> Option<futures_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // rustls buffers up to 64 KiB of outgoing plaintext by default: 16 KiB holds more than
    // the largest default event, and bounds what a client that stops reading costs.
    let limit = |conn: &mut futures_rustls::rustls::ServerConnection| {
        conn.set_buffer_limit(Some(crate::tls::BUFFER_LIMIT));
    };
    match acceptor.accept_with(stream, limit).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            let failure = crate::tls::Failure::of(&e);
            front.metrics().tls_failed(failure);
            logger::refusal(peer, &format!("TLS handshake failed ({failure:?}): {e}"));
            None
        }
    }
}

/// Reads the request head and has it answered ([`crate::route::serve`]). For an accepted
/// upgrade, returns the WebSocket and the rest of [`Upgrade`].
async fn exchange<'a, S>(front: Front<'a>, mut stream: S, peer: &str) -> Option<Upgrade<'a, S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let refused = match http::read_head(&mut stream).await {
        Ok((head, leftover)) => {
            return crate::route::serve(front, stream, head, leftover, peer).await;
        }
        Err(HeadError::Io) => return None,
        Err(HeadError::TooLarge) => (431, "request head too large", Refusal::HeadTooLarge),
        Err(HeadError::Malformed) => (400, "malformed HTTP request", Refusal::BadRequest),
    };
    let (status, text, why) = refused;
    let response = Response::text(status, text);
    http::refuse(front.metrics(), &mut stream, peer, response, why).await;
    None
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::sync::atomic::Ordering::Relaxed;
    use std::task::{Context, Poll};

    use futures_lite::FutureExt;

    use super::*;
    use crate::Chat;
    use crate::config::{Config, Protocol};
    use crate::hub::Command;
    use crate::protocol::LeaveReason;

    /// A socket whose client sent one upgrade request and is gone by the time the `101` is
    /// written: its first write fails, after `on_write` ran.
    struct Vanishing {
        request: &'static [u8],
        on_write: Option<Box<dyn FnOnce()>>,
    }

    impl AsyncRead for Vanishing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.request.len());
            if n == 0 {
                return Poll::Pending; // nothing more: the upgrade is all it sent
            }
            buf[..n].copy_from_slice(&self.request[..n]);
            self.request = &self.request[n..];
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Vanishing {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            if let Some(on_write) = self.on_write.take() {
                on_write();
            }
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Review of issue 22: a raw client is registered before its `101`; when that write fails
    /// while the hub's inbox is full, its `Disconnect` cannot be queued. It must not stay a
    /// member of its group (or count against its user's connections) forever: the hub forgets
    /// it before its next command.
    #[test]
    fn a_client_whose_101_fails_while_the_inbox_is_full_is_forgotten() {
        let config = Config {
            protocol: Protocol::Raw,
            ..Config::default()
        };
        let (chat, hub) = Chat::new(config);
        let inbox = chat.inbox.clone();
        // A busy hub: the inbox fills up (with commands about nobody) while the 101 is on
        // its way.
        let fill = move || {
            let nobody = ClientId {
                key: usize::MAX,
                serial: 0,
            };
            let gone = || Command::Disconnect {
                client: nobody,
                reason: LeaveReason::Disconnected,
            };
            while inbox.try_send(gone()).is_ok() {}
        };
        let socket = Vanishing {
            request: b"GET /ws/ghost HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                Sec-WebSocket-Version: 13\r\n\r\n",
            on_write: Some(Box::new(fill)),
        };
        let rooms = || chat.metrics.rooms.load(Relaxed);
        let scenario = async {
            chat.serve(socket, "127.0.0.1:1").await;
            assert_eq!(
                rooms(),
                1,
                "registered; its Disconnect did not fit the inbox"
            );
            while !chat.inbox.is_empty() {
                futures_lite::future::yield_now().await;
            }
            assert_eq!(rooms(), 0, "forgotten: its group is gone");
        };
        futures_lite::future::block_on(scenario.or(hub));
    }
}
