//! Load generator for smolchat and the classic Go hub chat: fan-out throughput and latency,
//! idle-connection memory, and a saturation search. See BENCHMARKS.md for what each mode and
//! each number means; `scripts/bench.sh` runs the whole matrix.
//!
//! ```text
//! cargo run --release --example bench -- fanout --addr 127.0.0.1:8080 --clients 100 \
//!     --senders 10 --rate 100 --duration 10 --bytes 64 --pid "$(pidof smolchat)"
//! cargo run --release --example bench -- idle --clients 10000 --pid ...
//! cargo run --release --example bench -- saturate --clients 1000 --senders 10 --pid ...
//! cargo run --release --example bench -- report results/*.json   # markdown tables
//! ```
//!
//! The client is a small WebSocket implementation of its own (handshake, masked frames out,
//! frames parsed in place from one buffer per connection), so that a single load-generator
//! core can receive on the order of a million frames a second; a general-purpose client would
//! spend more time allocating than the server spends sending. Everything runs on one thread
//! (a `LocalExecutor`): pin it to a core of its own and compare its CPU time with the wall
//! time to see whether it was the bottleneck.
//!
//! Messages are text frames `b<run>:<sender>:<seq>:<send_ns>:` padded with `x` to `--bytes`.
//! `send_ns` is the *scheduled* send time (nanoseconds since the generator started), so a
//! sender held back by the server is charged as latency rather than hidden (no coordinated
//! omission). `<run>` changes for every measurement, so replayed history and stragglers from
//! an earlier step are never counted.
//!
//! Only loopback addresses are accepted. Every wait has a deadline, every loop a bound, and a
//! watchdog ends the process after `--max-runtime` seconds whatever happens.

use std::cell::{Cell, OnceCell, RefCell};
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use smol::lock::{Mutex, Semaphore};
use smol::{Async, LocalExecutor, Task, Timer, future};

const USAGE: &str = "\
bench: load generator for smolchat and the Go hub chat (loopback only)

Usage: bench MODE [OPTIONS]
       bench report FILE...     print markdown tables from --json result files

Modes:
  fanout     N clients in one room, S of them send R msg/s each for D seconds
  idle       open N idle connections; server RSS per connection; check all still work
  saturate   raise R step by step until loss, disconnects or p99 > --p99-limit-ms

Options:
  --addr ADDR              server address, loopback only [default: 127.0.0.1:8080]
  --path PATH              WebSocket path [default: /ws]
  --protocol json|raw      json: smolchat events; raw: plain text frames (Go hub) [default: json]
  --server NAME            label for the results [default: smolchat for json, go-hub for raw]
  --clients N              connections [default: 100; saturate: 1000]
  --senders S              clients that send [default: 10]
  --rate R                 messages per second per sender [default: 100]
  --duration D             seconds of sending [default: 10]
  --bytes B                message size in bytes [default: 64]
  --drain D                at most this many seconds to wait for stragglers [default: 5]
  --pid PID                server process: report its CPU time and memory
  --sources K              loopback source addresses to spread connections over
                           (127.0.0.1..127.0.0.K); 0 = one per 2,500 connections [default: 0]
  --connect-concurrency C  handshakes in flight at once [default: 200]
  --settle D               idle: at most this many seconds to wait for the server to go quiet
                           after connecting (join announcements) [default: 120]
  --start-rate R           saturate: first per-sender rate [default: 10]
  --max-steps N            saturate: at most this many doubling steps [default: 12]
  --refine N               saturate: bisection steps after the first failure [default: 2]
  --p99-limit-ms MS        saturate: highest passing p99 [default: 100]
  --max-runtime S          exit (code 3) after this many seconds whatever happens [default: 1800]
  --json                   print one JSON object instead of a table
  -h, --help               print this help
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Fanout,
    Idle,
    Saturate,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Json,
    Raw,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Json => "json",
            Proto::Raw => "raw",
        }
    }
}

#[derive(Clone, Debug)]
struct Opts {
    mode: Mode,
    addr: SocketAddr,
    path: String,
    protocol: Proto,
    server: String,
    clients: usize,
    senders: usize,
    rate: f64,
    duration: Duration,
    bytes: usize,
    drain: Duration,
    pid: Option<u32>,
    sources: usize,
    connect_concurrency: usize,
    settle: Duration,
    start_rate: f64,
    max_steps: usize,
    refine: usize,
    p99_limit_ms: f64,
    max_runtime: Duration,
    json: bool,
}

enum Command {
    Run(Box<Opts>),
    Report(Vec<String>),
    Help,
}

fn parse_args() -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mode = match parser.next().map_err(|e| e.to_string())? {
        Some(Value(v)) => match v.to_string_lossy().as_ref() {
            "fanout" => Mode::Fanout,
            "idle" => Mode::Idle,
            "saturate" => Mode::Saturate,
            "report" => {
                let mut files = Vec::new();
                while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
                    match arg {
                        Value(f) => files.push(f.to_string_lossy().into_owned()),
                        other => return Err(format!("report takes files, got {other:?}")),
                    }
                }
                return Ok(Command::Report(files));
            }
            other => return Err(format!("unknown mode {other:?}; see --help")),
        },
        Some(Short('h') | Long("help")) | None => return Ok(Command::Help),
        Some(other) => return Err(format!("expected a mode first, got {other:?}; see --help")),
    };
    let mut o = Opts {
        mode,
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        path: "/ws".into(),
        protocol: Proto::Json,
        server: String::new(),
        clients: if mode == Mode::Saturate { 1000 } else { 100 },
        senders: 10,
        rate: 100.0,
        duration: Duration::from_secs(10),
        bytes: 64,
        drain: Duration::from_secs(5),
        pid: None,
        sources: 0,
        connect_concurrency: 200,
        settle: Duration::from_secs(120),
        start_rate: 10.0,
        max_steps: 12,
        refine: 2,
        p99_limit_ms: 100.0,
        max_runtime: Duration::from_secs(1800),
        json: false,
    };
    fn val<T: std::str::FromStr>(p: &mut lexopt::Parser, name: &str) -> Result<T, String> {
        let v = p.value().map_err(|e| e.to_string())?;
        let s = v.to_string_lossy();
        s.parse().map_err(|_| format!("--{name}: cannot use {s:?}"))
    }
    fn secs(p: &mut lexopt::Parser, name: &str) -> Result<Duration, String> {
        let s: f64 = val(p, name)?;
        if !(0.0..=86_400.0).contains(&s) {
            return Err(format!("--{name}: expected seconds from 0 to 86400"));
        }
        Ok(Duration::from_secs_f64(s))
    }
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("addr") => o.addr = val(&mut parser, "addr")?,
            Long("path") => o.path = val(&mut parser, "path")?,
            Long("protocol") => {
                o.protocol = match val::<String>(&mut parser, "protocol")?.as_str() {
                    "json" => Proto::Json,
                    "raw" => Proto::Raw,
                    other => return Err(format!("--protocol: json or raw, got {other:?}")),
                }
            }
            Long("server") => o.server = val(&mut parser, "server")?,
            Long("clients") => o.clients = val(&mut parser, "clients")?,
            Long("senders") => o.senders = val(&mut parser, "senders")?,
            Long("rate") => o.rate = val(&mut parser, "rate")?,
            Long("duration") => o.duration = secs(&mut parser, "duration")?,
            Long("bytes") => o.bytes = val(&mut parser, "bytes")?,
            Long("drain") => o.drain = secs(&mut parser, "drain")?,
            Long("pid") => o.pid = Some(val(&mut parser, "pid")?),
            Long("sources") => o.sources = val(&mut parser, "sources")?,
            Long("connect-concurrency") => {
                o.connect_concurrency = val(&mut parser, "connect-concurrency")?
            }
            Long("settle") => o.settle = secs(&mut parser, "settle")?,
            Long("start-rate") => o.start_rate = val(&mut parser, "start-rate")?,
            Long("max-steps") => o.max_steps = val(&mut parser, "max-steps")?,
            Long("refine") => o.refine = val(&mut parser, "refine")?,
            Long("p99-limit-ms") => o.p99_limit_ms = val(&mut parser, "p99-limit-ms")?,
            Long("max-runtime") => o.max_runtime = secs(&mut parser, "max-runtime")?,
            Long("json") => o.json = true,
            other => return Err(format!("unexpected {other:?}; see --help")),
        }
    }
    if !o.addr.ip().is_loopback() {
        return Err(format!(
            "--addr {}: only loopback addresses (127.0.0.0/8, ::1) may be benchmarked",
            o.addr
        ));
    }
    if !o.addr.is_ipv4() {
        return Err("--addr: only IPv4 loopback is supported".into());
    }
    if o.clients == 0 || o.clients > 1_000_000 {
        return Err("--clients: from 1 to 1000000".into());
    }
    if o.mode != Mode::Idle && (o.senders == 0 || o.senders > o.clients) {
        return Err("--senders: from 1 to --clients".into());
    }
    let rate_ok = |r: f64| r > 0.0 && r <= 1e6;
    if !rate_ok(o.rate) || !rate_ok(o.start_rate) {
        return Err("--rate/--start-rate: above 0, at most 1000000".into());
    }
    if o.bytes > 1 << 20 {
        return Err("--bytes: at most 1 MiB".into());
    }
    o.connect_concurrency = o.connect_concurrency.clamp(1, 10_000);
    o.max_steps = o.max_steps.clamp(1, 40);
    o.refine = o.refine.min(10);
    if o.server.is_empty() {
        o.server = match o.protocol {
            Proto::Json => "smolchat".into(),
            Proto::Raw => "go-hub".into(),
        };
    }
    Ok(Command::Run(Box::new(o)))
}

