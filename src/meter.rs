//! A connection's byte stream, metered: the one place that sees every byte a session reads and
//! writes, below tungstenite.
//!
//! A session's socket enters [`Metered::new`] right after the HTTP upgrade, and tungstenite
//! reads and writes through it. On the way it:
//!
//! - **yields** to the executor after [`YIELD_BYTES`] read in one go. A socket that always has
//!   data (a flood of pings or of empty continuation frames, which tungstenite consumes without
//!   ever returning a message) would otherwise keep its task, and its executor thread, busy for
//!   as long as the flood lasts;
//! - **paces** reading to the client's byte budget (`--rate-limit` messages of
//!   `--max-message-bytes`, with `--rate-burst` of them at once): over it, it stops reading
//!   until the budget refills, so TCP slows the client down. Frames that never become messages
//!   cost bytes, so they are bounded too;
//! - **records write progress** in a shared [`Progress`], so that `--write-timeout` can mean "no
//!   byte accepted by the socket for that long" rather than "a whole batch not written in that
//!   long" (see `deadline::without_progress`).

use std::io::IoSliceMut;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, Future};

use crate::deadline::Timer;

/// Bytes read without returning to the executor, after which the reader yields once.
pub const YIELD_BYTES: usize = 16 * 1024;

/// Whether a stream's writes make progress, readable by the session while tungstenite owns
/// the stream: a count of the writes that moved bytes. A count, not a time, because reading
/// the clock on every write would cost more than the rest of this file together; whoever
/// watches compares counts taken some time apart. One atomic: it is allocated for every
/// connection.
#[derive(Debug, Default)]
pub struct Progress {
    writes: AtomicU64,
}

/// The instant the meters count from: the first time any stream was metered.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], wrapping after 49 days (differences stay right).
fn now_ms() -> u32 {
    epoch().elapsed().as_millis() as u32
}

impl Progress {
    fn wrote(&self) {
        self.writes.fetch_add(1, Relaxed);
    }

    /// How many writes and flushes have moved bytes so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Relaxed)
    }
}

/// Bytes a client may send: `rate` a second, at most `burst` at once. Compact, since every
/// connection has one.
#[derive(Debug)]
struct Budget {
    rate: u32,
    burst: u32,
    tokens: f32,
    /// When `tokens` was last topped up, in milliseconds after [`epoch`].
    last_ms: u32,
}

pin_project_lite::pin_project! {
    /// A stream that yields, paces its reads and records its writes' progress (see the module
    /// documentation).
    pub struct Metered<S> {
        #[pin]
        inner: S,
        progress: Arc<Progress>,
        read_since_yield: u32,
        budget: Option<Budget>,
        // Boxed: a timer is the size of the rest of this struct, and only a client over its
        // budget needs one.
        pause: Option<Box<Timer>>,
    }
}

impl<S> Metered<S> {
    /// Wraps `inner`. `bytes_per_second` of 0 means no byte budget (reads still yield).
    pub fn new(inner: S, bytes_per_second: u64, burst: u64) -> (Self, Arc<Progress>) {
        let progress = Arc::new(Progress::default());
        let clamp = |n: u64| n.clamp(1, u64::from(u32::MAX)) as u32;
        let budget = (bytes_per_second > 0).then(|| Budget {
            rate: clamp(bytes_per_second),
            burst: clamp(burst),
            tokens: clamp(burst) as f32,
            last_ms: now_ms(),
        });
        let metered = Metered {
            inner,
            progress: progress.clone(),
            read_since_yield: 0,
            budget,
            pause: None,
        };
        (metered, progress)
    }
}

