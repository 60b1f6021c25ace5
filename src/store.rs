//! Durable history (`--data-dir`, feature `store`): each room's epoch, ids and messages, kept
//! on disk behind the in-memory history, so that a restarted server serves what it served
//! before.
//!
//! Memory stays the truth while the server runs: joins and replays never read the disk. What
//! the local authority changes enters here as [`Op`]s through [`Store::send`], which never
//! waits; a writer on a thread of its own ([`writer`]) gathers them for `--sync-interval` and
//! commits each batch as one transaction of the database ([`crate::store::db`]). What it
//! committed leaves as a [`Report`] on the hub's notice channel. At start-up, [`Store::open`]
//! reads every room back ([`Saved`]).
//!
//! **No id is given twice.** A crash loses what was said since the last commit, and those ids
//! may already have reached clients. So the authority gives an id only when the store has
//! *reserved* it: each room's `reserved` bound is committed before the ids under it are used
//! (in blocks, ahead of need, so a `say` waits for the disk only when a room's block runs
//! out, which is when a quiet room speaks again). A restarted server goes on after the
//! reservation, and the ids between the last committed message and it are a *hole* that may
//! have held lost messages: a client whose cursor is before it is told `complete: false`. A
//! room that fell quiet gives its unused reservation back in the next commit, so after a
//! crash in a quiet moment there is no hole and recovering clients get `complete: true`; a
//! clean stop gives back every reservation.

pub mod db;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::protocol::Frame;

/// A room as the store kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub name: String,
    pub epoch: String,
    /// The newest message id committed (0 before the first).
    pub last_id: u64,
    /// The most ids the server may have given; above `last_id` after a crash while the room
    /// was in use.
    pub reserved: u64,
    /// Ids up to this may have named messages a crash lost (the highest hole's end, kept
    /// across restarts): a cursor before it recovers `complete: false`. 0: none.
    pub floor: u64,
    /// The retained messages, oldest first: id, server-wide order, encoded event.
    pub messages: Vec<(u64, u64, Frame)>,
}

/// A change for the store, from the local authority.
#[derive(Debug)]
pub enum Op {
    /// A new room (or a new life of an evicted one), with its first reservation: in the same
    /// op, so that no commit can hold the room without it (ids given before the room is on
    /// disk die with it in a crash; once it is, the reservation covers them). A restored
    /// room's new epoch keeps its reservation (`None`).
    Create {
        room: String,
        epoch: String,
        reserved: Option<Grant>,
    },
    /// A message the room remembers.
    Put {
        room: String,
        id: u64,
        seq: u64,
        frame: Frame,
    },
    /// The room forgot its messages before `below`.
    Trim { room: String, below: u64 },
    /// The room may give ids up to the grant's (less than before: it gives back what it did
    /// not use). `urgent`: a `say` waits for it, so the batch is committed at once.
    Reserve {
        room: String,
        grant: Grant,
        urgent: bool,
    },
    /// The room is gone (evicted while empty).
    Drop { room: String },
    /// Nothing to write, but report after the next interval: the authority looks then at
    /// which rooms stayed quiet.
    Tick,
}

impl Op {
    /// What the op holds in memory while it waits for the writer.
    fn bytes(&self) -> usize {
        64 + match self {
            Op::Put { room, frame, .. } => room.len() + frame.len(),
            Op::Create { room, epoch, .. } => room.len() + epoch.len(),
            Op::Trim { room, .. } | Op::Reserve { room, .. } | Op::Drop { room } => room.len(),
            Op::Tick => 0,
        }
    }
}

/// A reservation of ids for a room: up to `up_to`, asked for as number `serial` (never
/// reused, across rooms and their lives, so a late report of an old one is told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub up_to: u64,
    pub serial: u64,
}

/// What a commit made durable, for the hub's authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Committed: these rooms' reservations now hold.
    Committed(Vec<(String, Grant)>),
    /// The commit failed (disk full, I/O error): nothing of it holds; the writer tries again.
    Failed(String),
}

/// The file an operator creates in `--data-dir` after restoring it from a backup: nothing in
/// a restored copy can tell it is old, and its rooms' ids may already have been given to
/// other messages since. At the next start every room begins a new epoch (keeping its
/// messages), so no id is given twice and clients with newer cursors are told `complete:
/// false`; then the file is removed.
pub const RESTORED: &str = "restored";

/// Gives every saved room a new epoch, committed before the server serves anything.
fn renew(database: &mut db::Database, saved: &mut [Saved]) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut batch = Batch::default();
    for room in saved.iter_mut() {
        room.epoch = format!("{}-r{now}", room.epoch);
        batch.add(Op::Create {
            room: room.name.clone(),
            epoch: room.epoch.clone(),
            reserved: None,
        });
    }
    database.commit(&batch)
}

