//! Every limit of the server, crossed over a real loopback socket, and each time a check that
//! the clients that stayed within the limits were not disturbed: they still chat, and they got
//! every event they should have, in order, and nothing else.

mod common;
#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;
#[macro_use]
#[path = "common/authority.rs"]
mod authority;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::Role;
use authority::{Authority, setup};
use common::raw::{self, metric, status};
use common::*;
use futures_lite::{AsyncWriteExt, StreamExt};
use futures_util::SinkExt;
use serde_json::{Value, json};

/// `speaker` says `text` in the lobby; `speaker` and every one of `others` must receive it as
/// their very next event. Proves they are all still connected and served.
async fn chat_still_works(speaker: &mut Client, others: &mut [&mut Client], text: &str) {
    speaker.say("lobby", text).await;
    let nick = speaker.nick.clone();
    for c in std::iter::once(speaker).chain(others.iter_mut().map(|c| &mut **c)) {
        let m = c.expect("message").await;
        assert_eq!(m["text"], text, "{m}");
        assert_eq!(m["from"], nick.as_str(), "{m}");
        assert_eq!(m["room"], "lobby", "{m}");
    }
}

/// The next event must be `leave` of `nick` from the lobby, for `reason`.
async fn expect_leave(c: &mut Client, nick: &str, reason: &str) {
    let e = c.expect("leave").await;
    assert_eq!(
        e,
        json!({"type": "leave", "room": "lobby", "nick": nick, "reason": reason})
    );
}

/// The lobby's history replay, which follows the `room` event that [`Client::connect`] reads:
/// exactly `texts`, in order, with ids from 1.
async fn expect_history(c: &mut Client, texts: &[&str]) {
    for (i, text) in texts.iter().enumerate() {
        let m = c.expect("message").await;
        assert_eq!((&m["id"], &m["text"]), (&json!(i + 1), &json!(text)), "{m}");
    }
}

/// Two clients in the lobby, the first having seen the second join.
async fn pair(addr: std::net::SocketAddr) -> (Client, Client) {
    let mut a = Client::connect(addr).await;
    let b = Client::connect(addr).await;
    let j = a.expect("join").await;
    assert_eq!(j["nick"], b.nick.as_str());
    (a, b)
}

/// Connects a third client and lets `a` and `b` see it join.
async fn third(addr: std::net::SocketAddr, a: &mut Client, b: &mut Client) -> Client {
    let c = Client::connect(addr).await;
    for x in [a, b] {
        let j = x.expect("join").await;
        assert_eq!(j["nick"], c.nick.as_str());
    }
    c
}

// ---------------------------------------------------------------------------------------------
// --max-message-bytes

#[test]
fn a_text_frame_over_max_message_bytes_is_closed_with_1009() {
    let server = server_with(|c| c.max_message_bytes = 256);
    run(async {
        let (mut a, mut b) = pair(server.addr).await;
        let mut big = third(server.addr, &mut a, &mut b).await;

        // Exactly at the limit is fine (plain text of 256 bytes)...
        let at_limit = "x".repeat(256);
        big.send_text(&at_limit).await;
        for c in [&mut big, &mut a, &mut b] {
            assert_eq!(c.expect("message").await["text"], at_limit.as_str());
        }
        // ...one byte more is not.
        big.send_text(&"y".repeat(257)).await;
        let (code, reason, before) = big.expect_close().await;
        assert_eq!((code, reason.as_str()), (1009, "message too big"));
        assert!(before.is_empty(), "{before:?}");

        for c in [&mut a, &mut b] {
            expect_leave(c, &big.nick, "disconnected").await;
        }
        chat_still_works(&mut a, &mut [&mut b], "after 1009").await;

        // A frame far over the limit (and over the server's read buffer) is refused from its
        // header, the same way.
        let mut huge = third(server.addr, &mut a, &mut b).await;
        expect_history(&mut huge, &[&at_limit, "after 1009"]).await;
        huge.send_text(&"z".repeat(64 * 1024)).await;
        let (code, reason, before) = huge.expect_close().await;
        assert_eq!((code, reason.as_str()), (1009, "message too big"));
        assert!(before.is_empty(), "{before:?}");
        for c in [&mut a, &mut b] {
            expect_leave(c, &huge.nick, "disconnected").await;
        }
        chat_still_works(&mut b, &mut [&mut a], "after another 1009").await;
        raw::wait_for_metric(server.addr, "smolchat_close_codes_total{code=\"1009\"}", 2).await;
    });
}

