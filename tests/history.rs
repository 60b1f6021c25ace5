//! History and recovery (design.md, "Protocol v1", "History and recovery"): replay on join,
//! `since`/`epoch` cursors, `complete`, `last_id`, resync of a room the client is already in,
//! and epochs that change when a room's history is lost.
//!
//! Most tests keep 3 messages per room so that eviction is easy to reach. Events reach each
//! client in order, so "nothing more was replayed" is proven by a marker that must come next.
//!
//! Part of the conformance suite (tests/common/authority.rs): every scenario but the restart
//! of a single server runs against the in-memory authority (`NAME::local`) and, with
//! `--features redis`, against Redis (`NAME::redis`).

mod common;
#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;
#[macro_use]
#[path = "common/authority.rs"]
mod authority;

use std::net::SocketAddr;

use authority::{Authority, Setup, setup};
use common::*;
use serde_json::json;

/// Rooms remember `history` messages; no rate limit, so a client may say many things quickly.
fn server_keeping(authority: Authority, history: usize) -> Setup {
    setup(authority, |c| {
        c.history = history;
        c.rate_limit = 0;
    })
}

/// Connects two clients; `a` sees `b`'s join.
async fn two(addr: SocketAddr) -> (Client, Client) {
    let mut a = Client::connect(addr).await;
    let b = Client::connect(addr).await;
    a.expect_exact(json!({"type": "join", "room": "lobby", "nick": b.nick}))
        .await;
    (a, b)
}

/// `c` says `text` in `room` and gets it back as message `id`, which is returned whole.
async fn say_own(c: &mut Client, room: &str, id: u64, text: &str) -> serde_json::Value {
    c.say(room, text).await;
    c.expect_exact(message(room, id, &c.nick, text)).await
}

/// `c` says `count` messages "m1", "m2"... in `room`, which must have ids 1, 2, ...
async fn say_many(c: &mut Client, room: &str, count: u64) {
    for id in 1..=count {
        say_own(c, room, id, &format!("m{id}")).await;
    }
}

/// The next events must be the messages `ids` of `room`, said by `from` with `say_many`.
async fn expect_replay(c: &mut Client, room: &str, from: &str, ids: impl IntoIterator<Item = u64>) {
    for id in ids {
        c.expect_exact(message(room, id, from, &format!("m{id}")))
            .await;
    }
}

/// Sends `join` with an optional cursor.
async fn join_with(c: &mut Client, room: &str, since: Option<u64>, epoch: Option<&str>) {
    let mut join = json!({"type": "join", "room": room});
    if let Some(since) = since {
        join["since"] = json!(since);
    }
    if let Some(epoch) = epoch {
        join["epoch"] = json!(epoch);
    }
    c.send(join).await;
}

fn connecting_replays_the_lobby_history_that_is_retained(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let mut a = Client::connect(server.addr).await;
        say_many(&mut a, "lobby", 5).await;

        let mut b = Client::connect_raw(server.addr).await;
        let welcome = b.expect("welcome").await;
        b.nick = welcome["nick"].as_str().unwrap().to_string();
        b.expect_room(room_event("lobby", &[&a.nick, &b.nick], 5))
            .await;
        expect_replay(&mut b, "lobby", &a.nick, 3..=5).await;
        a.expect_exact(json!({"type": "join", "room": "lobby", "nick": b.nick}))
            .await;

        // Nothing more was replayed: the next event is the next message, id 6.
        b.send_text("m6").await;
        let m6 = message("lobby", 6, &b.nick, "m6");
        for c in [&mut b, &mut a] {
            c.expect_exact(m6.clone()).await;
        }
    });
}

fn join_without_since_replays_what_is_retained(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let (mut a, mut b) = two(server.addr).await;
        a.join("small").await;
        say_many(&mut a, "small", 2).await;
        a.join("big").await;
        say_many(&mut a, "big", 5).await;

        // Fewer messages than the history size: all of them.
        b.send(json!({"type": "join", "room": "small"})).await;
        b.expect_room(room_event("small", &[&a.nick, &b.nick], 2))
            .await;
        expect_replay(&mut b, "small", &a.nick, 1..=2).await;
        a.expect_exact(json!({"type": "join", "room": "small", "nick": b.nick}))
            .await;

        // More: only the last 3, and `last_id` is still the newest id ever said.
        b.send(json!({"type": "join", "room": "big"})).await;
        b.expect_room(room_event("big", &[&a.nick, &b.nick], 5))
            .await;
        expect_replay(&mut b, "big", &a.nick, 3..=5).await;
        a.expect_exact(json!({"type": "join", "room": "big", "nick": b.nick}))
            .await;

        // A room with no messages replays nothing.
        b.send(json!({"type": "join", "room": "empty"})).await;
        b.expect_room(room_event("empty", &[&b.nick], 0)).await;
        say_own(&mut b, "empty", 1, "first").await;
    });
}

