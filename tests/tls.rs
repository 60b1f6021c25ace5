//! TLS (feature `tls`): https and wss on the one port, with certificates made in the test
//! (rcgen) and a real rustls client. Run with `cargo test --features tls`.
#![cfg(feature = "tls")]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use async_tungstenite::tungstenite::Message;
use common::*;
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use futures_rustls::client::TlsStream;
use futures_rustls::rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use serde_json::{Value, json};
use smol::Async;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smolchat-tls-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Makes a certificate and writes it (and its key) to `dir`/`name`.pem and `name`.key.
fn make_cert(dir: &Path, name: &str) -> Cert {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Cert {
        cert,
        key,
        der: made.cert.der().clone(),
    }
}

fn tls_server(cert: &Cert) -> TestServer {
    let (c, k) = (cert.cert.clone(), cert.key.clone());
    server_with(move |config| {
        config.tls_cert = Some(c);
        config.tls_key = Some(k);
    })
}

/// A TLS connection that trusts `roots`; returns the stream and the server's certificate.
async fn tls_connect(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
) -> (TlsStream<Async<TcpStream>>, Vec<u8>) {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = futures_rustls::TlsConnector::from(Arc::new(config));
    let tcp = Async::<TcpStream>::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = deadline("the TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, presented)
}

type Wss = async_tungstenite::WebSocketStream<TlsStream<Async<TcpStream>>>;

async fn wss(addr: SocketAddr, cert: &Cert) -> Wss {
    let (tls, _) = tls_connect(addr, &[&cert.der]).await;
    let (ws, _) = async_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .expect("wss handshake");
    ws
}

async fn event(ws: &mut Wss) -> Value {
    deadline("an event", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected an event, got {other:?}"),
            }
        }
    })
    .await
}

async fn skip_to(ws: &mut Wss, ty: &str) -> Value {
    loop {
        let e = event(ws).await;
        if e["type"] == ty {
            return e;
        }
    }
}

/// A GET over TLS; returns the whole response.
async fn https_get(addr: SocketAddr, cert: &Cert, path: &str) -> String {
    let (mut tls, _) = tls_connect(addr, &[&cert.der]).await;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: gzip\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut out = Vec::new();
    let _ = deadline("an https response", tls.read_to_end(&mut out)).await;
    let (head, body) = common::decoded(&out);
    format!("{head}\r\n\r\n{body}")
}

#[test]
fn chat_over_wss_and_pages_over_https() {
    let dir = dir("chat");
    let cert = make_cert(&dir, "a");
    let server = tls_server(&cert);
    run(async {
        let mut a = wss(server.addr, &cert).await;
        assert_eq!(event(&mut a).await["type"], "welcome");
        assert_eq!(event(&mut a).await["type"], "room");
        let mut b = wss(server.addr, &cert).await;
        skip_to(&mut b, "room").await;
        skip_to(&mut a, "join").await;
        let say = json!({"type": "say", "room": "lobby", "text": "over TLS"});
        a.send(Message::Text(say.to_string().into())).await.unwrap();
        for ws in [&mut a, &mut b] {
            assert_eq!(skip_to(ws, "message").await["text"], "over TLS");
        }
        let page = https_get(server.addr, &cert, "/").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.ends_with(smolchat::http::PAGE));
        let health = https_get(server.addr, &cert, "/healthz").await;
        assert!(
            health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
            "{health}"
        );
    });
}

#[test]
fn plain_requests_on_the_tls_port_are_refused_without_disturbing_anyone() {
    let dir = dir("plain");
    let cert = make_cert(&dir, "a");
    let server = tls_server(&cert);
    run(async {
        let mut a = wss(server.addr, &cert).await;
        skip_to(&mut a, "room").await;
        for request in [
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            raw::upgrade_request(server.addr, &[]),
        ] {
            let answer = raw::exchange(server.addr, request.as_bytes()).await;
            let text = match answer {
                Ok(text) | Err((_, text)) => text,
            };
            assert!(
                !text.contains("HTTP/1.1"),
                "a plain answer on the TLS port: {text:?}"
            );
        }
        let metrics = https_get(server.addr, &cert, "/metrics").await;
        let failures = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("smolchat_tls_handshake_failures_total{cause=\"not_tls\"} ")
            })
            .expect("the TLS failure counter");
        assert_eq!(failures, "2", "{metrics}");
        let say = json!({"type": "say", "room": "lobby", "text": "undisturbed"});
        a.send(Message::Text(say.to_string().into())).await.unwrap();
        assert_eq!(skip_to(&mut a, "message").await["text"], "undisturbed");
    });
}