#[test]
fn a_binary_frame_is_closed_with_1003() {
    let server = server_with(|c| c.max_message_bytes = 256);
    run(async {
        let (mut a, mut b) = pair(server.addr).await;
        let mut bin = third(server.addr, &mut a, &mut b).await;

        bin.ws
            .send(Message::Binary(b"hello".to_vec().into()))
            .await
            .unwrap();
        let (code, reason, before) = bin.expect_close().await;
        assert_eq!(code, 1003, "{reason}");
        assert!(reason.contains("binary"), "{reason}");
        assert!(before.is_empty(), "{before:?}");

        for c in [&mut a, &mut b] {
            expect_leave(c, &bin.nick, "disconnected").await;
        }
        chat_still_works(&mut b, &mut [&mut a], "after 1003").await;
    });
}

// ---------------------------------------------------------------------------------------------
// --max-connections

#[test]
fn upgrades_over_max_connections_get_503_until_a_slot_frees() {
    let server = server_with(|c| c.max_connections = 2);
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;

        let refused = http(addr, &raw::upgrade_request(addr, &[])).await;
        assert_eq!(status(&refused), 503, "{refused}");
        let retry = raw::header(&refused, "Retry-After").expect("a Retry-After header");
        assert!(retry.parse::<u32>().is_ok_and(|s| s > 0), "{refused}");
        // Plain HTTP is not a WebSocket session and is still served.
        let health = http(addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&health), 200);

        // The two admitted clients were not affected by the refusal.
        chat_still_works(&mut a, &mut [&mut b], "still two").await;

        let gone = b.nick.clone();
        b.close().await;
        expect_leave(&mut a, &gone, "disconnected").await;
        // `a` saw the leave when the hub handled the disconnect; the slot itself is released
        // when the session task ends, a moment later, and there is no event for that. So
        // wait (bounded) until the gauge shows it.
        raw::wait_for_metric(addr, "smolchat_connections", 1).await;

        let mut c = Client::connect(addr).await;
        expect_history(&mut c, &["still two"]).await;
        assert_eq!(a.expect("join").await["nick"], c.nick.as_str());
        chat_still_works(&mut a, &mut [&mut c], "a slot freed").await;
        chat_still_works(&mut c, &mut [&mut a], "and reused").await;

        let m = raw::metrics(addr).await;
        assert_eq!(metric(&m, "smolchat_refused_total{cause=\"capacity\"}"), 1);
        assert_eq!(metric(&m, "smolchat_connections"), 2);
        assert_eq!(metric(&m, "smolchat_connections_total"), 3);
    });
}

// ---------------------------------------------------------------------------------------------
// HTTP: head size, method, path, health

#[test]
fn http_refusals_and_plain_routes() {
    let server = server();
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;

        // Exactly 8 KiB of an unfinished head: the server reads it all, then answers 431.
        let mut head = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nX-Padding: ").into_bytes();
        head.resize(8 * 1024, b'a');
        let r = raw::exchange(addr, &head)
            .await
            .expect("a 431, then a clean close");
        assert_eq!(status(&r), 431, "{r}");

        let r = http(addr, &format!("POST /ws HTTP/1.1\r\nHost: {addr}\r\n\r\n")).await;
        assert_eq!(status(&r), 405, "{r}");
        assert_eq!(raw::header(&r, "Allow"), Some("GET"), "{r}");

        let r = http(addr, &format!("GET /nope HTTP/1.1\r\nHost: {addr}\r\n\r\n")).await;
        assert_eq!(status(&r), 404, "{r}");

        let r = http(
            addr,
            &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        )
        .await;
        assert_eq!(status(&r), 200, "{r}");
        assert!(r.ends_with("\r\n\r\nok\n"), "{r:?}");

        chat_still_works(&mut a, &mut [&mut b], "http is separate").await;
        let m = raw::metrics(addr).await;
        assert_eq!(
            metric(&m, "smolchat_refused_total{cause=\"head_too_large\"}"),
            1
        );
        assert_eq!(
            metric(&m, "smolchat_refused_total{cause=\"bad_request\"}"),
            1
        );
    });
}

