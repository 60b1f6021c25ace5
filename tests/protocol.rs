//! Protocol v1 end to end (design.md, "Protocol v1"): every client command, every server event
//! and every error code, over real WebSocket connections to a server on a loopback port.
//!
//! Events reach each client in the order the hub produced them, so "X did not arrive" is proven
//! by making something later arrive (a marker) and checking that it is the very next event.
//!
//! Part of the conformance suite (tests/common/authority.rs): every scenario runs against the
//! in-memory authority (`NAME::local`) and, with `--features redis`, against Redis
//! (`NAME::redis`).

mod common;
#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;
#[macro_use]
#[path = "common/authority.rs"]
mod authority;

use std::net::SocketAddr;

use authority::{Authority, setup};
use common::*;
use serde_json::{Value, json};

/// Connects `N` clients in order; every earlier client sees each later one's `join`.
async fn clients<const N: usize>(addr: SocketAddr) -> [Client; N] {
    let mut all: Vec<Client> = Vec::new();
    for _ in 0..N {
        let new = Client::connect(addr).await;
        for old in &mut all {
            old.expect_exact(json!({"type": "join", "room": "lobby", "nick": new.nick}))
                .await;
        }
        all.push(new);
    }
    match all.try_into() {
        Ok(all) => all,
        Err(_) => unreachable!(),
    }
}

fn is_guest_nick(nick: &str) -> bool {
    nick.strip_prefix("guest-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The next event must be an `error` with exactly the fields `type`, `code` and `message`.
async fn expect_err(c: &mut Client, code: &str) {
    let e = c.expect_error(code).await;
    assert_eq!(e.as_object().unwrap().len(), 3, "extra fields in {e}");
}

/// `c` says `text` in `room`; it and every one of `others` (all members) get message `id`.
async fn say_and_see(c: &mut Client, others: &mut [&mut Client], room: &str, id: u64, text: &str) {
    c.say(room, text).await;
    let expected = message(room, id, &c.nick, text);
    c.expect_exact(expected.clone()).await;
    for o in others {
        o.expect_exact(expected.clone()).await;
    }
}

/// Renames `c`, checking the `nick` event it gets back, and updates `c.nick`.
async fn rename(c: &mut Client, nick: &str) -> Value {
    c.send(json!({"type": "nick", "nick": nick})).await;
    let event = json!({"type": "nick", "old": c.nick, "nick": nick});
    c.expect_exact(event.clone()).await;
    c.nick = nick.to_string();
    event
}

// ---------------------------------------------------------------- welcome, room, join

fn connect_sends_welcome_then_the_lobby_room_event(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let mut a = Client::connect_raw(server.addr).await;
        let welcome = a.next().await;
        let a_nick = welcome["nick"].as_str().unwrap_or_default().to_string();
        assert!(is_guest_nick(&a_nick), "{welcome}");
        assert_eq!(
            welcome,
            json!({
                "type": "welcome",
                "nick": a_nick,
                "server": format!("smolchat/{}", env!("CARGO_PKG_VERSION")),
                "limits": {
                    "max_message_bytes": 4096,
                    "history": 100,
                    "rate_limit": 10,
                    "rate_burst": 20,
                    "max_rooms_per_client": 32,
                    "presence_limit": 100,
                },
            })
        );
        let a_epoch = a.expect_room(room_event("lobby", &[&a_nick], 0)).await;

        let mut b = Client::connect_raw(server.addr).await;
        let welcome = b.expect("welcome").await;
        let b_nick = welcome["nick"].as_str().unwrap_or_default().to_string();
        assert!(is_guest_nick(&b_nick), "{welcome}");
        assert_ne!(a_nick, b_nick, "every guest gets its own nick");
        let b_epoch = b
            .expect_room(room_event("lobby", &[&a_nick, &b_nick], 0))
            .await;
        assert_eq!(a_epoch, b_epoch, "one life of the lobby, one epoch");
        a.expect_exact(json!({"type": "join", "room": "lobby", "nick": b_nick}))
            .await;

        // Nothing else was queued for either client before this message.
        b.send_text("first").await;
        for c in [&mut a, &mut b] {
            c.expect_exact(message("lobby", 1, &b_nick, "first")).await;
        }
    });
}

