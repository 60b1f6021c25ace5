//! A client's outgoing queue: bounded in items and in bytes, allocated only as far as it is
//! used.
//!
//! The hub is the only producer: [`Sender::try_send`] never waits, and reports a full queue so
//! the hub can drop the slow consumer. The client's writer is the only consumer:
//! [`Receiver::recv_batch`] waits until something is queued and then takes *everything* queued
//! in one step, by swapping its empty buffer with the queue's. The two buffers keep their
//! capacity, so once a connection has seen its largest burst, queuing and writing allocate
//! nothing.
//!
//! The byte bound counts what the writer holds too: items taken by `recv_batch` stay counted
//! until the writer reports them written with [`Receiver::release`]. Otherwise a client that
//! stopped reading would hold one full queue in the writer's hands and fill another one
//! behind it, twice the bound.
//!
//! Why not a bounded `async_channel`, as the design began with? A bounded channel allocates
//! every slot up front: 256 slots of 40 bytes, 11,008 bytes measured per client before it
//! receives anything,
//! more than all the rest of an idle connection together. An unbounded channel allocates lazily
//! but in fresh 31-slot blocks as messages pass, that is, allocations on the fan-out path.
//! This queue is a `Mutex<VecDeque>` and, under the same lock, the waker of the one consumer
//! when it waits; the lock is held only for a push or a swap. (An `event_listener::Event`, the
//! primitive async-channel is built on, was used first: it is made for many listeners and cost
//! each connection another allocation of 72 bytes.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Why [`Sender::try_send`] refused an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// `capacity` items or `byte_capacity` bytes are waiting: the consumer is not keeping up.
    Full,
    /// The receiver is gone or the queue was closed.
    Closed,
}

/// What an item costs against the queue's byte bound.
pub trait Weigh {
    /// The item's size in bytes.
    fn bytes(&self) -> usize;
}

struct State<T> {
    items: VecDeque<T>,
    /// Bytes of the waiting items plus those the consumer took and has not released.
    bytes: usize,
    closed: bool,
    /// The consumer's waker while it waits for an item; taken by the item (or the close) that
    /// ends the wait.
    waiting: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    byte_capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the deque inconsistent, so a poisoned
        // lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        let waiting = {
            let mut state = self.lock();
            state.closed = true;
            state.waiting.take()
        };
        // Woken outside the lock, which the consumer takes as soon as it runs.
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

/// The producing end (the hub's). Dropping it closes the queue.
pub struct Sender<T>(Arc<Shared<T>>);