impl<S: AsyncRead> Metered<S> {
    /// How many of `want` bytes the next read may take, or `Pending` while the reader must
    /// yield or wait for its budget.
    fn poll_allowed(self: Pin<&mut Self>, cx: &mut Context<'_>, want: usize) -> Poll<usize> {
        let this = self.project();
        if *this.read_since_yield as usize >= YIELD_BYTES {
            *this.read_since_yield = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let Some(budget) = this.budget else {
            return Poll::Ready(want);
        };
        if let Some(pause) = this.pause {
            if Pin::new(&mut **pause).poll(cx).is_pending() {
                return Poll::Pending;
            }
            *this.pause = None;
        }
        let now = now_ms();
        let earned = now.wrapping_sub(budget.last_ms) as f32 / 1000.0 * budget.rate as f32;
        budget.tokens = (budget.tokens + earned).min(budget.burst as f32);
        budget.last_ms = now;
        if budget.tokens < 1.0 {
            // Wait until a read's worth is back rather than waking for every byte.
            let want = (budget.burst as f32 / 4.0).clamp(1.0, 4096.0) - budget.tokens;
            let wait = Duration::from_secs_f32(want / budget.rate as f32);
            let mut pause = Box::new(Timer::after(wait.max(Duration::from_millis(1))));
            let _ = Pin::new(&mut *pause).poll(cx);
            *this.pause = Some(pause);
            return Poll::Pending;
        }
        Poll::Ready(want.min(budget.tokens as usize))
    }

    /// Counts what a read returned against the yield and the budget.
    fn count(self: Pin<&mut Self>, read: &Poll<std::io::Result<usize>>) {
        let this = self.project();
        match read {
            Poll::Ready(Ok(n)) => {
                *this.read_since_yield += *n as u32;
                if let Some(budget) = this.budget {
                    budget.tokens -= *n as f32;
                }
            }
            Poll::Pending => *this.read_since_yield = 0,
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl<S: AsyncRead> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let allowed = ready!(self.as_mut().poll_allowed(cx, buf.len()));
        let read = self
            .as_mut()
            .project()
            .inner
            .poll_read(cx, &mut buf[..allowed]);
        self.count(&read);
        read
    }

    /// The reader's read-ahead (`wire::Gate`): passed on whole while the budget allows all of
    /// it, so a socket that reads vectors takes what is there with one system call; as one
    /// read into the first buffer when the budget allows less.
    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let total = bufs.iter().map(|b| b.len()).sum();
        let allowed = ready!(self.as_mut().poll_allowed(cx, total));
        let inner = self.as_mut().project().inner;
        let read = match bufs.iter_mut().find(|b| !b.is_empty()) {
            Some(first) if allowed < total => {
                let n = allowed.min(first.len());
                inner.poll_read(cx, &mut first[..n])
            }
            _ => inner.poll_read_vectored(cx, bufs),
        };
        self.count(&read);
        read
    }
}

impl<S: AsyncWrite> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let written = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.progress.wrote();
        }
        written
    }

    /// The writer's frames, header and payload side by side (`wire`): passed on whole, so that
    /// a socket that writes vectors writes a batch with one system call.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let written = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.progress.wrote();
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let flushed = this.inner.poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.progress.wrote();
        }
        flushed
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt;
    use futures_lite::future::block_on;

    #[test]
    fn reads_yield_after_a_bounded_amount() {
        let data = vec![7u8; YIELD_BYTES * 3];
        let (mut m, _) = Metered::new(&data[..], 0, 0);
        let mut buf = vec![0u8; YIELD_BYTES];
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut pendings = 0;
        let mut total = 0;
        while total < data.len() {
            match Pin::new(&mut m).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(n)) => total += n,
                Poll::Pending => pendings += 1,
                Poll::Ready(Err(e)) => panic!("{e}"),
            }
        }
        assert_eq!(
            pendings, 2,
            "one yield per {YIELD_BYTES} bytes read in a row"
        );
    }

    #[test]
    fn reads_keep_to_the_byte_budget() {
        let data = vec![1u8; 3000];
        let (mut m, _) = Metered::new(&data[..], 1_000_000, 1000);
        let mut buf = vec![0u8; 3000];
        let n = block_on(m.read(&mut buf)).unwrap();
        assert_eq!(n, 1000, "one burst's worth, then the budget is spent");
        let n = block_on(m.read(&mut buf)).unwrap();
        assert!(
            (1..=1000).contains(&n),
            "the rest arrives as the budget refills: {n}"
        );
    }
}