/// A complete head well over 8 KiB, sent in one go as a real client would: the server stops
/// reading at 8 KiB and answers 431, and the client must be able to read that answer. A reset
/// after it is tolerated here (the next test asks for a clean close).
#[test]
fn an_oversized_head_sent_in_full_gets_431() {
    let server = server();
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let r = match raw::exchange(addr, head.as_bytes()).await {
            Ok(r) => r,
            Err((_reset, r)) => r,
        };
        assert!(
            r.contains("HTTP/1.1 431 ") && r.contains("request head too large\n"),
            "{r}"
        );
        chat_still_works(&mut a, &mut [&mut b], "after a 431").await;
        let m = raw::metrics(addr).await;
        assert_eq!(
            metric(&m, "smolchat_refused_total{cause=\"head_too_large\"}"),
            1
        );
    });
}

/// The same, asking for what RFC 9112 section 9.6 asks of a server that refuses before reading
/// the whole request: close gracefully (stop writing, drain a little, then close) so that the
/// client reads the response and then a clean end of stream, not a reset.
#[test]
fn an_oversized_head_is_refused_with_a_clean_close_not_a_reset() {
    let server = server();
    let addr = server.addr;
    run(async {
        let mut a = Client::connect(addr).await;
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        match raw::exchange(addr, head.as_bytes()).await {
            Ok(r) => assert_eq!(status(&r), 431, "{r}"),
            Err((e, r)) => panic!("{e} after reading {r:?}"),
        }
        chat_still_works(&mut a, &mut [], "after a 431").await;
    });
}

// ---------------------------------------------------------------------------------------------
// --handshake-timeout

#[test]
fn an_unfinished_head_is_dropped_after_the_handshake_timeout() {
    let server = server_with(|c| c.handshake_timeout = Duration::from_millis(300));
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;

        let mut s = smol::Async::<std::net::TcpStream>::connect(addr)
            .await
            .unwrap();
        s.write_all(format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgr").as_bytes())
            .await
            .unwrap();
        // The server must close the connection on its own, without a response.
        let answer = raw::read_until_closed(&mut s).await;
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));

        chat_still_works(&mut a, &mut [&mut b], "after a slowloris").await;
        let m = raw::metrics(addr).await;
        assert_eq!(metric(&m, "smolchat_refused_total{cause=\"timeout\"}"), 1);
    });
}

// ---------------------------------------------------------------------------------------------
// Origin policy

#[test]
fn origins_must_match_the_host_or_be_allowed() {
    let server = server_with(|c| c.allow_origins = vec!["https://friend.example".into()]);
    let anything = server_with(|c| c.allow_origins = vec!["*".into()]);
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;

        let refused = http(
            addr,
            &raw::upgrade_request(addr, &[("Origin", "http://evil.example")]),
        )
        .await;
        assert_eq!(status(&refused), 403, "{refused}");
        // Same host but another port is another origin.
        let other_port = format!("http://127.0.0.1:{}", addr.port().wrapping_add(1));
        let refused = http(
            addr,
            &raw::upgrade_request(addr, &[("Origin", &other_port)]),
        )
        .await;
        assert_eq!(status(&refused), 403, "{refused}");

        // Accepted: our own origin, a listed one, and none at all (not a browser). Each is a
        // real session: `a` and `b` see it join.
        let own = format!("http://{addr}");
        let mut accepted = Vec::new();
        for origin in [Some(own.as_str()), Some("https://friend.example"), None] {
            let extra: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
            let (head, s) = raw::request_head(addr, &raw::upgrade_request(addr, &extra)).await;
            assert_eq!(status(&head), 101, "origin {origin:?}: {head}");
            for c in [&mut a, &mut b] {
                c.expect("join").await;
            }
            accepted.push(s);
        }

        // `*` lets any origin in, even one unrelated to the host.
        let a2 = anything.addr;
        let (head, _s) = raw::request_head(
            a2,
            &raw::upgrade_request(a2, &[("Origin", "http://evil.example")]),
        )
        .await;
        assert_eq!(status(&head), 101, "{head}");

        chat_still_works(&mut a, &mut [&mut b], "origins checked").await;
        let m = raw::metrics(addr).await;
        assert_eq!(metric(&m, "smolchat_refused_total{cause=\"origin\"}"), 2);
        assert_eq!(metric(&m, "smolchat_connections"), 5);
    });
}

// ---------------------------------------------------------------------------------------------
// Rate limit

