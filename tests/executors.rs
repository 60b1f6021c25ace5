//! The runtime-agnostic core on executors other than smol's.
//!
//! `Chat::new` gives a handle and the hub's future; `Chat::serve` serves one connection given
//! as any futures-io byte stream. These tests drive both on three executors that are not
//! smol's global one, over an in-memory duplex stream (no sockets, no reactor for I/O):
//!
//! - `async_executor::LocalExecutor` on the test's thread,
//! - nothing but `futures_lite::future::block_on`, with `zip`/`or` polling the hub, both
//!   sessions and both clients inside one future,
//! - a tokio current-thread runtime with neither its I/O nor its time driver enabled.
//!
//! A last test runs examples/embed_tokio.rs (compiled here as a module) on a multi-threaded
//! tokio runtime with real tokio sockets, including its graceful shutdown.
//!
//! Every one of them runs the same [`conversation`]: a real WebSocket client
//! (`async_tungstenite::client_async`) on each of two connections, checking `welcome` and
//! `room`, a message in `lobby`, a `nick` event, a `direct`, and the `leave` with reason
//! `disconnected` that follows a dropped connection. The sessions' own timers (pings, idle and
//! write timeouts) are async-io's, which work under any executor: async-io runs its reactor on
//! a thread of its own when nobody else drives it. The deadlines below use the same timers, so
//! no test sleeps and every wait fails the test when it takes too long.

mod common;

#[allow(dead_code)]
#[path = "../examples/embed_tokio.rs"]
mod embed_tokio;

use std::future::Future;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use common::duplex::{self, Duplex};
use common::{assert_event, message, room_event};
use futures_lite::future::{self, block_on};
use futures_lite::{AsyncRead, AsyncWrite, StreamExt};
use serde_json::{Value, json};
use smolchat::{Chat, Config};

/// How long any single expected step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a whole test may take.
const WHOLE_TEST: Duration = Duration::from_secs(60);
/// Bytes each direction of an in-memory connection buffers before its writer waits.
const PIPE_CAPACITY: usize = 64 * 1024;

/// Awaits `fut`, failing the test if it takes longer than `limit`. The timer is async-io's,
/// which needs no particular executor.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    future::or(fut, async {
        async_io::Timer::after(limit).await;
        panic!("timed out after {limit:?} waiting for {what}");
    })
    .await
}

fn config() -> Config {
    Config {
        log_level: log::LevelFilter::Warn,
        // The in-memory clients below address the server by this name.
        allow_hosts: vec!["smolchat.test".into()],
        ..Config::default()
    }
}

/// A WebSocket client over any byte stream.
struct Peer<S> {
    ws: WebSocketStream<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    /// Performs the WebSocket handshake for `/ws` over `stream`; reads no event.
    async fn handshake(stream: S) -> Peer<S> {
        let handshake = async_tungstenite::client_async("ws://smolchat.test/ws", stream);
        let (ws, response) = within(DEADLINE, "the WebSocket handshake", handshake)
            .await
            .expect("WebSocket handshake");
        assert_eq!(response.status().as_u16(), 101);
        Peer { ws }
    }

    async fn send(&mut self, command: Value) {
        self.send_text(&command.to_string()).await;
    }

    async fn send_text(&mut self, text: &str) {
        let sent = self.ws.send(Message::Text(text.into()));
        within(DEADLINE, "a send", sent).await.expect("send");
    }

