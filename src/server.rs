//! The smol side: the listening socket, the accept loop, executor threads and shutdown.
//!
//! [`start`] binds the address from the config, creates the hub ([`Chat::new`]) and runs the
//! accept loop, the sessions and the hub on `--threads` threads that share one run queue
//! (`server::executor`), the hub's task first whenever it is woken (every message passes
//! through the hub, which must not wait behind the writers it woke). Each accepted socket gets
//! `TCP_NODELAY` and its own task, which hands it to [`Chat::serve`]. Everything chat-related
//! lives behind that call; this file only moves sockets and threads around.
//!
//! [`Running::shutdown`] stops accepting, asks the hub to close every client with 1001, waits
//! up to `--shutdown-timeout` for the sessions to finish writing, and stops the threads.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use async_channel::{Receiver, Sender};
use smol::{Async, future};

use crate::{Chat, Config};

mod executor;
use executor::Executor;

/// A server running on its own threads.
pub struct Running {
    addr: SocketAddr,
    chat: Chat,
    /// Closed to stop the accept loop (and, last, the executor threads).
    stop_accepting: Sender<()>,
    stop_threads: Sender<()>,
    /// Every session holds a clone of the matching sender; `recv` fails once all are gone.
    sessions: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
    /// TLS (feature `tls`): the certificates, reloaded by [`Running::reload_tls`].
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::tls::Tls>>,
}

/// Opens a byte stream to Redis with smol's sockets, for the Redis backend
/// ([`Chat::try_new_with_redis`]; feature `redis`): TCP with `TCP_NODELAY`, or a Unix socket.
/// This is the one place the backend's I/O meets the executor.
#[cfg(feature = "redis")]
pub fn redis_stream(
    addr: redis::ConnectionAddr,
) -> std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<crate::cluster::RedisStream>> + Send>>
{
    use tokio_util::compat::FuturesAsyncReadCompatExt;
    Box::pin(async move {
        let stream: crate::cluster::RedisStream = match addr {
            redis::ConnectionAddr::Tcp(host, port) => {
                let tcp = smol::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                Box::pin(tcp.compat())
            }
            redis::ConnectionAddr::Unix(path) => {
                Box::pin(smol::net::unix::UnixStream::connect(path).await?.compat())
            }
            other => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "unsupported Redis address (TLS is not built in)",
                    format!("{other:?}"),
                )));
            }
        };
        Ok(stream)
    })
}

/// Descriptors kept free for the listener, logs, and HTTP requests that are not sessions.
const SPARE_DESCRIPTORS: u64 = 64;

/// Binds `config.listen` and starts serving on `config.threads` threads (0: one per core).
/// First raises the process's descriptor limit as far as allowed, and lowers
/// `--max-connections` (with a warning) if the limit cannot hold that many sockets.
pub fn start(config: Config) -> io::Result<Running> {
    let (config, tls) = prepare(config)?;
    #[cfg(not(feature = "tls"))]
    let () = tls;
    let listener = bind(config.listen)?;
    let addr = listener.local_addr()?;
    let listener = Async::new(listener)?;
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };

    #[cfg(feature = "redis")]
    let created = Chat::try_new_with_redis(config, redis_stream);
    #[cfg(not(feature = "redis"))]
    let created = Chat::try_new(config);
    let (chat, hub) = created.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let executor = Executor::default();
    // The hub runs before the sessions whenever it is woken: every message passes through the
    // hub, and in the sessions' queue (first in, first out) it would wait behind every writer
    // it woke for the previous messages: a whole writer phase, 4 ms at 1,000 clients, added to
    // every message's latency (BENCHMARKS.md, "Latency against the tokio-tungstenite peer").
    executor.spawn_hub(hub);

    let (stop_accepting, accepting_stopped) = async_channel::bounded::<()>(1);
    let (session_alive, sessions) = async_channel::bounded::<()>(1);
    let accept = accept_loop(
        listener,
        Arc::new(chat.clone()),
        executor.clone(),
        session_alive,
        #[cfg(feature = "tls")]
        tls.clone(),
    );
    executor.spawn(async move {
        // `recv` fails when `stop_accepting` is closed, which ends the loop.
        future::or(accept, async {
            let _ = accepting_stopped.recv().await;
        })
        .await
    });

    let (stop_threads, threads_stopped) = async_channel::bounded::<()>(1);
    let threads = spawn_threads(threads, &executor, threads_stopped);
    #[cfg(feature = "tls")]
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    #[cfg(not(feature = "tls"))]
    let scheme = "ws";
    log::info!("listening on {addr} (WebSocket at {scheme}://{addr}/ws)");
    Ok(Running {
        addr,
        chat,
        stop_accepting,
        stop_threads,
        sessions,
        threads,
        #[cfg(feature = "tls")]
        tls,
    })
}

