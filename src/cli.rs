//! The command line: which flags this build has, `--help`, reading flags, their environment
//! variables and the `smolchat token` subcommand into an [`Action`], and the limits `--check`
//! lists, read back through the same tables.
//!
//! Data enters as the process's arguments and environment ([`Config::from_env`], or
//! [`Config::from_args`] with any of both) and leaves as an [`Action`]: a validated [`Config`]
//! to run or `--check`, a token to print, or a text to print. Each flag is declared once, in a
//! [`crate::config::Section`] beside the code it configures; `SECTIONS` plugs them in, one
//! line each, in `--help`'s order, which is also the order flags are applied in. Sections
//! lower in the crate (config, token, api, tls, cluster) never name this module, so adding
//! one makes no import cycle.

use std::ffi::OsString;
use std::time::Duration;

#[cfg(feature = "store")]
use crate::config::STORE;
use crate::config::{
    Config, ConfigError, Flag, Flags, Invalid, MAIN, Quantity, Section, err, lex_error,
};
#[cfg(feature = "auth")]
use crate::config::{MAX_TOKEN_TTL, duration_up_to};
#[cfg(feature = "auth")]
use crate::secret::Secret;

/// What the command line asked for: run with a configuration, or print something and exit.
#[derive(Debug)]
pub enum Action {
    /// Start the server.
    Run(Box<Config>),
    /// Print the help text (`--help`).
    Help,
    /// Print the version (`--version`).
    Version,
    /// Validate the configuration, print it and the worst-case memory, and exit (`--check`).
    Check(Box<Config>),
    /// Print a signed token (`smolchat token`, feature `auth`).
    #[cfg(feature = "auth")]
    Token(TokenRequest),
    /// Print `smolchat token --help`.
    #[cfg(feature = "auth")]
    TokenHelp,
}

/// Every section of flags this build has: the one place a feature's flags are plugged in.
const SECTIONS: &[&Section] = &[
    &MAIN,
    #[cfg(feature = "auth")]
    &crate::token::FLAGS,
    #[cfg(feature = "api")]
    &crate::api::FLAGS,
    #[cfg(feature = "store")]
    &STORE,
    #[cfg(feature = "redis")]
    &crate::cluster::backend::FLAGS,
    #[cfg(feature = "tls")]
    &crate::tls::FLAGS,
];

/// Where `--help`'s text starts: the column after the widest common flag.
const HELP_COLUMN: usize = 30;

/// The text of `smolchat --help`, from `SECTIONS`.
pub fn help() -> String {
    let mut out = String::new();
    for section in SECTIONS {
        out.push_str(section.heading);
        for flag in section.flags.table {
            help_line(
                &mut out,
                &["--", flag.name(), " ", flag.value()],
                flag.help(),
            );
            if !flag.default().is_empty() {
                out.extend([" [default: ", flag.default(), "]"]);
            }
            out.push('\n');
        }
        for (synopsis, text) in section.footer {
            help_line(&mut out, &[synopsis], text);
            out.push('\n');
        }
    }
    out
}

/// One entry of `--help`: the synopsis (in pieces), then its text from [`HELP_COLUMN`] on; a
/// `\n` in the text starts a new line, indented as far.
fn help_line(out: &mut String, synopsis: &[&str], text: &str) {
    let start = out.len();
    out.push_str("  ");
    out.extend(synopsis.iter().copied());
    let mut pad = HELP_COLUMN.saturating_sub(out.len() - start).max(2);
    for line in text.split('\n') {
        out.extend(std::iter::repeat_n(' ', pad));
        out.push_str(line);
        out.push('\n');
        pad = HELP_COLUMN;
    }
    out.truncate(out.len() - 1); // the caller ends the entry
}

/// Every flag this build has, in the order they are applied.
#[cfg(test)]
fn all_flags() -> impl Iterator<Item = &'static Flag> {
    SECTIONS.iter().flat_map(|section| section.flags.table)
}

/// The flag named `name` (without the dashes), if this build has it.
fn find(name: &str) -> Option<(&'static Flags, &'static Flag)> {
    for section in SECTIONS {
        for flag in section.flags.table {
            if flag.name() == name {
                return Some((&section.flags, flag));
            }
        }
    }
    None
}

