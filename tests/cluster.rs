//! Scale-out (the `redis` feature): several nodes against one real `redis-server` share rooms,
//! ids, history, nicks, presence and direct messages; a killed node's members leave with
//! `node_lost`; a Redis outage is answered with `unavailable` and then healed.
//!
//! Nodes run in this process (`server::start` on port 0, sharing the Redis URL), except the ones
//! that are killed or frozen, which are the real binary in a subprocess. Heartbeats are 1 s
//! here, and 250 ms in the tests that kill or freeze a node, so it is noticed within about a
//! second. A [`Proxy`] between a node and Redis cuts one node's link without closing it.
//!
//! The tests named after issue 12's defects (2 to 7) each failed on the code before the one-hub
//! redesign (commit 0924df0).
#![cfg(feature = "redis")]

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use redis_server::{Cut, Proxy, RedisServer};
use serde_json::{Value, json};

fn node(redis: &RedisServer) -> TestServer {
    node_with(redis, |_| {})
}

fn node_with(redis: &RedisServer, change: impl FnOnce(&mut smolchat::Config)) -> TestServer {
    node_at(&redis.url(), change)
}

/// A node that reaches Redis at `url` (a [`Proxy`]'s, say).
fn node_at(url: &str, change: impl FnOnce(&mut smolchat::Config)) -> TestServer {
    let server = server_with(|c| {
        c.redis = Some(url.to_string());
        // Long enough that a busy test machine never misses a beat by accident.
        c.redis_heartbeat = Duration::from_secs(1);
        c.rate_limit = 0;
        change(c);
    });
    wait_until("the node to reach Redis", || {
        !server.running().chat().metrics().redis_down()
    });
    server
}

/// Polls `ready` every 10 ms until it holds, failing the test after [`DEADLINE`].
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn status(addr: SocketAddr, path: &str) -> u16 {
    let response = http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    response[9..12].parse().unwrap()
}

/// Connects to `addr` and takes `nick`; earlier clients in `others` see the join and the
/// rename (they are all in the lobby).
async fn join_as(addr: SocketAddr, nick: &str, others: &mut [&mut Client]) -> Client {
    let mut c = Client::connect(addr).await;
    for o in others.iter_mut() {
        o.expect_exact(json!({"type": "join", "room": "lobby", "nick": c.nick}))
            .await;
    }
    c.send(json!({"type": "nick", "nick": nick})).await;
    let renamed = json!({"type": "nick", "old": c.nick, "nick": nick});
    c.expect_exact(renamed.clone()).await;
    for o in others.iter_mut() {
        o.expect_exact(renamed.clone()).await;
    }
    c.nick = nick.to_string();
    c
}

/// Reads `count` messages of `room` from `c` and returns them as (id, from, text).
async fn messages(c: &mut Client, room: &str, count: usize) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    while out.len() < count {
        let e = c.expect("message").await;
        assert_eq!(e["room"], room, "{e}");
        out.push((
            e["id"].as_u64().unwrap(),
            e["from"].as_str().unwrap().to_string(),
            e["text"].as_str().unwrap().to_string(),
        ));
    }
    out
}

#[test]
fn three_nodes_share_rooms_with_one_id_sequence() {
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    run(async {
        let mut a = join_as(nodes[0].addr, "ada", &mut []).await;
        let mut b = join_as(nodes[1].addr, "bob", &mut [&mut a]).await;
        let mut c = join_as(nodes[2].addr, "cy", &mut [&mut a, &mut b]).await;

        // Everybody, on every node, is in the member lists.
        a.send(json!({"type": "who", "room": "lobby"})).await;
        a.expect_exact(members_event("lobby", &["ada", "bob", "cy"]))
            .await;

        // Interleaved senders on three nodes: one sequence, the same everywhere.
        let per_client = 20;
        for i in 0..per_client {
            a.say("lobby", &format!("a{i}")).await;
            b.say("lobby", &format!("b{i}")).await;
            c.say("lobby", &format!("c{i}")).await;
        }
        let total = 3 * per_client;
        let seen_a = messages(&mut a, "lobby", total).await;
        let seen_b = messages(&mut b, "lobby", total).await;
        let seen_c = messages(&mut c, "lobby", total).await;
        let ids: Vec<u64> = seen_a.iter().map(|m| m.0).collect();
        assert_eq!(
            ids,
            (1..=total as u64).collect::<Vec<_>>(),
            "no gap, no repeat"
        );
        assert_eq!(seen_a, seen_b, "same order on node 1 and node 2");
        assert_eq!(seen_a, seen_c, "same order on node 1 and node 3");
        // Each sender's own messages keep their order.
        for who in ["ada", "bob", "cy"] {
            let texts: Vec<&str> = seen_a
                .iter()
                .filter(|m| m.1 == who)
                .map(|m| m.2.as_str())
                .collect();
            let expected: Vec<String> = (0..per_client)
                .map(|i| format!("{}{i}", &who[..1]))
                .collect();
            assert_eq!(texts, expected);
        }

        // A room only some are in: members on other nodes get it, others do not.
        let dev = a.join("dev").await;
        assert_eq!(dev["members"], json!(["ada"]));
        let dev_c = c.join("dev").await;
        assert_eq!(dev_c["members"], json!(["ada", "cy"]));
        assert_eq!(
            dev_c["epoch"], dev["epoch"],
            "one epoch per room for all nodes"
        );
        a.expect_exact(json!({"type": "join", "room": "dev", "nick": "cy"}))
            .await;
        c.say("dev", "only dev").await;
        for x in [&mut a, &mut c] {
            x.expect_exact(message("dev", 1, "cy", "only dev")).await;
        }
        // b is not in dev: its next event is this lobby message.
        b.say("lobby", "marker").await;
        let marker = message("lobby", total as u64 + 1, "bob", "marker");
        for x in [&mut b, &mut a, &mut c] {
            x.expect_exact(marker.clone()).await;
        }

        // Rooms and counts from every node.
        b.send(json!({"type": "rooms"})).await;
        b.expect_exact(json!({"type": "rooms", "rooms": [
            {"name": "dev", "members": 2},
            {"name": "lobby", "members": 3},
        ], "count": 2}))
            .await;

        // Direct messages reach a recipient on another node, matched ignoring case.
        b.send(json!({"type": "direct", "to": "CY", "text": "psst"}))
            .await;
        let direct = json!({"type": "direct", "from": "bob", "to": "cy", "text": "psst"});
        b.expect_exact(direct.clone()).await;
        c.expect_exact(direct).await;
        b.send(json!({"type": "direct", "to": "nobody", "text": "x"}))
            .await;
        b.expect_error("unknown_recipient").await;

        // A leave and a disconnect reach the other nodes.
        c.send(json!({"type": "leave", "room": "dev"})).await;
        a.expect_exact(json!({"type": "leave", "room": "dev", "nick": "cy", "reason": "left"}))
            .await;
        c.close().await;
        for x in [&mut a, &mut b] {
            x.expect_exact(
                json!({"type": "leave", "room": "lobby", "nick": "cy", "reason": "disconnected"}),
            )
            .await;
        }
    });
}

