//! A whole deployment for one test: NATS (one server or a cluster), a fresh
//! database, gateway nodes and the backend, all real processes.

use crate::api::{Api, User};
use crate::db::TestDb;
use crate::dispatch::DispatchClient;
use crate::env::{binary, free_port, state_dir, unique_test_name, TEST_SECRET};
use crate::nats::{Nats, NatsSecurity, Role};
use crate::process::{fresh_dir, Proc};
use crate::wait;
use crate::ws::{Auth, WsClient};
use otako_common::token::{Claims, TokenKey};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

/// How long a process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of every gateway node of a stack.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub heartbeat_ms: u64,
    pub max_sessions_per_user: u32,
    pub drain_window_ms: u64,
    /// Where the nodes reach PostgreSQL on loopback (e.g. a
    /// [`Proxy`](crate::proxy::Proxy)) instead of the shared server's port;
    /// the backend and the migrations keep the direct URL.
    pub database_port: Option<u16>,
    /// The NATS servers each node is given in `OTAKO_NATS_URL`, as a
    /// comma-separated list; `None`: node `i` is given server `i % n` only,
    /// so a test knows where each node connects.
    pub nats_servers: Option<Range<usize>>,
    /// Anything else, e.g. `("OTAKO_SESSION_QUEUE", "8")`.
    pub extra_env: Vec<(String, String)>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat_ms: 30_000,
            max_sessions_per_user: 10,
            // Short, so a graceful shutdown in a test does not take long.
            drain_window_ms: 200,
            database_port: None,
            nats_servers: None,
            extra_env: Vec::new(),
        }
    }
}

/// Settings of the backend's dispatcher.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The NATS servers the backend is given, comma-separated; `None`: all.
    pub nats_servers: Option<Range<usize>>,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff_ms: u64,
    pub extra_env: Vec<(String, String)>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            nats_servers: None,
            max_attempts: 5,
            // Generous: several tests assert that every event went through on
            // its first attempt, and a loaded 2-core CI machine can take a
            // while to answer; tests about timeouts set their own.
            timeout_ms: 10_000,
            backoff_ms: 100,
            extra_env: rate_limits_off(),
        }
    }
}

/// The backend's rate limits switched off: most tests post, sign up and
/// change members faster than any one user of a chat app may; the tests of
/// the limits turn them on with [`StackBuilder::backend_env`] (a later
/// entry wins).
pub fn rate_limits_off() -> Vec<(String, String)> {
    [
        "OTAKO_MESSAGE_RATE_PER_S",
        "OTAKO_MEMBER_RATE_PER_S",
        "OTAKO_SIGNUP_RATE_PER_S",
    ]
    .into_iter()
    .map(|k| (k.to_owned(), "0".to_owned()))
    .collect()
}

pub struct StackBuilder {
    name: Option<String>,
    gateways: usize,
    nats_servers: usize,
    nats_security: NatsSecurity,
    backend: bool,
    gateway: GatewayConfig,
    backend_config: BackendConfig,
}

impl StackBuilder {
    /// Names the logs' folder; defaults to `<test binary>/<test name>`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Gateway nodes started by `build` (default 1; 0 is allowed).
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// NATS servers: 1 (default) is a single server, more form a cluster
    /// and gateway node `i` connects to server `i % n`.
    pub fn nats_cluster(mut self, n: usize) -> Self {
        assert!(n >= 1);
        self.nats_servers = n;
        self
    }

    /// NATS with the shipped least-privilege users (deploy/nats/otako.conf);
    /// the gateways and the backend then connect with their own user's
    /// password in `OTAKO_NATS_URL`, the harness's clients as `otako-ops`.
    /// Default off: NATS takes any client.
    pub fn nats_auth(mut self, on: bool) -> Self {
        self.nats_security.users = on;
        self
    }

