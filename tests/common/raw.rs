//! Raw-socket helpers: WebSocket upgrades written by hand (to control every header, or to get
//! a client that completes the handshake and then never reads), and `/metrics` scraping.
//!
//! Like the rest of `common`, every wait is bounded by [`DEADLINE`](super::DEADLINE); the only
//! polling loop ([`wait_for_metric`]) is for counters that have no event to await.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::Role;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::Async;

use super::{DEADLINE, deadline, http};

/// The `Sec-WebSocket-Key` of RFC 6455's example.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The `Sec-WebSocket-Accept` that [`KEY`] must produce.
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A valid `GET /ws` upgrade request whose `Host` is `addr`, with `extra` headers added.
pub fn upgrade_request(addr: SocketAddr, extra: &[(&str, &str)]) -> String {
    let mut r = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// Connects, writes `request`, and reads the response head up to and including its blank
/// line, one byte at a time so that nothing after it (a body, or WebSocket frames) is
/// consumed. Returns the head and the still-open socket.
pub async fn request_head(addr: SocketAddr, request: &str) -> (String, Async<TcpStream>) {
    let mut s = Async::<TcpStream>::connect(addr)
        .await
        .expect("tcp connect");
    s.write_all(request.as_bytes())
        .await
        .expect("write request");
    let head = deadline("a response head", async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).await.expect("read response head");
            assert!(
                n == 1,
                "connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        String::from_utf8(head).expect("ASCII head")
    })
    .await;
    (head, s)
}

/// The status code of a response (head or whole response).
pub fn status(response: &str) -> u16 {
    let line = response.lines().next().unwrap_or("");
    assert!(
        line.starts_with("HTTP/1.1 "),
        "not an HTTP response: {response:?}"
    );
    line[9..12].parse().expect("status code")
}

/// The value of header `name` in a response, if present (case-insensitive name).
pub fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Upgrades by hand and returns the socket right after the `101` head, without reading any
/// WebSocket frame. The server sees a normal client; what it sends piles up unread.
pub async fn upgrade(addr: SocketAddr) -> Async<TcpStream> {
    let (head, s) = request_head(addr, &upgrade_request(addr, &[])).await;
    assert_eq!(status(&head), 101, "{head}");
    assert_eq!(
        header(&head, "Sec-WebSocket-Accept"),
        Some(ACCEPT),
        "{head}"
    );
    s
}

/// Turns a socket returned by [`upgrade`] into a WebSocket client, to read (at last) what the
/// server sent it.
pub async fn websocket(s: Async<TcpStream>) -> WebSocketStream<Async<TcpStream>> {
    WebSocketStream::from_raw_socket(s, Role::Client, None).await
}

/// Reads a WebSocket until the server's close frame and returns its code (frames before it
/// are skipped), failing after [`DEADLINE`].
pub async fn close_code<S>(ws: &mut WebSocketStream<S>) -> u16
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    use async_tungstenite::tungstenite::Message;
    use futures_lite::StreamExt;
    deadline("a close frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
}

/// Reads until the server closes the connection and returns every byte received. Fails the
/// test on a read error (a reset) or after [`DEADLINE`].
pub async fn read_until_closed(s: &mut Async<TcpStream>) -> Vec<u8> {
    let mut out = Vec::new();
    deadline(
        "the server to close the connection",
        s.read_to_end(&mut out),
    )
    .await
    .expect("clean end of stream");
    out
}

/// Sends raw bytes on a new connection and returns what came back before the server closed
/// it; unlike [`http`], a failed read (a connection reset) does not fail the test but is
/// reported as `Err((error, what was read before it))`.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<String, (String, String)> {
    let mut s = Async::<TcpStream>::connect(addr)
        .await
        .expect("tcp connect");
    s.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    deadline("the server to answer and close", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(String::from_utf8_lossy(&out).into_owned()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    return Err((e.to_string(), String::from_utf8_lossy(&out).into_owned()));
                }
            }
        }
    })
    .await
}

/// The `/metrics` text (the body only).
pub async fn metrics(addr: SocketAddr) -> String {
    let response = http(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
    .await;
    assert_eq!(status(&response), 200, "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .expect("a body")
}

/// The value of the sample named exactly `name` (labels included, e.g.
/// `smolchat_refused_total{cause="origin"}`), failing the test if it is missing.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .trim()
        .parse()
        .expect("a whole number")
}

/// Polls `/metrics` until sample `name` equals `want`, with a short pause between scrapes,
/// failing after [`DEADLINE`]. Only for counters that change *after* the event a test can
/// await (a connection slot freed when the session task ends, a close frame counted after
/// its write completed): there is nothing else to wait on.
pub async fn wait_for_metric(addr: SocketAddr, name: &str, want: u64) {
    let started = std::time::Instant::now();
    loop {
        // A scrape may itself be refused while the connections under test hold every slot.
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let text = match exchange(addr, request.as_bytes()).await {
            Ok(r) if status(&r) == 200 => r.split_once("\r\n\r\n").unwrap().1.to_string(),
            refused => {
                assert!(
                    started.elapsed() < DEADLINE,
                    "/metrics refused: {refused:?}"
                );
                smol::Timer::after(Duration::from_millis(10)).await;
                continue;
            }
        };
        let got = metric(&text, name);
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{name} is {got}, expected {want}; metrics:\n{text}"
        );
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}
