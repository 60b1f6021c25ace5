//! `smolchat --check`: the real binary validates every option as a start would, prints the
//! effective settings and the README's worst-case memory, and exits without listening.

use std::net::TcpListener;
#[cfg(any(feature = "auth", feature = "tls"))]
use std::path::PathBuf;
use std::process::{Command, Output};

/// The README's "A 64 MB gateway" flags, as written there (the doc check runs that very line).
const GATEWAY: &str = "--threads 1 --max-connections 1000 --max-pending 64 --queue 64 \
    --queue-bytes 16384 --history 50 --history-bytes 8192 --history-total-bytes 1048576 \
    --max-rooms 200 --max-message-bytes 2048 --rate-burst 4";

fn smolchat(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smolchat"));
    command.args(args).env_clear();
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run smolchat")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(any(feature = "auth", feature = "tls"))]
fn dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smolchat-check-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_validates_prints_and_does_not_listen() {
    // The port is taken: a real start would fail to listen; --check never tries.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let mut args: Vec<&str> = GATEWAY.split_whitespace().collect();
    args.extend(["--listen", &listen, "--check"]);
    let out = smolchat(&args, &[("SMOLCHAT_IDLE_TIMEOUT", "1h")]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("--listen {listen}\n")), "{stdout}");
    assert!(stdout.contains("--queue-bytes 16384\n"), "{stdout}");
    assert!(
        stdout.contains("--idle-timeout 3600s\n"),
        "the environment counts: {stdout}"
    );
    // The README's figures ("A 64 MB gateway": 46.7 MiB; the defaults: 1,533.4 MiB), from its
    // formula.
    let worst = stdout
        .lines()
        .find(|l| l.starts_with("worst-case memory"))
        .unwrap();
    assert!(worst.contains(": 46.7 MiB ("), "{worst}");
    assert!(worst.contains("1000 sessions x 35.96 KiB"), "{worst}");
    let out = smolchat(&["--check"], &[]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains(": 1533.4 MiB ("), "{stdout}");
}

#[test]
fn help_says_what_the_readme_says() {
    let help = text(&smolchat(&["--help"], &[]).stdout);
    assert!(
        help.contains(
            "--rate-limit N              frames per second per client, pings and pongs included"
        ),
        "{help}"
    );
    assert!(help.contains("500ms, 10s, 2m, 1h (at most 1d)"), "{help}");
    assert!(help.contains("  --check  "), "{help}");
}

#[test]
fn check_exits_2_on_a_bad_value_naming_the_flag_or_the_variable() {
    let out = smolchat(&["--queue-bytes", "16000", "--check"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("smolchat: --queue-bytes: must be at least"));
    assert!(out.stdout.is_empty());

    let out = smolchat(&["--check"], &[("SMOLCHAT_QUEUE", "3")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("smolchat: SMOLCHAT_QUEUE: must be at least"),
        "{}",
        text(&out.stderr)
    );
    let out = smolchat(&["--check", "--queue", "3"], &[]);
    assert!(text(&out.stderr).starts_with("smolchat: --queue: "));

    let out = smolchat(&["--check"], &[("SMOLCHAT_PING_INTERVAL", "2d")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("SMOLCHAT_PING_INTERVAL: expected a positive duration up to a day")
    );
}

#[cfg(feature = "auth")]
#[test]
fn check_reads_the_secret_files_and_token_takes_hours_and_days() {
    let dir = dir("files");
    let (secret, key, short) = (
        dir.join("auth-secret"),
        dir.join("api-key"),
        dir.join("short"),
    );
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef0123456789\n").unwrap();
    std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
    std::fs::write(&short, "too short\n").unwrap();
    let (secret, key, short) = (
        secret.to_str().unwrap(),
        key.to_str().unwrap(),
        short.to_str().unwrap(),
    );

    let mut args = vec![
        "--auth-secret-file",
        secret,
        "--auth",
        "optional",
        "--check",
    ];
    #[cfg(feature = "api")]
    args.extend(["--api-key-file", key]);
    let out = smolchat(&args, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("--auth optional (--auth-secret-file: a secret of 42 bytes)\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("0123456789"),
        "secrets are not printed: {stdout}"
    );
    #[cfg(feature = "api")]
    assert!(
        stdout.contains("--api-key-file: a key of 20 bytes"),
        "{stdout}"
    );

    let out = smolchat(&["--auth-secret-file", short, "--check"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("smolchat: --auth-secret-file: "));
    let out = smolchat(&["--check"], &[("SMOLCHAT_AUTH_SECRET_FILE", short)]);
    assert!(text(&out.stderr).starts_with("smolchat: SMOLCHAT_AUTH_SECRET_FILE: "));

    for ttl in ["8h", "14d", "90d"] {
        let out = smolchat(
            &[
                "token",
                "--sub",
                "ada",
                "--ttl",
                ttl,
                "--auth-secret-file",
                secret,
            ],
            &[],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "--ttl {ttl}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout).matches('.').count(), 2, "a JWT");
    }
    let out = smolchat(
        &[
            "token",
            "--sub",
            "ada",
            "--ttl",
            "91d",
            "--auth-secret-file",
            secret,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--ttl: expected a positive duration up to 90 days"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(feature = "tls")]
#[test]
fn check_loads_the_tls_certificate_and_key() {
    let dir = dir("tls");
    let write = |name: &str| {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (
            cert.to_str().unwrap().to_string(),
            key.to_str().unwrap().to_string(),
        )
    };
    let (cert, key) = write("a");
    let (_, other_key) = write("b");
    let out = smolchat(&["--tls-cert", &cert, "--tls-key", &key, "--check"], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("(read, the key matches)"), "{stdout}");
    let out = smolchat(
        &["--tls-cert", &cert, "--tls-key", &other_key, "--check"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a key that is not the certificate's"
    );
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}
