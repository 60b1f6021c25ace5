//! A real `redis-server` for one test: on a free loopback port, with its data in a temporary
//! directory (append-only file fsynced on every write, so a killed and restarted server keeps
//! everything, like a production Redis with persistence). `.ci/run` installs Debian's
//! `redis-server`; without it these tests fail with a message saying so.
//!
//! [`Proxy`] stands between a node and Redis to cut the link without closing it (a half-open
//! connection, or a node cut off from Redis while the others are not).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// AOF fsynced on every write (the default), or RDB snapshots only (after
    /// [`RedisServer::restart_from`]).
    aof: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("smolchat-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis data directory");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            aof: true,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server at once (SIGKILL): connections drop, nothing is said.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again with no data: a Redis restarted without
    /// persistence.
    pub fn restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(&self.dir).expect("redis data directory") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
        self.restart();
    }

    /// Writes an RDB snapshot of the data now and returns a copy of it, for
    /// [`RedisServer::restart_from`].
    pub fn snapshot(&self) -> PathBuf {
        assert!(self.command("SAVE").starts_with("+OK"), "SAVE");
        let copy = self.dir.with_extension("snapshot.rdb");
        std::fs::copy(self.dir.join("dump.rdb"), &copy).expect("copy the snapshot");
        copy
    }

    /// Kills the server and starts it again from `snapshot` (older than what it had), with
    /// RDB persistence only: a Redis that came back from an older snapshot after a crash.
    pub fn restart_from(&mut self, snapshot: &PathBuf) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        std::fs::copy(snapshot, self.dir.join("dump.rdb")).expect("restore the snapshot");
        self.aof = false;
        self.restart();
    }

    /// The value of `field` in the `INFO` section `section`, as text ("" if absent).
    pub fn info(&self, section: &str, field: &str) -> String {
        let reply = self.command(&format!("INFO {section}"));
        reply
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .unwrap_or_default()
            .to_string()
    }

    /// Starts the server (again) on the same port with the same data, and waits for PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one command in inline form and returns the raw reply.
    pub fn command(&self, line: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.with_extension("snapshot.rdb"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which connections a [`Proxy`] stops forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// None: bytes flow both ways.
    Open,
    /// Every connection: nothing is forwarded, nothing is closed (a node cut off from Redis
    /// while its sockets stay open).
    All,
    /// Only connections that sent a `SUBSCRIBE`: a half-open pub/sub connection.
    Subscribers,
}

/// A TCP proxy in front of Redis, whose connections can be frozen (bytes held, sockets left
/// open) and later closed, to give a node a half-open link.
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    cut: Mutex<Cut>,
    changed: Condvar,
    stopping: AtomicBool,
    /// Open connections: both sockets and whether the client subscribed.
    links: Mutex<Vec<(TcpStream, TcpStream, Arc<AtomicBool>)>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to Redis on `target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            cut: Mutex::new(Cut::Open),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
        });
        let accepting = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopping.load(SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let subscriber = Arc::new(AtomicBool::new(false));
                accepting.links.lock().unwrap().push((
                    client.try_clone().unwrap(),
                    upstream.try_clone().unwrap(),
                    subscriber.clone(),
                ));
                for (from, to, up) in [
                    (
                        client.try_clone().unwrap(),
                        upstream.try_clone().unwrap(),
                        true,
                    ),
                    (upstream, client, false),
                ] {
                    let (state, subscriber) = (accepting.clone(), subscriber.clone());
                    std::thread::spawn(move || pump(from, to, up, &state, &subscriber));
                }
            }
        });
        Proxy { port, state }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops forwarding on the connections `cut` names, without closing anything.
    pub fn cut(&self, cut: Cut) {
        *self.state.cut.lock().unwrap() = cut;
        self.state.changed.notify_all();
    }

    /// Closes every connection (what was held back is lost) and forwards again.
    pub fn heal(&self) {
        self.close_all();
        self.cut(Cut::Open);
    }

    fn close_all(&self) {
        for (a, b, _) in self.state.links.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, SeqCst);
        self.heal();
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

/// Copies `from` to `to` until either closes, holding each chunk while the proxy's cut
/// applies to this connection. `up`: client to Redis (where a `SUBSCRIBE` shows).
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    up: bool,
    state: &ProxyState,
    subscriber: &AtomicBool,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if up
            && buf[..n]
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
        {
            subscriber.store(true, SeqCst);
        }
        let held = |cut: &mut Cut| match *cut {
            Cut::Open => false,
            Cut::All => true,
            Cut::Subscribers => subscriber.load(SeqCst),
        };
        let cut = state.cut.lock().unwrap();
        // Woken by every change: a heal closes this connection, so the wait ends either way.
        drop(state.changed.wait_while(cut, held).unwrap());
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
