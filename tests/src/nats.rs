//! nats-server with JetStream, a single server or a cluster, each test its own.

use crate::env::{free_port, workspace_root};
use crate::process::{fresh_dir, Proc};
use crate::wait;
use async_nats::jetstream;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
}

impl Nats {
    /// One server. `dir` holds the stores; `logs` the logs.
    pub async fn single(dir: &Path, logs: &Path) -> Nats {
        Nats::start(1, dir, logs).await
    }

    /// `n` servers in one cluster (n ≥ 2).
    pub async fn cluster(n: usize, dir: &Path, logs: &Path) -> Nats {
        assert!(n >= 2, "a cluster has at least two servers");
        Nats::start(n, dir, logs).await
    }

    async fn start(n: usize, dir: &Path, logs: &Path) -> Nats {
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
        let mut nats = Nats { servers, routes };
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
        }
        s.proc = Some(Proc::spawn(&s.name, "bash", &args, &[], &s.log));
    }

    /// Waits until every server takes clients and JetStream answers (in a
    /// cluster that means a meta leader was elected and every peer is known).
    pub async fn wait_ready(&mut self) {
        for i in 0..self.servers.len() {
            let url = self.url(i);
            let client = wait::until(
                &format!("{} to accept clients", self.servers[i].name),
                READY_TIMEOUT,
                || {
                    if let Some(p) = self.servers[i].proc.as_mut() {
                        p.assert_running();
                    }
                    let url = url.clone();
                    async move { connect_once(&url).await.map(Some) }
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

    /// Client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].port)
    }

    /// Every server's URL, comma-separated (what OTAKO_NATS_URL accepts).
    pub fn urls(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client connected to server `i`.
    pub async fn client(&self, i: usize) -> async_nats::Client {
        connect_once(&self.url(i))
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url(i)))
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

async fn connect_once(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("otako-e2e")
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(url)
        .await
}
