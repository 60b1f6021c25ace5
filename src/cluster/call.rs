//! One question to Redis: the Lua script an [`Ask`] becomes, and its reply read back as an
//! [`Answer`] with the local authority's semantics.
//!
//! The bridge makes a [`Job`] for each question it takes (the connection, the asking client's
//! member id, a fresh epoch in case a join or a publish creates its room) and runs it beside
//! the others; the reply's Redis values are read with the small helpers at the end.
//!
//! The HTTP API's questions ([`Ask::Publish`], [`Ask::History`], and [`Ask::Rooms`], which
//! clients ask too, like [`Ask::Sizes`]) come from a slot of the hub that is no member: their scripts take no
//! member id, never find anyone "gone", and leave nothing behind for the slot.

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};

use super::scripts::Scripts;
use super::wire;
use crate::authority::{
    Address, Answer, Ask, History, Joined, address_holds_too_many, too_many_rooms,
    user_has_too_many,
};
use crate::config::Config;
use crate::protocol::ROOMS_PAGE;
use crate::room::Room;

/// What one question's call needs, owned, so that it runs beside the others.
pub(super) struct Job {
    pub(super) scripts: Arc<Scripts>,
    pub(super) conn: MultiplexedConnection,
    pub(super) config: Arc<Config>,
    pub(super) node: Arc<str>,
    /// The asking client's member id.
    pub(super) mid: String,
    /// For a join or a publish: the epoch of the room if it creates it.
    pub(super) epoch: String,
}

impl Job {
    /// Runs the script for `ask` and reads its reply as the answer, with the semantics of the
    /// local authority (see [`crate::authority::local`]): one method per question.
    pub(super) async fn run(mut self, ask: Ask) -> RedisResult<Answer> {
        match ask {
            Ask::Register { address, user, .. } => self.register(address, user).await,
            Ask::Nick(nick) => self.nick(&nick).await,
            Ask::Join { room, since, epoch } => self.join(&room, since, epoch).await,
            Ask::Leave(room) => self.leave(&room).await,
            Ask::Say { room, text, ts } => self.say(&room, &text, ts).await,
            Ask::Direct {
                to,
                text,
                ts,
                within,
            } => self.direct(&to, &text, ts, within).await,
            Ask::Who { room, offset } => self.who(&room, offset).await,
            Ask::Publish {
                room,
                from,
                text,
                ts,
            } => self.publish(&room, &from, &text, ts).await,
            Ask::History { room, since } => self.history(&room, since).await,
            Ask::Sizes(names) => self.sizes(&names).await,
            Ask::Rooms { offset } => self.rooms(offset).await,
        }
    }

    async fn register(&mut self, address: Address, user: Option<String>) -> RedisResult<Answer> {
        let max = self.config.max_connections_per_user;
        let mut call = self.scripts.register.prepare_invoke();
        call.arg(&self.mid)
            .arg(&*self.node)
            .arg(address.value().to_string())
            .arg(user.as_deref().unwrap_or(""))
            .arg(max);
        Ok(
            match call.invoke_async::<Option<String>>(&mut self.conn).await? {
                Some(nick) => Answer::Registered(nick),
                None => Answer::Refused(user_has_too_many(max)),
            },
        )
    }

    async fn nick(&mut self, nick: &str) -> RedisResult<Answer> {
        let mut call = self.scripts.nick.prepare_invoke();
        call.arg(&self.mid).arg(nick);
        let v = items(call.invoke_async(&mut self.conn).await?);
        Ok(match text(v.first()).as_str() {
            "ok" => Answer::Renamed {
                old: text(v.get(1)),
            },
            "taken" => Answer::NickTaken,
            _ => Answer::Gone,
        })
    }

