//! Serving smolchat from inside a tokio application.
//!
//! ```text
//! cargo run --example embed_tokio                               # ws://127.0.0.1:8090/ws
//! cargo run --example embed_tokio -- --listen 127.0.0.1:0       # any free port
//! ```
//!
//! It prints `listening on ADDR` on stdout once the socket is bound, serves the chat (and the
//! web page, `/healthz` and `/metrics`) like the `smolchat` binary, and on Ctrl-C closes every
//! client with 1001 and exits once they are gone (or after the shutdown timeout).
//!
//! smolchat's core is not tied to smol: [`Chat::new`] returns a handle and the hub's future,
//! and [`Chat::serve`] serves one accepted connection given as any futures-io
//! `AsyncRead + AsyncWrite` byte stream. So embedding takes three things from the host
//! runtime: somewhere to run the hub future (`tokio::spawn`), an accept loop, and one task
//! per connection. tokio's sockets implement tokio's own I/O traits; `tokio_util::compat`
//! adapts them to futures-io. The sessions' timers (pings, idle and write timeouts) are
//! `async-io`'s, which run on a background thread of their own and wake tokio tasks like any
//! other waker.
//!
//! tests/executors.rs compiles this file as a module and runs [`run`] against real clients.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use smolchat::{Chat, Config};
use tokio::net::TcpListener;
use tokio_util::compat::TokioAsyncReadCompatExt;

const USAGE: &str =
    "usage: embed_tokio [--listen ADDR]   (default 127.0.0.1:8090; port 0 picks one)";

#[tokio::main]
async fn main() -> ExitCode {
    let listen = match parse_args() {
        Ok(listen) => listen,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    smolchat::logger::init(log::LevelFilter::Info);
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("embed_tokio: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        // stdout is line-buffered: the line is out as soon as it is printed, for whoever
        // started us with port 0 and waits to learn the port.
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("embed_tokio: {e}");
            return ExitCode::FAILURE;
        }
    }
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
        log::info!("Ctrl-C: shutting down");
    };
    if run(listener, Config::default(), stop).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse_args() -> Result<SocketAddr, String> {
    use lexopt::Arg;
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 8090));
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Arg::Long("listen") => {
                let value = parser.value().map_err(|e| e.to_string())?;
                let value = value.to_string_lossy();
                listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value:?}: {e}"))?;
            }
            Arg::Short('h') | Arg::Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(listen)
}

/// Serves the chat on `listener` until `stop` completes, then shuts down gracefully: stop
/// accepting, close every client with 1001, and wait up to `config.shutdown_timeout` for the
/// sessions to end. Returns whether they all ended in time.
pub async fn run(listener: TcpListener, config: Config, stop: impl Future<Output = ()>) -> bool {
    let shutdown_timeout = config.shutdown_timeout;
    let (chat, hub) = Chat::new(config);
    // The hub future is plain `Send + 'static` work: any executor can run it.
    let hub = tokio::spawn(hub);

    tokio::select! {
        () = accept_loop(listener, chat.clone()) => {}
        () = stop => {}
    }
    // Leaving the select dropped the accept loop, its listener and its `Chat` handle.

    chat.shutdown().await;
    drop(chat);
    // Every session task owns a `Chat` clone, and the hub's future ends once the last handle is
    // gone: awaiting it is how we learn that every session has finished.
    match tokio::time::timeout(shutdown_timeout, hub).await {
        Ok(_) => {
            log::info!("stopped");
            true
        }
        Err(_) => {
            log::warn!("some clients did not finish within {shutdown_timeout:?}");
            false
        }
    }
}

/// Accepts connections forever, one tokio task each.
async fn accept_loop(listener: TcpListener, chat: Chat) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: pause so a lasting error is not a busy loop.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small chat frames should not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let chat = chat.clone();
        tokio::spawn(async move {
            chat.serve(stream.compat(), &peer.to_string()).await;
        });
    }
}