fn welcome_reports_the_configured_limits(authority: Authority) {
    let server = setup(authority, |c| {
        c.history = 7;
        c.max_message_bytes = 1000;
        c.rate_limit = 3;
        c.rate_burst = 9;
        c.max_rooms_per_client = 4;
        c.presence_limit = 50;
    });
    run(async {
        let mut a = Client::connect_raw(server.addr).await;
        let welcome = a.expect("welcome").await;
        assert_eq!(
            welcome["limits"],
            json!({
                "max_message_bytes": 1000,
                "history": 7,
                "rate_limit": 3,
                "rate_burst": 9,
                "max_rooms_per_client": 4,
                "presence_limit": 50,
            })
        );
    });
}

fn join_sends_room_to_the_joiner_and_join_to_the_members_only(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b, mut c] = clients(server.addr).await;
        a.send(json!({"type": "join", "room": "dev"})).await;
        let first = a.expect_room(room_event("dev", &[&a.nick], 0)).await;

        b.send(json!({"type": "join", "room": "dev"})).await;
        let second = b
            .expect_room(room_event("dev", &[&a.nick, &b.nick], 0))
            .await;
        assert_eq!(first, second, "same room, same life, same epoch");
        a.expect_exact(json!({"type": "join", "room": "dev", "nick": b.nick}))
            .await;

        // c is not in dev: the next thing it sees is this lobby message, nothing about dev.
        // b's next event is the same message: it got no `join` about itself.
        say_and_see(&mut a, &mut [&mut b, &mut c], "lobby", 1, "marker").await;
    });
}

fn unknown_fields_in_commands_are_ignored(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        a.send(json!({"type": "say", "room": "lobby", "text": "hi", "extra": {"x": [1]}}))
            .await;
        let m = message("lobby", 1, &a.nick, "hi");
        for c in [&mut a, &mut b] {
            c.expect_exact(m.clone()).await;
        }
        a.send(json!({"type": "join", "room": "dev", "colour": "blue"}))
            .await;
        a.expect_room(room_event("dev", &[&a.nick], 0)).await;
    });
}

// ---------------------------------------------------------------- leave

fn leave_tells_the_others_with_reason_left_and_not_the_leaver(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b, mut c] = clients(server.addr).await;
        b.join("dev").await;
        a.join("dev").await;
        b.expect_exact(json!({"type": "join", "room": "dev", "nick": a.nick}))
            .await;

        a.send(json!({"type": "leave", "room": "dev"})).await;
        b.expect_exact(json!({"type": "leave", "room": "dev", "nick": a.nick, "reason": "left"}))
            .await;
        // a gets no event for its own leave, and c (not in dev) hears nothing about it.
        say_and_see(&mut a, &mut [&mut b, &mut c], "lobby", 1, "marker").await;

        // a is really out: dev's member list and a second leave say so.
        c.send(json!({"type": "who", "room": "dev"})).await;
        c.expect_exact(members_event("dev", &[&b.nick])).await;
        a.send(json!({"type": "leave", "room": "dev"})).await;
        expect_err(&mut a, "not_member").await;
        a.say("dev", "x").await;
        expect_err(&mut a, "not_member").await;

        // Coming back is an ordinary join.
        a.send(json!({"type": "join", "room": "dev"})).await;
        a.expect_room(room_event("dev", &[&b.nick, &a.nick], 0))
            .await;
        b.expect_exact(json!({"type": "join", "room": "dev", "nick": a.nick}))
            .await;
        say_and_see(&mut a, &mut [&mut b], "dev", 1, "back").await;
    });
}

fn leaving_the_lobby_is_allowed_and_announced(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        a.send(json!({"type": "leave", "room": "lobby"})).await;
        b.expect_exact(json!({"type": "leave", "room": "lobby", "nick": a.nick, "reason": "left"}))
            .await;
        b.send(json!({"type": "who", "room": "lobby"})).await;
        b.expect_exact(members_event("lobby", &[&b.nick])).await;
        // a no longer hears the lobby: its next event is the answer to its own `who`.
        say_and_see(&mut b, &mut [], "lobby", 1, "a is gone").await;
        a.send(json!({"type": "who", "room": "lobby"})).await;
        a.expect_exact(members_event("lobby", &[&b.nick])).await;
    });
}

