//! The executor the server's threads run: async-task's tasks in one run queue under a mutex.
//!
//! Futures enter through [`Executor::spawn`] (the accept loop and the connections) and
//! [`Executor::spawn_hub`] (the hub); wake-ups enter as async-task calls the task's schedule
//! function with, which puts the task's `Runnable` at the back of the queue. They leave as
//! polls: each `--threads` thread loops in [`Executor::run`], taking the front task and running
//! it, the hub's before any other.
//!
//! Why not `async_executor::Executor`, as until issue 27? Every delivery wakes the recipient's
//! writer once, and there a wake-up pushes the task onto a lock-free `ConcurrentQueue`, from
//! which a runner steals it into its own queue and pops it: about 545 of the 1,672
//! instructions a delivery cost (callgrind, BENCHMARKS.md, "Where an idle connection and a
//! delivery go now"), a third of the server's own work, and more than the hub's. Here a
//! wake-up is a push onto a `VecDeque` under a mutex, and a run a pop under it: with one
//! thread the lock is never contended, and with a few it is held for a push or a pop. (The
//! lock-free design pays off with many threads contending for one queue; smolchat is built
//! for gateways with one to four cores.) The hub keeps its priority, which it had from an
//! executor of its own: every message passes through it, and behind the writers it woke it
//! would add a whole writer phase to every message's latency.
//!
//! A thread with nothing to run waits in async-io's reactor (`block_on`, in `server.rs`), whose
//! waker it leaves in the queue's `idle` list: a wake-up takes one such thread and wakes it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use async_task::Runnable;
use slab::Slab;

/// Tasks a thread runs in a row before it lets the reactor deliver socket events and timers.
const BUDGET: usize = 200;

/// A handle to the run queue; clones share it.
#[derive(Clone, Default)]
pub(super) struct Executor {
    queue: Arc<Mutex<Queue>>,
}

#[derive(Default)]
struct Queue {
    /// The hub's task, when woken: run before any other.
    hub: VecDeque<Runnable>,
    /// Every other task that was woken, in order.
    tasks: VecDeque<Runnable>,
    /// Threads waiting in the reactor for something to run.
    idle: Vec<Waker>,
    /// A waker for every task not finished yet, so that [`Executor::close`] can drop them.
    active: Slab<Waker>,
    /// Closed: a task woken now is dropped instead of run.
    closed: bool,
}