fn main() -> ExitCode {
    let command = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = match command {
        Command::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Report(files) => return report(&files),
        Command::Run(o) => *o,
    };
    let limit = opts.max_runtime;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("bench: --max-runtime of {limit:?} reached; exiting");
        std::process::exit(3);
    });
    let nofile = raise_nofile();
    if (nofile as usize) < opts.clients + 64 {
        eprintln!(
            "bench: warning: open-file limit is {nofile}, too low for {} clients",
            opts.clients
        );
    }
    let ex: Rc<LocalExecutor<'static>> = Rc::new(LocalExecutor::new());
    // smol::block_on (unlike futures_lite's) drives the reactor on this thread while idle, so a
    // readiness event wakes a task without a hand-off from async-io's background thread.
    let result = smol::block_on(ex.run(run(ex.clone(), opts.clone())));
    let ok = result.get("error").is_none();
    if opts.json {
        println!("{result}");
    } else {
        print_human(&result);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit and returns the new soft limit.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// /proc readings

/// utime + stime of a process in seconds (`pid` may be "self").
fn proc_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// The CPU a process last ran on (field 39 of /proc/PID/stat); with `taskset` pinning, its core.
fn proc_core(pid: &str) -> Option<usize> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(36)?.parse().ok()
}

/// A `kB` line of /proc/PID/status (VmRSS, VmHWM), in KiB.
fn proc_status_kib(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The kernel's count of connections dropped because a listen queue was full (TcpExt
/// ListenOverflows in /proc/net/netstat; machine-wide). A dropped SYN is retried after 1 s.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Per thread of a process: (tid, ns on a CPU, ns runnable but waiting for a CPU), from
/// /proc/PID/task/TID/schedstat. A thread that waits a lot while it has work is being denied
/// its core: by other processes, or by its own process's other threads on the same core.
fn proc_threads(pid: &str) -> Option<Vec<(u64, u64, u64)>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut threads = Vec::new();
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        let mut f = stat
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        threads.push((tid, f.next().unwrap_or(0), f.next().unwrap_or(0)));
    }
    Some(threads)
}

/// Between two readings of [`proc_threads`]: (run-queue wait of all threads, run-queue wait of
/// the thread that ran most), in seconds.
fn thread_waits(now: &[(u64, u64, u64)], then: &[(u64, u64, u64)]) -> (f64, f64) {
    let delta = |&(tid, run, wait): &(u64, u64, u64)| {
        let (r0, w0) = then
            .iter()
            .find(|t| t.0 == tid)
            .map_or((0, 0), |t| (t.1, t.2));
        (run.saturating_sub(r0), wait.saturating_sub(w0))
    };
    let deltas: Vec<(u64, u64)> = now.iter().map(delta).collect();
    let total = deltas.iter().map(|d| d.1).sum::<u64>();
    let busiest = deltas.iter().max_by_key(|d| d.0).map_or(0, |d| d.1);
    (total as f64 / 1e9, busiest as f64 / 1e9)
}

/// Per-core jiffies from /proc/stat: (busy, softirq, steal) for cpu0, cpu1, …
fn core_jiffies() -> Vec<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| f.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal
            let busy = at(0) + at(1) + at(2) + at(5) + at(6);
            (busy, at(6), at(7))
        })
        .collect()
}

/// CPU time of the server (when `--pid` is given) and of this process, at one moment.
#[derive(Clone)]
struct CpuMark {
    at: Instant,
    server: Option<f64>,
    me: Option<f64>,
    server_threads: Option<Vec<(u64, u64, u64)>>,
    me_threads: Option<Vec<(u64, u64, u64)>>,
    cores: Vec<(u64, u64, u64)>,
    server_core: Option<usize>,
    me_core: Option<usize>,
}

impl CpuMark {
    fn now(pid: Option<u32>) -> Self {
        CpuMark {
            at: Instant::now(),
            server: pid.and_then(|p| proc_cpu(&p.to_string())),
            me: proc_cpu("self"),
            server_threads: pid.and_then(|p| proc_threads(&p.to_string())),
            me_threads: proc_threads("self"),
            cores: core_jiffies(),
            server_core: pid.and_then(|p| proc_core(&p.to_string())),
            me_core: proc_core("self"),
        }
    }

