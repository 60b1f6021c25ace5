//! The `smolchat` binary: read the configuration, start the server, wait for a signal.
//!
//! Everything else lives in the library; this file is the glue a user's `main` would be.
//! SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once. SIGHUP reloads
//! the files secrets come from: the TLS certificate and key (feature `tls`), the tokens'
//! secret and the API key.

use std::process::ExitCode;

use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
#[cfg(feature = "auth")]
use smolchat::cli::TOKEN_HELP;
use smolchat::cli::{self, Action};
use smolchat::config::{Config, Protocol};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(Action::Run(config)) => *config,
        Ok(Action::Check(config)) => return check(*config),
        Ok(other) => return print(other),
        Err(e) => {
            eprintln!("smolchat: {e}");
            return ExitCode::from(2);
        }
    };
    smolchat::logger::init(config.log_level);

    // Register for signals before starting, so an early Ctrl-C is not lost.
    // SIGHUP too in every build: its default action would kill the server without a
    // goodbye, and deploy hooks send it for certificate renewals.
    let mut signals = match Signals::new([Signal::Term, Signal::Int, Signal::Hup]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("smolchat: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = config.listen;
    let server = match smolchat::server::start(config) {
        Ok(server) => server,
        // A setting that only start-up could check, such as a TLS file: exit 2 like a bad flag.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            eprintln!("smolchat: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("smolchat: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };

    let first = match wait_for_stop(&mut signals, &server) {
        Some(Signal::Int) => "SIGINT",
        Some(Signal::Term) => "SIGTERM",
        _ => "no more signals",
    };
    log::info!("{first}: shutting down (a second signal exits at once)");
    std::thread::spawn(move || {
        // A SIGHUP now is not a second request to stop.
        while let Some(Ok(signal)) = futures_lite::future::block_on(signals.next()) {
            if signal != Signal::Hup {
                break;
            }
        }
        eprintln!("smolchat: second signal; exiting now");
        std::process::exit(1);
    });
    server.shutdown();
    ExitCode::SUCCESS
}

/// The actions that print something and exit: `--help`, `--version`, `smolchat token`.
fn print(action: Action) -> ExitCode {
    match action {
        Action::Help => print!("{}", cli::help()),
        Action::Version => println!(
            "smolchat {} (features: {})",
            env!("CARGO_PKG_VERSION"),
            smolchat::FEATURES.join(", ")
        ),
        #[cfg(feature = "auth")]
        Action::TokenHelp => print!("{TOKEN_HELP}"),
        #[cfg(feature = "auth")]
        Action::Token(request) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let exp = now + request.ttl.as_secs();
            let rooms = request.rooms.as_deref();
            println!(
                "{}",
                smolchat::token::sign(&request.secret, &request.sub, exp, rooms)
            );
        }
        // `main` runs and checks; nothing to print.
        Action::Run(_) | Action::Check(_) => {}
    }
    ExitCode::SUCCESS
}

/// Waits for SIGINT or SIGTERM. SIGHUP meanwhile reloads the certificate (with TLS), the
/// tokens' secret and the API key from their files ([`smolchat::server::Running::reload`]).
fn wait_for_stop(signals: &mut Signals, server: &smolchat::server::Running) -> Option<Signal> {
    loop {
        let signal = futures_lite::future::block_on(signals.next())?.ok()?;
        if signal != Signal::Hup {
            return Some(signal);
        }
        server.reload();
    }
}

/// `smolchat --check`: what a start does short of listening (the settings checked against each
/// other, the descriptor limit, the TLS files), then the effective settings and the README's
/// worst-case memory for them.
fn check(config: Config) -> ExitCode {
    let wanted = config.max_connections;
    let config = match smolchat::server::check(config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("smolchat: {e}");
            return ExitCode::from(2);
        }
    };
    let protocol = match config.protocol {
        Protocol::V1 => "v1",
        Protocol::Raw => "raw",
    };
    println!(
        "smolchat --check: every option is valid; nothing was started\n  --protocol \
         {protocol}\n  --listen {}",
        config.listen
    );
    for (flag, value) in config.numeric_limits() {
        println!("  --{flag} {value}");
    }
    for (flag, value) in config.durations() {
        println!("  --{flag} {value:?}");
    }
    #[cfg(feature = "auth")]
    if let Some(auth) = &config.auth {
        let auth_mode = if auth.guests { "optional" } else { "required" };
        let bytes = auth.secret.bytes().len();
        println!("  --auth {auth_mode} (--auth-secret-file: a secret of {bytes} bytes)");
    }
    #[cfg(feature = "api")]
    if let Some(key) = &config.api_key {
        let bytes = key.bytes().len();
        println!("  --api-key-file: a key of {bytes} bytes (the HTTP API is on)");
    }
    #[cfg(feature = "redis")]
    if let Some(url) = &config.redis {
        println!("  --redis {url} (not connected to by --check)");
    }
    #[cfg(feature = "tls")]
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let (cert, key) = (cert.display(), key.display());
        println!("  --tls-cert {cert} --tls-key {key} (read, the key matches)");
    }
    if config.max_connections < wanted {
        println!("  (--max-connections {wanted} lowered to fit the descriptor limit)");
    }
    let w = config.worst_case_memory();
    let total = w.total();
    println!(
        "worst-case memory (README's formula): {} MiB ({total} bytes), {} sessions x {} KiB \
         of it",
        fixed(total, 1 << 20, 1),
        config.max_connections,
        fixed(w.per_session, 1 << 10, 2),
    );
    ExitCode::SUCCESS
}

/// `bytes` in `unit`s with `places` decimals. Fixed-point, not floats: float formatting would
/// add 20 KB to the binary.
#[inline(never)]
fn fixed(bytes: u64, unit: u64, places: u32) -> String {
    let scale = 10u64.pow(places);
    let n = (bytes * scale + unit / 2) / unit;
    format!(
        "{}.{:0width$}",
        n / scale,
        n % scale,
        width = places as usize
    )
}
