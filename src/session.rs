//! One client's WebSocket session: a reader future and a writer future over one socket.
//!
//! The **reader** turns frames into [`Command`]s for the hub's bounded inbox. It awaits on that
//! inbox, so a busy hub slows clients down through TCP backpressure instead of growing memory.
//! It also enforces what can be checked without the hub: frame size and type, UTF-8, and the
//! per-client rate limit, which every frame counts against (pings and pongs too: each ping
//! costs the server a pong). It yields to the executor every [`YIELD_FRAMES`] frames, and the
//! stream below it ([`crate::meter`]) every few KiB, so a client that never stops sending
//! cannot keep a thread from the other clients.
//!
//! The **writer** drains the client's own bounded queue, which only the hub fills. After each
//! `recv` it feeds every event already queued and flushes once, so a burst costs one write,
//! then releases the batch's bytes from the queue's byte bound. It also sends pings, notices a
//! silent client, and gives up on a client whose socket accepts no byte for
//! `--write-timeout`.
//!
//! Both run inside one task ([`race`]); whichever ends first ends the session. The session
//! then tells the hub the client is gone, sends a close frame if it has one to send, and
//! lingers briefly so that frame reaches the client before the socket closes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::VecDeque;

use async_tungstenite::tungstenite::error::ProtocolError;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_lite::{AsyncRead, AsyncWrite, FutureExt, StreamExt};
use futures_util::SinkExt;

use crate::Chat;
use crate::bucket::TokenBucket;
use crate::config::Protocol;
use crate::deadline::{Timer, within, without_progress};
use crate::hub::{self, ClientId, Command, Outgoing};
use crate::meter::Progress;
use crate::metrics::Metrics;
use crate::protocol::{Error, ErrorCode, LeaveReason};
use crate::queue::Receiver;
use crate::queue::Weigh;
use crate::race::race;

/// Refusals within [`FLOOD_WINDOW`], after which a flooding client is closed with 1008.
pub const FLOOD_REFUSALS: u32 = 50;
/// The window [`FLOOD_REFUSALS`] are counted in. Not "in a row": a client that sends 49
/// frames for every token it earns would never have 50 refusals in a row.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// Frames the reader handles before it lets the executor run other tasks.
pub const YIELD_FRAMES: u32 = 32;
/// Close code and reason for a session whose token expired: the client must get a new token
/// and connect again (4000-4999 are the application's own codes).
pub const TOKEN_EXPIRED_CLOSE: (u16, &str) = (4001, "token expired");
/// How long a session waits for the client to acknowledge a close frame.
const LINGER: Duration = Duration::from_secs(2);

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed, or the connection failed: nothing more can be sent.
    Gone,
    /// The server closes with this code and reason; the client's rooms see `leave`.
    Close {
        code: u16,
        reason: &'static str,
        leave: LeaveReason,
    },
    /// The hub closed the queue after a close item (slow consumer, shutdown); the writer sent
    /// the close frame.
    ClosedByHub { code: u16, reason: &'static str },
    /// A write made no progress for `--write-timeout`: the client stopped reading.
    Stalled,
}

impl End {
    fn violation(code: u16, reason: &'static str) -> End {
        End::Close {
            code,
            reason,
            leave: LeaveReason::Disconnected,
        }
    }
}

/// Runs the session for an upgraded connection until it ends: `client`, whom the handshake
/// registered with the hub before the `101`, and `queue`, what the hub sends it. `expires`:
/// when its token expires (seconds since the Unix epoch). `peer` is only for logs.
///
/// (This function, the reader and the writer return an `async move` block rather than being
/// `async fn`s: an `async fn` copies its arguments into locals and keeps both in its state,
/// which lives in every connection's task for the connection's whole life.)
#[allow(clippy::manual_async_fn)] // on purpose: see the last paragraph above
pub(crate) fn run<'a, S>(
    chat: &'a Chat,
    (mut sink, mut stream): (WebSocketSender<S>, WebSocketReceiver<S>),
    progress: &'a Progress,
    (client, queue): (ClientId, Receiver<Outgoing>),
    expires: Option<u64>,
    peer: &'a str,
) -> impl Future<Output = ()> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + 'a,
{
    async move {
        let started = Instant::now();
        // The moment the token expires, on the session's clock; `None` also for an expiry too far
        // away for the clock (`exp` near u64::MAX: "never"), which must not overflow `Instant`.
        let expires = expires.and_then(|expires| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            started.checked_add(Duration::from_secs(expires.saturating_sub(now)))
        });
        crate::logger::connection(peer, "connected");

        let last_seen = AtomicU64::new(0);
        let reader = read_loop(chat, client, &mut stream, &last_seen, started);
        let writer = write_loop(
            chat, &mut sink, &queue, progress, &last_seen, started, expires,
        );
        let end = race(reader, writer).await;

        // Teardown runs once; boxed, its future takes no space in the long-lived part of the
        // session.
        Box::pin(finish(
            chat,
            client,
            end,
            (&mut sink, &mut stream),
            &queue,
            progress,
            peer,
        ))
        .await;
    }
}