fn ids_keep_counting_while_a_room_is_empty(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let (mut a, mut b) = two(server.addr).await;
        a.join("dev").await;
        say_many(&mut a, "dev", 2).await;
        a.send(json!({"type": "leave", "room": "dev"})).await;
        a.send(json!({"type": "who", "room": "dev"})).await;
        a.expect_exact(members_event("dev", &[])).await;
        // Nobody is in dev now; its history and ids survive.
        b.send(json!({"type": "join", "room": "dev"})).await;
        b.expect_room(room_event("dev", &[&b.nick], 2)).await;
        expect_replay(&mut b, "dev", &a.nick, 1..=2).await;
        say_own(&mut b, "dev", 3, "m3").await;
    });
}

fn since_with_the_current_epoch_replays_exactly_the_missed_messages(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let (mut a, mut b) = two(server.addr).await;
        a.join("dev").await;
        b.join("dev").await;
        a.expect_exact(json!({"type": "join", "room": "dev", "nick": b.nick}))
            .await;
        let epoch = {
            b.send(json!({"type": "join", "room": "dev"})).await; // resync, to read the epoch
            b.expect_room(room_event("dev", &[&a.nick, &b.nick], 0))
                .await
        };
        say_many(&mut a, "dev", 2).await;
        expect_replay(&mut b, "dev", &a.nick, 1..=2).await;

        // b goes away; two messages are said while it is gone.
        b.send(json!({"type": "leave", "room": "dev"})).await;
        a.expect_exact(json!({"type": "leave", "room": "dev", "nick": b.nick, "reason": "left"}))
            .await;
        let missed = [
            say_own(&mut a, "dev", 3, "m3").await,
            say_own(&mut a, "dev", 4, "m4").await,
        ];

        // It comes back with its cursor: exactly 3 and 4, and the gap is known to be closed.
        join_with(&mut b, "dev", Some(2), Some(&epoch)).await;
        let again = b
            .expect_room(room_event_recovered("dev", &[&a.nick, &b.nick], 4, true))
            .await;
        assert_eq!(again, epoch, "the same life of the room");
        // Replayed exactly as first sent, `ts` included.
        for original in missed {
            assert_eq!(b.next().await, original);
        }
        a.expect_exact(json!({"type": "join", "room": "dev", "nick": b.nick}))
            .await;
        // Nothing more: the next event is the next message.
        a.say("dev", "m5").await;
        let a_nick = a.nick.clone();
        expect_replay(&mut b, "dev", &a.nick, [5]).await;
        expect_replay(&mut a, "dev", &a_nick, [5]).await;
    });
}

fn complete_is_false_exactly_when_missed_messages_were_evicted(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let (mut a, mut b) = two(server.addr).await;
        a.join("dev").await;
        let epoch = a.join("dev").await; // resync: same room event, read its epoch
        let epoch = epoch["epoch"].as_str().unwrap().to_string();
        say_many(&mut a, "dev", 5).await; // 3, 4 and 5 are retained

        // (since, complete, first replayed id; the replay ends at 5), asked by b, which is not
        // in dev, and which leaves again after each.
        let cases = [
            (0, false, 3),
            (1, false, 3), // 2 is gone
            (2, true, 3),  // 3 is the oldest retained: nothing missing
            (3, true, 4),
            (4, true, 5),
            (5, true, 6), // caught up: nothing to replay
            (9, true, 6), // ahead of the room: nothing to replay
        ];
        for (since, complete, first) in cases {
            join_with(&mut b, "dev", Some(since), Some(&epoch)).await;
            let got = b
                .expect_room(room_event_recovered(
                    "dev",
                    &[&a.nick, &b.nick],
                    5,
                    complete,
                ))
                .await;
            assert_eq!(got, epoch);
            expect_replay(&mut b, "dev", &a.nick, first..=5).await;
            a.expect_exact(json!({"type": "join", "room": "dev", "nick": b.nick}))
                .await;
            b.send(json!({"type": "leave", "room": "dev"})).await;
            a.expect_exact(
                json!({"type": "leave", "room": "dev", "nick": b.nick, "reason": "left"}),
            )
            .await;
        }
        // Nothing was replayed beyond what each case expected: b's next event is this one.
        say_own(&mut b, "lobby", 1, "marker").await;
    });
}

