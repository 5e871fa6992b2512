//! nats-server with JetStream, a single server or a cluster, each test its own.
//!
//! By default the servers take any client. [`NatsSecurity`] turns on the
//! shipped least-privilege users (deploy/nats/otako.conf, with fresh
//! passwords) and TLS with a private CA made for the test; the harness's own
//! clients then connect as [`Role::Ops`].

use crate::env::{free_port, workspace_root};
use crate::process::{fresh_dir, Proc};
use crate::tls::TlsFiles;
use crate::wait;
use async_nats::jetstream;
use otako_common::nats::{
    connect_options, parse_servers, NatsOptions, BACKEND_INBOX_PREFIX, GATEWAY_INBOX_PREFIX,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the test's servers authenticate clients.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsSecurity {
    /// The users of deploy/nats/otako.conf, each with a fresh password.
    pub users: bool,
    /// TLS only (`tls://` URLs), with a certificate from a private CA.
    pub tls: bool,
    /// Cluster members keep the other members' client URLs to themselves.
    pub no_advertise: bool,
    /// Operator mode: every client authenticates with a `.creds` file of
    /// its role (`crate::creds`). Not with `users`.
    pub operator: bool,
}

/// A user of the shipped configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Backend,
    Ops,
}

impl Role {
    pub fn user(self) -> &'static str {
        match self {
            Role::Gateway => "otako-gateway",
            Role::Backend => "otako-backend",
            Role::Ops => "otako-ops",
        }
    }

    /// The reply-subject prefix the role's binary uses (the configuration
    /// lets each role read its own replies only).
    pub fn inbox_prefix(self) -> Option<&'static str> {
        match self {
            Role::Gateway => Some(GATEWAY_INBOX_PREFIX),
            Role::Backend => Some(BACKEND_INBOX_PREFIX),
            Role::Ops => None,
        }
    }

    fn password_env(self) -> &'static str {
        match self {
            Role::Gateway => "OTAKO_NATS_GATEWAY_PASSWORD",
            Role::Backend => "OTAKO_NATS_BACKEND_PASSWORD",
            Role::Ops => "OTAKO_NATS_OPS_PASSWORD",
        }
    }
}

const ROLES: [Role; 3] = [Role::Gateway, Role::Backend, Role::Ops];

/// The shipped configuration.
pub fn shipped_config() -> PathBuf {
    workspace_root().join("deploy/nats/otako.conf")
}

fn random_password() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Generous: a 3-server cluster elects its JetStream meta leader in a few
/// seconds, more on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Server {
    name: String,
    port: u16,
    cluster_port: u16,
    store: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

pub struct Nats {
    servers: Vec<Server>,
    /// Comma-separated routes to every member (empty for a single server).
    routes: String,
    /// Passwords of the shipped users, in [`ROLES`] order, when they are on.
    passwords: Option<[String; 3]>,
    tls: Option<TlsFiles>,
    /// The configuration file every server reads, if any.
    config: Option<PathBuf>,
    /// Whether cluster members keep the other members' client URLs to
    /// themselves, so a client reaches only the servers it was given.
    no_advertise: bool,
    /// The operator, account and users of operator mode.
    operator: Option<crate::creds::Operator>,
}

impl Nats {
    /// One server. `dir` holds the stores; `logs` the logs.
    pub async fn single(dir: &Path, logs: &Path) -> Nats {
        Nats::start(1, dir, logs, NatsSecurity::default()).await
    }

    /// `n` servers in one cluster (n ≥ 2).
    pub async fn cluster(n: usize, dir: &Path, logs: &Path) -> Nats {
        assert!(n >= 2, "a cluster has at least two servers");
        Nats::start(n, dir, logs, NatsSecurity::default()).await
    }

    /// A cluster whose servers do not advertise each other to clients: a
    /// client given one URL stays on that server (or on nothing while it is
    /// unreachable) instead of moving to a member it learnt of.
    pub async fn cluster_without_advertising(n: usize, dir: &Path, logs: &Path) -> Nats {
        assert!(n >= 2, "a cluster has at least two servers");
        let security = NatsSecurity {
            no_advertise: true,
            ..NatsSecurity::default()
        };
        Nats::start(n, dir, logs, security).await
    }