    /// Seconds of CPU and percent of one core since `earlier`, for the server and for us;
    /// how long each waited for a CPU; and how busy each core was (all processes, softirq
    /// included) and how much the hypervisor stole from it.
    fn since(&self, earlier: &CpuMark) -> Value {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let d = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
        let pct = |x: Option<f64>| x.map(|s| round1(100.0 * s / wall));
        let server = d(self.server, earlier.server);
        let me = d(self.me, earlier.me);
        let waits = |a: &Option<Vec<_>>, b: &Option<Vec<_>>| {
            a.as_deref()
                .zip(b.as_deref())
                .map(|(a, b)| thread_waits(a, b))
        };
        let server_waits = waits(&self.server_threads, &earlier.server_threads);
        let me_waits = waits(&self.me_threads, &earlier.me_threads);
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let cores: Vec<Value> = self
            .cores
            .iter()
            .zip(&earlier.cores)
            .map(|(a, b)| {
                let p = |x: u64, y: u64| round1(100.0 * x.saturating_sub(y) as f64 / ticks / wall);
                json!({ "busy_pct": p(a.0, b.0), "softirq_pct": p(a.1, b.1), "steal_pct": p(a.2, b.2) })
            })
            .collect();
        // What else ran on a process's core: everything busy there, less the process itself and
        // softirq (mostly the kernel's loopback TCP work for this benchmark's own traffic).
        let other = |core: Option<usize>, cpu: Option<f64>| {
            let c = &cores[core?];
            let busy = c["busy_pct"].as_f64()? - c["softirq_pct"].as_f64()?;
            Some(round1((busy - 100.0 * cpu? / wall).max(0.0)))
        };
        json!({
            "window_s": round3(wall),
            "server_core": self.server_core,
            "server_core_other_pct": other(self.server_core, server),
            "gen_core": self.me_core,
            "gen_core_other_pct": other(self.me_core, me),
            "server_cpu_s": server.map(round3),
            "server_cpu_pct": pct(server),
            "server_runq_wait_pct": pct(server_waits.map(|w| w.0)),
            "server_busiest_thread_wait_pct": pct(server_waits.map(|w| w.1)),
            "gen_cpu_s": me.map(round3),
            "gen_cpu_pct": pct(me),
            "gen_runq_wait_pct": pct(me_waits.map(|w| w.0)),
            "gen_busiest_thread_wait_pct": pct(me_waits.map(|w| w.1)),
            "cores": cores,
        })
    }
}

fn server_alive(pid: Option<u32>) -> bool {
    pid.is_none_or(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------------
// A minimal WebSocket client

/// Awaits `f` for at most `d`.
async fn timeout<T>(d: Duration, f: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(f.await) }, async {
        Timer::after(d).await;
        None
    })
    .await
}

/// Connects from `source` (a loopback address, or any when None) and completes the WebSocket
/// handshake. Returns the stream and whatever arrived after the response head.
async fn ws_connect(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    path: &str,
) -> io::Result<(Async<TcpStream>, Vec<u8>)> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = source {
        // Binding first is the point of socket2 here: each source address has its own
        // ephemeral port range, so 10,000+ connections never run out of ports.
        socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(ip), 0)))?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error())
                || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let stream = Async::new(TcpStream::from(socket))?;
    stream.writable().await?;
    if let Some(e) = stream.get_ref().take_error()? {
        return Err(e);
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    (&stream).write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let head_end = loop {
        if len == buf.len() {
            return Err(io::Error::other("response head larger than 4 KiB"));
        }
        let n = (&stream).read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::Error::other("closed during the handshake"));
        }
        len += n;
        if let Some(i) = find(&buf[..len], b"\r\n\r\n") {
            break i + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&buf[..head_end.min(80)]).into_owned();
        return Err(io::Error::other(format!(
            "handshake refused: {}",
            line.lines().next().unwrap_or("")
        )));
    }
    Ok((stream, buf[head_end..len].to_vec()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Appends a masked client frame (FIN set) to `out`.
fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// A parsed frame header: (fin, opcode, mask, header length, payload length).
type Header = (bool, u8, Option<[u8; 4]>, usize, usize);

fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 => (
            u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    Some((fin, opcode, mask, at, len))
}

const MAX_FRAME: usize = 64 << 20;
const READ_BUF: usize = 8 << 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Connecting,
    Open,
    Failed,
    Closed,
}

/// One client connection.
struct Conn {
    state: Cell<State>,
    stream: OnceCell<Async<TcpStream>>,
    /// Writers (senders, pongs, pings) take this so frames never interleave.
    write: Mutex<()>,
    /// json: the `room` event arrived; raw: a barrier marker of the current run arrived.
    joined: Cell<bool>,
    pongs: Cell<u64>,
    /// Highest sequence number seen from each sender in the current run.
    last_seq: RefCell<Vec<u64>>,
    error: RefCell<Option<String>>,
}

impl Conn {
    fn new() -> Self {
        Conn {
            state: Cell::new(State::Connecting),
            stream: OnceCell::new(),
            write: Mutex::new(()),
            joined: Cell::new(false),
            pongs: Cell::new(0),
            last_seq: RefCell::new(Vec::new()),
            error: RefCell::new(None),
        }
    }

    fn open(&self) -> bool {
        self.state.get() == State::Open
    }

    async fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        let stream = self
            .stream
            .get()
            .ok_or_else(|| io::Error::other("not connected"))?;
        let _guard = self.write.lock().await;
        (&*stream).write_all(frame).await
    }
}

/// Counters of the current run, shared by every connection's reader.
struct Stats {
    delivered: u64,
    out_of_order: u64,
    stale: u64,
    latency_us: Histogram<u64>,
    last_delivery: Option<Instant>,
    /// Deliveries of each message, `[sender][seq - 1]`, to tell a message nobody received
    /// from one some clients missed.
    per_message: Vec<Vec<u32>>,
}

impl Stats {
    fn new(senders: usize, per_sender: usize) -> Self {
        Stats {
            delivered: 0,
            out_of_order: 0,
            stale: 0,
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
            last_delivery: None,
            per_message: vec![vec![0; per_sender]; senders],
        }
    }
}

/// What every reader shares: the clock, the current run and its counters.
struct Shared {
    base: Instant,
    protocol: Proto,
    run: Cell<u64>,
    stats: RefCell<Stats>,
    frames: Cell<u64>,
    last_frame: Cell<Instant>,
    mask_seed: Cell<u32>,
}

impl Shared {
    fn mask(&self) -> [u8; 4] {
        // xorshift32: masks need not be secret for a benchmark, only vary.
        let mut x = self.mask_seed.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed.set(x);
        x.to_le_bytes()
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.duration_since(self.base).as_nanos() as u64
    }

    /// A complete text (or binary) message arrived on `conn` at `now`.
    fn on_message(&self, conn: &Conn, msg: &[u8], now: Instant) {
        self.frames.set(self.frames.get() + 1);
        match self.protocol {
            Proto::Json => {
                // Fast path over the server's fixed encoding (`type` first, our text has no
                // escapes): a full JSON parse per frame would make this process the bottleneck.
                if msg.starts_with(br#"{"type":"message""#) {
                    if let Some(at) = find(msg, br#""text":""#) {
                        let text = &msg[at + 8..];
                        let end = text.iter().position(|&b| b == b'"').unwrap_or(text.len());
                        self.on_payload(conn, &text[..end], now);
                    }
                } else if msg.starts_with(br#"{"type":"room""#) {
                    conn.joined.set(true);
                }
            }
            Proto::Raw => {
                // The classic hub may join several queued messages into one frame with '\n'.
                for line in msg.split(|&b| b == b'\n') {
                    self.on_payload(conn, line, now);
                }
            }
        }
    }

