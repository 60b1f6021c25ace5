//! The database under [`crate::store`]: redb, a pure-Rust embedded key-value store with
//! crash-safe transactions (copy-on-write B-trees and a checksummed commit slot: a commit
//! is there whole after a crash or power loss, or not at all). See docs/durability.md for why
//! redb, and what the others cost.
//!
//! Two tables in one file, `history.redb` in `--data-dir`:
//!
//! | table | key | value |
//! |---|---|---|
//! | `rooms` | room name | last id, reserved, floor (u64 LE each), epoch |
//! | `messages` | room name, 0x00, id (u64 BE) | server-wide order (u64 LE), encoded event |
//! | `meta` | `starts` | how many times the store was opened (u64 LE) |
//!
//! Room names hold no 0x00 (see `protocol::valid_room`), and big-endian ids sort as numbers,
//! so a room's messages are one key range, oldest first.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, Saved};
use crate::protocol::Frame;

const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file in `--data-dir`.
pub const FILE: &str = "history.redb";

/// An open store file.
pub struct Database {
    db: redb::Database,
    path: PathBuf,
}

impl Database {
    /// Opens `dir/history.redb`, creating the directory (0700) and the file (0600) if need
    /// be. The error names the file and says what to do.
    pub fn open(dir: &Path) -> Result<Database, String> {
        create_private_dir(dir)?;
        let path = dir.join(FILE);
        let shown = path.display();
        let created = !path.exists();
        // A small page cache: the server reads the file once, at start-up.
        let db = redb::Database::builder()
            .set_cache_size(1 << 20)
            .create(&path)
            .map_err(|e| {
                format!(
                    "cannot open the history store {shown}: {e}. If the file is damaged, move \
                     it aside (the server then starts with no history); if the disk is full or \
                     read-only, make room or fix the permissions"
                )
            })?;
        if created {
            restrict(&path)?;
        }
        let write = db.begin_write().map_err(|e| format!("{shown}: {e}"))?;
        {
            write
                .open_table(ROOMS)
                .map_err(|e| format!("{shown}: {e}"))?;
            write
                .open_table(MESSAGES)
                .map_err(|e| format!("{shown}: {e}"))?;
        }
        write.commit().map_err(|e| format!("{shown}: {e}"))?;
        Ok(Database { db, path })
    }

    /// Every room the file holds, with its messages.
    pub fn load(&mut self) -> Result<Vec<Saved>, String> {
        let shown = self.path.display().to_string();
        let fail = |e: &dyn std::fmt::Display| format!("cannot read {shown}: {e}");
        let read = self.db.begin_read().map_err(|e| fail(&e))?;
        let rooms = read.open_table(ROOMS).map_err(|e| fail(&e))?;
        let messages = read.open_table(MESSAGES).map_err(|e| fail(&e))?;
        let mut saved = Vec::new();
        for row in rooms.iter().map_err(|e| fail(&e))? {
            let (name, value) = row.map_err(|e| fail(&e))?;
            let (last_id, reserved, floor, epoch) =
                decode_room(value.value()).ok_or_else(|| {
                    fail(&format_args!(
                        "room {:?} has a malformed record",
                        name.value()
                    ))
                })?;
            let name = name.value().to_string();
            let mut kept = Vec::new();
            let (from, to) = range(&name);
            for row in messages
                .range(from.as_slice()..to.as_slice())
                .map_err(|e| fail(&e))?
            {
                let (key, value) = row.map_err(|e| fail(&e))?;
                let (key, value) = (key.value(), value.value());
                let id = key
                    .get(key.len().saturating_sub(8)..)
                    .and_then(|b| Some(u64::from_be_bytes(b.try_into().ok()?)));
                let seq = value
                    .get(..8)
                    .and_then(|b| Some(u64::from_le_bytes(b.try_into().ok()?)));
                let text = std::str::from_utf8(value.get(8..).unwrap_or_default()).ok();
                let (Some(id), Some(seq), Some(text)) = (id, seq, text) else {
                    return Err(fail(&format_args!(
                        "a message of room {name:?} is malformed"
                    )));
                };
                kept.push((id, seq, Frame::from(text)));
            }
            saved.push(Saved {
                name,
                epoch,
                last_id,
                reserved,
                floor,
                messages: kept,
            });
        }
        Ok(saved)
    }