fn since_without_an_epoch_uses_the_current_life(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let mut a = Client::connect(server.addr).await;
        a.join("dev").await;
        say_many(&mut a, "dev", 5).await;
        let a_nick = a.nick.clone();
        for (since, complete, ids) in [(3, true, 4..=5), (1, false, 3..=5)] {
            join_with(&mut a, "dev", Some(since), None).await;
            a.expect_room(room_event_recovered("dev", &[&a.nick], 5, complete))
                .await;
            expect_replay(&mut a, "dev", &a_nick, ids).await;
        }
        say_own(&mut a, "dev", 6, "m6").await;
    });
}

fn the_current_epoch_without_since_counts_as_since_zero(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let mut a = Client::connect(server.addr).await;
        let epoch = a.join("dev").await["epoch"].as_str().unwrap().to_string();
        say_many(&mut a, "dev", 3).await;
        let a_nick = a.nick.clone();
        // Nothing evicted yet: complete.
        join_with(&mut a, "dev", None, Some(&epoch)).await;
        a.expect_room(room_event_recovered("dev", &[&a_nick], 3, true))
            .await;
        expect_replay(&mut a, "dev", &a_nick, 1..=3).await;
        // Message 1 evicted: not complete.
        say_own(&mut a, "dev", 4, "m4").await;
        join_with(&mut a, "dev", None, Some(&epoch)).await;
        a.expect_room(room_event_recovered("dev", &[&a_nick], 4, false))
            .await;
        expect_replay(&mut a, "dev", &a_nick, 2..=4).await;
        // `null` is the same as leaving a field out: a plain join, no `complete`.
        a.send(json!({"type": "join", "room": "dev", "since": null, "epoch": null}))
            .await;
        a.expect_room(room_event("dev", &[&a_nick], 4)).await;
        expect_replay(&mut a, "dev", &a_nick, 2..=4).await;
        say_own(&mut a, "dev", 5, "m5").await;
    });
}

fn a_different_epoch_gets_everything_retained_and_complete_false(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let (mut a, mut b) = two(server.addr).await;
        a.join("dev").await;
        say_many(&mut a, "dev", 5).await;
        // Even a cursor that would be "caught up" or "complete" in the current life.
        for since in [0, 2, 4, 5, 9] {
            join_with(&mut b, "dev", Some(since), Some("an-earlier-life")).await;
            b.expect_room(room_event_recovered("dev", &[&a.nick, &b.nick], 5, false))
                .await;
            expect_replay(&mut b, "dev", &a.nick, 3..=5).await;
            a.expect_exact(json!({"type": "join", "room": "dev", "nick": b.nick}))
                .await;
            b.send(json!({"type": "leave", "room": "dev"})).await;
            a.expect_exact(
                json!({"type": "leave", "room": "dev", "nick": b.nick, "reason": "left"}),
            )
            .await;
        }
        // An epoch without `since` counts as a cursor too.
        join_with(&mut b, "dev", None, Some("an-earlier-life")).await;
        b.expect_room(room_event_recovered("dev", &[&a.nick, &b.nick], 5, false))
            .await;
        expect_replay(&mut b, "dev", &a.nick, 3..=5).await;
        a.expect_exact(json!({"type": "join", "room": "dev", "nick": b.nick}))
            .await;
        // Also for a room with no messages yet.
        join_with(&mut b, "fresh", Some(0), Some("an-earlier-life")).await;
        b.expect_room(room_event_recovered("fresh", &[&b.nick], 0, false))
            .await;
        say_own(&mut b, "fresh", 1, "marker").await;
    });
}