    /// One chat text: ours if it is `b<run>:...` for the current run.
    fn on_payload(&self, conn: &Conn, p: &[u8], now: Instant) {
        let Some(rest) = p.strip_prefix(b"b") else {
            return;
        };
        let mut fields = rest.split(|&b| b == b':');
        let Some(run) = fields.next().and_then(num) else {
            return;
        };
        if run != self.run.get() {
            self.stats.borrow_mut().stale += 1;
            return;
        }
        let Some(f) = fields.next() else { return };
        if f == b"r" {
            conn.joined.set(true);
            return;
        }
        let (Some(sender), Some(seq), Some(sent_ns)) = (
            num(f),
            fields.next().and_then(num),
            fields.next().and_then(num),
        ) else {
            return;
        };
        let mut st = self.stats.borrow_mut();
        st.delivered += 1;
        st.last_delivery = Some(now);
        if let Some(c) = st
            .per_message
            .get_mut(sender as usize)
            .and_then(|m| m.get_mut((seq as usize).wrapping_sub(1)))
        {
            *c += 1;
        }
        let latency_us = self.nanos(now).saturating_sub(sent_ns) / 1000;
        st.latency_us.saturating_record(latency_us.max(1));
        let mut last = conn.last_seq.borrow_mut();
        if let Some(l) = last.get_mut(sender as usize) {
            if seq <= *l {
                st.out_of_order += 1;
            } else {
                *l = seq;
            }
        }
    }
}

fn num(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

/// Reads frames until the connection ends (or the task is dropped). Answers pings, counts
/// pongs, hands complete messages to `shared`.
async fn read_loop(conn: &Conn, shared: &Shared, leftover: Vec<u8>) {
    let Some(stream) = conn.stream.get() else {
        return;
    };
    let mut buf = leftover;
    let mut end = buf.len();
    if buf.len() < READ_BUF {
        buf.resize(READ_BUF, 0);
    }
    let mut start = 0;
    let mut fragments: Vec<u8> = Vec::new();
    let mut now = Instant::now();
    let why = 'outer: loop {
        // Handle every complete frame in buf[start..end].
        let mut need = 0;
        while let Some((fin, opcode, mask, hlen, plen)) = parse_header(&buf[start..end]) {
            if plen > MAX_FRAME {
                break 'outer "frame too large".to_string();
            }
            if end - start < hlen + plen {
                need = hlen + plen;
                break;
            }
            let payload = &mut buf[start + hlen..start + hlen + plen];
            if let Some(m) = mask {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= m[i & 3]);
            }
            match opcode {
                0x1 | 0x2 if fin => shared.on_message(conn, payload, now),
                0x1 | 0x2 => {
                    fragments.clear();
                    fragments.extend_from_slice(payload);
                }
                0x0 => {
                    if fragments.len() + payload.len() > MAX_FRAME {
                        break 'outer "message too large".to_string();
                    }
                    fragments.extend_from_slice(payload);
                    if fin {
                        shared.on_message(conn, &fragments, now);
                        fragments.clear();
                    }
                }
                0x8 => {
                    let code = payload
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .unwrap_or(1005);
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
                    break 'outer format!("server closed with {code} {reason}");
                }
                0x9 => {
                    let mut pong = Vec::with_capacity(payload.len() + 8);
                    encode_frame(0xA, payload, shared.mask(), &mut pong);
                    if let Err(e) = conn.send_frame(&pong).await {
                        break 'outer format!("pong failed: {e}");
                    }
                }
                0xA => conn.pongs.set(conn.pongs.get() + 1),
                _ => break 'outer format!("unexpected opcode {opcode}"),
            }
            start += hlen + plen;
        }
        // Make room for the next read.
        if start == end {
            start = 0;
            end = 0;
            if buf.len() > 8 * READ_BUF {
                buf = vec![0; READ_BUF];
            }
        } else if start > 0 && (end == buf.len() || start + need > buf.len()) {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if need > buf.len() || end == buf.len() {
            let size = need.max(buf.len() * 2);
            buf.resize(size, 0);
        }
        match (&*stream).read(&mut buf[end..]).await {
            Ok(0) => break "connection closed".to_string(),
            Ok(n) => end += n,
            Err(e) => break format!("read error: {e}"),
        }
        now = Instant::now();
        shared.last_frame.set(now);
    };
    *conn.error.borrow_mut() = Some(why);
    conn.state.set(State::Closed);
}

// ---------------------------------------------------------------------------------------------
// A fleet of clients

struct Slot {
    conn: Rc<Conn>,
    _task: Task<()>,
}

struct Fleet {
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    opts: Rc<Opts>,
    sources: Vec<Option<Ipv4Addr>>,
    slots: Vec<Option<Slot>>,
    connect_errors: Vec<String>,
    /// Listen-queue overflows seen while this fleet connected.
    listen_overflows: u64,
}

impl Fleet {
    fn new(ex: Rc<LocalExecutor<'static>>, shared: Rc<Shared>, opts: Rc<Opts>) -> Fleet {
        let n = opts.clients;
        let k = match opts.sources {
            0 => n.div_ceil(2500),
            k => k,
        }
        .clamp(1, 250);
        let sources = if k == 1 {
            vec![None]
        } else {
            (1..=k as u8)
                .map(|i| Some(Ipv4Addr::new(127, 0, 0, i)))
                .collect()
        };
        Fleet {
            ex,
            shared,
            opts,
            sources,
            slots: Vec::new(),
            connect_errors: Vec::new(),
            listen_overflows: 0,
        }
    }

    fn conns(&self) -> impl Iterator<Item = &Rc<Conn>> {
        self.slots.iter().flatten().map(|s| &s.conn)
    }

    fn open_count(&self) -> usize {
        self.conns().filter(|c| c.open()).count()
    }

    fn joined_count(&self) -> usize {
        self.conns().filter(|c| c.open() && c.joined.get()).count()
    }