/// Tells the hub the client is gone, sends the close frame the session decided on (after the
/// events queued before it), and lingers so the close reaches the client.
async fn finish<S>(
    chat: &Chat,
    client: ClientId,
    end: End,
    (sink, stream): (&mut WebSocketSender<S>, &mut WebSocketReceiver<S>),
    queue: &Receiver<Outgoing>,
    progress: &Progress,
    peer: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let leave = match &end {
        End::Close { leave, .. } => *leave,
        _ => LeaveReason::Disconnected,
    };
    let _ = chat
        .inbox
        .send(Command::Disconnect {
            client,
            reason: leave,
        })
        .await;

    match end {
        End::Gone => crate::logger::connection(peer, "disconnected"),
        End::ClosedByHub { code, reason } => {
            if code != crate::hub::SHUTDOWN_CLOSE.0 {
                crate::logger::refusal(peer, &format!("closed with {code} ({reason})"));
            }
            linger(stream).await;
        }
        End::Stalled => crate::logger::refusal(
            peer,
            &format!(
                "dropped: no write progress for {:?}",
                chat.config.write_timeout
            ),
        ),
        End::Close { code, reason, .. } => {
            crate::logger::refusal(peer, &format!("closing with {code} ({reason})"));
            let flushed = without_progress(
                chat.config.write_timeout,
                || progress.writes(),
                flush_then_close(chat, sink, queue, code, reason),
            );
            if let Some(Ok(sent)) = flushed.await {
                chat.metrics.close_sent(sent);
                linger(stream).await;
            }
        }
    }
}

/// Writes what the hub queued for the client up to its `Disconnect` (an error explaining the
/// close, say), then the close frame. The hub closes the queue when it handles the
/// `Disconnect`, which ends the drain. Returns the close code sent: the hub's own, if it was
/// closing the client at the same moment (shutdown), else `code`.
async fn flush_then_close<S>(
    chat: &Chat,
    sink: &mut WebSocketSender<S>,
    queue: &Receiver<Outgoing>,
    code: u16,
    reason: &'static str,
) -> Result<u16, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch = VecDeque::new();
    let (mut code, mut reason) = (code, reason);
    while queue.recv_batch(&mut batch).await {
        for item in batch.drain(..) {
            match to_message(item, &chat.metrics) {
                Ok((message, len)) => {
                    sink.feed(message).await?;
                    queue.release(len);
                }
                Err(close) => (code, reason) = close,
            }
        }
    }
    sink.send(close(code, reason)).await?;
    Ok(code)
}

/// The frame for an item of the client's queue and its length (counted in `bytes_out`), or the
/// close code and reason the hub asked for.
fn to_message(item: Outgoing, metrics: &Metrics) -> Result<(Message, usize), (u16, &'static str)> {
    let (message, len) = match item {
        Outgoing::Event(frame) => {
            let len = frame.len();
            (Message::Text(frame), len)
        }
        Outgoing::Binary(bytes) => {
            let len = bytes.len();
            (Message::Binary(bytes), len)
        }
        Outgoing::Close(code, reason) => return Err((code, reason)),
    };
    Metrics::add(&metrics.bytes_out, len as u64);
    Ok((message, len))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

/// Reads (and drops) what the client still sends until it closes its side, for at most
/// [`LINGER`]. Closing the socket while unread data sits in it would make the kernel reset the
/// connection, and a reset can destroy the close frame before the client reads it.
async fn linger<S>(stream: &mut WebSocketReceiver<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = within(LINGER, async { while stream.next().await.is_some() {} }).await;
}

/// What the reader does with one frame: the command for the hub, `None` for a frame that needs
/// none (a ping, a pong, a refused frame in raw mode), or the end of the session. A plain
/// function, so that its temporaries are not kept in the reader's state.
fn command_for(
    chat: &Chat,
    client: ClientId,
    limit: &mut RateLimit,
    now: Instant,
    frame: Result<Message, WsError>,
) -> Result<Option<Command>, End> {
    let config = &chat.config;
    let raw = config.protocol == Protocol::Raw;
    let data = match frame {
        Ok(Message::Text(text)) => Outgoing::Event(text),
        Ok(Message::Binary(bytes)) if raw => Outgoing::Binary(bytes),
        Ok(Message::Binary(_)) => {
            return Err(End::violation(
                1003,
                "binary frames are not supported; send text",
            ));
        }
        // Pings are answered by tungstenite, so each costs a write: they count against the
        // rate limit like messages, and a client that floods them is closed like one that
        // floods messages (without an `error` per ping, which would cost more). Pongs prove
        // life, and count too.
        Ok(Message::Ping(_) | Message::Pong(_)) => {
            limit.allow(now, &chat.metrics)?;
            return Ok(None);
        }
        // The client's close (answered by tungstenite) ends the stream next.
        Ok(_) => return Ok(None),
        Err(WsError::Capacity(_)) => return Err(End::violation(1009, "message too big")),
        Err(WsError::Utf8(_)) => return Err(End::violation(1007, "text is not valid UTF-8")),
        Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
            return Err(End::Gone);
        }
        Err(WsError::Protocol(_)) => return Err(End::violation(1002, "protocol error")),
        Err(_) => return Err(End::Gone),
    };
    Metrics::add(&chat.metrics.bytes_in, data.bytes() as u64);

    Ok(Some(match (limit.allow(now, &chat.metrics)?, data) {
        // Raw mode sends nothing but data: a refused frame is dropped unanswered.
        (false, _) if raw => return Ok(None),
        (false, _) => {
            let error = Error::new(
                ErrorCode::RateLimited,
                format!(
                    "slow down: at most {} frames per second, pings and pongs included (bursts \
                     of {}); this one was dropped",
                    config.rate_limit, config.rate_burst
                ),
            );
            Command::Refuse { client, error }
        }
        (true, item) if raw => Command::Publish { client, item },
        (true, Outgoing::Event(text)) => match hub::parse(&text, config.max_message_bytes) {
            Ok(request) => Command::Request { client, request },
            Err(error) => Command::Refuse { client, error },
        },
        (true, _) => unreachable!("v1 data frames are text"),
    }))
}

