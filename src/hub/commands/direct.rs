//! `direct`: a private message to one nick.
//!
//! In: `{"type":"direct","to":N,"text":T}`. The authority finds whoever holds the nick
//! (ignoring case), if the sender's token lets it reach them ([`Ask::Direct`], `within`: see
//! `crate::access`). Out: the `direct` event, to every connection of the recipient and back
//! to the sender; recipients on other nodes get it through Redis (`Notice::Direct`, handled by
//! [`Hub::direct_from_elsewhere`]); or `unknown_recipient`, with the same text whether nobody
//! holds the nick or the sender may not reach it.

use super::{Hub, now_ms};
use crate::authority::{Answer, Ask, ClientId};
use crate::metrics::Metrics;
use crate::protocol::{Error, ErrorCode, Event, Wire, check_text, required, valid_nick};

impl Hub {
    /// Client `key` writes `text` to whoever holds nick `to`.
    pub(in crate::hub) fn direct(&mut self, key: usize, wire: Wire) -> Result<(), Error> {
        let to = required("to", wire.to)?;
        // A name no client can have is nobody's; refusing it here also keeps arbitrary bytes
        // out of the error message (found by fuzzing).
        if !valid_nick(&to) {
            return Err(Error::new(
                ErrorCode::UnknownRecipient,
                "nobody can have that nick: a nick is 1-32 letters, digits, '_', '-' or '.'",
            ));
        }
        let text = check_text(wire.text, self.config.max_message_bytes)?;
        Metrics::add(&self.metrics.messages_received, 1);
        let ts = now_ms();
        let ask = Ask::Direct {
            to: to.clone(),
            text: text.clone(),
            ts,
            within: self.clients[key].access.reach(),
        };
        self.ask(key, ask, move |hub, key, answer| match answer {
            Answer::Direct { to, targets } => {
                let frame = Event::Direct {
                    from: &hub.clients[key].nick,
                    to: &to,
                    text: &text,
                    ts,
                }
                .encode();
                // Every connection of the recipient on this node (a user may have several).
                for target in targets {
                    if let Some(target) = hub.key(target)
                        && target != key
                    {
                        hub.send(target, &frame);
                    }
                }
                hub.send(key, &frame);
            }
            Answer::UnknownRecipient => {
                let error = Error::new(
                    ErrorCode::UnknownRecipient,
                    format!("nobody is called {to:?}; `who` lists a room's members"),
                );
                hub.send_error(key, error);
            }
            other => hub.unfit(key, other),
        });
        Ok(())
    }

    /// A private message from a client of another node, for `target` here.
    pub(in crate::hub) fn direct_from_elsewhere(
        &mut self,
        target: ClientId,
        (from, to): (&str, &str),
        text: &str,
        ts: u64,
    ) {
        if let Some(key) = self.key(target) {
            let frame = Event::Direct { from, to, text, ts }.encode();
            self.send(key, &frame);
        }
    }
}