impl Executor {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing runs under the lock but pushes and pops, which leave the queue whole.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `future` on the threads, until it finishes or the executor closes.
    pub(super) fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.spawn_as(future, false);
    }

    /// Runs the hub's `future`, which every thread runs first whenever it is woken.
    pub(super) fn spawn_hub(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.spawn_as(future, true);
    }

    fn spawn_as(&self, future: impl Future<Output = ()> + Send + 'static, hub: bool) {
        let mut queue = self.lock();
        let entry = queue.active.vacant_entry();
        let key = entry.key();
        // The task leaves `active` when its future is dropped: finished, or cancelled.
        let future = Tracked {
            future,
            _done: Done(self.clone(), key),
        };
        let this = self.clone();
        // A hub that woke itself while it ran yielded (`hub::run` lets the writers it filled
        // run when the server is congested): behind them, then, not before them. (With
        // several threads, a reader's wake-up on another thread while the hub runs counts as
        // such too, and costs the hub its priority once.)
        let schedule = move |runnable, info: async_task::ScheduleInfo| {
            this.schedule(runnable, hub && !info.woken_while_running)
        };
        let (runnable, task) = async_task::spawn(future, async_task::WithInfo(schedule));
        entry.insert(runnable.waker());
        drop(queue);
        task.detach();
        runnable.schedule();
    }

    /// A task was woken: to the back of its queue, and one idle thread woken to run it.
    fn schedule(&self, runnable: Runnable, hub: bool) {
        let mut queue = self.lock();
        if queue.closed {
            drop(queue);
            return drop(runnable); // cancels the task: its future is dropped
        }
        if hub {
            queue.hub.push_back(runnable);
        } else {
            queue.tasks.push_back(runnable);
        }
        let idle = queue.idle.pop();
        drop(queue);
        if let Some(thread) = idle {
            thread.wake();
        }
    }

    /// Runs tasks as they are woken, on the calling thread, forever: [`BUDGET`] at most in a
    /// row, then the reactor gets a turn. With nothing to run, the thread waits in the
    /// reactor until a task is woken.
    pub(super) async fn run(&self) {
        std::future::poll_fn(|cx| {
            for _ in 0..BUDGET {
                let next = {
                    let mut queue = self.lock();
                    let next = queue.hub.pop_front().or_else(|| queue.tasks.pop_front());
                    if next.is_none() && !queue.idle.iter().any(|w| w.will_wake(cx.waker())) {
                        queue.idle.push(cx.waker().clone());
                    }
                    next
                };
                match next {
                    Some(runnable) => {
                        runnable.run();
                    }
                    None => return Poll::<()>::Pending,
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// Drops every task not finished: for the end of the server, once no thread runs them.
    pub(super) fn close(&self) {
        let active: Vec<Waker> = {
            let mut queue = self.lock();
            queue.closed = true;
            queue.active.drain().collect()
        };
        // Woken now, each task is dropped by `schedule`; the lock is not held, since
        // dropping a task's future runs its drops, which may wake other tasks.
        active.into_iter().for_each(Waker::wake);
        let queued = {
            let mut queue = self.lock();
            (
                std::mem::take(&mut queue.hub),
                std::mem::take(&mut queue.tasks),
            )
        };
        drop(queued);
    }
}

pin_project_lite::pin_project! {
    /// A task's future with its [`Done`]. A struct that polls the future in place, not an
    /// `async` block around it: a block would keep the future it awaits beside the one it
    /// captured, twice the size, in every connection's task.
    struct Tracked<F> {
        #[pin]
        future: F,
        _done: Done,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// Takes a task out of [`Queue::active`] when its future is dropped.
struct Done(Executor, usize);

impl Drop for Done {
    fn drop(&mut self) {
        // The waker is dropped after the lock: nothing is dropped under it.
        let waker = self.0.lock().active.try_remove(self.1);
        drop(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// Runs `executor` on the current thread until `until` is done.
    fn run_until(executor: &Executor, until: impl Future<Output = ()>) {
        async_io::block_on(futures_lite::future::or(until, executor.run()));
    }

    #[test]
    fn spawned_tasks_run_and_wake_ups_from_other_threads_reach_them() {
        let executor = Executor::default();
        let (tx, rx) = async_channel::bounded::<u32>(1);
        let (done_tx, done_rx) = async_channel::bounded::<u32>(1);
        executor.spawn(async move {
            let mut sum = 0;
            while let Ok(n) = rx.recv().await {
                sum += n;
            }
            let _ = done_tx.send(sum).await;
        });
        let sender = std::thread::spawn(move || {
            for n in 1..=100 {
                async_io::block_on(tx.send(n)).unwrap();
            }
        });
        let sum = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = sum.clone();
        run_until(&executor, async move {
            seen.store(done_rx.recv().await.unwrap() as usize, SeqCst);
        });
        sender.join().unwrap();
        assert_eq!(sum.load(SeqCst), 5050);
        assert!(
            executor.lock().active.is_empty(),
            "a finished task stays active"
        );
    }

    #[test]
    fn a_woken_hub_runs_before_the_tasks_woken_before_it() {
        let executor = Executor::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (wake_hub, hub_woken) = async_channel::bounded::<()>(1);
        for i in 0..3 {
            let order = order.clone();
            let wake_hub = wake_hub.clone();
            executor.spawn(async move {
                order.lock().unwrap().push(format!("task {i}"));
                if i == 0 {
                    // Woken while tasks 1 and 2 are queued: it must run before them.
                    wake_hub.try_send(()).unwrap();
                }
            });
        }
        let (finished, all_done) = async_channel::bounded::<()>(1);
        let log = order.clone();
        executor.spawn_hub(async move {
            log.lock().unwrap().push("hub starts".into());
            hub_woken.recv().await.unwrap();
            log.lock().unwrap().push("hub".into());
            drop(finished);
        });
        run_until(&executor, async move {
            let _ = all_done.recv().await;
        });
        // The hub was spawned last, yet runs first; once woken by task 0, before 1 and 2.
        assert_eq!(
            *order.lock().unwrap(),
            ["hub starts", "task 0", "hub", "task 1", "task 2"]
        );
    }

    /// `hub::run` yields when the writers are behind: a yield must let the tasks already
    /// queued run before the hub's next turn, not after all of the hub's turns.
    #[test]
    fn a_hub_that_yields_lets_the_queued_tasks_run_first() {
        let executor = Executor::default();
        let turns = Arc::new(AtomicUsize::new(0));
        let (ran_tx, ran) = async_channel::bounded::<usize>(1);
        let (hub_turns, spawner) = (turns.clone(), executor.clone());
        executor.spawn_hub(async move {
            for turn in 0..1000 {
                if turn == 0 {
                    // A task queued while the hub runs, as the writers it fills are.
                    let seen = hub_turns.clone();
                    let ran_tx = ran_tx.clone();
                    spawner.spawn(async move {
                        let _ = ran_tx.send(seen.load(SeqCst)).await;
                    });
                }
                hub_turns.fetch_add(1, SeqCst);
                futures_lite::future::yield_now().await;
            }
        });
        let turns_before = Arc::new(AtomicUsize::new(usize::MAX));
        let out = turns_before.clone();
        run_until(&executor, async move {
            out.store(ran.recv().await.unwrap(), SeqCst);
        });
        let before = turns_before.load(SeqCst);
        assert!(before <= 2, "the queued task waited for {before} hub turns");
    }

    #[test]
    fn closing_drops_the_tasks_that_wait() {
        let executor = Executor::default();
        let (tx, rx) = async_channel::bounded::<()>(1);
        let (started_tx, started) = async_channel::bounded::<()>(1);
        executor.spawn(async move {
            let _ = started_tx.send(()).await;
            let _ = rx.recv().await; // never sent: waits until dropped
        });
        run_until(&executor, async {
            started.recv().await.unwrap();
        });
        assert_eq!(executor.lock().active.len(), 1);
        executor.close();
        assert!(executor.lock().active.is_empty());
        assert!(tx.is_closed(), "the waiting task's future was dropped");
    }
}
