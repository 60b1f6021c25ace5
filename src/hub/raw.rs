//! The hub in raw mode (`--protocol raw`): the Go hub's protocol, on the hub's own rules.
//!
//! A client enters through [`Hub::connect_raw`], which registers it with the authority and
//! puts it in its group (a room named by the path `/ws/NAME`; `/ws` is the default room) under
//! the same rules as a `join` (the token's `rooms` claim, `--max-connections-per-user`, the
//! room limits), and sends it nothing: no welcome, no member list. It is registered before its
//! upgrade is answered, so a refusal is an HTTP status and a client whose handshake completed
//! hears every frame sent after it. Data frames
//! enter through [`Hub::publish`] and leave, as received, to every member of the group, the
//! sender included, in the order the hub took them. A received frame is already a
//! reference-counted buffer, so a delivery is a reference-count increment, exactly as for v1's
//! encoded events. Leaving, slow consumers and shutdown are the hub's ordinary paths; room
//! events are not delivered in raw mode, and the authority drops a group when its last member
//! goes. Raw mode runs on one node (`--redis` is refused with it), so the authority always
//! answers at once.

use super::{ClientId, Hub, Outgoing, Rejected, User};
use crate::authority::{Answer, Ask};
use crate::metrics::{Metrics, Refusal};
use crate::protocol::LeaveReason;
use crate::queue;

impl Hub {
    /// Registers a raw client and puts it in `group` (`None`: the default room), under the
    /// same rules as a `join`: the token's `rooms` claim, `--max-connections-per-user`, the
    /// room limits. A client they refuse is forgotten at once and [`Rejected`]: its upgrade
    /// is answered with an HTTP status instead of the `101`.
    pub fn connect_raw(
        &mut self,
        queue: queue::Sender<Outgoing>,
        address: super::Address,
        group: Option<String>,
        user: Option<User>,
    ) -> Result<ClientId, Rejected> {
        let group = group.unwrap_or_else(|| self.config.default_room.clone());
        let id = self.register(queue, address, user.as_ref());
        if let Err(refused) = self.clients[id.key].access.check(&group) {
            self.metrics.refuse(Refusal::Forbidden);
            self.clients.remove(id.key);
            return Err(Rejected::Forbidden(refused.message));
        }
        let register = Ask::Register {
            address,
            named: false,
            user: user.map(|u| u.name),
        };
        match self.authority.ask(id, register, &mut self.events) {
            Some(Answer::Registered(_)) => {}
            // The only refusal of a registration: the user's connections.
            Some(Answer::Refused(error)) => {
                self.metrics.refuse(Refusal::UserConnections);
                self.clients.remove(id.key);
                return Err(Rejected::UserLimit(error.message));
            }
            // Raw mode runs on the local authority, which answers at once; anything else is
            // a backend that cannot take the client now.
            _ => {
                self.clients.remove(id.key);
                return Err(Rejected::Busy("the chat backend is unavailable".into()));
            }
        }
        let join = Ask::Join {
            room: group.clone(),
            since: None,
            epoch: None,
        };
        let joined = self.authority.ask(id, join, &mut self.events);
        self.events.clear(); // raw clients are told nothing about their group
        if let Some(Answer::Refused(error)) = joined {
            self.metrics.refuse(Refusal::RoomLimit);
            self.authority
                .bye(id, LeaveReason::Disconnected, &mut self.events);
            self.events.clear();
            self.clients.remove(id.key);
            return Err(Rejected::Busy(error.message));
        }
        self.clients[id.key].rooms.push(group.clone());
        self.audiences.entry(group).or_default().enter(id.key);
        Ok(id)
    }

    /// Sends `item` to every member of the group of client `key`, the sender included.
    pub(super) fn publish(&mut self, key: usize, item: Outgoing) {
        let Some(group) = self.clients[key].rooms.first() else {
            return;
        };
        Metrics::add(&self.metrics.messages_received, 1);
        let members = self.audiences[group].members();
        for &k in members {
            let sent = self.clients[k].queue.try_send(item.clone());
            self.slow.note(k, sent, &self.metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::config::{Config, Protocol};
    use crate::hub::{Address, Command};
    use crate::protocol::Frame;

    fn raw_hub(change: impl FnOnce(&mut Config)) -> (Hub, Arc<Metrics>) {
        let mut config = Config {
            protocol: Protocol::Raw,
            ..Config::default()
        };
        change(&mut config);
        let metrics = Arc::new(Metrics::default());
        (Hub::new(Arc::new(config), metrics.clone()), metrics)
    }

    fn join(
        hub: &mut Hub,
        group: Option<&str>,
    ) -> (Result<ClientId, Rejected>, queue::Receiver<Outgoing>) {
        let (tx, rx) = queue::bounded(16, usize::MAX);
        let group = group.map(String::from);
        let id = hub.connect_raw(tx, Address::of("127.0.0.1:1"), group, None);
        (id, rx)
    }

    fn received(rx: &queue::Receiver<Outgoing>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|item| match item {
                Outgoing::Event(f) => format!("text:{}", f.as_str()),
                Outgoing::Binary(b) => format!("binary:{b:?}"),
                Outgoing::Close(code, _) => format!("close:{code}"),
            })
            .collect()
    }

    #[test]
    fn frames_reach_every_member_of_the_group_as_they_came() {
        let (mut hub, metrics) = raw_hub(|_| {});
        let (a, a_rx) = join(&mut hub, None);
        let a = a.unwrap();
        let (_b, b_rx) = join(&mut hub, None);
        let (_c, c_rx) = join(&mut hub, Some("ops"));
        assert!(received(&a_rx).is_empty(), "nothing is sent on connect");
        let text = Outgoing::Event(Frame::from("{\"not\": \"parsed\"}"));
        hub.handle(Command::Publish {
            client: a,
            item: text,
        });
        let binary = Outgoing::Binary(vec![0u8, 159, 146, 150].into());
        hub.handle(Command::Publish {
            client: a,
            item: binary,
        });
        let expected = [
            r#"text:{"not": "parsed"}"#,
            "binary:b\"\\0\\x9f\\x92\\x96\"",
        ];
        assert_eq!(received(&a_rx), expected, "the sender included");
        assert_eq!(received(&b_rx), expected);
        assert!(received(&c_rx).is_empty(), "groups are isolated");
        assert_eq!(metrics.rooms.load(Relaxed), 2);
    }

    #[test]
    fn groups_go_when_empty_and_their_limits_are_the_rooms() {
        let (mut hub, metrics) = raw_hub(|c| c.max_rooms = 1);
        let (a, _a_rx) = join(&mut hub, Some("one"));
        let (b, b_rx) = join(&mut hub, Some("two"));
        assert!(
            matches!(b, Err(Rejected::Busy(_))),
            "--max-rooms holds one group"
        );
        assert!(
            received(&b_rx).is_empty(),
            "refused before its upgrade: no close"
        );
        assert_eq!(hub.client_count(), 1, "the refused client is forgotten");
        hub.handle(Command::Disconnect {
            client: a.unwrap(),
            reason: crate::protocol::LeaveReason::Disconnected,
        });
        assert_eq!(metrics.rooms.load(Relaxed), 0, "the empty group is gone");
        let (_c, c_rx) = join(&mut hub, Some("two"));
        assert!(received(&c_rx).is_empty());
        assert_eq!(hub.client_count(), 1);
    }
}
