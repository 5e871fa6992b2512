//! The servers under test: either a local stack the bench starts itself
//! (PostgreSQL and nats-server through `deploy/scripts`, gateway nodes and
//! the backend from the build's binaries) or one already running; and the
//! peer, a nats-server with its WebSocket listener, always started here.

use crate::callgrind::Wrapper;
use crate::process::{free_port, Proc, ProcessError};
use sqlx::Connection;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{script} failed ({status}): {output}")]
    Script {
        script: String,
        status: String,
        output: String,
    },
    #[error("running {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{name} did not become ready in time; last log lines:\n{log}")]
    NotReady { name: String, log: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0} is missing: build it first (cargo build --release -p otako-gateway -p otako-backend-shim)")]
    MissingBinary(PathBuf),
}

/// Where the bench finds things and keeps its state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The workspace root (for `deploy/scripts`).
    pub root: PathBuf,
    /// Where `otako-gateway` and `otako-backend-shim` are.
    pub bin_dir: PathBuf,
    /// This run's logs and NATS stores.
    pub run_dir: PathBuf,
    pub pg_dir: PathBuf,
    pub pg_port: u16,
}

/// What the run talks to, whoever started it.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub gateways: Vec<SocketAddr>,
    pub gateway_pids: Vec<u32>,
    /// The nodes' admin listeners (`/metrics`), when known.
    pub gateway_admins: Vec<SocketAddr>,
    pub database_url: String,
    pub nats_url: String,
    /// The stack's nats-server, when known (its CPU is reported too).
    pub nats_pid: Option<u32>,
    pub backend_url: Option<String>,
    /// The backend the bench started, when it did (its CPU is reported too).
    pub backend_pid: Option<u32>,
    pub secret: String,
}

/// Settings of the nats-servers the bench starts.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct NatsTuning {
    /// NATS's `default_max_consumers` for the stack's server.
    pub max_consumers: Option<i64>,
    /// `GOMAXPROCS` of every nats-server the bench starts, the peer's
    /// included: what Go (1.25 and later) picks under a CPU limit of that
    /// many cores. Unset, Go takes every core of the machine.
    pub procs: Option<usize>,
}

impl NatsTuning {
    fn procs_env(&self) -> Vec<(&'static str, String)> {
        self.procs
            .map(|n| ("GOMAXPROCS", n.to_string()))
            .into_iter()
            .collect()
    }
}

/// A stack started by the bench; everything stops when it is dropped.
pub struct OwnStack {
    gateways: Vec<Proc>,
    backend: Option<Proc>,
    _nats: Proc,
    admin_url: String,
    db_name: String,
}

