//! The hub in raw mode (`--protocol raw`): the Go hub's protocol, on the hub's own rules.
//!
//! A client enters through [`Hub::connect_raw`], which registers it with the authority and
//! puts it in its group (a room named by the path `/ws/NAME`; `/ws` is the default room) under
//! the same limits as a `join`, and sends it nothing: no welcome, no member list. Data frames
//! enter through [`Hub::publish`] and leave, as received, to every member of the group, the
//! sender included, in the order the hub took them. A received frame is already a
//! reference-counted buffer, so a delivery is a reference-count increment, exactly as for v1's
//! encoded events. Leaving, slow consumers and shutdown are the hub's ordinary paths; room
//! events are not delivered in raw mode, and the authority drops a group when its last member
//! goes. Raw mode runs on one node (`--redis` is refused with it), so the authority always
//! answers at once.

use super::{ClientId, Hub, Outgoing, deliver_item};
use crate::authority::{Answer, Ask};
use crate::metrics::Metrics;
use crate::protocol::LeaveReason;
use crate::queue;

/// Close code and reason for a client whose group cannot be created (`--max-rooms`,
/// `--max-rooms-per-address`): try again later.
pub const GROUP_LIMIT_CLOSE: (u16, &str) = (1013, "group limit reached");

impl Hub {
    /// Registers a raw client and puts it in `group` (`None`: the default room). A client
    /// whose group cannot be created is closed with 1013, "group limit reached".
    pub fn connect_raw(
        &mut self,
        queue: queue::Sender<Outgoing>,
        address: super::Address,
        group: Option<String>,
    ) -> ClientId {
        let id = self.register(queue, address);
        let group = group.unwrap_or_else(|| self.config.default_room.clone());
        let register = Ask::Register {
            address,
            named: false,
            user: None,
        };
        let registered = self.authority.ask(id, register, &mut self.events);
        let join = Ask::Join {
            room: group.clone(),
            since: None,
            epoch: None,
        };
        let joined = match registered {
            Some(Answer::Registered(_)) => self.authority.ask(id, join, &mut self.events),
            other => other,
        };
        self.events.clear(); // raw clients are told nothing about their group
        match joined {
            Some(Answer::Joined(_)) => {
                self.clients[id.key].rooms.push(group.clone());
                self.audiences
                    .entry(group)
                    .or_default()
                    .members
                    .push(id.key);
            }
            _ => self.close(id.key, GROUP_LIMIT_CLOSE, LeaveReason::Disconnected),
        }
        id
    }

    /// Sends `item` to every member of the group of client `key`, the sender included.
    pub(super) fn publish(&mut self, key: usize, item: Outgoing) {
        let Some(group) = self.clients[key].rooms.first() else {
            return;
        };
        Metrics::add(&self.metrics.messages_received, 1);
        let members = &self.audiences[group].members;
        for &k in members {
            deliver_item(
                &self.clients,
                &mut self.slow,
                &self.metrics,
                k,
                item.clone(),
            );
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

    fn join(hub: &mut Hub, group: Option<&str>) -> (ClientId, queue::Receiver<Outgoing>) {
        let (tx, rx) = queue::bounded(16, usize::MAX);
        let id = hub.connect_raw(tx, Address::of("127.0.0.1:1"), group.map(String::from));
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
        let (_b, b_rx) = join(&mut hub, Some("two"));
        assert_eq!(
            received(&b_rx),
            ["close:1013"],
            "--max-rooms holds one group"
        );
        hub.handle(Command::Disconnect {
            client: a,
            reason: crate::protocol::LeaveReason::Disconnected,
        });
        assert_eq!(metrics.rooms.load(Relaxed), 0, "the empty group is gone");
        let (_c, c_rx) = join(&mut hub, Some("two"));
        assert!(received(&c_rx).is_empty());
        assert_eq!(hub.client_count(), 1);
    }
}