    /// Makes every hole a crash left permanent, before anything new is said: a room whose
    /// reservation is above its last committed id goes on after the reservation, and the
    /// reservation becomes its floor (ids up to it may have named lost messages). Updates
    /// `saved` to match.
    pub fn settle(&mut self, saved: &mut [Saved]) -> Result<(), String> {
        let holed: Vec<&mut Saved> = saved
            .iter_mut()
            .filter(|r| r.reserved > r.last_id)
            .collect();
        if holed.is_empty() {
            return Ok(());
        }
        let write = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut rooms = write.open_table(ROOMS).map_err(|e| e.to_string())?;
            for room in holed {
                room.floor = room.floor.max(room.reserved);
                room.last_id = room.reserved;
                let value = encode_room(room.last_id, room.reserved, room.floor, &room.epoch);
                rooms
                    .insert(room.name.as_str(), value.as_slice())
                    .map_err(|e| e.to_string())?;
            }
        }
        write.commit().map_err(|e| e.to_string())
    }

    /// Counts this start in the store and returns the count: part of every new room's epoch,
    /// so that epochs differ across starts even on a device whose clock starts from the same
    /// time at every boot.
    pub fn count_start(&mut self) -> Result<u64, String> {
        let write = self.db.begin_write().map_err(|e| e.to_string())?;
        let starts = {
            let mut meta = write.open_table(META).map_err(|e| e.to_string())?;
            let starts = meta
                .get("starts")
                .map_err(|e| e.to_string())?
                .map_or(0, |v| v.value())
                + 1;
            meta.insert("starts", starts).map_err(|e| e.to_string())?;
            starts
        };
        write.commit().map_err(|e| e.to_string())?;
        Ok(starts)
    }

    /// Applies `batch` in one durable transaction.
    pub fn commit(&mut self, batch: &Batch) -> Result<(), String> {
        let write = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut rooms = write.open_table(ROOMS).map_err(|e| e.to_string())?;
            let mut messages = write.open_table(MESSAGES).map_err(|e| e.to_string())?;
            for (name, change) in &batch.rooms {
                let (from, to) = range(name);
                let old = rooms
                    .get(name.as_str())
                    .map_err(|e| e.to_string())?
                    .and_then(|v| decode_room(v.value()));
                let (mut last_id, mut reserved, mut floor, mut epoch) = old.unwrap_or_default();
                if change.dropped {
                    rooms.remove(name.as_str()).map_err(|e| e.to_string())?;
                    messages
                        .retain_in(from.as_slice()..to.as_slice(), |_, _| false)
                        .map_err(|e| e.to_string())?;
                    (last_id, reserved, floor, epoch) = Default::default();
                }
                // A new room, or a new life of a restored one: its ids go on (a dropped room's
                // were reset above).
                if let Some(new) = &change.epoch {
                    epoch = new.clone();
                }
                if change.dropped && change.epoch.is_none() {
                    continue;
                }
                for (&id, (seq, frame)) in &change.puts {
                    let mut value = seq.to_le_bytes().to_vec();
                    value.extend_from_slice(frame.as_str().as_bytes());
                    let key = key(name, id);
                    messages
                        .insert(key.as_slice(), value.as_slice())
                        .map_err(|e| e.to_string())?;
                    last_id = last_id.max(id);
                }
                if change.trim_below > 0 {
                    let below = key(name, change.trim_below);
                    messages
                        .retain_in(from.as_slice()..below.as_slice(), |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                if let Some(grant) = change.reserved {
                    reserved = grant.up_to;
                }
                let value = encode_room(last_id, reserved, floor, &epoch);
                rooms
                    .insert(name.as_str(), value.as_slice())
                    .map_err(|e| e.to_string())?;
            }
        }
        write.commit().map_err(|e| e.to_string())
    }
}

