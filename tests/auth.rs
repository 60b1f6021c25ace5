//! Signed tokens (`--auth-secret-file`): who may connect, under which name, for how long.
//!
//! Every token here is signed by an independent implementation, the `jsonwebtoken` crate, or
//! written by hand where no library would sign it (`alg: none`, a header that lies), so these
//! tests check smolchat's verifier against the standard rather than against itself.

#![cfg(feature = "auth")]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::raw::{header, request_head, status, upgrade_request};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use smolchat::config::Auth;
use smolchat::token::Secret;

const SECRET: &[u8] = b"a test secret that is long enough for HS256";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `claims`, signed by jsonwebtoken with `alg` and `secret`.
fn signed(alg: Algorithm, secret: &[u8], claims: Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

/// A valid token for `sub` for the next hour.
fn token(sub: &str) -> String {
    signed(
        Algorithm::HS256,
        SECRET,
        json!({"sub": sub, "exp": now() + 3600}),
    )
}

/// base64url without padding, by the `base64` crate: an encoder independent of smolchat's own
/// (`src/token.rs`), so that a shared mistake cannot pass unseen.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn auth_server(guests: bool) -> TestServer {
    server_with(|c| {
        c.auth = Some(Auth {
            secret: Secret::new(SECRET.to_vec()),
            guests,
        })
    })
}

/// Connects with `token` in the query string and reads the welcome.
async fn user(addr: std::net::SocketAddr, token: &str) -> (Client, Value) {
    let mut c = Client::connect_path(addr, &format!("/ws?token={token}")).await;
    let welcome = c.expect("welcome").await;
    c.nick = welcome["nick"].as_str().unwrap().to_string();
    (c, welcome)
}

/// `token` with the first character of its signature changed.
fn tampered(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    format!("{signed}.{first}{}", &signature[1..])
}

async fn refused_with(addr: std::net::SocketAddr, path: &str, extra: &[(&str, &str)]) -> String {
    let request = upgrade_request(addr, extra).replacen("GET /ws ", &format!("GET {path} "), 1);
    let (head, _) = request_head(addr, &request).await;
    head
}

#[test]
fn a_token_names_the_client_from_the_query_or_the_authorization_header() {
    let server = auth_server(false);
    run(async {
        let (mut ada, welcome) = user(server.addr, &token("ada")).await;
        assert_eq!(welcome["nick"], "ada");
        ada.expect("room").await;

        let bearer = format!("Bearer {}", token("Bob"));
        let (head, _) = request_head(
            server.addr,
            &upgrade_request(server.addr, &[("Authorization", &bearer)]),
        )
        .await;
        assert_eq!(status(&head), 101, "{head}");
        let joined = ada.expect("join").await;
        assert_eq!(joined["nick"], "Bob");
    });
}

