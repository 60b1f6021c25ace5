//! Shared test helpers: a real server on a loopback port 0, and a small WebSocket client.
//!
//! Every wait has a generous deadline that only fails the test; nothing sleeps to wait for
//! something that can be awaited.
#![allow(dead_code)]

pub mod duplex;
pub mod raw;

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
        Client::connect_path(addr, "/ws").await
    }

    /// Connects to `path` (with its query, `/ws?token=...`) and returns without reading.
    pub async fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let stream = Async::<TcpStream>::connect(addr)
            .await
            .expect("tcp connect");
        // Like the server: a command sent right after one that gets no answer (a `leave`)
        // must not wait for the server's delayed acknowledgement (Nagle's algorithm).
        let _ = stream.get_ref().set_nodelay(true);
        let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}{path}"), stream)
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

    /// The next text frame as it came, JSON or not (raw mode; pings and pongs are skipped).
    pub async fn next_text(&mut self) -> String {
        deadline("a text frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return t.to_string(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
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

/// The real binary (`smolchat`, built with this test's features) started with `--listen
/// 127.0.0.1:0` and `args`, its log piped. Returns the child, the address from its "listening
/// on" line, the log up to that line, and the rest of its log to read.
pub fn start_binary<I, S>(
    args: I,
) -> (
    std::process::Child,
    SocketAddr,
    String,
    std::io::BufReader<std::process::ChildStderr>,
)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smolchat"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the smolchat binary starts");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let addr = loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).unwrap();
        assert!(read > 0, "no listening line: {log}");
        log.push_str(&line);
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    (child, addr, log, stderr)
}

/// A response's head and its body, un-gzipped if it says `Content-Encoding: gzip` (the built-in
/// page is served so; a request for it must say `Accept-Encoding: gzip`).
pub fn decoded(response: &[u8]) -> (String, String) {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = &response[split + 4..];
    let gzip = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("content-encoding: gzip"));
    let body = match gzip {
        true => {
            use std::io::Read;
            let mut text = String::new();
            flate2::read::GzDecoder::new(body)
                .read_to_string(&mut text)
                .expect("valid gzip");
            text
        }
        false => String::from_utf8_lossy(body).into_owned(),
    };
    (head, body)
}

/// `GET /` as a browser asks for it (gzip accepted): the head and the page, un-gzipped.
pub async fn page(addr: SocketAddr) -> (String, String) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let mut s = Async::<TcpStream>::connect(addr).await.unwrap();
    let request = "GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n";
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    deadline("the page", s.read_to_end(&mut out)).await.unwrap();
    decoded(&out)
}

// Exact event assertions (used by tests/protocol.rs and tests/history.rs).

/// `a` says `text` in lobby and `a` and every client in `all` receive it with `id`.
pub async fn heard_by_all(a: &mut Client, all: &mut [&mut Client], id: u64, text: &str) {
    a.say("lobby", text).await;
    let from = a.nick.clone();
    a.expect_exact(message("lobby", id, &from, text)).await;
    for c in all.iter_mut() {
        c.expect_exact(message("lobby", id, &from, text)).await;
    }
}

/// A `message` event as the server sends it, without its `ts`.
pub fn message(room: &str, id: u64, from: &str, text: &str) -> Value {
    json!({"type": "message", "room": room, "id": id, "from": from, "text": text})
}

/// Removes `ts` from `event` after checking that it is a plausible Unix time in milliseconds.
pub fn take_ts(event: &mut Value) -> u64 {
    let ts = event.as_object_mut().and_then(|o| o.remove("ts"));
    let ts = ts
        .as_ref()
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("`ts` must be an unsigned integer, got {ts:?} in {event}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        ts > 1_600_000_000_000 && ts <= now + 60_000,
        "`ts` {ts} is not a current Unix time in milliseconds (now {now})"
    );
    ts
}

/// Removes `epoch` from `event` after checking that it is a non-empty string, and returns it.
pub fn take_epoch(event: &mut Value) -> String {
    let epoch = event.as_object_mut().and_then(|o| o.remove("epoch"));
    match epoch {
        Some(Value::String(e)) if !e.is_empty() => e,
        other => panic!("`epoch` must be a non-empty string, got {other:?} in {event}"),
    }
}

/// Asserts that `actual` equals `expected` field by field. The fields whose values cannot be
/// known in advance are checked for shape and then ignored unless `expected` has them: `ts` of
/// `message` and `direct` events, `epoch` of `room` events. Returns the epoch, if it took one.
pub fn assert_event(actual: &Value, expected: &Value) -> Option<String> {
    let mut actual = actual.clone();
    let ty = expected["type"].as_str().unwrap_or_default();
    if matches!(ty, "message" | "direct") && expected.get("ts").is_none() {
        take_ts(&mut actual);
    }
    let mut epoch = None;
    if ty == "room" && expected.get("epoch").is_none() {
        epoch = Some(take_epoch(&mut actual));
    }
    assert_eq!(actual, *expected);
    epoch
}

impl Client {
    /// The next event must equal `expected` (see [`assert_event`]); returns the event.
    pub async fn expect_exact(&mut self, expected: Value) -> Value {
        let e = self.next().await;
        assert_event(&e, &expected);
        e
    }

    /// The next event must be `room` equal to `expected` (which names no `epoch`) apart from
    /// `epoch`, which is returned.
    pub async fn expect_room(&mut self, expected: Value) -> String {
        let e = self.next().await;
        assert_event(&e, &expected).expect("a room event")
    }
}

/// A `room` event for a plain join (no `complete`), without its `epoch`: every member listed.
pub fn room_event(room: &str, members: &[&str], last_id: u64) -> Value {
    json!({
        "type": "room",
        "room": room,
        "members": members,
        "count": members.len(),
        "last_id": last_id,
    })
}

/// A `room` event for a join with a cursor (`since`/`epoch`), without its `epoch`.
pub fn room_event_recovered(room: &str, members: &[&str], last_id: u64, complete: bool) -> Value {
    let mut e = room_event(room, members, last_id);
    e["complete"] = json!(complete);
    e
}

/// The `members` answer to `who` for a room whose members all fit in one page.
pub fn members_event(room: &str, members: &[&str]) -> Value {
    json!({"type": "members", "room": room, "members": members, "count": members.len()})
}