#[test]
fn a_reload_serves_the_new_certificate_to_new_connections_only() {
    let dir = dir("reload");
    let old = make_cert(&dir, "live");
    let server = tls_server(&old);
    run(async {
        let mut before = wss(server.addr, &old).await;
        skip_to(&mut before, "room").await;
        // Renewal: new files at the same paths, then the reload SIGHUP triggers.
        let new = make_cert(&dir, "next");
        std::fs::copy(&new.cert, &old.cert).unwrap();
        std::fs::copy(&new.key, &old.key).unwrap();
        assert_eq!(server.running().reload_tls(), Ok(true));
        let (_, presented) = tls_connect(server.addr, &[&old.der, &new.der]).await;
        assert_eq!(
            presented,
            new.der.to_vec(),
            "a new connection gets the new certificate"
        );
        // The session opened before goes on.
        let say = json!({"type": "say", "room": "lobby", "text": "still here"});
        before
            .send(Message::Text(say.to_string().into()))
            .await
            .unwrap();
        assert_eq!(skip_to(&mut before, "message").await["text"], "still here");

        // A broken key: the reload fails and the certificate in use stays.
        std::fs::write(&old.key, "not a key").unwrap();
        let error = server.running().reload_tls().unwrap_err();
        assert_eq!(error.flag, "--tls-key", "{error}");
        let (_, presented) = tls_connect(server.addr, &[&old.der, &new.der]).await;
        assert_eq!(presented, new.der.to_vec());
    });
}

/// The binary with TLS flags: its exit status and standard error, if it exits within 10 s.
fn binary(args: &[&str]) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_smolchat"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_certificate_settings_exit_2_naming_the_flag() {
    let dir = dir("bad");
    let a = make_cert(&dir, "a");
    let b = make_cert(&dir, "b");
    let (cert, key, other_key) = (
        a.cert.to_str().unwrap(),
        a.key.to_str().unwrap(),
        b.key.to_str().unwrap(),
    );
    let missing = dir.join("missing.pem");
    for (args, flag) in [
        (vec!["--tls-cert", cert], "--tls-key"),
        (vec!["--tls-key", key], "--tls-cert"),
        (
            vec!["--tls-cert", missing.to_str().unwrap(), "--tls-key", key],
            "--tls-cert",
        ),
        (vec!["--tls-cert", cert, "--tls-key", cert], "--tls-key"),
        (
            vec!["--tls-cert", cert, "--tls-key", other_key],
            "--tls-key",
        ),
    ] {
        let (status, stderr) = binary(&args);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} should name {flag}: {stderr}"
        );
    }
}

#[test]
fn sighup_reloads_the_certificate_of_the_running_binary() {
    let dir = dir("sighup");
    let old = make_cert(&dir, "live");
    let mut child = Command::new(env!("CARGO_BIN_EXE_smolchat"))
        .args(["--listen", "127.0.0.1:0", "--log-level", "info"])
        .args(["--tls-cert", old.cert.to_str().unwrap()])
        .args(["--tls-key", old.key.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("a log line").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            assert!(line.contains("wss://"), "{line}");
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let new = make_cert(&dir, "next");
    run(async {
        let (_, presented) = tls_connect(addr, &[&old.der, &new.der]).await;
        assert_eq!(presented, old.der.to_vec());
    });
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    loop {
        let line = lines.next().expect("a log line").unwrap();
        if line.contains("SIGHUP") {
            assert!(line.contains("reloaded"), "{line}");
            break;
        }
    }
    run(async {
        let (_, presented) = tls_connect(addr, &[&old.der, &new.der]).await;
        assert_eq!(presented, new.der.to_vec());
    });
    let _ = child.kill();
    let _ = child.wait();
}
