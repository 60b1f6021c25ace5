//! `--protocol raw`, the Go hub's protocol, with real clients on a real server: every data
//! frame reaches every client of the group verbatim, the sender included, and nothing else is
//! ever sent; the server's protections apply unchanged.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use common::*;
use futures_lite::StreamExt;
use smol::Async;
use smolchat::config::Protocol;

type Ws = WebSocketStream<Async<TcpStream>>;

fn raw_server(change: impl FnOnce(&mut smolchat::Config)) -> TestServer {
    server_with(|c| {
        c.protocol = Protocol::Raw;
        change(c);
    })
}

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let stream = Async::<TcpStream>::connect(addr).await.unwrap();
    let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}{path}"), stream)
        .await
        .expect("websocket handshake");
    ws
}

/// The next data frame (pings and pongs skipped).
async fn next(ws: &mut Ws) -> Message {
    deadline("a frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    })
    .await
}

async fn close_code(ws: &mut Ws) -> u16 {
    match next(ws).await {
        Message::Close(Some(f)) => u16::from(f.code),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn every_frame_reaches_every_client_of_the_group_verbatim_sender_included() {
    let server = raw_server(|c| c.rate_limit = 0);
    run(async {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(connect(server.addr, "/ws").await);
        }
        // What the Go hub's clients send: plain lines, JSON of their own, anything.
        let frames = [
            Message::Text("hello".into()),
            Message::Text(r#"{"type":"say","text":"not parsed"}"#.into()),
            Message::Text("  spaces kept  ".into()),
            Message::Binary(vec![0u8, 255, 1, 2].into()),
            Message::Text("é\u{1}".into()),
        ];
        // Each client sends in turn; the first frame anyone receives is a message: nothing
        // (no welcome, no JSON) comes before.
        for (i, frame) in frames.iter().enumerate() {
            clients[i % 4].send(frame.clone()).await.unwrap();
            for ws in clients.iter_mut() {
                assert_eq!(&next(ws).await, frame);
            }
        }
        // The same order for everyone when two send at once.
        let (a, rest) = clients.split_at_mut(1);
        for n in 0..20 {
            a[0].send(Message::Text(format!("a{n}").into()))
                .await
                .unwrap();
            rest[0]
                .send(Message::Text(format!("b{n}").into()))
                .await
                .unwrap();
        }
        let mut orders = Vec::new();
        for ws in clients.iter_mut() {
            let mut got = Vec::new();
            for _ in 0..40 {
                got.push(next(ws).await.into_text().unwrap().to_string());
            }
            orders.push(got);
        }
        assert!(orders.iter().all(|o| *o == orders[0]), "{orders:?}");
    });
}

#[test]
fn groups_are_isolated_and_named_by_the_path() {
    let server = raw_server(|_| {});
    run(async {
        let mut lobby = connect(server.addr, "/ws").await;
        let mut ops = connect(server.addr, "/ws/ops").await;
        let mut ops2 = connect(server.addr, "/ws/ops").await;
        let mut dev = connect(server.addr, "/ws/dev").await;
        ops.send(Message::Text("for ops".into())).await.unwrap();
        assert_eq!(next(&mut ops2).await, Message::Text("for ops".into()));
        assert_eq!(next(&mut ops).await, Message::Text("for ops".into()));
        dev.send(Message::Text("for dev".into())).await.unwrap();
        assert_eq!(next(&mut dev).await, Message::Text("for dev".into()));
        lobby.send(Message::Text("for lobby".into())).await.unwrap();
        assert_eq!(next(&mut lobby).await, Message::Text("for lobby".into()));
        // Had ops or dev heard the others, these would not come first.
        ops2.send(Message::Text("ops again".into())).await.unwrap();
        for ws in [&mut ops, &mut ops2] {
            assert_eq!(next(ws).await, Message::Text("ops again".into()));
        }
        for bad in ["/ws/Ops", "/ws/a/b", "/ws/"] {
            let response = http(
                server.addr,
                &raw::upgrade_request(server.addr, &[]).replace("GET /ws ", &format!("GET {bad} ")),
            )
            .await;
            assert_eq!(raw::status(&response), 404, "{bad}: {response}");
        }
        let (_, page) = common::page(server.addr).await;
        assert_eq!(
            page,
            smolchat::http::RAW_PAGE,
            "raw mode serves its own page"
        );
    });
}

#[test]
fn the_limits_apply_in_raw_mode_too() {
    let server = raw_server(|c| {
        c.max_message_bytes = 1024;
        c.rate_limit = 5;
        c.rate_burst = 5;
    });
    run(async {
        let mut a = connect(server.addr, "/ws").await;
        let mut b = connect(server.addr, "/ws").await;
        // Too big: 1009, and b hears nothing of it.
        let mut big = connect(server.addr, "/ws").await;
        big.send(Message::Binary(vec![7u8; 1025].into()))
            .await
            .unwrap();
        assert_eq!(close_code(&mut big).await, 1009);
        // A flood: dropped unanswered past the burst, then 1008.
        let mut flood = connect(server.addr, "/ws").await;
        for i in 0..60 {
            if flood
                .send(Message::Text(format!("{i}").into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let mut heard = Vec::new();
        let code = loop {
            match next(&mut flood).await {
                Message::Close(Some(f)) => break u16::from(f.code),
                m => heard.push(m.into_text().unwrap().to_string()),
            }
        };
        assert_eq!(code, 1008);
        assert!(
            heard.len() <= 5 + 1,
            "only the burst was delivered: {heard:?}"
        );
        for ws in [&mut a, &mut b] {
            for expected in &heard {
                assert_eq!(next(ws).await.into_text().unwrap().as_str(), expected);
            }
        }
        a.send(Message::Text("after".into())).await.unwrap();
        for ws in [&mut a, &mut b] {
            assert_eq!(next(ws).await, Message::Text("after".into()));
        }
    });
    // Shutdown: 1001 for everyone.
    let server = raw_server(|_| {});
    let addr = server.addr;
    let mut ws = smol::block_on(connect(addr, "/ws/x"));
    let stopping = std::thread::spawn(move || server.shutdown());
    run(async {
        assert_eq!(close_code(&mut ws).await, 1001);
    });
    stopping.join().unwrap();
}

#[test]
fn a_client_that_stops_reading_is_a_slow_consumer() {
    let server = raw_server(|c| {
        c.rate_limit = 0;
        c.queue = 8;
        // Two of the largest frames: one in the writer's hands, one waiting.
        c.queue_bytes = 2 * (60_000 + 256 + 14);
        c.max_message_bytes = 60_000;
        c.write_timeout = Duration::from_secs(30);
    });
    run(async {
        let mut a = connect(server.addr, "/ws").await;
        let stalled = raw::upgrade(server.addr).await;
        // a sends until the stalled client's socket buffers and queue are full.
        let chunk = vec![b'x'; 60_000];
        let mut sent = 0u32;
        let mut ws = raw::websocket(stalled).await;
        loop {
            a.send(Message::Binary(chunk.clone().into())).await.unwrap();
            assert!(matches!(next(&mut a).await, Message::Binary(_)));
            sent += 1;
            assert!(sent < 2000, "the stalled client was never dropped");
            let text = raw::metrics(server.addr).await;
            if raw::metric(&text, "smolchat_slow_consumers_total") == 1 {
                break;
            }
        }
        // Reading at last: what was written before, then 1013.
        let code = raw::close_code(&mut ws).await;
        assert_eq!(code, 1013);
    });
}

#[test]
fn the_default_group_is_there_for_everyone_when_the_groups_are_full() {
    let server = raw_server(|c| c.max_rooms = 2);
    run(async {
        // Two groups fill --max-rooms; a third cannot be made: 503 before the upgrade, with
        // the reason (a raw client reads no JSON)...
        let mut a = connect(server.addr, "/ws/a").await;
        let mut b = connect(server.addr, "/ws/b").await;
        let request = raw::upgrade_request(server.addr, &[]).replacen("GET /ws ", "GET /ws/c ", 1);
        let (head, _) = raw::request_head(server.addr, &request).await;
        assert_eq!(raw::status(&head), 503, "{head}");
        assert_eq!(raw::header(&head, "retry-after"), Some("5"), "{head}");
        // ...but the default group needs no room of the limit, and works.
        let mut d = connect(server.addr, "/ws").await;
        let mut e = connect(server.addr, "/ws").await;
        d.send(Message::Text("still open".into())).await.unwrap();
        assert_eq!(next(&mut e).await, Message::Text("still open".into()));
        for ws in [&mut a, &mut b] {
            ws.send(Message::Text("mine".into())).await.unwrap();
            assert_eq!(next(ws).await, Message::Text("mine".into()));
        }
    });
}

/// A raw client is in its group before its upgrade is answered: once its handshake has
/// completed, it hears every frame sent after that, with nothing to wait for (raw mode sends
/// no `welcome`). Tried under load: one client says numbered frames without pause (paced only
/// by hearing each back), while 300 clients connect, 30 at a time. Each notes how many frames
/// had been started when its handshake completed, `m`: the first frame it hears must be
/// number `m` or earlier, and the rest follow without a gap. When the server registered
/// clients after the `101`, a frame could be fanned out between the two, and the CI run of
/// `every_frame_reaches_every_client_of_the_group_verbatim_sender_included` once failed so.
#[test]
fn a_client_whose_handshake_completed_hears_every_frame_sent_after_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    let server = raw_server(|c| c.rate_limit = 0);
    let addr = server.addr;
    run(async move {
        let started = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let mut talker = connect(addr, "/ws").await;
        let (count, stop) = (started.clone(), done.clone());
        let talking = smol::spawn(async move {
            // Bounded: stops when the listeners are done, or after 2 million frames.
            for n in 0..2_000_000u64 {
                if stop.load(SeqCst) {
                    break;
                }
                count.store(n + 1, SeqCst);
                talker
                    .send(Message::Text(n.to_string().into()))
                    .await
                    .unwrap();
                assert_eq!(next(&mut talker).await, Message::Text(n.to_string().into()));
            }
        });
        for _round in 0..10 {
            let listeners = (0..30).map(|_| {
                let started = started.clone();
                smol::spawn(async move {
                    let mut ws = connect(addr, "/ws").await;
                    let m = started.load(SeqCst);
                    let number =
                        |msg: Message| -> u64 { msg.into_text().unwrap().parse().unwrap() };
                    let first = number(next(&mut ws).await);
                    assert!(
                        first <= m,
                        "frames {m}..{first} were missed after the handshake"
                    );
                    for expected in first + 1..first + 5 {
                        assert_eq!(number(next(&mut ws).await), expected, "a gap");
                    }
                    let _ = ws.close(None).await;
                })
            });
            for listener in listeners.collect::<Vec<_>>() {
                listener.await;
            }
        }
        done.store(true, SeqCst);
        talking.await;
    });
}

/// The same guarantee, step by step and without a race to win: on one thread, the hub, the
/// server's side of a connection and a client run as three tasks of a `LocalExecutor`, over an
/// in-memory stream. The moment the client has read the `101`, its group exists: the hub
/// registered it first. (Registered after the `101`, as before, the client read its `101`
/// while the hub had not yet run: no group.)
#[test]
fn the_101_is_written_after_the_client_is_in_its_group() {
    use std::sync::atomic::Ordering::Relaxed;
    let config = smolchat::Config {
        protocol: Protocol::Raw,
        log_level: log::LevelFilter::Warn,
        allow_hosts: vec!["smolchat.test".into()],
        ..smolchat::Config::default()
    };
    let (chat, hub) = smolchat::Chat::new(config);
    let (server_end, client_end) = common::duplex::pair(64 * 1024);
    let ex = async_executor::LocalExecutor::new();
    let _hub = ex.spawn(hub);
    let _connection = ex.spawn(chat.serve(server_end, "127.0.0.1:1"));
    let client = ex.spawn(async {
        let url = "ws://smolchat.test/ws/fresh";
        let (mut ws, _) = async_tungstenite::client_async(url, client_end)
            .await
            .expect("websocket handshake");
        assert_eq!(chat.metrics().rooms.load(Relaxed), 1, "the group exists");
        ws.send(Message::Text("first".into())).await.unwrap();
        let echo = ws.next().await.expect("a frame").expect("a frame");
        assert_eq!(echo, Message::Text("first".into()));
    });
    smol::block_on(ex.run(deadline("the handshake", client)));
}