/// The consuming end (the writer's). Dropping it closes the queue.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue that holds at most `capacity` items (at least 1) and `byte_capacity` bytes, or one
/// item larger than that.
pub fn bounded<T: Weigh>(capacity: usize, byte_capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            closed: false,
            waiting: None,
        }),
        capacity: capacity.max(1),
        byte_capacity,
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T: Weigh> Sender<T> {
    /// Queues `item` unless the queue is full or closed, and returns whether the queue is now
    /// more than half full (in items or bytes). Never waits.
    pub fn try_send(&self, item: T) -> Result<bool, TrySendError> {
        let bytes = item.bytes();
        let mut state = self.0.lock();
        if state.closed {
            return Err(TrySendError::Closed);
        }
        // An empty queue takes one item of any size: a bound smaller than the largest item
        // must not make that item undeliverable.
        let over_bytes = state.bytes + bytes > self.0.byte_capacity && state.bytes > 0;
        if state.items.len() >= self.0.capacity || over_bytes {
            return Err(TrySendError::Full);
        }
        state.items.push_back(item);
        state.bytes += bytes;
        let half_full =
            state.items.len() * 2 > self.0.capacity || state.bytes * 2 > self.0.byte_capacity;
        // The writer only waits when the queue is empty, so it is the first item that finds its
        // waker (or a later one, if the writer stopped waiting for another reason: one
        // spurious wake-up).
        let waiting = state.waiting.take();
        drop(state);
        if let Some(waker) = waiting {
            waker.wake();
        }
        Ok(half_full)
    }

    /// Queues `item` as the last one and closes the queue, full or not: for the final close
    /// frame of a client that is being disconnected. Dropping the oldest waiting items if full
    /// keeps the bounds.
    pub fn send_last(&self, item: T) {
        let bytes = item.bytes();
        let mut state = self.0.lock();
        if !state.closed {
            while state.items.len() >= self.0.capacity
                || state.bytes + bytes > self.0.byte_capacity && !state.items.is_empty()
            {
                let Some(dropped) = state.items.pop_front() else {
                    break;
                };
                state.bytes -= dropped.bytes();
            }
            state.bytes += bytes;
            state.items.push_back(item);
            state.closed = true;
        }
        let waiting = state.waiting.take();
        drop(state);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// The most items that may wait.
    pub fn capacity(&self) -> usize {
        self.0.capacity
    }

    /// Bytes waiting or held by the consumer now.
    pub fn bytes(&self) -> usize {
        self.0.lock().bytes
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.0.lock().items.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the queue is closed (by either end).
    pub fn is_closed(&self) -> bool {
        self.0.lock().closed
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.0.capacity)
            .finish_non_exhaustive()
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl<T> Receiver<T> {
    /// Waits until items are queued, then moves all of them into `batch` (which should be
    /// empty; its capacity is handed to the queue in exchange). Returns false, with `batch`
    /// left empty, once the queue is closed and drained.
    pub async fn recv_batch(&self, batch: &mut VecDeque<T>) -> bool {
        self.release_and_recv_batch(0, batch).await
    }

    /// [`Receiver::release`]s `written` bytes, then [`Receiver::recv_batch`]: a writer's loop
    /// takes the lock once per batch instead of twice.
    pub async fn release_and_recv_batch(&self, written: usize, batch: &mut VecDeque<T>) -> bool {
        let mut written = written;
        std::future::poll_fn(|cx| self.poll_release_and_recv_batch(cx, &mut written, batch)).await
    }

    /// The poll behind [`Receiver::release_and_recv_batch`], for a writer that waits for its
    /// queue and other things in one poll: releases `written` bytes (and zeroes it, so that
    /// they are released once), then takes every queued item into `batch` (swapped if
    /// `batch` is empty, appended if not), or registers the waker. `Ready(false)` once the
    /// queue is closed and drained.
    pub fn poll_release_and_recv_batch(
        &self,
        cx: &mut Context<'_>,
        written: &mut usize,
        batch: &mut VecDeque<T>,
    ) -> Poll<bool> {
        let mut state = self.0.lock();
        state.bytes = state.bytes.saturating_sub(std::mem::take(written));
        if !state.items.is_empty() {
            if batch.is_empty() {
                std::mem::swap(&mut state.items, batch);
            } else {
                batch.extend(state.items.drain(..));
            }
            return Poll::Ready(true);
        }
        if state.closed {
            return Poll::Ready(false);
        }
        // Checked and registered under one lock: no item can slip in between.
        if !state
            .waiting
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waiting = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Reports `bytes` of items taken with [`Receiver::recv_batch`] as written: they no longer
    /// count against the queue's byte bound.
    pub fn release(&self, bytes: usize) {
        let mut state = self.0.lock();
        state.bytes = state.bytes.saturating_sub(bytes);
    }

    /// Moves whatever is waiting to the end of `batch`, without waiting.
    pub fn append_to(&self, batch: &mut VecDeque<T>) {
        batch.extend(self.0.lock().items.drain(..));
    }

    /// Takes one item if one is waiting, without waiting; it no longer counts as queued.
    pub fn try_recv(&self) -> Option<T>
    where
        T: Weigh,
    {
        let mut state = self.0.lock();
        let item = state.items.pop_front()?;
        state.bytes -= item.bytes();
        Some(item)
    }

    /// True once the queue is closed (by either end).
    pub fn is_closed(&self) -> bool {
        self.0.lock().closed
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    /// Test items weigh their value in bytes.
    impl Weigh for i32 {
        fn bytes(&self) -> usize {
            *self as usize
        }
    }
    impl Weigh for u8 {
        fn bytes(&self) -> usize {
            1
        }
    }

    #[test]
    fn bytes_count_until_the_writer_releases_them() {
        let (tx, rx) = bounded(100, 10);
        assert_eq!(tx.try_send(4), Ok(false));
        assert_eq!(tx.try_send(4), Ok(true), "8 of 10 bytes is over half");
        assert_eq!(tx.try_send(3), Err(TrySendError::Full), "11 bytes > 10");
        let mut batch = VecDeque::new();
        assert!(block_on(rx.recv_batch(&mut batch)));
        assert_eq!(
            tx.try_send(3),
            Err(TrySendError::Full),
            "what the writer holds still counts"
        );
        rx.release(8);
        assert_eq!(tx.try_send(3), Ok(false));
        assert_eq!(tx.bytes(), 3);
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(
            tx.try_send(50),
            Ok(true),
            "an empty queue takes one item of any size"
        );
        assert_eq!(tx.try_send(1), Err(TrySendError::Full));
        assert_eq!(rx.try_recv(), Some(50));
        tx.send_last(9);
        assert_eq!(rx.try_recv(), Some(9), "the oldest went to make room");
    }

    #[test]
    fn bounded_batches_and_closes() {
        let (tx, rx) = bounded(3, 1000);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(9), Err(TrySendError::Full));
        let mut batch = VecDeque::new();
        assert!(block_on(rx.recv_batch(&mut batch)));
        assert_eq!(batch, [0, 1, 2]);
        batch.clear();
        tx.try_send(3).unwrap();
        drop(tx);
        assert!(
            block_on(rx.recv_batch(&mut batch)),
            "items queued before close still arrive"
        );
        assert_eq!(batch, [3]);
        batch.clear();
        assert!(!block_on(rx.recv_batch(&mut batch)));
    }

    #[test]
    fn send_last_fits_in_a_full_queue_and_closes_it() {
        let (tx, rx) = bounded(2, 1000);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        tx.send_last(99);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(5), Err(TrySendError::Closed));
        let mut batch = VecDeque::new();
        assert!(block_on(rx.recv_batch(&mut batch)));
        assert_eq!(batch, [2, 99]);
    }

    #[test]
    fn a_waiting_receiver_wakes_for_an_item_from_another_thread() {
        let (tx, rx) = bounded(4, 1000);
        let t = std::thread::spawn(move || {
            tx.try_send(7).unwrap();
            tx
        });
        let mut batch = VecDeque::new();
        assert!(block_on(rx.recv_batch(&mut batch)));
        assert_eq!(batch, [7]);
        drop(t.join().unwrap());
        batch.clear();
        assert!(!block_on(rx.recv_batch(&mut batch)));
        drop(rx);
    }

    #[test]
    fn dropping_the_receiver_closes_for_the_sender() {
        let (tx, rx) = bounded::<u8>(1, 1000);
        drop(rx);
        assert_eq!(tx.try_send(1), Err(TrySendError::Closed));
    }
}