#[test]
fn missing_malformed_forged_expired_and_foreign_tokens_get_401_by_cause() {
    let server = auth_server(false);
    let t = now();
    let hs256 = |claims: Value| signed(Algorithm::HS256, SECRET, claims);
    let header_none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(json!({"sub": "ada", "exp": t + 3600})
        .to_string()
        .as_bytes());
    // A valid HS256 signature under a header that names another algorithm: the classic
    // algorithm-confusion forgery; the header decides nothing but must say HS256.
    let genuine = token("ada");
    let signature = genuine.rsplit('.').next().unwrap();
    let lying = format!(
        "{}.{payload}.{signature}",
        b64(br#"{"alg":"RS256","typ":"JWT"}"#)
    );
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "missing"),
        ("not-a-token".into(), "malformed"),
        ("a.b.c".into(), "malformed"),
        (format!("{header_none}.{payload}."), "algorithm"),
        (format!("{header_none}.{payload}"), "malformed"),
        (
            signed(
                Algorithm::HS512,
                SECRET,
                json!({"sub": "ada", "exp": t + 60}),
            ),
            "algorithm",
        ),
        (lying, "algorithm"),
        (
            signed(
                Algorithm::HS256,
                b"another secret, just as long as the real one",
                json!({"sub": "ada", "exp": t + 60}),
            ),
            "signature",
        ),
        (tampered(&genuine), "signature"),
        (hs256(json!({"sub": "ada", "exp": t - 10})), "expired"),
        (hs256(json!({"sub": "ada"})), "expired"),
        (
            hs256(json!({"sub": "ada", "exp": t + 600, "nbf": t + 300})),
            "not_yet_valid",
        ),
        (hs256(json!({"exp": t + 60})), "subject"),
        (hs256(json!({"sub": "guest-3", "exp": t + 60})), "subject"),
        (hs256(json!({"sub": "a b", "exp": t + 60})), "subject"),
        (hs256(json!({"sub": "ada", "exp": "soon"})), "malformed"),
        (
            hs256(json!({"sub": "ada", "exp": t + 60, "rooms": ["Not A Room"]})),
            "subject",
        ),
    ];
    run(async {
        for (token, cause) in &cases {
            let path = if token.is_empty() {
                "/ws".to_string()
            } else {
                format!("/ws?token={token}")
            };
            let head = refused_with(server.addr, &path, &[]).await;
            assert_eq!(status(&head), 401, "{cause}: {head}");
            let challenge = header(&head, "WWW-Authenticate").unwrap_or("");
            assert!(challenge.starts_with("Bearer "), "{cause}: {head}");
        }
        let metrics = http(
            server.addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        for cause in [
            "missing",
            "malformed",
            "algorithm",
            "signature",
            "expired",
            "not_yet_valid",
            "subject",
        ] {
            let expected = cases.iter().filter(|(_, c)| *c == cause).count();
            let line = format!("smolchat_auth_refused_total{{cause=\"{cause}\"}} {expected}\n");
            assert!(metrics.contains(&line), "{line} in {metrics}");
        }
    });
}

#[test]
fn nobody_renames_when_names_come_from_tokens_and_guests_keep_guest_names() {
    let server = auth_server(true);
    run(async {
        let mut guest = Client::connect(server.addr).await;
        assert!(guest.nick.starts_with("guest-"), "{}", guest.nick);
        guest.send(json!({"type": "nick", "nick": "ada"})).await;
        guest.expect_error("forbidden").await;

        let (mut ada, _) = user(server.addr, &token("ada")).await;
        ada.expect("room").await;
        ada.send(json!({"type": "nick", "nick": "mallory"})).await;
        ada.expect_error("forbidden").await;
        let joined = guest.expect("join").await;
        assert_eq!(joined["nick"], "ada");
    });
}

#[test]
fn a_user_connected_twice_is_one_member_and_a_direct_reaches_both() {
    let server = auth_server(false);
    run(async {
        let (mut bob, _) = user(server.addr, &token("bob")).await;
        bob.expect("room").await;
        let (mut tab1, _) = user(server.addr, &token("ada")).await;
        tab1.expect("room").await;
        assert_eq!(bob.expect("join").await["nick"], "ada");
        let (mut tab2, _) = user(server.addr, &token("ada")).await;
        let room = tab2.expect("room").await;
        assert_eq!(room["members"], json!(["bob", "ada"]), "{room}");
        assert_eq!(room["count"], 2);

        bob.send(json!({"type": "who", "room": "lobby"})).await;
        let who = bob.expect("members").await;
        assert_eq!(
            who["members"],
            json!(["bob", "ada"]),
            "no second join: {who}"
        );

        bob.send(json!({"type": "direct", "to": "ADA", "text": "hi both"}))
            .await;
        for c in [&mut tab1, &mut tab2, &mut bob] {
            let d = c.expect("direct").await;
            assert_eq!(
                (d["from"].as_str(), d["text"].as_str()),
                (Some("bob"), Some("hi both"))
            );
        }

        // One tab closes: ada is still there, so nobody hears of a leave; the next thing
        // bob gets is his own message.
        tab1.close().await;
        bob.say("lobby", "still there?").await;
        let m = bob.expect("message").await;
        assert_eq!(m["text"], "still there?");
        assert_eq!(tab2.expect("message").await["text"], "still there?");
        bob.send(json!({"type": "who", "room": "lobby"})).await;
        assert_eq!(
            bob.expect("members").await["members"],
            json!(["bob", "ada"])
        );

        // The last one goes: now ada leaves.
        tab2.close().await;
        let left = bob.expect("leave").await;
        assert_eq!(left["nick"], "ada");
    });
}

