//! The benchmark's tokio-tungstenite peer: the smallest broadcast server people would write
//! instead of smolchat, after tokio-tungstenite's own `server.rs` example. One task per
//! connection; a shared map of every peer's unbounded channel under a mutex; each reader sends
//! every text or binary message it receives to every peer, itself included (the Go hub does the
//! same, and the load generator's `--protocol raw` counts its own echo). No hub task, no JSON.
//! `TCP_NODELAY` and a 4 KiB read buffer; tungstenite answers pings; any path is accepted.
//!
//! tokio and tokio-tungstenite are dev-dependencies: none of this is in smolchat's binary.
//!
//!   cargo build --release --example tt_peer
//!   target/release/examples/tt_peer --port 8081      (or: tt_peer 127.0.0.1:8081)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt, future, stream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type PeerMap = Arc<Mutex<HashMap<SocketAddr, UnboundedSender<Message>>>>;

async fn handle_connection(peers: PeerMap, tcp: TcpStream, addr: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
        return;
    };
    let (tx, mut rx) = unbounded_channel();
    peers.lock().unwrap().insert(addr, tx);
    let (outgoing, incoming) = ws.split();

    let broadcast_incoming = incoming.try_for_each(|msg| {
        if msg.is_text() || msg.is_binary() {
            for peer in peers.lock().unwrap().values() {
                let _ = peer.send(msg.clone());
            }
        }
        future::ok(())
    });
    // `forward` feeds every queued message and flushes once the channel is empty.
    let receive_from_others = stream::poll_fn(|cx| rx.poll_recv(cx))
        .map(Ok)
        .forward(outgoing);
    futures_util::pin_mut!(broadcast_incoming, receive_from_others);
    future::select(broadcast_incoming, receive_from_others).await;

    peers.lock().unwrap().remove(&addr);
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut addr = "127.0.0.1:8080".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" | "-port" => addr = format!("127.0.0.1:{}", args.next().unwrap_or_default()),
            "--listen" => addr = args.next().unwrap_or_default(),
            _ if !a.starts_with('-') => addr = a,
            _ => {
                eprintln!("usage: tt_peer [--port P | --listen ADDR | ADDR]");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(&addr).await?;
    let peers = PeerMap::default();
    loop {
        // An accept error (out of descriptors, a reset before accept) ends one connection only.
        if let Ok((tcp, peer)) = listener.accept().await {
            tokio::spawn(handle_connection(peers.clone(), tcp, peer));
        }
    }
}