fn closing_the_connection_announces_leave_disconnected_in_every_room(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b, mut c] = clients(server.addr).await;
        b.join("dev").await;
        c.join("ops").await;
        a.join("dev").await;
        b.expect_exact(json!({"type": "join", "room": "dev", "nick": a.nick}))
            .await;
        a.join("ops").await;
        c.expect_exact(json!({"type": "join", "room": "ops", "nick": a.nick}))
            .await;

        let gone = a.nick.clone();
        a.close().await;
        let leave = |room: &str| json!({"type": "leave", "room": room, "nick": gone, "reason": "disconnected"});
        let mut got_b = vec![b.next().await, b.next().await];
        got_b.sort_by_key(|e| e["room"].to_string());
        assert_eq!(got_b, [leave("dev"), leave("lobby")]);
        let mut got_c = vec![c.next().await, c.next().await];
        got_c.sort_by_key(|e| e["room"].to_string());
        assert_eq!(got_c, [leave("lobby"), leave("ops")]);

        // Exactly one leave per room: the next events are these markers.
        say_and_see(&mut b, &mut [&mut c], "lobby", 1, "marker").await;
        say_and_see(&mut c, &mut [], "ops", 1, "marker").await;
        b.send(json!({"type": "who", "room": "lobby"})).await;
        b.expect_exact(members_event("lobby", &[&b.nick, &c.nick]))
            .await;
    });
}

fn dropping_the_socket_without_a_close_frame_is_a_disconnect_too(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [a, mut b] = clients(server.addr).await;
        let gone = a.nick.clone();
        drop(a);
        b.expect_exact(
            json!({"type": "leave", "room": "lobby", "nick": gone, "reason": "disconnected"}),
        )
        .await;
        say_and_see(&mut b, &mut [], "lobby", 1, "marker").await;
    });
}

// ---------------------------------------------------------------- say, message, plain text

fn message_ids_start_at_one_per_room_and_increase(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        a.join("dev").await;
        say_and_see(&mut a, &mut [&mut b], "lobby", 1, "l1").await;
        say_and_see(&mut a, &mut [], "dev", 1, "d1").await;
        say_and_see(&mut a, &mut [&mut b], "lobby", 2, "l2").await;
        say_and_see(&mut a, &mut [], "dev", 2, "d2").await;
        say_and_see(&mut a, &mut [], "dev", 3, "d3").await;
        say_and_see(&mut b, &mut [&mut a], "lobby", 3, "l3 from b").await;
        // Text is carried verbatim, JSON-looking or not.
        let text = "  {\"not\": \"a command\"} \u{e9}\u{1f600} \\n";
        say_and_see(&mut b, &mut [&mut a], "lobby", 4, text).await;
    });
}

fn plain_text_frames_go_to_the_most_recently_joined_room(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        b.join("dev").await;
        a.join("dev").await;
        b.expect_exact(json!({"type": "join", "room": "dev", "nick": a.nick}))
            .await;
        a.join("ops").await;

        // Current room: ops (b is not in it).
        for (id, text) in [
            (1, "hello"),
            (2, "\"quoted\""),
            (3, "[1,2]"),
            (4, "null"),
            (5, "42"),
            (6, "  hello {x}"), // leading whitespace is kept
            (7, "   "),         // whitespace only is still text
        ] {
            a.send_text(text).await;
            a.expect_exact(message("ops", id, &a.nick, text)).await;
        }

        // After leaving ops, the previous one: dev.
        a.send(json!({"type": "leave", "room": "ops"})).await;
        a.send_text("in dev").await;
        let m = message("dev", 1, &a.nick, "in dev");
        for c in [&mut a, &mut b] {
            c.expect_exact(m.clone()).await;
        }
        // Then the lobby.
        a.send(json!({"type": "leave", "room": "dev"})).await;
        b.expect_exact(json!({"type": "leave", "room": "dev", "nick": a.nick, "reason": "left"}))
            .await;
        a.send_text("in lobby").await;
        let m = message("lobby", 1, &a.nick, "in lobby");
        for c in [&mut a, &mut b] {
            c.expect_exact(m.clone()).await;
        }
        // In no room at all, plain text is refused.
        a.send(json!({"type": "leave", "room": "lobby"})).await;
        b.expect_exact(json!({"type": "leave", "room": "lobby", "nick": a.nick, "reason": "left"}))
            .await;
        a.send_text("nowhere").await;
        expect_err(&mut a, "not_member").await;
        // And joining again makes that room current; the connection still works.
        a.send(json!({"type": "join", "room": "lobby"})).await;
        b.expect_exact(json!({"type": "join", "room": "lobby", "nick": a.nick}))
            .await;
        a.expect_room(room_event("lobby", &[&b.nick, &a.nick], 1))
            .await;
        a.expect_exact(message("lobby", 1, &a.nick.clone(), "in lobby"))
            .await;
        a.send_text("again").await;
        let m = message("lobby", 2, &a.nick, "again");
        for c in [&mut a, &mut b] {
            c.expect_exact(m.clone()).await;
        }
    });
}

