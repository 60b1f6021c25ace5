//! `who`: a page of a room's members.
//!
//! In: `{"type":"who","room":R,"offset":N}`. The hub checks the token's claim (a room outside
//! it reads the same whether it exists or not); the authority lists at most
//! `--presence-limit` nicks from `offset`, in join order ([`Ask::Who`]). Out: the `members`
//! event, with `next` when there is another page.

use super::{Hub, MAX_OFFSET};
use crate::authority::{Answer, Ask};
use crate::protocol::{Error, Event, Wire, room_name};

impl Hub {
    /// Client `key` asks who is in `room`, from `offset`.
    pub(in crate::hub) fn who(&mut self, key: usize, wire: Wire) -> Result<(), Error> {
        let room = room_name(wire.room)?;
        self.clients[key].access.check(&room)?;
        let offset = wire.offset.unwrap_or(0).min(MAX_OFFSET);
        let ask = Ask::Who {
            room: room.clone(),
            offset,
        };
        self.ask(key, ask, move |hub, key, answer| match answer {
            Answer::Members { count, nicks } => {
                let end = offset.saturating_add(nicks.len());
                let frame = Event::Members {
                    room: &room,
                    members: nicks.iter().map(String::as_str).collect(),
                    count,
                    next: (end < count).then_some(end),
                }
                .encode();
                hub.send(key, &frame);
            }
            other => hub.unfit(key, other),
        });
        Ok(())
    }
}
