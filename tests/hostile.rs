//! Hostile clients beside healthy ones: each test is an attack that once hurt other clients
//! or broke a documented bound, run against a real server on a loopback port, with healthy
//! clients that must lose nothing.
//!
//! The floods of frames that never become messages are in tests/flood.rs, a binary of their
//! own.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use common::*;
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use futures_util::SinkExt;
use serde_json::{Value, json};
use smol::Async;

// 1. A message that grows when encoded.

#[test]
fn control_characters_are_refused_and_the_room_and_its_history_survive() {
    let server = server_with(|c| c.rate_limit = 0);
    run(async {
        let mut a = Client::connect(server.addr).await;
        let mut b = Client::connect(server.addr).await;
        a.expect("join").await;
        // 1,600 U+0001 would be 9.6 KB of JSON escapes in one event.
        a.send_text(&"\u{1}".repeat(1600)).await;
        let e = a.expect_error("bad_request").await;
        assert!(e["message"].as_str().unwrap().contains("U+0001"), "{e}");
        // An escape sequence for terminals, in a `say`.
        a.say("lobby", "red \u{1b}[31m alert").await;
        a.expect_error("bad_request").await;
        // Tab, newline and carriage return are text.
        heard_by_all(&mut a, &mut [&mut b], 1, "two\tcolumns\r\nand lines").await;
        // Quotes count twice against the limit: 2,048 of them are 4,096 bytes when sent...
        let quotes = "\"".repeat(2048);
        a.send_text(&quotes).await;
        for c in [&mut a, &mut b] {
            assert_eq!(c.expect("message").await["text"], quotes.as_str());
        }
        // ...and 2,049 are over the 4,096-byte limit.
        a.send_text(&"\"".repeat(2049)).await;
        a.expect_error("bad_request").await;

        // A newcomer gets the whole history, and the room carries on.
        let mut c = Client::connect_raw(server.addr).await;
        c.expect("welcome").await;
        c.expect("room").await;
        c.expect("message").await;
        assert_eq!(c.expect("message").await["text"], quotes.as_str());
        c.nick = a.nick.clone();
        a.expect("join").await;
        b.expect("join").await;
        heard_by_all(&mut a, &mut [&mut b, &mut c], 3, "still here").await;
    });
}

// 2. A reply that grows with the server's state.

#[test]
fn a_long_room_list_comes_in_pages_that_all_arrive() {
    let server = server_with(|c| {
        c.rate_limit = 0;
        c.max_rooms = 1000;
    });
    run(async {
        let mut a = Client::connect(server.addr).await;
        // 300 rooms with the longest names: about 23 KB as one reply.
        let name = |i: usize| format!("{i:03}-{}", "r".repeat(28));
        for i in 0..300 {
            a.join(&name(i)).await;
            a.send(json!({"type": "leave", "room": name(i)})).await;
        }
        let mut listed = Vec::new();
        let mut offset = 0;
        loop {
            a.send(json!({"type": "rooms", "offset": offset})).await;
            let page = a.expect("rooms").await;
            assert_eq!(page["count"], 301, "{page}");
            let rooms = page["rooms"].as_array().unwrap();
            assert!(rooms.len() <= 50);
            listed.extend(
                rooms
                    .iter()
                    .map(|r| r["name"].as_str().unwrap().to_string()),
            );
            match page["next"].as_u64() {
                Some(next) => offset = next,
                None => break,
            }
        }
        let mut expected: Vec<String> = (0..300).map(name).collect();
        expected.push("lobby".into());
        assert_eq!(listed, expected, "every room once, in name order");
        // Still connected.
        a.send(json!({"type": "who", "room": "lobby"})).await;
        a.expect("members").await;
    });
}

// 3. Plain HTTP that never ends.

