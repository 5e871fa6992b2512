//! otako-e2e-stack: one whole stack (NATS, a fresh database, gateway nodes and
//! the backend, as `Stack::builder()` starts them for the Rust tests) for test
//! programs in other languages, driven over stdin.
//!
//! Prints one JSON line once everything is ready:
//! `{"backend":"http://…","gateways":["ws://…/gateway",…],"logs":"…"}`, then reads
//! one command per line and answers each with one JSON line:
//!
//! - `kill <i>`: SIGKILL gateway `i` → `{"ok":true}`
//! - `term <i>`: SIGTERM gateway `i` (op 7, then 1012) and wait for it to exit → `{"ok":true}`
//! - `start`: one more gateway node → `{"ok":true,"index":i,"url":"ws://…"}`
//!
//! Closing stdin tears the stack down; so does the death of the parent, whose
//! stdin end closes with it.

use anyhow::{bail, Context};
use otako_e2e::Stack;
use serde_json::json;
use std::io::BufRead;
use std::time::Duration;

/// `--name <s>`, `--gateways <n>`, `--heartbeat-ms <n>`: few enough that
/// a flag parser is not worth a dependency.
struct Flags {
    name: String,
    gateways: usize,
    heartbeat_ms: u64,
}

impl Flags {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Flags> {
        let mut flags = Flags {
            name: "sdk".into(),
            gateways: 2,
            heartbeat_ms: 30_000,
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
            match flag.as_str() {
                "--name" => flags.name = value,
                "--gateways" => flags.gateways = value.parse()?,
                "--heartbeat-ms" => flags.heartbeat_ms = value.parse()?,
                _ => {
                    anyhow::bail!("unknown flag {flag} (known: --name, --gateways, --heartbeat-ms)")
                }
            }
        }
        Ok(flags)
    }
}

// One thread: the processes under test die with the thread that started them
// (PR_SET_PDEATHSIG), so every one is started from the main thread.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse(std::env::args().skip(1))?;
    // The harness finds the binaries under test next to the test executable's
    // parent folder; this program sits in the profile folder itself.
    if std::env::var_os("OTAKO_E2E_BIN_DIR").is_none() {
        let exe = std::env::current_exe().context("locating this program")?;
        let dir = exe.parent().context("the program's folder")?.to_path_buf();
        std::env::set_var("OTAKO_E2E_BIN_DIR", dir);
    }

    // Installs nats-server and PostgreSQL when missing, before the stack
    // starts NATS and the database side by side.
    otako_e2e::env::postgres_superuser_url().await;
    let mut stack = Stack::builder()
        .name(&flags.name)
        .gateways(flags.gateways)
        .heartbeat_ms(flags.heartbeat_ms)
        .backend(false)
        .build()
        .await;
    let urls: Vec<String> = stack.gateways.iter().map(|g| g.ws_url()).collect();
    // The chat page reads the gateways from /config.json; tests post faster
    // than a person, so the per-user message rate limit is off.
    let extra = &mut stack.backend_config.extra_env;
    extra.push(("OTAKO_PUBLIC_GATEWAY_URLS".into(), urls.join(",")));
    extra.push(("OTAKO_MESSAGE_RATE_PER_S".into(), "0".into()));
    stack.start_backend().await;
    let backend = stack.backend.as_ref().context("the backend runs")?.addr;
    println!(
        "{}",
        json!({
            "backend": format!("http://{backend}"),
            "gateways": urls,
            "logs": stack.logs.display().to_string(),
        })
    );

    // Commands come from a plain thread: stdin blocks, and the runtime has
    // one thread only.
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let reply = match command(&mut stack, line.trim()).await {
            Ok(v) => v,
            Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
        };
        println!("{reply}");
    }
    drop(stack);
    Ok(())
}

async fn command(stack: &mut Stack, line: &str) -> anyhow::Result<serde_json::Value> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let index = |w: Option<&str>, n: usize| -> anyhow::Result<usize> {
        let i: usize = w.context("which gateway (an index)")?.parse()?;
        if i >= n {
            bail!("there are {n} gateways, no {i}");
        }
        Ok(i)
    };
    match verb {
        "kill" => {
            let i = index(words.next(), stack.gateways.len())?;
            stack.gateways[i].proc().kill();
            Ok(json!({"ok": true}))
        }
        "term" => {
            let i = index(words.next(), stack.gateways.len())?;
            let proc = stack.gateways[i].proc();
            proc.sigterm();
            if proc.wait_exit(Duration::from_secs(30)).await.is_none() {
                bail!("gateway {i} still runs 30 s after SIGTERM");
            }
            Ok(json!({"ok": true}))
        }
        "start" => {
            let i = stack.start_gateway().await;
            Ok(json!({"ok": true, "index": i, "url": stack.gateways[i].ws_url()}))
        }
        _ => bail!("unknown command {line:?} (known: kill <i>, term <i>, start)"),
    }
}
