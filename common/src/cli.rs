//! What both binaries' command lines share.

use crate::nats::NatsOptions;
use clap::Args;
use std::path::PathBuf;

/// Flags that the gateway and the backend read the same way. Each binary
/// embeds this with `#[command(flatten)]`, so the flag and environment
/// variable names (see CONTRACT.md) are defined in one place.
#[derive(Args)]
pub struct CommonArgs {
    /// NATS server URL(s), comma-separated; `nats://user:pass@host:4222`
    /// carries a user and password (percent-encoded), `tls://` requires TLS.
    // The value may hold a password: --help must not print it.
    #[arg(
        long,
        env = "OTAKO_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,

    /// NATS credentials file (a user JWT and its NKey seed).
    #[arg(long, env = "OTAKO_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// PEM file of a private CA to trust for NATS TLS; makes TLS required.
    #[arg(long, env = "OTAKO_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://otako@127.0.0.1:5432/otako"
    )]
    pub database_url: String,

    // No doc comment: the help names the other side of the shared secret, so
    // each binary sets it with `mut_arg("token_secret", ...)`.
    #[arg(long, env = "OTAKO_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Development mode: allows the fixed development token secret.
    #[arg(long, env = "OTAKO_DEV", value_parser = parse_flag, default_value = "0")]
    pub dev: bool,

    // The two flags below have always been listed last in --help, after each
    // binary's own flags; an explicit order keeps them there (clap puts
    // --help and --version at 999).
    /// Apply database migrations before starting.
    #[arg(long, display_order = 900)]
    pub migrate: bool,

    /// Log as JSON lines.
    #[arg(long, env = "OTAKO_LOG_JSON", value_parser = parse_flag, default_value = "0", display_order = 901)]
    pub log_json: bool,
}

/// Written by hand: the derived form would print the NATS password and the
/// token secret.
impl std::fmt::Debug for CommonArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonArgs")
            .field("nats_url", &crate::nats::redact(&self.nats_url))
            .field("nats_creds", &self.nats_creds)
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("database_url", &crate::nats::redact(&self.database_url))
            .field("token_secret", &self.token_secret.as_ref().map(|_| "***"))
            .field("dev", &self.dev)
            .field("migrate", &self.migrate)
            .field("log_json", &self.log_json)
            .finish()
    }
}

impl CommonArgs {
    /// The NATS options these flags give, with the binary's own reply-subject
    /// prefix (see [`crate::nats::GATEWAY_INBOX_PREFIX`]).
    pub fn nats_options(&self, inbox_prefix: &str) -> NatsOptions {
        NatsOptions {
            creds_file: self.nats_creds.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            inbox_prefix: Some(inbox_prefix.to_owned()),
        }
    }
}

/// Parses a boolean environment flag the way operators write them.
pub fn parse_flag(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected 1 or 0, got {s:?}")),
    }
}

/// Resolves on SIGTERM (Kubernetes, compose) or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_flag, CommonArgs};
    use clap::{CommandFactory, FromArgMatches, Parser};
    use std::path::PathBuf;

    /// A stand-in for a binary's `Args`, embedding the shared flags the same way.
    #[derive(Debug, Parser)]
    struct TestArgs {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn flags() {
        assert_eq!(parse_flag("1"), Ok(true));
        assert_eq!(parse_flag("TRUE"), Ok(true));
        assert_eq!(parse_flag(""), Ok(false));
        assert!(parse_flag("maybe").is_err());
    }

    /// Parses `argv` as a binary would, but without the environment variables
    /// the flags also read: a developer's DATABASE_URL must not change the outcome.
    fn parse(argv: &[&str]) -> Result<CommonArgs, clap::Error> {
        let command = TestArgs::command().mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(argv)?;
        Ok(TestArgs::from_arg_matches(&matches)?.common)
    }

    #[test]
    fn common_args_defaults_and_overrides() {
        let defaults = parse(&["otako"]).unwrap();
        assert_eq!(defaults.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(
            defaults.database_url,
            "postgres://otako@127.0.0.1:5432/otako"
        );
        assert_eq!(defaults.token_secret, None);
        assert!(!defaults.dev);
        assert!(!defaults.migrate);
        assert!(!defaults.log_json);
        assert_eq!(defaults.nats_creds, None);
        assert_eq!(defaults.nats_tls_ca, None);

        let set = parse(&[
            "otako",
            "--nats-url",
            "nats://a:4222,nats://b:4222",
            "--token-secret",
            "s3cret",
            "--dev",
            "--migrate",
            "--nats-creds",
            "/run/otako.creds",
            "--nats-tls-ca",
            "/run/ca.pem",
        ])
        .unwrap();
        assert_eq!(set.nats_url, "nats://a:4222,nats://b:4222");
        assert_eq!(set.database_url, "postgres://otako@127.0.0.1:5432/otako");
        assert_eq!(set.token_secret.as_deref(), Some("s3cret"));
        assert!(set.dev);
        assert!(set.migrate);
        let nats = set.nats_options("_INBOX.x");
        assert_eq!(nats.creds_file, Some(PathBuf::from("/run/otako.creds")));
        assert_eq!(nats.tls_ca, Some(PathBuf::from("/run/ca.pem")));
        assert_eq!(nats.inbox_prefix.as_deref(), Some("_INBOX.x"));
        assert!(!set.log_json);

        assert!(parse(&["otako", "--no-such-flag"]).is_err());
    }

    /// `--help` shows environment values unless told not to; the NATS URL's
    /// may carry a password.
    #[test]
    fn help_hides_the_nats_url_value() {
        let command = TestArgs::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == "nats_url")
            .unwrap();
        assert!(arg.is_hide_env_values_set());
        let token = command
            .get_arguments()
            .find(|a| a.get_id() == "token_secret")
            .unwrap();
        assert!(token.is_hide_env_values_set());
    }

    #[test]
    fn debug_hides_secrets() {
        let args = parse(&[
            "otako",
            "--nats-url",
            "nats://gw:hunter2@a:4222",
            "--token-secret",
            "a-token-secret-of-thirty-two-bytes",
        ])
        .unwrap();
        let shown = format!("{args:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("thirty-two"), "{shown}");
        assert!(shown.contains("nats://gw:***@a:4222"), "{shown}");
    }
}
