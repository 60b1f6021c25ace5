//! `smolchat::http::parse_head` on arbitrary bytes, then `route` and `origin_allowed` on any
//! head it yields.
//!
//! Invariants checked, besides "no panic":
//! - a complete parse's `used` is at most the input length (and at most `MAX_HEAD_BYTES`);
//! - parsing just the `used` prefix gives the same head and the same `used`;
//! - `read_head` over the same bytes (read in 1 KiB pieces) agrees with `parse_head`;
//! - `route` only upgrades a `GET /ws` with `Upgrade: websocket`, `Connection: upgrade`,
//!   version 13, a non-empty key and an allowed origin, and its accept key is 28 base64 bytes;
//! - `origin_allowed` is true without an `Origin` and with `--allow-origin '*'`;
//! - every response `route` refuses with writes as a well-formed HTTP/1.1 response.
#![no_main]

use futures_lite::future::block_on;
use libfuzzer_sys::fuzz_target;
use smolchat::Config;
use smolchat::http::{self, MAX_HEAD_BYTES};
use smolchat::route::{self, Route};

fn configs() -> [Config; 3] {
    let star = Config {
        allow_origins: vec!["*".into()],
        ..Config::default()
    };
    let listed = Config {
        allow_origins: vec!["http://chat.example".into(), "null".into()],
        ..Config::default()
    };
    [Config::default(), star, listed]
}

fuzz_target!(|data: &[u8]| {
    let parsed = http::parse_head(data);

    // read_head reads the same bytes in 1 KiB pieces and must agree.
    let mut cursor = futures_lite::io::Cursor::new(data);
    let read = block_on(http::read_head(&mut cursor));
    if let Ok((head, leftover)) = &read {
        match &parsed {
            Ok(Some((h, used))) => {
                assert_eq!(h, head, "read_head and parse_head disagree on the head");
                assert!(
                    data[*used..].starts_with(leftover),
                    "read_head's leftover is not what follows the head"
                );
            }
            other => panic!("read_head found a head, parse_head said {other:?}"),
        }
    }

    let Ok(Some((head, used))) = parsed else {
        return;
    };
    assert!(used <= data.len(), "used {used} > input length {}", data.len());
    assert!(used <= MAX_HEAD_BYTES, "used {used} > MAX_HEAD_BYTES");
    match http::parse_head(&data[..used]) {
        Ok(Some((again, used_again))) => {
            assert_eq!(again, head, "the head's own bytes parse differently");
            assert_eq!(used_again, used);
        }
        other => panic!("the head's own {used} bytes parse as {other:?}"),
    }

    for config in configs() {
        let allowed = route::origin_allowed(&head, &config);
        if head.origin.is_none() || config.allow_origins.iter().any(|a| a == "*") {
            assert!(allowed, "origin refused: {head:?}");
        }
        match route::route(&head, &config) {
            Route::Upgrade { accept_key, group } => {
                assert!(group.is_none(), "groups are raw mode only");
                assert_eq!(head.method, "GET");
                assert_eq!(head.path, "/ws");
                assert!(head.upgrade_websocket && head.connection_upgrade);
                assert_eq!(head.ws_version.as_deref(), Some("13"));
                assert!(head.ws_key.as_deref().is_some_and(|k| !k.is_empty()));
                assert!(allowed, "upgraded a refused origin: {head:?}");
                assert_eq!(accept_key.len(), 28, "{accept_key:?}");
                let _ = http::switching_protocols(&accept_key);
            }
            Route::Page | Route::Health | Route::Metrics => assert_eq!(head.method, "GET"),
            Route::Refuse(response, _) => {
                let mut out: Vec<u8> = Vec::new();
                block_on(response.write(&mut out)).expect("writing to a Vec");
                let text = std::str::from_utf8(&out).expect("responses are UTF-8");
                assert!(text.starts_with(&format!("HTTP/1.1 {} ", response.status)));
                let (head_part, body) = text.split_once("\r\n\r\n").expect("a blank line");
                assert!(head_part.contains(&format!("Content-Length: {}", body.len())));
            }
        }
    }
});