async fn run_script(root: &Path, script: &str, args: &[&str]) -> Result<String, StackError> {
    let path = root.join("deploy/scripts").join(script);
    let out = tokio::process::Command::new("bash")
        .arg(&path)
        .args(args)
        .output()
        .await
        .map_err(|source| StackError::Io {
            what: path.display().to_string(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(StackError::Script {
            script: script.into(),
            status: out.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(stdout)
}

/// Waits until `probe` succeeds, failing early when `proc` exits.
async fn wait_ready<F, Fut>(proc: &mut Proc, probe: F) -> Result<(), StackError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_ready_within(proc, READY_TIMEOUT, probe).await
}

/// [`wait_ready`] with a bound of its own.
async fn wait_ready_within<F, Fut>(
    proc: &mut Proc,
    within: Duration,
    mut probe: F,
) -> Result<(), StackError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if probe().await {
            return Ok(());
        }
        if !proc.is_running() || Instant::now() > deadline {
            return Err(StackError::NotReady {
                name: proc.name.clone(),
                log: proc.log_tail(30),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn http_ok(url: &str) -> bool {
    let client = reqwest::Client::new();
    matches!(
        client.get(url).timeout(Duration::from_secs(2)).send().await,
        Ok(r) if r.status().is_success()
    )
}

async fn tcp_open(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

fn binary(paths: &Paths, name: &str) -> Result<PathBuf, StackError> {
    let p = paths.bin_dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(StackError::MissingBinary(p))
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn port() -> Result<u16, StackError> {
    free_port().map_err(|source| StackError::Io {
        what: "finding a free port".into(),
        source,
    })
}

/// Installs what is missing (nats-server, PostgreSQL) with the project's script.
pub async fn install_deps(root: &Path) -> Result<(), StackError> {
    run_script(root, "install-deps.sh", &[]).await.map(|_| ())
}

/// The nats-server binary: the project's venv's, else the one on PATH.
pub fn nats_server_binary(root: &Path) -> PathBuf {
    let venv = root.join(".venv/bin/nats-server");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("nats-server")
    }
}

impl OwnStack {
    /// Starts PostgreSQL (shared, idempotent), a fresh database, NATS with
    /// JetStream, `nodes` gateway nodes and, if asked, the backend.
    /// `nats.max_consumers` sets NATS's `default_max_consumers` (consumers
    /// per stream that sets no limit of its own; -1 for none); without it
    /// the server keeps its default (1,000 since nats-server 2.15). With
    /// `callgrind`, the first node runs under it.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        paths: &Paths,
        (nodes, threads): (usize, usize),
        backend: bool,
        nats: NatsTuning,
        callgrind: Option<&Wrapper>,
        secret: &str,
        run_id: &str,
    ) -> Result<(OwnStack, Endpoints), StackError> {
        let gateway_bin = binary(paths, "otako-gateway")?;
        let backend_bin = binary(paths, "otako-backend-shim")?;
        let logs = paths.run_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| StackError::Io {
            what: logs.display().to_string(),
            source,
        })?;

        let pg_dir = paths.pg_dir.to_string_lossy().into_owned();
        let out = run_script(
            &paths.root,
            "postgres.sh",
            &[&pg_dir, &paths.pg_port.to_string()],
        )
        .await?;
        let admin_url = out
            .lines()
            .rev()
            .find(|l| l.starts_with("postgres://"))
            .unwrap_or_default()
            .to_owned();
        let db_name = format!("bench_{run_id}");
        let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {db_name} OWNER otako"))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        let database_url = format!("postgres://otako@127.0.0.1:{}/{db_name}", paths.pg_port);

        let nats_port = port()?;
        let store = paths.run_dir.join("nats");
        let nats_script = paths.root.join("deploy/scripts/nats.sh");
        // nats.sh reads a configuration file first when OTAKO_NATS_CONFIG
        // names one; its flags still set the port and the store.
        let mut nats_env = nats.procs_env();
        if let Some(n) = nats.max_consumers {
            let conf = paths.run_dir.join("nats-limits.conf");
            let text =
                format!("jetstream {{\n  limits {{\n    default_max_consumers: {n}\n  }}\n}}\n");
            std::fs::write(&conf, text).map_err(|source| StackError::Io {
                what: conf.display().to_string(),
                source,
            })?;
            nats_env.push(("OTAKO_NATS_CONFIG", conf.display().to_string()));
        }
        let mut nats = Proc::spawn(
            "nats",
            "bash",
            &[
                &nats_script.to_string_lossy(),
                &nats_port.to_string(),
                &store.to_string_lossy(),
            ],
            &nats_env,
            &logs.join("nats.log"),
        )?;
        wait_ready(&mut nats, || tcp_open(loopback(nats_port))).await?;
        let nats_url = format!("nats://127.0.0.1:{nats_port}");

        let migrate = tokio::process::Command::new(&gateway_bin)
            .arg("migrate")
            .env("DATABASE_URL", &database_url)
            .output()
            .await
            .map_err(|source| StackError::Io {
                what: "otako-gateway migrate".into(),
                source,
            })?;
        if !migrate.status.success() {
            return Err(StackError::Script {
                script: "otako-gateway migrate".into(),
                status: migrate.status.to_string(),
                output: String::from_utf8_lossy(&migrate.stderr).into_owned(),
            });
        }

        let common = |extra: Vec<(&'static str, String)>| {
            let mut env = vec![
                ("OTAKO_NATS_URL", nats_url.clone()),
                ("DATABASE_URL", database_url.clone()),
                ("OTAKO_TOKEN_SECRET", secret.to_owned()),
                ("RUST_LOG", "info".to_owned()),
            ];
            env.extend(extra);
            env
        };
        let mut gateways = Vec::with_capacity(nodes);
        let mut ws_addrs = Vec::with_capacity(nodes);
        let mut admins = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let (ws, admin) = (loopback(port()?), loopback(port()?));
            let env = common(vec![
                ("OTAKO_GATEWAY_LISTEN", ws.to_string()),
                ("OTAKO_ADMIN_LISTEN", admin.to_string()),
                ("OTAKO_NODE_ID", format!("bench-gw-{}", i + 1)),
                ("OTAKO_DRAIN_WINDOW_MS", "200".to_owned()),
                ("TOKIO_WORKER_THREADS", threads.to_string()),
            ]);
            let name = format!("gateway-{}", i + 1);
            let log = logs.join(format!("gateway-{}.log", i + 1));
            let proc = match callgrind.filter(|_| i == 0) {
                Some(w) => {
                    let (program, args) = w.command(&gateway_bin);
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    Proc::spawn(&name, program, &args, &env, &log)?
                }
                None => Proc::spawn(&name, &gateway_bin, &[], &env, &log)?,
            };
            gateways.push(proc);
            ws_addrs.push(ws);
            admins.push(admin);
        }
        let within = if callgrind.is_some() {
            crate::callgrind::READY_TIMEOUT
        } else {
            READY_TIMEOUT
        };
        for (g, admin) in gateways.iter_mut().zip(&admins) {
            let url = format!("http://{admin}/readyz");
            wait_ready_within(g, within, || http_ok(&url)).await?;
        }
        let (backend, backend_url) = if backend {
            let addr = loopback(port()?);
            // The http drive posts far faster than one chat user may.
            let env = common(vec![
                ("OTAKO_HTTP_LISTEN", addr.to_string()),
                ("OTAKO_MESSAGE_RATE_PER_S", "0".to_owned()),
            ]);
            let mut p = Proc::spawn(
                "backend",
                &backend_bin,
                &[],
                &env,
                &logs.join("backend.log"),
            )?;
            let url = format!("http://{addr}");
            let health = format!("{url}/healthz");
            wait_ready(&mut p, || http_ok(&health)).await?;
            (Some(p), Some(url))
        } else {
            (None, None)
        };
        let endpoints = Endpoints {
            gateway_pids: gateways.iter().map(Proc::pid).collect(),
            gateway_admins: admins,
            gateways: ws_addrs,
            database_url,
            nats_pid: Some(nats.pid()),
            nats_url,
            backend_url,
            backend_pid: backend.as_ref().map(Proc::pid),
            secret: secret.to_owned(),
        };
        Ok((
            OwnStack {
                gateways,
                backend,
                _nats: nats,
                admin_url,
                db_name,
            },
            endpoints,
        ))
    }

    /// Stops the gateways and the backend (NATS and the database stay).
    pub fn stop_servers(&mut self) {
        for g in &mut self.gateways {
            g.kill();
        }
        if let Some(b) = &mut self.backend {
            b.kill();
        }
    }

    /// Stops everything and drops the run's database.
    pub async fn teardown(mut self) {
        self.stop_servers();
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .execute(&mut admin)
            .await;
            let _ = admin.close().await;
        }
    }
}

/// nats-server with a WebSocket listener: the system we compare with.
pub struct Peer {
    proc: Proc,
    pub ws_addr: SocketAddr,
    pub nats_url: String,
}

impl Peer {
    /// Only `nats.procs` applies to the peer: the same Go scheduler
    /// setting for both brokers keeps the comparison even.
    pub async fn start(paths: &Paths, nats: NatsTuning) -> Result<Peer, StackError> {
        let (port, ws_port) = (port()?, port()?);
        let dir = paths.run_dir.join("peer");
        std::fs::create_dir_all(&dir).map_err(|source| StackError::Io {
            what: dir.display().to_string(),
            source,
        })?;
        let conf = dir.join("nats-ws.conf");
        let text = format!(
            "# The peer: nats-server's own WebSocket listener, no TLS, no compression.\n\
             listen: \"127.0.0.1:{port}\"\n\
             websocket {{\n  host: \"127.0.0.1\"\n  port: {ws_port}\n  no_tls: true\n  compression: false\n}}\n"
        );
        std::fs::write(&conf, text).map_err(|source| StackError::Io {
            what: conf.display().to_string(),
            source,
        })?;
        let mut proc = Proc::spawn(
            "peer-nats",
            nats_server_binary(&paths.root),
            &["-c", &conf.to_string_lossy()],
            &nats.procs_env(),
            &paths.run_dir.join("logs").join("peer-nats.log"),
        )?;
        let ws_addr = loopback(ws_port);
        wait_ready(&mut proc, || async {
            tcp_open(loopback(port)).await && tcp_open(ws_addr).await
        })
        .await?;
        Ok(Peer {
            proc,
            ws_addr,
            nats_url: format!("nats://127.0.0.1:{port}"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}
