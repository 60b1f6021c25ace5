//! `rooms`: a page of the server's rooms, sorted by name, with their member counts.
//!
//! In: `{"type":"rooms","offset":N}`. The authority lists a page of every room
//! ([`Ask::Rooms`]); for a client whose token limits the rooms it may see, it says only which
//! of the claim's rooms exist ([`Ask::Sizes`]) and the page is cut here, so the client learns
//! nothing of the others. Out: the `rooms` event, with `next` when there is another page.

use super::{Hub, MAX_OFFSET};
use crate::authority::{Answer, Ask};
use crate::protocol::{Error, Event, ROOMS_PAGE, RoomSummary, Wire};

impl Hub {
    /// Client `key` asks for the page of rooms from `offset`.
    pub(in crate::hub) fn rooms(&mut self, key: usize, wire: Wire) -> Result<(), Error> {
        let offset = wire.offset.unwrap_or(0).min(MAX_OFFSET);
        let (ask, limited) = match self.clients[key].access.rooms() {
            Some(rooms) => (Ask::Sizes(rooms.to_vec()), true),
            None => (Ask::Rooms { offset }, false),
        };
        self.ask(key, ask, move |hub, key, answer| match answer {
            Answer::Rooms { count, page } => {
                let (count, page) = match limited {
                    true => {
                        let end = page.len().min(offset.saturating_add(ROOMS_PAGE));
                        (page.len(), page.get(offset..end).unwrap_or_default())
                    }
                    false => (count, &page[..]),
                };
                let rooms = RoomSummary::page(page);
                hub.send(key, &Event::rooms_page(rooms, count, offset));
            }
            other => hub.unfit(key, other),
        });
        Ok(())
    }
}