fn a_resync_makes_the_room_current_again(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a] = clients(server.addr).await;
        a.join("dev").await;
        a.join("ops").await;
        a.send_text("to ops").await;
        a.expect_exact(message("ops", 1, &a.nick, "to ops")).await;
        a.send(json!({"type": "join", "room": "dev"})).await;
        a.expect_room(room_event("dev", &[&a.nick], 0)).await;
        a.send_text("to dev").await;
        a.expect_exact(message("dev", 1, &a.nick, "to dev")).await;
    });
}

fn a_message_in_one_room_never_reaches_a_client_only_in_another(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b, mut c] = clients(server.addr).await;
        // a ends up only in alpha, b only in beta, c in lobby, alpha and beta.
        a.join("alpha").await;
        a.send(json!({"type": "leave", "room": "lobby"})).await;
        for o in [&mut b, &mut c] {
            o.expect_exact(
                json!({"type": "leave", "room": "lobby", "nick": a.nick, "reason": "left"}),
            )
            .await;
        }
        b.join("beta").await;
        b.send(json!({"type": "leave", "room": "lobby"})).await;
        c.expect_exact(json!({"type": "leave", "room": "lobby", "nick": b.nick, "reason": "left"}))
            .await;
        c.join("alpha").await;
        a.expect_exact(json!({"type": "join", "room": "alpha", "nick": c.nick}))
            .await;
        c.join("beta").await;
        b.expect_exact(json!({"type": "join", "room": "beta", "nick": c.nick}))
            .await;

        // Everything that happens in alpha...
        say_and_see(&mut a, &mut [&mut c], "alpha", 1, "secret").await;
        say_and_see(&mut c, &mut [&mut a], "alpha", 2, "also secret").await;
        let a_guest = a.nick.clone();
        let renamed = rename(&mut a, "ada").await;
        c.expect_exact(renamed).await;
        a.send(json!({"type": "leave", "room": "alpha"})).await;
        c.expect_exact(json!({"type": "leave", "room": "alpha", "nick": "ada", "reason": "left"}))
            .await;
        a.send(json!({"type": "join", "room": "alpha"})).await;
        a.expect_room(room_event("alpha", &[&c.nick, "ada"], 2))
            .await;
        // History replays a message as it was sent, under the nick of that time.
        a.expect_exact(message("alpha", 1, &a_guest, "secret"))
            .await;
        a.expect_exact(message("alpha", 2, &c.nick, "also secret"))
            .await;
        c.expect_exact(json!({"type": "join", "room": "alpha", "nick": "ada"}))
            .await;

        // ...stays there: b's next event is the first message of beta.
        say_and_see(&mut c, &mut [&mut b], "beta", 1, "marker for b").await;
        // And the other way round.
        say_and_see(&mut b, &mut [&mut c], "beta", 2, "beta only").await;
        say_and_see(&mut c, &mut [&mut a], "alpha", 3, "marker for a").await;
    });
}

// ---------------------------------------------------------------- nick

fn nick_goes_to_the_renamed_client_and_each_room_mate_once(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b, mut c, mut d] = clients(server.addr).await;
        // c: only in ops. d: only in zed. b: lobby and dev. a: lobby, dev and ops.
        c.join("ops").await;
        c.send(json!({"type": "leave", "room": "lobby"})).await;
        for o in [&mut a, &mut b, &mut d] {
            o.expect_exact(
                json!({"type": "leave", "room": "lobby", "nick": c.nick, "reason": "left"}),
            )
            .await;
        }
        d.join("zed").await;
        d.send(json!({"type": "leave", "room": "lobby"})).await;
        for o in [&mut a, &mut b] {
            o.expect_exact(
                json!({"type": "leave", "room": "lobby", "nick": d.nick, "reason": "left"}),
            )
            .await;
        }
        b.join("dev").await;
        a.join("dev").await;
        b.expect_exact(json!({"type": "join", "room": "dev", "nick": a.nick}))
            .await;
        a.join("ops").await;
        c.expect_exact(json!({"type": "join", "room": "ops", "nick": a.nick}))
            .await;

        let renamed = rename(&mut a, "ada").await;
        assert_eq!(renamed["nick"], "ada");
        b.expect_exact(renamed.clone()).await; // shares lobby and dev: once
        c.expect_exact(renamed).await; // shares ops

        // No second copy anywhere, and nothing at all for d: the next events are markers.
        say_and_see(&mut a, &mut [&mut b], "lobby", 1, "once").await;
        say_and_see(&mut a, &mut [&mut c], "ops", 1, "once").await;
        a.send(json!({"type": "direct", "to": d.nick, "text": "hi d"}))
            .await;
        let direct = json!({"type": "direct", "from": "ada", "to": d.nick, "text": "hi d"});
        d.expect_exact(direct.clone()).await;
        a.expect_exact(direct).await;
        // The new nick is what others see from now on.
        b.send(json!({"type": "who", "room": "dev"})).await;
        b.expect_exact(members_event("dev", &[&b.nick, "ada"]))
            .await;
    });
}