/// The environment variable of `flag`: `SMOLCHAT_` and its name in upper case, `_` for `-`.
fn env_var(flag: &Flag) -> String {
    let mut var = String::from("SMOLCHAT_");
    var.extend(flag.name().bytes().map(|b| match b {
        b'-' => '_',
        b => b.to_ascii_uppercase() as char,
    }));
    var
}

/// What the command line said, before any value is parsed: each flag with its text, in the
/// order given, and what to do.
struct Given {
    values: Vec<(&'static Flag, String)>,
    check: bool,
}

impl Given {
    /// Reads the command line (`smolchat token` aside): flags and their values, unparsed.
    fn read<I: IntoIterator<Item = OsString>>(
        args: I,
    ) -> Result<Result<Given, Action>, ConfigError> {
        use lexopt::Arg;

        let mut given = Given {
            values: Vec::new(),
            check: false,
        };
        let mut parser = lexopt::Parser::from_args(args);
        while let Some(arg) = parser.next().map_err(|e| lex_error(&e))? {
            let name = match arg {
                Arg::Short('h') | Arg::Long("help") => return Ok(Err(Action::Help)),
                Arg::Short('V') | Arg::Long("version") => return Ok(Err(Action::Version)),
                Arg::Long("check") => {
                    given.check = true;
                    continue;
                }
                Arg::Long(name) => name.to_string(),
                Arg::Short(c) => return Err(err(&format!("-{c}"), "unknown option; see --help")),
                Arg::Value(v) => {
                    let v = v.to_string_lossy();
                    return Err(err(&v, "unexpected argument; options start with --"));
                }
            };
            let Some((_, flag)) = find(&name) else {
                return Err(err(&format!("--{name}"), "unknown option; see --help"));
            };
            let value = parser.value().map_err(|e| lex_error(&e))?;
            let Some(value) = value.to_str() else {
                return Err(err(&format!("--{name}"), "value is not valid UTF-8"));
            };
            given.values.push((flag, value.to_string()));
        }
        Ok(Ok(given))
    }
}

impl Config {
    /// Reads the process's command line and environment.
    pub fn from_env() -> Result<Action, ConfigError> {
        Self::from_args(std::env::args_os().skip(1), |key| std::env::var(key).ok())
    }

    /// Reads `args` (without the program name), falling back to `env` for options not given.
    /// `--allow-origin` and `--allow-host` in the environment are comma-separated lists.
    pub fn from_args<I, E>(args: I, env: E) -> Result<Action, ConfigError>
    where
        I: IntoIterator<Item = OsString>,
        E: Fn(&str) -> Option<String>,
    {
        #[cfg(feature = "auth")]
        let mut args = args.into_iter().peekable();
        #[cfg(feature = "auth")]
        if args.peek().is_some_and(|a| a == "token") {
            args.next();
            return token_request(args, env);
        }
        let given = match Given::read(args)? {
            Ok(given) => given,
            Err(action) => return Ok(action),
        };
        let mut config = Config::default();
        // Flags whose value came from the environment: their errors name the variable.
        let mut from_env: Vec<(&str, String)> = Vec::new();
        for (flags, flag) in SECTIONS
            .iter()
            .flat_map(|s| s.flags.table.iter().map(|flag| (&s.flags, flag)))
        {
            let mut any = false;
            for (given, value) in &given.values {
                if given.name() == flag.name() {
                    config.set_flag(flags, flag, value)?;
                    any = true;
                }
            }
            let var = env_var(flag);
            if let (false, Some(value)) = (any, env(&var)) {
                config
                    .set_from_env(flags, flag, &value)
                    .map_err(|e| e.named_by(&var))?;
                from_env.push((flag.name(), var));
            }
        }
        // Unless set, `--queue-bytes` grows to what the other settings need (see
        // `min_queue_bytes`), so that raising `--max-message-bytes` alone keeps a working server.
        let queue_bytes_set = given.values.iter().any(|(f, _)| f.name() == "queue-bytes")
            || env("SMOLCHAT_QUEUE_BYTES").is_some();
        if !queue_bytes_set {
            config.queue_bytes = config.queue_bytes.max(config.min_queue_bytes());
        }
        config.validate().map_err(|e| {
            match from_env
                .iter()
                .find(|(flag, _)| e.flag.strip_prefix("--") == Some(*flag))
            {
                Some((_, var)) => e.named_by(var),
                None => e,
            }
        })?;
        Ok(match given.check {
            true => Action::Check(Box::new(config)),
            false => Action::Run(Box::new(config)),
        })
    }

