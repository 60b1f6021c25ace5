//! Heap accounting with a counting global allocator: how much heap an idle connection keeps,
//! how many allocations the fan-out path makes per delivered event, and that the built-in
//! page is served without a copy per request.
//!
//! The test clients run on this test's own thread, whose allocations are not counted; the
//! server runs on its executor threads, whose allocations are. One `#[test]` only, so that no
//! other test in this binary allocates at the same time.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use common::*;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes ever allocated (grown by reallocations too), freed or not.
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the test's own thread: its allocations (the clients') are not the server's.
    static CLIENT_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    !CLIENT_THREAD.try_with(Cell::get).unwrap_or(true)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Relaxed);
            ALLOCATED_BYTES.fetch_add(layout.size() as u64, Relaxed);
            LIVE_BYTES.fetch_add(layout.size() as i64, Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Relaxed);
            ALLOCATED_BYTES.fetch_add(new_size.saturating_sub(layout.size()) as u64, Relaxed);
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Connects `n` clients, all in `lobby`.
async fn crowd(addr: std::net::SocketAddr, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Client::connect(addr).await);
    }
    clients
}

/// The first client says `count` messages in `room`; every client in `all` (the room's
/// members) reads all of them.
async fn round(all: &mut [Client], room: &str, count: usize, tag: &str) {
    for i in 0..count {
        all[0].say(room, &format!("{tag}-{i}")).await;
    }
    for c in all.iter_mut() {
        for i in 0..count {
            loop {
                let e = c.next().await;
                if e["type"] == "message" {
                    assert_eq!(e["text"], format!("{tag}-{i}"));
                    break;
                }
            }
        }
    }
}

/// Allocations made by the server while `small` and then `large` clients each receive the
/// same messages, after a warm-up round that lets per-connection buffers reach their size.
#[test]
fn fan_out_allocates_per_message_not_per_recipient() {
    CLIENT_THREAD.with(|c| c.set(true));
    const SMALL: usize = 20;
    const LARGE: usize = 120;
    const MESSAGES: usize = 50;
    let server = server_with(|c| {
        c.rate_limit = 0;
        c.presence_limit = 1; // no join events: keep the rounds to chat messages only
    });
    run(async {
        let mut clients = crowd(server.addr, LARGE).await;

        // Idle heap per connection: server-side live bytes for LARGE connected clients,
        // against a baseline taken with only the first SMALL of them.
        let before_idle = {
            let extra: Vec<Client> = clients.split_off(SMALL);
            drop(extra);
            // Wait until the server has forgotten them: a who shows the count.
            loop {
                clients[0]
                    .send(serde_json::json!({"type":"who","room":"lobby"}))
                    .await;
                let m = clients[0].expect("members").await;
                if m["count"] == SMALL {
                    break;
                }
            }
            LIVE_BYTES.load(Relaxed)
        };
        clients.extend(crowd(server.addr, LARGE - SMALL).await);
        let after_idle = LIVE_BYTES.load(Relaxed);
        let per_connection = (after_idle - before_idle) / (LARGE - SMALL) as i64;
        println!("server heap per idle connection: {per_connection} bytes");
        // 3.2 KB measured (2026-12-02, release and debug, default features; BENCHMARKS.md,
        // "Second pass").
        assert!(
            per_connection < 4 * 1024,
            "an idle connection holds {per_connection} bytes of heap"
        );

        // The first SMALL clients also share a room of their own.
        for c in &mut clients[..SMALL] {
            c.join("few").await;
        }
        // Warm-up: each client's two queue buffers and tungstenite's write buffer grow to the
        // largest burst they see (bounded by `--queue`), which can take a few rounds.
        for warm in 0..3 {
            round(
                &mut clients[..SMALL],
                "few",
                MESSAGES,
                &format!("warm-small-{warm}"),
            )
            .await;
            round(
                &mut clients,
                "lobby",
                MESSAGES,
                &format!("warm-large-{warm}"),
            )
            .await;
        }

        let a0 = ALLOCATIONS.load(Relaxed);
        round(&mut clients[..SMALL], "few", MESSAGES, "small").await;
        let a1 = ALLOCATIONS.load(Relaxed);
        round(&mut clients, "lobby", MESSAGES, "large").await;
        let a2 = ALLOCATIONS.load(Relaxed);

        let small = (a1 - a0) as f64;
        let large = (a2 - a1) as f64;
        let extra_deliveries = ((LARGE - SMALL) * MESSAGES) as f64;
        let per_delivery = (large - small).max(0.0) / extra_deliveries;
        println!(
            "server allocations: {small} for {MESSAGES} messages to {SMALL} clients, {large} to \
             {LARGE} clients: {per_delivery:.4} per extra delivery, {:.1} per message",
            small / MESSAGES as f64
        );
        // Our fan-out path allocates nothing per recipient; what remains is the runtime's
        // (about 0.01 measured before issue 27, when async-executor's global run queue
        // allocated a block per 31 task wake-ups; the server's own run queue keeps its
        // capacity), and async-io's timer map a node now and then when a writer's timer
        // is set (the burst hold, a write that has to wait). A design that copied or boxed
        // the event per recipient would be at 1.0 or more, one that allocated per wake-up at
        // 0.2 or more.
        assert!(
            per_delivery < 0.1,
            "fan-out allocates {per_delivery:.4} times per delivered event"
        );

        // The page (42 KB, 12 KB as served, gzipped) is written from the binary: what a request
        // allocates is its head,
        // its response head and the connection's task, not a copy of the page (the server
        // once made two). Many clients loading it at once must not cost the page many times.
        const PAGES: u64 = 20;
        let b0 = ALLOCATED_BYTES.load(Relaxed);
        for _ in 0..PAGES {
            let (_, page) = common::page(server.addr).await;
            assert_eq!(page, smolchat::http::PAGE);
        }
        let per_page = (ALLOCATED_BYTES.load(Relaxed) - b0) / PAGES;
        println!("server heap allocated per page request: {per_page} bytes");
        assert!(
            per_page < smolchat::http::PAGE.len() as u64,
            "a page request allocates {per_page} bytes: a copy of the page?"
        );
    });
}