fn a_client_alone_gets_its_own_nick_event(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a] = clients(server.addr).await;
        rename(&mut a, "solo").await;
        say_and_see(&mut a, &mut [], "lobby", 1, "x").await;
    });
}

fn nick_taken_ignores_case_and_leaves_the_nick_unchanged(authority: Authority) {
    let server = setup(authority, |c| c.rate_limit = 0);
    run(async {
        let [mut a, mut b, mut c] = clients(server.addr).await;
        let renamed = rename(&mut a, "Ada").await;
        b.expect_exact(renamed.clone()).await;
        c.expect_exact(renamed).await;

        let c_upper = c.nick.to_uppercase();
        let mut id = 0;
        for taken in ["Ada", "ada", "ADA", "aDa", c_upper.as_str()] {
            b.send(json!({"type": "nick", "nick": taken})).await;
            expect_err(&mut b, "nick_taken").await;
            // b still works, under its old nick, and nobody heard of the attempt.
            id += 1;
            say_and_see(&mut b, &mut [&mut a, &mut c], "lobby", id, "still me").await;
        }
        // The owner may change the case of its own nick.
        let renamed = rename(&mut a, "ADA").await;
        b.expect_exact(renamed.clone()).await;
        c.expect_exact(renamed).await;
        // And the old spelling is still taken (it is the same nick, ignoring case).
        b.send(json!({"type": "nick", "nick": "ada"})).await;
        expect_err(&mut b, "nick_taken").await;
        say_and_see(&mut b, &mut [&mut a, &mut c], "lobby", id + 1, "ok").await;
    });
}

fn invalid_nicks_are_refused_and_the_connection_keeps_working(authority: Authority) {
    let server = setup(authority, |c| c.rate_limit = 0);
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        let too_long = "x".repeat(33);
        let mut id = 0;
        for bad in [
            "a b",
            "\u{e9}l\u{e8}ve",
            too_long.as_str(),
            "a/b",
            "tab\t",
            "<b>",
            "a,b",
        ] {
            a.send(json!({"type": "nick", "nick": bad})).await;
            expect_err(&mut a, "invalid_nick").await;
            id += 1;
            say_and_see(&mut a, &mut [&mut b], "lobby", id, "unchanged").await;
        }
        // The longest and most varied valid nick.
        let longest = format!("Ab.-_9{}", "z".repeat(26));
        assert_eq!(longest.len(), 32);
        let renamed = rename(&mut a, &longest).await;
        b.expect_exact(renamed).await;
        say_and_see(&mut a, &mut [&mut b], "lobby", id + 1, "renamed").await;
    });
}

fn a_nick_is_freed_when_its_owner_disconnects(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b, mut c] = clients(server.addr).await;
        let renamed = rename(&mut a, "ada").await;
        b.expect_exact(renamed.clone()).await;
        c.expect_exact(renamed).await;
        b.send(json!({"type": "nick", "nick": "ada"})).await;
        expect_err(&mut b, "nick_taken").await;

        a.close().await;
        let left =
            json!({"type": "leave", "room": "lobby", "nick": "ada", "reason": "disconnected"});
        b.expect_exact(left.clone()).await;
        c.expect_exact(left).await;

        // b may now take it, in any case, and direct messages to it reach b.
        let renamed = rename(&mut b, "ADA").await;
        c.expect_exact(renamed).await;
        c.send(json!({"type": "direct", "to": "ada", "text": "found you"}))
            .await;
        let direct = json!({"type": "direct", "from": c.nick, "to": "ADA", "text": "found you"});
        b.expect_exact(direct.clone()).await;
        c.expect_exact(direct).await;
        // A newcomer cannot.
        let mut d = Client::connect(server.addr).await;
        for o in [&mut b, &mut c] {
            o.expect_exact(json!({"type": "join", "room": "lobby", "nick": d.nick}))
                .await;
        }
        d.send(json!({"type": "nick", "nick": "Ada"})).await;
        expect_err(&mut d, "nick_taken").await;
        say_and_see(&mut d, &mut [&mut b, &mut c], "lobby", 1, "newcomer").await;
    });
}

