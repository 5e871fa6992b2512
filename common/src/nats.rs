//! Connecting to NATS the same way from both binaries.
//!
//! Credentials come from the URLs (`nats://user:pass@host:4222`, or
//! `nats://token@host:4222`), from a `.creds` file (a user JWT and its NKey
//! seed), and TLS from `tls://` URLs with an optional private CA. The client
//! library ignores user info in URLs, so it is taken out here and handed to it
//! as options; the server addresses it gets carry none, and every URL this
//! module prints has its password replaced by `***`.

use async_nats::{Client, ServerAddr};
use percent_encoding::percent_decode_str;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("bad NATS URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the NATS URLs carry different credentials ({first} and {second}); one set serves the whole list")]
    MixedCredentials { first: String, second: String },
    #[error("OTAKO_NATS_CREDS and a user in OTAKO_NATS_URL exclude each other")]
    CredsAndUrlUser,
    #[error("reading the NATS credentials file {path}: {reason}")]
    Creds { path: String, reason: String },
    #[error("reading the NATS TLS CA file {path}: {reason}")]
    TlsCa { path: String, reason: String },
    #[error("connecting to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
}

/// How a binary authenticates to NATS besides what its URLs carry, and the
/// prefix of its reply subjects.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// A `.creds` file: a user JWT and its NKey seed (`OTAKO_NATS_CREDS`).
    pub creds_file: Option<PathBuf>,
    /// PEM certificates of a private CA to trust (`OTAKO_NATS_TLS_CA`); set,
    /// it also makes TLS required on every connection.
    pub tls_ca: Option<PathBuf>,
    /// Reply subjects (request-reply, JetStream acks and deliveries) start
    /// with this instead of `_INBOX`, so the NATS configuration can let each
    /// role read its own replies only. `None` keeps `_INBOX`.
    pub inbox_prefix: Option<String>,
}

/// The gateway's reply subjects: the shipped NATS configuration lets only
/// the gateway user subscribe below it.
pub const GATEWAY_INBOX_PREFIX: &str = "_INBOX.otako-gateway";
/// The backend's reply subjects.
pub const BACKEND_INBOX_PREFIX: &str = "_INBOX.otako-backend";

/// What a URL's user info says.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    UserPassword {
        user: String,
        password: String,
    },
    /// A user part without a password is a token, as in the other NATS clients.
    Token(String),
}

impl std::fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlCredentials::UserPassword { user, .. } => write!(f, "user {user:?} with a password"),
            UrlCredentials::Token(_) => f.write_str("a token"),
        }
    }
}

/// The parsed URL list: addresses without user info, and the credentials
/// they carried.
#[derive(Debug)]
pub struct Servers {
    pub addrs: Vec<ServerAddr>,
    pub credentials: Option<UrlCredentials>,
    /// Any `tls://` URL: TLS is then required on every connection, the
    /// servers a cluster announces included.
    pub tls: bool,
}

/// Replaces the password (or token) of every URL in a comma-separated list
/// with `***`; the user name stays, so logs still say who connected. Works on
/// text that does not parse as a URL too, since that is when it is printed
/// in an error.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The last '@' ends the user info: a password with an unencoded '@' in it
    // is still hidden whole.
    match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = (&rest[..at], &rest[at..]);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}{user}:***{host}"),
                None => format!("{scheme}***{host}"),
            }
        }
        None => url.to_owned(),
    }
}

fn decode(part: &str, url: &str) -> Result<String, NatsError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| NatsError::BadUrl {
            url: redact_one(url),
            reason: "the user info is not valid percent-encoded UTF-8".into(),
        })
}

