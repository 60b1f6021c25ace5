//! Who may do what (docs/protocol.md, "Who may do what"): every cell of the table that
//! refuses, tried as an attacker would with a token signed by the right secret.
//!
//! The v1 cases are one suite run against both authorities: the in-memory one, and Redis
//! (with `--features redis`; each run starts its own `redis-server` on a loopback port). Raw
//! mode runs on one node only (`--redis` is refused with it), so its cases run once. Tokens
//! are signed by an independent library (`jsonwebtoken`), not by smolchat's own signer.

#![cfg(feature = "auth")]

mod common;
#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;
#[macro_use]
#[path = "common/authority.rs"]
mod authority;

use std::net::SocketAddr;
use std::time::Instant;

use authority::{Authority, Setup};
use common::raw::{request_head, status, upgrade_request};
use common::*;
use serde_json::{Value, json};
use smolchat::config::{Auth, Protocol};
use smolchat::token::Secret;

const SECRET: &[u8] = b"a test secret of at least 32 bytes, for HS256";

/// A server (a node, for Redis) that checks tokens, deciding through `authority`.
fn setup(authority: Authority, change: impl FnOnce(&mut smolchat::Config)) -> Setup {
    authority::setup(authority, |c| {
        c.auth = Some(Auth {
            secret: Secret::new(SECRET.to_vec()),
            guests: false,
        });
        c.rate_limit = 0;
        change(c);
    })
}

/// A token for `sub`, valid for an hour, limited to `rooms` if given.
fn token(sub: &str, rooms: Option<&[&str]>) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({"sub": sub, "exp": now + 3600});
    if let Some(rooms) = rooms {
        claims["rooms"] = json!(rooms);
    }
    let key = EncodingKey::from_secret(SECRET).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

/// Connects with `token` and reads the welcome (the default room's event, if any, is left).
async fn user(addr: SocketAddr, token: &str) -> Client {
    let mut c = Client::connect_path(addr, &format!("/ws?token={token}")).await;
    c.nick = c.expect("welcome").await["nick"]
        .as_str()
        .unwrap()
        .to_string();
    c
}

/// A user with no claim, in the default room.
async fn unlimited(addr: SocketAddr, name: &str) -> Client {
    let mut c = user(addr, &token(name, None)).await;
    c.expect("room").await;
    c
}

/// The error's message with `name` replaced by a placeholder: two refusals that differ only
/// in the name asked for read the same.
fn template(error: &Value, name: &str) -> String {
    error["message"].as_str().unwrap().replace(name, "NAME")
}

on_every_authority!(
    rooms_lists_only_the_rooms_a_claim_allows,
    who_outside_a_claim_is_forbidden_whether_the_room_exists_or_not,
    a_join_outside_a_claim_is_forbidden_with_or_without_a_cursor,
    a_direct_reaches_only_nicks_in_the_claims_rooms,
);

