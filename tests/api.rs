//! The HTTP API (`--api-key-file`): publishing into rooms and reading their history over
//! plain HTTP, tested as `curl` would use it, against a real server on a loopback port.

#![cfg(feature = "api")]

mod common;

use std::net::SocketAddr;

use common::raw::{header, status};
use common::*;
use serde_json::{Value, json};
use smolchat::token::Secret;

const KEY: &str = "an-api-key-of-some-length-0123456789";

fn api_server(change: impl FnOnce(&mut smolchat::Config)) -> TestServer {
    server_with(|c| {
        c.api_key = Some(Secret::new(KEY.as_bytes().to_vec()));
        change(c);
    })
}

/// A request with `Authorization: Bearer key` (if any) and a JSON body (if any); returns the
/// whole response.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> String {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(key) = key {
        request.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    http(addr, &request).await
}

/// The JSON body of a response.
fn body(response: &str) -> Value {
    let (_, body) = response.split_once("\r\n\r\n").expect("a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

fn publish(text: &str) -> String {
    json!({"text": text, "from": "sensor"}).to_string()
}

#[test]
fn without_a_key_file_there_is_no_api() {
    let server = server();
    run(async {
        for (method, path) in [("GET", "/api/rooms"), ("POST", "/api/rooms/lobby/messages")] {
            let r = call(server.addr, method, path, Some(KEY), Some("{}")).await;
            assert_eq!(status(&r), 404, "{r}");
        }
    });
}

#[test]
fn a_published_message_reaches_members_flagged_and_stays_in_history() {
    let server = api_server(|_| {});
    run(async {
        let mut member = Client::connect(server.addr).await;
        let r = call(
            server.addr,
            "POST",
            "/api/rooms/lobby/messages",
            Some(KEY),
            Some(&publish("door open")),
        )
        .await;
        assert_eq!(status(&r), 201, "{r}");
        assert_eq!(header(&r, "Content-Type"), Some("application/json"));
        assert_eq!(body(&r), json!({"room": "lobby", "id": 1}));
        let mut m = member.expect("message").await;
        take_ts(&mut m);
        assert_eq!(
            m,
            json!({"type": "message", "room": "lobby", "id": 1, "from": "sensor", "text": "door open", "api": true})
        );
        member.say("lobby", "thanks").await;
        assert!(
            member.expect("message").await.get("api").is_none(),
            "a user's message is not flagged"
        );

        // `from` is optional; the room is created if it does not exist.
        let r = call(
            server.addr,
            "POST",
            "/api/rooms/alerts/messages",
            Some(KEY),
            Some(r#"{"text":"disk full"}"#),
        )
        .await;
        assert_eq!(body(&r), json!({"room": "alerts", "id": 1}), "{r}");

        let r = call(
            server.addr,
            "GET",
            "/api/rooms/lobby/messages?since=0",
            Some(KEY),
            None,
        )
        .await;
        assert_eq!(status(&r), 200, "{r}");
        let history = body(&r);
        assert_eq!(history["room"], "lobby");
        assert_eq!(history["last_id"], 2);
        assert_eq!(history["complete"], true);
        assert!(history["epoch"].as_str().is_some_and(|e| !e.is_empty()));
        let texts: Vec<(&str, bool)> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["text"].as_str().unwrap(), m.get("api").is_some()))
            .collect();
        assert_eq!(texts, [("door open", true), ("thanks", false)]);
        let r = call(
            server.addr,
            "GET",
            "/api/rooms/lobby/messages?since=1",
            Some(KEY),
            None,
        )
        .await;
        assert_eq!(body(&r)["messages"].as_array().unwrap().len(), 1);

        // The message published to a room nobody was in is replayed to whoever joins.
        let room = member.join("alerts").await;
        assert_eq!(room["last_id"], 1);
        let replayed = member.expect("message").await;
        assert_eq!(
            (replayed["from"].as_str(), replayed["api"].as_bool()),
            (Some("api"), Some(true))
        );

        let r = call(server.addr, "GET", "/api/rooms", Some(KEY), None).await;
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(
            body(&r),
            json!({"rooms": [{"name": "alerts", "members": 1}, {"name": "lobby", "members": 1}], "count": 2})
        );
        let r = call(
            server.addr,
            "GET",
            "/api/rooms/nowhere/messages",
            Some(KEY),
            None,
        )
        .await;
        assert_eq!(status(&r), 404, "{r}");
        assert_eq!(body(&r)["error"], "not_found");
    });
}

#[test]
fn bad_calls_get_clear_statuses() {
    let server = api_server(|c| c.max_message_bytes = 256);
    run(async {
        let addr = server.addr;
        let path = "/api/rooms/lobby/messages";
        let ok = publish("x");
        // The key.
        let r = call(addr, "POST", path, None, Some(&ok)).await;
        assert_eq!(status(&r), 401, "{r}");
        assert!(header(&r, "WWW-Authenticate").is_some_and(|h| h.starts_with("Bearer")));
        let wrong = format!("{KEY}x");
        assert_eq!(
            status(&call(addr, "POST", path, Some(&wrong), Some(&ok)).await),
            401
        );
        assert_eq!(
            status(&call(addr, "POST", path, Some(&KEY[1..]), Some(&ok)).await),
            401
        );
        // Methods and paths.
        let r = call(addr, "DELETE", path, Some(KEY), None).await;
        assert_eq!(status(&r), 405, "{r}");
        assert_eq!(header(&r, "Allow"), Some("GET, POST"));
        assert_eq!(
            status(&call(addr, "POST", "/api/rooms", Some(KEY), Some(&ok)).await),
            405
        );
        assert_eq!(
            status(&call(addr, "GET", "/api/nothing", Some(KEY), None).await),
            404
        );
        assert_eq!(
            status(
                &call(
                    addr,
                    "POST",
                    "/api/rooms/Bad_Room/messages",
                    Some(KEY),
                    Some(&ok)
                )
                .await
            ),
            400
        );
        assert_eq!(
            status(&call(addr, "GET", &format!("{path}?since=x"), Some(KEY), None).await),
            400
        );
        // Bodies.
        let no_length = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        assert_eq!(status(&http(addr, &no_length).await), 411);
        let big = publish(&"x".repeat(300));
        let r = call(addr, "POST", path, Some(KEY), Some(&big)).await;
        assert_eq!(status(&r), 413, "{r}");
        let text_plain = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        );
        assert_eq!(status(&http(addr, &text_plain).await), 415);
        for bad in [
            "{",
            "[]",
            r#"{"from":"x"}"#,
            r#"{"text":""}"#,
            r#"{"text":"bell \u0007"}"#,
            r#"{"text":"hi","from":"two words"}"#,
            r#"{"text":"hi","extra":1}"#,
            r#"{"text":5}"#,
        ] {
            let r = call(addr, "POST", path, Some(KEY), Some(bad)).await;
            assert_eq!(status(&r), 400, "{bad}: {r}");
            assert!(body(&r)["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        // Nothing of that was published: the room was not even created.
        let r = call(addr, "GET", path, Some(KEY), None).await;
        assert_eq!(status(&r), 404, "{r}");
        let metrics = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        for line in [
            "smolchat_api_requests_total{endpoint=\"publish\",status=\"400\"} 9",
            "smolchat_api_requests_total{endpoint=\"publish\",status=\"413\"} 1",
            "smolchat_api_requests_total{endpoint=\"other\",status=\"401\"} 3",
            "smolchat_api_requests_total{endpoint=\"history\",status=\"404\"} 1",
        ] {
            assert!(metrics.contains(line), "{line} in {metrics}");
        }
    });
}

#[test]
fn the_key_has_its_own_rate_limit() {
    let server = api_server(|c| c.api_rate_limit = 3);
    run(async {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let r = call(server.addr, "GET", "/api/rooms", Some(KEY), None).await;
            if status(&r) == 429 {
                assert_eq!(header(&r, "Retry-After"), Some("1"));
            }
            statuses.push(status(&r));
        }
        // A burst of 3, then refusals (the bucket refills at 3 a second: a slow machine may
        // earn one more token between calls, never three).
        assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
        assert!(statuses[3..].contains(&429), "{statuses:?}");
        // WebSocket clients are not limited by the API's bucket.
        let mut c = Client::connect(server.addr).await;
        c.say("lobby", "fine").await;
        c.expect("message").await;
    });
}

#[test]
fn a_room_beyond_max_rooms_is_refused_with_409() {
    let server = api_server(|c| c.max_rooms = 1);
    run(async {
        let mut member = Client::connect(server.addr).await;
        member.join("kept").await;
        let r = call(
            server.addr,
            "POST",
            "/api/rooms/other/messages",
            Some(KEY),
            Some(&publish("x")),
        )
        .await;
        assert_eq!(status(&r), 409, "{r}");
        assert_eq!(body(&r)["error"], "room_limit");
        // The default room always takes messages.
        let r = call(
            server.addr,
            "POST",
            "/api/rooms/lobby/messages",
            Some(KEY),
            Some(&publish("x")),
        )
        .await;
        assert_eq!(status(&r), 201, "{r}");
    });
}

/// Raw groups have no messages or history: the API is refused at start-up rather than
/// acknowledging publishes nobody gets (found by review).
#[test]
fn the_api_needs_protocol_v1() {
    let mut config = test_config();
    config.protocol = smolchat::config::Protocol::Raw;
    config.api_key = Some(Secret::new(KEY.as_bytes().to_vec()));
    let e = config.validate().unwrap_err();
    assert_eq!(e.flag, "--api-key-file", "{e}");
}
