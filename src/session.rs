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
//! The **writer** drains the client's own bounded queue, which only the hub fills. It takes
//! every event already queued and writes them with vectored writes straight from the hub's
//! frames ([`crate::wire`]), so a burst costs one write, then releases the batch's bytes from
//! the queue's byte bound. It also writes the frames tungstenite answers with (pongs, the
//! answer to a close), sends pings, notices a silent client, and gives up on a client whose
//! socket accepts no byte for `--write-timeout`.
//!
//! Both run inside one task ([`race`]); whichever ends first ends the session. The session
//! then tells the hub the client is gone, sends a close frame if it has one to send, and
//! lingers briefly so that frame reaches the client before the socket closes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::VecDeque;

use async_tungstenite::tungstenite::error::ProtocolError;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::{AsyncRead, AsyncWrite, StreamExt};

use crate::Chat;
use crate::bucket::TokenBucket;
use crate::config::Protocol;
use crate::deadline::{Timer, within, without_progress};
use crate::hub::{ClientId, Command, Outgoing};
use crate::meter::Progress;
use crate::metrics::Metrics;
use crate::protocol::{Error, ErrorCode, LeaveReason, Wire};
use crate::queue::Receiver;
use crate::queue::Weigh;
use crate::race::race;
use crate::wire::{Messages, Socket};

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
    socket: Box<Socket<S>>,
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
        // What the writer took from the queue and has not written yet. Here rather than in the
        // writer, so that a frame the socket took only part of can be finished after the
        // writer's end (see `flush_then_close`).
        let mut batch = VecDeque::new();
        let mut messages = socket.messages();
        let reader = read_loop(chat, client, &mut messages, &last_seen, started);
        let deadlines = Deadlines::new(&chat.config, started, &last_seen, expires);
        let writer = write_loop(chat, &socket, &mut batch, &queue, progress, deadlines);
        let end = race(reader, writer).await;

        // Teardown runs once; boxed, its future takes no space in the long-lived part of the
        // session.
        Box::pin(finish(
            chat,
            client,
            end,
            (&socket, &mut batch),
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
    (socket, batch): (&Socket<S>, &mut VecDeque<Outgoing>),
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

    let timeout = chat.config.write_timeout;
    match end {
        End::Gone => {
            // tungstenite's answer to the client's close, if that is how it ended.
            let _ = without_progress(timeout, || progress.writes(), socket.write_parked()).await;
            crate::logger::connection(peer, "disconnected");
        }
        End::ClosedByHub { code, reason } => {
            if code != crate::hub::SHUTDOWN_CLOSE.0 {
                crate::logger::refusal(peer, &format!("closed with {code} ({reason})"));
            }
            linger(socket).await;
        }
        End::Stalled => {
            crate::logger::refusal(peer, &format!("dropped: no write progress for {timeout:?}"))
        }
        End::Close { code, reason, .. } => {
            crate::logger::refusal(peer, &format!("closing with {code} ({reason})"));
            let flushed = without_progress(
                timeout,
                || progress.writes(),
                flush_then_close(chat, socket, batch, queue, code, reason),
            );
            if let Some(Ok(sent)) = flushed.await {
                chat.metrics.close_sent(sent);
                linger(socket).await;
            }
        }
    }
}

/// Writes what the writer had not written yet and what the hub queued for the client up to its
/// `Disconnect` (an error explaining the close, say), then the close frame. The hub closes the
/// queue when it handles the `Disconnect`, which ends the drain. Returns the close code sent:
/// the hub's own, if it was closing the client at the same moment (shutdown), else `code`.
async fn flush_then_close<S>(
    chat: &Chat,
    socket: &Socket<S>,
    batch: &mut VecDeque<Outgoing>,
    queue: &Receiver<Outgoing>,
    code: u16,
    reason: &'static str,
) -> Result<u16, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut code, mut reason) = (code, reason);
    let mut written = 0;
    loop {
        let close =
            std::future::poll_fn(|cx| socket.poll_write_frames(cx, batch, &mut written)).await?;
        Metrics::add(&chat.metrics.bytes_out, written as u64);
        queue.release(std::mem::take(&mut written));
        if let Some(close) = close {
            (code, reason) = close;
            batch.pop_front();
            continue;
        }
        if !queue.recv_batch(batch).await {
            break;
        }
    }
    socket.close(code, reason).await?;
    Ok(code)
}