    async fn join(
        &mut self,
        room: &str,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> RedisResult<Answer> {
        let config = &self.config;
        let mut call = self.scripts.join.prepare_invoke();
        call.arg(&self.mid)
            .arg(room)
            .arg(&self.epoch)
            .arg(config.presence_limit)
            .arg(&config.default_room)
            .arg(config.max_rooms)
            .arg(config.max_rooms_per_address);
        let v = items(call.invoke_async(&mut self.conn).await?);
        Ok(match text(v.first()).as_str() {
            "ok" => {
                let room_epoch = text(v.get(1));
                let last_id = int(v.get(2));
                let history = wire::history(room, last_id, &texts(v.get(6)));
                let restored = Room::restored(room_epoch.clone(), last_id, history);
                let replay = restored.replay(since, epoch.as_deref());
                Answer::Joined(Joined {
                    epoch: room_epoch,
                    last_id,
                    ev: int(v.get(3)),
                    count: int(v.get(4)) as usize,
                    nicks: texts(v.get(5)),
                    replay: replay.messages.into_iter().cloned().collect(),
                    complete: replay.complete,
                })
            }
            "refused" if text(v.get(1)) == "address" => {
                Answer::Refused(address_holds_too_many(config.max_rooms_per_address))
            }
            "refused" => Answer::Refused(too_many_rooms(config.max_rooms)),
            _ => Answer::Gone,
        })
    }

    async fn leave(&mut self, room: &str) -> RedisResult<Answer> {
        let mut call = self.scripts.leave.prepare_invoke();
        call.arg(&self.mid).arg(room).arg(&self.config.default_room);
        let reply: String = call.invoke_async(&mut self.conn).await?;
        Ok(match reply.as_str() {
            "left" => Answer::Left,
            "not_member" => Answer::NotMember,
            _ => Answer::Gone,
        })
    }

    async fn say(&mut self, room: &str, text: &str, ts: u64) -> RedisResult<Answer> {
        let base = wire::message_base_size(room, text, ts, false);
        let mut call = self.scripts.say.prepare_invoke();
        call.arg(&self.mid)
            .arg(room)
            .arg(ts)
            .arg(text)
            .arg(base)
            .arg(self.config.history)
            .arg(self.config.history_bytes);
        Ok(match call.invoke_async::<i64>(&mut self.conn).await? {
            -1 => Answer::NotMember,
            id => match u64::try_from(id) {
                Ok(id) => Answer::Said {
                    room: room.to_string(),
                    id,
                },
                Err(_) => Answer::Gone,
            },
        })
    }

    async fn direct(
        &mut self,
        to: &str,
        text: &str,
        ts: u64,
        within: Option<Vec<String>>,
    ) -> RedisResult<Answer> {
        let mut call = self.scripts.direct.prepare_invoke();
        call.arg(&self.mid)
            .arg(to.to_ascii_lowercase())
            .arg(ts)
            .arg(text)
            .arg(if within.is_some() { "1" } else { "0" });
        for room in within.iter().flatten() {
            call.arg(room);
        }
        let v = items(call.invoke_async(&mut self.conn).await?);
        let node = &self.node;
        Ok(match self::text(v.first()).as_str() {
            "ok" => Answer::Direct {
                to: self::text(v.get(1)),
                // The recipient's connections on this node; the others got it through their
                // node's channel.
                targets: v
                    .iter()
                    .skip(2)
                    .filter_map(|mid| wire::local_client(node, &self::text(Some(mid))))
                    .collect(),
            },
            "unknown" => Answer::UnknownRecipient,
            _ => Answer::Gone,
        })
    }

    async fn who(&mut self, room: &str, offset: usize) -> RedisResult<Answer> {
        let (first, last) = ranks(offset, self.config.presence_limit as u64);
        let mut call = self.scripts.who.prepare_invoke();
        call.arg(&self.mid).arg(room).arg(first).arg(last);
        let v = items(call.invoke_async(&mut self.conn).await?);
        if text(v.first()) == "gone" {
            return Ok(Answer::Gone);
        }
        Ok(Answer::Members {
            count: int(v.first()) as usize,
            nicks: texts(v.get(1)),
        })
    }

    async fn publish(
        &mut self,
        room: &str,
        from: &str,
        text: &str,
        ts: u64,
    ) -> RedisResult<Answer> {
        let config = &self.config;
        let base = wire::message_base_size(room, text, ts, true);
        let mut call = self.scripts.publish.prepare_invoke();
        call.arg(room)
            .arg(ts)
            .arg(from)
            .arg(text)
            .arg(base)
            .arg(config.history)
            .arg(config.history_bytes)
            .arg(&config.default_room)
            .arg(config.max_rooms)
            .arg(&self.epoch);
        Ok(
            match u64::try_from(call.invoke_async::<i64>(&mut self.conn).await?) {
                Ok(id) => Answer::Said {
                    room: room.to_string(),
                    id,
                },
                Err(_) => Answer::Refused(too_many_rooms(config.max_rooms)),
            },
        )
    }

    async fn history(&mut self, room: &str, since: u64) -> RedisResult<Answer> {
        let mut call = self.scripts.state.prepare_invoke();
        call.arg(room);
        let v = items(call.invoke_async(&mut self.conn).await?);
        let epoch = text(v.first());
        if epoch.is_empty() {
            return Ok(Answer::History(None));
        }
        let last_id = int(v.get(1));
        let history = wire::history(room, last_id, &texts(v.get(3)));
        // The room's own epoch: a cursor is never from another life here.
        let restored = Room::restored(epoch.clone(), last_id, history);
        let replay = restored.replay(Some(since), Some(&epoch));
        Ok(Answer::History(Some(History {
            epoch,
            last_id,
            complete: replay.complete.unwrap_or(true),
            messages: replay.messages.into_iter().cloned().collect(),
        })))
    }

    async fn sizes(&mut self, names: &[String]) -> RedisResult<Answer> {
        let mut call = self.scripts.sizes.prepare_invoke();
        for name in names {
            call.arg(name);
        }
        let v = items(call.invoke_async(&mut self.conn).await?);
        let counts = v.get(1).cloned().map(items).unwrap_or_default();
        let page: Vec<(String, usize)> = texts(v.first())
            .into_iter()
            .zip(counts.iter().map(|c| int(Some(c)) as usize))
            .collect();
        Ok(Answer::Rooms {
            count: page.len(),
            page,
        })
    }

    async fn rooms(&mut self, offset: usize) -> RedisResult<Answer> {
        let (first, last) = ranks(offset, ROOMS_PAGE as u64);
        let mut call = self.scripts.rooms.prepare_invoke();
        call.arg(first).arg(last);
        let v = items(call.invoke_async(&mut self.conn).await?);
        let counts = v.get(2).cloned().map(items).unwrap_or_default();
        Ok(Answer::Rooms {
            count: int(v.first()) as usize,
            page: texts(v.get(1))
                .into_iter()
                .zip(counts.iter().map(|c| int(Some(c)) as usize))
                .collect(),
        })
    }
}

/// The first and last rank of a page of `size` from `offset`, as integers Redis takes (never
/// past `i64::MAX`, never a float in Lua: the scripts pass them on as they are). A page of 0
/// is a range Redis finds empty.
pub(super) fn ranks(offset: usize, size: u64) -> (u64, u64) {
    let first = (offset as u64).min(u32::MAX as u64);
    match size {
        0 => (1, 0),
        _ => (first, first + size - 1),
    }
}

pub(super) fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

pub(super) fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(n)) => n.to_string(),
        _ => String::new(),
    }
}

pub(super) fn int(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// A reply's list of strings.
pub(super) fn texts(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items) | Value::Set(items)) => {
            items.iter().map(|item| text(Some(item))).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_never_reach_a_float() {
        assert_eq!(ranks(0, 50), (0, 49));
        assert_eq!(ranks(0, 0), (1, 0), "empty, not ZRANGE 0 -1 (everything)");
        assert_eq!(
            ranks(usize::MAX, 100),
            (u32::MAX as u64, u32::MAX as u64 + 99)
        );
    }
}
