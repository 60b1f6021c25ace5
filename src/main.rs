//! The `smolchat` binary: read the configuration, start the server, wait for a signal.
//!
//! Everything else lives in the library; this file is the glue a user's `main` would be.
//! SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once.

use std::process::ExitCode;

use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use smolchat::config::{Action, Config, HELP, HELP_REDIS};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(Action::Run(config)) => *config,
        Ok(Action::Help) => {
            print!("{HELP}{HELP_REDIS}");
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
        Err(e) => {
            eprintln!("smolchat: {e}");
            return ExitCode::from(2);
        }
    };
    smolchat::logger::init(config.log_level);

    // Register for signals before starting, so an early Ctrl-C is not lost.
    let mut signals = match Signals::new([Signal::Term, Signal::Int]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("smolchat: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = config.listen;
    let server = match smolchat::server::start(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("smolchat: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };

    let first = futures_lite::future::block_on(signals.next());
    log::info!("received {first:?}; shutting down (a second signal exits at once)");
    std::thread::spawn(move || {
        futures_lite::future::block_on(signals.next());
        eprintln!("smolchat: second signal; exiting now");
        std::process::exit(1);
    });
    server.shutdown();
    ExitCode::SUCCESS
}
