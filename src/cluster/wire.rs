//! What travels through Redis as text: the payloads of the room and node channels, the
//! records of a room's history, and member ids. The Lua scripts write these as plain
//! space-separated fields with the free text last (they never build JSON); this module reads
//! them back into values ([`RoomEvent`], [`Direct`], frames) and is the only place that knows
//! their layout besides the scripts themselves.
//!
//! Data enters as a channel payload or a history record, exactly as a script wrote it, and
//! leaves as an authority value for the hub or, for history, as the `message` event encoded by
//! [`protocol::Event::encode`](crate::protocol::Event::encode): events are encoded in one
//! place, and ids travel as numbers, never spliced into text.
//!
//! Layouts (names and nicks never contain a space; `TEXT` may contain anything, spaces and
//! newlines included, and runs to the end). On the room channel every payload starts with
//! the room's epoch, `EPOCH EV ...`: the bridge reads it (a new one means the room changed
//! under this node) and hands the rest to [`room_event`]:
//!
//! | where | layout |
//! |---|---|
//! | room channel, message | `EV m ID TS MID NICK TEXT` |
//! | room channel, message from the HTTP API | `EV a ID TS NICK TEXT` (said by no member) |
//! | room channel, join | `EV j COUNT MID NICK` (members after) |
//! | room channel, leave | `EV l COUNT MID NICK REASON` (members before) |
//! | room channel, rename | `EV n COUNT MID TAG OLD NEW` |
//! | node channel, direct | `KEY.SERIAL TS FROM TO TEXT` |
//! | node channel, heartbeat echo | `beat` |
//! | history record | `ID TS SIZE NICK TEXT` (`SIZE`: bytes of the encoded event) |
//!
//! In a history record, the `NICK` of a message from the HTTP API is written with the prefix
//! [`API_MARK`] (nicks never contain `:`), so that its replay carries `"api": true` like the live
//! event; records of messages said by members keep the layout they always had.
//!
//! A member id (`MID`) is `NODE.KEY.SERIAL`: the node's id (random for every start) and the
//! hub's [`ClientId`].

use crate::authority::{ClientId, RoomEvent, What};
use crate::protocol::{Event, Frame, LeaveReason};

/// The prefix of a history record's `NICK` for a message published through the HTTP API (the
/// PUBLISH script writes it).
pub const API_MARK: &str = "api:";

/// The member id of this node's client `client`.
pub fn member_id(node: &str, client: ClientId) -> String {
    format!("{node}.{}.{}", client.key, client.serial)
}

/// The client of node `node` that member id `mid` names, if `mid` is one of that node's.
pub fn local_client(node: &str, mid: &str) -> Option<ClientId> {
    let rest = mid.strip_prefix(node)?.strip_prefix('.')?;
    client_id(rest)
}

/// `KEY.SERIAL` → the client id.
fn client_id(text: &str) -> Option<ClientId> {
    let (key, serial) = text.split_once('.')?;
    Some(ClientId {
        key: key.parse().ok()?,
        serial: serial.parse().ok()?,
    })
}

/// A payload of `room`'s channel as a room event; `node` is this node's id, so that events
/// about its own clients name them as `subject`. `None` for a payload no script writes.
pub fn room_event(room: &str, payload: &str, node: &str) -> Option<RoomEvent> {
    let (ev, rest) = payload.split_once(' ')?;
    let ev = ev.parse().ok()?;
    let (kind, rest) = rest.split_once(' ')?;
    // Encoded here, once per node, as on a single node where the message gets its id.
    let message = |id: &str, ts: &str, nick: &str, text: &str, api| {
        let id = id.parse().ok()?;
        let frame = message_frame(room, id, ts.parse().ok()?, nick, text, api);
        Some(What::Message { id, frame })
    };
    let (mid, what) = match kind {
        "m" => {
            let [id, ts, mid, nick, text] = fields(rest)?;
            (Some(mid), message(id, ts, nick, text, false)?)
        }
        "a" => {
            let [id, ts, nick, text] = fields(rest)?;
            (None, message(id, ts, nick, text, true)?) // said by no member
        }
        "j" => {
            let [count, mid, nick] = fields(rest)?;
            let what = What::Join {
                nick: nick.to_string(),
                count: count.parse().ok()?,
            };
            (Some(mid), what)
        }
        "l" => {
            let [count, mid, nick, why] = fields(rest)?;
            let what = What::Leave {
                nick: nick.to_string(),
                reason: LeaveReason::from_name(why)?,
                count: count.parse().ok()?,
            };
            (Some(mid), what)
        }
        "n" => {
            let [count, mid, tag, old, nick] = fields(rest)?;
            let what = What::Nick {
                old: old.to_string(),
                nick: nick.to_string(),
                count: count.parse().ok()?,
                tag: tag.parse().ok()?,
            };
            (Some(mid), what)
        }
        _ => return None,
    };
    Some(RoomEvent {
        room: room.to_string(),
        ev,
        subject: mid.and_then(|mid| local_client(node, mid)),
        what,
    })
}

