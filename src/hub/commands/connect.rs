//! A new client's registration: the question a connection asks before any command.
//!
//! In: a v1 client's queue, address and user ([`Hub::connect`], from `Command::Connect`). The
//! hub gives it a slot; the authority gives it a nick (a guest's `guest-N`, or the user's
//! name), or refuses a user beyond `--max-connections-per-user` ([`Ask::Register`]). Out: the
//! `welcome` event, then the join of the default room (if the token allows it); or a
//! `forbidden` error and close 4002; or close 1011 when the authority cannot be asked.

use super::Hub;
use crate::authority::{Answer, Ask};
use crate::hub::{Address, ClientId, Outgoing, UNAVAILABLE_CLOSE, USER_LIMIT_CLOSE, User};
use crate::metrics::{Metrics, Refusal};
use crate::protocol::{Event, LeaveReason};
use crate::queue;

impl Hub {
    /// Registers a client and asks the authority for its nick (the user's name, for a user);
    /// its `welcome` and the join of the default room follow the answer.
    pub fn connect(
        &mut self,
        queue: queue::Sender<Outgoing>,
        address: Address,
        user: Option<User>,
    ) -> ClientId {
        let id = self.register(queue, address, user.as_ref());
        let ask = Ask::Register {
            address,
            named: true,
            user: user.map(|u| u.name),
        };
        self.ask(id.key, ask, Hub::registered);
        id
    }

    fn registered(&mut self, key: usize, answer: Answer) {
        let nick = match answer {
            Answer::Registered(nick) => nick,
            // The only refusal of a registration: the user's `--max-connections-per-user`.
            Answer::Refused(error) => {
                self.metrics.refuse(Refusal::UserConnections);
                self.send_error(key, error);
                return self.close(key, USER_LIMIT_CLOSE, LeaveReason::Disconnected);
            }
            // Without a nick there is nothing to chat with.
            other => {
                super::misfit(&other);
                Metrics::add(&self.metrics.backend_unavailable, 1);
                return self.close(key, UNAVAILABLE_CLOSE, LeaveReason::Disconnected);
            }
        };
        self.clients[key].nick = nick;
        let welcome = Event::Welcome {
            nick: &self.clients[key].nick,
            server: &self.server,
            limits: self.config.limits(),
        }
        .encode();
        self.send(key, &welcome);
        let room = &self.config.default_room;
        // A user whose token does not list the default room starts in no room.
        if self.clients[key].access.allows(room)
            && let Err(error) = self.enter(key, room.clone(), None, None)
        {
            self.send_error(key, error);
        }
    }
}