/// Starts `n` executor threads, which run tasks until `stop` is closed; the last one to stop
/// drops the tasks left.
fn spawn_threads(n: usize, executor: &Executor, stop: Receiver<()>) -> Vec<JoinHandle<()>> {
    let running = Arc::new(());
    (0..n)
        .map(|i| {
            let (executor, stop, running) = (executor.clone(), stop.clone(), running.clone());
            std::thread::Builder::new()
                .name(format!("smolchat-{i}"))
                // async-io's `block_on`, not futures-lite's: a thread with nothing to run then
                // waits in the reactor itself (epoll), so a socket event wakes the task on the
                // same thread. futures-lite's parks the thread and leaves the reactor to
                // async-io's background thread, and every event costs a hop between two threads
                // (on one core, a context switch each way) before any task sees it.
                .spawn(move || {
                    // Dropped however the thread ends (a panicking task unwinds through
                    // `block_on` in a debug build), so the last thread out always closes.
                    let _last_out = LastOut(Some(running), executor.clone());
                    let stopped = async {
                        let _ = stop.recv().await;
                    };
                    smol::block_on(future::or(executor.run(), stopped));
                })
                .expect("spawn executor thread")
        })
        .collect()
}

/// Closes the executor when the last of the threads that share `.0` ends.
struct LastOut(Option<Arc<()>>, Executor);

impl Drop for LastOut {
    fn drop(&mut self) {
        if self.0.take().and_then(Arc::into_inner).is_some() {
            self.1.close();
        }
    }
}

/// Pending connections the kernel queues before `accept`; std's `TcpListener::bind` asks
/// for 128, and a burst of thousands of clients (a reconnect storm after a restart) then
/// loses handshakes that each cost the client a one-second SYN retry.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listening socket like `TcpListener::bind`, with a longer accept queue.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, bind, listen, socket_with, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    bind(&fd, &addr)?;
    listen(&fd, LISTEN_BACKLOG)?;
    Ok(TcpListener::from(fd))
}

/// What [`start`] does before it binds, for `smolchat --check`: validates the settings, raises
/// the descriptor limit and fits `--max-connections` to it, and reads and checks the TLS
/// certificate and key. Returns the settings a start would run with. A bad setting is an
/// `InvalidInput` error.
pub fn check(config: Config) -> io::Result<Config> {
    prepare(config).map(|(config, _)| config)
}

#[cfg(feature = "tls")]
type Certificates = Option<Arc<crate::tls::Tls>>;
#[cfg(not(feature = "tls"))]
type Certificates = ();

fn prepare(mut config: Config) -> io::Result<(Config, Certificates)> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    config.validate().map_err(invalid)?;
    config.max_connections = fit_descriptor_limit(config.max_connections);
    #[cfg(feature = "tls")]
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            Some(Arc::new(crate::tls::Tls::load(cert, key).map_err(invalid)?))
        }
        _ => None,
    };
    #[cfg(not(feature = "tls"))]
    let tls = ();
    Ok((config, tls))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns how many connections fit in
/// it. A session holds one descriptor; a few are kept spare.
fn fit_descriptor_limit(wanted: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        return wanted; // unlimited
    };
    let soft = match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    ) {
        Ok(()) => hard,
        Err(e) => {
            log::warn!("cannot raise the descriptor limit to {hard}: {e}");
            limit.current.unwrap_or(hard)
        }
    };
    let fits = soft.saturating_sub(SPARE_DESCRIPTORS) as usize;
    if wanted > fits {
        log::warn!(
            "--max-connections {wanted} lowered to {fits}: the descriptor limit is {soft} \
             (raise it with `ulimit -n` or LimitNOFILE= to allow more)"
        );
        fits.max(1)
    } else {
        wanted
    }
}

