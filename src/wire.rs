//! A session's WebSocket on the wire: the writer frames what the hub queued itself and writes
//! it straight from the shared payloads; tungstenite reads, and its own few writes wait in a
//! [`Gate`] for the writer.
//!
//! Why not let tungstenite write everything, as the session first did? Each frame fed to its
//! sink was copied, header and payload, into the connection's write buffer, which then kept
//! the capacity of the largest batch it ever held (the `welcome` and `room` events written
//! together at connect: 1.3 KB per idle connection), and the copy and the sink's layers cost
//! more than a quarter of the server's instructions per delivery. Here the writer formats
//! each frame's 2- to 10-byte header on the stack and hands header and payload to one
//! vectored write ([`Socket::poll_write_frames`]): the payload goes from the hub's refcounted
//! frame to the socket without a copy, and nothing is kept per connection but the position in
//! a frame the socket took only part of.
//!
//! tungstenite still does everything on the reading side, and the frames it writes itself:
//! the pong for a ping, the close that answers the client's, and our own close (it keeps the
//! closing handshake's state). Those writes must not land inside one of the writer's frames
//! when a socket took only part of it. So tungstenite does not write to the socket at all: its
//! stream is a [`Gate`], which parks what it writes, and the writer writes the parked bytes
//! between two frames. One writer per socket also means one waker waiting for it to become
//! writable (two, each replacing the other's registration in `async-io`, would wake each
//! other in turn for as long as the socket stayed full).

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::{AsyncRead, AsyncWrite, Stream};
use futures_util::Sink;

use crate::hub::Outgoing;

/// Bytes of tungstenite's own frames the gate parks before it makes tungstenite wait: more
/// than any close and pong together, few enough that a flood of pings to a client that does
/// not read cannot grow it (tungstenite then keeps only the latest pong).
const PARK_LIMIT: usize = 1024;
/// Frames in one vectored write (two slices each: header and payload), at most: a client that
/// has fallen behind gets up to this many per system call (64 of 64-byte messages are about
/// the 4 KiB tungstenite's buffer used to collect before a write). The slices and headers are
/// on the stack and set up for every write, so a write of one or two frames uses a smaller
/// set (see `Gate::poll_write_some`).
const FRAMES_PER_WRITE: usize = 64;
/// Slices in one vectored write: the parked bytes, the ping, then the frames.
const SLICES: usize = 2 * FRAMES_PER_WRITE + 2;
/// An empty ping, as the writer sends it.
const PING: [u8; 2] = [0x89, 0x00];
/// Bytes the gate reads beyond what tungstenite asks for, at most. tungstenite's read buffer
/// is small (`upgrade::READ_BUFFER`: every connection keeps one), and it reads at most its
/// size at a time; the gate's read-ahead lets one system call take a longer frame, or many
/// frames sent together, while an idle connection keeps nothing for it.
const READ_AHEAD: usize = 4096;

thread_local! {
    /// Where the read-ahead lands, one per thread (as uSockets reads every socket into one
    /// buffer per thread): on the stack it would be zeroed on every read, a cost as large as
    /// the read's own work in user space.
    static AHEAD: std::cell::RefCell<[u8; READ_AHEAD]> =
        const { std::cell::RefCell::new([0; READ_AHEAD]) };
}

/// The stream tungstenite reads and writes: reads go to the socket; writes are parked until
/// the session's writer writes them (see the module documentation).
pub(crate) struct Gate<S> {
    inner: S,
    /// tungstenite's frames, whole, in order, waiting for the writer. Empty (and unallocated)
    /// nearly always.
    parked: Vec<u8>,
    /// tungstenite parked a close frame: nothing may follow it.
    closed: bool,
    /// Where the writer is in its frames.
    cursor: Cursor,
    /// Bytes read ahead and not yet handed to tungstenite, from the offset on; `None` (and
    /// nothing allocated) nearly always.
    unread: Option<Box<(usize, Vec<u8>)>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    /// tungstenite's reads: from what was read ahead, else one vectored read into `buf` and
    /// up to [`READ_AHEAD`] bytes more, whose surplus is kept until tungstenite asks again.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(unread) = &mut this.unread {
            let (at, bytes) = &mut **unread;
            let n = buf.len().min(bytes.len() - *at);
            buf[..n].copy_from_slice(&bytes[*at..*at + n]);
            *at += n;
            if *at == bytes.len() {
                this.unread = None;
            }
            return Poll::Ready(Ok(n));
        }
        let wanted = buf.len();
        AHEAD.with_borrow_mut(|ahead| {
            let mut bufs = [IoSliceMut::new(buf), IoSliceMut::new(ahead)];
            let n = ready!(Pin::new(&mut this.inner).poll_read_vectored(cx, &mut bufs))?;
            if n > wanted {
                this.unread = Some(Box::new((0, ahead[..n - wanted].to_vec())));
            }
            Poll::Ready(Ok(n.min(wanted)))
        })
    }
}

