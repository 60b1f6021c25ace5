//! The `smolchat` binary: read the configuration, start the server, wait for a signal.
//!
//! Everything else lives in the library; this file is the glue a user's `main` would be.
//! SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once. SIGHUP reloads
//! the TLS certificate and key (feature `tls`), and is logged and ignored otherwise.

use std::process::ExitCode;

use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
#[cfg(feature = "auth")]
use smolchat::config::TOKEN_HELP;
use smolchat::config::{Action, Config, HELP, HELP_API, HELP_AUTH, HELP_REDIS, HELP_TLS};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(Action::Run(config)) => *config,
        Ok(Action::Help) => {
            print!("{HELP}{HELP_AUTH}{HELP_API}{HELP_REDIS}{HELP_TLS}");
            return ExitCode::SUCCESS;
        }
        Ok(Action::Check(config)) => return check(*config),
        Ok(Action::Version) => {
            println!(
                "smolchat {} (features: {})",
                env!("CARGO_PKG_VERSION"),
                smolchat::FEATURES.join(", ")
            );
            return ExitCode::SUCCESS;
        }
        #[cfg(feature = "auth")]
        Ok(Action::TokenHelp) => {
            print!("{TOKEN_HELP}");
            return ExitCode::SUCCESS;
        }
        #[cfg(feature = "auth")]
        Ok(Action::Token(request)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let exp = now + request.ttl.as_secs();
            let rooms = request.rooms.as_deref();
            println!(
                "{}",
                smolchat::token::sign(&request.secret, &request.sub, exp, rooms)
            );
            return ExitCode::SUCCESS;
        }
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

/// Waits for SIGINT or SIGTERM. With TLS, SIGHUP reloads the certificate meanwhile.
fn wait_for_stop(signals: &mut Signals, server: &smolchat::server::Running) -> Option<Signal> {
    loop {
        let signal = futures_lite::future::block_on(signals.next())?.ok()?;
        if signal != Signal::Hup {
            return Some(signal);
        }
        #[cfg(feature = "tls")]
        match server.reload_tls() {
            Ok(true) => log::info!("SIGHUP: certificate and key reloaded"),
            Ok(false) => log::info!("SIGHUP: no TLS certificate to reload"),
            Err(e) => log::error!("SIGHUP: reload failed, keeping the old certificate: {e}"),
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = server;
            log::info!("SIGHUP: nothing to reload (built without the tls feature)");
        }
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
    println!("smolchat --check: every option is valid; nothing was started");
    for (flag, value) in config.effective() {
        println!("  --{flag} {value}");
    }
    if config.max_connections < wanted {
        println!("  (--max-connections {wanted} lowered to fit the descriptor limit)");
    }
    let w = config.worst_case_memory();
    let mib = |bytes: u64| format!("{:>9.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    let (c, e) = (config.max_connections, config.max_event_bytes());
    println!("worst-case memory (README, \"Limits and guarantees\"; largest event E = {e} bytes):");
    println!("{}  base: binary, threads, executor", mib(w.base));
    println!(
        "{}  {c} sessions x {:.2} KiB",
        mib(w.sessions),
        w.per_session as f64 / 1024.0
    );
    println!(
        "{}  {} pending connections x 12 KiB",
        mib(w.pending),
        config.max_pending
    );
    println!("{}  the hub's inbox", mib(w.inbox));
    println!("{}  history", mib(w.history));
    println!("{}  history bookkeeping", mib(w.bookkeeping));
    println!("{}  rooms", mib(w.rooms));
    if w.tls > 0 {
        println!("{}  TLS buffers", mib(w.tls));
    }
    let total = w.total();
    match total >> 30 {
        0 => println!("{}  in all ({total} bytes)", mib(total)),
        _ => println!(
            "{}  in all ({total} bytes, {:.2} GiB)",
            mib(total),
            total as f64 / (1u64 << 30) as f64
        ),
    }
    ExitCode::SUCCESS
}