#[allow(clippy::manual_async_fn)] // see `session::run`: no copy of the arguments
fn read_loop<S>(
    chat: &Chat,
    client: ClientId,
    stream: &mut WebSocketReceiver<S>,
    last_seen: &AtomicU64,
    started: Instant,
) -> impl Future<Output = End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let config = &chat.config;
        let mut limit = RateLimit {
            bucket: TokenBucket::new(config.rate_limit, config.rate_burst),
            refused: 0,
            window_start: started,
        };
        let mut since_yield = 0;
        loop {
            // `let else` rather than `while let`: the frame's temporary then ends with this
            // statement instead of being kept in the task through the `send` below.
            let Some(frame) = stream.next().await else {
                break;
            };
            since_yield += 1;
            if since_yield >= YIELD_FRAMES {
                since_yield = 0;
                futures_lite::future::yield_now().await;
            }
            let now = Instant::now();
            last_seen.store(now.duration_since(started).as_millis() as u64, Relaxed);
            let command = match command_for(chat, client, &mut limit, now, frame) {
                Ok(Some(command)) => command,
                Ok(None) => continue,
                Err(end) => return end,
            };
            if chat.inbox.send(command).await.is_err() {
                return End::Gone;
            }
        }
        End::Gone
    }
}

#[allow(clippy::manual_async_fn)] // see `session::run`: no copy of the arguments
fn write_loop<S>(
    chat: &Chat,
    sink: &mut WebSocketSender<S>,
    queue: &Receiver<Outgoing>,
    progress: &Progress,
    last_seen: &AtomicU64,
    started: Instant,
    expires: Option<Instant>,
) -> impl Future<Output = End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let config = &chat.config;
        let mut next_ping = started + config.ping_interval;
        // One timer per session, re-armed only when it fires: for the next ping, the moment the
        // client would have been silent too long, or the moment its token expires, whichever
        // comes first.
        let mut timer = Timer::at({
            let first = next_ping.min(started + config.idle_timeout);
            expires.map_or(first, |e| e.min(first))
        });
        // Swapped with the queue's buffer on every batch; both keep their capacity.
        let mut batch = VecDeque::new();
        // Holds back the frames of a client that is receiving a burst (see below).
        let mut hold = Timer::never();
        let mut last_write = started;
        // Bytes of the batch last written, released from the queue's byte bound with the next.
        let mut written = 0;
        loop {
            let mut ping = false;
            // The timer is polled first. Were the queue first, a queue that is never empty when the
            // writer comes back for more (a busy room, a client that reads just fast enough) would
            // keep the timer from ever being polled: no pings and no idle check for as long as
            // the room is busy (`a_silent_client_in_a_busy_room_is_still_pinged_and_timed_out` in
            // tests/limits.rs). A timer that is not due costs a clock read to poll, and one that
            // fires is re-armed for a later instant below, so it cannot starve the queue in turn.
            let fired = async {
                (&mut timer).await;
                None
            };
            // The previous batch's bytes leave the byte bound as the next batch is taken: inside
            // the future, so that when the timer wins (and this is never polled) they stay in
            // `written` for the next round.
            let received = async {
                let release = std::mem::take(&mut written);
                Some(queue.release_and_recv_batch(release, &mut batch).await)
            };
            match fired.or(received).await {
                Some(true) => {
                    // A client whose last write was less than `coalesce / 2` ago is receiving a
                    // burst: its frames wait until `coalesce` after that write and then go out
                    // together. Every write is a system call that costs more than the frames in
                    // it; sparse traffic is never held.
                    let coalesce = config.coalesce;
                    if !coalesce.is_zero() && Instant::now() < last_write + coalesce / 2 {
                        hold.set_at(last_write + coalesce);
                        (&mut hold).await;
                        queue.append_to(&mut batch);
                    }
                }
                Some(false) => return End::Gone, // the hub dropped us after our own Disconnect
                None => {
                    let now = Instant::now();
                    let silent_until = started
                        + Duration::from_millis(last_seen.load(Relaxed))
                        + config.idle_timeout;
                    if now >= silent_until {
                        return End::Close {
                            code: 1000,
                            reason: "idle timeout",
                            leave: LeaveReason::Timeout,
                        };
                    }
                    if let Some(expires) = expires
                        && now >= expires
                    {
                        let (code, reason) = TOKEN_EXPIRED_CLOSE;
                        return End::Close {
                            code,
                            reason,
                            leave: LeaveReason::Disconnected,
                        };
                    }
                    ping = now >= next_ping;
                    if ping {
                        next_ping = now + config.ping_interval;
                    }
                    let next = next_ping.min(silent_until);
                    timer.set_at(expires.map_or(next, |e| e.min(next)));
                    if !ping {
                        continue;
                    }
                }
            }

            // A ping alone is not a burst: only frames start the coalescing window.
            if !config.coalesce.is_zero() && !batch.is_empty() {
                last_write = Instant::now();
            }
            // Feed everything that was queued (and the ping, if one is due), then flush once: one
            // write for the whole batch. The batch's bytes stay counted against the queue's byte
            // bound until they are written. Pings and frames go through this one future, so the
            // connection's task has room for one write in flight (the hub's close frame, once
            // per session, is sent from a boxed future below).
            let write = async {
                if ping {
                    sink.feed(Message::Ping(Default::default())).await?;
                }
                // `to_message` outside the `await`s: only the `Feed` future, which holds the
                // message, is kept in the task while the write waits.
                while let Some(item) = batch.pop_front() {
                    let message = match to_message(item, &chat.metrics) {
                        Ok((message, len)) => {
                            written += len;
                            message
                        }
                        // Sent below, after what was fed before it.
                        Err(close) => return Ok::<_, WsError>(Some(close)),
                    };
                    sink.feed(message).await?;
                }
                sink.flush().await?;
                Ok(None)
            };

            let (code, reason) =
                match without_progress(config.write_timeout, || progress.writes(), write).await {
                    Some(Ok(None)) => continue,
                    Some(Ok(Some(close))) => close,
                    Some(Err(_)) => return End::Gone,
                    None => return End::Stalled,
                };
            // The hub closed the client. Once per session, so boxed: its future takes no room in
            // the task for the rest of the session's life.
            let send = sink.send(close(code, reason));
            return match Box::pin(without_progress(
                config.write_timeout,
                || progress.writes(),
                send,
            ))
            .await
            {
                Some(Ok(())) => {
                    chat.metrics.close_sent(code);
                    End::ClosedByHub { code, reason }
                }
                Some(Err(_)) => End::Gone,
                None => End::Stalled,
            };
        }
    }
}

/// The rate limit on a client's frames: the bucket, and the refusals counted in the current
/// window that end a flood.
struct RateLimit {
    bucket: TokenBucket,
    refused: u32,
    window_start: Instant,
}

impl RateLimit {
    /// Takes a token for a frame: `Ok(true)` if it may be handled, `Ok(false)` if it is
    /// refused, `Err` with the 1008 close at [`FLOOD_REFUSALS`] refusals within
    /// [`FLOOD_WINDOW`].
    fn allow(&mut self, now: Instant, metrics: &Metrics) -> Result<bool, End> {
        if self.bucket.take(now) {
            return Ok(true);
        }
        Metrics::add(&metrics.rate_limited, 1);
        if now.duration_since(self.window_start) > FLOOD_WINDOW {
            (self.window_start, self.refused) = (now, 0);
        }
        self.refused += 1;
        if self.refused >= FLOOD_REFUSALS {
            return Err(End::violation(1008, "rate limit exceeded"));
        }
        Ok(false)
    }
}
