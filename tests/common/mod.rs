//! Shared test helpers: a real server on a loopback port 0, and a small WebSocket client.
//!
//! Every wait has a generous deadline that only fails the test; nothing sleeps to wait for
//! something that can be awaited.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use futures_lite::StreamExt;
use serde_json::{Value, json};
use smol::Async;
use smolchat::Config;
use smolchat::server::Running;

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A server for one test, shut down when dropped.
pub struct TestServer {
    running: Option<Running>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
    /// Shuts down now (graceful), instead of at drop.
    pub fn shutdown(mut self) {
        self.running.take().unwrap().shutdown();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

/// The config every test starts from: port 0, two threads, no rate limit surprises.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        log_level: log::LevelFilter::Warn,
        ..Config::default()
    }
}

pub fn server() -> TestServer {
    server_with(|_| {})
}

pub fn server_with(change: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = test_config();
    change(&mut config);
    let running = smolchat::server::start(config).expect("server starts");
    TestServer {
        addr: running.local_addr(),
        running: Some(running),
    }
}

/// Runs an async test body with a deadline for the whole test.
pub fn run<F: std::future::Future<Output = ()>>(body: F) {
    smol::block_on(async {
        let overall = async {
            smol::Timer::after(Duration::from_secs(60)).await;
            panic!("test did not finish within 60 s");
        };
        smol::future::or(body, overall).await
    })
}

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn deadline<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    let what = what.to_string();
    smol::future::or(fut, async move {
        smol::Timer::after(DEADLINE).await;
        panic!("timed out waiting for {what}");
    })
    .await
}

pub struct Client {
    pub ws: WebSocketStream<Async<TcpStream>>,
    /// The nick from `welcome`.
    pub nick: String,
}

impl Client {
    /// Connects and returns without reading anything.
    pub async fn connect_raw(addr: SocketAddr) -> Client {
        let stream = Async::<TcpStream>::connect(addr)
            .await
            .expect("tcp connect");
        let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
            .await
            .expect("websocket handshake");
        Client {
            ws,
            nick: String::new(),
        }
    }

    /// Connects, reads `welcome` and the `lobby` room event (with any replayed history), and
    /// remembers the nick.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr).await;
        let welcome = c.expect("welcome").await;
        c.nick = welcome["nick"].as_str().unwrap().to_string();
        let room = c.expect("room").await;
        assert_eq!(room["room"], "lobby");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next JSON event (pings and pongs are skipped).
    pub async fn next(&mut self) -> Value {
        deadline("an event", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return serde_json::from_str(&t).expect("JSON event");
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected an event, got {other:?}"),
                }
            }
        })
        .await
    }

    /// The next event, which must have `type` = `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let e = self.next().await;
        assert_eq!(e["type"], ty, "expected a {ty} event, got {e}");
        e
    }

    /// The next event must be an `error` with this code.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let e = self.expect("error").await;
        assert_eq!(e["code"], code, "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        e
    }

    /// Reads until the server's close frame and returns its code and reason. Events before
    /// the close are returned too.
    pub async fn expect_close(&mut self) -> (u16, String, Vec<Value>) {
        deadline("a close frame", async {
            let mut events = Vec::new();
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => events.push(serde_json::from_str(&t).unwrap()),
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return (u16::from(frame.code), frame.reason.to_string(), events);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
    }

    /// Says `text` in `room` via a `say` command.
    pub async fn say(&mut self, room: &str, text: &str) {
        self.send(json!({"type": "say", "room": room, "text": text}))
            .await;
    }

    /// Joins `room` and returns its `room` event (history replay is left unread).
    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room})).await;
        self.expect("room").await
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Sends a raw HTTP request and returns the whole response as text.
pub async fn http(addr: SocketAddr, request: &str) -> String {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let mut s = Async::<TcpStream>::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    deadline("an HTTP response", s.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