/// Splits `text` into `N` space-separated fields, the last one being the rest (which may
/// contain spaces).
fn fields<const N: usize>(text: &str) -> Option<[&str; N]> {
    let mut parts = text.splitn(N, ' ');
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next()?;
    }
    Some(out)
}

/// What arrives on this node's own channel.
#[derive(Debug, PartialEq, Eq)]
pub enum NodeMessage {
    /// The echo of this node's heartbeat: the subscription works.
    Beat,
    Direct(Direct),
}

/// A direct message for one of this node's clients.
#[derive(Debug, PartialEq, Eq)]
pub struct Direct {
    pub target: ClientId,
    pub from: String,
    pub to: String,
    pub text: String,
    pub ts: u64,
}

/// A payload of the node channel.
pub fn node_message(payload: &str) -> Option<NodeMessage> {
    if payload == "beat" {
        return Some(NodeMessage::Beat);
    }
    let [target, ts, from, to, text] = fields(payload)?;
    Some(NodeMessage::Direct(Direct {
        target: client_id(target)?,
        from: from.to_string(),
        to: to.to_string(),
        text: text.to_string(),
        ts: ts.parse().ok()?,
    }))
}

/// The `message` events of `room`'s history records (oldest first), encoded as the members got
/// them. Only the run of records that ends with message `last_id` and has no gap is kept: the
/// hub numbers retained messages back from `last_id`, so a record out of that run (which no
/// script writes) is dropped rather than given another message's id.
pub fn history(room: &str, last_id: u64, records: &[String]) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(records.len());
    let mut want = last_id;
    for record in records.iter().rev() {
        let Some([id, ts, _size, nick, text]) = fields(record) else {
            break;
        };
        let (Ok(id), Ok(ts)) = (id.parse::<u64>(), ts.parse()) else {
            break;
        };
        if id != want || id == 0 {
            break;
        }
        let (from, api) = match nick.strip_prefix(API_MARK) {
            Some(nick) => (nick, true),
            None => (nick, false),
        };
        frames.push(message_frame(room, id, ts, from, text, api));
        want -= 1;
    }
    frames.reverse();
    frames
}

/// The `message` event of message `id`, as every member gets it.
fn message_frame(room: &str, id: u64, ts: u64, from: &str, text: &str, api: bool) -> Frame {
    let event = Event::Message {
        room,
        id,
        from,
        text,
        ts,
        api,
    };
    event.encode()
}