    /// `n` servers (one, or a cluster) with users and/or TLS.
    pub async fn start(n: usize, dir: &Path, logs: &Path, security: NatsSecurity) -> Nats {
        assert!(n >= 1);
        let servers: Vec<Server> = (0..n)
            .map(|i| Server {
                name: format!("nats-{}", i + 1),
                port: free_port(),
                cluster_port: free_port(),
                store: fresh_dir(&dir.join(format!("nats-{}", i + 1))),
                log: logs.join(format!("nats-{}.log", i + 1)),
                proc: None,
            })
            .collect();
        let routes = if n > 1 {
            servers
                .iter()
                .map(|s| format!("nats-route://127.0.0.1:{}", s.cluster_port))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            String::new()
        };
        let passwords = security
            .users
            .then(|| [random_password(), random_password(), random_password()]);
        let tls = security
            .tls
            .then(|| crate::tls::make_certificates(&dir.join("tls")));
        assert!(
            !(security.operator && security.users),
            "operator mode replaces the shipped users"
        );
        let operator = security.operator.then(|| {
            let roles: Vec<&str> = ROLES.iter().map(|r| r.user()).collect();
            crate::creds::Operator::create(&dir.join("creds"), &roles)
        });
        let config = match (&tls, security.users) {
            (None, false) if operator.is_some() => {
                let path = dir.join("nats-operator.conf");
                let text = &operator.as_ref().expect("operator mode").config;
                std::fs::write(&path, text).expect("writing the NATS configuration");
                Some(path)
            }
            (None, false) => None,
            (None, true) => Some(shipped_config()),
            (Some(tls), users) => {
                // The shipped users (when on) plus a TLS block.
                let mut text = String::new();
                if users {
                    // `include` resolves relative to this file; a copy is simpler.
                    text = std::fs::read_to_string(shipped_config())
                        .expect("reading deploy/nats/otako.conf");
                }
                text.push_str(&format!(
                    "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
                    tls.server_cert, tls.server_key
                ));
                let path = dir.join("nats-test.conf");
                std::fs::write(&path, text).expect("writing the NATS configuration");
                Some(path)
            }
        };
        let mut nats = Nats {
            servers,
            routes,
            passwords,
            tls,
            config,
            no_advertise: security.no_advertise,
            operator,
        };
        for i in 0..n {
            nats.spawn(i);
        }
        nats.wait_ready().await;
        nats
    }

    fn spawn(&mut self, i: usize) {
        let clustered = self.servers.len() > 1;
        let routes = self.routes.clone();
        let s = &mut self.servers[i];
        let script = workspace_root().join("deploy/scripts/nats.sh");
        let port = s.port.to_string();
        let cport = s.cluster_port.to_string();
        let store = s.store.to_string_lossy().into_owned();
        let mut args = vec![script.to_str().expect("utf-8 path"), &port, &store];
        if clustered {
            args.extend([s.name.as_str(), &cport, &routes]);
            if self.no_advertise {
                args.push("--no_advertise=true");
            }
        }
        let mut env: Vec<(&str, String)> = Vec::new();
        if let Some(config) = &self.config {
            env.push(("OTAKO_NATS_CONFIG", config.to_string_lossy().into_owned()));
        }
        if let Some(passwords) = &self.passwords {
            for (role, password) in ROLES.iter().zip(passwords) {
                env.push((role.password_env(), password.clone()));
            }
        }
        s.proc = Some(Proc::spawn(&s.name, "bash", &args, &env, &s.log));
    }