#[test]
fn nicks_are_unique_across_nodes() {
    let redis = RedisServer::start();
    let (one, two) = (node(&redis), node(&redis));
    run(async {
        let mut a = join_as(one.addr, "ada", &mut []).await;
        let mut b = Client::connect(two.addr).await;
        assert_ne!(b.nick, "ada");
        a.expect("join").await;
        b.send(json!({"type": "nick", "nick": "ADA"})).await;
        b.expect_error("nick_taken").await;
        // Guest nicks are unique across nodes too.
        let c = Client::connect(one.addr).await;
        assert_ne!(c.nick, b.nick);
        // Once ada is gone, its nick is free on every node.
        a.close().await;
        b.expect("join").await; // c
        let left = b.expect("leave").await;
        assert_eq!(left["nick"], "ada");
        b.send(json!({"type": "nick", "nick": "Ada"})).await;
        assert_eq!(b.expect("nick").await["nick"], "Ada");
    });
}

#[test]
fn a_client_recovers_on_a_different_node() {
    let redis = RedisServer::start();
    let nodes = [
        node_with(&redis, |c| c.history = 3),
        node_with(&redis, |c| c.history = 3),
        node_with(&redis, |c| c.history = 3),
    ];
    run(async {
        let mut a = join_as(nodes[0].addr, "ada", &mut []).await;
        let mut writer = join_as(nodes[1].addr, "wri", &mut [&mut a]).await;
        let epoch = a.join("dev").await["epoch"].as_str().unwrap().to_string();
        writer.join("dev").await;
        a.expect("join").await;
        for i in 1..=2 {
            writer.say("dev", &format!("m{i}")).await;
            writer.expect("message").await;
            assert_eq!(a.expect("message").await["id"], i);
        }
        a.close().await; // its cursor: (epoch, 2)
        for _ in 0..2 {
            writer.expect("leave").await; // dev and lobby
        }
        for i in 3..=4 {
            writer.say("dev", &format!("m{i}")).await;
            writer.expect("message").await;
        }

        // Back on the third node: exactly 3 and 4, complete.
        let mut back = Client::connect(nodes[2].addr).await;
        writer.expect("join").await;
        let mut join = json!({"type": "join", "room": "dev", "since": 2, "epoch": epoch});
        back.send(join.clone()).await;
        let room = back
            .expect_exact(json!({
                "type": "room", "room": "dev", "epoch": epoch,
                "members": ["wri", back.nick], "count": 2, "last_id": 4, "complete": true,
            }))
            .await;
        assert_eq!(room["epoch"], epoch.as_str());
        back.expect_exact(message("dev", 3, "wri", "m3")).await;
        back.expect_exact(message("dev", 4, "wri", "m4")).await;
        writer.expect("join").await;
        // Live messages follow without a repeat.
        writer.say("dev", "m5").await;
        back.expect_exact(message("dev", 5, "wri", "m5")).await;

        // With only 3 kept, a cursor at 1 learns that 2 was lost.
        join["since"] = json!(1);
        back.send(join).await;
        let room = back.expect("room").await;
        assert_eq!(room["complete"], false);
        assert_eq!(room["last_id"], 5);
        for id in 3..=5 {
            assert_eq!(back.expect("message").await["id"], id);
        }
    });
}

