//! Routing: what each request gets, decided in one place, and the plain answers.
//!
//! A request enters once its head is read (`crate::handshake` reads it within the
//! connection's deadline), as a [`Head`] and the bytes read after it. `serve` checks its
//! token first, if the server checks tokens (a `/ws` request without a valid one gets `401`,
//! upgrade or not, so that a page can learn why its WebSocket failed), then [`route`] decides
//! from the head alone: the built-in page, `/healthz`, `/metrics`, the HTTP API (`/api/`,
//! `crate::api`), the WebSocket upgrade (`crate::upgrade`), or a refusal. Every answer
//! but the upgrade leaves here as a plain response; the upgrade leaves as the WebSocket.

use futures_lite::{AsyncRead, AsyncWrite};

use crate::Front;
use crate::client::Verified;
use crate::config::{Config, Protocol};
use crate::http::{self, Head, Response, respond};
use crate::metrics::Refusal;
use crate::upgrade::{self, Upgrade};

/// Answers a request whose head is `head` (`leftover`: the bytes read after it). Returns the
/// WebSocket for an accepted upgrade; every other request is answered here.
pub(crate) async fn serve<'a, S>(
    front: Front<'a>,
    mut stream: S,
    head: Head,
    leftover: Vec<u8>,
    peer: &str,
) -> Option<Upgrade<'a, S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = match authenticate(front, &head, peer) {
        Ok(user) => user,
        Err(unauthorized) => {
            respond(&mut stream, &unauthorized).await;
            return None;
        }
    };
    let response = match route(&head, front.config()) {
        Route::Upgrade { accept_key, group } => {
            let request = upgrade::Request {
                leftover,
                accept_key,
                group,
                user,
            };
            return upgrade::answer(front, stream, request, peer).await;
        }
        #[cfg(feature = "api")]
        Route::Api => {
            crate::api::serve(front, &mut stream, &head, leftover, peer).await;
            return None;
        }
        Route::Page => http::page(front.config().protocol, head.accepts_gzip),
        Route::Health if front.backend_up() => Response::text(200, "ok"),
        // While a scale-out node cannot reach Redis.
        Route::Health => Response::text(503, "redis unavailable"),
        Route::Metrics => {
            let mut r = Response::text(200, "");
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r.body = front
                .metrics()
                .render(front.admission())
                .into_bytes()
                .into();
            r
        }
        Route::Refuse(response, None) => response,
        Route::Refuse(response, Some(why)) => {
            http::refuse(front.metrics(), &mut stream, peer, response, why).await;
            return None;
        }
    };
    respond(&mut stream, &response).await;
    None
}

/// The user a request for the chat (`/ws`, `/ws/NAME`) proves with its token, if the server
/// checks tokens (`--auth-secret-file`), or the 401 to answer. The token comes as the query
/// parameter `token` (browsers cannot set headers on a WebSocket) or as `Authorization:
/// Bearer`; without one, a guest if `--auth optional`. It is checked before anything else
/// about the request, upgrade or not, so that a page whose WebSocket failed to open can learn
/// why with a plain GET (browsers do not show a failed upgrade's status to scripts).
#[cfg(feature = "auth")]
fn authenticate(front: Front, head: &Head, peer: &str) -> Result<Option<Box<Verified>>, Response> {
    let chat_path = head.path == "/ws" || head.path.starts_with("/ws/");
    let Some(auth) = front.config().auth.as_ref().filter(|_| chat_path) else {
        return Ok(None);
    };
    let checked = match http::query_param(head, "token").or(head.bearer.as_deref()) {
        Some(token) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            crate::token::verify(token, &auth.secret, now).map(|v| Some(Box::new(v)))
        }
        None if auth.guests => Ok(None),
        None => Err(crate::token::Refusal::Missing),
    };
    checked.map_err(|why| {
        front.metrics().auth_refused(why);
        // The line names the cause, never the token.
        crate::logger::refusal(peer, &format!("refused: 401 {}", why.reason()));
        // No error code when no token was sent (RFC 6750, section 3.1).
        let challenge = match why {
            crate::token::Refusal::Missing => "Bearer realm=\"smolchat\"".to_string(),
            _ => format!(
                "Bearer realm=\"smolchat\", error=\"invalid_token\", error_description=\"{}\"",
                why.reason()
            ),
        };
        Response::text(401, why.reason()).with("WWW-Authenticate", challenge)
    })
}

