//! Where things live, and what every test process sets up once: the
//! dependencies (nats-server, PostgreSQL) and the shared PostgreSQL server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::OnceCell;

/// Signs the tokens of every process under test (the contract wants ≥16 bytes).
pub const TEST_SECRET: &str = "otako-e2e-test-secret-0123456789";

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// Scratch space of the end-to-end tests: `<root>/target/otako-e2e`.
pub fn state_dir() -> PathBuf {
    workspace_root().join("target").join("otako-e2e")
}

/// Path of a binary of the workspace, built by `cargo build --workspace --bins`.
/// Panics with instructions when it has not been built.
pub fn binary(name: &str) -> PathBuf {
    // The test executable is target/<profile>/deps/<test>-<hash>, and the
    // binaries sit in target/<profile>; this follows CARGO_TARGET_DIR too.
    let dir = std::env::var_os("OTAKO_E2E_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| workspace_root().join("target").join("debug"));
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "{} is missing: build the binaries first with `cargo build --workspace --bins` \
             (the end-to-end tests run the real programs)",
            path.display()
        );
    }
    path
}

/// The PostgreSQL port shared by all test processes.
pub fn postgres_port() -> u16 {
    std::env::var("OTAKO_TEST_PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(54329)
}

/// The data directory of the PostgreSQL server on [`postgres_port`]:
/// `OTAKO_TEST_PG_DIR`, else `target/otako-e2e/postgres`. A run that
/// restarts its server (the chaos run) sets both to a server of its own.
pub fn postgres_dir() -> PathBuf {
    std::env::var_os("OTAKO_TEST_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir().join("postgres"))
}

static POSTGRES: OnceCell<String> = OnceCell::const_new();

/// Installs the dependencies if needed and starts the shared PostgreSQL (once
/// per process; the script itself is safe against other test processes).
/// Returns the superuser URL.
pub async fn postgres_superuser_url() -> &'static str {
    POSTGRES
        .get_or_init(|| async {
            run_script("install-deps.sh", &[]).await;
            start_postgres().await
        })
        .await
}

/// Starts the server of [`postgres_dir`] on [`postgres_port`] unless it
/// runs; returns its superuser URL.
pub async fn start_postgres() -> String {
    let dir = postgres_dir();
    let port = postgres_port().to_string();
    let out = run_script("postgres.sh", &[dir.to_str().expect("utf-8 path"), &port]).await;
    out.lines()
        .rev()
        .find(|l| l.starts_with("postgres://"))
        .unwrap_or_else(|| panic!("postgres.sh printed no URL: {out}"))
        .to_owned()
}

/// Stops the PostgreSQL server (fast shutdown: every session is ended) and
/// leaves it stopped. Every test process on the same port loses its
/// database with it: only for a server of one's own (`OTAKO_TEST_PG_DIR`).
pub async fn stop_postgres() {
    let dir = postgres_dir();
    run_script("postgres.sh", &["stop", dir.to_str().expect("utf-8 path")]).await;
}

/// Runs one of `deploy/scripts/*.sh` to completion; panics with its output on failure.
async fn run_script(script: &str, args: &[&str]) -> String {
    let path = workspace_root().join("deploy").join("scripts").join(script);
    let out = tokio::process::Command::new("bash")
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("could not run {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{} {args:?} failed ({}):\n{stdout}\n{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A free TCP port on loopback (bound, read, released). Never the same one
/// twice in this process, so parallel tests do not pick a port another test
/// was given but has not bound yet.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding an ephemeral port")
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Whether `port` on loopback can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

static NAMES: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

/// A name for the running test, unique in this process: `<test binary>/<test
/// function>`, taken from the thread libtest runs the test on.
pub fn unique_test_name(explicit: Option<&str>) -> String {
    let base = match explicit {
        Some(n) => n.to_owned(),
        None => {
            let bin = std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .map(|s| match s.rsplit_once('-') {
                    Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                        name.to_owned()
                    }
                    _ => s,
                })
                .unwrap_or_else(|| "e2e".into());
            let test = std::thread::current()
                .name()
                .unwrap_or("main")
                .replace("::", "__");
            format!("{bin}/{test}")
        }
    };
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let n = names
        .get_or_insert_with(HashMap::new)
        .entry(base.clone())
        .or_insert(0);
    *n += 1;
    if *n == 1 {
        base
    } else {
        format!("{base}-{n}")
    }
}