/// Reads (and drops) what the client still sends until it closes its side, for at most
/// [`LINGER`]. Closing the socket while unread data sits in it would make the kernel reset the
/// connection, and a reset can destroy the close frame before the client reads it.
async fn linger<S>(socket: &Socket<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = socket.messages();
    let _ = within(LINGER, async { while messages.next().await.is_some() {} }).await;
}

/// The reader: each frame becomes at most one command, awaited into the hub's bounded inbox.
#[allow(clippy::manual_async_fn)] // see `session::run`: no copy of the arguments
fn read_loop<S>(
    chat: &Chat,
    client: ClientId,
    stream: &mut Messages<'_, S>,
    last_seen: &AtomicU64,
    started: Instant,
) -> impl Future<Output = End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let mut limit = RateLimit {
            bucket: TokenBucket::new(chat.config.rate_limit, chat.config.rate_burst),
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
            // The command for this frame, in a block of its own: the frame and what is made
            // from it end here, so none of it is kept in the reader's state across the send.
            let command = {
                let frame = frame; // moved in whole: its storage ends with the block
                let config = &chat.config;
                let raw = config.protocol == Protocol::Raw;
                let data = match frame {
                    Ok(Message::Text(text)) => Outgoing::Event(text),
                    Ok(Message::Binary(bytes)) if raw => Outgoing::Binary(bytes),
                    // Pings are answered by tungstenite, so each costs a write: they count
                    // against the rate limit like messages, and a client that floods them is
                    // closed like one that floods messages (without an `error` per ping, which
                    // would cost more). Pongs prove life, and count too.
                    Ok(Message::Ping(_) | Message::Pong(_)) => {
                        match limit.allow(now, &chat.metrics) {
                            Ok(_) => continue,
                            Err(end) => return end,
                        }
                    }
                    // The client's close (answered by tungstenite) ends the stream next.
                    Ok(Message::Close(_) | Message::Frame(_)) => continue,
                    Ok(Message::Binary(_)) | Err(_) => return refused(frame),
                };
                Metrics::add(&chat.metrics.bytes_in, data.bytes() as u64);
                match (limit.allow(now, &chat.metrics), data) {
                    (Err(end), _) => return end,
                    // Raw mode sends nothing but data: a refused frame is dropped unanswered.
                    (Ok(false), _) if raw => continue,
                    (Ok(false), _) => rate_limited(client, config),
                    (Ok(true), item) if raw => Command::Publish {
                        client,
                        item: item.unshared(),
                    },
                    // Its JSON shape, read here beside the other readers; its unit checks it.
                    (Ok(true), Outgoing::Event(text)) => match Wire::read(&text).map(Box::new) {
                        Ok(wire) => Command::Request { client, wire },
                        Err(error) => Command::Refuse { client, error },
                    },
                    (Ok(true), _) => unreachable!("v1 data frames are text"),
                }
            };
            if chat.inbox.send(command).await.is_err() {
                return End::Gone;
            }
        }
        End::Gone
    }
}

/// How the session ends for a frame the reader cannot take: a binary frame in protocol v1, or
/// a frame tungstenite refused.
fn refused(frame: Result<Message, WsError>) -> End {
    match frame {
        Ok(_) => End::violation(1003, "binary frames are not supported; send text"),
        Err(WsError::Capacity(_)) => End::violation(1009, "message too big"),
        Err(WsError::Utf8(_)) => End::violation(1007, "text is not valid UTF-8"),
        Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => End::Gone,
        Err(WsError::Protocol(_)) => End::violation(1002, "protocol error"),
        Err(_) => End::Gone,
    }
}

