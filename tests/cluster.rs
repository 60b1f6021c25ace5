//! Scale-out (the `redis` feature): several nodes against one real `redis-server` share rooms,
//! ids, history, nicks, presence and direct messages; a killed node's members leave with
//! `node_lost`; a Redis outage is answered with `unavailable` and then healed.
//!
//! Nodes run in this process (`server::start` on port 0, sharing the Redis URL), except the one
//! that is killed, which is the real binary in a subprocess. Heartbeats are 1 s here, and
//! 250 ms in the test that kills a node, so it is noticed within about a second.
#![cfg(feature = "redis")]

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use redis_server::RedisServer;
use serde_json::json;

fn node(redis: &RedisServer) -> TestServer {
    node_with(redis, |_| {})
}

fn node_with(redis: &RedisServer, change: impl FnOnce(&mut smolchat::Config)) -> TestServer {
    let server = server_with(|c| {
        c.redis = Some(redis.url());
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