impl<S: Unpin> AsyncWrite for Gate<S> {
    /// tungstenite's writes: always of whole frames, since the gate takes all or nothing.
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if !this.parked.is_empty() && this.parked.len() + buf.len() > PARK_LIMIT {
            // tungstenite keeps the frame and tries again on the reader's next poll.
            return Poll::Pending;
        }
        this.closed = contains_close(buf);
        this.parked.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Flushed by the writer, which flushes the socket after every write.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Whether `frames` (whole frames as tungstenite writes them: unmasked) hold a close frame.
fn contains_close(mut frames: &[u8]) -> bool {
    while let [first, second, rest @ ..] = frames {
        if first & 0x0f == 0x8 {
            return true;
        }
        let (extra, len) = match second & 0x7f {
            126 if rest.len() >= 2 => (2usize, u16::from_be_bytes([rest[0], rest[1]]) as usize),
            127 if rest.len() >= 8 => {
                let len = u64::from_be_bytes(rest[..8].try_into().expect("eight bytes"));
                (8, usize::try_from(len).unwrap_or(usize::MAX))
            }
            126 | 127 => return false,
            len => (0, usize::from(len)),
        };
        frames = rest.get(extra.saturating_add(len)..).unwrap_or_default();
    }
    false
}

/// A session's WebSocket, shared by its reader and its writer. Both run in one task, so the
/// lock is never contended; it is there because the task must be `Send`. Boxed by
/// [`accept`], so that moving it into the session moves a pointer.
pub(crate) struct Socket<S> {
    ws: Mutex<WebSocketStream<Gate<S>>>,
    /// Set when tungstenite parked bytes while the reader read: the writer checks this flag on
    /// every poll, which costs less than taking the lock to look.
    parked: AtomicBool,
}

/// The WebSocket over an upgraded `stream`, of which tungstenite has already read `leftover`.
pub(crate) async fn accept<S>(
    stream: S,
    leftover: Vec<u8>,
    config: WebSocketConfig,
) -> Box<Socket<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let gate = Gate {
        inner: stream,
        parked: Vec::new(),
        closed: false,
        cursor: Cursor::default(),
        unread: None,
    };
    let ws = WebSocketStream::from_partially_read(gate, leftover, Role::Server, Some(config)).await;
    Box::new(Socket {
        ws: Mutex::new(ws),
        parked: AtomicBool::new(false),
    })
}