    /// The next JSON event; pings and pongs are skipped.
    async fn next(&mut self) -> Value {
        within(DEADLINE, "an event", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return serde_json::from_str(&text).expect("a JSON event");
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected an event, got {other:?}"),
                }
            }
        })
        .await
    }

    /// The next event must equal `expected` (`ts` and `epoch` are checked for shape only, see
    /// `common::assert_event`).
    async fn expect(&mut self, expected: Value) -> Value {
        let event = self.next().await;
        assert_event(&event, &expected);
        event
    }

    /// Reads the `welcome` and returns the nick it assigns.
    async fn expect_welcome(&mut self) -> String {
        let welcome = self.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert!(welcome["limits"].is_object(), "{welcome}");
        welcome["nick"].as_str().expect("a nick").to_string()
    }

    /// Reads up to the server's close frame; returns its code and reason.
    async fn expect_close(&mut self) -> (u16, String) {
        within(DEADLINE, "a close frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return (u16::from(frame.code), frame.reason.to_string());
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
    }

    /// Reads until the connection ends. Reading is also what sends tungstenite's answer to
    /// the server's close frame.
    async fn until_end(&mut self) {
        within(DEADLINE, "the end of the connection", async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Closes the WebSocket from this side: close frame, the server's answering close, end.
    async fn close(mut self) {
        within(DEADLINE, "sending a close frame", self.ws.close(None))
            .await
            .expect("close");
        let answer = within(DEADLINE, "the answering close", self.ws.next()).await;
        assert!(
            matches!(answer, Some(Ok(Message::Close(_)))),
            "expected the server's close, got {answer:?}"
        );
        self.until_end().await;
    }
}

/// The end-to-end check every executor runs. `a` and `b` are the client ends of two
/// connections that a fresh hub's `Chat::serve` is serving (or will serve once polled).
async fn conversation<S: AsyncRead + AsyncWrite + Unpin>(a: S, b: S) {
    let mut a = Peer::handshake(a).await;
    assert_eq!(a.expect_welcome().await, "guest-1");
    a.expect(room_event("lobby", &["guest-1"], 0)).await;

    let mut b = Peer::handshake(b).await;
    assert_eq!(b.expect_welcome().await, "guest-2");
    b.expect(room_event("lobby", &["guest-1", "guest-2"], 0))
        .await;
    a.expect(json!({"type": "join", "room": "lobby", "nick": "guest-2"}))
        .await;

    // A message in lobby reaches both members, the sender included.
    a.send(json!({"type": "say", "room": "lobby", "text": "hello"}))
        .await;
    for peer in [&mut a, &mut b] {
        peer.expect(message("lobby", 1, "guest-1", "hello")).await;
    }
    // A text frame that is not a JSON object is a message to the sender's current room.
    b.send_text("hi there").await;
    for peer in [&mut a, &mut b] {
        peer.expect(message("lobby", 2, "guest-2", "hi there"))
            .await;
    }

    a.send(json!({"type": "nick", "nick": "ada"})).await;
    for peer in [&mut a, &mut b] {
        peer.expect(json!({"type": "nick", "old": "guest-1", "nick": "ada"}))
            .await;
    }

    // Recipients are matched ignoring case; the event spells the nick as its owner does.
    b.send(json!({"type": "direct", "to": "ADA", "text": "psst"}))
        .await;
    for peer in [&mut a, &mut b] {
        peer.expect(json!({"type": "direct", "from": "guest-2", "to": "ada", "text": "psst"}))
            .await;
    }

    // b's connection just ends, without a close frame.
    drop(b);
    a.expect(
        json!({"type": "leave", "room": "lobby", "nick": "guest-2", "reason": "disconnected"}),
    )
    .await;

    // a says goodbye properly.
    a.close().await;
}

#[test]
fn local_executor() {
    let ex = async_executor::LocalExecutor::new();
    let (chat, hub) = Chat::new(config());
    ex.spawn(hub).detach();
    let (a, a_served) = duplex::pair(PIPE_CAPACITY);
    let (b, b_served) = duplex::pair(PIPE_CAPACITY);
    let sessions = [("a", a_served), ("b", b_served)].map(|(peer, stream)| {
        let chat = chat.clone();
        ex.spawn(async move { chat.serve(stream, peer).await })
    });
    block_on(ex.run(within(WHOLE_TEST, "the whole test", async {
        conversation(a, b).await;
        for session in sessions {
            within(DEADLINE, "a session to end", session).await;
        }
    })));
}

#[test]
fn block_on_alone() {
    let (chat, hub) = Chat::new(config());
    let (a, a_served) = duplex::pair(PIPE_CAPACITY);
    let (b, b_served) = duplex::pair(PIPE_CAPACITY);
    // One future holds everything: the hub, both sessions and both clients. `zip` ends when
    // both sessions and the conversation have ended; the hub, which outlives them (`chat` is
    // still alive), is dropped by `or` at that point.
    let sessions = future::zip(chat.serve(a_served, "a"), chat.serve(b_served, "b"));
    let everything = future::zip(sessions, conversation(a, b));
    let everything = async {
        everything.await;
    };
    block_on(within(
        WHOLE_TEST,
        "the whole test",
        future::or(everything, hub),
    ));
}

#[test]
fn tokio_current_thread() {
    // No I/O or time driver: smolchat needs neither from tokio.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let (chat, hub) = Chat::new(config());
        tokio::spawn(hub);
        let (a, a_served) = duplex::pair(PIPE_CAPACITY);
        let (b, b_served) = duplex::pair(PIPE_CAPACITY);
        let sessions: Vec<_> = [("a", a_served), ("b", b_served)]
            .into_iter()
            .map(|(peer, stream): (&'static str, Duplex)| {
                let chat = chat.clone();
                tokio::spawn(async move { chat.serve(stream, peer).await })
            })
            .collect();
        within(WHOLE_TEST, "the whole test", async {
            conversation(a, b).await;
            for session in sessions {
                within(DEADLINE, "a session to end", session)
                    .await
                    .expect("the session task did not panic");
            }
        })
        .await;
    });
}

/// examples/embed_tokio.rs's own `run`, on a multi-threaded tokio runtime with tokio sockets.
#[test]
fn embed_tokio_example() {
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let stop_signal = async move {
            let _ = stopped.recv().await;
        };
        let server = tokio::spawn(embed_tokio::run(listener, config(), stop_signal));
        let connect = || async move {
            let stream = within(DEADLINE, "a TCP connection", TcpStream::connect(addr)).await;
            stream.expect("connect").compat()
        };

        within(WHOLE_TEST, "the whole test", async {
            conversation(connect().await, connect().await).await;

            // Graceful shutdown: a connected client gets 1001 and the server's `run` returns
            // once every session has ended.
            let mut c = Peer::handshake(connect().await).await;
            assert_eq!(c.expect_welcome().await, "guest-3");
            c.expect(room_event("lobby", &["guest-3"], 2)).await;
            // lobby's history, replayed on join, as it was sent (from the nick of the time).
            c.expect(message("lobby", 1, "guest-1", "hello")).await;
            c.expect(message("lobby", 2, "guest-2", "hi there")).await;
            stop.send(()).await.expect("the server is running");
            assert_eq!(
                c.expect_close().await,
                (1001, "server shutting down".to_string())
            );
            c.until_end().await;
            let drained = within(DEADLINE, "the server to stop", server).await;
            assert!(
                drained.expect("the server task did not panic"),
                "every session ended within the shutdown timeout"
            );
        })
        .await;
    });
}