/// Starts the real binary as a node and returns it with its address.
fn spawn_binary_node(redis: &RedisServer) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smolchat"))
        .args(["--listen", "127.0.0.1:0", "--rate-limit", "0"])
        .args(["--redis", &redis.url(), "--redis-heartbeat", "250ms"])
        .args(["--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the smolchat binary");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("a log line").expect("log output");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[test]
fn a_killed_node_members_leave_with_node_lost() {
    let redis = RedisServer::start();
    let survivor = node_with(&redis, |c| c.redis_heartbeat = Duration::from_millis(250));
    let (mut doomed_node, doomed_addr) = spawn_binary_node(&redis);
    run(async {
        let mut watcher = join_as(survivor.addr, "watcher", &mut []).await;
        let deadline = Instant::now() + DEADLINE;
        while status(doomed_addr, "/healthz").await != 200 {
            assert!(
                Instant::now() < deadline,
                "the binary node never reached Redis"
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        let mut doomed = join_as(doomed_addr, "doomed", &mut [&mut watcher]).await;
        doomed.join("dev").await;
        watcher.join("dev").await;
        doomed.expect("join").await;

        // SIGKILL: no goodbye, no close frames.
        doomed_node.kill().unwrap();
        doomed_node.wait().unwrap();
        let mut left = Vec::new();
        for _ in 0..2 {
            let e = watcher.expect("leave").await;
            assert_eq!(e["nick"], "doomed");
            assert_eq!(e["reason"], "node_lost", "{e}");
            left.push(e["room"].as_str().unwrap().to_string());
        }
        left.sort();
        assert_eq!(left, ["dev", "lobby"]);
        watcher.send(json!({"type": "who", "room": "lobby"})).await;
        watcher
            .expect_exact(members_event("lobby", &["watcher"]))
            .await;
        // Its nick is free again.
        watcher
            .send(json!({"type": "nick", "nick": "doomed"}))
            .await;
        watcher.expect("nick").await;
        drop(doomed);
    });
}

#[test]
fn a_redis_outage_is_answered_with_unavailable_then_healed() {
    let mut redis = RedisServer::start();
    let (one, two) = (node(&redis), node(&redis));
    let (addr_one, addr_two) = (one.addr, two.addr);
    let mut a = None;
    let mut b = None;
    run(async {
        let mut ca = join_as(addr_one, "ada", &mut []).await;
        let mut cb = join_as(addr_two, "bob", &mut [&mut ca]).await;
        for i in 1..=3 {
            ca.say("lobby", &format!("m{i}")).await;
            for c in [&mut ca, &mut cb] {
                assert_eq!(c.expect("message").await["id"], i);
            }
        }
        a = Some(ca);
        b = Some(cb);
    });
    let (mut a, mut b) = (a.unwrap(), b.unwrap());

    redis.kill();
    wait_until("node one to notice", || {
        one.running().chat().metrics().redis_down()
    });
    run(async {
        assert_eq!(status(addr_one, "/healthz").await, 503);
        let metrics = http(addr_one, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(metrics.contains("\nsmolchat_redis_up 0\n"), "{metrics}");
        // Sends are refused, not dropped; the connection stays.
        a.say("lobby", "during the outage").await;
        a.expect_error("unavailable").await;
        a.send(json!({"type": "who", "room": "lobby"})).await;
        a.expect_error("unavailable").await;
    });

    redis.restart();
    wait_until("both nodes to reconnect", || {
        !one.running().chat().metrics().redis_down() && !two.running().chat().metrics().redis_down()
    });
    run(async {
        assert_eq!(status(addr_one, "/healthz").await, 200);
        // The ids go on where they were: no repeat, no gap, and both see each message once.
        for (i, c) in [(4, &mut a), (5, &mut b)] {
            c.say("lobby", &format!("m{i}")).await;
        }
        let from_a = messages(&mut a, "lobby", 2).await;
        let from_b = messages(&mut b, "lobby", 2).await;
        assert_eq!(from_a, from_b);
        assert_eq!(
            from_a.iter().map(|m| m.0).collect::<Vec<_>>(),
            [4, 5],
            "{from_a:?}"
        );
        // Presence survived too.
        b.send(json!({"type": "who", "room": "lobby"})).await;
        b.expect_exact(members_event("lobby", &["ada", "bob"]))
            .await;
    });
}

#[test]
fn a_room_named_with_the_id_placeholder_keeps_its_name_and_ids() {
    // Regression: the clustered hub cut the encoded event at the first run of the id
    // placeholder's digits, which was inside this room's name.
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis)];
    run(async {
        let room = "18446744073709551615";
        let mut a = join_as(nodes[0].addr, "ada", &mut []).await;
        let mut b = join_as(nodes[1].addr, "bob", &mut [&mut a]).await;
        a.join(room).await;
        b.join(room).await;
        a.expect("join").await;
        for (i, text) in ["one", "two"].iter().enumerate() {
            a.say(room, text).await;
            for c in [&mut a, &mut b] {
                let got = messages(c, room, 1).await;
                assert_eq!(got, [(i as u64 + 1, "ada".to_string(), text.to_string())]);
            }
        }
        // A huge `who` offset is an empty page, not an unavailable script.
        a.send(json!({"type": "who", "room": room, "offset": 1_000_000_000_000_000u64}))
            .await;
        let page = a.expect("members").await;
        assert_eq!(page["members"], json!([]), "{page}");
        assert_eq!(page["count"], 2, "{page}");
    });
}

/// Sends `who` for `room` and returns the member count of the answer, skipping the presence
/// events that arrive before it.
async fn who_count(c: &mut Client, room: &str) -> u64 {
    c.send(json!({"type": "who", "room": room})).await;
    loop {
        let e = c.next().await;
        if e["type"] == "members" {
            return e["count"].as_u64().unwrap();
        }
        assert!(matches!(e["type"].as_str(), Some("join" | "leave")), "{e}");
    }
}

/// Sends a signal to a child process.
fn signal(child: &std::process::Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill(1)")
        .success();
    assert!(ok, "kill -{name} failed");
}

/// Waits (bounded) until the node at `addr` answers `/healthz` with 200.
async fn healthy(addr: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    while status(addr, "/healthz").await != 200 {
        assert!(Instant::now() < deadline, "{addr} never became healthy");
        smol::Timer::after(Duration::from_millis(20)).await;
    }
}

#[test]
fn defect_2_a_node_frozen_past_its_heartbeat_closes_its_reaped_clients() {
    // Issue 12, defect 2: a node frozen longer than its heartbeat's time to live was reaped by
    // the others (its members left with `node_lost`, one of their nicks was taken). When it
    // wakes up its clients must not carry on as zombies that nobody hears: they are closed
    // with 1012, and the node is healthy again afterwards.
    let redis = RedisServer::start();
    let survivor = node_with(&redis, |c| c.redis_heartbeat = Duration::from_millis(250));
    let (mut frozen_node, frozen_addr) = spawn_binary_node(&redis);
    run(async {
        healthy(frozen_addr).await;
        let mut watcher = join_as(survivor.addr, "watcher", &mut []).await;
        let mut zombie = join_as(frozen_addr, "ada", &mut [&mut watcher]).await;

        signal(&frozen_node, "STOP");
        let left = watcher.expect("leave").await;
        assert_eq!(
            (&left["nick"], &left["reason"]),
            (&json!("ada"), &json!("node_lost"))
        );
        let thief = join_as(survivor.addr, "ada", &mut [&mut watcher]).await;
        signal(&frozen_node, "CONT");

        let (code, reason, _) = zombie.expect_close().await;
        assert_eq!(code, 1012, "{reason}");
        watcher.send(json!({"type": "who", "room": "lobby"})).await;
        watcher
            .expect_exact(members_event("lobby", &["watcher", "ada"]))
            .await;
        healthy(frozen_addr).await;
        // The woken node serves again: a newcomer there talks with the survivor's clients.
        let mut newcomer = Client::connect(frozen_addr).await;
        watcher.expect("join").await;
        newcomer.say("lobby", "awake").await;
        let from = newcomer.nick.clone();
        for c in [&mut newcomer, &mut watcher] {
            c.expect_exact(message("lobby", 1, &from, "awake")).await;
        }
        drop(thief);
    });
    frozen_node.kill().unwrap();
    frozen_node.wait().unwrap();
}

#[test]
fn defect_3_a_room_whose_resync_failed_is_not_held_forever() {
    // Issue 12, defect 3: after a reconnect the hub holds every room's events until the room
    // is resynced. A resync that fails (here a script error on the room's key, WRONGTYPE; BUSY,
    // OOM or READONLY did the same) left the room held for good: nobody on the node heard
    // from it again. Now the node tries again until every room is released.
    let redis = RedisServer::start();
    let node = node(&redis);
    let wrongtype = || {
        let stat = redis.info("errorstats", "errorstat_WRONGTYPE");
        stat.trim_start_matches("count=")
            .parse::<u64>()
            .unwrap_or(0)
    };
    run(async {
        let mut a = join_as(node.addr, "ada", &mut []).await;
        let mut b = join_as(node.addr, "bob", &mut [&mut a]).await;
        a.join("dev").await;
        b.join("dev").await;
        a.expect("join").await;

        // dev's state cannot be read for a while, and every connection to Redis drops.
        redis.command("RENAME smolchat:room:dev smolchat:saved");
        redis.command("SET smolchat:room:dev broken");
        let failures = wrongtype();
        redis.command("CLIENT KILL TYPE normal");
        redis.command("CLIENT KILL TYPE pubsub");
        wait_until("the node to fail reading dev", || wrongtype() > failures);
        redis.command("DEL smolchat:room:dev");
        redis.command("RENAME smolchat:saved smolchat:room:dev");

        wait_until("the node to be back", || {
            !node.running().chat().metrics().redis_down()
        });
        a.say("dev", "heard").await;
        for c in [&mut a, &mut b] {
            c.expect_exact(message("dev", 1, "ada", "heard")).await;
        }
    });
}

#[test]
fn defect_4_history_and_rooms_in_redis_are_bounded() {
    // Issue 12, defect 4: Redis grew without bound. History was trimmed by count only (so a
    // replay could exceed --queue-bytes), rooms were never deleted and `--max-rooms` counted
    // one node's rooms, and every disconnect left a `gone:` key.
    let redis = RedisServer::start();
    let config = |c: &mut smolchat::Config| {
        c.max_message_bytes = 1000;
        c.history = 100;
        c.history_bytes = 5000;
        c.max_rooms = 2;
    };
    let (one, two) = (node_with(&redis, config), node_with(&redis, config));
    run(async {
        let mut a = join_as(one.addr, "ada", &mut []).await;
        let mut c = join_as(two.addr, "cy", &mut [&mut a]).await;

        // History by bytes: 8 messages of about 1 KB; 5000 bytes of them are kept.
        a.join("big").await;
        let text = "x".repeat(900);
        for id in 1..=8 {
            a.say("big", &text).await;
            a.expect_exact(message("big", id, "ada", &text)).await;
        }
        c.send(json!({"type": "join", "room": "big", "since": 0}))
            .await;
        let room = c.expect("room").await;
        assert_eq!(
            (&room["last_id"], &room["complete"]),
            (&json!(8), &json!(false))
        );
        a.expect("join").await;
        c.say("big", "end").await;
        let (mut bytes, mut ids) = (0, Vec::new());
        loop {
            let e = c.expect("message").await;
            if e["text"] == "end" {
                break;
            }
            bytes += e.to_string().len();
            ids.push(e["id"].as_u64().unwrap());
        }
        a.expect("message").await;
        assert!(bytes <= 5000, "replayed {bytes} bytes of history");
        assert!(!ids.is_empty() && ids.len() < 8, "{ids:?}");
        let expected: Vec<u64> = (9 - ids.len() as u64..=8).collect();
        assert_eq!(ids, expected, "the newest, without a gap");

        // --max-rooms for all nodes: big and r1 (emptied) on node one fill it; node two's r2
        // evicts r1, keys and all; with no empty room left, r3 is refused.
        a.join("r1").await;
        a.send(json!({"type": "leave", "room": "r1"})).await;
        a.say("r1", "x").await;
        a.expect_error("not_member").await; // the leave is done
        assert!(redis.command("EXISTS smolchat:room:r1").contains(":1"));
        c.join("r2").await;
        assert!(redis.command("EXISTS smolchat:room:r1").contains(":0"));
        a.send(json!({"type": "rooms"})).await;
        a.expect_exact(json!({"type": "rooms", "rooms": [
            {"name": "big", "members": 2},
            {"name": "lobby", "members": 2},
            {"name": "r2", "members": 1},
        ], "count": 3}))
            .await;
        a.send(json!({"type": "join", "room": "r3"})).await;
        let refused = a.expect_error("room_limit").await;
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("holds 2 rooms"),
            "{refused}"
        );

        // Departures leave no key behind: 20 clients come and go, the key count is as before.
        let keys = || redis.command("DBSIZE");
        let before = keys();
        for _ in 0..20 {
            let guest = Client::connect(two.addr).await;
            a.expect("join").await;
            guest.close().await;
            a.expect("leave").await;
        }
        assert_eq!(keys(), before);
        assert!(redis.command("KEYS smolchat:gone:*").starts_with("*0"));
    });
}

#[test]
fn defect_4_rooms_held_per_address_count_on_every_node() {
    // Issue 12, defect 4 (continued): --max-rooms-per-address was not enforced across nodes.
    // Every client here comes from 127.0.0.1, so they all share one address's quota.
    let redis = RedisServer::start();
    let config = |c: &mut smolchat::Config| c.max_rooms_per_address = 1;
    let (one, two) = (node_with(&redis, config), node_with(&redis, config));
    run(async {
        let mut a = join_as(one.addr, "ada", &mut []).await;
        let mut b = join_as(two.addr, "bob", &mut [&mut a]).await;
        a.join("p1").await;
        // Holding p1 on node one, the address may not bring a second room to life on node two.
        b.send(json!({"type": "join", "room": "p2"})).await;
        let refused = b.expect_error("room_limit").await;
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("your address"),
            "{refused}"
        );
        // Joining a room with members is no hold.
        b.join("p1").await;
        a.expect("join").await;
        // The hold passes to the remaining member (the same address here), then ends.
        a.send(json!({"type": "leave", "room": "p1"})).await;
        b.expect("leave").await;
        b.send(json!({"type": "join", "room": "p2"})).await;
        b.expect_error("room_limit").await;
        b.send(json!({"type": "leave", "room": "p1"})).await;
        a.say("lobby", "sync").await;
        b.expect_exact(message("lobby", 1, "ada", "sync")).await;
        assert_eq!(b.join("p2").await["members"], json!(["bob"]));
    });
}