/// `--max-connections-per-user`: the connection that would be one too many is upgraded, told
/// why (`forbidden`) and closed with 4002; names are one ignoring case; when one of the
/// user's connections closes, the user may connect again; other users are not affected.
#[test]
fn a_connection_beyond_max_connections_per_user_is_closed_with_4002() {
    let server = server_with(|c| {
        c.auth = Some(Auth {
            secret: Secret::new(SECRET.to_vec()),
            guests: false,
        });
        c.max_connections_per_user = 2;
    });
    run(async {
        let (mut tab1, _) = user(server.addr, &token("ada")).await;
        tab1.expect("room").await;
        let (mut tab2, _) = user(server.addr, &token("ada")).await;
        tab2.expect("room").await;
        for name in ["ada", "ADA"] {
            let mut third =
                Client::connect_path(server.addr, &format!("/ws?token={}", token(name))).await;
            let (code, reason, events) = third.expect_close().await;
            assert_eq!(
                (code, reason.as_str()),
                (4002, "too many connections for this user")
            );
            assert_eq!(events.len(), 1, "no welcome, only the reason: {events:?}");
            assert_eq!(events[0]["code"], "forbidden");
            let why = events[0]["message"].as_str().unwrap();
            assert!(why.contains("--max-connections-per-user"), "{why}");
        }
        let (mut bob, _) = user(server.addr, &token("bob")).await;
        bob.expect("room").await;

        // The refused connections were never members: ada's tabs heard of bob only.
        assert_eq!(tab1.expect("join").await["nick"], "bob");
        tab1.close().await;
        // The server learns of the departure after the close frame: until then a new
        // connection is still one too many. Each try is refused or welcomed, nothing else.
        let mut tab3 = loop {
            let mut c =
                Client::connect_path(server.addr, &format!("/ws?token={}", token("ada"))).await;
            let first = c.next().await;
            if first["type"] == "welcome" {
                assert_eq!(first["nick"], "ada");
                break c;
            }
            assert_eq!(first["code"], "forbidden", "{first}");
            assert_eq!(c.expect_close().await.0, 4002);
        };
        tab3.expect("room").await;
        tab2.say("lobby", "three tabs, two at a time").await;
        assert_eq!(
            tab3.expect("message").await["text"],
            "three tabs, two at a time"
        );

        let metrics = http(
            server.addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        for line in [
            "smolchat_refused_total{cause=\"user_connections\"} ",
            "smolchat_close_codes_total{code=\"4002\"} ",
        ] {
            // At least the two above, and one more for each early try of tab3.
            let count: u64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix(line))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("{line} in {metrics}"));
            assert!(count >= 2, "{line}{count}");
        }
    });
}

#[test]
fn a_token_with_rooms_limits_what_the_client_may_join() {
    let server = auth_server(false);
    run(async {
        let limited = signed(
            Algorithm::HS256,
            SECRET,
            json!({"sub": "ada", "exp": now() + 60, "rooms": ["dev"]}),
        );
        let (mut ada, _) = user(server.addr, &limited).await;
        // Not in the default room: the first thing after the welcome is the answer to this.
        ada.send(json!({"type": "join", "room": "lobby"})).await;
        let e = ada.expect_error("forbidden").await;
        assert!(e["message"].as_str().unwrap().contains("lobby"), "{e}");
        let room = ada.join("dev").await;
        assert_eq!(room["room"], "dev");
        ada.send(json!({"type": "join", "room": "ops"})).await;
        ada.expect_error("forbidden").await;
    });
}

