//! `nick`: change the client's nick.
//!
//! In: `{"type":"nick","nick":N}`, checked against the naming rules here. The hub refuses it
//! when names come from tokens; the authority gives the nick if nobody else holds it, ignoring
//! case ([`Ask::Nick`]). Out: the `nick` event to the client, and to everyone who shares a room
//! with it (the authority's room events, heard once however many rooms are shared); or
//! `nick_taken`.

use super::Hub;
use crate::authority::{Answer, Ask};
use crate::protocol::{Error, ErrorCode, Event, Wire, required, valid_nick};

impl Hub {
    /// Client `key` asks to be called `nick`.
    pub(in crate::hub) fn nick(&mut self, key: usize, wire: Wire) -> Result<(), Error> {
        let nick = required("nick", wire.nick)?;
        if !valid_nick(&nick) {
            return Err(Error::new(
                ErrorCode::InvalidNick,
                "a nick is 1-32 characters: letters, digits, '_', '-' or '.'",
            ));
        }
        if self.config.names_from_tokens() {
            // A user's name is its token's; a guest may not take a name a user could have.
            return Err(Error::new(
                ErrorCode::Forbidden,
                "names come from tokens on this server; renaming is not allowed",
            ));
        }
        self.ask(
            key,
            Ask::Nick(nick.clone()),
            move |hub, key, answer| match answer {
                Answer::Renamed { old } => {
                    hub.clients[key].nick = nick;
                    let frame = Event::Nick {
                        old: &old,
                        nick: &hub.clients[key].nick,
                    }
                    .encode();
                    hub.send(key, &frame);
                }
                Answer::NickTaken => {
                    let error = Error::new(
                        ErrorCode::NickTaken,
                        format!("the nick {nick:?} is taken; choose another"),
                    );
                    hub.send_error(key, error);
                }
                other => hub.unfit(key, other),
            },
        );
        Ok(())
    }
}