#[test]
fn messages_over_the_rate_are_refused_and_a_flood_is_closed_with_1008() {
    let server = server_with(|c| {
        c.rate_limit = 1;
        c.rate_burst = 2;
    });
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;

        // Three at once: the burst allows two. (This assumes the three frames arrive within a
        // second of `a` connecting, when the bucket would earn another token: on loopback they
        // take microseconds.)
        for text in ["one", "two", "three"] {
            a.ws.feed(Message::Text(text.into())).await.unwrap();
        }
        a.ws.flush().await.unwrap();
        assert_eq!(a.expect("message").await["text"], "one");
        assert_eq!(a.expect("message").await["text"], "two");
        a.expect_error("rate_limited").await;
        assert_eq!(b.expect("message").await["text"], "one");
        assert_eq!(b.expect("message").await["text"], "two");
        // `b` has its own bucket; and its next event is its own message, not "three".
        chat_still_works(&mut b, &mut [&mut a], "b is not limited by a").await;

        // 49 more refusals make 50 in a row: closed with 1008.
        for i in 0..49 {
            a.ws.feed(Message::Text(format!("flood {i}").into()))
                .await
                .unwrap();
        }
        a.ws.flush().await.unwrap();
        let (code, reason, before) = a.expect_close().await;
        assert_eq!((code, reason.as_str()), (1008, "rate limit exceeded"));
        // The writer may not get to flush every queued error before the close, but whatever
        // arrived is a refusal, never a delivered message.
        assert!(before.len() <= 48, "{before:?}");
        for e in &before {
            assert_eq!(e["code"], "rate_limited", "{e}");
        }

        expect_leave(&mut b, &a.nick, "disconnected").await;
        // A newcomer's history replay holds what was delivered, and nothing of the flood.
        let mut c = Client::connect(addr).await;
        expect_history(&mut c, &["one", "two", "b is not limited by a"]).await;
        assert_eq!(b.expect("join").await["nick"], c.nick.as_str());
        chat_still_works(&mut b, &mut [&mut c], "nothing of the flood got through").await;
        let m = raw::metrics(addr).await;
        assert_eq!(metric(&m, "smolchat_rate_limited_total"), 50);
        raw::wait_for_metric(addr, "smolchat_close_codes_total{code=\"1008\"}", 1).await;
    });
}