    /// NATS in operator mode (JWTs, as `nsc` makes them): the gateways and
    /// the backend authenticate with their role's `.creds` file in
    /// `OTAKO_NATS_CREDS`. Default off.
    pub fn nats_creds(mut self, on: bool) -> Self {
        self.nats_security.operator = on;
        self
    }

    /// NATS over TLS only, with a private CA made for the test; the
    /// processes get `tls://` URLs and `OTAKO_NATS_TLS_CA`. Default off.
    pub fn nats_tls(mut self, on: bool) -> Self {
        self.nats_security.tls = on;
        self
    }

    /// Every gateway node is given the URLs of `servers` (indices into the
    /// cluster) as one comma-separated `OTAKO_NATS_URL`, as a deployment
    /// would; the client picks one of them.
    pub fn gateway_nats_servers(mut self, servers: Range<usize>) -> Self {
        self.gateway.nats_servers = Some(servers);
        self
    }

    /// Every gateway node is given every server's URL.
    pub fn gateways_get_every_nats_url(self) -> Self {
        let n = self.nats_servers;
        self.gateway_nats_servers(0..n)
    }

    /// The backend is given the URLs of `servers` only (default: all).
    pub fn backend_nats_servers(mut self, servers: Range<usize>) -> Self {
        self.backend_config.nats_servers = Some(servers);
        self
    }

    /// Spreads the backend's requests over the gateway nodes: a cluster of
    /// four NATS servers, every node given the first three (one
    /// comma-separated list) and the backend the fourth alone, so no node
    /// is favoured by sharing the backend's server, and consecutive events
    /// of one channel are often handled by different nodes and published on
    /// different servers.
    pub fn spread_over_nodes(self) -> Self {
        self.nats_cluster(4)
            .gateway_nats_servers(0..3)
            .backend_nats_servers(3..4)
    }

    /// The NATS cluster's servers do not tell clients about each other (see
    /// [`Nats::cluster_without_advertising`]).
    pub fn nats_no_advertise(mut self) -> Self {
        self.nats_security.no_advertise = true;
        self
    }

    /// Whether `build` starts the backend (default yes).
    pub fn backend(mut self, on: bool) -> Self {
        self.backend = on;
        self
    }

    pub fn heartbeat_ms(mut self, ms: u64) -> Self {
        self.gateway.heartbeat_ms = ms;
        self
    }

    pub fn max_sessions_per_user(mut self, n: u32) -> Self {
        self.gateway.max_sessions_per_user = n;
        self
    }

    pub fn drain_window_ms(mut self, ms: u64) -> Self {
        self.gateway.drain_window_ms = ms;
        self
    }

    /// Gateway nodes connect to the test's database through `port` on
    /// loopback (a [`Proxy`](crate::proxy::Proxy)); see
    /// [`GatewayConfig::database_port`].
    pub fn gateway_database_port(mut self, port: u16) -> Self {
        self.gateway.database_port = Some(port);
        self
    }

    pub fn gateway_env(mut self, key: &str, value: &str) -> Self {
        self.gateway
            .extra_env
            .push((key.to_owned(), value.to_owned()));
        self
    }

    /// The backend's dispatch retry policy.
    pub fn dispatch(mut self, max_attempts: u32, timeout_ms: u64, backoff_ms: u64) -> Self {
        self.backend_config.max_attempts = max_attempts;
        self.backend_config.timeout_ms = timeout_ms;
        self.backend_config.backoff_ms = backoff_ms;
        self
    }

    pub fn backend_env(mut self, key: &str, value: &str) -> Self {
        self.backend_config
            .extra_env
            .push((key.to_owned(), value.to_owned()));
        self
    }

