//! HTTP/1.1 on the wire: request heads in, plain responses out, the built-in page, the `101`.
//!
//! A connection enters as any `AsyncRead + AsyncWrite` byte stream. [`read_head`] reads up to
//! [`MAX_HEAD_BYTES`] and parses them with `httparse` into a [`Head`], which
//! [`crate::route`] decides on. Plain answers leave as a complete HTTP response
//! (`respond`: written, then what the client still sends is drained; `refuse` also counts
//! and logs it); an accepted upgrade leaves as the `101` ([`switching_protocols`]) plus
//! whatever bytes the client already sent after its head, which `crate::upgrade` hands to
//! tungstenite. Nothing here knows about rooms.

use std::borrow::Cow;

use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Protocol;
use crate::deadline::within;
use crate::logger;
use crate::metrics::{Metrics, Refusal};

/// The largest request head accepted; a longer one gets `431`.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Headers parsed per request; more count as a head too large.
const MAX_HEADERS: usize = 48;

/// The parts of a request head the server looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string, without the `?`.
    pub query: String,
    /// The token of an `Authorization: Bearer` header (a token or the API key: never logged).
    pub bearer: Option<String>,
    /// `Content-Length`, as sent.
    pub content_length: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// A `Transfer-Encoding` header was present (bodies are taken only with a length).
    pub transfer_encoding: bool,
    /// The `Host` header.
    pub host: Option<String>,
    /// The `Origin` header, sent by browsers.
    pub origin: Option<String>,
    /// `Upgrade: websocket` was present.
    pub upgrade_websocket: bool,
    /// `Connection` listed `upgrade`.
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<String>,
    /// `Accept-Encoding` lists `gzip` (the built-in page is kept and sent compressed).
    pub accepts_gzip: bool,
}

/// Why a head could not be read.
#[derive(Debug)]
pub enum HeadError {
    /// Over [`MAX_HEAD_BYTES`] (or too many headers): answer `431`.
    TooLarge,
    /// Not HTTP/1.x: answer `400`.
    Malformed,
    /// The peer closed or the socket failed before the head was complete: answer nothing.
    Io,
}

/// Reads one request head. Returns it with the bytes that followed it in the same reads (the
/// start of the WebSocket stream, if the client did not wait for the `101`).
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Head, Vec<u8>), HeadError> {
    // Read straight into the buffer's spare room: a separate chunk array would sit in the
    // (boxed) handshake future of every connection being accepted.
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_HEAD_BYTES), 0);
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io);
        }
        len += n;
        match parse_head(&buf[..len])? {
            Some((head, used)) => {
                buf.truncate(len);
                return Ok((head, buf.split_off(used)));
            }
            None if len >= MAX_HEAD_BYTES => return Err(HeadError::TooLarge),
            None => {}
        }
    }
}

/// Parses a head from `buf`: `Ok(None)` when more bytes are needed, else the head and its
/// length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        ..Head::default()
    };
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            // Two `Host` headers: a proxy in front may have read the other one (RFC 9112).
            if head.host.is_some() {
                return Err(HeadError::Malformed);
            }
            head.host = Some(value);
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket |= value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            head.connection_upgrade |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            let bearer = value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
            head.bearer = bearer.map(|(_, token)| token.trim().to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            // Two lengths: which one frames the body is ambiguous (request smuggling).
            if head.content_length.is_some() {
                return Err(HeadError::Malformed);
            }
            head.content_length = Some(value);
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value);
        } else if name.eq_ignore_ascii_case("accept-encoding") {
            head.accepts_gzip |= value.split(',').any(|coding| {
                let mut parts = coding.split(';');
                let name = parts.next().unwrap_or("").trim();
                // `gzip;q=0` says no.
                let refused =
                    parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
                (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
            });
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = true;
        }
    }
    Ok(Some((head, used)))
}

/// A complete plain HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers besides the standard ones.
    pub headers: Vec<(&'static str, String)>,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// The body: borrowed for the built-in page, which is served without a copy.
    pub body: Cow<'static, [u8]>,
}

impl Response {
    /// A `text/plain` response whose body is `body` plus a newline.
    pub fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n").into_bytes().into(),
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Writes the response and closes the conversation (`Connection: close`).
    /// A plain-text body, for the log line of a refusal.
    pub fn reason(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("").trim_end()
    }