fn renaming_frees_the_old_nick_and_new_guests_avoid_taken_nicks(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        let old = a.nick.clone();
        let renamed = rename(&mut a, "bob").await;
        b.expect_exact(renamed).await;
        // The old nick is nobody's now.
        b.send(json!({"type": "direct", "to": old, "text": "x"}))
            .await;
        expect_err(&mut b, "unknown_recipient").await;
        let renamed = rename(&mut b, &old).await;
        a.expect_exact(renamed).await;

        // Take, in capitals, the guest nick that would come next if guests are numbered in
        // order: a newcomer must still get a nick nobody has, ignoring case.
        let n: u64 = old.strip_prefix("guest-").unwrap().parse().unwrap();
        let next_guest = format!("GUEST-{}", n + 2);
        let renamed = rename(&mut a, &next_guest).await;
        b.expect_exact(renamed).await;
        let c = Client::connect(server.addr).await;
        assert!(is_guest_nick(&c.nick), "{}", c.nick);
        for taken in [&a.nick, &b.nick] {
            assert!(!c.nick.eq_ignore_ascii_case(taken), "{} is taken", c.nick);
        }
        for o in [&mut a, &mut b] {
            o.expect_exact(json!({"type": "join", "room": "lobby", "nick": c.nick}))
                .await;
        }
    });
}

// ---------------------------------------------------------------- direct

fn direct_reaches_the_recipient_and_comes_back_to_the_sender_only(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b, mut c] = clients(server.addr).await;
        a.send(json!({"type": "direct", "to": b.nick, "text": "psst"}))
            .await;
        let direct = json!({"type": "direct", "from": a.nick, "to": b.nick, "text": "psst"});
        b.expect_exact(direct.clone()).await;
        a.expect_exact(direct).await;

        // The lookup ignores case; `to` is the recipient's nick as it is spelled.
        a.send(json!({"type": "direct", "to": b.nick.to_uppercase(), "text": "LOUD"}))
            .await;
        let direct = json!({"type": "direct", "from": a.nick, "to": b.nick, "text": "LOUD"});
        b.expect_exact(direct.clone()).await;
        a.expect_exact(direct).await;
        let renamed = rename(&mut b, "Bob").await;
        a.expect_exact(renamed.clone()).await;
        c.expect_exact(renamed).await;
        a.send(json!({"type": "direct", "to": "bOB", "text": "hi Bob"}))
            .await;
        let direct = json!({"type": "direct", "from": a.nick, "to": "Bob", "text": "hi Bob"});
        b.expect_exact(direct.clone()).await;
        a.expect_exact(direct).await;

        // Sharing no room does not matter.
        b.send(json!({"type": "leave", "room": "lobby"})).await;
        for o in [&mut a, &mut c] {
            o.expect_exact(
                json!({"type": "leave", "room": "lobby", "nick": "Bob", "reason": "left"}),
            )
            .await;
        }
        b.send(json!({"type": "direct", "to": a.nick, "text": "from nowhere"}))
            .await;
        let direct = json!({"type": "direct", "from": "Bob", "to": a.nick, "text": "from nowhere"});
        a.expect_exact(direct.clone()).await;
        b.expect_exact(direct).await;

        // c saw none of it: its next event is this marker.
        say_and_see(&mut c, &mut [&mut a], "lobby", 1, "marker").await;
    });
}

fn a_direct_message_to_oneself_arrives_once(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        a.send(json!({"type": "direct", "to": a.nick, "text": "note to self"}))
            .await;
        a.expect_exact(
            json!({"type": "direct", "from": a.nick, "to": a.nick, "text": "note to self"}),
        )
        .await;
        say_and_see(&mut a, &mut [&mut b], "lobby", 1, "marker").await;
    });
}

fn direct_to_an_unknown_nick_is_unknown_recipient(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, b, mut c] = clients(server.addr).await;
        let gone = b.nick.clone();
        b.close().await;
        for o in [&mut a, &mut c] {
            o.expect_exact(
                json!({"type": "leave", "room": "lobby", "nick": gone, "reason": "disconnected"}),
            )
            .await;
        }
        let mut id = 0;
        for to in ["nobody", gone.as_str(), "not a nick"] {
            a.send(json!({"type": "direct", "to": to, "text": "hello?"}))
                .await;
            expect_err(&mut a, "unknown_recipient").await;
            id += 1;
            say_and_see(&mut a, &mut [&mut c], "lobby", id, "still here").await;
        }
    });
}

// ---------------------------------------------------------------- who, rooms

