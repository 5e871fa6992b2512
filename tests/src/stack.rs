//! A whole deployment for one test: NATS (one server or a cluster), a fresh
//! database, gateway nodes and the backend, all real processes.

use crate::api::Api;
use crate::db::TestDb;
use crate::dispatch::DispatchClient;
use crate::env::{binary, free_port, state_dir, unique_test_name, TEST_SECRET};
use crate::nats::Nats;
use crate::process::{fresh_dir, Proc};
use crate::wait;
use crate::ws::{Auth, WsClient};
use otako_common::token::{Claims, TokenKey};
use std::net::SocketAddr;
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
            extra_env: Vec::new(),
        }
    }
}

/// Settings of the backend's dispatcher.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff_ms: u64,
    pub extra_env: Vec<(String, String)>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            max_attempts: 5,
            // Generous: several tests assert that every event went through on
            // its first attempt, and a loaded 2-core CI machine can take a
            // while to answer; tests about timeouts set their own.
            timeout_ms: 10_000,
            backoff_ms: 100,
            extra_env: Vec::new(),
        }
    }
}

pub struct StackBuilder {
    name: Option<String>,
    gateways: usize,
    nats_servers: usize,
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
        let nats = async {
            if self.nats_servers == 1 {
                Nats::single(&run, &logs).await
            } else {
                Nats::cluster(self.nats_servers, &run, &logs).await
            }
        };
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
        let c = &self.gateway_config;
        let database_url = match c.database_port {
            Some(port) => format!("postgres://otako@127.0.0.1:{port}/{}", self.db.name()),
            None => self.db.url().to_owned(),
        };
        let mut env: Vec<(&str, String)> = vec![
            ("OTAKO_NATS_URL", self.nats.url((n - 1) % self.nats.len())),
            ("DATABASE_URL", database_url),
            ("OTAKO_TOKEN_SECRET", TEST_SECRET.to_owned()),
            ("OTAKO_GATEWAY_LISTEN", ws_addr.to_string()),
            ("OTAKO_ADMIN_LISTEN", admin_addr.to_string()),
            ("OTAKO_NODE_ID", node_id.clone()),
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
        env.extend(c.extra_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let proc = Proc::spawn(
            &node_id,
            binary("otako-gateway"),
            &[],
            &env,
            &self.logs.join(format!("{node_id}.log")),
        );
        Gateway {
            node_id,
            ws_addr,
            admin_addr,
            proc,
        }
    }

    /// Starts one more gateway node and waits until it is ready; returns its index.
    pub async fn start_gateway(&mut self) -> usize {
        let mut gw = self.spawn_gateway();
        gw.wait_ready().await;
        self.gateways.push(gw);
        self.gateways.len() - 1
    }

    /// Starts the backend (again, after `kill_backend`) on its fixed port and
    /// waits for `/healthz`.
    pub async fn start_backend(&mut self) {
        assert!(self.backend.is_none(), "the backend is already running");
        let addr: SocketAddr = ([127, 0, 0, 1], self.backend_port).into();
        let c = &self.backend_config;
        let mut env: Vec<(&str, String)> = vec![
            ("OTAKO_NATS_URL", self.nats.urls()),
            ("DATABASE_URL", self.db.url().to_owned()),
            ("OTAKO_TOKEN_SECRET", TEST_SECRET.to_owned()),
            ("OTAKO_HTTP_LISTEN", addr.to_string()),
            ("OTAKO_DISPATCH_MAX_ATTEMPTS", c.max_attempts.to_string()),
            ("OTAKO_DISPATCH_TIMEOUT_MS", c.timeout_ms.to_string()),
            ("OTAKO_DISPATCH_BACKOFF_MS", c.backoff_ms.to_string()),
        ];
        env.extend(c.extra_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let mut proc = Proc::spawn(
            "backend",
            binary("otako-backend-shim"),
            &["--migrate"],
            &env,
            &self.logs.join("backend.log"),
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
        self.backend = Some(Backend { addr, proc });
        if self.api.is_none() {
            self.api = Some(Api::new(format!("http://{addr}")));
        }
    }

    /// SIGKILLs the backend (no graceful anything) and reaps it.
    pub fn kill_backend(&mut self) {
        if let Some(mut b) = self.backend.take() {
            b.proc.kill();
        }
    }
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
