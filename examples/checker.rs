//! History checker (issue 25), in the spirit of Jepsen: a test tool, not part of the server.
//!
//! It starts, on loopback, one `redis-server`, `--nodes` smolchat nodes (real processes, each
//! talking to Redis through a TCP proxy of its own that can blackhole the link) and `--clients`
//! WebSocket clients spread over the nodes. Every client joins the same few rooms and says
//! uniquely tagged messages (`c3-m17`); it records every event it receives and every
//! acknowledgement (its own `message` echo, with its id), reconnects after a drop (to the next
//! node) and recovers with `join` + `since`/`epoch`; clients also leave and come back on their
//! own. One more client uses the HTTP API: it publishes (into the same rooms and into `api0`,
//! which only the API uses) and reads the rooms back with `?since=`. Meanwhile faults are
//! injected, one at a time, chosen at random among `--faults`. At the end the faults stop, every process is back,
//! the clients stop talking and resync every room once more (the final recovery), and the
//! history is checked, per room:
//!
//! 1. no `(epoch, id)` names two different messages (across all clients), and no message
//!    shows under two `(epoch, id)`s (1b);
//! 2. each member sees, within one epoch, ids that only increase, without a gap it was not
//!    told of (a new view starts only with a `room` event of another epoch or
//!    `complete: false`);
//! 3. every recovery answered `complete: true` holds every acknowledged message of its epoch
//!    with an id in (since, last_id];
//! 4. every acknowledged message reaches every member whose unbroken view of that epoch spans
//!    its id (a member whose view broke was told it may have missed it).
//!
//! It prints the counts of each violation kind with a few examples and exits 1 on any.
//! `scripts/checker.sh` builds the server and this tool and runs it; see docs/scale-out.md.
//!
//! ```sh
//! cargo build --features redis --bin smolchat --example checker
//! target/debug/examples/checker --duration 120 --faults all --seed 1
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_lite::{FutureExt, StreamExt};
use serde_json::{Value, json};
use smol::{Async, LocalExecutor, Timer};

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    AofAlways,
    AofEverysec,
    Rollback,
    Flush,
    NodeKill,
    NodeFreeze,
    LinkCut,
}

const ALL_FAULTS: [Fault; 7] = [
    Fault::AofAlways,
    Fault::AofEverysec,
    Fault::Rollback,
    Fault::Flush,
    Fault::NodeKill,
    Fault::NodeFreeze,
    Fault::LinkCut,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::AofAlways => "aof-always",
            Fault::AofEverysec => "aof-everysec",
            Fault::Rollback => "rollback",
            Fault::Flush => "flush",
            Fault::NodeKill => "node-kill",
            Fault::NodeFreeze => "node-freeze",
            Fault::LinkCut => "link-cut",
        }
    }
}

struct Options {
    duration: u64,
    faults: Vec<Fault>,
    seed: u64,
    nodes: usize,
    clients: usize,
    rooms: usize,
    /// Pause between two faults, in seconds: a random value in [pause/2, pause].
    pause: f64,
    max_faults: usize,
    bin: PathBuf,
    keep: bool,
    /// One node with durable history (`--data-dir`) instead of nodes sharing Redis.
    store: bool,
}

const USAGE: &str = "options: --duration SECS (120) --faults LIST|all|none (all: aof-always,\
aof-everysec,rollback,flush,node-kill,node-freeze,link-cut) --seed N (time) --nodes N (2) \
--clients N (6) --rooms N (3) --pause SECS (6) --max-faults N (1000) \
--bin PATH (target/debug/smolchat) --keep (keep the run directory) \
--store (one node with --data-dir, no Redis; faults: node-kill,node-freeze)";

fn options() -> Options {
    let mut o = Options {
        duration: 120,
        faults: ALL_FAULTS.to_vec(),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
        nodes: 2,
        clients: 6,
        rooms: 3,
        pause: 6.0,
        max_faults: 1000,
        bin: PathBuf::from("target/debug/smolchat"),
        keep: false,
        store: false,
    };
    let mut args = std::env::args().skip(1);
    let usage = |what: &str| -> ! {
        eprintln!("checker: {what}\n{USAGE}");
        std::process::exit(2)
    };
    while let Some(flag) = args.next() {
        if flag == "--keep" {
            o.keep = true;
            continue;
        }
        if flag == "--store" {
            o.store = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: &str| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--duration" => o.duration = number(&value),
            "--seed" => o.seed = number(&value),
            "--nodes" => o.nodes = number(&value).clamp(1, 8) as usize,
            "--clients" => o.clients = number(&value).clamp(1, 200) as usize,
            "--rooms" => o.rooms = number(&value).clamp(1, 20) as usize,
            "--max-faults" => o.max_faults = number(&value) as usize,
            "--pause" => {
                o.pause = value
                    .parse()
                    .unwrap_or_else(|_| usage("--pause: not a number"))
            }
            "--bin" => o.bin = PathBuf::from(value),
            "--faults" => {
                o.faults = match value.as_str() {
                    "all" => ALL_FAULTS.to_vec(),
                    "none" | "" => Vec::new(),
                    list => list
                        .split(',')
                        .map(|name| {
                            *ALL_FAULTS
                                .iter()
                                .find(|f| f.name() == name)
                                .unwrap_or_else(|| usage(&format!("unknown fault {name}")))
                        })
                        .collect(),
                }
            }
            other => usage(&format!("unknown option {other}")),
        }
    }
    if o.store {
        // A single node and its store: the faults that are not about Redis.
        o.nodes = 1;
        let redis = |f: &Fault| !matches!(f, Fault::NodeKill | Fault::NodeFreeze);
        if o.faults.len() == ALL_FAULTS.len() {
            o.faults.retain(|f| !redis(f));
        } else if o.faults.iter().any(redis) {
            usage("--store takes only the faults node-kill and node-freeze");
        }
    }
    o
}

/// xorshift64*: reproducible from `--seed` (the timing of a run is not).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// A duration uniformly in [lo, hi] seconds.
    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        let f = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        Duration::from_secs_f64(lo + (hi - lo) * f)
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: Redis, the nodes, the proxies

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn log_file(dir: &Path, name: &str) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status();
}