#[test]
fn defect_5_a_half_open_pubsub_connection_is_detected_and_replaced() {
    // Issue 12, defect 5: on a half-open pub/sub connection the node heard nothing more while
    // `smolchat_redis_up` stayed 1 and `/healthz` said 200. Now the heartbeat's own echo must
    // come back through pub/sub: without it the node goes down, reconnects, and delivers what
    // it missed from history.
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port);
    let cut = node_at(&proxy.url(), |_| {});
    // A node that reaps nobody within this test (it waits 3 of its heartbeats after
    // connecting): the cut-off node's members are not taken for lost meanwhile.
    let other = node_with(&redis, |c| c.redis_heartbeat = Duration::from_secs(5));
    run(async {
        let mut a = join_as(cut.addr, "ada", &mut []).await;
        let mut b = join_as(other.addr, "bob", &mut [&mut a]).await;

        proxy.cut(Cut::Subscribers);
        wait_until("the node to notice", || {
            cut.running().chat().metrics().redis_down()
        });
        assert_eq!(status(cut.addr, "/healthz").await, 503);
        let metrics = http(cut.addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(metrics.contains("\nsmolchat_redis_up 0\n"), "{metrics}");
        b.say("lobby", "while cut off").await;
        b.expect_exact(message("lobby", 1, "bob", "while cut off"))
            .await;

        proxy.heal();
        a.expect_exact(message("lobby", 1, "bob", "while cut off"))
            .await;
        wait_until("the node to be back", || {
            !cut.running().chat().metrics().redis_down()
        });
        a.say("lobby", "back").await;
        for c in [&mut a, &mut b] {
            c.expect_exact(message("lobby", 2, "ada", "back")).await;
        }
    });
}