    /// Waits until every server takes clients and JetStream answers (in a
    /// cluster that means a meta leader was elected and every peer is known).
    pub async fn wait_ready(&mut self) {
        for i in 0..self.servers.len() {
            let url = self.url_as(i, Role::Ops);
            let options = self.options_for(Role::Ops);
            let client = wait::until(
                &format!("{} to accept clients", self.servers[i].name),
                READY_TIMEOUT,
                || {
                    if let Some(p) = self.servers[i].proc.as_mut() {
                        p.assert_running();
                    }
                    let (url, options) = (url.clone(), options.clone());
                    async move { connect_once(&url, &options).await.map(Some) }
                },
            )
            .await;
            let js = jetstream::new(client);
            wait::until("JetStream to answer", READY_TIMEOUT, || {
                let js = js.clone();
                async move { js.query_account().await.map(|_| Some(())) }
            })
            .await;
        }
        if self.servers.len() > 1 {
            // A replicated stream can be created only once every peer has
            // joined; this is the state the gateways need.
            let js = jetstream::new(self.client(0).await);
            let replicas = self.servers.len();
            wait::until(
                "the JetStream cluster to place a replicated stream",
                READY_TIMEOUT,
                || {
                    let js = js.clone();
                    async move {
                        js.create_stream(jetstream::stream::Config {
                            name: "E2E_READY".into(),
                            subjects: vec!["e2e.ready".into()],
                            num_replicas: replicas,
                            ..Default::default()
                        })
                        .await?;
                        js.delete_stream("E2E_READY").await?;
                        Ok::<_, async_nats::Error>(Some(()))
                    }
                },
            )
            .await;
        }
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Client URL of server `i`, without credentials.
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.servers[i].port)
    }

    /// Client address of server `i`.
    pub fn addr(&self, i: usize) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.servers[i].port).into()
    }

    /// Every server's URL, comma-separated (what OTAKO_NATS_URL accepts).
    pub fn urls(&self) -> String {
        self.urls_of(0..self.servers.len())
    }

    /// The URLs of servers `servers`, comma-separated.
    pub fn urls_of(&self, servers: std::ops::Range<usize>) -> String {
        assert!(
            !servers.is_empty() && servers.end <= self.servers.len(),
            "servers {servers:?} of a cluster of {}",
            self.servers.len()
        );
        servers.map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// Whether the servers require the shipped users.
    pub fn has_users(&self) -> bool {
        self.passwords.is_some()
    }

    /// The password of `role`; panics when the servers have no users.
    pub fn password(&self, role: Role) -> &str {
        let passwords = self.passwords.as_ref().expect("this NATS has no users");
        &passwords[ROLES.iter().position(|r| *r == role).expect("a role")]
    }

    /// URL of server `i` as `role` would use it: with the role's user and
    /// password when the servers have users, else [`Nats::url`].
    pub fn url_as(&self, i: usize, role: Role) -> String {
        let url = self.url(i);
        match &self.passwords {
            Some(_) => url.replacen(
                "://",
                &format!("://{}:{}@", role.user(), self.password(role)),
                1,
            ),
            None => url,
        }
    }

    /// The URLs of `servers` as `role` would use them, comma-separated.
    pub fn urls_of_as(&self, servers: std::ops::Range<usize>, role: Role) -> String {
        servers
            .map(|i| self.url_as(i, role))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every server's URL as `role` would use it, comma-separated.
    pub fn urls_as(&self, role: Role) -> String {
        (0..self.servers.len())
            .map(|i| self.url_as(i, role))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The CA certificate clients must trust, when the servers use TLS.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// The `.creds` file of `role`, in operator mode.
    pub fn creds_file(&self, role: Role) -> Option<PathBuf> {
        self.operator.as_ref().map(|o| o.creds(role.user()))
    }

    /// A `.creds` file of a user no server knows, in operator mode.
    pub fn stranger_creds(&self) -> Option<&Path> {
        self.operator.as_ref().map(|o| o.stranger.as_path())
    }

    /// Client options of `role`: its `.creds` file, the CA and the role's
    /// reply prefix.
    pub fn options_for(&self, role: Role) -> NatsOptions {
        NatsOptions {
            creds_file: self.creds_file(role),
            tls_ca: self.tls_ca().map(Path::to_path_buf),
            inbox_prefix: role.inbox_prefix().map(str::to_owned),
        }
    }

    /// A client connected to server `i` (as [`Role::Ops`] when the servers
    /// have users).
    pub async fn client(&self, i: usize) -> async_nats::Client {
        self.client_as(i, Role::Ops).await
    }

    /// A client connected to server `i` with `role`'s credentials.
    pub async fn client_as(&self, i: usize, role: Role) -> async_nats::Client {
        self.try_client(&self.url_as(i, role), &self.options_for(role))
            .await
            .unwrap_or_else(|e| panic!("connecting to {} as {role:?}: {e}", self.url(i)))
    }

    /// Connects once to `url` with `options`; the error as text.
    pub async fn try_client(
        &self,
        url: &str,
        options: &NatsOptions,
    ) -> Result<async_nats::Client, String> {
        connect_once(url, options).await
    }

    /// Kills server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.servers[i].proc.take() {
            p.kill();
        }
    }

    /// Starts server `i` again, with its store, and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready().await;
    }

    pub fn proc_mut(&mut self, i: usize) -> Option<&mut Proc> {
        self.servers[i].proc.as_mut()
    }
}

/// Connects the way the binaries do (the same URL parsing and options), once.
async fn connect_once(url: &str, options: &NatsOptions) -> Result<async_nats::Client, String> {
    let servers = parse_servers(url).map_err(|e| e.to_string())?;
    connect_options(&servers, options)
        .await
        .map_err(|e| e.to_string())?
        .name("otako-e2e")
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(servers.addrs)
        .await
        .map_err(|e| e.to_string())
}