/// The `error` a v1 client gets for a frame over its rate limit; the frame is dropped.
fn rate_limited(client: ClientId, config: &crate::config::Config) -> Command {
    let error = Error::new(
        ErrorCode::RateLimited,
        format!(
            "slow down: at most {} frames per second, pings and pongs included (bursts of {}); \
             this one was dropped",
            config.rate_limit, config.rate_burst
        ),
    );
    Command::Refuse { client, error }
}

/// What woke the writer.
enum Wake {
    /// The timer: a ping may be due, or the idle or token deadline.
    Timer,
    /// Items were taken from the queue into the batch.
    Batch,
    /// tungstenite parked a frame (a pong, the answer to a close) for the writer to write.
    Parked,
    /// The hub closed the queue and it is drained.
    Closed,
}

#[allow(clippy::manual_async_fn)] // see `session::run`: no copy of the arguments
fn write_loop<'a, S>(
    chat: &'a Chat,
    socket: &'a Socket<S>,
    batch: &'a mut VecDeque<Outgoing>,
    queue: &'a Receiver<Outgoing>,
    progress: &'a Progress,
    mut deadlines: Deadlines<'a>,
) -> impl Future<Output = End> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let config = &chat.config;
        // `--coalesce` (off by default): boxed, so that not every connection's task carries it.
        let mut hold: Option<Box<Hold>> = None;
        // Payload bytes written and not yet released from the queue's byte bound: released as
        // the next batch is taken, under the same lock.
        let mut written = 0;
        // Not polling the timer on every other busy pass: see `Deadlines::fired`. (A local, not
        // a field of `deadlines`: there it would cost the task 8 bytes of padding.)
        let mut skip_timer = false;
        loop {
            let wake = std::future::poll_fn(|cx| {
                if !skip_timer && deadlines.fired(cx) {
                    return Poll::Ready(Wake::Timer);
                }
                match queue.poll_release_and_recv_batch(cx, &mut written, batch) {
                    Poll::Ready(true) => {
                        skip_timer = !skip_timer;
                        Poll::Ready(Wake::Batch)
                    }
                    Poll::Ready(false) => Poll::Ready(Wake::Closed),
                    Poll::Pending if socket.has_parked() => Poll::Ready(Wake::Parked),
                    Poll::Pending => {
                        skip_timer = false;
                        Poll::Pending
                    }
                }
            })
            .await;
            match wake {
                // With `--coalesce`, a client receiving a burst has its frames held back.
                Wake::Batch if !config.coalesce.is_zero() => {
                    let hold = hold.get_or_insert_with(|| Box::new(Hold::new(deadlines.started)));
                    if hold.burst(config.coalesce) {
                        (&mut hold.timer).await;
                        queue.append_to(batch);
                    }
                    hold.last_write = Instant::now();
                }
                Wake::Batch | Wake::Parked => {}
                Wake::Closed => return End::Gone, // the hub dropped us after our own Disconnect
                Wake::Timer => match deadlines.check(config) {
                    Err(end) => return end,
                    Ok(false) => continue,
                    Ok(true) => socket.ping(),
                },
            }

            // Everything taken (and the ping, if one is due) in vectored writes, straight from
            // the hub's frames (`wire`). The batch's bytes stay counted against the queue's byte
            // bound until they are written.
            let before = written;
            let write =
                std::future::poll_fn(|cx| socket.poll_write_frames(cx, batch, &mut written));
            let outcome = without_progress(config.write_timeout, || progress.writes(), write).await;
            Metrics::add(&chat.metrics.bytes_out, (written - before) as u64);
            let (code, reason) = match outcome {
                Some(Ok(None)) => continue,
                Some(Ok(Some(close))) => close,
                Some(Err(_)) => return End::Gone,
                None => return End::Stalled,
            };
            // The hub closed the client. Once per session, so boxed: its future takes no room in
            // the task for the rest of the session's life.
            return Box::pin(close_for_hub(chat, socket, progress, code, reason)).await;
        }
    }
}

