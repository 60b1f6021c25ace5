//! Durable history (`--data-dir`, feature `store`): rooms, ids, epochs and messages survive a
//! restart, a crash never gives an id twice, and `complete` stays truthful.
//!
//! Servers run in this process (`server::start` on port 0) where a clean stop is enough, and
//! as the real binary where a crash is the point (SIGKILL).

#![cfg(feature = "store")]

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{Value, json};

/// A fresh data directory for one test.
fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smolchat-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn durable_server(dir: &std::path::Path) -> TestServer {
    server_with(|c| {
        c.data_dir = Some(dir.to_str().unwrap().to_string());
        c.rate_limit = 0;
    })
}

/// Joins `room` with a cursor and returns the `room` event and the replayed messages' texts
/// (the next `count` events).
async fn recover(
    c: &mut Client,
    room: &str,
    since: u64,
    epoch: &str,
    count: usize,
) -> (Value, Vec<String>) {
    c.send(json!({"type": "join", "room": room, "since": since, "epoch": epoch}))
        .await;
    let event = c.expect("room").await;
    let mut texts = Vec::new();
    for _ in 0..count {
        texts.push(
            c.expect("message").await["text"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    (event, texts)
}

#[test]
fn a_restarted_server_serves_the_history_in_the_same_epochs() {
    let dir = data_dir("restart");
    let (epoch, cursor);
    {
        let server = durable_server(&dir);
        let addr = server.addr;
        (epoch, cursor) = run_with(async move {
            let mut ada = Client::connect(addr).await;
            let room = ada.join("dev").await;
            let epoch = room["epoch"].as_str().unwrap().to_string();
            let mut ids = Vec::new();
            for text in ["one", "two", "three"] {
                ada.say("dev", text).await;
                ids.push(ada.expect("message").await["id"].as_u64().unwrap());
            }
            assert_eq!(ids, [1, 2, 3]);
            (epoch, 1)
        });
        server.shutdown();
    }
    let server = durable_server(&dir);
    let addr = server.addr;
    run(async move {
        let mut bob = Client::connect(addr).await;
        let (room, texts) = recover(&mut bob, "dev", cursor, &epoch, 2).await;
        assert_eq!(room["epoch"], epoch.as_str(), "the same life of the room");
        assert_eq!(
            (room["last_id"].as_u64(), room["complete"].as_bool()),
            (Some(3), Some(true))
        );
        assert_eq!(texts, ["two", "three"]);
        bob.say("dev", "four").await;
        assert_eq!(
            bob.expect("message").await["id"],
            4,
            "ids go on where they stopped"
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs an async body that returns a value, with the whole-test deadline of [`run`].
fn run_with<T>(body: impl std::future::Future<Output = T>) -> T {
    let mut out = None;
    run(async {
        out = Some(body.await);
    });
    out.unwrap()
}