/// Without the `auth` feature every client is a guest.
#[cfg(not(feature = "auth"))]
fn authenticate(_: Front, _: &Head, _: &str) -> Result<Option<Box<Verified>>, Response> {
    Ok(None)
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Upgrade to a WebSocket, answering with this `Sec-WebSocket-Accept`. In raw mode,
    /// `group` is the group named by the path (`/ws/NAME`), `None` for `/ws`.
    Upgrade {
        accept_key: String,
        group: Option<String>,
    },
    /// A call of the HTTP API (`crate::api`, feature `api`), which reads the body if there
    /// is one.
    #[cfg(feature = "api")]
    Api,
    /// Serve the built-in web client.
    Page,
    /// Answer `/healthz`.
    Health,
    /// Answer `/metrics`.
    Metrics,
    /// Refuse with this response, counted under this cause (if any).
    Refuse(Response, Option<Refusal>),
}

/// Decides what a request gets, from its head alone. Capacity is checked when the upgrade is
/// answered (`crate::upgrade`), by the admission semaphore.
pub fn route(head: &Head, config: &Config) -> Route {
    #[cfg(feature = "api")]
    if head.path == "/api" || head.path.starts_with("/api/") {
        // Without a key the API does not exist, whatever the method.
        return match config.api_key {
            Some(_) => Route::Api,
            None => Route::Refuse(Response::text(404, "not found; the chat is at /ws"), None),
        };
    }
    if head.method != "GET" {
        return Route::Refuse(
            Response::text(405, "only GET is supported").with("Allow", "GET"),
            Some(Refusal::BadRequest),
        );
    }
    let raw = config.protocol == Protocol::Raw;
    match head.path.as_str() {
        "/" | "/index.html" => Route::Page,
        "/healthz" => Route::Health,
        "/metrics" => Route::Metrics,
        "/ws" => upgrade(head, config, None),
        path if raw && path.starts_with("/ws/") => {
            let group = &path["/ws/".len()..];
            if crate::protocol::valid_room(group) {
                upgrade(head, config, Some(group.to_string()))
            } else {
                let why = "not found: a group is /ws/NAME, NAME 1-32 characters a-z, 0-9, _ or -";
                Route::Refuse(Response::text(404, why), None)
            }
        }
        _ => Route::Refuse(Response::text(404, "not found; the chat is at /ws"), None),
    }
}

/// The checks of an upgrade request: WebSocket headers, `Host` and `Origin`.
fn upgrade(head: &Head, config: &Config, group: Option<String>) -> Route {
    let bad = |why: &str| Route::Refuse(Response::text(400, why), Some(Refusal::BadRequest));
    if !head.upgrade_websocket || !head.connection_upgrade {
        return Route::Refuse(
            Response::text(
                426,
                "this is a WebSocket endpoint; connect with a WebSocket client",
            )
            .with("Upgrade", "websocket"),
            Some(Refusal::BadRequest),
        );
    }
    if head.ws_version.as_deref() != Some("13") {
        return Route::Refuse(
            Response::text(426, "only WebSocket version 13 is supported")
                .with("Sec-WebSocket-Version", "13"),
            Some(Refusal::BadRequest),
        );
    }
    let Some(key) = head.ws_key.as_deref().filter(|k| !k.is_empty()) else {
        return bad("missing Sec-WebSocket-Key header");
    };
    if !host_allowed(head, config) {
        return Route::Refuse(
            Response::text(
                403,
                "host name not allowed for /ws; the server operator can allow it with \
                 --allow-host",
            ),
            Some(Refusal::Host),
        );
    }
    if !origin_allowed(head, config) {
        return Route::Refuse(
            Response::text(
                403,
                "origin not allowed; the server operator can allow it with --allow-origin",
            ),
            Some(Refusal::Origin),
        );
    }
    Route::Upgrade {
        accept_key: async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        group,
    }
}