async fn accept_loop(
    listener: Async<TcpListener>,
    chat: Arc<Chat>,
    executor: Executor,
    session_alive: Sender<()>,
    #[cfg(feature = "tls")] tls: Option<Arc<crate::tls::Tls>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or a connection reset before we got to it: log it, and
                // pause briefly so a persistent error does not become a busy loop.
                log::warn!("accept failed: {e}");
                smol::Timer::after(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.get_ref().set_nodelay(true);
        // What the task keeps for the connection's whole life: one pointer to the hub handle,
        // the peer as text.
        let chat = chat.clone();
        let peer = peer.to_string();
        let alive = session_alive.clone();
        // The certificate of the moment: a reload changes it for the connections after it.
        #[cfg(feature = "tls")]
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        executor.spawn(async move {
            #[cfg(feature = "tls")]
            if let Some(acceptor) = acceptor {
                chat.serve_tls(stream, &peer, acceptor).await;
                drop(alive);
                return;
            }
            chat.serve(stream, &peer).await;
            drop(alive);
        });
    }
}

impl Running {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// TLS (feature `tls`): reads the certificate and key files again (what SIGHUP does). New
    /// connections get the new certificate; on an error the old one stays. `Ok(false)` when
    /// the server does not use TLS.
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self) -> Result<bool, crate::config::ConfigError> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// What SIGHUP does: reads every file the server holds a secret from again — the TLS
    /// certificate and key (feature `tls`), the tokens' secret (`--auth-secret-file`) and the
    /// API key (`--api-key-file`) — and logs what happened to each. New connections and API
    /// calls use the new ones; open sessions stay. One that cannot be read, or is not valid,
    /// keeps the old one, with an error in the log naming the file's flag.
    pub fn reload(&self) {
        #[cfg(feature = "tls")]
        match self.reload_tls() {
            Ok(true) => log::info!("SIGHUP: certificate and key reloaded"),
            Ok(false) => {}
            Err(e) => log::error!("SIGHUP: reload failed, keeping the old certificate: {e}"),
        }
        #[cfg(any(feature = "auth", feature = "api"))]
        self.reload_secrets();
    }

    /// The secrets' part of [`Running::reload`].
    #[cfg(any(feature = "auth", feature = "api"))]
    fn reload_secrets(&self) {
        let config = self.chat.config();
        let mut secrets: Vec<(&str, &crate::secret::Secret, usize)> = Vec::new();
        #[cfg(feature = "auth")]
        if let Some(auth) = &config.auth {
            secrets.push((
                "--auth-secret-file",
                &auth.secret,
                crate::token::MIN_SECRET_BYTES,
            ));
        }
        #[cfg(feature = "api")]
        if let Some(key) = &config.api_key {
            secrets.push(("--api-key-file", key, crate::secret::MIN_API_KEY_BYTES));
        }
        for (flag, secret, min) in secrets {
            match secret.reload(min) {
                Ok(true) => log::info!("SIGHUP: {flag} reloaded"),
                Ok(false) => {}
                Err(e) => log::error!("SIGHUP: {flag} not reloaded, keeping the old one: {e}"),
            }
        }
    }

    /// The hub handle, for metrics or for serving more connections by hand.
    pub fn chat(&self) -> &Chat {
        &self.chat
    }

    /// Shuts down gracefully: stop accepting, close every client with 1001, give them up to
    /// `--shutdown-timeout` to flush, then stop the executor threads. Blocks until done.
    pub fn shutdown(self) {
        let Running {
            chat,
            stop_accepting,
            stop_threads,
            sessions,
            threads,
            ..
        } = self;
        stop_accepting.close();
        let timeout = chat.config().shutdown_timeout;
        let drained = smol::block_on(async {
            chat.shutdown().await;
            crate::deadline::within(timeout, async {
                // Fails (returns) once the last session has dropped its sender.
                let _ = sessions.recv().await;
                #[cfg(feature = "redis")]
                chat.bridge_stopped().await;
            })
            .await
        });
        if drained.is_none() {
            log::warn!("shutdown: some clients did not finish within {timeout:?}");
        }
        stop_threads.close();
        for t in threads {
            let _ = t.join();
        }
        log::info!("stopped");
    }
}