#[test]
fn defect_6_a_shutdown_with_thousands_of_clients_says_goodbye_for_all() {
    // Issue 12, defect 6: departures went through a bounded channel and were dropped when it
    // was full; a shutdown with more than about 4,000 clients lost its goodbye, so the other
    // nodes kept ghosts (holding nicks) until the heartbeat expired, and the shutdown waited
    // out its whole timeout.
    let redis = RedisServer::start();
    let big = node_with(&redis, |c| {
        // Ghosts would outlive this test: nobody reaps them within 15 s.
        c.redis_heartbeat = Duration::from_secs(5);
        c.shutdown_timeout = Duration::from_secs(30);
    });
    let other = node(&redis);
    // Each client takes two descriptors in this process (its socket and the server's). The
    // nodes raised the soft limit to the hard one; with less than about 10,000 the test runs
    // with fewer clients (and could no longer have caught the old 4,096-op channel).
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let clients: u64 = limit.map_or(4500, |n| 4500.min(n.saturating_sub(1000) / 2));
    if clients < 4500 {
        eprintln!("descriptor limit {limit:?}: {clients} clients instead of 4,500");
    }
    let mut watcher = None;
    let mut sockets = Vec::new();
    run(async {
        let mut w = Client::connect(other.addr).await;
        for _ in 0..clients {
            sockets.push(common::raw::upgrade(big.addr).await);
        }
        let deadline = Instant::now() + 6 * DEADLINE;
        while who_count(&mut w, "lobby").await < clients + 1 {
            assert!(
                Instant::now() < deadline,
                "the clients never all registered"
            );
        }
        watcher = Some(w);
    });
    let started = Instant::now();
    big.shutdown();
    let took = started.elapsed();
    let mut watcher = watcher.unwrap();
    run(async {
        assert_eq!(
            who_count(&mut watcher, "lobby").await,
            1,
            "no ghost is left"
        );
    });
    assert!(took < Duration::from_secs(15), "the shutdown took {took:?}");
    drop(sockets);
}

#[test]
fn defect_7_a_restore_never_gives_back_a_nick_someone_else_holds() {
    // Issue 12, defect 7: after Redis lost its data, a node that came back later restored its
    // members' nicks even when someone else had taken one meanwhile: two members called ada.
    // Now such a member cannot be restored, and is closed with 1012 to reconnect.
    let mut redis = RedisServer::start();
    let proxy = Proxy::start(redis.port);
    let cut = node_at(&proxy.url(), |_| {});
    let other = node(&redis);
    run(async {
        let mut a = join_as(cut.addr, "ada", &mut []).await;
        let mut b = join_as(other.addr, "bob", &mut [&mut a]).await;

        proxy.cut(Cut::All);
        redis.restart_empty();
        wait_until("the other node to be back", || {
            let metrics = other.running().chat().metrics();
            metrics
                .redis_reconnects
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
                && !metrics.redis_down()
        });
        // Redis lost the lobby: b is told of its new epoch.
        assert_eq!(next_room(&mut b, "lobby").await["complete"], false);
        let eve = join_as(other.addr, "ada", &mut [&mut b]).await;

        proxy.heal();
        let (code, reason, _) = a.expect_close().await;
        assert_eq!(code, 1012, "{reason}");
        b.send(json!({"type": "who", "room": "lobby"})).await;
        b.expect_exact(members_event("lobby", &["bob", "ada"]))
            .await;
        drop(eve);
    });
}