/// The hub's handle on the store: where ops go. Dropping it ends the writer after its last
/// commit.
pub struct Store {
    ops: mpsc::Sender<Op>,
    /// Bytes of ops sent and not yet committed by the writer.
    queued: Arc<AtomicUsize>,
    /// Past this, the writer is too far behind; see [`Store::behind`].
    limit: usize,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Store {
    /// Opens (creating it 0700 if need be) the database in `dir` and reads every room back,
    /// then starts the writer, which hands each commit's [`Report`] to `report` (the hub's
    /// notice channel, wrapped by the caller: the store knows nothing of the hub). `limit`: the
    /// bytes of ops that may
    /// wait for the writer.
    pub fn open(
        dir: &str,
        interval: Duration,
        limit: usize,
        report: impl Fn(Report) + Send + 'static,
    ) -> Result<(Store, Vec<Saved>, u64), String> {
        let mut database = db::Database::open(&PathBuf::from(dir))?;
        let mut saved = database.load()?;
        // Holes a crash left (ids reserved beyond the last committed message) are kept on disk
        // as each room's floor before anything new is said, so a later commit cannot hide them.
        database.settle(&mut saved)?;
        let starts = database.count_start()?;
        let marker = PathBuf::from(dir).join(RESTORED);
        if marker.exists() {
            renew(&mut database, &mut saved)?;
            std::fs::remove_file(&marker)
                .map_err(|e| format!("cannot remove {}: {e}", marker.display()))?;
            log::warn!(
                "store: {} was there: every room starts a new epoch (restored from a backup)",
                marker.display()
            );
        }
        let (ops, received) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = {
            let queued = queued.clone();
            std::thread::Builder::new()
                .name("smolchat-store".into())
                .spawn(move || writer(database, received, queued, interval, report))
                .map_err(|e| format!("cannot start the store's writer: {e}"))?
        };
        let store = Store {
            ops,
            queued,
            limit,
            writer: Some(writer),
        };
        Ok((store, saved, starts))
    }

    /// Hands `op` to the writer; never waits.
    pub fn send(&self, op: Op) {
        self.queued.fetch_add(op.bytes(), Relaxed);
        let _ = self.ops.send(op);
    }

    /// True when more ops wait for the writer than `limit` allows (the disk is failing or far
    /// too slow): the authority then gives no id the store has not reserved, and stops
    /// asking for more until the writer catches up.
    pub fn behind(&self) -> bool {
        self.queued.load(Relaxed) > self.limit
    }

    /// Ends the writer after it committed everything sent so far (a clean stop).
    pub fn close(mut self) {
        if let Some(writer) = self.writer.take() {
            drop(std::mem::replace(&mut self.ops, mpsc::channel().0));
            let _ = writer.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            drop(std::mem::replace(&mut self.ops, mpsc::channel().0));
            let _ = writer.join();
        }
    }
}

/// The changes gathered for one commit, per room, in the order they must be applied.
#[derive(Debug, Default)]
pub struct Batch {
    pub rooms: BTreeMap<String, Change>,
}

/// One room's changes within a batch.
#[derive(Debug, Default)]
pub struct Change {
    /// Delete everything the store holds of the room first (it was dropped).
    pub dropped: bool,
    /// The room's (new) epoch, when it was created in this batch.
    pub epoch: Option<String>,
    pub puts: BTreeMap<u64, (u64, Frame)>,
    /// Forget messages before this id (0: nothing).
    pub trim_below: u64,
    pub reserved: Option<Grant>,
}

impl Batch {
    /// Adds `op`, folding it into what the batch already holds for its room: a message put
    /// and trimmed in the same batch is never written.
    pub fn add(&mut self, op: Op) {
        match op {
            Op::Create {
                room,
                epoch,
                reserved,
            } => {
                let change = self.rooms.entry(room).or_default();
                change.epoch = Some(epoch);
                change.reserved = reserved.or(change.reserved);
            }
            Op::Put {
                room,
                id,
                seq,
                frame,
            } => {
                let change = self.rooms.entry(room).or_default();
                change.puts.insert(id, (seq, frame));
            }
            Op::Trim { room, below } => {
                let change = self.rooms.entry(room).or_default();
                change.trim_below = change.trim_below.max(below);
                change.puts = change.puts.split_off(&below);
            }
            Op::Reserve { room, grant, .. } => {
                self.rooms.entry(room).or_default().reserved = Some(grant);
            }
            Op::Tick => {}
            Op::Drop { room } => {
                // Whatever came before in this batch is moot; a later Create starts afresh.
                self.rooms.insert(
                    room,
                    Change {
                        dropped: true,
                        ..Change::default()
                    },
                );
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// The reservations this batch makes durable.
    fn reserved(&self) -> Vec<(String, Grant)> {
        let reserved = self.rooms.iter();
        reserved
            .filter_map(|(room, c)| Some((room.clone(), c.reserved?)))
            .collect()
    }
}

/// The writer's loop: take ops, gather them for `interval` (or, for 0, as long as more are
/// waiting), commit, report; until the hub's handle is gone and everything is committed. A
/// failed commit is kept and tried again after `interval` (at least 100 ms), so a disk that
/// was full catches up once it has room.
fn writer(
    mut database: db::Database,
    ops: mpsc::Receiver<Op>,
    queued: Arc<AtomicUsize>,
    interval: Duration,
    report: impl Fn(Report),
) {
    let mut batch = Batch::default();
    // Bytes of the ops in `batch`: they count against the bound until committed, so a disk
    // that keeps failing cannot make the batch outgrow it.
    let mut held = 0;
    let take = |batch: &mut Batch, held: &mut usize, op: Op| -> bool {
        *held += op.bytes();
        let urgent = matches!(op, Op::Reserve { urgent: true, .. });
        batch.add(op);
        urgent
    };
    // Something was taken since the last report (a failed commit keeps its batch pending).
    let mut pending = false;
    let mut open = true;
    while open {
        // An urgent reservation (a `say` waits for it) is committed at once, without
        // gathering, even when it is what woke the writer.
        let mut urgent = false;
        if !pending {
            match ops.recv() {
                Ok(op) => {
                    urgent = take(&mut batch, &mut held, op);
                    pending = true;
                }
                Err(_) => break,
            }
        }
        // Gather: until the interval is over, an urgent reservation arrives, or (interval 0)
        // nothing more is waiting.
        let until = Instant::now() + interval;
        while !urgent {
            let next = match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => ops.recv_timeout(left),
                _ => ops.try_recv().map_err(|e| match e {
                    mpsc::TryRecvError::Empty => mpsc::RecvTimeoutError::Timeout,
                    mpsc::TryRecvError::Disconnected => mpsc::RecvTimeoutError::Disconnected,
                }),
            };
            match next {
                Ok(op) => urgent = take(&mut batch, &mut held, op),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        // An empty batch (only ticks) touches no disk: no writes while idle.
        let committed = match batch.is_empty() {
            true => Ok(()),
            false => database.commit(&batch),
        };
        let outcome = match committed {
            Ok(()) => {
                pending = false;
                queued.fetch_sub(std::mem::take(&mut held), Relaxed);
                Report::Committed(std::mem::take(&mut batch).reserved())
            }
            Err(e) => {
                log::error!("store: commit failed, trying again: {e}");
                std::thread::sleep(interval.max(Duration::from_millis(100)));
                Report::Failed(e)
            }
        };
        report(outcome);
        if !open && pending {
            // The hub is gone and the disk still fails: what is left is lost, and said so.
            log::error!("store: stopping with changes that could not be written");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(room: &str, id: u64) -> Op {
        Op::Put {
            room: room.into(),
            id,
            seq: id,
            frame: Frame::from(format!("m{id}")),
        }
    }

    #[test]
    fn a_batch_folds_each_rooms_changes() {
        let mut batch = Batch::default();
        for id in 1..=5 {
            batch.add(put("a", id));
        }
        batch.add(Op::Trim {
            room: "a".into(),
            below: 4,
        });
        batch.add(put("b", 1));
        batch.add(Op::Drop { room: "b".into() });
        batch.add(Op::Create {
            room: "b".into(),
            epoch: "e2".into(),
            reserved: Some(Grant {
                up_to: 32,
                serial: 2,
            }),
        });
        batch.add(Op::Reserve {
            room: "a".into(),
            grant: Grant {
                up_to: 9,
                serial: 1,
            },
            urgent: false,
        });
        let a = &batch.rooms["a"];
        assert_eq!(
            a.puts.keys().copied().collect::<Vec<_>>(),
            [4, 5],
            "1-3 never written"
        );
        assert_eq!((a.trim_below, a.reserved.map(|g| g.up_to)), (4, Some(9)));
        let b = &batch.rooms["b"];
        assert!(b.dropped && b.puts.is_empty());
        assert_eq!(b.epoch.as_deref(), Some("e2"));
        assert_eq!(
            batch.reserved(),
            [
                (
                    "a".to_string(),
                    Grant {
                        up_to: 9,
                        serial: 1
                    }
                ),
                (
                    "b".to_string(),
                    Grant {
                        up_to: 32,
                        serial: 2
                    }
                )
            ]
        );
    }
}