fn who_lists_a_rooms_members_in_join_order(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b, mut c] = clients(server.addr).await;
        a.send(json!({"type": "who", "room": "lobby"})).await;
        a.expect_exact(members_event("lobby", &[&a.nick, &b.nick, &c.nick]))
            .await;

        b.join("dev").await;
        a.join("dev").await;
        b.expect_exact(json!({"type": "join", "room": "dev", "nick": a.nick}))
            .await;
        // Asking needs no membership.
        c.send(json!({"type": "who", "room": "dev"})).await;
        c.expect_exact(members_event("dev", &[&b.nick, &a.nick]))
            .await;
        // A room nobody ever joined has no members.
        c.send(json!({"type": "who", "room": "nowhere"})).await;
        c.expect_exact(members_event("nowhere", &[])).await;

        b.send(json!({"type": "leave", "room": "dev"})).await;
        a.expect_exact(json!({"type": "leave", "room": "dev", "nick": b.nick, "reason": "left"}))
            .await;
        c.send(json!({"type": "who", "room": "dev"})).await;
        c.expect_exact(members_event("dev", &[&a.nick])).await;
        // `who` goes to the asker only.
        say_and_see(&mut c, &mut [&mut a, &mut b], "lobby", 1, "marker").await;
    });
}

fn rooms_lists_every_room_with_its_member_count(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b, mut c] = clients(server.addr).await;
        b.join("dev").await;
        a.join("dev").await;
        b.expect_exact(json!({"type": "join", "room": "dev", "nick": a.nick}))
            .await;
        a.join("ops").await;

        c.send(json!({"type": "rooms"})).await;
        let mut got = c.expect("rooms").await;
        assert_eq!(got.as_object().unwrap().len(), 3, "{got}");
        assert_eq!(got["count"], 3, "{got}");
        let list = got["rooms"].as_array_mut().expect("rooms is a list");
        list.sort_by_key(|r| r["name"].to_string());
        assert_eq!(
            got["rooms"],
            json!([
                {"name": "dev", "members": 2},
                {"name": "lobby", "members": 3},
                {"name": "ops", "members": 1},
            ])
        );
        // `rooms` goes to the asker only.
        say_and_see(&mut c, &mut [&mut a, &mut b], "lobby", 1, "marker").await;
    });
}

// ---------------------------------------------------------------- errors

fn bad_requests_are_refused_and_the_connection_keeps_working(authority: Authority) {
    let server = setup(authority, |c| c.rate_limit = 0);
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        let frames = [
            // An empty frame: empty text.
            "",
            // Malformed JSON.
            "{bad",
            "  {bad",
            "{\"type\":\"say\",\"room\":\"lobby\",\"text\":\"x\"} trailing",
            // No type, or an unknown one.
            "{}",
            r#"{"room":"lobby","text":"x"}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"SAY","room":"lobby","text":"x"}"#,
            r#"{"type":5}"#,
            r#"{"type":null}"#,
            // Missing fields.
            r#"{"type":"nick"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"say","room":"lobby"}"#,
            r#"{"type":"say","text":"x"}"#,
            r#"{"type":"direct","to":"someone"}"#,
            r#"{"type":"direct","text":"x"}"#,
            r#"{"type":"who"}"#,
            // Empty fields.
            r#"{"type":"nick","nick":""}"#,
            r#"{"type":"join","room":""}"#,
            r#"{"type":"say","room":"lobby","text":""}"#,
            r#"{"type":"direct","to":"","text":"x"}"#,
            r#"{"type":"direct","to":"someone","text":""}"#,
            // Wrong field types.
            r#"{"type":"join","room":5}"#,
            r#"{"type":"join","room":"dev","since":"3"}"#,
            r#"{"type":"join","room":"dev","since":-1}"#,
            r#"{"type":"join","room":"dev","epoch":7}"#,
            r#"{"type":"say","room":"lobby","text":5}"#,
            r#"{"type":"say","room":["lobby"],"text":"x"}"#,
            r#"{"type":"nick","nick":null}"#,
            r#"{"type":"direct","to":{"nick":"x"},"text":"x"}"#,
        ];
        for (i, frame) in frames.into_iter().enumerate() {
            a.send_text(frame).await;
            let e = a.next().await;
            assert_eq!(e["type"], "error", "{frame} gave {e}");
            assert_eq!(e["code"], "bad_request", "{frame} gave {e}");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            assert_eq!(e.as_object().unwrap().len(), 3, "{e}");
            // a still works, and b heard nothing of the bad frame.
            let id = i as u64 + 1;
            say_and_see(&mut a, &mut [&mut b], "lobby", id, "ok").await;
        }
        // None of the refused commands had an effect: a is still only in the lobby.
        a.send(json!({"type": "rooms"})).await;
        a.expect_exact(
            json!({"type": "rooms", "rooms": [{"name": "lobby", "members": 2}], "count": 1}),
        )
        .await;
    });
}

