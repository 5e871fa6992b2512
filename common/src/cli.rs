//! What both binaries' command lines share.

use clap::Args;

/// Flags that the gateway and the backend read the same way. Each binary
/// embeds this with `#[command(flatten)]`, so the flag and environment
/// variable names (see CONTRACT.md) are defined in one place.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "OTAKO_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

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

        let set = parse(&[
            "otako",
            "--nats-url",
            "nats://a:4222,nats://b:4222",
            "--token-secret",
            "s3cret",
            "--dev",
            "--migrate",
        ])
        .unwrap();
        assert_eq!(set.nats_url, "nats://a:4222,nats://b:4222");
        assert_eq!(set.database_url, "postgres://otako@127.0.0.1:5432/otako");
        assert_eq!(set.token_secret.as_deref(), Some("s3cret"));
        assert!(set.dev);
        assert!(set.migrate);
        assert!(!set.log_json);

        assert!(parse(&["otako", "--no-such-flag"]).is_err());
    }
}