#[test]
fn a_client_trickling_after_a_response_is_cut_off_at_the_handshake_deadline() {
    let server = server_with(|c| c.handshake_timeout = Duration::from_millis(1500));
    run(async {
        let mut s = Async::<TcpStream>::connect(server.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // The old drain allowed 100 ms per read, up to 64 KiB: one byte every 50 ms held the
        // socket for almost an hour.
        let started = Instant::now();
        let closed = deadline("the server to close the trickling socket", async {
            let mut buf = [0u8; 256];
            let mut response = Vec::new();
            loop {
                if s.write_all(b"x").await.is_err() {
                    return response;
                }
                let read = smol::future::or(async { Some(s.read(&mut buf).await) }, async {
                    smol::Timer::after(Duration::from_millis(50)).await;
                    None
                });
                match read.await {
                    Some(Ok(0)) | Some(Err(_)) => return response,
                    Some(Ok(n)) => response.extend_from_slice(&buf[..n]),
                    None => {}
                }
            }
        })
        .await;
        assert!(String::from_utf8_lossy(&closed).starts_with("HTTP/1.1 200"));
        assert!(started.elapsed() < DEADLINE);
        raw::wait_for_metric(server.addr, "smolchat_pending_connections", 1).await;
    });
}

#[test]
fn connections_beyond_max_pending_are_refused_without_disturbing_sessions() {
    let server = server_with(|c| {
        c.max_pending = 3;
        c.rate_limit = 0;
    });
    run(async {
        let mut a = Client::connect(server.addr).await;
        let mut b = Client::connect(server.addr).await;
        a.expect("join").await;
        // Three connections that never send a request hold every slot.
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(Async::<TcpStream>::connect(server.addr).await.unwrap());
        }
        // Once the server has taken all three, a fourth is refused at once. Their tasks start
        // in any order, so a request may take a slot before one of them (which is then the
        // one refused): each request that is served brings another idle connection.
        let refused = deadline("a refusal", async {
            loop {
                // A refused connection may be reset: that is a refusal too.
                let response = raw::exchange(server.addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
                match response {
                    Ok(r) if r.starts_with("HTTP/1.1 200") => {
                        idle.push(Async::<TcpStream>::connect(server.addr).await.unwrap());
                    }
                    Ok(r) => return r,
                    Err((_, r)) => return r,
                }
            }
        })
        .await;
        assert!(
            refused.is_empty() || refused.starts_with("HTTP/1.1 503"),
            "{refused}"
        );
        heard_by_all(&mut a, &mut [&mut b], 1, "sessions are not pending").await;
        drop(idle);
        raw::wait_for_metric(server.addr, "smolchat_pending_connections", 1).await;
        let text = raw::metrics(server.addr).await;
        assert!(raw::metric(&text, "smolchat_refused_total{cause=\"pending\"}") >= 1);
    });
}

#[test]
fn one_address_gets_its_share_of_the_pending_slots() {
    let server = server_with(|c| c.max_pending_per_address = 4);
    run(async {
        // Four connections from one address that never send a request: its share.
        let idle: Vec<_> = (0..4).map(|_| tcp_from("127.0.0.2", server.addr)).collect();
        // Their tasks may start in any order: wait until all four hold a slot (the scrape
        // holds a fifth while it is answered).
        raw::wait_for_metric(server.addr, "smolchat_pending_connections", 5).await;
        let refused = deadline("a refusal for the same address", async {
            loop {
                let mut s = tcp_from("127.0.0.2", server.addr);
                s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await;
                let out = String::from_utf8_lossy(&out).into_owned();
                if !out.starts_with("HTTP/1.1 200") {
                    return out;
                }
            }
        })
        .await;
        assert!(
            refused.is_empty() || refused.starts_with("HTTP/1.1 503"),
            "{refused}"
        );
        // Another address is served.
        let mut s = tcp_from("127.0.0.3", server.addr);
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 200"));
        drop(idle);
    });
}

// 4. Floods that never become messages: see tests/flood.rs (a binary of its own, so that
// its flooding threads do not slow the other tests down). Here, the rate limit.

/// A client frame: FIN + `opcode` byte as given, masked with a zero key (valid; the payload
/// stays as it is).
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[test]
fn pings_count_against_the_rate_limit() {
    let server = server();
    run(async {
        let mut a = Client::connect(server.addr).await;
        let mut b = Client::connect(server.addr).await;
        a.expect("join").await;
        let mut s = raw::upgrade(server.addr).await;
        let pings: Vec<u8> = frame(0x89, b"").repeat(200);
        s.write_all(&pings).await.unwrap();
        // The flood's close: 1008 after the burst and 50 refusals in a row.
        let mut ws = raw::websocket(s).await;
        let code = raw::close_code(&mut ws).await;
        assert_eq!(code, 1008);
        a.expect("join").await;
        b.expect("join").await;
        let leave = a.expect("leave").await;
        b.expect("leave").await;
        assert_eq!(leave["reason"], "disconnected");
        heard_by_all(&mut a, &mut [&mut b], 1, "after the flood").await;
    });
}

#[test]
fn refusals_are_counted_in_a_window_not_in_a_row() {
    let server = server_with(|c| {
        c.rate_limit = 10;
        c.rate_burst = 1;
    });
    run(async {
        let mut a = Client::connect(server.addr).await;
        // 49 frames for every token earned (one each 100 ms): never 50 refusals in a row,
        // but 490 refused frames a second, each answered with an error.
        let code = deadline("the dodger's close", async {
            for _ in 0..10 {
                for i in 0..49 {
                    a.ws.feed(Message::Text(format!("{i}").into()))
                        .await
                        .unwrap();
                }
                a.ws.flush().await.unwrap();
                smol::Timer::after(Duration::from_millis(110)).await;
            }
            a.expect_close().await.0
        })
        .await;
        assert_eq!(code, 1008);
    });
}

// 6. DNS rebinding.

#[test]
fn an_upgrade_for_a_rebound_host_name_is_refused() {
    let server = server();
    run(async {
        let addr = server.addr;
        let port = addr.port();
        let rebound = format!(
            "GET /ws HTTP/1.1\r\nHost: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            raw::KEY
        );
        let response = http(addr, &rebound).await;
        assert_eq!(raw::status(&response), 403, "{response}");
        assert!(response.contains("--allow-host"), "{response}");
        let text = raw::metrics(addr).await;
        assert_eq!(
            raw::metric(&text, "smolchat_refused_total{cause=\"host\"}"),
            1
        );

        // The operator names the host, and the same request is a WebSocket.
        drop(server);
        let server = server_with(|c| c.allow_hosts = vec!["evil.example".into()]);
        let rebound = rebound.replace(&format!(":{port}"), &format!(":{}", server.addr.port()));
        let (head, _s) = raw::request_head(server.addr, &rebound).await;
        assert_eq!(raw::status(&head), 101, "{head}");
    });
}

// 7. A slow reader that keeps reading.

/// A stream that lets its reader take at most 256 bytes every 10 ms: a slow link that keeps
/// moving.
struct Slow {
    inner: duplex::Duplex,
    pause: Option<smol::Timer>,
}

impl futures_lite::AsyncRead for Slow {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future;
        let pause = self
            .pause
            .get_or_insert_with(|| smol::Timer::after(Duration::from_millis(10)));
        futures_lite::ready!(std::pin::Pin::new(pause).poll(cx));
        self.pause = None;
        let n = buf.len().min(256);
        std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut buf[..n])
    }
}

