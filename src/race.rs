//! Two futures in one task: the first polled only when its own waker fired.
//!
//! A session's reader and writer share one task. `future::or` would poll both whenever either
//! is woken, and the writer is woken for every event the hub queues. Polling the reader then
//! costs a `recv` system call that finds nothing (async-io tries the read before it registers
//! for readiness): one wasted system call per delivered event, measured at about a tenth of
//! the server's time under fan-out. [`race`] gives the first future (the reader) a waker of
//! its own that marks it and then wakes the task, and polls it only when marked. The second
//! (the writer) gets the task's own waker and is polled on every wake-up: the hub's wake-ups,
//! the frequent ones, go straight to the task, and polling a writer that waits for its queue
//! costs a lock and a clock read. (A writer whose socket is full retries its write when polled
//! for the reader: one failed `send` per wake-up of the reader, which a client pays for with
//! its rate limit, for at most `--write-timeout`.) (A mark for each, as this module had first, cost every wake-up of
//! the writer a lock more and every connection another allocation.)

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Marks the first future as woken, then wakes the task that runs both.
struct Mark {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Mark {
    fn new() -> Arc<Self> {
        Arc::new(Mark {
            // Polled once at the start.
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        })
    }

    /// Records the task's current waker, if it changed.
    fn set_task(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }

    /// Polls `fut` if it was woken since its last poll.
    fn poll<F: Future>(
        self: &Arc<Self>,
        fut: std::pin::Pin<&mut F>,
        cx: &Context<'_>,
    ) -> Poll<F::Output> {
        self.set_task(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.clone());
        fut.poll(&mut Context::from_waker(&waker))
    }
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(|e| e.into_inner()) {
            task.wake_by_ref();
        }
    }
}

/// Runs `a` and `b` until the first finishes, returning its output (`a` wins a tie). `a` is
/// polled only after its own waker fired; `b` whenever the task is polled.
pub fn race<T, A, B>(a: A, b: B) -> Race<A, B>
where
    A: Future<Output = T>,
    B: Future<Output = T>,
{
    Race {
        a,
        b,
        mark_a: Mark::new(),
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`race`]. (A struct rather than an `async fn`, whose state would
    /// hold both futures twice: once as arguments and once pinned.)
    pub struct Race<A, B> {
        #[pin]
        a: A,
        #[pin]
        b: B,
        mark_a: Arc<Mark>,
    }
}

impl<T, A, B> Future for Race<A, B>
where
    A: Future<Output = T>,
    B: Future<Output = T>,
{
    type Output = T;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.project();
        if let Poll::Ready(out) = this.mark_a.poll(this.a, cx) {
            return Poll::Ready(out);
        }
        this.b.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; pending until `open` is set, then ready.
    struct Gate<'a> {
        polls: &'a AtomicUsize,
        open: &'a AtomicBool,
        waker: &'a Mutex<Option<Waker>>,
    }

    impl Future for Gate<'_> {
        type Output = &'static str;
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.open.load(Ordering::SeqCst) {
                return Poll::Ready("opened");
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn the_first_future_is_polled_only_when_woken() {
        let (a_polls, b_polls) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let a_open = AtomicBool::new(false);
        let b_open = AtomicBool::new(false);
        let (a_waker, b_waker) = (Mutex::new(None), Mutex::new(None));
        let a = Gate {
            polls: &a_polls,
            open: &a_open,
            waker: &a_waker,
        };
        let b = Gate {
            polls: &b_polls,
            open: &b_open,
            waker: &b_waker,
        };
        let mut both = Box::pin(race(a, b));
        let mut cx = Context::from_waker(Waker::noop());

        assert!(both.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            (
                a_polls.load(Ordering::SeqCst),
                b_polls.load(Ordering::SeqCst)
            ),
            (1, 1)
        );

        // Waking b three times polls b again, never a.
        for _ in 0..3 {
            b_waker.lock().unwrap().take().unwrap().wake();
            assert!(both.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            (
                a_polls.load(Ordering::SeqCst),
                b_polls.load(Ordering::SeqCst)
            ),
            (1, 4)
        );

        // A poll of the task for any other reason polls b (it has the task's waker), not a.
        assert!(both.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            (
                a_polls.load(Ordering::SeqCst),
                b_polls.load(Ordering::SeqCst)
            ),
            (1, 5)
        );

        a_open.store(true, Ordering::SeqCst);
        a_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(both.as_mut().poll(&mut cx), Poll::Ready("opened"));
    }
}