/// Parses the contract's comma-separated list of server URLs, taking the
/// credentials out of them. Credentials given on one URL serve every server
/// of the list (a cluster shares its users); two different sets are refused,
/// since the client sends one set to whichever server it reaches.
pub fn parse_servers(urls: &str) -> Result<Servers, NatsError> {
    let mut servers = Servers {
        addrs: Vec::new(),
        credentials: None,
        tls: false,
    };
    let mut credentials_from: Option<String> = None;
    for u in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let bad = |reason: String| NatsError::BadUrl {
            url: redact_one(u),
            reason,
        };
        let text = if u.contains("://") {
            u.to_owned()
        } else {
            format!("nats://{u}")
        };
        let mut url = url::Url::parse(&text).map_err(|e| bad(e.to_string()))?;
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            ("", Some(_)) => return Err(bad("a password without a user".into())),
            (user, None) => Some(UrlCredentials::Token(decode(user, u)?)),
            (user, Some(password)) => Some(UrlCredentials::UserPassword {
                user: decode(user, u)?,
                password: decode(password, u)?,
            }),
        };
        if credentials.is_some() {
            // Cannot fail on a URL with a host, which every NATS URL has.
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        let addr = ServerAddr::from_url(url).map_err(|e| bad(e.to_string()))?;
        if addr.is_websocket() {
            return Err(bad("WebSocket URLs are not supported".into()));
        }
        servers.tls |= addr.tls_required();
        if let Some(c) = credentials {
            match &servers.credentials {
                Some(first) if *first != c => {
                    return Err(NatsError::MixedCredentials {
                        first: credentials_from.unwrap_or_default(),
                        second: redact_one(u),
                    })
                }
                Some(_) => {}
                None => {
                    servers.credentials = Some(c);
                    credentials_from = Some(redact_one(u));
                }
            }
        }
        servers.addrs.push(addr);
    }
    if servers.addrs.is_empty() {
        return Err(NatsError::BadUrl {
            url: String::new(),
            reason: "no server URL".into(),
        });
    }
    Ok(servers)
}

/// The server addresses of a URL list, without their credentials.
pub fn server_addrs(urls: &str) -> Result<Vec<ServerAddr>, NatsError> {
    parse_servers(urls).map(|s| s.addrs)
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

/// Builds the client options for `urls` and `options`: credentials, TLS,
/// inbox prefix. Files are read here, so a missing one fails at start with
/// its own error rather than as a connection failure.
pub async fn connect_options(
    servers: &Servers,
    options: &NatsOptions,
) -> Result<async_nats::ConnectOptions, NatsError> {
    let mut opts = async_nats::ConnectOptions::new();
    match &servers.credentials {
        Some(_) if options.creds_file.is_some() => return Err(NatsError::CredsAndUrlUser),
        Some(UrlCredentials::UserPassword { user, password }) => {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        Some(UrlCredentials::Token(token)) => opts = opts.token(token.clone()),
        None => {}
    }
    if let Some(path) = &options.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| NatsError::Creds {
                path: path_text(path),
                reason: e.to_string(),
            })?;
    }
    if let Some(path) = &options.tls_ca {
        let pem = std::fs::read_to_string(path).map_err(|e| NatsError::TlsCa {
            path: path_text(path),
            reason: e.to_string(),
        })?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(NatsError::TlsCa {
                path: path_text(path),
                reason: "no PEM certificate in it".into(),
            });
        }
        opts = opts.add_root_certificates(path.clone());
    }
    if servers.tls || options.tls_ca.is_some() {
        opts = opts.require_tls(true);
    }
    if let Some(prefix) = &options.inbox_prefix {
        opts = opts.custom_inbox_prefix(prefix);
    }
    Ok(opts)
}

/// Connects to any of the servers in `urls`, logging connection changes.
pub async fn connect(
    urls: &str,
    options: &NatsOptions,
    name: String,
    request_timeout: Option<Duration>,
) -> Result<Client, NatsError> {
    let servers = parse_servers(urls)?;
    let shown = redact(urls);
    let opts = connect_options(&servers, options).await?;
    info!(servers = %shown, credentials = ?servers.credentials, creds_file = ?options.creds_file, "connecting to NATS");
    opts.name(name)
        .request_timeout(request_timeout)
        .event_callback(|event| async move { info!(%event, "nats connection") })
        .connect(servers.addrs)
        .await
        .map_err(|e| NatsError::Connect {
            url: shown,
            reason: e.to_string(),
        })
}

