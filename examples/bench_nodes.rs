//! Fan-out load generator for one node or several (scale-out): clients are spread round-robin
//! over the given addresses, all stay in the default room, `--senders` of them say a message
//! `--rate` times a second each, and every client times each message from send to receipt.
//! Prints one JSON line: deliveries per second and latency percentiles.
//!
//! ```sh
//! cargo run --release --example bench_nodes -- --addr 127.0.0.1:18080,127.0.0.1:18081 \
//!     --clients 200 --senders 10 --rate 50 --duration 10
//! ```
//! `scripts/bench-nodes.sh` starts Redis and the nodes and runs the single-node and two-node
//! rows of docs/scale-out.md.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use smol::{Async, LocalExecutor, Timer};

struct Options {
    addrs: Vec<SocketAddr>,
    clients: usize,
    senders: usize,
    rate: u32,
    duration: u64,
    warmup: u64,
}

fn options() -> Options {
    let mut o = Options {
        addrs: vec!["127.0.0.1:8080".parse().unwrap()],
        clients: 200,
        senders: 10,
        rate: 50,
        duration: 10,
        warmup: 2,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--addr" => {
                o.addrs = value
                    .split(',')
                    .map(|a| a.parse().expect("--addr host:port[,host:port...]"))
                    .collect()
            }
            "--clients" => o.clients = value.parse().expect("--clients N"),
            "--senders" => o.senders = value.parse().expect("--senders N"),
            "--rate" => o.rate = value.parse().expect("--rate N (per sender per second)"),
            "--duration" => o.duration = value.parse().expect("--duration SECONDS"),
            "--warmup" => o.warmup = value.parse().expect("--warmup SECONDS"),
            other => {
                eprintln!(
                    "unknown option {other}; options: --addr A[,B..] --clients N --senders N \
                     --rate N --duration S --warmup S"
                );
                std::process::exit(2);
            }
        }
    }
    o
}

#[derive(Default)]
struct Stats {
    measuring: bool,
    deliveries: u64,
    latency: Option<Histogram<u64>>,
}

fn main() {
    let o = options();
    let ex = LocalExecutor::new();
    let stats = Rc::new(RefCell::new(Stats {
        latency: Some(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
        ..Stats::default()
    }));
    let start = Instant::now();
    smol::block_on(ex.run(async {
        let mut sinks = Vec::new();
        for i in 0..o.clients {
            let addr = o.addrs[i % o.addrs.len()];
            let stream = Async::<TcpStream>::connect(addr).await.expect("connect");
            stream.get_ref().set_nodelay(true).unwrap();
            let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
                .await
                .expect("handshake");
            let (sink, mut stream) = ws.split();
            sinks.push(sink);
            let stats = stats.clone();
            ex.spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    let Message::Text(t) = m else { continue };
                    let t = t.as_str();
                    if !t.starts_with(r#"{"type":"message""#) {
                        continue;
                    }
                    let Some(sent) = t
                        .split(r#""text":""#)
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .and_then(|n| n.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let now = start.elapsed().as_micros() as u64;
                    let mut s = stats.borrow_mut();
                    if s.measuring {
                        s.deliveries += 1;
                        let _ = s
                            .latency
                            .as_mut()
                            .unwrap()
                            .record(now.saturating_sub(sent).max(1));
                    }
                }
            })
            .detach();
        }
        let interval = Duration::from_secs(1) / o.rate.max(1);
        let senders: Vec<_> = sinks.drain(..o.senders.min(o.clients)).collect();
        for (i, mut sink) in senders.into_iter().enumerate() {
            ex.spawn(async move {
                // Spread the senders over the interval.
                Timer::after(interval * i as u32 / o.senders.max(1) as u32).await;
                let mut next = Instant::now();
                loop {
                    let sent = start.elapsed().as_micros() as u64;
                    if sink
                        .send(Message::Text(sent.to_string().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    next += interval;
                    Timer::at(next).await;
                }
            })
            .detach();
        }
        Timer::after(Duration::from_secs(o.warmup)).await;
        stats.borrow_mut().measuring = true;
        Timer::after(Duration::from_secs(o.duration)).await;
        stats.borrow_mut().measuring = false;
        drop(sinks);
    }));
    let s = stats.borrow();
    let h = s.latency.as_ref().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{{\"nodes\":{},\"clients\":{},\"senders\":{},\"rate\":{},\"offered_per_s\":{},\
         \"deliveries_per_s\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        o.addrs.len(),
        o.clients,
        o.senders,
        o.rate,
        o.senders as u64 * o.rate as u64 * o.clients as u64,
        s.deliveries as f64 / o.duration as f64,
        ms(0.5),
        ms(0.99),
        ms(1.0),
    );
}