    /// (Re)connects every slot that is not open, `--connect-concurrency` at a time, and waits
    /// (at most `limit`) until each attempt has succeeded or failed. Returns the open count.
    async fn fill(&mut self, limit: Duration) -> usize {
        let n = self.opts.clients;
        self.slots.resize_with(n, || None);
        let gate = Rc::new(Semaphore::new(self.opts.connect_concurrency));
        for i in 0..n {
            if self.slots[i].as_ref().is_some_and(|s| s.conn.open()) {
                continue;
            }
            self.slots[i] = None; // drops (cancels) the old reader and closes its socket
            let conn = Rc::new(Conn::new());
            let task = self.ex.spawn(client_task(
                conn.clone(),
                self.shared.clone(),
                gate.clone(),
                self.opts.addr,
                self.sources[i % self.sources.len()],
                self.opts.path.clone(),
            ));
            self.slots[i] = Some(Slot { conn, _task: task });
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && self.conns().any(|c| c.state.get() == State::Connecting)
        {
            Timer::after(Duration::from_millis(20)).await;
        }
        self.connect_errors = self
            .conns()
            .filter(|c| c.state.get() == State::Failed)
            .filter_map(|c| c.error.borrow().clone())
            .take(3)
            .collect();
        self.open_count()
    }

    /// Waits (at most `limit`) until every open client has joined: for json the `room` event
    /// of the automatic lobby join; for raw, a marker broadcast by client 0 (sent again every
    /// 200 ms, since the classic hub registers a client some time after the handshake).
    async fn join_barrier(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        if self.shared.protocol == Proto::Raw {
            self.conns().for_each(|c| c.joined.set(false));
        }
        let mut next_marker = Instant::now();
        while Instant::now() < deadline {
            let open = self.open_count();
            if open > 0 && self.joined_count() == open {
                return true;
            }
            if self.shared.protocol == Proto::Raw && Instant::now() >= next_marker {
                if let Some(c) = self.conns().find(|c| c.open()) {
                    let mut frame = Vec::new();
                    let text = format!("b{}:r", self.shared.run.get());
                    encode_frame(0x1, text.as_bytes(), self.shared.mask(), &mut frame);
                    let _ = timeout(Duration::from_secs(1), c.send_frame(&frame)).await;
                }
                next_marker = Instant::now() + Duration::from_millis(200);
            }
            Timer::after(Duration::from_millis(10)).await;
        }
        false
    }

    /// Waits until no frame has arrived for `quiet`, for at most `limit`. Returns the time
    /// waited.
    async fn wait_quiet(&self, quiet: Duration, limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            let last = self.shared.last_frame.get().max(start);
            if last.elapsed() >= quiet {
                break;
            }
            Timer::after(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }
}

/// Connects (up to three attempts, under the concurrency gate), then reads until the end.
async fn client_task(
    conn: Rc<Conn>,
    shared: Rc<Shared>,
    gate: Rc<Semaphore>,
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    path: String,
) {
    let mut connected = None;
    {
        let _permit = gate.acquire().await;
        for attempt in 0..3 {
            match timeout(Duration::from_secs(10), ws_connect(addr, source, &path)).await {
                Some(Ok(c)) => {
                    connected = Some(c);
                    break;
                }
                Some(Err(e)) => *conn.error.borrow_mut() = Some(e.to_string()),
                None => *conn.error.borrow_mut() = Some("connect timed out".into()),
            }
            Timer::after(Duration::from_millis(100 << attempt)).await;
        }
    }
    let Some((stream, leftover)) = connected else {
        conn.state.set(State::Failed);
        return;
    };
    let _ = conn.stream.set(stream);
    conn.state.set(State::Open);
    read_loop(&conn, &shared, leftover).await;
}

// ---------------------------------------------------------------------------------------------
// Modes

async fn run(ex: Rc<LocalExecutor<'static>>, opts: Opts) -> Value {
    let opts = Rc::new(opts);
    let shared = Rc::new(Shared {
        base: Instant::now(),
        protocol: opts.protocol,
        // Unique per process too: a room's replayed history may hold an earlier process's runs.
        run: Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64),
        ),
        stats: RefCell::new(Stats::new(0, 0)),
        frames: Cell::new(0),
        last_frame: Cell::new(Instant::now()),
        mask_seed: Cell::new(0x9e37_79b9 ^ std::process::id()),
    });
    let mut fleet = Fleet::new(ex.clone(), shared.clone(), opts.clone());
    let mut out = json!({
        "mode": match opts.mode { Mode::Fanout => "fanout", Mode::Idle => "idle", Mode::Saturate => "saturate" },
        "server": opts.server,
        "protocol": opts.protocol.name(),
        "clients": opts.clients,
        "source_addresses": fleet.sources.len(),
    });
    let body = match opts.mode {
        Mode::Fanout => fanout(&ex, &mut fleet, &opts).await,
        Mode::Idle => idle(&mut fleet, &opts).await,
        Mode::Saturate => saturate(&ex, &mut fleet, &opts).await,
    };
    merge(&mut out, body);
    // How much this row was disturbed: the longest the busiest thread of the server or of the
    // generator waited for its core, as % of the window, over the whole row (every step of a
    // saturation search). Idle rows measure memory, not time.
    let rows: Vec<&Value> = match out["steps"].as_array() {
        Some(steps) => steps.iter().collect(),
        None if opts.mode == Mode::Idle => Vec::new(),
        None => vec![&out],
    };
    let noise = rows
        .iter()
        .flat_map(|r| {
            [
                &r["server_busiest_thread_wait_pct"],
                &r["gen_busiest_thread_wait_pct"],
            ]
        })
        .filter_map(Value::as_f64)
        .fold(0.0f64, f64::max);
    out["noise_pct"] = json!(noise);
    if let Some(pid) = opts.pid {
        let p = pid.to_string();
        out["server_pid"] = json!(pid);
        out["server_peak_rss_kib"] = json!(proc_status_kib(&p, "VmHWM"));
        out["server_rss_kib"] = json!(proc_status_kib(&p, "VmRSS"));
        out["server_total_cpu_s"] = json!(proc_cpu(&p).map(round3));
    }
    out["gen_total_cpu_s"] = json!(proc_cpu("self").map(round3));
    out["gen_peak_rss_kib"] = json!(proc_status_kib("self", "VmHWM"));
    out
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// Connects the fleet and waits until every client has joined and the join announcements
/// have died down. Returns an error text if not every client made it.
async fn prepare(fleet: &mut Fleet, opts: &Opts) -> Result<f64, String> {
    let t = Instant::now();
    let limit = Duration::from_secs(30) + Duration::from_millis(10 * opts.clients as u64);
    let overflows = listen_overflows();
    let open = fleet.fill(limit).await;
    fleet.listen_overflows += listen_overflows()
        .zip(overflows)
        .map_or(0, |(a, b)| a.saturating_sub(b));
    if open < opts.clients {
        return Err(format!(
            "only {open} of {} clients connected (e.g. {:?})",
            opts.clients, fleet.connect_errors
        ));
    }
    if !fleet.join_barrier(Duration::from_secs(30)).await {
        return Err(format!(
            "only {} of {} clients joined within 30 s ({} still open)",
            fleet.joined_count(),
            opts.clients,
            fleet.open_count()
        ));
    }
    let connect_s = t.elapsed().as_secs_f64();
    fleet
        .wait_quiet(Duration::from_millis(500), Duration::from_secs(60))
        .await;
    Ok(connect_s)
}

async fn fanout(ex: &Rc<LocalExecutor<'static>>, fleet: &mut Fleet, opts: &Opts) -> Value {
    let connect_s = match prepare(fleet, opts).await {
        Ok(s) => s,
        Err(e) => return json!({ "error": e }),
    };
    let mut v = step(ex, fleet, opts, opts.rate).await;
    v["connect_s"] = json!(round3(connect_s));
    v["listen_overflows"] = json!(fleet.listen_overflows);
    v
}

/// One measurement on a connected fleet: S senders at `rate` for D, then drain, then count.
async fn step(ex: &Rc<LocalExecutor<'static>>, fleet: &Fleet, opts: &Opts, rate: f64) -> Value {
    let shared = &fleet.shared;
    shared.run.set(shared.run.get() + 1);
    let per_sender = ((rate * opts.duration.as_secs_f64()).round() as u64).max(1);
    *shared.stats.borrow_mut() = Stats::new(opts.senders, per_sender as usize);
    for c in fleet.conns() {
        *c.last_seq.borrow_mut() = vec![0; opts.senders];
    }
    let n = opts.clients;
    if fleet.shared.protocol == Proto::Raw && !fleet.join_barrier(Duration::from_secs(10)).await {
        return json!({ "error": "raw barrier: not every client received the marker" });
    }
    if fleet.open_count() < n {
        return json!({ "error": format!("only {} of {n} clients open", fleet.open_count()) });
    }

    let before = CpuMark::now(opts.pid);
    let t0 = Instant::now() + Duration::from_millis(20);
    let end = t0 + opts.duration;
    let hard_end = end + opts.drain;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let conns: Vec<Rc<Conn>> = fleet.conns().cloned().collect();
    let tasks: Vec<Task<(u64, Histogram<u64>)>> = (0..opts.senders)
        .map(|i| {
            let offset = interval.mul_f64(i as f64 / opts.senders as f64);
            ex.spawn(sender(
                conns[i].clone(),
                shared.clone(),
                SenderPlan {
                    index: i,
                    count: per_sender,
                    start: t0 + offset,
                    interval,
                    end,
                    hard_end,
                    bytes: opts.bytes,
                },
            ))
        })
        .collect();
    let mut sent = 0;
    let mut sent_by_sender = Vec::new();
    let mut lag = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
    for t in tasks {
        let (s, h) = t.await;
        sent += s;
        sent_by_sender.push(s);
        let _ = lag.add(h);
    }
    let intended = per_sender * opts.senders as u64;
    let expected = sent * n as u64;
    // Drain: until everything expected arrived, or --drain passed after the sending window.
    let drain_until = end.max(Instant::now()) + opts.drain;
    while shared.stats.borrow().delivered < expected && Instant::now() < drain_until {
        Timer::after(Duration::from_millis(10)).await;
    }
    let after = CpuMark::now(opts.pid);
    let st = shared.stats.borrow();
    let open = fleet.open_count();
    let active = st
        .last_delivery
        .map_or(opts.duration, |l| l.saturating_duration_since(t0))
        .max(opts.duration)
        .max(Duration::from_millis(1))
        .as_secs_f64();
    let q = |p: f64| st.latency_us.value_at_quantile(p);
    let mut v = json!({
        "senders": opts.senders,
        "rate": rate,
        "duration_s": opts.duration.as_secs_f64(),
        "bytes": opts.bytes,
        "intended": intended,
        "sent": sent,
        "expected": expected,
        "delivered": st.delivered,
        "lost": expected.saturating_sub(st.delivered),
        "out_of_order": st.out_of_order,
        "offered_per_s": round1(rate * opts.senders as f64 * n as f64),
        "deliveries_per_s": round1(st.delivered as f64 / active),
        "p50_us": q(0.5),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": st.latency_us.max(),
        "send_lag_p99_us": lag.value_at_quantile(0.99),
        "send_lag_max_us": lag.max(),
        "disconnected": n - open,
        "server_alive": server_alive(opts.pid),
    });
    if st.delivered < expected {
        // Which messages went missing: nobody got them (lost on the way in, or never
        // broadcast), or only some clients did (dropped on the way out).
        let mut nobody = Vec::new();
        let mut some = 0u64;
        for (i, &count) in sent_by_sender.iter().enumerate() {
            for (seq, &c) in st.per_message[i].iter().take(count as usize).enumerate() {
                if c == 0 {
                    nobody.push(format!("{i}:{}", seq + 1));
                } else if (c as usize) < n {
                    some += 1;
                }
            }
        }
        v["messages_received_by_nobody"] = json!(nobody.len());
        v["messages_missed_by_some"] = json!(some);
        nobody.truncate(5);
        v["examples_received_by_nobody"] = json!(nobody);
    }
    if n > open {
        let reasons: Vec<String> = fleet
            .conns()
            .filter(|c| !c.open())
            .filter_map(|c| c.error.borrow().clone())
            .take(3)
            .collect();
        v["disconnect_reasons"] = json!(reasons);
    }
    merge(&mut v, after.since(&before));
    v
}

struct SenderPlan {
    index: usize,
    count: u64,
    start: Instant,
    interval: Duration,
    /// No message is started after this (the end of the sending window).
    end: Instant,
    /// Writes blocked past this are abandoned.
    hard_end: Instant,
    bytes: usize,
}

/// Sends `plan.count` messages on schedule; a message is sent late rather than skipped, but
/// never after the window. Returns how many were written and the send-lag histogram (µs).
async fn sender(conn: Rc<Conn>, shared: Rc<Shared>, plan: SenderPlan) -> (u64, Histogram<u64>) {
    let mut lag = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
    let run = shared.run.get();
    let mut text = String::with_capacity(plan.bytes + 64);
    let mut frame = Vec::with_capacity(plan.bytes + 80);
    let mut sent = 0;
    for k in 0..plan.count {
        let due = plan.start + plan.interval.mul_f64(k as f64);
        if due > Instant::now() {
            Timer::at(due).await;
        }
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        lag.saturating_record((now - due).as_micros() as u64);
        text.clear();
        let _ = write!(
            text,
            "b{run}:{}:{}:{}:",
            plan.index,
            k + 1,
            shared.nanos(due)
        );
        while text.len() < plan.bytes {
            text.push('x');
        }
        frame.clear();
        encode_frame(0x1, text.as_bytes(), shared.mask(), &mut frame);
        let left = plan.hard_end.saturating_duration_since(Instant::now());
        match timeout(left, conn.send_frame(&frame)).await {
            Some(Ok(())) => sent += 1,
            _ => break,
        }
    }
    (sent, lag)
}

async fn idle(fleet: &mut Fleet, opts: &Opts) -> Value {
    let n = opts.clients;
    let pid = opts.pid.map(|p| p.to_string());
    let rss = |key| pid.as_deref().and_then(|p| proc_status_kib(p, key));
    let rss_before = rss("VmRSS");
    let before = CpuMark::now(opts.pid);
    let t = Instant::now();
    let limit = Duration::from_secs(30) + Duration::from_millis(10 * n as u64);
    let overflows = listen_overflows();
    let open = fleet.fill(limit).await;
    let connect_s = t.elapsed().as_secs_f64();
    let overflows = listen_overflows()
        .zip(overflows)
        .map(|(a, b)| a.saturating_sub(b));
    // For json, wait for the automatic lobby join (`room`) too; raw has nothing to wait for.
    if opts.protocol == Proto::Json {
        let _ = fleet.join_barrier(Duration::from_secs(60)).await;
    }
    let joined = match opts.protocol {
        Proto::Json => fleet.joined_count(),
        Proto::Raw => fleet.open_count(),
    };
    // Presence: every connect was announced to everyone already there. Wait until that is over.
    let frames_before = fleet.shared.frames.get();
    let settle = fleet
        .wait_quiet(Duration::from_secs(1), opts.settle)
        .await
        .as_secs_f64();
    let frames = fleet.shared.frames.get() - frames_before;
    let settled = CpuMark::now(opts.pid);
    let rss_after = rss("VmRSS");
    let open_before_ping = fleet.open_count();

    // Every connection must still work: a ping on each, and count the pongs.
    let ping_start = Instant::now();
    let mut ping = Vec::new();
    for c in fleet.conns().filter(|c| c.open()) {
        ping.clear();
        encode_frame(0x9, b"bench", fleet.shared.mask(), &mut ping);
        if timeout(Duration::from_secs(2), c.send_frame(&ping))
            .await
            .is_none()
        {
            break;
        }
    }
    let ping_deadline = ping_start + Duration::from_secs(15);
    let ponged = |f: &Fleet| f.conns().filter(|c| c.pongs.get() > 0).count();
    while ponged(fleet) < open_before_ping && Instant::now() < ping_deadline {
        Timer::after(Duration::from_millis(20)).await;
    }
    let pongs = ponged(fleet);
    let open_end = fleet.open_count();
    let delta = rss_before.zip(rss_after).map(|(a, b)| b as f64 - a as f64);
    let mut v = json!({
        "connected": open,
        "joined": joined,
        "connect_failed": n - open,
        "connect_s": round3(connect_s),
        "listen_overflows": overflows,
        "settle_s": round3(settle),
        "frames_while_settling": frames,
        "frames_total": fleet.shared.frames.get(),
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "server_rss_delta_kib": delta,
        "rss_per_conn_kib": delta.map(|d| (d / n as f64 * 100.0).round() / 100.0),
        "pongs": pongs,
        "ping_s": round3(ping_start.elapsed().as_secs_f64()),
        "disconnected": open - open_end.min(open),
        "server_alive": server_alive(opts.pid),
    });
    if !fleet.connect_errors.is_empty() {
        v["connect_errors"] = json!(fleet.connect_errors);
    }
    if open_end < open {
        let reasons: Vec<String> = fleet
            .conns()
            .filter(|c| c.state.get() == State::Closed)
            .filter_map(|c| c.error.borrow().clone())
            .take(3)
            .collect();
        v["disconnect_reasons"] = json!(reasons);
    }
    merge(&mut v, settled.since(&before));
    if open < n {
        v["error"] = json!(format!("only {open} of {n} connected"));
    }
    v
}

async fn saturate(ex: &Rc<LocalExecutor<'static>>, fleet: &mut Fleet, opts: &Opts) -> Value {
    let limit_us = (opts.p99_limit_ms * 1000.0) as u64;
    let mut steps: Vec<Value> = Vec::new();
    let mut best: Option<Value> = None;
    let mut fail_rate: Option<f64> = None;
    let mut rate = opts.start_rate;
    let mut search_left = opts.max_steps;
    let mut refine_left = opts.refine;
    let lowest = opts.start_rate / 64.0;
    for _ in 0..opts.max_steps + opts.refine {
        if !server_alive(opts.pid) {
            break;
        }
        // Replace clients a failed step lost, and let the announcements settle.
        let mut row = measure(ex, fleet, opts, rate).await;
        let mut verdict = verdict(&row, limit_us);
        eprintln!(
            "saturate: rate {rate}/s/sender: {} deliveries/s, p99 {} us, lost {}, disconnected {}: {}",
            row["deliveries_per_s"], row["p99_us"], row["lost"], row["disconnected"], verdict
        );
        if latency_only(&row, limit_us) {
            // On a shared machine one slow step can be somebody else's build: a step that
            // failed on latency alone is measured once more, and the second result counts.
            row["verdict"] = json!(format!("{verdict} (measured again)"));
            steps.push(row);
            Timer::after(Duration::from_secs(1)).await;
            row = measure(ex, fleet, opts, rate).await;
            verdict = self::verdict(&row, limit_us);
            eprintln!(
                "saturate: rate {rate}/s/sender again: {} deliveries/s, p99 {} us: {}",
                row["deliveries_per_s"], row["p99_us"], verdict
            );
        }
        let pass = verdict == "pass";
        row["verdict"] = json!(verdict);
        steps.push(row.clone());
        let best_rate = best.as_ref().and_then(|b| b["rate"].as_f64());
        if pass {
            if best_rate.is_none_or(|b| rate > b) {
                best = Some(row);
            }
        } else {
            fail_rate = Some(fail_rate.map_or(rate, |f: f64| f.min(rate)));
        }
        // Double until the first failure (halve while nothing passed yet), then bisect between
        // the best pass and the lowest failure.
        let low = best.as_ref().and_then(|b| b["rate"].as_f64());
        search_left -= 1;
        rate = match (low, fail_rate) {
            (_, None) if search_left > 0 => rate * 2.0,
            (None, Some(hi)) if search_left > 0 && hi / 2.0 >= lowest => hi / 2.0,
            (Some(lo), Some(hi)) if refine_left > 0 && hi - lo > (lo * 0.05).max(1.0) => {
                refine_left -= 1;
                ((lo + hi) / 2.0).round()
            }
            _ => break,
        };
        // A fresh start for every step: the server drains what the last one left queued.
        Timer::after(Duration::from_secs(1)).await;
    }
    json!({
        "senders": opts.senders,
        "duration_s": opts.duration.as_secs_f64(),
        "bytes": opts.bytes,
        "p99_limit_ms": opts.p99_limit_ms,
        "best_rate": best.as_ref().map(|b| b["rate"].clone()),
        "best_deliveries_per_s": best.as_ref().map(|b| b["deliveries_per_s"].clone()),
        "best_p99_us": best.as_ref().map(|b| b["p99_us"].clone()),
        "best_server_cpu_pct": best.as_ref().map(|b| b["server_cpu_pct"].clone()),
        "best_gen_cpu_pct": best.as_ref().map(|b| b["gen_cpu_pct"].clone()),
        "best_server_busiest_thread_wait_pct": best
            .as_ref()
            .map(|b| b["server_busiest_thread_wait_pct"].clone()),
        "best_gen_busiest_thread_wait_pct": best
            .as_ref()
            .map(|b| b["gen_busiest_thread_wait_pct"].clone()),
        "first_fail_rate": fail_rate,
        "steps": steps,
    })
}

/// One saturation step: top the fleet up, settle, measure at `rate`.
async fn measure(
    ex: &Rc<LocalExecutor<'static>>,
    fleet: &mut Fleet,
    opts: &Opts,
    rate: f64,
) -> Value {
    let mut row = match prepare(fleet, opts).await {
        Ok(_) => step(ex, fleet, opts, rate).await,
        Err(e) => json!({ "error": e }),
    };
    row["rate"] = json!(rate);
    row
}

/// The step failed on p99 alone: nothing lost, nobody disconnected, the schedule kept.
fn latency_only(v: &Value, limit_us: u64) -> bool {
    let get = |k: &str| v[k].as_u64().unwrap_or(0);
    v.get("error").is_none()
        && get("lost") == 0
        && get("disconnected") == 0
        && get("sent") * 100 >= get("intended") * 99
        && get("p99_us") > limit_us
}

fn verdict(v: &Value, limit_us: u64) -> String {
    if let Some(e) = v.get("error") {
        return format!("fail: {}", e.as_str().unwrap_or("error"));
    }
    let get = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut why = Vec::new();
    if get("lost") > 0 {
        why.push(format!("lost {}", get("lost")));
    }
    if get("disconnected") > 0 {
        why.push(format!("{} disconnected", get("disconnected")));
    }
    if get("p99_us") > limit_us {
        why.push(format!("p99 {} ms", get("p99_us") / 1000));
    }
    // A sender that could not keep its schedule means the offered rate was not offered.
    if get("sent") * 100 < get("intended") * 99 {
        why.push(format!("sent {} of {}", get("sent"), get("intended")));
    }
    if why.is_empty() {
        "pass".into()
    } else {
        format!("fail: {}", why.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// Output

fn print_human(v: &Value) {
    let obj = match v.as_object() {
        Some(o) => o,
        None => return,
    };
    println!(
        "{} against {} ({}), {} clients",
        v["mode"].as_str().unwrap_or("?"),
        v["server"].as_str().unwrap_or("?"),
        v["protocol"].as_str().unwrap_or("?"),
        v["clients"]
    );
    // The headline numbers first, in the order BENCHMARKS.md explains them; then the rest.
    const FIRST: &[&str] = &[
        "error",
        "senders",
        "rate",
        "duration_s",
        "bytes",
        "sent",
        "expected",
        "delivered",
        "lost",
        "deliveries_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "disconnected",
        "connected",
        "rss_per_conn_kib",
        "pongs",
        "best_rate",
        "best_deliveries_per_s",
        "server_cpu_s",
        "server_cpu_pct",
        "server_peak_rss_kib",
        "gen_cpu_s",
        "gen_cpu_pct",
    ];
    let skip = ["mode", "server", "protocol", "clients", "steps"];
    let first = FIRST.iter().filter_map(|k| obj.get_key_value(*k));
    let rest = obj
        .iter()
        .filter(|(k, _)| !FIRST.contains(&k.as_str()) && !skip.contains(&k.as_str()));
    for (k, val) in first.chain(rest) {
        println!("  {k:<28} {}", plain(val));
    }
    if let Some(steps) = v["steps"].as_array() {
        println!(
            "  {:>8} {:>12} {:>14} {:>10} {:>8} {:>6}  verdict",
            "rate", "offered/s", "delivered/s", "p99 us", "lost", "disc"
        );
        for s in steps {
            println!(
                "  {:>8} {:>12} {:>14} {:>10} {:>8} {:>6}  {}",
                plain(&s["rate"]),
                plain(&s["offered_per_s"]),
                plain(&s["deliveries_per_s"]),
                plain(&s["p99_us"]),
                plain(&s["lost"]),
                plain(&s["disconnected"]),
                plain(&s["verdict"])
            );
        }
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `bench report FILE...`: the markdown tables BENCHMARKS.md shows, from `--json` outputs.
fn report(files: &[String]) -> ExitCode {
    let mut results = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(text) => {
                for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
                    match serde_json::from_str::<Value>(line) {
                        Ok(v) => results.push(v),
                        Err(e) => eprintln!("bench report: {f}: {e}"),
                    }
                }
            }
            Err(e) => eprintln!("bench report: {f}: {e}"),
        }
    }
    print!("{}", markdown(&results));
    ExitCode::SUCCESS
}

fn markdown(results: &[Value]) -> String {
    let p = plain;
    let mib = |v: &Value| {
        v.as_f64()
            .map_or("-".into(), |k| format!("{:.1}", k / 1024.0))
    };
    let pct = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.0}%"));
    let num = |v: &Value| match v.as_f64() {
        Some(x) if x.fract() == 0.0 || x.abs() >= 1000.0 => group(x.round() as i64),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    };
    let int = |v: &Value| v.as_f64().map_or("-".into(), |x| group(x.round() as i64));
    let err = |v: &Value| {
        v.get("error")
            .map(|e| format!(" **error: {}**", p(e)))
            .unwrap_or_default()
    };
    let mut s = String::new();
    let waited = results
        .iter()
        .flat_map(|r| {
            [
                &r["server_busiest_thread_wait_pct"],
                &r["gen_busiest_thread_wait_pct"],
                &r["best_server_busiest_thread_wait_pct"],
                &r["best_gen_busiest_thread_wait_pct"],
            ]
        })
        .filter_map(Value::as_f64)
        .fold(0.0f64, f64::max);
    if waited > 25.0 {
        let _ = writeln!(
            s,
            "In some rows a measured process waited for its core up to {waited:.0}% of the time \
             (the \"waited\" columns): those rows say as much about the machine as about the \
             server.\n"
        );
    }
    fn of<'a>(results: &'a [Value], mode: &'a str) -> impl Iterator<Item = &'a Value> {
        results.iter().filter(move |r| r["mode"] == mode)
    }

    if of(results, "fanout").next().is_some() {
        s.push_str("#### Fan-out (one room; latency in µs; CPU over the send + drain window)\n\n");
        s.push_str(
        "| server | clients × senders × rate | sent | expected | delivered | lost | deliveries/s \
         | p50 | p99 | p99.9 | max | disconnected | server CPU | server waited | server peak RSS MiB \
         | generator CPU | generator waited |\n",
    );
        s.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for r in of(results, "fanout") {
            let _ = writeln!(
                s,
                "| {}{} | {} × {} × {}/s | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p(&r["server"]),
                err(r),
                num(&r["clients"]),
                p(&r["senders"]),
                num(&r["rate"]),
                num(&r["sent"]),
                num(&r["expected"]),
                num(&r["delivered"]),
                num(&r["lost"]),
                int(&r["deliveries_per_s"]),
                num(&r["p50_us"]),
                num(&r["p99_us"]),
                num(&r["p999_us"]),
                num(&r["max_us"]),
                p(&r["disconnected"]),
                pct(&r["server_cpu_pct"]),
                pct(&r["server_busiest_thread_wait_pct"]),
                mib(&r["server_peak_rss_kib"]),
                pct(&r["gen_cpu_pct"]),
                pct(&r["gen_busiest_thread_wait_pct"]),
            );
        }
    }
    if of(results, "idle").next().is_some() {
        s.push_str("\n#### Idle connections\n\n");
        s.push_str(
            "| server | clients | connected | connect s | listen overflows | settle s \
         | frames while settling | RSS before MiB | RSS after MiB | KiB / connection \
         | answered ping | disconnected | server CPU s | generator CPU s |\n",
        );
        s.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for r in of(results, "idle") {
            let _ = writeln!(
                s,
                "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p(&r["server"]),
                err(r),
                num(&r["clients"]),
                num(&r["connected"]),
                p(&r["connect_s"]),
                num(&r["listen_overflows"]),
                p(&r["settle_s"]),
                num(&r["frames_while_settling"]),
                mib(&r["server_rss_before_kib"]),
                mib(&r["server_rss_after_kib"]),
                p(&r["rss_per_conn_kib"]),
                num(&r["pongs"]),
                p(&r["disconnected"]),
                p(&r["server_cpu_s"]),
                p(&r["gen_cpu_s"]),
            );
        }
    }
    if of(results, "saturate").next().is_some() {
        s.push_str(
        "\n#### Saturation (highest step with no loss, no disconnect, p99 within the limit)\n\n",
    );
        s.push_str(
        "| server | clients × senders | best rate/sender | deliveries/s | p99 µs | server CPU \
         | server waited | generator CPU | generator waited | first failing rate | why it failed |\n",
    );
        s.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n");
        for r in of(results, "saturate") {
            let fail = r["steps"]
                .as_array()
                .and_then(|steps| {
                    // The verdict that counted at the lowest failing rate (the last measured there).
                    let fail = r["first_fail_rate"].as_f64()?;
                    steps
                        .iter()
                        .rev()
                        .find(|st| st["rate"].as_f64() == Some(fail))
                })
                .map(|st| {
                    p(&st["verdict"])
                        .trim_start_matches("fail: ")
                        .replace('|', "/")
                })
                .unwrap_or_else(|| "(none within --max-steps)".into());
            let _ = writeln!(
                s,
                "| {}{} | {} × {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p(&r["server"]),
                err(r),
                num(&r["clients"]),
                p(&r["senders"]),
                num(&r["best_rate"]),
                int(&r["best_deliveries_per_s"]),
                num(&r["best_p99_us"]),
                pct(&r["best_server_cpu_pct"]),
                pct(&r["best_server_busiest_thread_wait_pct"]),
                pct(&r["best_gen_cpu_pct"]),
                pct(&r["best_gen_busiest_thread_wait_pct"]),
                num(&r["first_fail_rate"]),
                fail,
            );
        }
    }
    s
}

/// 1234567 → "1,234,567".
fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}