/// The size of `text`'s `message` event in `room` with an empty nick and id 0 (`api`: published
/// through the HTTP API, which the event says at its end). The SAY and PUBLISH scripts add the
/// nick's length and the id's digits less one to get the event's exact size (nicks need no
/// escaping), which is what `--history-bytes` counts, as on a single node.
pub fn message_base_size(room: &str, text: &str, ts: u64, api: bool) -> usize {
    let event = Event::Message {
        room,
        id: 0,
        from: "",
        text,
        ts,
        api,
    };
    event.encode().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "n1x0";

    fn client(key: usize, serial: u64) -> ClientId {
        ClientId { key, serial }
    }

    #[test]
    fn member_ids_name_this_nodes_clients_only() {
        let mid = member_id(NODE, client(3, 17));
        assert_eq!(mid, "n1x0.3.17");
        assert_eq!(local_client(NODE, &mid), Some(client(3, 17)));
        assert_eq!(
            local_client("n1x", &mid),
            None,
            "a prefix of another node's id"
        );
        assert_eq!(local_client("other", &mid), None);
        assert_eq!(local_client(NODE, "n1x0.3"), None);
        assert_eq!(local_client(NODE, "n1x0.a.b"), None);
    }

    #[test]
    fn messages_keep_their_text_and_room() {
        let text = "a \"quoted\"  text\nwith two lines, a tab\tand \\ backslash ";
        let room = "18446744073709551615";
        let payload = format!("7 m 18446744073709551615 1700000000000 n1x0.2.5 ada {text}");
        let e = room_event(room, &payload, NODE).unwrap();
        assert_eq!((e.room.as_str(), e.ev), (room, 7));
        assert_eq!(e.subject, Some(client(2, 5)));
        let What::Message { id, ref frame } = e.what else {
            panic!("{e:?}");
        };
        assert_eq!(id, u64::MAX);
        let got: serde_json::Value = serde_json::from_str(frame).unwrap();
        assert_eq!(got["from"], "ada");
        assert_eq!(got["text"], text);
        assert_eq!(got["ts"], 1_700_000_000_000u64);
        assert_eq!(got["room"], room);
        // An empty text survives too, and another node's member is nobody here.
        let e = room_event("r", "8 m 2 5 other.1.1 bob ", NODE).unwrap();
        assert!(
            matches!(e.what, What::Message { ref frame, .. } if frame.contains(r#""text":"""#))
        );
        assert_eq!(e.subject, None);
    }

    #[test]
    fn presence_events_parse() {
        let e = room_event("dev", "3 j 2 n1x0.0.1 ada", NODE).unwrap();
        assert!(matches!(e.what, What::Join { ref nick, count: 2 } if nick == "ada"));
        let e = room_event("dev", "4 l 2 x.0.1 bob node_lost", NODE).unwrap();
        assert!(matches!(
            e.what,
            What::Leave { ref nick, reason: LeaveReason::NodeLost, count: 2 } if nick == "bob"
        ));
        let e = room_event("dev", "5 n 1 n1x0.0.1 9 ada Ada.2", NODE).unwrap();
        assert!(matches!(
            e.what,
            What::Nick { ref old, ref nick, count: 1, tag: 9 } if old == "ada" && nick == "Ada.2"
        ));
        for bad in [
            "",
            "x m 1 1 a b c",
            "1 q 1 a b",
            "1 m one 1 a b c",
            "1 j 2 a",
            "1 l 2 a b why",
            "1 n 1 a b c",
        ] {
            assert!(room_event("dev", bad, NODE).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn node_channel_payloads_parse() {
        assert_eq!(node_message("beat"), Some(NodeMessage::Beat));
        let got = node_message("4.9 1700000000001 ada bob hi there\n\"you\"").unwrap();
        assert_eq!(
            got,
            NodeMessage::Direct(Direct {
                target: client(4, 9),
                from: "ada".into(),
                to: "bob".into(),
                text: "hi there\n\"you\"".into(),
                ts: 1_700_000_000_001,
            })
        );
        assert!(node_message("4 1 a b c").is_none());
        assert!(node_message("4.9 x a b c").is_none());
    }

    #[test]
    fn history_records_become_the_events_members_got() {
        let room = "18446744073709551615";
        let records: Vec<String> = [
            "3 100 0 ada one",
            "4 101 0 bob two words",
            "5 102 0 ada \"three\"\nlines",
        ]
        .map(String::from)
        .into();
        let frames = history(room, 5, &records);
        assert_eq!(frames.len(), 3);
        let live = Event::Message {
            room,
            id: 5,
            from: "ada",
            text: "\"three\"\nlines",
            ts: 102,
            api: false,
        }
        .encode();
        assert_eq!(frames[2], live, "the bytes a live member got");
        let first: serde_json::Value = serde_json::from_str(frames[0].as_str()).unwrap();
        assert_eq!(first["room"], room);
        assert_eq!(first["id"], 3);
        assert_eq!(first["text"], "one");
        // Only the run that ends at the last id counts.
        assert_eq!(history(room, 6, &records).len(), 0);
        let gap: Vec<String> = ["1 1 0 a x", "3 1 0 a y"].map(String::from).into();
        assert_eq!(history(room, 3, &gap).len(), 1);
        assert!(history(room, 0, &[]).is_empty());
    }

    #[test]
    fn the_scripts_size_arithmetic_gives_the_encoded_size() {
        for (room, nick, id, text) in [
            ("lobby", "guest-1", 1u64, "hi"),
            (
                "18446744073709551615",
                "Ada.x_y",
                12_345,
                "\"q\" \\ \n\t\r é",
            ),
            ("r", "n", u64::MAX, ""),
        ] {
            // Messages from the HTTP API end with `"api":true`: their size is counted too.
            for api in [false, true] {
                let ts = 1_700_000_000_000;
                let exact = Event::Message {
                    room,
                    id,
                    from: nick,
                    text,
                    ts,
                    api,
                }
                .encode()
                .len();
                let base = message_base_size(room, text, ts, api);
                let lua = base + nick.len() + id.to_string().len() - 1;
                assert_eq!(lua, exact, "{room} {nick} {id} {text:?} api {api}");
            }
        }
    }

    #[test]
    fn api_messages_keep_their_flag_on_the_channel_and_in_history() {
        let text = "disk \"full\"\non two lines";
        // The payload PUBLISH writes: no member, so no subject on any node.
        let payload = format!("9 a 3 1700000000002 alert {text}");
        let e = room_event("ops", &payload, NODE).unwrap();
        assert_eq!((e.ev, e.subject), (9, None));
        let What::Message { id: 3, ref frame } = e.what else {
            panic!("{e:?}");
        };
        let got: serde_json::Value = serde_json::from_str(frame).unwrap();
        assert_eq!(
            (got["from"].as_str(), got["text"].as_str()),
            (Some("alert"), Some(text))
        );
        assert_eq!(
            (got["ts"].as_u64(), got["api"].as_bool()),
            (Some(1_700_000_000_002), Some(true))
        );
        let live = e.encode();
        assert!(live.ends_with(r#","api":true}"#), "{live}");
        for bad in [
            "9 a 3 1700000000002 alert",
            "9 a x 1 alert hi",
            "9 a 3 y alert hi",
        ] {
            assert!(room_event("ops", bad, NODE).is_none(), "{bad:?}");
        }
        // The record PUBLISH keeps next to a member's: the replay is the live event's bytes.
        let records: Vec<String> = vec![
            "2 1700000000001 0 ada before".into(),
            format!("3 1700000000002 0 {API_MARK}alert {text}"),
        ];
        let frames = history("ops", 3, &records);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1], live, "the bytes a live member got");
        assert!(
            !frames[0].contains("\"api\""),
            "a member's message says nothing"
        );
    }
}