/// The `Host` an upgrade was addressed to must be an IP literal, `localhost`, or a name
/// listed with `--allow-host`. The origin check alone compares `Origin` with `Host`, and a
/// page on an attacker's domain that resolves to this server (DNS rebinding: a gateway on a
/// LAN, a server on 127.0.0.1) passes it, because both name the attacker's domain. No browser
/// sends an IP literal or `localhost` for an attacker's page. A request without `Host` is not
/// from a browser and is allowed.
pub fn host_allowed(head: &Head, config: &Config) -> bool {
    let Some(host) = head.host.as_deref() else {
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: [::1] or [::1]:8080, nothing else after the bracket.
        return rest.split_once(']').is_some_and(|(ip, after)| {
            let port = after.strip_prefix(':').unwrap_or(after);
            ip.parse::<std::net::Ipv6Addr>().is_ok() && port.bytes().all(|b| b.is_ascii_digit())
        });
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || config.allow_hosts.iter().any(|h| h == "*" || *h == name)
}

/// A request without `Origin` is not from a browser and is allowed. A browser's origin must
/// name the same host (and port) the request was sent to, or be listed with `--allow-origin`.
pub fn origin_allowed(head: &Head, config: &Config) -> bool {
    let Some(origin) = head.origin.as_deref() else {
        return true;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if config
        .allow_origins
        .iter()
        .any(|a| a == "*" || *a == origin)
    {
        return true;
    }
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    match head.host.as_deref() {
        Some(host) => !authority.is_empty() && authority.eq_ignore_ascii_case(host),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        http::parse_head(raw.as_bytes()).unwrap().unwrap().0
    }

    const UPGRADE: &str = "GET /ws?x=1 HTTP/1.1\r\nHost: chat.example:8080\r\nUpgrade: WebSocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n";

    #[test]
    fn parses_an_upgrade_and_routes_it() {
        let h = head(&format!("{UPGRADE}\r\n"));
        assert_eq!(h.path, "/ws");
        assert!(h.upgrade_websocket && h.connection_upgrade);
        let config = Config {
            allow_hosts: vec!["chat.example".into()],
            ..Config::default()
        };
        assert_eq!(
            route(&h, &config),
            Route::Upgrade {
                accept_key: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                group: None,
            }
        );
    }

    #[test]
    fn origin_policy() {
        let mut config = Config::default();
        let with_origin = |o: &str| head(&format!("{UPGRADE}Origin: {o}\r\n\r\n"));
        assert!(origin_allowed(&head(&format!("{UPGRADE}\r\n")), &config));
        assert!(origin_allowed(
            &with_origin("http://chat.example:8080"),
            &config
        ));
        assert!(origin_allowed(
            &with_origin("https://CHAT.example:8080"),
            &config
        ));
        assert!(!origin_allowed(
            &with_origin("http://evil.example"),
            &config
        ));
        assert!(!origin_allowed(&with_origin("null"), &config));
        config.allow_origins.push("http://evil.example".into());
        assert!(origin_allowed(&with_origin("http://evil.example"), &config));
        config.allow_origins = vec!["*".into()];
        assert!(origin_allowed(&with_origin("null"), &config));
    }

    #[test]
    fn host_policy() {
        let mut config = Config::default();
        let with_host = |h: &str| head(&format!("GET /ws HTTP/1.1\r\nHost: {h}\r\n\r\n"));
        for ok in [
            "127.0.0.1:8080",
            "10.0.0.7",
            "[::1]:8080",
            "[fe80::1]",
            "localhost:80",
        ] {
            assert!(host_allowed(&with_host(ok), &config), "{ok}");
        }
        for refused in [
            "evil.example:8080",
            "evil.example",
            "127.0.0.1.evil.example",
            "[x]",
            "[::1]evil.example",
        ] {
            assert!(!host_allowed(&with_host(refused), &config), "{refused}");
        }
        config.allow_hosts.push("chat.example.com".into());
        assert!(host_allowed(&with_host("Chat.Example.com:443"), &config));
        assert!(!host_allowed(&with_host("evil.example"), &config));
        let Route::Refuse(r, Some(Refusal::Host)) = route(
            &head(&format!(
                "{}Host: evil.example\r\n\r\n",
                UPGRADE.replace("Host: chat.example:8080\r\n", "")
            )),
            &Config::default(),
        ) else {
            panic!("a rebinding upgrade is refused")
        };
        assert_eq!(r.status, 403);
        assert!(String::from_utf8_lossy(&r.body).contains("--allow-host"));
        config.allow_hosts = vec!["*".into()];
        assert!(host_allowed(&with_host("anything.example"), &config));
    }

    #[test]
    fn plain_routes() {
        let config = Config::default();
        assert_eq!(
            route(&head("GET /healthz HTTP/1.1\r\n\r\n"), &config),
            Route::Health
        );
        let Route::Refuse(r, _) = route(&head("POST /ws HTTP/1.1\r\n\r\n"), &config) else {
            panic!()
        };
        assert_eq!(r.status, 405);
        let Route::Refuse(r, _) = route(&head("GET /nope HTTP/1.1\r\n\r\n"), &config) else {
            panic!()
        };
        assert_eq!(r.status, 404);
    }
}