    /// Sets one flag (`"history"`, without the dashes) from its text form, validating it.
    #[cfg(any(test, feature = "auth"))]
    pub(crate) fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        match find(name) {
            Some((flags, flag)) => self.set_flag(flags, flag, value),
            None => Err(err(&format!("--{name}"), "unknown option; see --help")),
        }
    }

    fn set_flag(&mut self, flags: &Flags, flag: &Flag, value: &str) -> Result<(), ConfigError> {
        (flags.set)(self, flag.name(), value).map_err(|invalid| {
            let message = match invalid {
                Invalid::Expected(what) => format!("{what}, got {value:?}"),
                Invalid::Said(message) => message,
            };
            err(&format!("--{}", flag.name()), &message)
        })
    }

    /// A flag's value from its environment variable: a list's items one by one.
    fn set_from_env(&mut self, flags: &Flags, flag: &Flag, value: &str) -> Result<(), ConfigError> {
        if !flag.list {
            return self.set_flag(flags, flag, value);
        }
        for item in value.split(',').filter(|o| !o.trim().is_empty()) {
            self.set_flag(flags, flag, item.trim())?;
        }
        Ok(())
    }

    /// Checks the settings against each other: every section's checks, in `SECTIONS`'s
    /// order. The first that fails names the flag to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for check in SECTIONS.iter().filter_map(|section| section.check) {
            check(self)?;
        }
        Ok(())
    }

    /// The numeric limits in effect, as `(flag, value)`: what `smolchat --check` prints. Every
    /// flag declared with a number kind (see `flags!`), in `--help`'s order, read back through
    /// its table: a new limit is listed by its table line alone.
    pub fn numeric_limits(&self) -> Vec<(&'static str, usize)> {
        self.quantities()
            .into_iter()
            .filter_map(|(name, quantity)| match quantity {
                Quantity::Number(n) => Some((name, n)),
                Quantity::Duration(_) => None,
            })
            .collect()
    }

    /// The timeouts and intervals in effect, as `(flag, value)`: every flag declared with a
    /// duration kind, as [`Config::numeric_limits`] does for numbers.
    pub fn durations(&self) -> Vec<(&'static str, Duration)> {
        self.quantities()
            .into_iter()
            .filter_map(|(name, quantity)| match quantity {
                Quantity::Duration(d) => Some((name, d)),
                Quantity::Number(_) => None,
            })
            .collect()
    }

    /// Every number and duration flag this build has, with its value in effect, in `--help`'s
    /// order.
    fn quantities(&self) -> Vec<(&'static str, Quantity)> {
        let mut all = Vec::new();
        for section in SECTIONS {
            for (i, flag) in section.flags.table.iter().enumerate() {
                if let Some(quantity) = (section.flags.get)(self, i) {
                    all.push((flag.name(), quantity));
                }
            }
        }
        all
    }
}

/// What `smolchat token --sub NAME [--ttl DUR] [--rooms a,b]` asks for.
#[cfg(feature = "auth")]
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub secret: Secret,
    pub sub: String,
    pub ttl: Duration,
    pub rooms: Option<Vec<String>>,
}

/// The help text of `smolchat token`.
#[cfg(feature = "auth")]
pub const TOKEN_HELP: &str = "\
smolchat token: print a token signed with the server's secret

Usage: smolchat token --sub NAME [--ttl DUR] [--rooms a,b] [--auth-secret-file PATH]

  --sub NAME                  the user: 1-32 letters, digits, '_', '-', '.'; not guest-...
  --ttl DUR                   how long the token is valid: 30m, 8h, 14d; at most 90d
                              (a token cannot be revoked before it expires) [default: 1h]
  --rooms a,b                 the only rooms the user may join [default: any]
  --auth-secret-file PATH     the server's HS256 secret (env SMOLCHAT_AUTH_SECRET_FILE)