/// Retries a start-up step that needs JetStream: while a cluster elects its
/// meta leader or several nodes create the same bucket at once, requests can
/// fail or hang for a few seconds. Each try but the last is bounded in time.
pub async fn with_retries<T, E, F, Fut>(what: &str, mut step: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    const TRIES: u32 = 8;
    const TRY_TIMEOUT: Duration = Duration::from_secs(8);
    let mut wait = Duration::from_millis(200);
    for attempt in 1..TRIES {
        match tokio::time::timeout(TRY_TIMEOUT, step()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => warn!(error = %e, attempt, "{what} failed; retrying"),
            Err(_) => warn!(attempt, "{what} timed out; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    step().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_separated_urls() {
        assert_eq!(
            server_addrs("nats://a:4222, nats://b:4223").unwrap().len(),
            2
        );
        assert_eq!(server_addrs("nats://a:4222").unwrap().len(), 1);
        assert_eq!(server_addrs("a:4222").unwrap().len(), 1);
        assert!(server_addrs("nats://a:notaport").is_err());
        assert!(server_addrs(" , ").is_err());
        assert!(server_addrs("http://a:4222").is_err());
    }

    #[test]
    fn redacts_passwords_and_tokens() {
        assert_eq!(
            redact("nats://otako:s3cret@nats:4222"),
            "nats://otako:***@nats:4222"
        );
        assert_eq!(redact("nats://tok3n@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(redact("u:pw@nats"), "u:***@nats");
        // An unencoded '@' in the password is hidden whole.
        assert_eq!(redact("tls://u:p@ss@h:1"), "tls://u:***@h:1");
        assert_eq!(
            redact("nats://a:x1@h1:4222,nats://a:x1@h2:4222,nats://h3"),
            "nats://a:***@h1:4222,nats://a:***@h2:4222,nats://h3"
        );
    }

    #[test]
    fn takes_credentials_out_of_every_url() {
        let s = parse_servers("nats://gw:p%40ss%2Cw@a:4222, nats://b:4223").unwrap();
        assert_eq!(
            s.credentials,
            Some(UrlCredentials::UserPassword {
                user: "gw".into(),
                password: "p@ss,w".into()
            })
        );
        assert!(!s.tls);
        for addr in &s.addrs {
            assert!(!addr.has_user_pass(), "{}", addr.as_url_str());
            assert!(!addr.as_url_str().contains("p%40ss"));
        }
        // The same credentials on every URL are fine.
        let s = parse_servers("nats://gw:pw@a,nats://gw:pw@b").unwrap();
        assert_eq!(s.addrs.len(), 2);
        let s = parse_servers("tls://t0ken@a:4222").unwrap();
        assert_eq!(s.credentials, Some(UrlCredentials::Token("t0ken".into())));
        assert!(s.tls);
        assert_eq!(parse_servers("nats://a").unwrap().credentials, None);
    }

    #[test]
    fn errors_never_show_a_password() {
        for (urls, secret) in [
            ("nats://gw:hunter2@a:notaport", "hunter2"),
            ("nats://gw:hunter2@a,nats://gw:other9@b", "other9"),
            ("nats://gw:hunter2@a,nats://x:hunter2@b", "hunter2"),
            ("nats://:hunter2@a", "hunter2"),
            ("ws://gw:hunter2@a", "hunter2"),
        ] {
            let e = parse_servers(urls).unwrap_err().to_string();
            assert!(!e.contains(secret), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let mixed = parse_servers("nats://gw:hunter2@a,nats://gw:other9@b").unwrap_err();
        assert!(
            matches!(mixed, NatsError::MixedCredentials { .. }),
            "{mixed}"
        );
        let debug = format!("{:?}", parse_servers("nats://gw:hunter2@a").unwrap());
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[tokio::test]
    async fn files_are_checked_before_connecting() {
        let dir = std::env::temp_dir().join(format!("otako-nats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let servers = parse_servers("nats://a").unwrap();
        let missing = NatsOptions {
            tls_ca: Some(dir.join("missing.pem")),
            ..Default::default()
        };
        assert!(matches!(
            connect_options(&servers, &missing).await,
            Err(NatsError::TlsCa { .. })
        ));
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let bad = NatsOptions {
            tls_ca: Some(not_pem),
            ..Default::default()
        };
        assert!(matches!(
            connect_options(&servers, &bad).await,
            Err(NatsError::TlsCa { .. })
        ));
        let creds = NatsOptions {
            creds_file: Some(dir.join("missing.creds")),
            ..Default::default()
        };
        assert!(matches!(
            connect_options(&servers, &creds).await,
            Err(NatsError::Creds { .. })
        ));
        let with_user = parse_servers("nats://u:p@a").unwrap();
        assert!(matches!(
            connect_options(&with_user, &creds).await,
            Err(NatsError::CredsAndUrlUser)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