#[test]
fn a_rate_limit_of_0_means_no_limit() {
    let server = server_with(|c| {
        c.rate_limit = 0;
        c.rate_burst = 1;
    });
    run(async {
        let (mut a, mut b) = pair(server.addr).await;
        const N: usize = 200;
        for i in 0..N {
            a.ws.feed(Message::Text(format!("m{i}").into()))
                .await
                .unwrap();
        }
        a.ws.flush().await.unwrap();
        for c in [&mut a, &mut b] {
            for i in 0..N {
                let m = c.expect("message").await;
                assert_eq!(m["text"], format!("m{i}"), "{m}");
                assert_eq!(m["id"], i + 1, "{m}");
            }
        }
        chat_still_works(&mut b, &mut [&mut a], "no limit").await;
        let m = raw::metrics(server.addr).await;
        assert_eq!(metric(&m, "smolchat_rate_limited_total"), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Slow consumers

/// Reads events from `c` until it has `n` more messages, checking that they continue the
/// sequence `next_id`, and records any `leave` seen on the way.
async fn read_messages(c: &mut Client, n: usize, next_id: &mut u64, leaves: &mut Vec<Value>) {
    let mut got = 0;
    while got < n {
        let e = c.next().await;
        match e["type"].as_str() {
            Some("message") => {
                assert_eq!(e["id"], *next_id, "messages out of order or lost: {e}");
                let text = e["text"].as_str().unwrap();
                assert!(text.starts_with(&format!("{:06}-", *next_id)), "{text:.20}");
                *next_id += 1;
                got += 1;
            }
            Some("leave") => leaves.push(e),
            _ => panic!("unexpected event {e}"),
        }
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped_as_a_slow_consumer() {
    let server = server_with(|c| {
        c.queue = 8;
        c.history = 0; // a queue must hold a join's whole replay: --queue >= --history + 8
        c.rate_limit = 0;
        c.max_message_bytes = 4096;
        // Generous, so that the stalled write is still pending when the test reads it back.
        c.write_timeout = Duration::from_secs(30);
    });
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;
        let stalled = raw::upgrade(addr).await;
        let mut stalled_nick = String::new();
        for c in [&mut a, &mut b] {
            stalled_nick = c.expect("join").await["nick"].as_str().unwrap().to_string();
        }

        // `a` sends in windows of 4 and waits until both `a` and `b` have every message of the
        // window, so their own queues (8) never fill. The stalled client's socket buffers
        // fill, then its queue does. Keep going to thousands of messages in all.
        let pad = "x".repeat(2000);
        let (mut sent, mut a_next, mut b_next) = (0u64, 1u64, 1u64);
        let (mut a_leaves, mut b_leaves) = (Vec::new(), Vec::new());
        while b_leaves.is_empty() || a_leaves.is_empty() || sent < 3000 {
            assert!(sent < 200_000, "the stalled client was never dropped");
            for _ in 0..4 {
                sent += 1;
                let text = format!("{sent:06}-{pad}");
                a.ws.feed(Message::Text(text.into())).await.unwrap();
            }
            a.ws.flush().await.unwrap();
            read_messages(&mut a, 4, &mut a_next, &mut a_leaves).await;
            read_messages(&mut b, 4, &mut b_next, &mut b_leaves).await;
        }
        let leave = json!({"type": "leave", "room": "lobby", "nick": stalled_nick, "reason": "slow_consumer"});
        assert_eq!(a_leaves, vec![leave.clone()]);
        assert_eq!(b_leaves, vec![leave]);
        assert_eq!(
            (a_next - 1, b_next - 1),
            (sent, sent),
            "every message, once"
        );
        chat_still_works(&mut b, &mut [&mut a], "the fast ones carry on").await;

        // Now the stalled client reads at last: what was written before it stalled, the rest
        // of its queue, and the 1013 close, which the server counts once it is written.
        let mut ws = raw::websocket(stalled).await;
        let (code, reason) = deadline("the stalled client's close", async {
            let mut last_id = 0;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let e: Value = serde_json::from_str(&t).unwrap();
                        if e["type"] == "message" {
                            let id = e["id"].as_u64().unwrap();
                            assert!(id > last_id, "out of order: {id} after {last_id}");
                            last_id = id;
                        }
                    }
                    Some(Ok(Message::Close(Some(f)))) => {
                        return (u16::from(f.code), f.reason.to_string());
                    }
                    Some(Ok(Message::Ping(_))) => {}
                    other => panic!("expected events then a close, got {other:?}"),
                }
            }
        })
        .await;
        assert_eq!((code, reason.as_str()), (1013, "slow consumer"));

        let m = raw::metrics(addr).await;
        assert_eq!(metric(&m, "smolchat_slow_consumers_total"), 1);
        raw::wait_for_metric(addr, "smolchat_close_codes_total{code=\"1013\"}", 1).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Keepalive

#[test]
fn the_server_pings_every_ping_interval() {
    let server = server_with(|c| c.ping_interval = Duration::from_millis(200));
    run(async {
        let (mut a, mut b) = pair(server.addr).await;
        // The first frame after the events `pair` read is a ping: no event is due.
        let first = deadline("a ping", a.ws.next()).await;
        assert!(
            matches!(first, Some(Ok(Message::Ping(_)))),
            "expected a ping, got {first:?}"
        );
        chat_still_works(&mut a, &mut [&mut b], "after a ping").await;
    });
}

/// Reads `c` until it has seen `n` pings, failing on anything but pings: `c` sends nothing
/// but the pongs tungstenite answers with.
async fn count_pings(c: &mut Client, n: usize) {
    let mut pings = 0;
    while pings < n {
        match c.ws.next().await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("{}: expected only pings, got {other:?}", c.nick),
        }
    }
}

#[test]
fn a_silent_client_is_dropped_after_the_idle_timeout_and_a_ponging_one_is_not() {
    let server = server_with(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.idle_timeout = Duration::from_millis(500);
    });
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;
        // Completes the handshake, then neither reads nor writes: no pongs.
        let silent = raw::upgrade(addr).await;
        let nick = a.expect("join").await["nick"].as_str().unwrap().to_string();
        assert_eq!(b.expect("join").await["nick"], nick.as_str());

        // `a` and `b` are read concurrently, so both answer every ping meanwhile.
        deadline(
            "the silent client's leave",
            smol::future::zip(
                expect_leave(&mut a, &nick, "timeout"),
                expect_leave(&mut b, &nick, "timeout"),
            ),
        )
        .await;
        // `a` and `b` have been connected longer than the silent one, and sent nothing but
        // pongs. Five more pings (at least 4 x 200 ms apart) take them well past the idle
        // timeout again.
        deadline(
            "five pings each",
            smol::future::zip(count_pings(&mut a, 5), count_pings(&mut b, 5)),
        )
        .await;
        chat_still_works(&mut a, &mut [&mut b], "still here").await;

        // The silent client was sent a proper close.
        let mut ws = raw::websocket(silent).await;
        let (code, reason) = deadline("the idle close", async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(_) | Message::Ping(_))) => {}
                    Some(Ok(Message::Close(Some(f)))) => {
                        return (u16::from(f.code), f.reason.to_string());
                    }
                    other => panic!("expected a close, got {other:?}"),
                }
            }
        })
        .await;
        assert_eq!((code, reason.as_str()), (1000, "idle timeout"));
    });
}

