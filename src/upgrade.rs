//! The WebSocket upgrade: from a routed `GET /ws` to a registered client and its WebSocket.
//!
//! A request enters from [`crate::route`] as a [`Request`]: the checked upgrade's accept key,
//! its raw-mode group, the user its token proved, and the bytes read after its head.
//! [`answer`] asks admission for a session permit (`--max-connections`, and a backend that
//! takes sessions), registers the client with the hub ([`register`]: in raw mode it is in
//! its group from then on, or refused with an HTTP status), writes the `101`, and builds the
//! WebSocket with buffers sized from our limits ([`ws_config`]). It leaves as an [`Upgrade`]:
//! the WebSocket ([`Socket`]), the client's id and queue, when its token expires, and its
//! session permit, which the session holds until it ends.

use async_channel::Sender;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::Front;
use crate::admission::Permit;
use crate::client::{User, Verified};
use crate::http::{self, Response, respond};
use crate::hub::{Address, ClientId, Command, Orphans, Outgoing, Rejected};
use crate::logger;
use crate::metrics::{Metrics, Refusal};
use crate::protocol::LeaveReason;
use crate::queue::{self, Receiver};
use crate::wire::{self, Socket};

/// Bytes tungstenite buffers before it writes to the socket.
const WRITE_BUFFER: usize = 4096;

/// An accepted upgrade: the WebSocket, the client the hub registered, when its token
/// expires, and its `--max-connections` permit.
pub(crate) type Upgrade<'a, S> = (
    Box<Socket<S>>,
    (ClientId, Receiver<Outgoing>),
    Option<u64>,
    Permit<'a>,
);

/// A routed upgrade request.
pub(crate) struct Request {
    /// Bytes the client sent after its head: the start of the WebSocket stream.
    pub(crate) leftover: Vec<u8>,
    /// The `Sec-WebSocket-Accept` to answer with.
    pub(crate) accept_key: String,
    /// Raw mode: the group named by the path (`/ws/NAME`).
    pub(crate) group: Option<String>,
    /// The user the request's token proved; `None`: a guest.
    pub(crate) user: Option<Box<Verified>>,
}

/// Takes a session permit, registers the client with the hub, answers `101`, and wraps the
/// stream as a WebSocket.
pub(crate) async fn answer<'a, S>(
    front: Front<'a>,
    mut stream: S,
    request: Request,
    peer: &str,
) -> Option<Upgrade<'a, S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let busy = |text| Response::text(503, text).with("Retry-After", "5");
    if !front.backend_up() {
        let down = busy("chat backend unavailable; try again later");
        http::refuse(front.metrics(), &mut stream, peer, down, Refusal::Capacity).await;
        return None;
    }
    let Some(permit) = front.admission().sessions.try_take() else {
        let full = busy("server full; try again later");
        http::refuse(front.metrics(), &mut stream, peer, full, Refusal::Capacity).await;
        return None;
    };
    let Request {
        leftover,
        accept_key,
        group,
        user,
    } = request;
    let expires = user.as_ref().map(|v| v.expires);
    let authenticated = user.is_some();
    let registration = match register(front, group, user.map(|v| v.user), peer).await {
        Ok(registration) => registration,
        Err(refused) => {
            logger::refusal(
                peer,
                &format!("refused: {} {}", refused.status, refused.reason()),
            );
            respond(&mut stream, &refused).await;
            return None;
        }
    };
    Metrics::add(&front.metrics().connections_total, 1);
    if authenticated {
        Metrics::add(&front.metrics().authenticated, 1);
    }
    let written = async {
        stream
            .write_all(http::switching_protocols(&accept_key).as_bytes())
            .await?;
        stream.flush().await
    };
    written.await.ok()?;
    // Boxed: the session's future holds a pointer, not the WebSocket's whole size.
    let socket = wire::accept(stream, leftover, ws_config(front)).await;
    Some((socket, registration.into_parts(), expires, permit))
}