    pub async fn write<S: AsyncWrite + Unpin>(&self, stream: &mut S) -> std::io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        stream.write_all(out.as_bytes()).await?;
        stream.write_all(&self.body).await?;
        stream.flush().await
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The value of query parameter `name`, as sent (tokens and numbers need no decoding).
pub fn query_param<'a>(head: &'a Head, name: &str) -> Option<&'a str> {
    head.query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The built-in web client, as written (for tests: the binary carries [`PAGE_GZIP`]).
pub const PAGE: &str = include_str!("../web/index.html");
/// Raw mode's page: a plain-text chat, lines in and lines out, like the Go hub's.
pub const RAW_PAGE: &str = include_str!("../web/raw.html");
/// The web client as the binary carries and serves it: gzip-compressed by `build.rs`, a
/// third of its size (every browser accepts gzip; the binary has no compressor of its own).
pub const PAGE_GZIP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/index.html.gz"));
/// Raw mode's page, gzip-compressed.
pub const RAW_PAGE_GZIP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/raw.html.gz"));

/// The web client's response: HTML with a policy that allows only its own inline script and
/// style (by the SHA-256 that `build.rs` computes from `web/index.html`), and connections back
/// to this server (`'self'` covers same-origin `ws:`/`wss:` in current browsers), so injected
/// markup, inline event handlers included, could not run or load anything even if it got into
/// the page. `no-cache` makes browsers revalidate, so a new server version's page is picked up.
pub fn page(protocol: Protocol, accepts_gzip: bool) -> Response {
    macro_rules! csp {
        ($script:literal, $style:literal) => {
            concat!(
                "default-src 'none'; script-src 'sha256-",
                env!($script),
                "'; style-src 'sha256-",
                env!($style),
                "'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                 form-action 'none'; frame-ancestors 'none'"
            )
        };
    }
    if !accepts_gzip {
        // Kept compressed only: a client that cannot take gzip (curl without --compressed)
        // is told so rather than sent bytes it cannot read.
        return Response::text(
            406,
            "the web client is sent gzip-compressed: open it in a browser, or ask for it \
             with Accept-Encoding: gzip (curl --compressed)",
        )
        .with("Vary", "Accept-Encoding");
    }
    let (body, csp) = match protocol {
        Protocol::V1 => (
            PAGE_GZIP,
            csp!("SMOLCHAT_SCRIPT_SHA256", "SMOLCHAT_STYLE_SHA256"),
        ),
        Protocol::Raw => (
            RAW_PAGE_GZIP,
            csp!("SMOLCHAT_RAW_SCRIPT_SHA256", "SMOLCHAT_RAW_STYLE_SHA256"),
        ),
    };
    Response {
        status: 200,
        headers: vec![
            ("Content-Encoding", "gzip".to_string()),
            ("Vary", "Accept-Encoding".to_string()),
            ("Content-Security-Policy", csp.to_string()),
            ("Cache-Control", "no-cache".to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
            ("Referrer-Policy", "no-referrer".to_string()),
        ],
        content_type: "text/html; charset=utf-8",
        body: Cow::Borrowed(body),
    }
}

/// Counts and logs a refusal, then answers it like any plain response.
pub(crate) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    metrics: &Metrics,
    stream: &mut S,
    peer: &str,
    response: Response,
    why: Refusal,
) {
    metrics.refuse(why);
    logger::refusal(
        peer,
        &format!("refused: {} {}", response.status, response.reason()),
    );
    respond(stream, &response).await;
}

/// Writes a plain response, then reads and drops what the client is still sending (at most
/// 64 KiB, until it pauses for 100 ms or closes, within the exchange's one deadline)
/// before the socket is dropped. Dropping a socket with unread input makes the kernel
/// answer with a reset, which can destroy the response before the client reads it: a
/// refused oversized head would never see its 431. (A generic stream cannot half-close, so
/// the pause is how we know it is done.)
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
) {
    if response.write(stream).await.is_err() {
        return;
    }
    let mut scratch = [0u8; 512];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match within(Duration::from_millis(100), stream.read(&mut scratch)).await {
            Some(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// The `101 Switching Protocols` response for an accepted upgrade.
pub fn switching_protocols(accept_key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_heads_wait_and_leftovers_are_kept() {
        assert!(
            parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .is_none()
        );
        let (_, used) = parse_head(b"GET / HTTP/1.1\r\n\r\nabc").unwrap().unwrap();
        assert_eq!(used, 18);
        assert!(matches!(
            parse_head(b"\x16\x03\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
        assert!(matches!(
            parse_head(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
    }
}
