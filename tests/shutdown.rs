//! Graceful shutdown over real sockets: every client is told why it is being closed, and a
//! client that does not cooperate cannot hold the shutdown up beyond `--shutdown-timeout`.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use common::*;
use futures_lite::{AsyncWriteExt, StreamExt};
use serde_json::json;
use smol::Async;

/// Reads the rest of `c`'s stream after its close frame: tungstenite answers the close on this
/// read, and the stream must then end.
async fn finish(c: &mut Client) {
    deadline("the end of the stream", async {
        while let Some(m) = c.ws.next().await {
            assert!(m.is_err(), "nothing may follow the close frame, got {m:?}");
        }
    })
    .await;
}

#[test]
fn shutdown_closes_every_client_with_1001() {
    let server = server();
    let addr = server.addr;
    run(async move {
        let mut a = Client::connect(addr).await;
        let mut b = Client::connect(addr).await;
        assert_eq!(a.expect("join").await["nick"], b.nick.as_str());
        a.say("lobby", "before").await;
        for c in [&mut a, &mut b] {
            assert_eq!(c.expect("message").await["text"], "before");
        }

        // `shutdown` blocks until the sessions are done, so it runs on a thread of its own.
        let stopping = smol::unblock(move || server.shutdown());
        let nicks = [a.nick.clone(), b.nick.clone()];
        for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
            let (code, reason, before) = c.expect_close().await;
            assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
            // The hub closes clients one by one; a client may first learn that one closed
            // before it left the lobby (reason `shutdown`). Nothing else may come first.
            let other = &nicks[1 - i];
            let leave =
                json!({"type": "leave", "room": "lobby", "nick": other, "reason": "shutdown"});
            assert!(
                before.is_empty() || before == [leave],
                "only the other's shutdown leave may precede the close: {before:?}"
            );
        }
        for c in [&mut a, &mut b] {
            finish(c).await;
        }
        deadline("shutdown to return", stopping).await;

        // Nothing listens any more.
        assert!(Async::<TcpStream>::connect(addr).await.is_err());
    });
}

#[test]
fn clients_that_do_not_cooperate_cannot_hold_up_shutdown() {
    let server = server_with(|c| c.shutdown_timeout = Duration::from_millis(500));
    let addr = server.addr;
    run(async move {
        let mut a = Client::connect(addr).await;
        // A WebSocket client that never reads (so never answers the close) ...
        let silent = raw::upgrade(addr).await;
        a.expect("join").await;
        // ... and a connection stuck in the middle of its request head.
        let mut half = Async::<TcpStream>::connect(addr).await.unwrap();
        half.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();

        let stopping = smol::unblock(move || server.shutdown());
        let (code, reason, before) = a.expect_close().await;
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
        assert!(
            before
                .iter()
                .all(|e| e["type"] == "leave" && e["reason"] == "shutdown"),
            "{before:?}"
        );
        finish(&mut a).await;
        // Returns after at most --shutdown-timeout; DEADLINE is far longer.
        deadline("shutdown to return", stopping).await;

        // Both were closed: the silent client finds the 1001 close waiting, then the end.
        let mut ws = raw::websocket(silent).await;
        let close = deadline("the silent client's close", async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => {}
                    Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason),
                    other => panic!("expected a close, got {other:?}"),
                }
            }
        })
        .await;
        assert_eq!((close.0, close.1.as_str()), (1001, "server shutting down"));
        assert!(raw::read_until_closed(&mut half).await.is_empty());
    });
}

/// A client is registered with the hub before its upgrade is answered, so an upgrade that
/// arrives once the hub is shutting down gets a plain 503 (`Retry-After`) instead of a `101`
/// followed by a close.
#[test]
fn an_upgrade_during_shutdown_gets_503() {
    let server = server();
    let addr = server.addr;
    run(async move {
        let mut before = Client::connect(addr).await;
        // The hub stops taking clients; the accept loop still runs.
        server.running().chat().shutdown().await;
        let (code, _, _) = before.expect_close().await;
        assert_eq!(code, 1001);
        let (head, _) =
            common::raw::request_head(addr, &common::raw::upgrade_request(addr, &[])).await;
        assert_eq!(common::raw::status(&head), 503, "{head}");
        assert_eq!(common::raw::header(&head, "retry-after"), Some("5"));
    });
}