impl<S> Socket<S> {
    fn lock(&self) -> MutexGuard<'_, WebSocketStream<Gate<S>>> {
        // A panic cannot leave the stream half-updated in a way a later poll would trip on
        // any worse than the panic itself; the session ends either way.
        self.ws.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The messages tungstenite reads, for the session's reader.
    pub(crate) fn messages(&self) -> Messages<'_, S> {
        Messages(self)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// Writes what is parked, then the ping if one is due ([`Socket::ping`]) and the frames at
    /// the front of `batch`, with vectored writes, until everything is written or the front
    /// item is a close ([`Outgoing::Close`]: returned, not taken), then flushes the socket.
    /// Every frame written completely is popped and its payload's length added to `written`.
    /// A frame the socket took only part of stays in front, and the socket remembers where it
    /// was cut: `batch` must be the same queue on the next call.
    pub(crate) fn poll_write_frames(
        &self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Outgoing>,
        written: &mut usize,
    ) -> Poll<io::Result<Option<(u16, &'static str)>>> {
        let mut ws = self.lock();
        let gate = ws.get_mut();
        loop {
            let between_frames = gate.cursor.offset == 0;
            if gate.closed && between_frames {
                // The client closed and tungstenite answered: no frame may follow the answer.
                ready!(gate.poll_write_parked(cx))?;
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let frame_first = matches!(
                batch.front(),
                Some(Outgoing::Event(_) | Outgoing::Binary(_))
            );
            let parked_first = between_frames && !gate.parked.is_empty();
            if !frame_first && !gate.cursor.ping && !parked_first {
                // All written, what tungstenite parked too (a cut frame is a frame first).
                self.parked.store(false, Relaxed);
                break;
            }
            // One vectored write of what goes first. Its slices are on the stack and set up for
            // every write: for the usual one or two frames, a few (see `Gate::poll_write_some`).
            let n = if batch.len() <= 2 {
                ready!(gate.poll_write_some::<2, 6>(cx, batch, parked_first))?
            } else {
                ready!(gate.poll_write_some::<FRAMES_PER_WRITE, SLICES>(cx, batch, parked_first))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let parked = if parked_first {
                gate.forget_parked(n)
            } else {
                0
            };
            gate.cursor.advance(n - parked, batch, written);
        }
        ready!(Pin::new(&mut gate.inner).poll_flush(cx))?;
        Poll::Ready(Ok(match batch.front() {
            Some(Outgoing::Close(code, reason)) => Some((*code, reason)),
            _ => None,
        }))
    }

    /// True when tungstenite parked frames for the writer to write (a pong, the answer to the
    /// client's close): [`Socket::poll_write_frames`] writes them.
    pub(crate) fn has_parked(&self) -> bool {
        self.parked.load(Relaxed)
    }

    /// Puts a ping before the next frames.
    pub(crate) fn ping(&self) {
        self.lock().get_mut().cursor.ping = true;
    }

    /// Writes what tungstenite parked, unless a frame was cut (then nothing may be written
    /// before its rest, which only the writer has): for the end of a session, whose last
    /// frame may be tungstenite's answer to the client's close.
    pub(crate) async fn write_parked(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut ws = self.lock();
            let gate = ws.get_mut();
            if gate.cursor.offset > 0 {
                return Poll::Ready(Ok(()));
            }
            ready!(gate.poll_write_parked(cx))?;
            Pin::new(&mut gate.inner).poll_flush(cx)
        })
        .await
    }

    /// Sends a close frame through tungstenite (which then knows the closing handshake has
    /// begun) and writes it. Only once `batch` is written up to its close, if it has one.
    pub(crate) async fn close(&self, code: u16, reason: &'static str) -> Result<(), WsError> {
        let mut close = Some(Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        })));
        std::future::poll_fn(|cx| {
            let mut ws = self.lock();
            // Room for the close first: the gate would make tungstenite wait for it, and only
            // this poll writes what is parked.
            ready!(ws.get_mut().poll_write_parked(cx))?;
            if close.is_some() {
                ready!(Pin::new(&mut *ws).poll_ready(cx))?;
                if let Some(message) = close.take() {
                    Pin::new(&mut *ws).start_send(message)?;
                }
            }
            // tungstenite's flush parks the frame; the gate writes it.
            ready!(Pin::new(&mut *ws).poll_flush(cx))?;
            let gate = ws.get_mut();
            ready!(gate.poll_write_parked(cx))?;
            Pin::new(&mut gate.inner)
                .poll_flush(cx)
                .map_err(WsError::Io)
        })
        .await
    }
}

impl<S: AsyncWrite + Unpin> Gate<S> {
    /// Writes the parked bytes until none are left.
    fn poll_write_parked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.parked.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.parked))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.forget_parked(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Forgets the parked bytes the socket took, the first `n` or all if fewer; returns how
    /// many.
    fn forget_parked(&mut self, n: usize) -> usize {
        let n = n.min(self.parked.len());
        self.parked.drain(..n);
        if self.parked.is_empty() {
            // Freed: a connection that answered a ping once keeps nothing for it.
            self.parked = Vec::new();
        }
        n
    }

    /// One pass of [`Socket::poll_write_frames`]: one vectored write of the parked bytes (if
    /// `parked_first`), the ping, then frames from the cursor on, with room for `F` frames in
    /// `N` (`2 * F + 2`) slices. Returns how many bytes the socket took. Generic so that the
    /// usual write of one or two frames sets up six slices, not 130: as a loop over slices
    /// of either size, the write cost 43 more instructions per delivery (callgrind, issue 23).
    fn poll_write_some<const F: usize, const N: usize>(
        &mut self,
        cx: &mut Context<'_>,
        batch: &VecDeque<Outgoing>,
        parked_first: bool,
    ) -> Poll<io::Result<usize>> {
        let between_frames = self.cursor.offset == 0;
        let mut headers = [[0u8; 10]; F];
        let mut slices = [IoSlice::new(&[]); N];
        let mut used = 0;
        // What the socket already took of the first frame.
        let mut skip = self.cursor.offset;
        if parked_first {
            slices[0] = IoSlice::new(&self.parked);
            used = 1;
        }
        if self.cursor.ping {
            push(&mut slices, &mut used, &mut skip, &PING);
        }
        let frames = batch.iter().map_while(|item| match item {
            Outgoing::Event(text) => Some((0x81, text.as_bytes())),
            Outgoing::Binary(bytes) => Some((0x82, &bytes[..])),
            Outgoing::Close(..) => None,
        });
        // A frame cut by the last write is finished alone, so that what tungstenite parked
        // meanwhile (a pong) goes next; a cut ping too.
        let limit = if between_frames { F } else { 1 };
        let limit = limit - usize::from(!between_frames && self.cursor.ping);
        for ((first, payload), header) in frames.zip(headers.iter_mut()).take(limit) {
            let len = format_header(header, first, payload.len());
            push(&mut slices, &mut used, &mut skip, &header[..len]);
            push(&mut slices, &mut used, &mut skip, payload);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..used])
    }
}