/// Messages the silent client lags behind the talker in
/// [`a_silent_client_in_a_busy_room_is_still_pinged_and_timed_out`]: many more than its pipe
/// and its WebSocket's read buffer hold, so the rest always wait in its queue on the server.
const LAG: u64 = 32;

/// A room that never pauses, and a member that only listens and never answers a ping.
///
/// The writer waits for its queue and for its ping/idle timer at once. It used to look at the
/// queue first and at the timer only when the queue was empty, so a queue that was never empty
/// when the writer came back for more starved the timer: no ping, no idle check, and a client
/// that received everything and sent nothing (not even a pong) stayed for as long as its room
/// was busy. This test showed it: no ping and no close in 10 s and over 13,000 messages. The
/// writer now polls its timer first (`write_loop` in src/session.rs). `--write-timeout` was
/// never at stake: it runs inside each write.
///
/// Here the queue is never empty when the writer comes back: the silent client reads over an
/// in-memory pipe of 256 bytes, in step with the talker and [`LAG`] messages behind it. When
/// the talker has its own message `n` back, the hub has queued `n` for the silent client too;
/// the silent client has then read no further than `n - LAG`, so a writer that has just
/// finished a write has written at most `n - LAG` plus what the pipe and the client's read
/// buffer hold (a few messages), and the rest of the lag is waiting in its queue. (Over TCP
/// the kernel's buffers, of unknown size, would hold the lag instead.) The client's pongs are
/// swallowed by [`Mute`], so only the idle timeout can end it, and it must, with pings before
/// it, while the talker keeps talking.
#[test]
fn a_silent_client_in_a_busy_room_is_still_pinged_and_timed_out() {
    let server = server_with(|c| {
        c.rate_limit = 0;
        c.ping_interval = Duration::from_millis(100);
        // Long enough that the talker, busy with its own messages, is never idle that long.
        c.idle_timeout = Duration::from_secs(1);
    });
    let addr = server.addr;
    run(async {
        let mut talker = Client::connect(addr).await;

        // The silent client: served through the server's own `Chat`, over a small pipe.
        let (client_end, server_end) = duplex::pair(256);
        let chat = server.running().chat().clone();
        let _session = smol::spawn(async move { chat.serve(server_end, "silent").await });
        let mut silent = silent_client(addr, client_end).await;
        let welcome = next_event(&mut silent).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let nick = welcome["nick"].as_str().unwrap().to_string();
        assert_eq!(next_event(&mut silent).await["type"], "room");
        assert_eq!(talker.expect("join").await["nick"], nick.as_str());

        let started = std::time::Instant::now();
        let (mut pings, mut read_up_to) = (0, 0);
        let mut left = None;
        let mut n = 0;
        let close = 'talk: loop {
            n += 1;
            assert!(
                started.elapsed() < DEADLINE,
                "the silent client was not closed after {n} messages in {:?}, with {pings} \
                 pings (none: the busy queue starved the writer's timer)",
                started.elapsed()
            );
            let text = n.to_string();
            talker.say("lobby", &text).await;
            // Our own message back means the hub has queued it for the silent client too.
            loop {
                let e = talker.next().await;
                match e["type"].as_str() {
                    Some("message") if e["text"] == text.as_str() => break,
                    Some("leave") if left.is_none() => left = Some(e),
                    _ => panic!("unexpected event {e}"),
                }
            }
            while read_up_to + LAG < n {
                match deadline("the silent client's next frame", silent.next()).await {
                    Some(Ok(Message::Text(t))) => {
                        let e: Value = serde_json::from_str(&t).unwrap();
                        assert_eq!(e["type"], "message", "{e}");
                        read_up_to = e["text"].as_str().unwrap().parse().unwrap();
                    }
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    Some(Ok(Message::Close(Some(f)))) => {
                        break 'talk (u16::from(f.code), f.reason.to_string());
                    }
                    other => panic!("expected messages, pings or a close, got {other:?}"),
                }
            }
        };
        assert_eq!((close.0, close.1.as_str()), (1000, "idle timeout"));
        assert!(pings >= 1, "the silent client was timed out without a ping");
        // The talker hears why the silent one left (if it had not already).
        let left = match left {
            Some(e) => e,
            None => talker.expect("leave").await,
        };
        assert_eq!(
            left,
            json!({"type": "leave", "room": "lobby", "nick": nick, "reason": "timeout"})
        );
        chat_still_works(&mut talker, &mut [], "still talking").await;
    });
}

