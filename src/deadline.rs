//! Timeouts that cost nothing until they are needed, and the one timer type everything uses.
//!
//! The writer flushes many times a second per client under load; putting a fresh timer under
//! every flush would mean a trip through the reactor's timer list each time. [`within`] polls
//! the operation first and only creates a timer if the operation has to wait, which on a
//! healthy connection it rarely does. The timer is `async-io`'s, which works under any
//! executor (it drives itself from a background thread when nobody else does).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The timer: `async-io`'s. Every wait on the clock in the crate goes through this module.
pub use async_io::Timer;

/// Runs `fut` to completion, or gives up with `None` once it has been pending for `limit`.
pub fn within<F: Future>(limit: Duration, fut: F) -> Within<F> {
    Within {
        fut,
        limit,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`within`]. A struct rather than an `async fn`: an `async fn`
    /// keeps its argument `fut` twice in its state (as the argument and as the pinned local),
    /// and the writer's write future lives inside every connection's task.
    pub struct Within<F> {
        #[pin]
        fut: F,
        limit: Duration,
        // Created when the operation first has to wait.
        timer: Option<Timer>,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let limit = *this.limit;
        let timer = this.timer.get_or_insert_with(|| Timer::after(limit));
        match Pin::new(timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs `fut` (a write) to completion, or gives up with `None` once `writes` (a count of the
/// stream's writes that moved bytes, `meter::Progress::writes`) has not changed for `limit`
/// (checked every quarter of it, so the end comes between `limit` and 1.25 × `limit` after
/// the last progress). A large batch over a slow link that keeps moving is not a stalled
/// client; a client that stopped reading is.
pub fn without_progress<F: Future, W: Fn() -> u64>(
    limit: Duration,
    writes: W,
    fut: F,
) -> WithoutProgress<F, W> {
    let seen = writes();
    WithoutProgress {
        fut,
        tick: limit / 4,
        writes,
        timer: None,
        seen,
        quiet: 0,
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`without_progress`] (a struct for the reason given at
    /// [`Within`]).
    pub struct WithoutProgress<F, W> {
        #[pin]
        fut: F,
        tick: Duration,
        writes: W,
        // Armed when the write first has to wait; then one tick per quarter of the limit.
        // Boxed: the writer's write future lives in every connection's task, and a timer is
        // half its size; most writes never wait.
        timer: Option<Box<Timer>>,
        seen: u64,
        quiet: u8,
    }
}

impl<F: Future, W: Fn() -> u64> Future for WithoutProgress<F, W> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let tick = *this.tick;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::new(Timer::after(tick)));
        while Pin::new(&mut **timer).poll(cx).is_ready() {
            let now = (this.writes)();
            if now == *this.seen {
                *this.quiet += 1;
                if *this.quiet >= 4 {
                    return Poll::Ready(None);
                }
            } else {
                (*this.seen, *this.quiet) = (now, 0);
            }
            timer.set_after(tick);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_futures_finish_and_stuck_ones_time_out() {
        futures_lite::future::block_on(async {
            assert_eq!(within(Duration::from_millis(1), async { 7 }).await, Some(7));
            let never = std::future::pending::<()>();
            assert_eq!(within(Duration::from_millis(20), never).await, None);
        });
    }
}
