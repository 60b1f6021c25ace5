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
use smolchat::config::TOKEN_HELP;
use smolchat::config::{
    Action, Config, HELP, HELP_API, HELP_AUTH, HELP_REDIS, HELP_STORE, HELP_TLS,
};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(Action::Run(config)) => *config,
        Ok(Action::Help) => {
            print!("{HELP}{HELP_AUTH}{HELP_API}{HELP_STORE}{HELP_REDIS}{HELP_TLS}");
            return ExitCode::SUCCESS;
        }
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

    let first = wait_for_stop(&mut signals, &server);
    log::info!("received {first:?}; shutting down (a second signal exits at once)");
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