fn rooms_lists_only_the_rooms_a_claim_allows(authority: Authority) {
    let setup = setup(authority, |c| c.max_rooms_per_client = 100);
    let addr = setup.server.addr;
    run(async {
        // The boss makes 60 rooms besides the lobby; the claim names 55 of them and 5 that
        // do not exist.
        let mut boss = unlimited(addr, "boss").await;
        let mut claim = Vec::new();
        for i in 0..60 {
            let room = format!("t{i:02}");
            boss.join(&room).await;
            if i < 55 {
                claim.push(room);
            }
        }
        for i in 0..5 {
            claim.push(format!("gone{i}"));
        }
        let claim: Vec<&str> = claim.iter().map(String::as_str).collect();
        let mut cust = user(addr, &token("cust", Some(&claim))).await;

        cust.send(json!({"type": "rooms"})).await;
        let first = cust.expect("rooms").await;
        assert_eq!(
            (first["count"].as_u64(), first["next"].as_u64()),
            (Some(55), Some(50))
        );
        let names: Vec<&str> = first["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            claim[..50],
            "sorted, the claim's existing rooms only"
        );
        assert_eq!(first["rooms"][0]["members"], 1);
        cust.send(json!({"type": "rooms", "offset": 50})).await;
        let second = cust.expect("rooms").await;
        let names: Vec<&str> = second["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, claim[50..55]);
        assert_eq!(second["count"], 55);
        assert!(second.get("next").is_none_or(Value::is_null), "{second}");
        // Past the end: an empty page, the same count.
        cust.send(json!({"type": "rooms", "offset": 500})).await;
        let past = cust.expect("rooms").await;
        assert_eq!(
            (past["rooms"].as_array().unwrap().len(), &past["count"]),
            (0, &json!(55))
        );

        // Without a claim, every room (the lobby too).
        boss.send(json!({"type": "rooms"})).await;
        assert_eq!(boss.expect("rooms").await["count"], 61);
    });
}

fn who_outside_a_claim_is_forbidden_whether_the_room_exists_or_not(authority: Authority) {
    let setup = setup(authority, |_| {});
    let addr = setup.server.addr;
    run(async {
        let mut boss = unlimited(addr, "boss").await;
        boss.join("layoffs-2027").await;
        boss.join("support-42").await;
        let mut cust = user(addr, &token("cust", Some(&["support-42"]))).await;

        let mut refusals = Vec::new();
        for room in ["layoffs-2027", "no-such-room", "lobby"] {
            cust.send(json!({"type": "who", "room": room})).await;
            refusals.push(template(&cust.expect_error("forbidden").await, room));
        }
        assert!(refusals.iter().all(|r| *r == refusals[0]), "{refusals:?}");
        cust.send(json!({"type": "who", "room": "support-42"}))
            .await;
        assert_eq!(cust.expect("members").await["members"], json!(["boss"]));
    });
}

fn a_join_outside_a_claim_is_forbidden_with_or_without_a_cursor(authority: Authority) {
    let setup = setup(authority, |_| {});
    let addr = setup.server.addr;
    run(async {
        let mut boss = unlimited(addr, "boss").await;
        let room = boss.join("layoffs-2027").await;
        boss.say("layoffs-2027", "the list is final").await;
        boss.expect("message").await;
        let epoch = room["epoch"].as_str().unwrap();
        let mut cust = user(addr, &token("cust", Some(&["support-42"]))).await;
        let mut refusals = Vec::new();
        for (name, join) in [
            (
                "layoffs-2027",
                json!({"type": "join", "room": "layoffs-2027"}),
            ),
            (
                "layoffs-2027",
                json!({"type": "join", "room": "layoffs-2027", "since": 0, "epoch": epoch}),
            ),
            (
                "no-such-room",
                json!({"type": "join", "room": "no-such-room", "since": 0}),
            ),
        ] {
            cust.send(join).await;
            refusals.push(template(&cust.expect_error("forbidden").await, name));
        }
        assert!(refusals.iter().all(|r| *r == refusals[0]), "{refusals:?}");
        // Nothing of the room reached it: the next event is the answer to this.
        cust.send(json!({"type": "who", "room": "support-42"}))
            .await;
        assert_eq!(cust.expect("members").await["count"], 0);
    });
}

fn a_direct_reaches_only_nicks_in_the_claims_rooms(authority: Authority) {
    let setup = setup(authority, |_| {});
    let addr = setup.server.addr;
    run(async {
        let mut boss = unlimited(addr, "boss").await;
        let mut cust = user(addr, &token("cust", Some(&["support-42"]))).await;

        // Boss is online, but in no room of the claim: it reads exactly like nobody.
        let direct = |to: &str| json!({"type": "direct", "to": to, "text": "are you there?"});
        cust.send(direct("boss")).await;
        let online = template(&cust.expect_error("unknown_recipient").await, "boss");
        cust.send(direct("ghost-7")).await;
        let absent = template(&cust.expect_error("unknown_recipient").await, "ghost-7");
        assert_eq!(online, absent);

        // Once boss is in a room of the claim, it can be reached...
        boss.join("support-42").await;
        cust.join("support-42").await;
        boss.expect("join").await;
        cust.send(direct("boss")).await;
        assert_eq!(boss.expect("direct").await["from"], "cust");
        assert_eq!(cust.expect("direct").await["to"], "boss");
        // ...and a user without a claim reaches anyone.
        boss.send(json!({"type": "direct", "to": "cust", "text": "yes"}))
            .await;
        assert_eq!(cust.expect("direct").await["text"], "yes");
    });
}

// Raw mode: the claim decides the groups a token may open, and a user's connections are
// counted, both before the upgrade (a raw client reads no JSON).

fn raw(change: impl FnOnce(&mut smolchat::Config)) -> TestServer {
    server_with(|c| {
        c.protocol = Protocol::Raw;
        c.auth = Some(Auth {
            secret: Secret::new(SECRET.to_vec()),
            guests: false,
        });
        change(c);
    })
}

/// The response head to an upgrade of `path` (with its query).
async fn upgrade_head(addr: SocketAddr, path: &str) -> String {
    let request = upgrade_request(addr, &[]).replacen("GET /ws ", &format!("GET {path} "), 1);
    request_head(addr, &request).await.0
}

/// The body of a refusal: the reason, for a raw client's operator to read.
async fn refusal(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = upgrade_request(addr, &[]).replacen("GET /ws ", &format!("GET {path} "), 1);
    let response = match common::raw::exchange(addr, request.as_bytes()).await {
        Ok(response) => response,
        Err((response, _)) => response,
    };
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    (status(&response), body.to_string())
}

#[test]
fn in_raw_mode_a_claim_decides_which_groups_a_token_may_open() {
    let server = raw(|_| {});
    let addr = server.addr;
    run(async {
        let ops_only = token("ada", Some(&["ops"]));
        let mut insider =
            Client::connect_path(addr, &format!("/ws/secret?token={}", token("boss", None))).await;
        for path in [
            format!("/ws/secret?token={ops_only}"),
            format!("/ws?token={ops_only}"),
        ] {
            let (code, why) = refusal(addr, &path).await;
            assert_eq!(code, 403, "{path}");
            assert!(why.contains("does not allow"), "{why}");
        }
        // What the insiders say stays with them; the claim's own group works.
        let mut ops = Client::connect_path(addr, &format!("/ws/ops?token={ops_only}")).await;
        insider.send_text("for insiders").await;
        ops.send_text("for ops").await;
        assert_eq!(insider.next_text().await, "for insiders");
        assert_eq!(ops.next_text().await, "for ops");
        let metrics = common::raw::metrics(addr).await;
        assert_eq!(
            common::raw::metric(&metrics, "smolchat_refused_total{cause=\"forbidden\"}"),
            2
        );
    });
}

#[test]
fn in_raw_mode_auth_required_refuses_a_connection_without_a_token() {
    let server = raw(|_| {});
    run(async {
        for path in ["/ws", "/ws/ops"] {
            let head = upgrade_head(server.addr, path).await;
            assert_eq!(status(&head), 401, "{head}");
        }
    });
}

#[test]
fn in_raw_mode_a_guest_and_a_user_without_a_claim_open_any_group() {
    let server = raw(|c| c.auth.as_mut().unwrap().guests = true);
    let addr = server.addr;
    run(async {
        let mut guest = Client::connect_path(addr, "/ws/anything").await;
        let mut boss =
            Client::connect_path(addr, &format!("/ws/anything?token={}", token("boss", None)))
                .await;
        guest.send_text("hi").await;
        assert_eq!(boss.next_text().await, "hi");
        assert_eq!(guest.next_text().await, "hi");
    });
}

#[test]
fn in_raw_mode_max_connections_per_user_counts_raw_sessions() {
    let server = raw(|c| c.max_connections_per_user = 3);
    let addr = server.addr;
    run(async {
        let ada = token("ada", None);
        let mut tabs = Vec::new();
        for _ in 0..3 {
            tabs.push(Client::connect_path(addr, &format!("/ws?token={ada}")).await);
        }
        for name in ["ada", "ADA"] {
            let (code, why) = refusal(addr, &format!("/ws?token={}", token(name, None))).await;
            assert_eq!(code, 429);
            assert!(why.contains("--max-connections-per-user"), "{why}");
        }
        // Another user is not affected, and the refused ones never joined: the group hears
        // only the four.
        let mut bob =
            Client::connect_path(addr, &format!("/ws?token={}", token("bob", None))).await;
        bob.send_text("four of us").await;
        for tab in tabs.iter_mut() {
            assert_eq!(tab.next_text().await, "four of us");
        }
        // A tab closes; the server learns of it after the close frame, so a new one is
        // refused until then, and accepted after. Each try is refused or upgraded.
        tabs.pop().unwrap().close().await;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let head = upgrade_head(addr, &format!("/ws?token={ada}")).await;
            match status(&head) {
                101 => break,
                429 => assert!(Instant::now() < deadline, "the departure never counted"),
                other => panic!("{other}: {head}"),
            }
        }
        let metrics = common::raw::metrics(addr).await;
        let refused = common::raw::metric(
            &metrics,
            "smolchat_refused_total{cause=\"user_connections\"}",
        );
        assert!(refused >= 2, "{refused}");
    });
}
