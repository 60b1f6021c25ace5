//! `leave`: leave a room.
//!
//! In: `{"type":"leave","room":R}`. The hub checks that the client is in the room; the
//! authority takes it out ([`Ask::Leave`]). Out: `leave` (reason `left`) to the room's other
//! members, the authority's room event; the client itself is sent nothing, or `not_member`.

use super::{Hub, not_member};
use crate::authority::{Answer, Ask};
use crate::protocol::{Error, Wire, room_name};

impl Hub {
    /// Client `key` leaves `room`.
    pub(in crate::hub) fn leave(&mut self, key: usize, wire: Wire) -> Result<(), Error> {
        let room = room_name(wire.room)?;
        if !self.clients[key].rooms.contains(&room) {
            return Err(not_member(&room));
        }
        self.ask(
            key,
            Ask::Leave(room.clone()),
            move |hub, key, answer| match answer {
                Answer::Left => {
                    hub.clients[key].rooms.retain(|r| *r != room);
                    if let Some(audience) = hub.audiences.get_mut(&room) {
                        audience.leave(key);
                    }
                    hub.drop_if_unused(&room);
                }
                Answer::NotMember => hub.send_error(key, not_member(&room)),
                other => hub.unfit(key, other),
            },
        );
        Ok(())
    }
}