    pub async fn build(self) -> Stack {
        let name = unique_test_name(self.name.as_deref());
        let logs = fresh_dir(&state_dir().join("logs").join(&name));
        // Data of this run only: the same test may run in two processes at once.
        let run = fresh_dir(&state_dir().join("run").join(format!(
            "{}-{}",
            name.replace('/', "."),
            std::process::id()
        )));
        // Independent of each other: start NATS while the database is made.
        let nats = Nats::start(self.nats_servers, &run, &logs, self.nats_security);
        let db = async {
            let db = TestDb::create().await;
            migrate(&db, &logs).await;
            db
        };
        let (nats, db) = tokio::join!(nats, db);
        let mut stack = Stack {
            gateways: Vec::new(),
            backend: None,
            api: None,
            nats,
            db,
            name,
            logs,
            gateway_config: self.gateway,
            backend_config: self.backend_config,
            backend_port: free_port(),
            gateways_started: 0,
            run,
        };
        // Gateways first: the backend dispatches what it finds pending at once.
        let starting: Vec<_> = (0..self.gateways).map(|_| stack.spawn_gateway()).collect();
        for mut gw in starting {
            gw.wait_ready().await;
            stack.gateways.push(gw);
        }
        if self.backend {
            stack.start_backend().await;
        }
        stack
    }
}

/// Applies the schema with the gateway's one-shot `migrate` subcommand.
async fn migrate(db: &TestDb, logs: &std::path::Path) {
    let mut p = Proc::spawn(
        "migrate",
        binary("otako-gateway"),
        &["migrate"],
        &[("DATABASE_URL", db.url().to_owned())],
        &logs.join("migrate.log"),
    );
    let status = p.wait_exit(READY_TIMEOUT).await;
    if !status.is_some_and(|s| s.success()) {
        panic!(
            "otako-gateway migrate failed ({status:?}):\n{}",
            p.log_tail(40)
        );
    }
}

pub struct Gateway {
    pub node_id: String,
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The environment it was started with, so a restart is the same node.
    env: Vec<(String, String)>,
    log: PathBuf,
    proc: Proc,
}