/// Upgrades over `end` by hand, then makes a WebSocket client of it whose writes go nowhere
/// ([`Mute`]): it reads everything the server sends, and the pongs tungstenite answers pings
/// with never arrive.
async fn silent_client(
    addr: std::net::SocketAddr,
    mut end: duplex::Duplex,
) -> WebSocketStream<Mute> {
    use futures_lite::AsyncReadExt;
    end.write_all(raw::upgrade_request(addr, &[]).as_bytes())
        .await
        .unwrap();
    // The head byte by byte, so that no frame after it is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = deadline("the 101", end.read(&mut byte)).await.unwrap();
        assert_eq!(n, 1, "closed inside the response head");
        head.push(byte[0]);
    }
    assert_eq!(status(&String::from_utf8_lossy(&head)), 101);
    WebSocketStream::from_raw_socket(Mute(end), Role::Client, None).await
}

/// The next JSON event on `ws`, pings skipped.
async fn next_event(ws: &mut WebSocketStream<Mute>) -> Value {
    loop {
        match deadline("an event", ws.next()).await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// One end of an in-memory connection whose writes go nowhere: the client hears the server,
/// the server never hears the client.
struct Mute(duplex::Duplex);

impl futures_lite::AsyncRead for Mute {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl futures_lite::AsyncWrite for Mute {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// Room limits

async fn rooms(c: &mut Client) -> Value {
    c.send(json!({"type": "rooms"})).await;
    c.expect("rooms").await["rooms"].clone()
}

// Part of the conformance suite (tests/common/authority.rs): in memory and in Redis.
on_every_authority!(room_limits_and_lru_eviction_of_empty_rooms);

fn room_limits_and_lru_eviction_of_empty_rooms(authority: Authority) {
    let server = setup(authority, |c| {
        c.max_rooms = 2; // besides the lobby, which is never evicted
        c.max_rooms_per_client = 2;
    });
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;

        // Per client: lobby + r1 is the most.
        a.join("r1").await;
        a.send(json!({"type": "join", "room": "r2"})).await;
        a.expect_error("room_limit").await;

        // Per server: lobby, r1, r2 and nothing is empty.
        b.join("r2").await;
        let mut c = third(addr, &mut a, &mut b).await;
        c.send(json!({"type": "join", "room": "r3"})).await;
        c.expect_error("room_limit").await;

        // Empty r1, then r2: r1 is the least recently used empty room and goes first. (Each
        // `rooms` reply shows that its client's `leave` was handled, which orders the two.)
        a.send(json!({"type": "leave", "room": "r1"})).await;
        assert_eq!(
            rooms(&mut a).await,
            json!([{"name": "lobby", "members": 3}, {"name": "r1", "members": 0}, {"name": "r2", "members": 1}])
        );
        b.send(json!({"type": "leave", "room": "r2"})).await;
        assert_eq!(
            rooms(&mut b).await,
            json!([{"name": "lobby", "members": 3}, {"name": "r1", "members": 0}, {"name": "r2", "members": 0}])
        );
        c.join("r3").await;
        assert_eq!(
            rooms(&mut c).await,
            json!([{"name": "lobby", "members": 3}, {"name": "r2", "members": 0}, {"name": "r3", "members": 1}])
        );
        a.join("r4").await;
        assert_eq!(
            rooms(&mut a).await,
            json!([{"name": "lobby", "members": 3}, {"name": "r3", "members": 1}, {"name": "r4", "members": 1}])
        );
        // Nothing empty left to evict.
        b.send(json!({"type": "join", "room": "r5"})).await;
        b.expect_error("room_limit").await;

        // A refused join changed nothing for anybody: r3 and r4 still work, so does the lobby,
        // and no client saw an event it should not have.
        c.say("r3", "in r3").await;
        assert_eq!(c.expect("message").await["text"], "in r3");
        chat_still_works(&mut b, &mut [&mut a, &mut c], "rooms checked").await;
        if matches!(authority, Authority::Local) {
            // (With Redis the gauge is refreshed by the heartbeat, every second.)
            let m = raw::metrics(addr).await;
            assert_eq!(metric(&m, "smolchat_rooms"), 3);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// /metrics

#[test]
fn metrics_are_prometheus_text_and_count_every_refusal_cause() {
    let server = server_with(|c| {
        c.max_connections = 2;
        c.handshake_timeout = Duration::from_millis(300);
    });
    let addr = server.addr;
    run(async {
        let (mut a, mut b) = pair(addr).await;

        // origin: 403 (checked before capacity, so counted as origin even at capacity)
        let r = http(
            addr,
            &raw::upgrade_request(addr, &[("Origin", "http://evil.example")]),
        )
        .await;
        assert_eq!(status(&r), 403, "{r}");
        // capacity: 503
        let r = http(addr, &raw::upgrade_request(addr, &[])).await;
        assert_eq!(status(&r), 503, "{r}");
        // head_too_large: 431
        let mut head = b"GET /ws HTTP/1.1\r\nX-Padding: ".to_vec();
        head.resize(8 * 1024, b'a');
        let r = raw::exchange(addr, &head)
            .await
            .expect("a 431, then a clean close");
        assert_eq!(status(&r), 431, "{r}");
        // timeout: half a head, then nothing; the server hangs up without a word
        let mut s = smol::Async::<std::net::TcpStream>::connect(addr)
            .await
            .unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
        assert!(raw::read_until_closed(&mut s).await.is_empty());
        // bad_request: 405, and a malformed head (400)
        let r = http(addr, "DELETE /ws HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&r), 405, "{r}");
        let r = http(addr, "\x16\x03\x01 not http\r\n\r\n").await;
        assert_eq!(status(&r), 400, "{r}");
        // not refusals: 404 and a health check
        assert_eq!(status(&http(addr, "GET /x HTTP/1.1\r\n\r\n").await), 404);
        assert_eq!(
            status(&http(addr, "GET /healthz HTTP/1.1\r\n\r\n").await),
            200
        );

        chat_still_works(&mut a, &mut [&mut b], "counted").await;

        let response = http(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        )
        .await;
        assert_eq!(status(&response), 200, "{response}");
        let content_type = raw::header(&response, "Content-Type").unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let m = raw::metrics(addr).await;
        for (cause, n) in [
            ("origin", 1),
            ("capacity", 1),
            ("head_too_large", 1),
            ("timeout", 1),
            ("bad_request", 2),
        ] {
            let name = format!("smolchat_refused_total{{cause=\"{cause}\"}}");
            assert_eq!(metric(&m, &name), n, "{name} in\n{m}");
        }
        assert_eq!(metric(&m, "smolchat_connections"), 2);
        assert_eq!(metric(&m, "smolchat_connections_total"), 2);
        assert_eq!(metric(&m, "smolchat_messages_received_total"), 1);
        assert_eq!(metric(&m, "smolchat_rooms"), 1);

        // Every sample belongs to a family announced with HELP and TYPE, before its samples,
        // and every line is a comment or `name[{labels}] value`.
        let mut announced: Vec<(String, String)> = Vec::new();
        for line in m.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.trim().is_empty(), "{line}");
                announced.push((name.to_string(), String::new()));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                let last = announced.last_mut().expect("TYPE after HELP");
                assert_eq!(last.0, name, "{line}");
                last.1 = kind.to_string();
            } else {
                let (series, value) = line.rsplit_once(' ').expect("name value");
                value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
                let name = series.split('{').next().unwrap();
                let (family, kind) = announced.last().expect("a sample after HELP");
                assert_eq!(family, name, "sample {line} outside its family");
                assert!(!kind.is_empty(), "{name} has no TYPE");
                if kind == "counter" {
                    assert!(
                        name.ends_with("_total"),
                        "counter {name} should end in _total"
                    );
                }
            }
        }
        assert!(announced.len() >= 10, "{m}");
    });
}

/// `--coalesce`: a client receiving a burst gets its frames held and written together, and
/// still receives every message, in order, with none lost or repeated.
#[test]
fn coalesced_writes_deliver_every_message_in_order() {
    let server = server_with(|c| {
        c.rate_limit = 0;
        c.coalesce = std::time::Duration::from_millis(50);
    });
    run(async {
        let mut a = Client::connect(server.addr).await;
        let mut b = Client::connect(server.addr).await;
        a.expect("join").await;
        for i in 0..40 {
            a.say("lobby", &format!("burst-{i}")).await;
        }
        for c in [&mut a, &mut b] {
            for i in 0..40 {
                let m = c.expect("message").await;
                assert_eq!(m["text"], format!("burst-{i}"));
                assert_eq!(m["id"], i + 1);
            }
        }
    });
}