/// Sends one inline command to Redis on `port` and returns the raw reply ("" if unreachable).
fn redis_command(port: u16, line: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(format!("{line}\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The HTTP status of `GET path` on a node (0 if it does not answer).
fn http_status(port: u16, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

const API_KEY: &str = "checker-api-key-0123456789";

struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    redis_port: u16,
    redis: Option<Child>,
    /// `--store`: one node with `--data-dir`, no Redis and no proxies.
    store: bool,
    /// How Redis keeps its data now; a restart keeps it, as an operator's config file would.
    persistence: Persistence,
    nodes: Vec<NodeProc>,
    proxies: Vec<Proxy>,
    /// Nodes started so far (`--store` alternates the sync interval).
    restarts: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Persistence {
    /// AOF, fsynced before every reply: a restart loses no acknowledged write.
    AofAlways,
    /// AOF, fsynced once a second: a power loss loses up to a second of writes.
    AofEverysec,
    /// RDB snapshots only (after a rollback, until the next AOF fault turns AOF on).
    Rdb,
}

struct NodeProc {
    port: u16,
    child: Option<Child>,
    frozen: bool,
}

impl Cluster {
    fn start(dir: &Path, bin: &Path, nodes: usize, store: bool) -> Cluster {
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            redis_port: free_port(),
            redis: None,
            store,
            persistence: Persistence::AofAlways,
            nodes: Vec::new(),
            proxies: Vec::new(),
            restarts: 0,
        };
        std::fs::write(dir.join("api-key"), API_KEY).expect("api key file");
        if !store {
            c.start_redis();
        }
        for _ in 0..nodes {
            if !store {
                c.proxies.push(Proxy::start(c.redis_port));
            }
            c.nodes.push(NodeProc {
                port: free_port(),
                child: None,
                frozen: false,
            });
        }
        for i in 0..nodes {
            c.start_node(i);
        }
        for i in 0..nodes {
            c.wait_healthy(i, Duration::from_secs(30));
        }
        c
    }

    /// Starts Redis with the persistence it had (RDB: it loads `dump.rdb`).
    fn start_redis(&mut self) {
        assert!(self.redis.is_none());
        let (aof, fsync) = match self.persistence {
            Persistence::AofAlways => ("yes", "always"),
            Persistence::AofEverysec => ("yes", "everysec"),
            Persistence::Rdb => ("no", "always"),
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.redis_port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", aof])
            .args(["--appendfsync", fsync])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log_file(&self.dir, "redis.log"))
            .stderr(log_file(&self.dir, "redis.log"))
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.redis = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !redis_command(self.redis_port, "PING").starts_with("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Switches the running Redis to `p` (AOF on first, if it was off: the rewrite writes
    /// the whole data set).
    fn set_persistence(&mut self, p: Persistence) {
        if self.persistence == Persistence::Rdb && p != Persistence::Rdb {
            redis_command(self.redis_port, "CONFIG SET appendonly yes");
            self.wait_aof_rewritten();
        }
        match p {
            Persistence::AofAlways => {
                redis_command(self.redis_port, "CONFIG SET appendfsync always")
            }
            Persistence::AofEverysec => {
                redis_command(self.redis_port, "CONFIG SET appendfsync everysec")
            }
            Persistence::Rdb => redis_command(self.redis_port, "CONFIG SET appendonly no"),
        };
        self.persistence = p;
    }

    fn wait_aof_rewritten(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = redis_command(self.redis_port, "INFO persistence");
            if info.contains("aof_enabled:1")
                && info.contains("aof_rewrite_in_progress:0")
                && info.contains("aof_rewrite_scheduled:0")
            {
                return;
            }
            assert!(Instant::now() < deadline, "the AOF rewrite did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_redis(&mut self) {
        if let Some(mut child) = self.redis.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The AOF file Redis appends to now (multi-part AOF, Redis 7).
    fn incr_aof(&self) -> Option<PathBuf> {
        let aof_dir = self.dir.join("appendonlydir");
        let manifest = std::fs::read_to_string(aof_dir.join("appendonly.aof.manifest")).ok()?;
        let line = manifest.lines().rfind(|l| l.ends_with("type i"))?;
        Some(aof_dir.join(line.split(' ').nth(1)?))
    }

    fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none());
        let mut command = Command::new(&self.bin);
        if self.store {
            // A commit every 100 ms, or every one back to back: both ways of keeping up.
            let sync = if self.restarts.is_multiple_of(2) {
                "100ms"
            } else {
                "0"
            };
            self.restarts += 1;
            command
                .arg("--data-dir")
                .arg(self.dir.join("store"))
                .args(["--sync-interval", sync]);
        } else {
            command
                .args(["--redis", &self.proxies[i].url()])
                .args(["--redis-heartbeat", "1s"]);
        }
        let node = &mut self.nodes[i];
        let child = command
            .args(["--listen", &format!("127.0.0.1:{}", node.port)])
            .args(["--rate-limit", "0"])
            .args(["--history", "200"])
            .args(["--history-bytes", "262144"])
            .args(["--queue", "1024"])
            .args(["--queue-bytes", "1048576"])
            .args(["--log-level", "info"])
            .arg("--api-key-file")
            .arg(self.dir.join("api-key"))
            .args(["--api-rate-limit", "0"])
            .stdout(log_file(&self.dir, &format!("node{i}.log")))
            .stderr(log_file(&self.dir, &format!("node{i}.log")))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (build it first)", self.bin.display()));
        node.child = Some(child);
        node.frozen = false;
    }

    fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            if node.frozen {
                signal(&child, "CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        node.frozen = false;
    }

    fn freeze_node(&mut self, i: usize, frozen: bool) {
        let node = &mut self.nodes[i];
        if let Some(child) = &node.child {
            signal(child, if frozen { "STOP" } else { "CONT" });
            node.frozen = frozen;
        }
    }

    fn wait_healthy(&self, i: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while http_status(self.nodes[i].port, "/healthz") != 200 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Undoes every fault still in effect: Redis up, every node running and awake, every link
    /// open.
    fn heal_all(&mut self) {
        if self.redis.is_none() && !self.store {
            self.start_redis();
        }
        for i in 0..self.nodes.len() {
            if !self.store && *self.proxies[i].state.cut.lock().unwrap() {
                self.proxies[i].heal();
            }
            if self.nodes[i].frozen {
                self.freeze_node(i, false);
            }
            if self.nodes[i].child.is_none() {
                self.start_node(i);
            }
        }
    }

    fn stop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        self.kill_redis();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy between one node and Redis. `cut` blackholes the link: bytes are held, no
/// socket is closed (a node cut off from Redis with its connection open); `heal` closes every
/// connection through it (what was held is lost) and forwards again.
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    cut: Mutex<bool>,
    changed: Condvar,
    links: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            cut: Mutex::new(false),
            changed: Condvar::new(),
            links: Mutex::new(Vec::new()),
        });
        let accepting = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if *accepting.cut.lock().unwrap() {
                    // Blackholed: keep the socket open, forward nothing, until the heal.
                    accepting.links.lock().unwrap().push(client);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue; // Redis is down: the node sees the connection close
                };
                let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                {
                    let mut links = accepting.links.lock().unwrap();
                    links.push(c2);
                    links.push(u2);
                }
                let (Ok(c3), Ok(u3)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                for (from, to) in [(c3, u3), (upstream, client)] {
                    let state = accepting.clone();
                    std::thread::spawn(move || pump(from, to, &state));
                }
            }
        });
        Proxy { port, state }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cut(&self) {
        *self.state.cut.lock().unwrap() = true;
        self.state.changed.notify_all();
    }

    fn heal(&self) {
        let mut cut = self.state.cut.lock().unwrap();
        for s in self.state.links.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        *cut = false;
        self.state.changed.notify_all();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, state: &ProxyState) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut cut = state.cut.lock().unwrap();
            while *cut {
                cut = state.changed.wait(cut).unwrap();
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// Faults

/// One fault, bounded in time (a few seconds). Returns a line for the fault log.
fn inject(c: &mut Cluster, fault: Fault, rng: &mut Rng) -> String {
    match fault {
        Fault::AofAlways => {
            c.set_persistence(Persistence::AofAlways);
            c.kill_redis();
            std::thread::sleep(rng.secs(0.5, 3.0));
            c.start_redis();
            "redis SIGKILL, restart (appendfsync always)".into()
        }
        Fault::AofEverysec => {
            // With `everysec` Redis still write()s every change at once: a SIGKILL alone loses
            // nothing. What `everysec` risks is a power loss, which keeps only what was
            // fsynced: about one second less. So: SIGKILL, and cut the AOF back to its length
            // of a second before.
            c.set_persistence(Persistence::AofEverysec);
            std::thread::sleep(rng.secs(0.5, 2.0));
            let aof = c.incr_aof();
            let synced = aof
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.len());
            std::thread::sleep(Duration::from_secs(1));
            c.kill_redis();
            let mut lost = 0;
            if let (Some(aof), Some(synced)) = (aof, synced) {
                let now = std::fs::metadata(&aof).map(|m| m.len()).unwrap_or(0);
                lost = now.saturating_sub(synced);
                if let Ok(f) = OpenOptions::new().write(true).open(&aof) {
                    let _ = f.set_len(synced.min(now));
                }
            }
            std::thread::sleep(rng.secs(0.5, 2.0));
            c.start_redis();
            format!(
                "redis SIGKILL, AOF cut back by {lost} bytes (the last second of appendfsync everysec), restart"
            )
        }
        Fault::Rollback => {
            let saved = redis_command(c.redis_port, "SAVE");
            let snapshot = c.dir.join("snapshot.rdb");
            let copied = saved.starts_with("+OK")
                && std::fs::copy(c.dir.join("dump.rdb"), &snapshot).is_ok();
            let wait = rng.secs(2.0, 8.0);
            std::thread::sleep(wait);
            if !copied {
                return format!("rollback skipped: SAVE answered {saved:?}");
            }
            c.kill_redis();
            let _ = std::fs::remove_dir_all(c.dir.join("appendonlydir"));
            let _ = std::fs::copy(&snapshot, c.dir.join("dump.rdb"));
            std::thread::sleep(rng.secs(0.2, 1.0));
            // An RDB user's Redis: it stays on snapshots until an AOF fault turns AOF on.
            c.persistence = Persistence::Rdb;
            c.start_redis();
            format!(
                "redis SIGKILL, restarted from the RDB snapshot of {:.1} s before",
                wait.as_secs_f64()
            )
        }
        Fault::Flush => {
            let reply = redis_command(c.redis_port, "FLUSHALL");
            format!("redis FLUSHALL: {}", reply.trim())
        }
        Fault::NodeKill => {
            let i = rng.below(c.nodes.len());
            c.kill_node(i);
            std::thread::sleep(rng.secs(0.5, 3.0));
            c.start_node(i);
            let healthy = c.wait_healthy(i, Duration::from_secs(20));
            format!("node {i} SIGKILL, restart (healthy: {healthy})")
        }
        Fault::NodeFreeze => {
            let i = rng.below(c.nodes.len());
            let pause = rng.secs(1.0, 7.0);
            c.freeze_node(i, true);
            std::thread::sleep(pause);
            c.freeze_node(i, false);
            format!("node {i} SIGSTOP for {:.1} s, SIGCONT", pause.as_secs_f64())
        }
        Fault::LinkCut => {
            let i = rng.below(c.nodes.len());
            let pause = rng.secs(1.0, 7.0);
            c.proxies[i].cut();
            std::thread::sleep(pause);
            c.proxies[i].heal();
            format!(
                "node {i}'s link to redis blackholed for {:.1} s, then closed and restored",
                pause.as_secs_f64()
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients and what they record

const RUN: u8 = 0;
const QUIET: u8 = 1;
const FINAL: u8 = 2;
const STOP: u8 = 3;

#[derive(Debug, Clone)]
enum Ev {
    Connected,
    ConnectFailed(String),
    Dropped(String),
    /// A `room` event; `since`: the cursor the join carried; `fin`: answer to a final resync.
    Room {
        room: String,
        epoch: String,
        last_id: u64,
        complete: Option<bool>,
        since: Option<(String, u64)>,
        fin: bool,
        /// An HTTP API read (`GET ...?since=`), which carries no epoch: `complete` is about
        /// ids only, and the reader compares epochs itself.
        api: bool,
    },
    Msg {
        room: String,
        id: u64,
        text: String,
    },
    /// The sender's own message came back: acknowledged with this id.
    Ack {
        room: String,
        id: u64,
        text: String,
    },
    Error {
        what: String,
        code: String,
    },
}

#[derive(Debug, Clone)]
struct Rec {
    ms: u64,
    node: usize,
    ev: Ev,
}

struct Shared {
    start: Instant,
    phase: Arc<AtomicU8>,
    finals_done: Arc<AtomicUsize>,
    node_ports: Vec<u16>,
    rooms: Vec<String>,
    api_key: String,
}

enum Pending {
    Join {
        room: String,
        since: Option<(String, u64)>,
        fin: bool,
    },
    Say {
        room: String,
        text: String,
    },
}

struct ClientState {
    id: usize,
    /// Per room: (epoch, last id shown).
    cursor: HashMap<String, (String, u64)>,
    said: u64,
    reconnects: usize,
    final_done: bool,
    log: Vec<Rec>,
}

impl ClientState {
    fn record(&mut self, sh: &Shared, node: usize, ev: Ev) {
        self.log.push(Rec {
            ms: sh.start.elapsed().as_millis() as u64,
            node,
            ev,
        });
    }
}

type Ws = async_tungstenite::WebSocketStream<Async<TcpStream>>;

async fn connect(port: u16) -> Result<Ws, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let tcp = Async::<TcpStream>::connect(addr)
        .or(async {
            Timer::after(Duration::from_secs(5)).await;
            Err(std::io::Error::other("connect timeout"))
        })
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.get_ref().set_nodelay(true);
    let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .or(async {
            Timer::after(Duration::from_secs(5)).await;
            Err(async_tungstenite::tungstenite::Error::ConnectionClosed)
        })
        .await
        .map_err(|e| match e {
            async_tungstenite::tungstenite::Error::Http(r) => format!("HTTP {}", r.status()),
            e => e.to_string(),
        })?;
    Ok(ws)
}

async fn run_client(sh: Rc<Shared>, st: Rc<RefCell<ClientState>>, seed: u64) {
    let mut rng = Rng::new(seed);
    let nodes = sh.node_ports.len();
    loop {
        if sh.phase.load(SeqCst) == STOP {
            return;
        }
        let (node, id) = {
            let s = st.borrow();
            ((s.id + s.reconnects) % nodes, s.id)
        };
        let ws = match connect(sh.node_ports[node]).await {
            Ok(ws) => ws,
            Err(e) => {
                {
                    let mut s = st.borrow_mut();
                    s.record(&sh, node, Ev::ConnectFailed(e));
                    s.reconnects += 1;
                }
                Timer::after(rng.secs(0.1, 0.5)).await;
                continue;
            }
        };
        st.borrow_mut().record(&sh, node, Ev::Connected);
        let why = session(&sh, &st, ws, node, id, &mut rng).await;
        if why == "stop" {
            return;
        }
        let away = if why == "churn" {
            rng.secs(0.2, 3.0)
        } else {
            rng.secs(0.05, 0.3)
        };
        {
            let mut s = st.borrow_mut();
            s.record(&sh, node, Ev::Dropped(why));
            s.reconnects += 1;
        }
        Timer::after(away).await;
    }
}

/// One HTTP call (`Connection: close`) to a node's API: the status and the JSON body.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> Result<(u16, Value), String> {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    async {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut tcp = Async::<TcpStream>::connect(addr).await.map_err(|e| e.to_string())?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n"
        );
        if let Some(body) = body {
            let _ = write!(
                request,
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        } else {
            request.push_str("\r\n");
        }
        tcp.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
    }
    .or(async {
        Timer::after(Duration::from_secs(10)).await;
        Err("no answer within 10 s".to_string())
    })
    .await
}

/// The HTTP API client: publishes tagged messages (`a-m5`) into `api0`, a room no WebSocket
/// client is in, and into the members' rooms, on a random node each time; after each publish
/// it reads the room (`GET ...?since=CURSOR`, on a random node) like a member recovering, and
/// takes the publish as acknowledged in the epoch of that read if the read holds it.
async fn run_api(sh: Rc<Shared>, st: Rc<RefCell<ClientState>>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut rooms = vec!["api0".to_string()];
    rooms.extend(sh.rooms.iter().cloned());
    let mut final_done = false;
    loop {
        let phase = sh.phase.load(SeqCst);
        if phase == STOP {
            return;
        }
        let reads: Vec<(String, Option<(u64, String)>)> = if phase == RUN {
            let room = rooms[rng.below(rooms.len())].clone();
            let text = {
                let mut s = st.borrow_mut();
                s.said += 1;
                format!("a-m{}", s.said)
            };
            let node = rng.below(sh.node_ports.len());
            let body = json!({"text": text, "from": "checker"}).to_string();
            let path = format!("/api/rooms/{room}/messages");
            match http(sh.node_ports[node], "POST", &path, &sh.api_key, Some(&body)).await {
                Ok((201, v)) => {
                    let id = v["id"].as_u64().unwrap_or(0);
                    vec![(room, Some((id, text)))]
                }
                Ok((status, v)) => {
                    let code = format!("{status} {}", v["error"].as_str().unwrap_or_default());
                    let what = format!("publish {room} {text}");
                    st.borrow_mut().record(&sh, node, Ev::Error { what, code });
                    vec![(room, None)]
                }
                Err(e) => {
                    let what = format!("publish {room} {text}");
                    st.borrow_mut()
                        .record(&sh, node, Ev::Error { what, code: e });
                    vec![(room, None)]
                }
            }
        } else if phase == FINAL && !final_done {
            rooms.iter().map(|r| (r.clone(), None)).collect()
        } else {
            Vec::new()
        };
        let fin = phase == FINAL;
        let mut all_read = true;
        let mut reads = reads;
        let mut next = 0;
        while next < reads.len() {
            let (room, published) = reads[next].clone();
            next += 1;
            let node = rng.below(sh.node_ports.len());
            let since = st.borrow().cursor.get(&room).cloned();
            // A read from the start of a life is not read again.
            let since_was_read = since.as_ref().is_some_and(|c| c.1 > 0);
            let path = format!(
                "/api/rooms/{room}/messages?since={}",
                since.as_ref().map(|c| c.1).unwrap_or(0)
            );
            let answer = http(sh.node_ports[node], "GET", &path, &sh.api_key, None).await;
            let mut s = st.borrow_mut();
            let v = match answer {
                Ok((200, v)) => v,
                Ok((status, v)) => {
                    let code = format!("{status} {}", v["error"].as_str().unwrap_or_default());
                    s.record(
                        &sh,
                        node,
                        Ev::Error {
                            what: format!("read {room}"),
                            code,
                        },
                    );
                    all_read = false;
                    continue;
                }
                Err(e) => {
                    s.record(
                        &sh,
                        node,
                        Ev::Error {
                            what: format!("read {room}"),
                            code: e,
                        },
                    );
                    all_read = false;
                    continue;
                }
            };
            let epoch = v["epoch"].as_str().unwrap_or_default().to_string();
            let last_id = v["last_id"].as_u64().unwrap_or(0);
            s.record(
                &sh,
                node,
                Ev::Room {
                    room: room.clone(),
                    epoch: epoch.clone(),
                    last_id,
                    complete: v["complete"].as_bool(),
                    since: since.clone(),
                    fin,
                    api: true,
                },
            );
            let mut acked = None;
            for m in v["messages"].as_array().into_iter().flatten() {
                let id = m["id"].as_u64().unwrap_or(0);
                let text = m["text"].as_str().unwrap_or_default().to_string();
                if published.as_ref().is_some_and(|p| p.0 == id && p.1 == text) {
                    acked = Some((id, text.clone()));
                }
                s.record(
                    &sh,
                    node,
                    Ev::Msg {
                        room: room.clone(),
                        id,
                        text,
                    },
                );
            }
            // A new epoch: the cursor is from another life of the room, whose ids mean
            // nothing now: read this life again from its start (once).
            let new_life = since.as_ref().is_some_and(|c| c.0 != epoch) && since_was_read;
            if let Some((id, text)) = acked {
                s.record(
                    &sh,
                    node,
                    Ev::Ack {
                        room: room.clone(),
                        id,
                        text,
                    },
                );
            } else if new_life {
                reads.push((room.clone(), published));
                s.cursor.insert(room, (epoch, 0));
                continue;
            } else if let Some((id, text)) = published {
                // Answered, but not found by the read that followed: not taken as acknowledged.
                s.record(
                    &sh,
                    node,
                    Ev::Error {
                        what: format!("publish {room} {text} as id {id}"),
                        code: "not found by the next read".into(),
                    },
                );
            }
            s.cursor.insert(room, (epoch, last_id));
        }
        if phase == FINAL && !final_done && all_read {
            final_done = true;
            sh.finals_done.fetch_add(1, SeqCst);
        }
        Timer::after(rng.secs(0.1, 0.4)).await;
    }
}

/// One connection: join (or recover) every room, then say messages until the connection drops
/// or the run ends. Returns why it ended.
async fn session(
    sh: &Shared,
    st: &RefCell<ClientState>,
    mut ws: Ws,
    node: usize,
    id: usize,
    rng: &mut Rng,
) -> String {
    // Rooms to (re)join on this connection, and whether the joins are the final resync.
    let mut to_join: Vec<String> = sh.rooms.clone();
    let mut joined: Vec<String> = Vec::new();
    let mut pending: Option<(Pending, Instant)> = None;
    let mut next_action = Instant::now();
    // Clients also leave on their own now and then (close 1000) and come back a little later,
    // so that recoveries happen with or without faults.
    let leave_at = Instant::now() + rng.secs(5.0, 30.0);
    let mut final_joins = false;
    let mut own_texts: HashMap<String, ()> = HashMap::new();
    loop {
        let phase = sh.phase.load(SeqCst);
        if phase == STOP {
            let _ = ws.close(None).await;
            return "stop".into();
        }
        if pending.is_none() && phase == FINAL && !final_joins {
            // The final resync: every room again, on this connection.
            final_joins = true;
            to_join = sh.rooms.clone();
        }
        if pending.is_none()
            && final_joins
            && to_join.is_empty()
            && !st.borrow().final_done
            && phase >= FINAL
        {
            st.borrow_mut().final_done = true;
            sh.finals_done.fetch_add(1, SeqCst);
        }
        let wake = match &pending {
            Some((_, deadline)) => *deadline,
            None if phase == RUN => next_action.min(leave_at),
            None => next_action,
        };
        enum Step {
            Frame(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
            Timer,
        }
        let step = async { Step::Frame(ws.next().await) }
            .or(async {
                Timer::at(wake).await;
                Step::Timer
            })
            .await;
        match step {
            Step::Frame(None) => return "connection closed".into(),
            Step::Frame(Some(Err(e))) => return format!("connection lost: {e}"),
            Step::Frame(Some(Ok(Message::Close(frame)))) => {
                return match frame {
                    Some(f) => format!("close {} {}", u16::from(f.code), f.reason),
                    None => "close without code".into(),
                };
            }
            Step::Frame(Some(Ok(Message::Text(t)))) => {
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                let mut s = st.borrow_mut();
                let room = v["room"].as_str().unwrap_or_default().to_string();
                let tracked = sh.rooms.contains(&room);
                match v["type"].as_str().unwrap_or_default() {
                    "room" if tracked => {
                        let epoch = v["epoch"].as_str().unwrap_or_default().to_string();
                        let last_id = v["last_id"].as_u64().unwrap_or(0);
                        let complete = v["complete"].as_bool();
                        let (since, fin) = match &pending {
                            Some((
                                Pending::Join {
                                    room: r,
                                    since,
                                    fin,
                                },
                                _,
                            )) if *r == room => (since.clone(), *fin),
                            _ => (None, false),
                        };
                        if matches!(&pending, Some((Pending::Join { room: r, .. }, _)) if *r == room)
                        {
                            pending = None;
                            if !joined.contains(&room) {
                                joined.push(room.clone());
                            }
                        }
                        // The cursor: a continuing chain replays from `since`; otherwise the
                        // client accepts what it is given (it was told).
                        let continuing =
                            complete == Some(true) && since.as_ref().is_some_and(|c| c.0 == epoch);
                        let cursor_id = if continuing {
                            since.as_ref().map(|c| c.1).unwrap_or(0)
                        } else {
                            last_id
                        };
                        s.cursor.insert(room.clone(), (epoch.clone(), cursor_id));
                        s.record(
                            sh,
                            node,
                            Ev::Room {
                                room,
                                epoch,
                                last_id,
                                complete,
                                since,
                                fin,
                                api: false,
                            },
                        );
                    }
                    "message" if tracked => {
                        let mid = v["id"].as_u64().unwrap_or(0);
                        let text = v["text"].as_str().unwrap_or_default().to_string();
                        if let Some(c) = s.cursor.get_mut(&room) {
                            c.1 = c.1.max(mid);
                        }
                        s.record(
                            sh,
                            node,
                            Ev::Msg {
                                room: room.clone(),
                                id: mid,
                                text: text.clone(),
                            },
                        );
                        if own_texts.remove(&text).is_some() {
                            s.record(
                                sh,
                                node,
                                Ev::Ack {
                                    room,
                                    id: mid,
                                    text: text.clone(),
                                },
                            );
                        }
                        if matches!(&pending, Some((Pending::Say { text: t, .. }, _)) if *t == text)
                        {
                            pending = None;
                        }
                    }
                    "error" => {
                        let code = v["code"].as_str().unwrap_or_default().to_string();
                        let what = match pending.take() {
                            Some((Pending::Join { room, .. }, _)) => {
                                // Not joined: try again shortly.
                                to_join.push(room.clone());
                                format!("join {room}")
                            }
                            Some((Pending::Say { room, text }, _)) => {
                                own_texts.remove(&text);
                                format!("say {room} {text}")
                            }
                            None => "unsolicited".into(),
                        };
                        s.record(sh, node, Ev::Error { what, code });
                        next_action = Instant::now() + Duration::from_millis(300);
                    }
                    _ => {}
                }
            }
            Step::Frame(Some(Ok(_))) => {}
            Step::Timer => {
                if pending.is_some() {
                    return "no answer within 15 s".into();
                }
                let now = Instant::now();
                if phase == RUN && now >= leave_at {
                    let _ = ws.close(None).await;
                    return "churn".into();
                }
                if let Some(room) = (!to_join.is_empty()).then(|| to_join.remove(0)) {
                    let since = st.borrow().cursor.get(&room).cloned();
                    let mut cmd = json!({"type": "join", "room": room});
                    if let Some((epoch, last)) = &since {
                        cmd["since"] = json!(last);
                        cmd["epoch"] = json!(epoch);
                    }
                    pending = Some((
                        Pending::Join {
                            room,
                            since,
                            fin: final_joins,
                        },
                        now + Duration::from_secs(15),
                    ));
                    if let Err(e) = ws.send(Message::Text(cmd.to_string().into())).await {
                        return format!("send failed: {e}");
                    }
                    next_action = now;
                } else if phase == RUN && !joined.is_empty() {
                    let room = joined[rng.below(joined.len())].clone();
                    let text = {
                        let mut s = st.borrow_mut();
                        s.said += 1;
                        format!("c{id}-m{}", s.said)
                    };
                    own_texts.insert(text.clone(), ());
                    let cmd = json!({"type": "say", "room": room, "text": text});
                    pending = Some((Pending::Say { room, text }, now + Duration::from_secs(15)));
                    if let Err(e) = ws.send(Message::Text(cmd.to_string().into())).await {
                        return format!("send failed: {e}");
                    }
                    next_action = now + rng.secs(0.1, 0.4);
                } else {
                    next_action = now + Duration::from_millis(100);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks

const KINDS: [(&str, &str); 5] = [
    ("1", "an (epoch, id) names two different messages"),
    ("1b", "one message under two (epoch, id)s"),
    (
        "2",
        "a member saw ids go back, repeat or skip within one epoch without being told",
    ),
    (
        "3",
        "a recovery answered complete:true misses an acknowledged message of its range",
    ),
    (
        "4",
        "an acknowledged message did not reach a member whose unbroken view spans it",
    ),
];

#[derive(Default)]
struct Violations {
    counts: BTreeMap<&'static str, u64>,
    examples: BTreeMap<&'static str, Vec<String>>,
}

impl Violations {
    fn add(&mut self, kind: &'static str, example: impl FnOnce() -> String) {
        *self.counts.entry(kind).or_default() += 1;
        let list = self.examples.entry(kind).or_default();
        if list.len() < 5 {
            list.push(example());
        }
    }
    fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// A member's unbroken view of one epoch of a room: from a join (or a recovery that was not
/// `complete: true` in the same epoch) to the next such.
struct Chain {
    client: usize,
    epoch: String,
    /// What it received, by id.
    ids: HashMap<u64, String>,
    /// The first id it is answerable for: the first id received, or last_id + 1.
    start: u64,
    /// The last `room` event of the chain answered the final resync: the view runs to the end.
    open_ended: bool,
}

/// A recovery answered `complete: true` in the cursor's epoch.
struct Recovery {
    client: usize,
    node: usize,
    ms: u64,
    epoch: String,
    since: u64,
    last_id: u64,
    replay: HashMap<u64, String>,
    /// The connection dropped before the replay reached last_id: not checked.
    cut_short: bool,
}

struct Ack {
    client: usize,
    ms: u64,
    epoch: String,
    id: u64,
    text: String,
}

fn check(logs: &[Vec<Rec>], rooms: &[String]) -> (Violations, String) {
    let mut v = Violations::default();
    let mut stats = String::new();
    for room in rooms {
        let mut chains: Vec<Chain> = Vec::new();
        let mut recoveries: Vec<Recovery> = Vec::new();
        let mut acks: Vec<Ack> = Vec::new();
        // (epoch, id) -> (text, client, ms); text -> (epoch, id)
        let mut named: HashMap<(String, u64), (String, usize, u64)> = HashMap::new();
        let mut placed: HashMap<String, (String, u64)> = HashMap::new();
        // Each conflict is counted once, however many members saw it.
        let mut reported: std::collections::HashSet<(String, u64, String)> = Default::default();
        for (client, log) in logs.iter().enumerate() {
            let mut chain: Option<Chain> = None;
            let mut expected: Option<u64> = None;
            let mut recovery: Option<Recovery> = None;
            let mut first_in_chain = true;
            // The last id of a replay answered `complete: false`: a gap that starts within it
            // is told (the messages there were lost: a single node's crash loses its last
            // unstored ones), also when the replay ends before that last id.
            let mut told_until: Option<u64> = None;
            for rec in log {
                match &rec.ev {
                    Ev::Room {
                        room: r,
                        epoch,
                        last_id,
                        complete,
                        since,
                        fin,
                        api,
                    } if r == room => {
                        if let Some(rc) = recovery.take() {
                            recoveries.push(rc);
                        }
                        told_until = (*complete == Some(false)).then_some(*last_id);
                        let same_epoch = since.as_ref().is_some_and(|s| &s.0 == epoch);
                        if *complete == Some(true) && since.is_some() && !same_epoch && !api {
                            v.add("2", || {
                                format!(
                                    "{room}: client {client} (node {}) at {} ms: complete:true for epoch {epoch} answering a cursor of epoch {:?}",
                                    rec.node, rec.ms, since
                                )
                            });
                        }
                        let continuing = *complete == Some(true)
                            && same_epoch
                            && chain.as_ref().is_some_and(|c| &c.epoch == epoch);
                        if continuing {
                            let s = since.as_ref().map(|s| s.1).unwrap_or(0);
                            if *last_id < s {
                                v.add("2", || {
                                    format!(
                                        "{room}: client {client} (node {}) at {} ms: recovery from {s} in epoch {epoch} answered last_id {last_id} with complete:true (ids went back)",
                                        rec.node, rec.ms
                                    )
                                });
                            }
                            expected = Some(s + 1);
                            recovery = Some(Recovery {
                                client,
                                node: rec.node,
                                ms: rec.ms,
                                epoch: epoch.clone(),
                                since: s,
                                last_id: *last_id,
                                replay: HashMap::new(),
                                cut_short: false,
                            });
                            let c = chain.as_mut().unwrap();
                            c.open_ended = *fin;
                        } else {
                            chains.extend(chain.take());
                            chain = Some(Chain {
                                client,
                                epoch: epoch.clone(),
                                ids: HashMap::new(),
                                start: last_id + 1,
                                open_ended: *fin,
                            });
                            first_in_chain = true;
                            expected = None;
                        }
                    }
                    Ev::Msg { room: r, id, text } if r == room => {
                        if let (Some(x), Some(c)) = (expected, chain.as_ref())
                            && *id > x
                            && told_until.is_some_and(|l| x <= l)
                        {
                            // A told gap: the view goes on after it as a new one.
                            let next = Chain {
                                client,
                                epoch: c.epoch.clone(),
                                ids: HashMap::new(),
                                start: *id,
                                open_ended: c.open_ended,
                            };
                            chains.extend(chain.replace(next));
                            expected = None;
                        }
                        let Some(c) = chain.as_mut() else { continue };
                        let key = (c.epoch.clone(), *id);
                        match named.get(&key) {
                            Some((other, oc, oms))
                                if other != text
                                    && reported.insert((c.epoch.clone(), *id, text.clone())) =>
                            {
                                v.add("1", || {
                                format!(
                                    "{room}: epoch {} id {id} is {other:?} for client {oc} (at {oms} ms) and {text:?} for client {client} (node {}, at {} ms)",
                                    c.epoch, rec.node, rec.ms
                                )
                            })
                            }
                            Some(_) => {}
                            None => {
                                named.insert(key.clone(), (text.clone(), client, rec.ms));
                            }
                        }
                        match placed.get(text) {
                            Some(at)
                                if *at != key
                                    && reported.insert((c.epoch.clone(), *id, format!("1b {text}"))) =>
                            {
                                v.add("1b", || {
                                format!(
                                    "{room}: {text:?} is epoch {} id {} and epoch {} id {id} (client {client}, node {}, at {} ms)",
                                    at.0, at.1, c.epoch, rec.node, rec.ms
                                )
                            })
                            }
                            Some(_) => {}
                            None => {
                                placed.insert(text.clone(), key);
                            }
                        }
                        if let Some(x) = expected
                            && *id != x
                        {
                            v.add("2", || {
                                format!(
                                    "{room}: client {client} (node {}) at {} ms: epoch {} id {id} ({text}) when {x} was next{}",
                                    rec.node,
                                    rec.ms,
                                    c.epoch,
                                    if *id < x { " (went back)" } else { " (gap)" }
                                )
                            });
                        }
                        expected = Some(id + 1);
                        if first_in_chain {
                            c.start = *id;
                            first_in_chain = false;
                        }
                        c.ids.insert(*id, text.clone());
                        if let Some(rc) = recovery.as_mut()
                            && *id <= rc.last_id
                        {
                            rc.replay.insert(*id, text.clone());
                        }
                    }
                    Ev::Ack { room: r, id, text } if r == room => {
                        if let Some(c) = chain.as_ref() {
                            acks.push(Ack {
                                client,
                                ms: rec.ms,
                                epoch: c.epoch.clone(),
                                id: *id,
                                text: text.clone(),
                            });
                        }
                    }
                    Ev::Dropped(_) => {
                        if let Some(mut rc) = recovery.take() {
                            let reached = rc.replay.keys().max().copied().unwrap_or(rc.since);
                            rc.cut_short = reached < rc.last_id;
                            recoveries.push(rc);
                        }
                        // A drop tells nothing by itself: the chain goes on until the next
                        // recovery says whether it is unbroken.
                        if let Some(c) = chain.as_mut() {
                            c.open_ended = false;
                        }
                    }
                    _ => {}
                }
            }
            recoveries.extend(recovery.take());
            chains.extend(chain.take());
        }
        // (3) complete:true recoveries hold every acknowledged message of their range.
        let mut checked_recoveries = 0;
        for rc in &recoveries {
            if rc.cut_short {
                continue;
            }
            checked_recoveries += 1;
            for a in &acks {
                if a.epoch == rc.epoch
                    && a.id > rc.since
                    && a.id <= rc.last_id
                    && rc.replay.get(&a.id) != Some(&a.text)
                {
                    v.add("3", || {
                        format!(
                            "{room}: client {} (node {}) at {} ms recovered from {} to {} in epoch {} complete:true, but its replay has {:?} at id {} where {:?} was acknowledged (client {} at {} ms)",
                            rc.client,
                            rc.node,
                            rc.ms,
                            rc.since,
                            rc.last_id,
                            rc.epoch,
                            rc.replay.get(&a.id),
                            a.id,
                            a.text,
                            a.client,
                            a.ms
                        )
                    });
                }
            }
        }
        // (4) acknowledged messages reach every chain of their epoch that spans their id.
        let mut by_epoch: HashMap<&str, Vec<&Chain>> = HashMap::new();
        for c in &chains {
            by_epoch.entry(c.epoch.as_str()).or_default().push(c);
        }
        for a in &acks {
            for c in by_epoch.get(a.epoch.as_str()).into_iter().flatten() {
                let end = if c.open_ended {
                    u64::MAX
                } else {
                    c.ids.keys().max().copied().unwrap_or(0)
                };
                if a.id >= c.start && a.id <= end && c.ids.get(&a.id) != Some(&a.text) {
                    v.add("4", || {
                        format!(
                            "{room}: {:?}, acknowledged as epoch {} id {} (client {} at {} ms), never reached client {} whose view of the epoch runs unbroken from id {} to {} (it has {:?} there)",
                            a.text,
                            a.epoch,
                            a.id,
                            a.client,
                            a.ms,
                            c.client,
                            c.start,
                            if c.open_ended { "the end".to_string() } else { end.to_string() },
                            c.ids.get(&a.id)
                        )
                    });
                }
            }
        }
        let _ = writeln!(
            stats,
            "  {room}: {} messages, {} acknowledged, {} epochs seen, {} member views, {} complete:true recoveries checked ({} cut short)",
            placed.len(),
            acks.len(),
            by_epoch.len(),
            chains.len(),
            checked_recoveries,
            recoveries.len() - checked_recoveries
        );
    }
    (v, stats)
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let o = options();
    if !o.bin.exists() {
        eprintln!(
            "checker: {} not found; build it with `cargo build --features redis --bin smolchat` or pass --bin",
            o.bin.display()
        );
        std::process::exit(2);
    }
    let dir = std::env::temp_dir().join(format!("smolchat-checker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("run directory");
    let names: Vec<&str> = o.faults.iter().map(|f| f.name()).collect();
    println!(
        "checker: seed {}, {} s, {} nodes, {} clients, {} rooms, faults [{}], run directory {}",
        o.seed,
        o.duration,
        o.nodes,
        o.clients,
        o.rooms,
        names.join(","),
        dir.display()
    );

    let cluster = Arc::new(Mutex::new(Cluster::start(&dir, &o.bin, o.nodes, o.store)));
    let node_ports: Vec<u16> = cluster
        .lock()
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.port)
        .collect();
    let phase = Arc::new(AtomicU8::new(RUN));
    let finals = Arc::new(AtomicUsize::new(0));
    let shared = Rc::new(Shared {
        start: Instant::now(),
        phase: phase.clone(),
        finals_done: finals.clone(),
        node_ports,
        rooms: (0..o.rooms).map(|r| format!("r{r}")).collect(),
        api_key: API_KEY.into(),
    });
    let aborted = Arc::new(AtomicBool::new(false));

    // The fault schedule, on its own thread (it blocks: sleeps, processes).
    let orchestrator = {
        let (cluster, phase, finals, aborted) = (
            cluster.clone(),
            phase.clone(),
            finals.clone(),
            aborted.clone(),
        );
        let (faults, seed, duration, pause, max_faults, clients) = (
            o.faults.clone(),
            o.seed,
            o.duration,
            o.pause,
            o.max_faults,
            o.clients + 1,
        );
        let start = shared.start;
        let dir = dir.clone();
        std::thread::spawn(move || {
            // However this thread ends (a panic included), the clients stop.
            struct StopOnExit(Arc<AtomicU8>);
            impl Drop for StopOnExit {
                fn drop(&mut self) {
                    self.0.store(STOP, SeqCst);
                }
            }
            let _stop = StopOnExit(phase.clone());
            let mut rng = Rng::new(seed ^ 0xFA17);
            let mut fault_log = log_file(&dir, "faults.log");
            let mut counts: BTreeMap<Fault, u64> = BTreeMap::new();
            let end = start + Duration::from_secs(duration);
            std::thread::sleep(Duration::from_secs(3));
            // Every kind once first (in random order), then at random.
            let mut deck: Vec<Fault> = faults.clone();
            let mut injected = 0;
            while Instant::now() < end && !faults.is_empty() && injected < max_faults {
                let fault = if deck.is_empty() {
                    faults[rng.below(faults.len())]
                } else {
                    deck.remove(rng.below(deck.len()))
                };
                let at = start.elapsed().as_millis();
                let what = {
                    let mut c = cluster.lock().unwrap();
                    inject(&mut c, fault, &mut rng)
                };
                injected += 1;
                *counts.entry(fault).or_default() += 1;
                let line = format!(
                    "{at} ms .. {} ms: {}: {what}",
                    start.elapsed().as_millis(),
                    fault.name()
                );
                println!("fault {line}");
                let _ = writeln!(fault_log, "{line}");
                let rest = rng.secs(pause / 2.0, pause);
                let now = Instant::now();
                if now < end {
                    std::thread::sleep(rest.min(end - now));
                }
            }
            if Instant::now() < end {
                std::thread::sleep(end - Instant::now());
            }
            // Heal, let everything settle, then the clients stop talking and resync once more.
            let mut c = cluster.lock().unwrap();
            c.heal_all();
            for i in 0..c.nodes.len() {
                if !c.wait_healthy(i, Duration::from_secs(60)) {
                    println!("checker: node {i} is not healthy 60 s after the heal");
                    aborted.store(true, SeqCst);
                }
            }
            drop(c);
            std::thread::sleep(Duration::from_secs(2));
            phase.store(QUIET, SeqCst);
            std::thread::sleep(Duration::from_secs(4));
            phase.store(FINAL, SeqCst);
            let deadline = Instant::now() + Duration::from_secs(60);
            while finals.load(SeqCst) < clients && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if finals.load(SeqCst) < clients {
                println!(
                    "checker: only {} of {clients} clients finished their final resync",
                    finals.load(SeqCst)
                );
            }
            phase.store(STOP, SeqCst);
            counts
        })
    };

    // The WebSocket clients, then the HTTP API client (the last one).
    let states: Vec<Rc<RefCell<ClientState>>> = (0..=o.clients)
        .map(|id| {
            Rc::new(RefCell::new(ClientState {
                id,
                cursor: HashMap::new(),
                said: 0,
                reconnects: 0,
                final_done: false,
                log: Vec::new(),
            }))
        })
        .collect();
    let ex = LocalExecutor::new();
    smol::block_on(ex.run(async {
        let tasks: Vec<_> = states
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let seed = o.seed.wrapping_add(i as u64 * 7919);
                if i == o.clients {
                    ex.spawn(run_api(shared.clone(), st.clone(), seed))
                } else {
                    ex.spawn(run_client(shared.clone(), st.clone(), seed))
                }
            })
            .collect();
        for t in tasks {
            t.await;
        }
    }));
    let Ok(counts) = orchestrator.join() else {
        eprintln!("checker: the fault thread failed; no verdict");
        cluster.lock().unwrap_or_else(|e| e.into_inner()).stop();
        std::process::exit(3);
    };
    cluster.lock().unwrap().stop();

    let logs: Vec<Vec<Rec>> = states.iter().map(|s| s.borrow().log.clone()).collect();
    // Everything the clients recorded, for a look afterwards.
    if let Ok(mut f) = File::create(dir.join("history.log")) {
        for (c, log) in logs.iter().enumerate() {
            for r in log {
                let _ = writeln!(f, "{} c{c} n{} {:?}", r.ms, r.node, r.ev);
            }
        }
    }
    let mut said = 0;
    let mut acked = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for log in &logs {
        for r in log {
            match &r.ev {
                Ev::Ack { .. } => acked += 1,
                Ev::Error { what, code } => {
                    if what.starts_with("say") || what.starts_with("publish") {
                        said += 1;
                    }
                    *errors.entry(code.clone()).or_default() += 1
                }
                Ev::Dropped(why) => {
                    let key = if why.starts_with("close") {
                        why.split(' ').take(2).collect::<Vec<_>>().join(" ")
                    } else {
                        why.split(':').next().unwrap_or_default().to_string()
                    };
                    *drops.entry(key).or_default() += 1
                }
                Ev::ConnectFailed(e) => {
                    let e = e.split(':').next().unwrap_or_default();
                    *drops.entry(format!("connect failed ({e})")).or_default() += 1
                }
                _ => {}
            }
        }
    }
    said += acked;
    let mut rooms = vec!["api0".to_string()];
    rooms.extend(shared.rooms.iter().cloned());
    let (violations, stats) = check(&logs, &rooms);

    println!("\nfaults injected:");
    for (f, n) in &counts {
        println!("  {:13} {n}", f.name());
    }
    println!(
        "client activity (client {} is the HTTP API client): {said} says and publishes answered \
         ({acked} acknowledged), errors {errors:?}, connection ends {drops:?}",
        o.clients
    );
    print!("{stats}");
    println!("violations:");
    for (kind, text) in KINDS {
        let n = violations.counts.get(kind).copied().unwrap_or(0);
        println!("  ({kind:>2}) {n:6}  {text}");
        for e in violations.examples.get(kind).into_iter().flatten() {
            println!("          e.g. {e}");
        }
    }
    let total = violations.total();
    let aborted = aborted.load(SeqCst);
    if total > 0 || aborted || o.keep {
        println!(
            "run directory kept: {} (history.log, faults.log, node*.log, redis.log)",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if total > 0 {
        println!("checker: {total} violations");
        std::process::exit(1);
    }
    if aborted {
        println!("checker: the cluster did not recover; no verdict");
        std::process::exit(3);
    }
    println!("checker: no violation");
}