impl Gateway {
    /// `ws://…/gateway`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/gateway", self.ws_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    async fn wait_ready(&mut self) {
        let url = self.admin_url("/readyz");
        let http = reqwest::Client::new();
        let what = format!("gateway {} to be ready", self.node_id);
        let proc = &mut self.proc;
        wait::until(&what, READY_TIMEOUT, || {
            proc.assert_running();
            let req = http.get(&url).timeout(Duration::from_secs(2)).send();
            async move { Ok::<_, reqwest::Error>((req.await?.status() == 200).then_some(())) }
        })
        .await;
    }

    /// Opens a session with `Authorization: <token>` and reads hello and
    /// READY; `label` names the client in failure messages.
    pub async fn connect(&self, token: &str, label: &str) -> WsClient {
        let mut c = WsClient::connect(&self.ws_url(), Auth::Header(token), label).await;
        c.handshake().await;
        c
    }

    /// Opens the WebSocket only; nothing is read.
    pub async fn connect_raw(&self, auth: Auth<'_>, label: &str) -> WsClient {
        WsClient::connect(&self.ws_url(), auth, label).await
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Everything the node logged so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

pub struct Backend {
    pub addr: SocketAddr,
    proc: Proc,
}

impl Backend {
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// Fields drop in order: processes first, then NATS, then the database.
pub struct Stack {
    pub gateways: Vec<Gateway>,
    pub backend: Option<Backend>,
    api: Option<Api>,
    pub nats: Nats,
    pub db: TestDb,
    pub name: String,
    pub logs: PathBuf,
    pub gateway_config: GatewayConfig,
    pub backend_config: BackendConfig,
    /// The backend keeps its port across restarts, so `api()` stays valid.
    backend_port: u16,
    gateways_started: usize,
    /// NATS stores; removed when the test passes.
    run: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // Stop what writes there before removing it.
        self.gateways.clear();
        self.backend = None;
        for i in 0..self.nats.len() {
            self.nats.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder {
            name: None,
            gateways: 1,
            nats_servers: 1,
            nats_security: NatsSecurity::default(),
            backend: true,
            gateway: GatewayConfig::default(),
            backend_config: BackendConfig::default(),
        }
    }

    pub fn gateway(&self, i: usize) -> &Gateway {
        &self.gateways[i]
    }

    /// The HTTP API; panics if the backend was never started.
    pub fn api(&self) -> &Api {
        self.api.as_ref().expect("this stack has no backend")
    }

    /// A token for `user_id`, signed like the backend signs them (for tests
    /// that create users in the database directly).
    pub fn token_for(&self, user_id: i64, username: &str) -> String {
        mint_token(TEST_SECRET, user_id, username, 0)
    }

    /// Alice, and Bob as a member of a channel she created, with every event
    /// of that dispatched: where most session tests start.
    pub async fn alice_and_bob(&self, channel_name: &str) -> (User, User, String) {
        let api = self.api();
        let alice = api.create_user("alice").await;
        let bob = api.create_user("bob").await;
        let channel = api.create_channel(&alice.token, channel_name).await;
        api.add_member(&alice.token, &channel, &bob.id).await;
        self.db.wait_outbox_settled(crate::ws::ARRIVE).await;
        (alice, bob, channel)
    }

    /// A client for the dispatch subject, connected to NATS server `i`.
    pub async fn dispatcher(&self, i: usize) -> DispatchClient {
        DispatchClient::new(self.nats.client(i).await)
    }

    fn spawn_gateway(&mut self) -> Gateway {
        self.gateways_started += 1;
        let n = self.gateways_started;
        let node_id = format!("gw-{n}");
        let ws_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let env = self.gateway_env(n, &node_id, ws_addr, admin_addr);
        let log = self.logs.join(format!("{node_id}.log"));
        let proc = spawn_gateway_proc(&node_id, &env, &log);
        Gateway {
            node_id,
            ws_addr,
            admin_addr,
            env,
            log,
            proc,
        }
    }

    /// The environment of gateway node number `n` (from 1).
    fn gateway_env(
        &self,
        n: usize,
        node_id: &str,
        ws_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Vec<(String, String)> {
        let c = &self.gateway_config;
        let database_url = match c.database_port {
            Some(port) => format!("postgres://otako@127.0.0.1:{port}/{}", self.db.name()),
            None => self.db.url().to_owned(),
        };
        let mut env: Vec<(&str, String)> = vec![
            (
                "OTAKO_NATS_URL",
                match &c.nats_servers {
                    Some(servers) => self.nats.urls_of_as(servers.clone(), Role::Gateway),
                    None => self.nats.url_as((n - 1) % self.nats.len(), Role::Gateway),
                },
            ),
            ("DATABASE_URL", database_url),
            ("OTAKO_TOKEN_SECRET", TEST_SECRET.to_owned()),
            ("OTAKO_GATEWAY_LISTEN", ws_addr.to_string()),
            ("OTAKO_ADMIN_LISTEN", admin_addr.to_string()),
            ("OTAKO_NODE_ID", node_id.to_owned()),
            ("OTAKO_HEARTBEAT_INTERVAL_MS", c.heartbeat_ms.to_string()),
            (
                "OTAKO_MAX_SESSIONS_PER_USER",
                c.max_sessions_per_user.to_string(),
            ),
            ("OTAKO_DRAIN_WINDOW_MS", c.drain_window_ms.to_string()),
            (
                "OTAKO_JETSTREAM_REPLICAS",
                self.nats.len().min(5).to_string(),
            ),
        ];
        if let Some(ca) = self.nats.tls_ca() {
            env.push(("OTAKO_NATS_TLS_CA", ca.to_string_lossy().into_owned()));
        }
        if let Some(creds) = self.nats.creds_file(Role::Gateway) {
            env.push(("OTAKO_NATS_CREDS", creds.to_string_lossy().into_owned()));
        }
        env.extend(c.extra_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Starts one more gateway node and waits until it is ready; returns its index.
    pub async fn start_gateway(&mut self) -> usize {
        let mut gw = self.spawn_gateway();
        gw.wait_ready().await;
        self.gateways.push(gw);
        self.gateways.len() - 1
    }

    /// Starts gateway `i` again as the same node (id, ports, environment)
    /// after it exited or was killed, and waits until it is ready; SIGKILLs
    /// it first if it still runs.
    pub async fn restart_gateway(&mut self, i: usize) {
        let gw = &mut self.gateways[i];
        gw.proc.kill();
        gw.proc = spawn_gateway_proc(&gw.node_id, &gw.env, &gw.log);
        gw.wait_ready().await;
    }

    /// Starts the backend (again, after `kill_backend`) on its fixed port and
    /// waits for `/healthz`.
    pub async fn start_backend(&mut self) {
        assert!(self.backend.is_none(), "the backend is already running");
        let addr: SocketAddr = ([127, 0, 0, 1], self.backend_port).into();
        let backend = self.spawn_backend("backend", addr).await;
        self.backend = Some(backend);
        if self.api.is_none() {
            self.api = Some(Api::new(format!("http://{addr}")));
        }
    }

    /// Starts one more backend replica (same database and NATS, its own
    /// port) and waits for `/healthz`; the caller holds it.
    pub async fn start_backend_replica(&mut self, name: &str) -> Backend {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        self.spawn_backend(name, addr).await
    }

    async fn spawn_backend(&self, name: &str, addr: SocketAddr) -> Backend {
        let c = &self.backend_config;
        let mut env: Vec<(&str, String)> = vec![
            (
                "OTAKO_NATS_URL",
                match &c.nats_servers {
                    Some(servers) => self.nats.urls_of_as(servers.clone(), Role::Backend),
                    None => self.nats.urls_as(Role::Backend),
                },
            ),
            ("DATABASE_URL", self.db.url().to_owned()),
            ("OTAKO_TOKEN_SECRET", TEST_SECRET.to_owned()),
            ("OTAKO_HTTP_LISTEN", addr.to_string()),
            ("OTAKO_DISPATCH_MAX_ATTEMPTS", c.max_attempts.to_string()),
            ("OTAKO_DISPATCH_TIMEOUT_MS", c.timeout_ms.to_string()),
            ("OTAKO_DISPATCH_BACKOFF_MS", c.backoff_ms.to_string()),
        ];
        if let Some(ca) = self.nats.tls_ca() {
            env.push(("OTAKO_NATS_TLS_CA", ca.to_string_lossy().into_owned()));
        }
        if let Some(creds) = self.nats.creds_file(Role::Backend) {
            env.push(("OTAKO_NATS_CREDS", creds.to_string_lossy().into_owned()));
        }
        env.extend(c.extra_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let mut proc = Proc::spawn(
            name,
            binary("otako-backend-shim"),
            &["--migrate"],
            &env,
            &self.logs.join(format!("{name}.log")),
        );
        let url = format!("http://{addr}/healthz");
        let http = reqwest::Client::new();
        {
            let p = &mut proc;
            wait::until("the backend to answer /healthz", READY_TIMEOUT, || {
                p.assert_running();
                let req = http.get(&url).timeout(Duration::from_secs(2)).send();
                async move { Ok::<_, reqwest::Error>((req.await?.status() == 200).then_some(())) }
            })
            .await;
        }
        Backend { addr, proc }
    }

    /// SIGKILLs the backend (no graceful anything) and reaps it.
    pub fn kill_backend(&mut self) {
        if let Some(mut b) = self.backend.take() {
            b.proc.kill();
        }
    }
}

fn spawn_gateway_proc(node_id: &str, env: &[(String, String)], log: &std::path::Path) -> Proc {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    Proc::spawn(node_id, binary("otako-gateway"), &[], &env, log)
}

/// Signs a token the way the backend does (generation `generation`, valid
/// for an hour).
pub fn mint_token(secret: &str, user_id: i64, username: &str, generation: i32) -> String {
    TokenKey::new(secret).sign(&Claims {
        user_id,
        username: username.to_owned(),
        generation,
        expires_at: chrono::Utc::now().timestamp() + 3600,
    })
}