fn invalid_room_names_are_refused_for_every_command(authority: Authority) {
    let server = setup(authority, |c| c.rate_limit = 0);
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        let too_long = "r".repeat(33);
        let mut commands = Vec::new();
        for bad in [
            "Dev",
            "a b",
            "caf\u{e9}",
            "dev.ops",
            "dev/ops",
            too_long.as_str(),
        ] {
            commands.push(json!({"type": "join", "room": bad}));
            commands.push(json!({"type": "join", "room": bad, "since": 0, "epoch": "e"}));
            commands.push(json!({"type": "leave", "room": bad}));
            commands.push(json!({"type": "say", "room": bad, "text": "x"}));
            commands.push(json!({"type": "who", "room": bad}));
        }
        for (i, command) in commands.into_iter().enumerate() {
            a.send(command.clone()).await;
            let e = a.next().await;
            assert_eq!(e["type"], "error", "{command} gave {e}");
            assert_eq!(e["code"], "invalid_room", "{command} gave {e}");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            say_and_see(&mut a, &mut [&mut b], "lobby", i as u64 + 1, "ok").await;
        }
        // The longest and most varied valid name.
        let longest = format!("a-_9{}", "z".repeat(28));
        assert_eq!(longest.len(), 32);
        a.send(json!({"type": "join", "room": longest})).await;
        a.expect_room(room_event(&longest, &[&a.nick], 0)).await;
        say_and_see(&mut a, &mut [], &longest, 1, "long room").await;
    });
}

fn say_or_leave_in_a_room_not_joined_is_not_member(authority: Authority) {
    let server = setup(authority, |_| {});
    run(async {
        let [mut a, mut b] = clients(server.addr).await;
        b.join("dev").await;
        // dev exists and has b in it; a is not a member.
        a.say("dev", "let me in").await;
        expect_err(&mut a, "not_member").await;
        say_and_see(&mut a, &mut [&mut b], "lobby", 1, "ok").await;
        a.send(json!({"type": "leave", "room": "dev"})).await;
        expect_err(&mut a, "not_member").await;
        say_and_see(&mut a, &mut [&mut b], "lobby", 2, "ok").await;
        // A room that does not exist at all.
        a.say("never", "x").await;
        expect_err(&mut a, "not_member").await;
        a.send(json!({"type": "leave", "room": "never"})).await;
        expect_err(&mut a, "not_member").await;
        say_and_see(&mut a, &mut [&mut b], "lobby", 3, "ok").await;
        // dev got no message from a: its first id is still 1.
        say_and_see(&mut b, &mut [], "dev", 1, "first in dev").await;
    });
}

on_every_authority!(
    connect_sends_welcome_then_the_lobby_room_event,
    welcome_reports_the_configured_limits,
    join_sends_room_to_the_joiner_and_join_to_the_members_only,
    unknown_fields_in_commands_are_ignored,
    leave_tells_the_others_with_reason_left_and_not_the_leaver,
    leaving_the_lobby_is_allowed_and_announced,
    closing_the_connection_announces_leave_disconnected_in_every_room,
    dropping_the_socket_without_a_close_frame_is_a_disconnect_too,
    message_ids_start_at_one_per_room_and_increase,
    plain_text_frames_go_to_the_most_recently_joined_room,
    a_resync_makes_the_room_current_again,
    a_message_in_one_room_never_reaches_a_client_only_in_another,
    nick_goes_to_the_renamed_client_and_each_room_mate_once,
    a_client_alone_gets_its_own_nick_event,
    nick_taken_ignores_case_and_leaves_the_nick_unchanged,
    invalid_nicks_are_refused_and_the_connection_keeps_working,
    a_nick_is_freed_when_its_owner_disconnects,
    renaming_frees_the_old_nick_and_new_guests_avoid_taken_nicks,
    direct_reaches_the_recipient_and_comes_back_to_the_sender_only,
    a_direct_message_to_oneself_arrives_once,
    direct_to_an_unknown_nick_is_unknown_recipient,
    who_lists_a_rooms_members_in_join_order,
    rooms_lists_every_room_with_its_member_count,
    bad_requests_are_refused_and_the_connection_keeps_working,
    invalid_room_names_are_refused_for_every_command,
    say_or_leave_in_a_room_not_joined_is_not_member,
);
