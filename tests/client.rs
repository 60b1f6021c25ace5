//! The terminal client (examples/client.rs), run as a program against real servers on
//! loopback: it marks API messages, reconnects by itself after a dropped connection and after a
//! server restart, recovers its rooms with `since`/`epoch` without showing anything twice, says
//! when messages were missed, and gives up on a close that reconnecting would not fix.
//!
//! The example's binary is built first (`cargo build --example client`, with this test's
//! profile and features), so the test never runs a stale one.

#![cfg(feature = "api")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use smol::Async;
use smol::channel::Receiver;
use smolchat::token::Secret;

const KEY: &str = "an-api-key-for-the-client-test-0123";

/// Builds the example (once for all tests) and returns its path:
/// target/<profile>/examples/client.
fn client_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_client).clone()
}

fn build_client() -> PathBuf {
    // This test runs as target/<profile>/deps/client-<hash>.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build.arg("--quiet").arg("build").arg("--target-dir");
    build.arg(profile_dir.parent().unwrap());
    build.args(["--example", "client", "--no-default-features"]);
    let features: Vec<&str> = [
        ("smol", cfg!(feature = "smol")),
        ("auth", cfg!(feature = "auth")),
        ("api", cfg!(feature = "api")),
        ("tls", cfg!(feature = "tls")),
        ("redis", cfg!(feature = "redis")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    build.args(["--features", &features.join(",")]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build --example client failed");
    profile_dir
        .join("examples")
        .join(format!("client{}", std::env::consts::EXE_SUFFIX))
}

/// The client program, with its input and output.
struct Terminal {
    child: Child,
    stdin: ChildStdin,
    /// Its output, line by line (read on a thread).
    lines: Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Terminal {
    fn start(binary: &PathBuf, url: &str) -> Terminal {
        let mut child = Command::new(binary)
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the client starts");
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = smol::channel::unbounded();
        // Its errors go to stderr: read both, in one stream of lines.
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send_blocking(line).is_err() {
                        break;
                    }
                }
            });
        }
        Terminal {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn type_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("the client reads its input");
    }

    /// Waits for a line that contains `needle`, and returns it.
    async fn expect(&mut self, needle: &str) -> String {
        let found = smol::future::or(
            async {
                while let Ok(line) = self.lines.recv().await {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                None
            },
            async {
                smol::Timer::after(DEADLINE).await;
                None
            },
        )
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "the client did not print {needle:?}; it printed:\n{}",
                self.seen.join("\n")
            )
        })
    }

    /// Reads its output to the end, which comes when it exits, and returns its exit status.
    async fn exit(&mut self) -> std::process::ExitStatus {
        deadline("the client to exit", async {
            while let Ok(line) = self.lines.recv().await {
                self.seen.push(line);
            }
        })
        .await;
        self.child.wait().unwrap()
    }

    /// How many lines read so far contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of the server, so that the client's connection can be cut while the
/// server goes on.
struct Proxy {
    addr: SocketAddr,
    /// The client side of every connection it carries.
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
        let addr = listener.get_ref().local_addr().unwrap();
        let open = Arc::new(Mutex::new(Vec::new()));
        let carried = open.clone();
        smol::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // No server (it is restarting): the client's connection just closes.
                let Ok(server) = Async::<TcpStream>::connect(target).await else {
                    continue;
                };
                carried
                    .lock()
                    .unwrap()
                    .push(client.get_ref().try_clone().unwrap());
                let (client, server) = (Arc::new(client), Arc::new(server));
                for (from, to) in [(client.clone(), server.clone()), (server, client)] {
                    smol::spawn(async move {
                        let _ = futures_lite::io::copy(&*from, &mut &*to).await;
                        // One side ended: end the other too, as a cut cable would.
                        let _ = from.get_ref().shutdown(Shutdown::Both);
                        let _ = to.get_ref().shutdown(Shutdown::Both);
                    })
                    .detach();
                }
            }
        })
        .detach();
        Proxy { addr, open }
    }

    /// Cuts every connection it carries (new ones are carried again).
    fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn api_server_at(listen: SocketAddr) -> TestServer {
    server_with(|c| {
        c.listen = listen;
        c.api_key = Some(Secret::new(KEY.as_bytes().to_vec()));
    })
}