/// Adds `slice` to a vectored write's `slices`, less the `skip` bytes an earlier write took.
#[inline]
fn push<'a>(slices: &mut [IoSlice<'a>], used: &mut usize, skip: &mut usize, slice: &'a [u8]) {
    let start = (*skip).min(slice.len());
    *skip -= start;
    if start < slice.len() {
        slices[*used] = IoSlice::new(&slice[start..]);
        *used += 1;
    }
}

/// Formats a server frame's header (final, unmasked) for `first` (FIN and opcode) and a
/// payload of `len` bytes into `header`; returns its length.
fn format_header(header: &mut [u8; 10], first: u8, len: usize) -> usize {
    header[0] = first;
    if len < 126 {
        header[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// The length of a frame's header for a payload of `len` bytes.
fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..65536 => 4,
        _ => 10,
    }
}

/// Where the writer is in its frames: a ping due before the batch, and how much of the first
/// frame (the ping, if due, else the batch's front) the socket has taken.
#[derive(Debug, Default)]
struct Cursor {
    ping: bool,
    offset: usize,
}

impl Cursor {
    /// Moves past `n` bytes written (after the parked ones): the ping, then whole frames
    /// (popped, their payloads counted in `written`), then into the next frame.
    fn advance(&mut self, n: usize, batch: &mut VecDeque<Outgoing>, written: &mut usize) {
        let mut n = n + self.offset;
        self.offset = 0;
        if self.ping {
            if n < PING.len() {
                self.offset = n;
                return;
            }
            n -= PING.len();
            self.ping = false;
        }
        while n > 0 {
            let payload = match batch.front() {
                Some(Outgoing::Event(text)) => text.len(),
                Some(Outgoing::Binary(bytes)) => bytes.len(),
                _ => break,
            };
            let len = payload + header_len(payload);
            if n < len {
                self.offset = n;
                return;
            }
            n -= len;
            *written += payload;
            batch.pop_front();
        }
    }
}

/// The reader's view of a [`Socket`]: the messages tungstenite reads.
pub(crate) struct Messages<'a, S>(&'a Socket<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for Messages<'_, S> {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut ws = self.0.lock();
        let next = Pin::new(&mut *ws).poll_next(cx);
        if !ws.get_ref().parked.is_empty() {
            self.0.parked.store(true, Relaxed);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;

    /// A socket that takes at most `per_write` bytes per write (vectored writes included, by
    /// the default that writes the first slice), so every frame is cut somewhere, and is not
    /// ready for every other write, so a test gets control back between two writes.
    struct Trickle {
        out: Vec<u8>,
        per_write: usize,
        ready: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(0))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                return Poll::Pending;
            }
            let n = buf.len().min(self.per_write);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Splits server frames (unmasked) into (first byte, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (extra, len) = match bytes[1] {
                126 => (2, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
                127 => (
                    8,
                    u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                ),
                len => (0, usize::from(len)),
            };
            let start = 2 + extra;
            out.push((bytes[0], bytes[start..start + len].to_vec()));
            bytes = &bytes[start + len..];
        }
        out
    }

    #[test]
    fn headers_have_the_shortest_length_form() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            assert_eq!(format_header(&mut [0; 10], 0x81, len), header, "{len}");
            assert_eq!(header_len(len), header, "{len}");
        }
    }

    #[test]
    fn a_close_is_found_among_parked_frames() {
        let pong = [0x8a, 0x01, 7];
        let close = [0x88, 0x02, 0x03, 0xe8];
        assert!(!contains_close(&pong));
        assert!(contains_close(&[&pong[..], &close[..]].concat()));
        let mut long = vec![0x8a, 126, 0, 200];
        long.extend([0x88; 200]); // payload bytes that look like close headers
        assert!(!contains_close(&long));
    }

    /// A socket holding `data`, counting the reads that reach it; a vectored read fills every
    /// buffer it is given, as a socket's `readv` does.
    struct Received {
        data: Vec<u8>,
        at: usize,
        reads: usize,
    }

    impl AsyncRead for Received {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.as_mut()
                .poll_read_vectored(cx, &mut [IoSliceMut::new(buf)])
        }
        fn poll_read_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &mut [IoSliceMut<'_>],
        ) -> Poll<io::Result<usize>> {
            self.reads += 1;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.data.len() - self.at);
                buf[..take].copy_from_slice(&self.data[self.at..self.at + take]);
                self.at += take;
                n += take;
            }
            Poll::Ready(Ok(n))
        }
    }

    /// tungstenite asks for 128 bytes at a time; the gate takes what the socket holds with one
    /// read and hands it out in order, and keeps nothing once all of it is handed out.
    #[test]
    fn the_gate_reads_ahead_with_one_read_and_keeps_nothing_after() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let mut gate = Gate {
            inner: Received {
                data: data.clone(),
                at: 0,
                reads: 0,
            },
            parked: Vec::new(),
            closed: false,
            cursor: Cursor::default(),
            unread: None,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut got = Vec::new();
        while got.len() < data.len() {
            let mut buf = [0; 128];
            let Poll::Ready(Ok(n)) = Pin::new(&mut gate).poll_read(&mut cx, &mut buf) else {
                panic!("a read of what the socket holds must be ready");
            };
            assert!(n > 0, "nothing read after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(gate.inner.reads, 1, "3,000 bytes fit one read-ahead");
        assert!(gate.unread.is_none(), "nothing kept once handed out");
    }

    /// Frames cut at every byte stay whole, in order, and what tungstenite parks while one is
    /// cut goes out between two frames.
    #[test]
    fn frames_cut_by_the_socket_stay_whole_around_parked_ones() {
        let text = |s: &str| Outgoing::Event(Frame::from(s.to_string()));
        let long = "x".repeat(300);
        let mut batch: VecDeque<_> = [text("one"), text(&long), text("three")].into();
        let gate = Gate {
            inner: Trickle {
                out: Vec::new(),
                per_write: 3,
                ready: false,
            },
            parked: Vec::new(),
            closed: false,
            cursor: Cursor {
                ping: true,
                offset: 0,
            },
            unread: None,
        };
        let ws = WebSocketStream::from_raw_socket(gate, Role::Server, None);
        let socket = Socket {
            ws: Mutex::new(futures_lite::future::block_on(ws)),
            parked: AtomicBool::new(false),
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut written = 0;
        let mut parked_once = false;
        loop {
            // tungstenite answers a ping while the writer is inside a frame.
            let mut ws = socket.lock();
            let gate = ws.get_mut();
            if gate.cursor.offset > 0 && !parked_once {
                let pong = [0x8a, 0x01, 9];
                assert!(Pin::new(gate).poll_write(&mut cx, &pong).is_ready());
                socket.parked.store(true, Relaxed);
                parked_once = true;
            }
            drop(ws);
            match socket.poll_write_frames(&mut cx, &mut batch, &mut written) {
                Poll::Pending => {}
                Poll::Ready(Ok(None)) => break,
                other => panic!("{other:?}"),
            }
        }
        let mut ws = socket.lock();
        let gate = ws.get_mut();
        assert!(parked_once && batch.is_empty() && gate.parked.is_empty());
        assert!(!socket.has_parked(), "nothing left for the writer");
        assert_eq!(written, 3 + 300 + 5);
        let got = frames(&gate.inner.out);
        let expected = [
            (0x89, vec![]),
            (0x81, b"one".to_vec()),
            (0x8a, vec![9]),
            (0x81, long.into_bytes()),
            (0x81, b"three".to_vec()),
        ];
        // The pong goes out at the first boundary after it was parked: after the ping or
        // after "one", depending on where the first cut fell.
        let without_pong: Vec<_> = got.iter().filter(|f| f.0 != 0x8a).cloned().collect();
        let expected_without: Vec<_> = expected.iter().filter(|f| f.0 != 0x8a).cloned().collect();
        assert_eq!(without_pong, expected_without);
        assert_eq!(got.iter().filter(|f| f.0 == 0x8a).count(), 1);
    }
}