fn rejoining_a_room_is_a_resync_that_nobody_else_hears(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let (mut a, mut b) = two(server.addr).await;
        say_many(&mut a, "lobby", 4).await;
        let a_nick = a.nick.clone();
        expect_replay(&mut b, "lobby", &a_nick, 1..=4).await;

        // Without a cursor: a fresh room event and the retained history.
        a.send(json!({"type": "join", "room": "lobby"})).await;
        let epoch = a
            .expect_room(room_event("lobby", &[&a.nick, &b.nick], 4))
            .await;
        expect_replay(&mut a, "lobby", &a_nick, 2..=4).await;

        // With one: by the same rules as any join.
        join_with(&mut a, "lobby", Some(3), Some(&epoch)).await;
        let same = a
            .expect_room(room_event_recovered("lobby", &[&a.nick, &b.nick], 4, true))
            .await;
        assert_eq!(same, epoch);
        expect_replay(&mut a, "lobby", &a_nick, [4]).await;
        join_with(&mut a, "lobby", Some(0), Some(&epoch)).await;
        a.expect_room(room_event_recovered("lobby", &[&a.nick, &b.nick], 4, false))
            .await;
        expect_replay(&mut a, "lobby", &a_nick, 2..=4).await;

        // b heard nothing of the three resyncs: its next event is this message.
        say_own(&mut a, "lobby", 5, "m5").await;
        expect_replay(&mut b, "lobby", &a.nick, [5]).await;
        // And a is listed once, not once per join.
        b.send(json!({"type": "who", "room": "lobby"})).await;
        b.expect_exact(members_event("lobby", &[&a.nick, &b.nick]))
            .await;
        // One leave takes it out.
        a.send(json!({"type": "leave", "room": "lobby"})).await;
        b.expect_exact(json!({"type": "leave", "room": "lobby", "nick": a.nick, "reason": "left"}))
            .await;
        b.send(json!({"type": "who", "room": "lobby"})).await;
        b.expect_exact(members_event("lobby", &[&b.nick])).await;
    });
}

fn a_reconnecting_client_recovers_the_lobby_with_its_cursor(authority: Authority) {
    let server = server_keeping(authority, 3);
    run(async {
        let mut a = Client::connect_raw(server.addr).await;
        a.nick = a.expect("welcome").await["nick"]
            .as_str()
            .unwrap()
            .to_string();
        let epoch = a.expect_room(room_event("lobby", &[&a.nick], 0)).await;
        let mut writer = Client::connect(server.addr).await;
        a.expect_exact(json!({"type": "join", "room": "lobby", "nick": writer.nick}))
            .await;
        say_many(&mut a, "lobby", 2).await;
        let old = a.nick.clone();
        expect_replay(&mut writer, "lobby", &old, 1..=2).await;
        a.close().await; // its cursor: (epoch, 2)
        writer
            .expect_exact(
                json!({"type": "leave", "room": "lobby", "nick": old, "reason": "disconnected"}),
            )
            .await;
        for id in 3..=4 {
            say_own(&mut writer, "lobby", id, &format!("m{id}")).await;
        }

        // The automatic join replays what is retained, like any join without `since`...
        let mut back = Client::connect_raw(server.addr).await;
        back.nick = back.expect("welcome").await["nick"]
            .as_str()
            .unwrap()
            .to_string();
        let same = back
            .expect_room(room_event("lobby", &[&writer.nick, &back.nick], 4))
            .await;
        assert_eq!(same, epoch);
        back.expect_exact(message("lobby", 2, &old, "m2")).await;
        expect_replay(&mut back, "lobby", &writer.nick, 3..=4).await;
        writer
            .expect_exact(json!({"type": "join", "room": "lobby", "nick": back.nick}))
            .await;
        // ...and re-joining with the cursor says exactly what was missed, and that it is all.
        join_with(&mut back, "lobby", Some(2), Some(&epoch)).await;
        back.expect_room(room_event_recovered(
            "lobby",
            &[&writer.nick, &back.nick],
            4,
            true,
        ))
        .await;
        expect_replay(&mut back, "lobby", &writer.nick, 3..=4).await;
        say_own(&mut writer, "lobby", 5, "m5").await;
        expect_replay(&mut back, "lobby", &writer.nick, [5]).await;
    });
}