/// A message's key: the room, 0x00, the id big-endian.
fn key(room: &str, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(room.len() + 9);
    key.extend_from_slice(room.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The keys of every message of `room`: from (room, 0x00) to (room, 0x01).
fn range(room: &str) -> (Vec<u8>, Vec<u8>) {
    let mut from = room.as_bytes().to_vec();
    from.push(0);
    let mut to = room.as_bytes().to_vec();
    to.push(1);
    (from, to)
}

fn encode_room(last_id: u64, reserved: u64, floor: u64, epoch: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(24 + epoch.len());
    value.extend_from_slice(&last_id.to_le_bytes());
    value.extend_from_slice(&reserved.to_le_bytes());
    value.extend_from_slice(&floor.to_le_bytes());
    value.extend_from_slice(epoch.as_bytes());
    value
}

fn decode_room(value: &[u8]) -> Option<(u64, u64, u64, String)> {
    let number = |at: usize| Some(u64::from_le_bytes(value.get(at..at + 8)?.try_into().ok()?));
    let (last_id, reserved, floor) = (number(0)?, number(8)?, number(16)?);
    let epoch = std::str::from_utf8(value.get(24..)?).ok()?.to_string();
    Some((last_id, reserved, floor, epoch))
}

/// Creates `dir` readable by the server's user only (0700), if it does not exist.
fn create_private_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| format!("cannot create --data-dir {}: {e}", dir.display()))
}

/// Makes a new store file readable by the server's user only (0600).
fn restrict(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(path, mode)
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    }
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Op;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("smolchat-db-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn rooms_and_messages_come_back_as_committed() {
        let dir = dir("roundtrip");
        let mut db = Database::open(&dir).unwrap();
        let mut batch = Batch::default();
        batch.add(Op::Create {
            room: "dev".into(),
            epoch: "e1".into(),
            reserved: None,
        });
        for id in 1..=4 {
            batch.add(Op::Put {
                room: "dev".into(),
                id,
                seq: 10 + id,
                frame: Frame::from(format!("message {id}")),
            });
        }
        batch.add(Op::Reserve {
            room: "dev".into(),
            grant: crate::store::Grant {
                up_to: 20,
                serial: 1,
            },
            urgent: false,
        });
        db.commit(&batch).unwrap();
        let mut trim = Batch::default();
        trim.add(Op::Trim {
            room: "dev".into(),
            below: 3,
        });
        trim.add(Op::Create {
            room: "ops".into(),
            epoch: "e2".into(),
            reserved: None,
        });
        db.commit(&trim).unwrap();
        drop(db);
        let saved = Database::open(&dir).unwrap().load().unwrap();
        assert_eq!(saved.len(), 2);
        let dev = &saved[0];
        assert_eq!((dev.name.as_str(), dev.epoch.as_str()), ("dev", "e1"));
        assert_eq!((dev.last_id, dev.reserved), (4, 20));
        let kept: Vec<(u64, u64, &str)> = dev
            .messages
            .iter()
            .map(|(i, s, f)| (*i, *s, f.as_str()))
            .collect();
        assert_eq!(kept, [(3, 13, "message 3"), (4, 14, "message 4")]);
        assert_eq!((saved[1].name.as_str(), saved[1].last_id), ("ops", 0));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join(FILE)), 0o600);
        }
        let mut gone = Batch::default();
        gone.add(Op::Drop { room: "dev".into() });
        let mut db = Database::open(&dir).unwrap();
        db.commit(&gone).unwrap();
        let saved = db.load().unwrap();
        assert_eq!(saved.len(), 1, "dev and its messages are gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