#[test]
fn the_redis_bridge_runs_on_the_embedders_executor() {
    // The library spawns nothing: `Chat::try_new_with_redis` returns the hub and the bridge
    // as one future, and here tokio's single-threaded runtime is the only executor that polls
    // it, with tokio's own sockets to Redis (the connector below). The node comes up
    // (connected, resynced), and after `shutdown` its goodbye runs on it too.
    fn tokio_stream(
        addr: redis::ConnectionAddr,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = redis::RedisResult<smolchat::cluster::RedisStream>>
                + Send,
        >,
    > {
        Box::pin(async move {
            let redis::ConnectionAddr::Tcp(host, port) = addr else {
                panic!("a TCP address");
            };
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let stream: smolchat::cluster::RedisStream = Box::pin(tcp);
            Ok(stream)
        })
    }
    let redis = RedisServer::start();
    let mut config = test_config();
    config.redis = Some(redis.url());
    config.redis_heartbeat = Duration::from_secs(1);
    let (chat, hub) = smolchat::Chat::try_new_with_redis(config, tokio_stream).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let hub = tokio::spawn(hub);
        let deadline = Instant::now() + DEADLINE;
        while chat.metrics().redis_down() {
            assert!(Instant::now() < deadline, "the bridge never came up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(redis.command("KEYS smolchat:node:*").contains("alive"));
        chat.shutdown().await;
        chat.bridge_stopped().await;
        drop(chat);
        hub.await.unwrap();
    });
    assert!(
        redis.command("KEYS smolchat:node:*").starts_with("*0"),
        "the goodbye removed the node's heartbeat"
    );
}

// Users (signed tokens) and the HTTP API (issue 14), across nodes.

/// The HS256 secret the nodes check tokens with in the user tests.
const SECRET: &[u8] = b"a test secret of at least 32 bytes, for HS256";
/// The HTTP API's key in the API test.
const API_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A node that admits users only: every client shows a token signed with [`SECRET`].
fn user_node(redis: &RedisServer) -> TestServer {
    node_with(redis, |c| {
        c.auth = Some(smolchat::config::Auth {
            secret: smolchat::token::Secret::new(SECRET.to_vec()),
            guests: false,
        });
    })
}

/// A token for user `name`, valid for an hour, signed by an independent JWT library (not
/// smolchat's own signer).
fn token(name: &str) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": name, "exp": now + 3600});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// Connects to `addr` as user `name` (`/ws?token=`) and reads its `welcome`; the `room` event
/// of the default room is left for the caller.
async fn connect_user(addr: SocketAddr, name: &str) -> Client {
    let stream = smol::Async::<std::net::TcpStream>::connect(addr)
        .await
        .expect("tcp connect");
    let url = format!("ws://{addr}/ws?token={}", token(name));
    let (ws, _) = async_tungstenite::client_async(url, stream)
        .await
        .expect("websocket handshake with a token");
    let mut c = Client {
        ws,
        nick: String::new(),
    };
    c.nick = c.expect("welcome").await["nick"]
        .as_str()
        .unwrap()
        .to_string();
    c
}

/// Polls Redis until user `name` has `n` connections registered (their departures are told
/// to Redis after the sockets close, with nothing for a client to wait on).
fn wait_for_connections(redis: &RedisServer, name: &str, n: usize) {
    wait_until("the user's departure to reach Redis", || {
        redis.command(&format!("SCARD smolchat:user:{name}")) == format!(":{n}\r\n")
    });
}

#[test]
fn a_user_connected_to_two_nodes_is_one_member() {
    let redis = RedisServer::start();
    let (one, two) = (user_node(&redis), user_node(&redis));
    run(async {
        let mut bob = connect_user(one.addr, "bob").await;
        bob.expect_room(room_event("lobby", &["bob"], 0)).await;
        let mut ada1 = connect_user(one.addr, "ada").await;
        ada1.expect_room(room_event("lobby", &["bob", "ada"], 0))
            .await;
        bob.expect_exact(json!({"type": "join", "room": "lobby", "nick": "ada"}))
            .await;
        // The same user on the other node: its own name, no `nick_taken`, no guest number; the
        // room already lists it, and nobody is told of a second arrival.
        let mut ada2 = connect_user(two.addr, "ada").await;
        assert_eq!(ada2.nick, "ada");
        ada2.expect_room(room_event("lobby", &["bob", "ada"], 0))
            .await;
        bob.join("dev").await;
        let dev = ada2.join("dev").await;
        assert_eq!(
            (&dev["members"], &dev["count"]),
            (&json!(["bob", "ada"]), &json!(2))
        );
        bob.expect_exact(json!({"type": "join", "room": "dev", "nick": "ada"}))
            .await;
        let dev = ada1.join("dev").await;
        assert_eq!(
            (&dev["members"], &dev["count"]),
            (&json!(["bob", "ada"]), &json!(2))
        );

        // `who` and `rooms` count the user once. Bob's next events are these answers: no
        // second `join` came before them (it would have, on the same connection to Redis).
        for room in ["lobby", "dev"] {
            bob.send(json!({"type": "who", "room": room})).await;
            bob.expect_exact(members_event(room, &["bob", "ada"])).await;
        }
        bob.send(json!({"type": "rooms"})).await;
        bob.expect_exact(json!({"type": "rooms", "rooms": [
            {"name": "dev", "members": 2},
            {"name": "lobby", "members": 2},
        ], "count": 2}))
            .await;

        // A direct message reaches both connections: the one on the sender's node and the one
        // on the other node.
        bob.send(json!({"type": "direct", "to": "ADA", "text": "psst"}))
            .await;
        let direct = json!({"type": "direct", "from": "bob", "to": "ada", "text": "psst"});
        for c in [&mut bob, &mut ada1, &mut ada2] {
            c.expect_exact(direct.clone()).await;
        }
        // Messages reach each connection once.
        ada1.say("dev", "from one").await;
        for c in [&mut ada1, &mut bob, &mut ada2] {
            c.expect_exact(message("dev", 1, "ada", "from one")).await;
        }

        // The user leaves dev with its last connection there. ada1 came second: silently.
        ada1.send(json!({"type": "leave", "room": "dev"})).await;
        ada1.send(json!({"type": "who", "room": "dev"})).await;
        ada1.expect_exact(members_event("dev", &["bob", "ada"]))
            .await;
        bob.send(json!({"type": "who", "room": "dev"})).await;
        bob.expect_exact(members_event("dev", &["bob", "ada"]))
            .await;
        ada2.send(json!({"type": "leave", "room": "dev"})).await;
        bob.expect_exact(json!({"type": "leave", "room": "dev", "nick": "ada", "reason": "left"}))
            .await;

        // In the lobby ada1 came first: when it goes, ada2 takes its place, silently.
        ada1.close().await;
        wait_for_connections(&redis, "ada", 1);
        bob.send(json!({"type": "who", "room": "lobby"})).await;
        bob.expect_exact(members_event("lobby", &["bob", "ada"]))
            .await;
        bob.send(json!({"type": "direct", "to": "ada", "text": "still there?"}))
            .await;
        let direct = json!({"type": "direct", "from": "bob", "to": "ada", "text": "still there?"});
        for c in [&mut bob, &mut ada2] {
            c.expect_exact(direct.clone()).await;
        }
        // The last connection: the user leaves, and its name is free.
        ada2.close().await;
        bob.expect_exact(
            json!({"type": "leave", "room": "lobby", "nick": "ada", "reason": "disconnected"}),
        )
        .await;
        bob.send(json!({"type": "who", "room": "lobby"})).await;
        bob.expect_exact(members_event("lobby", &["bob"])).await;
        bob.send(json!({"type": "direct", "to": "ada", "text": "x"}))
            .await;
        bob.expect_error("unknown_recipient").await;
        assert_eq!(
            redis.command("EXISTS smolchat:user:ada smolchat:nick:ada"),
            ":0\r\n"
        );
        assert!(
            redis
                .command("KEYS smolchat:room:*:extra")
                .starts_with("*0")
        );
    });
}

/// `--max-connections-per-user` counts a user's connections on every node: with a cap of 2,
/// one on each node, a third on either is closed with 4002; once one goes, there is room.
#[test]
fn max_connections_per_user_counts_every_node() {
    let redis = RedisServer::start();
    let capped = |c: &mut smolchat::Config| {
        c.auth = Some(smolchat::config::Auth {
            secret: smolchat::token::Secret::new(SECRET.to_vec()),
            guests: false,
        });
        c.max_connections_per_user = 2;
    };
    let (one, two) = (node_with(&redis, capped), node_with(&redis, capped));
    run(async {
        let mut ada1 = connect_user(one.addr, "ada").await;
        ada1.expect("room").await;
        let ada2 = connect_user(two.addr, "ada").await;
        for addr in [one.addr, two.addr] {
            let stream = smol::Async::<std::net::TcpStream>::connect(addr)
                .await
                .expect("tcp connect");
            let url = format!("ws://{addr}/ws?token={}", token("Ada"));
            let (ws, _) = async_tungstenite::client_async(url, stream)
                .await
                .expect("the upgrade itself succeeds");
            let mut third = Client {
                ws,
                nick: String::new(),
            };
            let (code, _, events) = third.expect_close().await;
            assert_eq!(code, 4002, "{events:?}");
            assert_eq!(events[0]["code"], "forbidden", "{events:?}");
        }
        // Nothing of the refused connections is left in Redis.
        wait_for_connections(&redis, "ada", 2);
        ada2.close().await;
        wait_for_connections(&redis, "ada", 1);
        let mut again = connect_user(two.addr, "ada").await;
        again.expect("room").await;
        wait_for_connections(&redis, "ada", 2);
    });
}

#[test]
fn a_users_connections_are_restored_together_after_redis_lost_its_data() {
    // After Redis lost everything, each node registers its members again. The second node to
    // restore finds the user's name held by the first node's connection of the same user:
    // that is the user's own, not a nick taken meanwhile (no 1012), and the room lists the
    // user once again.
    let mut redis = RedisServer::start();
    let (one, two) = (user_node(&redis), user_node(&redis));
    run(async {
        let mut bob = connect_user(one.addr, "bob").await;
        bob.expect("room").await;
        let mut ada1 = connect_user(one.addr, "ada").await;
        ada1.expect("room").await;
        bob.expect("join").await;
        let mut ada2 = connect_user(two.addr, "ada").await;
        ada2.expect("room").await;

        redis.restart_empty();
        wait_until("both nodes to be back", || {
            [&one, &two].iter().all(|node| {
                let metrics = node.running().chat().metrics();
                metrics
                    .redis_reconnects
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0
                    && !metrics.redis_down()
            })
        });
        for c in [&mut bob, &mut ada1, &mut ada2] {
            // Redis lost the lobby: every live member is told of its new epoch.
            assert_eq!(next_room(c, "lobby").await["complete"], false);
        }
        bob.send(json!({"type": "who", "room": "lobby"})).await;
        let who = bob.expect("members").await;
        let mut members: Vec<&str> = who["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        members.sort_unstable();
        assert_eq!((members, &who["count"]), (vec!["ada", "bob"], &json!(2)));
        bob.send(json!({"type": "direct", "to": "ada", "text": "restored"}))
            .await;
        let direct = json!({"type": "direct", "from": "bob", "to": "ada", "text": "restored"});
        for c in [&mut bob, &mut ada1, &mut ada2] {
            c.expect_exact(direct.clone()).await;
        }
        ada1.close().await;
        wait_for_connections(&redis, "ada", 1);
        bob.send(json!({"type": "who", "room": "lobby"})).await;
        assert_eq!(bob.expect("members").await["count"], 2, "no leave yet");
        ada2.close().await;
        bob.expect_exact(
            json!({"type": "leave", "room": "lobby", "nick": "ada", "reason": "disconnected"}),
        )
        .await;
    });
}

/// Calls the HTTP API of the node at `addr` (the key in `Authorization`, a JSON body if any)
/// and returns the status and the JSON body. The server closes the connection after its
/// response.
async fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let key = std::str::from_utf8(API_KEY).unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n");
    if let Some(body) = body {
        request += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    } else {
        request += "\r\n";
    }
    let response = http(addr, &request).await;
    let status = response[9..12].parse().unwrap();
    let (_, json) = response.split_once("\r\n\r\n").expect("a head and a body");
    (status, serde_json::from_str(json).expect("a JSON body"))
}

#[test]
fn the_http_api_publishes_and_reads_history_across_nodes() {
    let redis = RedisServer::start();
    let api_node = || {
        node_with(&redis, |c| {
            c.api_key = Some(smolchat::token::Secret::new(API_KEY.to_vec()));
            c.max_rooms = 1;
        })
    };
    let (one, two) = (api_node(), api_node());
    run(async {
        let mut c = Client::connect(two.addr).await;
        let body = r#"{"text":"disk \"full\"\non /var","from":"alert"}"#;
        let published = api(one.addr, "POST", "/api/rooms/lobby/messages", Some(body)).await;
        assert_eq!(published, (201, json!({"room": "lobby", "id": 1})));
        // A member on the other node gets it, marked as the API's.
        let live = c
            .expect_exact(
                json!({"type": "message", "room": "lobby", "id": 1, "from": "alert",
                "text": "disk \"full\"\non /var", "api": true}),
            )
            .await;
        c.say("lobby", "ack").await;
        let nick = c.nick.clone();
        let said = c.expect_exact(message("lobby", 2, &nick, "ack")).await;

        // The history, read on the other node, holds the events as members got them, the
        // flag included: it survived the record in Redis.
        let (status, history) =
            api(two.addr, "GET", "/api/rooms/lobby/messages?since=0", None).await;
        assert_eq!(status, 200, "{history}");
        assert_eq!(history["messages"], json!([live, said]));
        assert_eq!(
            (&history["last_id"], &history["complete"]),
            (&json!(2), &json!(true))
        );
        let (_, after) = api(one.addr, "GET", "/api/rooms/lobby/messages?since=1", None).await;
        assert_eq!(after["messages"], json!([said]));
        assert_eq!(after["epoch"], history["epoch"], "one epoch for all nodes");

        // A room that does not exist has no history; publishing creates it, held by nobody.
        let (status, missing) = api(two.addr, "GET", "/api/rooms/alerts/messages", None).await;
        assert_eq!(status, 404, "{missing}");
        let body = r#"{"text":"up"}"#;
        let published = api(two.addr, "POST", "/api/rooms/alerts/messages", Some(body)).await;
        assert_eq!(published, (201, json!({"room": "alerts", "id": 1})));
        let (status, rooms) = api(one.addr, "GET", "/api/rooms", None).await;
        assert_eq!(status, 200);
        assert_eq!(
            rooms,
            json!({"rooms": [
            {"name": "alerts", "members": 0},
            {"name": "lobby", "members": 1},
        ], "count": 2})
        );
        // Who joins it later, on the other node, gets the message replayed with its flag.
        let mut d = Client::connect(one.addr).await;
        // (Its join of the lobby replays the lobby's history, the API's message as it was.)
        assert_eq!([d.next().await, d.next().await], [live, said]);
        c.expect("join").await;
        let room = d.join("alerts").await;
        assert_eq!(room["last_id"], 1);
        let replayed = d
            .expect_exact(
                json!({"type": "message", "room": "alerts", "id": 1, "from": "api",
                "text": "up", "api": true}),
            )
            .await;
        let (_, history) = api(two.addr, "GET", "/api/rooms/alerts/messages", None).await;
        assert_eq!(history["messages"], json!([replayed]));

        // --max-rooms (1 here) holds for the API too: with every room in use, no new one...
        let body = r#"{"text":"x"}"#;
        let (status, refused) = api(one.addr, "POST", "/api/rooms/more/messages", Some(body)).await;
        assert_eq!(
            (status, &refused["error"]),
            (409, &json!("room_limit")),
            "{refused}"
        );
        // ...and an empty room makes way: alerts, emptied now, then more, which the API created
        // with nobody in it.
        d.send(json!({"type": "leave", "room": "alerts"})).await;
        d.send(json!({"type": "who", "room": "alerts"})).await;
        d.expect("members").await;
        let published = api(one.addr, "POST", "/api/rooms/more/messages", Some(body)).await;
        assert_eq!(published, (201, json!({"room": "more", "id": 1})));
        let published = api(two.addr, "POST", "/api/rooms/third/messages", Some(body)).await;
        assert_eq!(published, (201, json!({"room": "third", "id": 1})));
        for gone in ["alerts", "more"] {
            let (status, _) = api(
                one.addr,
                "GET",
                &format!("/api/rooms/{gone}/messages"),
                None,
            )
            .await;
            assert_eq!(status, 404, "{gone} was evicted");
        }
        assert!(redis.command("KEYS smolchat:room:more*").starts_with("*0"));
    });
}

#[test]
fn a_node_that_finds_redis_empty_again_registers_its_members_again() {
    // Regression: the id of Redis's data set (`life`) was the id of the node that found it
    // empty. The same node finding Redis empty again (here the only node) set the same id,
    // took the new data set for the old one, and its members, missing from it, for reaped
    // ones: every client was closed with 1012 instead of being registered again.
    let mut redis = RedisServer::start();
    let node = node(&redis);
    run(async {
        let mut a = join_as(node.addr, "ada", &mut []).await;
        redis.restart_empty();
        wait_until("the node to be back", || {
            let metrics = node.running().chat().metrics();
            metrics
                .redis_reconnects
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
                && !metrics.redis_down()
        });
        assert_eq!(next_room(&mut a, "lobby").await["complete"], false);
        a.send(json!({"type": "who", "room": "lobby"})).await;
        a.expect_exact(members_event("lobby", &["ada"])).await;
        a.say("lobby", "still here").await;
        a.expect_exact(message("lobby", 1, "ada", "still here"))
            .await;
    });
}

/// Ada on `one` and Bob on `two`, both in the lobby, and the lobby's epoch.
async fn ada_and_bob(one: &TestServer, two: &TestServer) -> (Client, Client, String) {
    let mut ada = join_as(one.addr, "ada", &mut []).await;
    let mut bob = join_as(two.addr, "bob", &mut [&mut ada]).await;
    bob.send(json!({"type": "join", "room": "lobby"})).await;
    let epoch = bob.expect("room").await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    (ada, bob, epoch)
}

/// Reads `c`'s events until a `room` event of `room` and returns it (the events before it,
/// such as a rename replayed by a resync, are not what these tests are about).
async fn next_room(c: &mut Client, room: &str) -> Value {
    loop {
        let e = c.next().await;
        if e["type"] == "room" && e["room"] == room {
            return e;
        }
    }
}

/// Waits until the node has reconnected to Redis and is up again.
fn wait_back(node: &TestServer) {
    wait_until("the node to be back", || {
        let metrics = node.running().chat().metrics();
        metrics
            .redis_reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && !metrics.redis_down()
    });
}

#[test]
fn issue_25_redis_back_from_an_older_snapshot_names_no_id_twice_and_tells_every_member() {
    // Regression (issue 25): Redis restarted from an RDB snapshot older than its last writes
    // kept the room's epoch with its id counter gone back: ids 3.. were handed out a second
    // time, live members were told nothing, and a recovering cursor got `complete: true`.
    // Now the restart (a new `run_id`, persistence that does not keep every write) starts a
    // new era: every room a new epoch, every live member a `room` event with `complete: false`.
    let mut redis = RedisServer::start();
    let api_node = || {
        node_with(&redis, |c| {
            c.api_key = Some(smolchat::token::Secret::new(API_KEY.to_vec()));
        })
    };
    let (one, two) = (api_node(), api_node());
    run(async {
        let (mut ada, mut bob, old) = ada_and_bob(&one, &two).await;
        let (status, _) = api(
            one.addr,
            "POST",
            "/api/rooms/alerts/messages",
            Some(r#"{"text": "a1", "from": "door"}"#),
        )
        .await;
        assert_eq!(status, 201);
        heard_by_all(&mut ada, &mut [&mut bob], 1, "m1").await;
        heard_by_all(&mut ada, &mut [&mut bob], 2, "m2").await;
        let snapshot = redis.snapshot();
        ada.say("lobby", "m3").await; // id 3, which the snapshot does not have
        messages(&mut ada, "lobby", 1).await;
        messages(&mut bob, "lobby", 1).await;
        let (_, alerts) = api(one.addr, "GET", "/api/rooms/alerts/messages?since=0", None).await;
        redis.restart_from(&snapshot);
        wait_back(&one);
        wait_back(&two);
        for c in [&mut ada, &mut bob] {
            let told = next_room(c, "lobby").await;
            assert_ne!(told["epoch"], old.as_str(), "a new epoch: {told}");
            assert_eq!(told["complete"], false, "{told}");
            assert_eq!(told["last_id"], 0, "{told}");
        }
        ada.say("lobby", "after").await;
        for c in [&mut ada, &mut bob] {
            let e = c.expect("message").await;
            assert_eq!(
                (e["id"].as_u64(), e["text"].as_str()),
                (Some(1), Some("after"))
            );
        }
        // A client that recovers with the old cursor is told it may have missed messages.
        let mut carol = Client::connect(two.addr).await;
        carol
            .send(json!({"type": "join", "room": "lobby", "since": 3, "epoch": old}))
            .await;
        let told = next_room(&mut carol, "lobby").await;
        assert_eq!(told["complete"], false, "{told}");
        assert_ne!(told["epoch"], old.as_str());
        // A room only the API uses starts a new epoch too.
        let (status, _) = api(
            two.addr,
            "POST",
            "/api/rooms/alerts/messages",
            Some(r#"{"text": "a2", "from": "door"}"#),
        )
        .await;
        assert_eq!(status, 201);
        let (_, now) = api(two.addr, "GET", "/api/rooms/alerts/messages?since=0", None).await;
        assert_ne!(now["epoch"], alerts["epoch"], "{now}");
        assert_eq!(now["messages"][0]["text"], "a2", "{now}");
    });
}

#[test]
fn issue_25_after_redis_lost_its_data_every_live_member_is_told_the_new_epoch() {
    // Regression (issue 25): after FLUSHALL the nodes made every room again, in a new epoch,
    // but live members were never told: they saw ids 1.. again under what looked like the
    // same epoch, and the web client dropped them as already seen.
    let redis = RedisServer::start();
    let (one, two) = (node(&redis), node(&redis));
    run(async {
        let (mut ada, mut bob, old) = ada_and_bob(&one, &two).await;
        heard_by_all(&mut ada, &mut [&mut bob], 1, "before").await;
        assert!(redis.command("FLUSHALL").starts_with("+OK"));
        for c in [&mut ada, &mut bob] {
            let told = next_room(c, "lobby").await;
            assert_ne!(told["epoch"], old.as_str(), "a new epoch: {told}");
            assert_eq!(told["complete"], false, "{told}");
        }
        wait_back(&one);
        wait_back(&two);
        bob.say("lobby", "after").await;
        for c in [&mut ada, &mut bob] {
            let e = c.expect("message").await;
            assert_eq!(
                (e["id"].as_u64(), e["text"].as_str()),
                (Some(1), Some("after"))
            );
        }
    });
}