/// Publishes `text` into `room` through the HTTP API, as `from`.
async fn publish(addr: SocketAddr, room: &str, from: &str, text: &str) {
    let body = serde_json::json!({"text": text, "from": from}).to_string();
    let response = http(
        addr,
        &format!(
            "POST /api/rooms/{room}/messages HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
}

#[test]
fn reconnects_recovers_its_rooms_and_marks_api_messages() {
    let binary = client_binary();
    run(async {
        let server = api_server_at("127.0.0.1:0".parse().unwrap());
        let addr = server.addr;
        let proxy = Proxy::start(addr);
        let mut ada = Terminal::start(&binary, &format!("ws://{}/ws", proxy.addr));
        ada.expect("* connected to").await;
        ada.type_line("/nick ada");
        ada.expect("you are now known as ada").await;
        ada.type_line("/join dev");
        ada.expect("* you are in dev").await;
        ada.type_line("hello from ada");
        ada.expect("[dev] <ada> hello from ada").await;

        // Another user, a guest (guest-2).
        let mut bob = Client::connect(addr).await;
        let b = bob.nick.clone();
        bob.join("dev").await;
        bob.say("dev", "bob was here").await;
        ada.expect(&format!("[dev] <{b}> bob was here")).await;
        publish(addr, "dev", "doorbell", "the door is open").await;
        let line = ada.expect("the door is open").await;
        assert!(
            line.contains("[dev] [api] <doorbell> the door is open"),
            "{line}"
        );

        // A dropped connection: the client comes back by itself, takes its nick back, and
        // shows what was said meanwhile once, and nothing twice.
        proxy.cut();
        bob.say("dev", "while ada was away").await;
        ada.expect("reconnecting in 0.5 s").await;
        ada.expect("you are now known as ada").await;
        ada.expect(&format!("<{b}> while ada was away")).await;
        bob.say("dev", "welcome back").await;
        ada.expect(&format!("<{b}> welcome back")).await;
        ada.type_line("ada is back");
        ada.expect("[dev] <ada> ada is back").await;
        for text in [
            "hello from ada",
            "bob was here",
            "the door is open",
            "while ada was away",
        ] {
            assert_eq!(
                ada.count(text),
                1,
                "{text:?} shown again:\n{}",
                ada.seen.join("\n")
            );
        }
        assert_eq!(ada.count("were missed"), 0, "{}", ada.seen.join("\n"));

        // A restart (close 1001): the rooms' history is gone with the old server, and the
        // client says that it missed messages.
        server.shutdown();
        let closed = ada.expect("reconnecting in").await;
        assert!(closed.contains("1001"), "{closed}");
        let server = api_server_at(addr);
        // The nick comes back first, then the rooms (lobby, then dev, the current room).
        ada.expect("you are now known as ada").await;
        ada.expect("some messages in dev were missed").await;
        let mut carl = Client::connect(addr).await;
        carl.join("dev").await;
        carl.say("dev", "a new life").await;
        ada.expect("a new life").await;
        ada.type_line("ada after the restart");
        ada.expect("[dev] <ada> ada after the restart").await;
        assert_eq!(ada.count("a new life"), 1, "{}", ada.seen.join("\n"));
        drop(server);
    });
}

#[test]
fn does_not_reconnect_after_a_fatal_close() {
    let binary = client_binary();
    run(async {
        // Flooding: frames over the rate limit are refused, and after 50 refusals the server
        // closes with 1008, which connecting again would not fix.
        let server = server();
        let mut flood = Terminal::start(&binary, &server.url());
        flood.expect("* connected to").await;
        let lines: String = (0..100).map(|i| format!("line {i}\n")).collect();
        flood.stdin.write_all(lines.as_bytes()).unwrap();
        let end = flood.expect("closed the connection").await;
        assert!(end.contains("1008"), "{end}");
        let status = flood.exit().await;
        assert!(!status.success(), "the client exited with {status}");
        assert_eq!(flood.count("reconnecting"), 0, "{}", flood.seen.join("\n"));
    });
}
