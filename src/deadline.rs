//! Timeouts that cost nothing until they are needed, and the one timer type everything uses.
//!
//! The writer flushes many times a second per client under load; putting a fresh timer under
//! every flush would mean a trip through the reactor's timer list each time. [`within`] polls
//! the operation first and only creates a timer if the operation has to wait, which on a
//! healthy connection it rarely does. The timer is `async-io`'s, which works under any
//! executor (it drives itself from a background thread when nobody else does).

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// The timer: `async-io`'s. Every wait on the clock in the crate goes through this module.
pub use async_io::Timer;

/// Runs `fut` to completion, or gives up with `None` once it has been pending for `limit`.
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut timer: Option<Timer> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let timer = timer.get_or_insert_with(|| Timer::after(limit));
        match std::pin::Pin::new(timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Runs `fut` (a write) to completion, or gives up with `None` once `writes` (a count of the
/// stream's writes that moved bytes, `meter::Progress::writes`) has not changed for `limit` (checked every quarter of it, so the end
/// comes between `limit` and 1.25 × `limit` after the last progress). A large batch over a
/// slow link that keeps moving is not a stalled client; a client that stopped reading is.
pub async fn without_progress<F: Future>(
    limit: Duration,
    writes: impl Fn() -> u64,
    fut: F,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    // Armed when the write first has to wait; then one tick per quarter of the limit.
    let mut timer: Option<Timer> = None;
    let (mut seen, mut quiet) = (writes(), 0);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let tick = limit / 4;
        let timer = timer.get_or_insert_with(|| Timer::after(tick));
        while std::pin::Pin::new(&mut *timer).poll(cx).is_ready() {
            let now = writes();
            if now == seen {
                quiet += 1;
                if quiet >= 4 {
                    return Poll::Ready(None);
                }
            } else {
                (seen, quiet) = (now, 0);
            }
            timer.set_after(tick);
        }
        Poll::Pending
    })
    .await
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
