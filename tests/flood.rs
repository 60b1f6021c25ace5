//! Floods that never become messages, beside a healthy chat on one executor thread: pings,
//! and empty continuation frames (which tungstenite reads without ever returning a message).
//! A test binary of its own, run after the others, so that its flooding threads do not slow
//! the other tests down; one test, so that its two floods do not overlap either.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A client frame: FIN + `opcode` byte as given, masked with a zero key (valid; the payload
/// stays as it is).
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// Upgrades a blocking socket by hand and floods it with `preamble` then `unit` repeated,
/// until `stop` is set or 20 s have passed. A second thread drains what the server sends.
fn flood(addr: SocketAddr, preamble: Vec<u8>, unit: Vec<u8>, stop: Arc<AtomicBool>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(raw::upgrade_request(addr, &[]).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let mut drain = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
    });
    std::thread::spawn(move || {
        let burst: Vec<u8> = unit.repeat(64 * 1024 / unit.len());
        let started = Instant::now();
        if s.write_all(&preamble).is_err() {
            return;
        }
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
            if s.write_all(&burst).is_err() {
                return;
            }
        }
    });
}

/// On one executor thread, with the rate limit off, two floods of `unit` frames run while a
/// healthy pair chats: every message must arrive.
fn flood_beside_a_chat(preamble: Vec<u8>, unit: Vec<u8>) {
    let server = server_with(|c| {
        c.threads = 1;
        c.rate_limit = 0;
    });
    let stop = Arc::new(AtomicBool::new(false));
    run(async {
        let mut a = Client::connect(server.addr).await;
        let mut b = Client::connect(server.addr).await;
        a.expect("join").await;
        for _ in 0..2 {
            flood(server.addr, preamble.clone(), unit.clone(), stop.clone());
            a.expect("join").await;
            b.expect("join").await;
        }
        for id in 1..=20 {
            heard_by_all(&mut a, &mut [&mut b], id, &format!("during the flood {id}")).await;
        }
    });
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn floods_of_pings_and_of_empty_continuations_do_not_starve_other_clients_on_one_thread() {
    flood_beside_a_chat(Vec::new(), frame(0x89, b"ping"));
    // A text message that never ends: tungstenite reads these without ever returning.
    flood_beside_a_chat(frame(0x01, b"a"), frame(0x00, b""));
}
