//! Durable history (`--data-dir`, feature `store`): rooms, ids, epochs and messages survive a
//! restart, a crash never gives an id twice, and `complete` stays truthful.
//!
//! Servers run in this process (`server::start` on port 0) where a clean stop is enough, and
//! as the real binary where a crash is the point (SIGKILL).

#![cfg(feature = "store")]

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{Value, json};

/// A fresh data directory for one test.
fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smolchat-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn durable_server(dir: &std::path::Path) -> TestServer {
    server_with(|c| {
        c.data_dir = Some(dir.to_str().unwrap().to_string());
        c.rate_limit = 0;
    })
}

/// Joins `room` with a cursor and returns the `room` event and the replayed messages' texts
/// (the next `count` events).
async fn recover(
    c: &mut Client,
    room: &str,
    since: u64,
    epoch: &str,
    count: usize,
) -> (Value, Vec<String>) {
    c.send(json!({"type": "join", "room": room, "since": since, "epoch": epoch}))
        .await;
    let event = c.expect("room").await;
    let mut texts = Vec::new();
    for _ in 0..count {
        texts.push(
            c.expect("message").await["text"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    (event, texts)
}

#[test]
fn a_restarted_server_serves_the_history_in_the_same_epochs() {
    let dir = data_dir("restart");
    let (epoch, cursor);
    {
        let server = durable_server(&dir);
        let addr = server.addr;
        (epoch, cursor) = run_with(async move {
            let mut ada = Client::connect(addr).await;
            let room = ada.join("dev").await;
            let epoch = room["epoch"].as_str().unwrap().to_string();
            let mut ids = Vec::new();
            for text in ["one", "two", "three"] {
                ada.say("dev", text).await;
                ids.push(ada.expect("message").await["id"].as_u64().unwrap());
            }
            assert_eq!(ids, [1, 2, 3]);
            (epoch, 1)
        });
        server.shutdown();
    }
    let server = durable_server(&dir);
    let addr = server.addr;
    run(async move {
        let mut bob = Client::connect(addr).await;
        let (room, texts) = recover(&mut bob, "dev", cursor, &epoch, 2).await;
        assert_eq!(room["epoch"], epoch.as_str(), "the same life of the room");
        assert_eq!(
            (room["last_id"].as_u64(), room["complete"].as_bool()),
            (Some(3), Some(true))
        );
        assert_eq!(texts, ["two", "three"]);
        bob.say("dev", "four").await;
        assert_eq!(
            bob.expect("message").await["id"],
            4,
            "ids go on where they stopped"
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs an async body that returns a value, with the whole-test deadline of [`run`].
fn run_with<T>(body: impl std::future::Future<Output = T>) -> T {
    let mut out = None;
    run(async {
        out = Some(body.await);
    });
    out.unwrap()
}

/// The real binary with `--data-dir DIR` and `extra` flags, and the address it listens on.
fn spawn_binary(
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, std::net::SocketAddr) {
    let mut args = vec!["--rate-limit", "0", "--log-level", "info"];
    args.extend(extra);
    let data_dir = ["--data-dir".as_ref(), dir.as_os_str()];
    let args = args.iter().map(|a| a.as_ref()).chain(data_dir);
    let (child, addr, _, mut stderr) = start_binary(args);
    // The rest of the log goes nowhere, but must be read so the child never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, addr)
}

/// A small deterministic generator for the crash moments (xorshift), seeded per run.
struct Moments(u64);

impl Moments {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// SIGKILL during a stream of messages, 50 times at random moments, alternating between
/// `--sync-interval 0` and `100ms`. After each crash the store opens; no `(epoch, id)` ever
/// names two different messages (acknowledged or replayed); and every recovery answered
/// `complete: true` holds every acknowledged message after its cursor.
#[test]
fn sigkill_during_a_stream_never_gives_an_id_twice_and_complete_stays_truthful() {
    use std::collections::HashMap;
    let dir = data_dir("sigkill");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut moments = Moments(seed);
    // Every (epoch, id) seen, with its text; and the acknowledged ones, by epoch.
    let mut named: HashMap<(String, u64), String> = HashMap::new();
    let mut acked: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let mut cursor: Option<(String, u64)> = None;
    let (mut truthful_complete, mut incomplete) = (0, 0);
    for round in 0..50u64 {
        let sync = if round % 2 == 0 { "0" } else { "100ms" };
        let (mut child, addr) = spawn_binary(&dir, &["--sync-interval", sync]);
        let kill_after = std::time::Duration::from_millis(20 + moments.next(200));
        let pid = child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        });
        let outcome = run_with(async {
            let mut c = Client::connect(addr).await;
            let join = match &cursor {
                Some((epoch, since)) => {
                    json!({"type": "join", "room": "r", "since": since, "epoch": epoch})
                }
                None => json!({"type": "join", "room": "r"}),
            };
            c.send(join).await;
            let room = c.expect("room").await;
            let epoch = room["epoch"].as_str().unwrap().to_string();
            let last_id = room["last_id"].as_u64().unwrap();
            let mut replayed = Vec::new();
            // The replay, then our own messages until the crash cuts the connection.
            let mut n = 0u64;
            let mut sent = std::collections::VecDeque::new();
            loop {
                use futures_lite::StreamExt;
                if sent.len() < 4 {
                    let text = format!("r{round}-m{n}");
                    n += 1;
                    c.say("r", &text).await;
                    sent.push_back(text);
                }
                let next = smol::future::or(async { Some(c.ws.next().await) }, async {
                    smol::Timer::after(std::time::Duration::from_secs(5)).await;
                    None
                })
                .await;
                let Some(Some(Ok(async_tungstenite::tungstenite::Message::Text(t)))) = next else {
                    break;
                };
                let event: Value = serde_json::from_str(&t).unwrap();
                if event["type"] != "message" {
                    continue;
                }
                let (id, text) = (
                    event["id"].as_u64().unwrap(),
                    event["text"].as_str().unwrap().to_string(),
                );
                if sent.front() == Some(&text) {
                    sent.pop_front();
                    replayed.push((id, text, true));
                } else {
                    replayed.push((id, text, false));
                }
            }
            (room, epoch, last_id, replayed)
        });
        killer.join().unwrap();
        let _ = child.wait();
        let (room, epoch, last_id, events) = outcome;
        // (1) No (epoch, id) names two messages.
        for (id, text, _) in &events {
            let previous = named.insert((epoch.clone(), *id), text.clone());
            assert!(
                previous.as_ref().is_none_or(|p| p == text),
                "round {round}: ({epoch}, {id}) named {previous:?} and then {text:?}"
            );
        }
        // (3) A recovery answered complete holds every acknowledged message after its cursor.
        if let Some((old_epoch, since)) = &cursor {
            match room["complete"].as_bool() {
                Some(true) => {
                    assert_eq!(&epoch, old_epoch, "complete across epochs");
                    truthful_complete += 1;
                    let replayed: Vec<u64> = events.iter().filter(|e| !e.2).map(|e| e.0).collect();
                    for (id, text) in acked.get(old_epoch).into_iter().flatten() {
                        if id > since {
                            assert!(
                                replayed.contains(id),
                                "round {round}: acknowledged {id} {text:?} missing from a complete recovery after {since}"
                            );
                        }
                    }
                }
                _ => incomplete += 1,
            }
        }
        for (id, text, ours) in &events {
            if *ours {
                acked
                    .entry(epoch.clone())
                    .or_default()
                    .push((*id, text.clone()));
            }
        }
        let seen = events
            .iter()
            .map(|e| e.0)
            .max()
            .unwrap_or(last_id)
            .max(last_id);
        cursor = Some((epoch, seen));
    }
    eprintln!(
        "50 crashes: {truthful_complete} recoveries complete (checked), {incomplete} told incomplete, {} messages named",
        named.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A crash in a quiet moment costs nothing: a room that stopped speaking gives its unused
/// reservation back in the next commits (`smolchat_store_reserved_ahead` falls to 0), so
/// after a SIGKILL a client whose missed messages were all committed recovers in the same
/// epoch with `complete: true`.
#[test]
fn after_a_crash_in_a_quiet_moment_recovery_is_complete_in_the_same_epoch() {
    let dir = data_dir("quiet");
    let (mut child, addr) = spawn_binary(&dir, &["--sync-interval", "100ms"]);
    let epoch = run_with(async move {
        let mut ada = Client::connect(addr).await;
        let epoch = ada.join("dev").await["epoch"].as_str().unwrap().to_string();
        for text in ["one", "two", "three"] {
            ada.say("dev", text).await;
            ada.expect("message").await;
        }
        // Quiet now: once the room's first commit is in, and what it reserved ahead is given
        // back on disk (the gauge follows the commits), a crash leaves no hole.
        let started = std::time::Instant::now();
        loop {
            let text = common::raw::metrics(addr).await;
            let commits = common::raw::metric(&text, "smolchat_store_commits_total");
            let ahead = common::raw::metric(&text, "smolchat_store_reserved_ahead");
            if commits >= 1 && ahead == 0 {
                break;
            }
            assert!(started.elapsed() < DEADLINE, "never quiet on disk: {text}");
            smol::Timer::after(std::time::Duration::from_millis(10)).await;
        }
        epoch
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, addr) = spawn_binary(&dir, &[]);
    run(async move {
        let mut bob = Client::connect(addr).await;
        let (room, texts) = recover(&mut bob, "dev", 1, &epoch, 2).await;
        assert_eq!(room["epoch"], epoch.as_str());
        assert_eq!(
            (room["last_id"].as_u64(), room["complete"].as_bool()),
            (Some(3), Some(true))
        );
        assert_eq!(texts, ["two", "three"]);
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store that cannot be opened stops the server at start with exit status 2 and a message
/// naming the file and what to do; it never panics and never starts silently without history.
#[test]
fn a_damaged_or_unusable_store_is_refused_at_start_with_a_clear_message() {
    let dir = data_dir("damaged");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("history.redb");
    let start = |data_dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_smolchat"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .output()
            .unwrap()
    };
    // Garbage where the database should be.
    std::fs::write(&file, vec![0x5a; 10_000]).unwrap();
    let out = start(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("history.redb") && stderr.contains("move it aside"),
        "{stderr}"
    );
    // A real store cut in half (a truncated copy).
    std::fs::remove_file(&file).unwrap();
    let (mut child, addr) = spawn_binary(&dir, &["--sync-interval", "0"]);
    run(async move {
        let mut ada = Client::connect(addr).await;
        for n in 0..50 {
            ada.say("lobby", &format!("message {n}")).await;
            ada.expect("message").await;
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let out = start(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("history.redb"), "{stderr}");
    // A read-only store (the file and its directory immutable, which binds root too): the
    // same clear refusal. Skipped, and said so, where the filesystem has no `chattr +i`.
    std::fs::remove_file(&file).unwrap();
    let (mut child, _) = spawn_binary(&dir, &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    let chattr = |flag: &str, path: &std::path::Path| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(path)
            .status()
            .is_ok_and(|s| s.success())
    };
    if chattr("+i", &file) && chattr("+i", &dir) {
        let out = start(&dir);
        chattr("-i", &dir);
        chattr("-i", &file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("history.redb") && stderr.contains("read-only"),
            "{stderr}"
        );
    } else {
        chattr("-i", &file);
        eprintln!("chattr +i is not available here: the read-only case was not tried");
    }
    // --data-dir naming a file, not a directory.
    let out = start(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--data-dir") || stderr.contains("history.redb"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The store replaced by an older copy of itself (restored from a backup) while clients hold
/// cursors from after it: with the `restored` marker the operator is told to create, every
/// room starts a new epoch, so no id of the newer history is given again and those clients
/// are told `complete: false`.
#[test]
fn a_store_restored_from_an_older_copy_never_gives_an_id_twice() {
    let dir = data_dir("restored");
    let file = dir.join("history.redb");
    let backup = std::env::temp_dir().join(format!("smolchat-backup-{}", std::process::id()));
    let say_three = |addr, first: u64| async move {
        let mut ada = Client::connect(addr).await;
        let room = ada.join("dev").await;
        for n in 1..first {
            assert_eq!(
                ada.expect("message").await["id"],
                n,
                "the history, replayed"
            );
        }
        for n in first..first + 3 {
            ada.say("dev", &format!("m{n}")).await;
            assert_eq!(ada.expect("message").await["id"], n);
        }
        room["epoch"].as_str().unwrap().to_string()
    };
    let server = durable_server(&dir);
    let epoch = run_with(say_three(server.addr, 1));
    server.shutdown();
    std::fs::copy(&file, &backup).unwrap();
    let server = durable_server(&dir);
    assert_eq!(run_with(say_three(server.addr, 4)), epoch);
    server.shutdown();
    // The disk is lost; the backup comes back, and the operator marks it.
    std::fs::copy(&backup, &file).unwrap();
    std::fs::write(dir.join(smolchat::store::RESTORED), "").unwrap();
    let server = durable_server(&dir);
    let addr = server.addr;
    run(async move {
        let mut bob = Client::connect(addr).await;
        // A cursor from after the backup: the room it names went back; bob is told.
        bob.send(json!({"type": "join", "room": "dev", "since": 6, "epoch": epoch}))
            .await;
        let room = bob.expect("room").await;
        let renewed = room["epoch"].as_str().unwrap().to_string();
        assert_ne!(renewed, epoch, "a new life");
        assert_eq!(room["complete"], false);
        for n in 1..=3 {
            assert_eq!(
                bob.expect("message").await["text"],
                format!("m{n}"),
                "the backup's history"
            );
        }
        bob.say("dev", "after the restore").await;
        let said = bob.expect("message").await;
        assert_eq!(
            said["id"], 4,
            "id 4 again, but in the new epoch: no (epoch, id) twice"
        );
    });
    assert!(
        !dir.join(smolchat::store::RESTORED).exists(),
        "the marker is used once"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&backup);
}

const ROOMS_PER_ROUND: usize = 5_000;

/// The file does not grow without bound under churn: 15,000 rooms created, each given a
/// message and abandoned, in three rounds of 5,000 (`--max-rooms` 1000 evicts the least
/// recently used empty ones, and the store deletes what memory forgets). After the first
/// round the file stops growing: freed pages are used again.
#[test]
fn the_store_stays_bounded_when_rooms_come_and_go() {
    let dir = data_dir("churn");
    let file = dir.join("history.redb");
    let mut sizes = Vec::new();
    for round in 0..3 {
        let server = durable_server(&dir);
        let addr = server.addr;
        run(async move {
            let mut ada = Client::connect(addr).await;
            for i in 0..ROOMS_PER_ROUND {
                let room = format!("churn-{round}-{i}");
                ada.join(&room).await;
                ada.say(&room, "here and gone").await;
                ada.expect("message").await;
                ada.send(json!({"type": "leave", "room": room})).await;
            }
        });
        server.shutdown();
        sizes.push(std::fs::metadata(&file).unwrap().len());
    }
    eprintln!("history.redb after each round of 5,000 rooms: {sizes:?} bytes");
    assert!(sizes[0] < 8 << 20, "{sizes:?}");
    assert!(
        sizes[1] <= sizes[0] + sizes[0] / 4,
        "the file keeps growing: {sizes:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Review of issue 24: a hole a crash left must outlive the next restarts. Messages 6-8 are
/// acknowledged and lost in a crash; the next run rightly says `complete: false` and says one
/// more message (committed, after the hole); the run after that must still say `complete:
/// false` to a cursor before the hole's end, not take the later commit for the whole story.
#[test]
fn a_hole_from_a_crash_is_still_reported_after_later_commits_and_restarts() {
    let dir = data_dir("hole");
    let server = durable_server(&dir);
    let addr = server.addr;
    let epoch = run_with(async move {
        let mut ada = Client::connect(addr).await;
        let epoch = ada.join("dev").await["epoch"].as_str().unwrap().to_string();
        for n in 1..=5 {
            ada.say("dev", &format!("m{n}")).await;
            assert_eq!(ada.expect("message").await["id"], n);
        }
        epoch
    });
    server.shutdown();
    // Acknowledged, then lost: the commit was 3 s away.
    let (mut child, addr) = spawn_binary(&dir, &["--sync-interval", "3s"]);
    run(async move {
        let mut ada = Client::connect(addr).await;
        ada.join("dev").await;
        for n in 1..=5 {
            assert_eq!(ada.expect("message").await["id"], n, "the history");
        }
        for n in 6..=8 {
            ada.say("dev", &format!("m{n}")).await;
            assert_eq!(ada.expect("message").await["id"], n);
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
    for run_number in 3..=4 {
        let server = durable_server(&dir);
        let addr = server.addr;
        let epoch = epoch.clone();
        run(async move {
            let mut bob = Client::connect(addr).await;
            let (room, _) = recover(&mut bob, "dev", 6, &epoch, 0).await;
            assert_eq!(
                room["epoch"],
                epoch.as_str(),
                "run {run_number}: the same life"
            );
            assert_eq!(
                room["complete"], false,
                "run {run_number}: 7 and 8 are lost"
            );
            if run_number == 3 {
                // Replayed: m1-m5 are not after 6, so nothing but what comes next.
                bob.say("dev", "after the hole").await;
                let said = loop {
                    let event = bob.next().await;
                    if event["type"] == "message" {
                        break event;
                    }
                };
                assert!(said["id"].as_u64().unwrap() > 8, "{said}");
            }
        });
        server.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