";

/// Reads `smolchat token`'s options (the arguments after `token`).
#[cfg(feature = "auth")]
fn token_request<I, E>(args: I, env: E) -> Result<Action, ConfigError>
where
    I: IntoIterator<Item = OsString>,
    E: Fn(&str) -> Option<String>,
{
    use lexopt::Arg;

    let mut parser = lexopt::Parser::from_args(args);
    let (mut sub, mut ttl, mut rooms) = (None, Duration::from_secs(3600), None);
    let mut secret_file = env("SMOLCHAT_AUTH_SECRET_FILE");
    let mut from_env = secret_file.is_some();
    while let Some(arg) = parser.next().map_err(|e| lex_error(&e))? {
        let flag = match arg {
            Arg::Short('h') | Arg::Long("help") => return Ok(Action::TokenHelp),
            Arg::Long(name) => format!("--{name}"),
            _ => {
                return Err(err(
                    "token",
                    "unexpected argument; see smolchat token --help",
                ));
            }
        };
        let value = parser.value().map_err(|e| lex_error(&e))?;
        let value = value.to_string_lossy().into_owned();
        let bad = |what: &str| err(&flag, &format!("{what}, got {value:?}"));
        match flag.as_str() {
            "--sub" if crate::token::valid_user_name(&value) => sub = Some(value),
            "--sub" => {
                return Err(bad(
                    "expected 1-32 letters, digits, '_', '-' or '.', not starting with guest-",
                ));
            }
            "--ttl" => {
                let expected = "expected a positive duration up to 90 days, like 30m, 8h or 14d";
                ttl = duration_up_to(&value, MAX_TOKEN_TTL, expected).map_err(|m| bad(&m))?;
                if ttl.as_secs() == 0 {
                    return Err(bad("expected at least 1s (tokens count whole seconds)"));
                }
            }
            "--rooms" => {
                let list: Vec<String> = value.split(',').map(|r| r.trim().to_string()).collect();
                if !list.iter().all(|r| crate::protocol::valid_room(r)) {
                    return Err(bad(
                        "expected room names (a-z, 0-9, _ or -) separated by commas",
                    ));
                }
                rooms = Some(list);
            }
            "--auth-secret-file" => {
                secret_file = Some(value);
                from_env = false;
            }
            _ => return Err(err(&flag, "unknown option; see smolchat token --help")),
        }
    }
    let sub = sub.ok_or_else(|| err("--sub", "is required: the user the token is for"))?;
    let path = secret_file.ok_or_else(|| {
        err(
            "--auth-secret-file",
            "is required (or SMOLCHAT_AUTH_SECRET_FILE): the secret to sign with",
        )
    })?;
    let mut config = Config::default();
    config.set("auth-secret-file", &path).map_err(|e| {
        if from_env {
            e.named_by("SMOLCHAT_AUTH_SECRET_FILE")
        } else {
            e
        }
    })?;
    let secret = config.auth.expect("set above").secret;
    Ok(Action::Token(TokenRequest {
        secret,
        sub,
        ttl,
        rooms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::config::{DAY, MAX_TOKEN_TTL, Protocol, duration_up_to};

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let action = Config::from_args(args.iter().map(OsString::from), |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })?;
        match action {
            Action::Run(c) => Ok(*c),
            other => panic!("expected a config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_flags_and_environment() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.history, 100);

        let c = parse(
            &["--history", "5", "--listen=[::1]:0"],
            &[("SMOLCHAT_HISTORY", "7"), ("SMOLCHAT_QUEUE", "90")],
        )
        .unwrap();
        assert_eq!(c.history, 5, "a flag wins over the environment");
        assert_eq!(c.queue, 90, "the environment fills what flags leave out");
        assert_eq!(c.listen.to_string(), "[::1]:0");
    }

    #[test]
    fn durations_and_repeated_origins() {
        let c = parse(
            &[
                "--ping-interval",
                "500ms",
                "--idle-timeout",
                "2m",
                "--allow-origin",
                "https://a.example/",
                "--allow-origin",
                "*",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.ping_interval, Duration::from_millis(500));
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.allow_origins, vec!["https://a.example", "*"]);
    }

    #[test]
    fn durations_take_hours_and_days() {
        let c = parse(&["--idle-timeout", "1h", "--write-timeout", "1d"], &[]).unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.write_timeout, Duration::from_secs(24 * 3600));
        assert!(
            parse(&["--write-timeout", "25h"], &[]).is_err(),
            "a day at most"
        );
        assert!(
            parse(&["--write-timeout", "2d"], &[]).is_err(),
            "a day at most"
        );
        assert!(parse(&["--write-timeout", "1w"], &[]).is_err());
        assert_eq!(duration_up_to("14d", MAX_TOKEN_TTL, ""), Ok(14 * DAY));
        assert!(duration_up_to("91d", MAX_TOKEN_TTL, "").is_err());
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let e = parse(&[], &[("SMOLCHAT_HISTORY", "lots")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SMOLCHAT_HISTORY: expected a whole number from 0 to 1000000, got \"lots\""
        );
        let e = parse(&[], &[("SMOLCHAT_QUEUE", "20")]).unwrap_err();
        assert_eq!(
            e.flag, "SMOLCHAT_QUEUE",
            "checked against other settings: {e}"
        );
        let e = parse(&["--queue", "20"], &[("SMOLCHAT_QUEUE", "300")]).unwrap_err();
        assert_eq!(e.flag, "--queue", "the flag won: {e}");
        let e = parse(&[], &[("SMOLCHAT_ALLOW_ORIGIN", "https://a.example,nope")]).unwrap_err();
        assert_eq!(e.flag, "SMOLCHAT_ALLOW_ORIGIN");
    }

    #[test]
    fn check_is_a_run_that_stops_short() {
        let args = ["--history", "5", "--check"].map(OsString::from);
        match Config::from_args(args, |_| None) {
            Ok(Action::Check(c)) => assert_eq!(c.history, 5),
            other => panic!("expected a check, got {other:?}"),
        }
        let args = ["--check", "--history", "x"].map(OsString::from);
        assert!(Config::from_args(args, |_| None).is_err());
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (&["--history", "lots"][..], "--history"),
            (&["--listen", "8080"][..], "--listen"),
            (&["--default-room", "No Spaces"][..], "--default-room"),
            (&["--queue", "0"][..], "--queue"),
            (&["--write-timeout", "0"][..], "--write-timeout"),
            (
                &["--ping-interval", "18446744073709551615"][..],
                "--ping-interval",
            ),
            (&["--ping-interval", "80s"][..], "--ping-interval"),
            (&["--nope", "1"][..], "--nope"),
            (&["--history"][..], "--history"),
        ] {
            let e = parse(args, &[]).unwrap_err();
            assert_eq!(e.flag, flag, "{args:?} gave {e}");
        }
        let e = parse(&["--history", "500"], &[]).unwrap_err();
        assert_eq!(
            e.flag, "--queue",
            "the default queue cannot hold a 500-message replay"
        );
        assert!(parse(&["--history", "500", "--queue", "508"], &[]).is_ok());
        let e = parse(&["--queue-bytes", "70000"], &[]).unwrap_err();
        assert_eq!(e.flag, "--queue-bytes", "a join replays up to 64 KiB: {e}");
        let e = parse(&["--history-bytes", "1000"], &[]).unwrap_err();
        assert_eq!(
            e.flag, "--history-bytes",
            "cannot hold one 4 KiB message: {e}"
        );
        let e = parse(&["--history-total-bytes", "1000"], &[]).unwrap_err();
        assert_eq!(e.flag, "--history-total-bytes");
        let c = parse(
            &["--protocol", "raw", "--max-message-bytes", "16777216"],
            &[],
        )
        .unwrap();
        assert_eq!(c.protocol, Protocol::Raw);
        assert!(
            c.queue_bytes >= 2 * 16_777_216,
            "an unset --queue-bytes grows to hold two of the largest messages (no rate limit)"
        );
        let e = parse(
            &[
                "--max-message-bytes",
                "65536",
                "--history-bytes",
                "0",
                "--queue-bytes",
                "131072",
            ],
            &[],
        );
        assert_eq!(
            e.unwrap_err().flag,
            "--queue-bytes",
            "a set value is checked, not grown"
        );
        assert_eq!(
            parse(&["--protocol", "v2"], &[]).unwrap_err().flag,
            "--protocol"
        );
        let e = parse(&["--allow-host", "a b"], &[]).unwrap_err();
        assert_eq!(e.flag, "--allow-host");
        let c = parse(&[], &[("SMOLCHAT_ALLOW_HOST", "a.example, B.example")]).unwrap();
        assert_eq!(c.allow_hosts, ["a.example", "b.example"]);
        let e = parse(&[], &[("SMOLCHAT_LOG_LEVEL", "loud")]).unwrap_err();
        assert_eq!(e.flag, "SMOLCHAT_LOG_LEVEL");
    }

    /// Each flag's `--help` default is what `Config::default` holds: the table and the struct
    /// cannot drift apart.
    #[test]
    fn the_tables_defaults_are_the_configs() {
        let default = format!("{:?}", Config::default());
        for flag in all_flags().filter(|f| !f.default().is_empty() && f.name() != "auth") {
            let mut config = Config::default();
            config.set(flag.name(), flag.default()).unwrap();
            assert_eq!(format!("{config:?}"), default, "--{}", flag.name());
        }
    }

    /// `--check` lists exactly the flags whose placeholder is `N` or `DUR`, and reads each back
    /// from the field its table line sets: a limit declared with a closure instead of a number
    /// or duration kind, or a kind that names another field, fails here.
    #[test]
    fn check_lists_every_number_and_duration_flag_as_set() {
        let default = Config::default();
        let (numbers, durations) = (default.numeric_limits(), default.durations());
        for flag in all_flags() {
            let name = flag.name();
            let number = numbers.iter().any(|(n, _)| *n == name);
            let duration = durations.iter().any(|(n, _)| *n == name);
            assert_eq!(number, flag.value() == "N", "--{name}");
            assert_eq!(duration, flag.value() == "DUR", "--{name}");
        }
        for (name, n) in &numbers {
            let mut config = Config::default();
            config.set(name, &(n + 1).to_string()).unwrap();
            let mut expected = numbers.clone();
            expected.iter_mut().find(|(m, _)| m == name).unwrap().1 = n + 1;
            assert_eq!(config.numeric_limits(), expected, "--{name}");
        }
        for (name, _) in &durations {
            let mut config = Config::default();
            config.set(name, "7s").unwrap();
            let mut expected = durations.clone();
            expected.iter_mut().find(|(m, _)| m == name).unwrap().1 = Duration::from_secs(7);
            assert_eq!(config.durations(), expected, "--{name}");
        }
    }

    /// The README's configuration table and `--help` come from the same facts: every row for a
    /// flag of this build names the placeholder and default the flag table declares.
    #[test]
    fn the_readmes_flag_table_agrees_with_the_flag_table() {
        let readme = include_str!("../README.md");
        let mut rows = 0;
        for line in readme.lines().filter(|l| l.starts_with("| `--")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let synopsis = cells[0].trim_start_matches("| `--").trim_end_matches('`');
            let (name, value) = synopsis.split_once(' ').unwrap_or((synopsis, ""));
            let Some(flag) = all_flags().find(|f| f.name() == name) else {
                continue;
            };
            rows += 1;
            assert_eq!(
                value.replace("\\|", "|"),
                flag.value(),
                "--{name}'s placeholder"
            );
            let default = cells[1].trim_matches('`');
            let default = if default == "none" { "" } else { default };
            assert_eq!(default, flag.default(), "--{name}'s default in the README");
        }
        assert!(
            rows >= MAIN.flags.table.len(),
            "every flag of every build has a row: {rows}"
        );
        for flag in all_flags() {
            let named = format!("`--{}", flag.name());
            let docs = [readme, include_str!("../docs/durability.md")];
            assert!(
                docs.iter().any(|d| d.contains(&named)),
                "--{} is documented",
                flag.name()
            );
        }
    }
}