impl futures_lite::AsyncWrite for Slow {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[test]
fn a_slow_link_that_keeps_moving_is_not_a_stalled_client() {
    let server = server_with(|c| {
        c.rate_limit = 0;
        c.write_timeout = Duration::from_millis(500);
    });
    run(async {
        // 14 messages of 4 KB in lobby's history: a newcomer's join writes 58 KB at once.
        let mut a = Client::connect(server.addr).await;
        let text = "x".repeat(4000);
        for id in 1..=14 {
            a.say("lobby", &text).await;
            a.expect_exact(message("lobby", id, &a.nick.clone(), &text))
                .await;
        }
        // The newcomer reads 25.6 KB a second through a 1 KiB pipe: more than two seconds
        // for the replay, four times the write timeout, but never half a second without
        // progress.
        let (client_end, server_end) = duplex::pair(1024);
        let chat = server.running().chat().clone();
        let session = smol::spawn(async move { chat.serve(server_end, "slow").await });
        let slow = Slow {
            inner: client_end,
            pause: None,
        };
        let (mut ws, _) = async_tungstenite::client_async("ws://127.0.0.1/ws", slow)
            .await
            .unwrap();
        let mut ids = Vec::new();
        deadline("the whole replay over the slow link", async {
            while ids.len() < 14 {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let e: Value = serde_json::from_str(&t).unwrap();
                        if e["type"] == "message" {
                            ids.push(e["id"].as_u64().unwrap());
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("the slow client was dropped: {other:?} after {ids:?}"),
                }
            }
        })
        .await;
        assert_eq!(ids, (1..=14).collect::<Vec<_>>());
        ws.close(None).await.unwrap();
        drop(ws);
        deadline("the slow session to end", session).await;
    });
}

// 8. Rooms for everyone.

/// A TCP connection from `local` (any 127.x.y.z works on loopback).
fn tcp_from(local: &str, server: SocketAddr) -> Async<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&format!("{local}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&server.into()).unwrap();
    Async::new(TcpStream::from(socket)).unwrap()
}

/// A client connecting from `local`.
async fn client_from(local: &str, server: SocketAddr) -> Client {
    let stream = tcp_from(local, server);
    let (ws, _) = async_tungstenite::client_async(format!("ws://{server}/ws"), stream)
        .await
        .unwrap();
    let mut c = Client {
        ws,
        nick: String::new(),
    };
    c.nick = c.expect("welcome").await["nick"].as_str().unwrap().into();
    c.expect("room").await;
    c
}

#[test]
fn one_address_cannot_hold_every_room() {
    let server = server_with(|c| {
        c.rate_limit = 0;
        c.max_rooms = 10;
        c.max_rooms_per_address = 4;
    });
    run(async {
        // The attacker's clients bring four rooms to life (the lobby is nobody's), and then
        // no more.
        let mut attackers = Vec::new();
        for i in 0..4 {
            let mut c = client_from("127.0.0.2", server.addr).await;
            c.join(&format!("mine-{i}")).await;
            attackers.push(c);
        }
        let mut more = client_from("127.0.0.2", server.addr).await;
        more.send(json!({"type": "join", "room": "mine-x"})).await;
        let e = more.expect_error("room_limit").await;
        assert!(e["message"].as_str().unwrap().contains("address"), "{e}");
        // Joining a room that has members is always fine.
        more.join("mine-0").await;

        // Another address still creates rooms.
        let mut other = client_from("127.0.0.3", server.addr).await;
        other.join("ours").await;
        // And when the attacker's room empties, its address may bring another to life.
        let gone = attackers.remove(1);
        let gone_nick = gone.nick.clone();
        gone.close().await;
        // Once the hub has taken it out of mine-1 (everyone in lobby hears it go)...
        loop {
            let e = more.next().await;
            if e["type"] == "leave" && e["nick"] == gone_nick.as_str() {
                break;
            }
        }
        more.send(json!({"type": "join", "room": "mine-y"})).await;
        loop {
            let e = more.next().await;
            if e["type"] == "room" {
                assert_eq!(e["room"], "mine-y");
                break;
            }
            assert!(matches!(e["type"].as_str(), Some("join" | "leave")), "{e}");
        }
    });
}

#[test]
fn another_address_cannot_pin_a_quota_by_staying_in_its_rooms() {
    let server = server_with(|c| {
        c.rate_limit = 0;
        c.max_rooms_per_address = 3;
    });
    run(async {
        // The victim holds lobby and creates two rooms; the attacker sits in both.
        let mut victim = client_from("127.0.0.2", server.addr).await;
        let mut attacker = client_from("127.0.0.3", server.addr).await;
        victim.expect("join").await;
        for room in ["v1", "v2"] {
            victim.join(room).await;
            attacker.join(room).await;
            victim.expect("join").await;
        }
        // The victim leaves them: the attacker's address holds them now.
        for room in ["v1", "v2"] {
            victim.send(json!({"type": "leave", "room": room})).await;
            attacker.expect("leave").await;
        }
        victim.join("v3").await;
        victim.join("v4").await;
        // The attacker's address holds v1 and v2 against its own quota: one more, then no more.
        attacker.join("a1").await;
        attacker.send(json!({"type": "join", "room": "a2"})).await;
        attacker.expect_error("room_limit").await;
    });
}

// 10. Protocol errors are counted.

#[test]
fn a_protocol_error_is_closed_with_1002_and_counted() {
    let server = server();
    run(async {
        let mut s = raw::upgrade(server.addr).await;
        // RSV1 set without an extension that defines it.
        s.write_all(&frame(0xC1, b"hi")).await.unwrap();
        let mut ws = raw::websocket(s).await;
        let code = raw::close_code(&mut ws).await;
        assert_eq!(code, 1002);
        raw::wait_for_metric(server.addr, "smolchat_close_codes_total{code=\"1002\"}", 1).await;
    });
}