#[test]
fn a_session_whose_token_expires_is_closed_with_4001() {
    let server = auth_server(false);
    run(async {
        let soon = signed(
            Algorithm::HS256,
            SECRET,
            json!({"sub": "ada", "exp": now() + 2}),
        );
        let (mut bob, _) = user(server.addr, &token("bob")).await;
        bob.expect("room").await;
        let (mut ada, _) = user(server.addr, &soon).await;
        ada.expect("room").await;
        bob.expect("join").await;
        let (code, reason, _) = ada.expect_close().await;
        assert_eq!((code, reason.as_str()), (4001, "token expired"));
        assert_eq!(bob.expect("leave").await["nick"], "ada");
    });
}

#[test]
fn without_a_secret_nothing_changes() {
    let server = server();
    run(async {
        // A token is ignored, guests rename as before.
        let mut c = Client::connect_path(server.addr, &format!("/ws?token={}", token("ada"))).await;
        let welcome = c.expect("welcome").await;
        assert!(welcome["nick"].as_str().unwrap().starts_with("guest-"));
        c.expect("room").await;
        c.send(json!({"type": "nick", "nick": "ada"})).await;
        assert_eq!(c.expect("nick").await["nick"], "ada");
    });
}

/// `smolchat token` signs what an independent verifier accepts; the server refuses a short
/// secret at start-up, naming the flag.
#[test]
fn the_token_command_signs_what_jsonwebtoken_verifies() {
    use jsonwebtoken::{DecodingKey, Validation, decode};
    let dir = std::env::temp_dir().join(format!("smolchat-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, [SECRET, b"\n"].concat()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smolchat"))
        .args([
            "token", "--sub", "ada", "--ttl", "10m", "--rooms", "dev,ops",
        ])
        .env("SMOLCHAT_AUTH_SECRET_FILE", &file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let data = decode::<Value>(
        token.trim(),
        &DecodingKey::from_secret(SECRET).unwrap(),
        &Validation::new(Algorithm::HS256),
    )
    .expect("the trailing newline of the file is not part of the secret");
    assert_eq!(data.claims["sub"], "ada");
    assert_eq!(data.claims["rooms"], json!(["dev", "ops"]));
    let exp = data.claims["exp"].as_u64().unwrap();
    assert!((now() + 590..=now() + 610).contains(&exp), "{exp}");

    std::fs::write(&file, "too short\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smolchat"))
        .arg("--auth-secret-file")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--auth-secret-file") && stderr.contains("32"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tokens and keys never reach the log, at the most talkative level: not on acceptance, not on
/// refusal, not for the API. (The binary, so that the real logger writes the real stderr.)
#[test]
fn tokens_and_keys_never_reach_the_log() {
    let dir = std::env::temp_dir().join(format!("smolchat-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (secret, key) = (dir.join("secret"), dir.join("key"));
    std::fs::write(&secret, SECRET).unwrap();
    let api_key = "an api key that must stay secret";
    std::fs::write(&key, api_key).unwrap();
    let (mut child, addr, mut log, mut stderr) = start_binary([
        "--log-level".as_ref(),
        "trace".as_ref(),
        "--auth-secret-file".as_ref(),
        secret.as_os_str(),
        "--api-key-file".as_ref(),
        key.as_os_str(),
    ]);
    let good = token("ada");
    let forged = tampered(&good);
    run(async {
        let (mut ada, _) = user(addr, &good).await;
        ada.expect("room").await;
        let head = refused_with(addr, &format!("/ws?token={forged}"), &[]).await;
        assert_eq!(status(&head), 401);
        let bearer = format!("Bearer {forged}");
        let head = refused_with(addr, "/ws", &[("Authorization", &bearer)]).await;
        assert_eq!(status(&head), 401);
        let call = format!(
            "GET /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}x\r\n\r\n"
        );
        assert!(http(addr, &call).await.starts_with("HTTP/1.1 401"));
        ada.close().await;
    });
    // SIGTERM-free stop: the log so far is what matters, and the pipe ends when the child does.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    log.push_str(&rest);
    assert!(log.contains("401"), "the refusals are logged: {log}");
    let signature = good.rsplit('.').next().unwrap();
    for secret in [good.as_str(), forged.as_str(), signature, api_key] {
        assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `exp` is a NumericDate: a far future ("never", `u64::MAX`) and a fractional one are valid,
/// and neither may overflow the session's clock. (Review found `u64::MAX` panicking the
/// session, which in a release build, `panic = "abort"`, took the server down.)
#[test]
fn far_and_fractional_expiry_times_are_accepted() {
    let server = auth_server(false);
    run(async {
        let forever = signed(
            Algorithm::HS256,
            SECRET,
            json!({"sub": "ada", "exp": u64::MAX}),
        );
        let fractional = signed(
            Algorithm::HS256,
            SECRET,
            json!({"sub": "bob", "exp": now() as f64 + 600.5}),
        );
        let (mut ada, welcome) = user(server.addr, &forever).await;
        assert_eq!(welcome["nick"], "ada");
        ada.expect("room").await;
        let (_bob, welcome) = user(server.addr, &fractional).await;
        assert_eq!(welcome["nick"], "bob");
        assert_eq!(ada.expect("join").await["nick"], "bob");
    });
}

/// SIGHUP reads `--auth-secret-file` and `--api-key-file` again, as it reads the TLS
/// certificate: a leaked secret or key is replaced without a restart. Tokens signed with the
/// old secret and the old key are refused from then on; a session opened before stays. A file
/// that cannot be read keeps the old one, and the log says so. (The binary, for the signal.)
#[test]
fn sighup_replaces_the_secret_and_the_api_key_and_a_bad_file_keeps_the_old_ones() {
    use std::io::BufRead;
    use std::sync::mpsc;
    let dir = std::env::temp_dir().join(format!("smolchat-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (secret, key) = (dir.join("secret"), dir.join("key"));
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::write(&key, "the first api key").unwrap();
    let (mut child, addr, _, stderr) = start_binary([
        "--log-level".as_ref(),
        "info".as_ref(),
        "--auth-secret-file".as_ref(),
        secret.as_os_str(),
        "--api-key-file".as_ref(),
        key.as_os_str(),
    ]);
    // The log, line by line, from a thread: the test waits for the lines it expects.
    let (lines, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| -> String {
        loop {
            let line = log
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    };
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let api = |key: &str| {
        format!("GET /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n")
    };
    let new_secret = b"a second secret, after the first one leaked";
    let new_token = signed(
        Algorithm::HS256,
        new_secret,
        json!({"sub": "bob", "exp": now() + 60}),
    );
    run(async {
        let (mut ada, _) = user(addr, &token("ada")).await;
        ada.expect("room").await;
        assert!(
            http(addr, &api("the first api key"))
                .await
                .starts_with("HTTP/1.1 200")
        );

        std::fs::write(&secret, new_secret).unwrap();
        std::fs::write(&key, "the second api key\n").unwrap();
        hup();
        wait_for("SIGHUP: --auth-secret-file reloaded");
        wait_for("SIGHUP: --api-key-file reloaded");
        let head = refused_with(addr, &format!("/ws?token={}", token("eve")), &[]).await;
        assert_eq!(status(&head), 401, "the old secret signs nothing any more");
        assert!(
            http(addr, &api("the first api key"))
                .await
                .starts_with("HTTP/1.1 401")
        );
        assert!(
            http(addr, &api("the second api key"))
                .await
                .starts_with("HTTP/1.1 200")
        );
        let (mut bob, _) = user(addr, &new_token).await;
        bob.expect("room").await;
        assert_eq!(
            ada.expect("join").await["nick"],
            "bob",
            "ada's session stays"
        );

        // Unreadable and too short: each keeps what it had, and says so.
        std::fs::remove_file(&secret).unwrap();
        std::fs::write(&key, "short").unwrap();
        hup();
        let line = wait_for("--auth-secret-file not reloaded");
        assert!(line.contains("keeping the old one"), "{line}");
        wait_for("--api-key-file not reloaded");
        let (mut bob2, _) = user(addr, &new_token).await;
        bob2.expect("room").await;
        assert!(
            http(addr, &api("the second api key"))
                .await
                .starts_with("HTTP/1.1 200")
        );
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