/// Sends the close frame the hub asked for (after everything queued before it was written).
async fn close_for_hub<S>(
    chat: &Chat,
    socket: &Socket<S>,
    progress: &Progress,
    code: u16,
    reason: &'static str,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let send = socket.close(code, reason);
    match without_progress(chat.config.write_timeout, || progress.writes(), send).await {
        Some(Ok(())) => {
            chat.metrics.close_sent(code);
            End::ClosedByHub { code, reason }
        }
        Some(Err(_)) => End::Gone,
        None => End::Stalled,
    }
}

/// `--coalesce`: the timer that holds a burst's frames back, and when the last batch was
/// written.
struct Hold {
    timer: Timer,
    last_write: Instant,
}

impl Hold {
    fn new(started: Instant) -> Hold {
        Hold {
            timer: Timer::never(),
            last_write: started,
        }
    }

    /// Whether the batch just taken waits: a client whose last write was less than
    /// `coalesce / 2` ago is receiving a burst, so its frames wait (on `timer`, armed here)
    /// until `coalesce` after that write and then go out together, with whatever was queued
    /// meanwhile. Every write is a system call that costs more than the frames in it; sparse
    /// traffic is never held.
    fn burst(&mut self, coalesce: Duration) -> bool {
        let burst = Instant::now() < self.last_write + coalesce / 2;
        if burst {
            self.timer.set_at(self.last_write + coalesce);
        }
        burst
    }
}

/// The writer's deadlines: the next ping, the moment the client would have been silent too
/// long, and the moment its token expires. One timer per session, re-armed only when it fires,
/// for whichever comes first.
struct Deadlines<'a> {
    timer: Timer,
    next_ping: Instant,
    started: Instant,
    last_seen: &'a AtomicU64,
    expires: Option<Instant>,
}

impl<'a> Deadlines<'a> {
    fn new(
        config: &crate::config::Config,
        started: Instant,
        last_seen: &'a AtomicU64,
        expires: Option<Instant>,
    ) -> Self {
        let next_ping = started + config.ping_interval;
        let first = next_ping.min(started + config.idle_timeout);
        Deadlines {
            timer: Timer::at(expires.map_or(first, |e| e.min(first))),
            next_ping,
            started,
            last_seen,
            expires,
        }
    }

    /// Whether the timer fired. The writer polls it on the first pass after every wait, and on
    /// at least every other pass while the queue keeps it busy. Were it never polled while the
    /// queue is never empty (a busy room, a client that reads just fast enough), there would be
    /// no pings and no idle check for as long as the room is busy
    /// (`a_silent_client_in_a_busy_room_is_still_pinged_and_timed_out` in tests/limits.rs);
    /// polled on every pass, it cost a clock read and a waker comparison twice per delivery
    /// (once for the batch, once more on the pass that finds the queue empty).
    fn fired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        Pin::new(&mut self.timer).poll(cx).is_ready()
    }

    /// Ends the session for a client silent past `--idle-timeout` or whose token expired;
    /// otherwise re-arms the timer for the next deadline and returns whether a ping is due.
    fn check(&mut self, config: &crate::config::Config) -> Result<bool, End> {
        let now = Instant::now();
        let silent_until = self.started
            + Duration::from_millis(self.last_seen.load(Relaxed))
            + config.idle_timeout;
        if now >= silent_until {
            return Err(End::Close {
                code: 1000,
                reason: "idle timeout",
                leave: LeaveReason::Timeout,
            });
        }
        if let Some(expires) = self.expires
            && now >= expires
        {
            let (code, reason) = TOKEN_EXPIRED_CLOSE;
            return Err(End::Close {
                code,
                reason,
                leave: LeaveReason::Disconnected,
            });
        }
        let ping = now >= self.next_ping;
        if ping {
            self.next_ping = now + config.ping_interval;
        }
        let next = self.next_ping.min(silent_until);
        self.timer
            .set_at(self.expires.map_or(next, |e| e.min(next)));
        Ok(ping)
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
