//! The README's worst-case memory formula, measured: the real binary in the README's gateway
//! configuration, every room's history filled with the most expensive text there is, and its
//! resident memory compared with the bound the README computes from the flags.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::json;

/// The README's gateway flags (section "A 64 MB gateway"), without `--listen`.
const GATEWAY: &[&str] = &[
    "--threads",
    "1",
    "--max-connections",
    "1000",
    "--max-pending",
    "64",
    "--queue",
    "64",
    "--queue-bytes",
    "16384",
    "--history",
    "50",
    "--history-bytes",
    "8192",
    "--history-total-bytes",
    "1048576",
    "--max-rooms",
    "200",
    "--max-message-bytes",
    "2048",
    "--rate-burst",
    "4",
];

/// The README's bound, in KiB, for `connections` open connections under `flags`' limits (see
/// "Limits and guarantees"): a fixed base, then per connection its share, then the pending
/// connections, the history and the rooms.
fn bound_kib(connections: u64) -> u64 {
    let (queue_bytes, max_message, pending, history_total, rooms, history) =
        (16384u64, 2048u64, 64u64, 1048576u64, 200u64, 50u64);
    let config = smolchat::Config {
        max_message_bytes: max_message as usize,
        ..smolchat::Config::default()
    };
    let max_event = config.max_event_bytes() as u64;
    let per_connection = 8 * 1024 + queue_bytes + (4096 + max_event) + 2 * max_message;
    let base = 6 * 1024 * 1024;
    let bytes = base
        + connections * per_connection
        + pending * 12 * 1024
        + 1024 * (max_message + 128)
        + history_total * 5 / 4
        + rooms * history * 96
        + rooms * 1024;
    bytes / 1024
}

struct Server(Child, SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smolchat"))
        .args(GATEWAY)
        .args(["--listen", "127.0.0.1:0", "--log-level", "info"])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smolchat");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("a log line").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep reading the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server(child, addr)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn full_history_in_every_room_stays_within_the_documented_bound() {
    // The rate limit off, so that one client can fill 200 rooms quickly; it bounds how fast
    // memory is used, not how much.
    let server = start(&["--rate-limit", "0"]);
    let pid = server.0.id();
    let at_start = rss_kib(pid);
    run(async {
        let mut idle = Vec::new();
        for _ in 0..50 {
            idle.push(Client::connect(server.1).await);
        }
        let mut a = Client::connect(server.1).await;
        // The most bytes per stored message: 1,024 quotes are 2,048 bytes once escaped, the
        // largest text --max-message-bytes 2048 allows; sent as plain text, so the frame is
        // only 1,024 bytes.
        let worst = "\"".repeat(1024);
        for i in 0..200 {
            let room = format!("room-{i:03}-{}", "x".repeat(23));
            a.join(&room).await;
            for _ in 0..6 {
                a.send_text(&worst).await;
            }
            let mut got = 0;
            while got < 6 {
                let e = a.next().await;
                if e["type"] == "message" {
                    got += 1;
                }
            }
            a.send(json!({"type": "leave", "room": room})).await;
        }
        let text = raw::metrics(server.1).await;
        let history = raw::metric(&text, "smolchat_history_bytes");
        assert!(history <= 1048576, "history {history} bytes");
        assert!(history > 1000 * 1024, "the total was reached: {history}");
        assert_eq!(
            raw::metric(&text, "smolchat_rooms"),
            201,
            "--max-rooms and the lobby"
        );

        let rss = rss_kib(pid);
        let bound = bound_kib(51);
        println!(
            "RSS at start {at_start} KiB, with 51 clients and {history} bytes of history \
             {rss} KiB; bound {bound} KiB"
        );
        assert!(rss <= bound, "RSS {rss} KiB over the bound {bound} KiB");
        drop(idle);
    });
}