/// Gives the hub a new client's queue and waits for its id, before the `101`: from then on a
/// raw client is in its group and hears every frame, and a v1 client's `welcome` is on its
/// way. The hub may refuse a raw client (its token's claim, its user's connections, the room
/// limits), which is answered here with an HTTP status and the reason, since a raw client
/// reads no JSON. A hub that is shutting down takes no one: 503.
async fn register<'a>(
    front: Front<'a>,
    group: Option<String>,
    user: Option<User>,
    peer: &str,
) -> Result<Registration<'a>, Response> {
    let (queue_tx, queue) = queue::bounded(front.config().queue, front.config().queue_bytes);
    let (reply, answer) = async_channel::bounded(1);
    let command = Command::Connect {
        queue: queue_tx,
        reply,
        address: Address::of(peer),
        group,
        user,
    };
    let shutting_down =
        || Response::text(503, crate::hub::SHUTDOWN_CLOSE.1).with("Retry-After", "5");
    front
        .inbox()
        .send(command)
        .await
        .map_err(|_| shutting_down())?;
    match answer.recv().await {
        Ok(Ok(client)) => Ok(Registration {
            inbox: front.inbox(),
            orphans: front.orphans(),
            client,
            queue: Some(queue),
        }),
        Ok(Err(Rejected::Forbidden(why))) => Err(Response::text(403, &why)),
        Ok(Err(Rejected::UserLimit(why))) => Err(Response::text(429, &why)),
        Ok(Err(Rejected::Busy(why))) => Err(Response::text(503, &why).with("Retry-After", "5")),
        Err(_) => Err(shutting_down()),
    }
}

/// A client the hub registered, until its session takes it over. Dropped before that (the
/// `101` could not be written, or the handshake's deadline passed), it tells the hub the
/// client is gone, as the session would have.
struct Registration<'a> {
    inbox: &'a Sender<Command>,
    orphans: &'a Orphans,
    client: ClientId,
    queue: Option<Receiver<Outgoing>>,
}

impl Registration<'_> {
    /// The client's id and queue, for its session, which now owns its departure.
    fn into_parts(mut self) -> (ClientId, Receiver<Outgoing>) {
        let queue = self.queue.take().expect("taken once");
        (self.client, queue)
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.queue.is_some() {
            // No await in a drop. A full inbox cannot take the `Disconnect`: the client is
            // left to the hub, which forgets it before its next command.
            let gone = Command::Disconnect {
                client: self.client,
                reason: LeaveReason::Disconnected,
            };
            if self.inbox.try_send(gone).is_err() {
                self.orphans.add(self.client);
            }
        }
    }
}

/// tungstenite's read buffer, per connection: room for a usual chat frame in one read (a `say`
/// with 64 bytes of text is about 100 bytes with its header and mask). tungstenite reads at
/// most this much at a time, so the socket below it reads ahead (`wire::Gate`): a longer frame
/// still takes one read. It was 512 bytes until issue 27 measured what an idle connection
/// costs: 128 takes 0.36 KiB off each (BENCHMARKS.md, "The read buffer").
const READ_BUFFER: usize = 128;

/// tungstenite's buffers, sized from our limits: its defaults (128 KiB read buffer,
/// 128 KiB write threshold, 64 MiB messages) would cost more per connection than
/// everything else together. The read buffer is allocated eagerly for every connection and
/// kept for its whole life, so it is small: [`READ_BUFFER`].
///
/// The chat's events do not pass through tungstenite's writer (the session's writer frames
/// them, [`crate::wire`]); only its own frames do (pongs, close answers, our close), into
/// the writer's gate. Its write limits keep the sizes they had when every event went
/// through it (4 KiB, plus the largest event the hub can build and the largest header), a
/// bound that its small frames never reach.
fn ws_config(front: Front) -> WebSocketConfig {
    let max = front.config().max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + front.config().max_event_bytes() + 14)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}