#[test]
fn a_restarted_server_has_new_epochs_and_stale_cursors_are_incomplete() {
    let (epoch, old_nick) = {
        let first = server_keeping(Authority::Local, 3);
        let mut cursor = (String::new(), String::new());
        run(async {
            let mut a = Client::connect(first.addr).await;
            let room = a.join("lobby").await; // resync, to read the epoch
            cursor = (room["epoch"].as_str().unwrap().to_string(), a.nick.clone());
            say_many(&mut a, "lobby", 4).await;
            a.close().await;
        });
        first.server.shutdown();
        cursor
    };
    assert!(!epoch.is_empty(), "{old_nick} read an epoch");

    let second = server_keeping(Authority::Local, 3);
    run(async {
        let mut a = Client::connect(second.addr).await;
        say_own(&mut a, "lobby", 1, "after the restart").await;
        // The old cursor (epoch, 4) means nothing now: everything retained, complete false,
        // and the message with id 1 of this life is not skipped although 1 <= 4.
        join_with(&mut a, "lobby", Some(4), Some(&epoch)).await;
        let new_epoch = a
            .expect_room(room_event_recovered("lobby", &[&a.nick], 1, false))
            .await;
        assert_ne!(
            new_epoch, epoch,
            "a new life of the lobby needs a new epoch"
        );
        a.expect_exact(message("lobby", 1, &a.nick.clone(), "after the restart"))
            .await;
        say_own(&mut a, "lobby", 2, "marker").await;
    });
}

fn a_room_evicted_and_created_again_starts_a_new_epoch(authority: Authority) {
    // One room besides the lobby: creating a second evicts the empty one used longest ago.
    let server = setup(authority, |c| {
        c.history = 3;
        c.max_rooms = 1;
    });
    run(async {
        let mut a = Client::connect(server.addr).await;
        a.join("dev").await;
        let epoch = a.join("dev").await["epoch"].as_str().unwrap().to_string();
        say_many(&mut a, "dev", 2).await;
        a.send(json!({"type": "leave", "room": "dev"})).await;
        a.join("ops").await; // dev is evicted, its history lost
        a.send(json!({"type": "leave", "room": "ops"})).await;

        join_with(&mut a, "dev", Some(2), Some(&epoch)).await;
        let new_epoch = a
            .expect_room(room_event_recovered("dev", &[&a.nick], 0, false))
            .await;
        assert_ne!(new_epoch, epoch, "history was lost, so the epoch changed");
        // Ids start again in the new life.
        say_own(&mut a, "dev", 1, "new life").await;
    });
}

fn with_no_history_last_id_still_counts_and_nothing_is_replayed(authority: Authority) {
    let server = server_keeping(authority, 0);
    run(async {
        let (mut a, mut b) = two(server.addr).await;
        say_many(&mut a, "lobby", 2).await;
        expect_replay(&mut b, "lobby", &a.nick, 1..=2).await;
        join_with(&mut b, "lobby", Some(1), None).await;
        b.expect_room(room_event_recovered("lobby", &[&a.nick, &b.nick], 2, false))
            .await;
        join_with(&mut b, "lobby", Some(2), None).await;
        b.expect_room(room_event_recovered("lobby", &[&a.nick, &b.nick], 2, true))
            .await;
        b.send(json!({"type": "join", "room": "lobby"})).await;
        b.expect_room(room_event("lobby", &[&a.nick, &b.nick], 2))
            .await;
        say_own(&mut b, "lobby", 3, "marker").await;
        a.expect_exact(message("lobby", 3, &b.nick, "marker")).await;
    });
}

on_every_authority!(
    connecting_replays_the_lobby_history_that_is_retained,
    join_without_since_replays_what_is_retained,
    ids_keep_counting_while_a_room_is_empty,
    since_with_the_current_epoch_replays_exactly_the_missed_messages,
    complete_is_false_exactly_when_missed_messages_were_evicted,
    since_without_an_epoch_uses_the_current_life,
    the_current_epoch_without_since_counts_as_since_zero,
    a_different_epoch_gets_everything_retained_and_complete_false,
    rejoining_a_room_is_a_resync_that_nobody_else_hears,
    a_reconnecting_client_recovers_the_lobby_with_its_cursor,
    a_room_evicted_and_created_again_starts_a_new_epoch,
    with_no_history_last_id_still_counts_and_nothing_is_replayed,
);
