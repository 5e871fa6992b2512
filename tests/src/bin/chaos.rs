//! otako-chaos: the chaos run (see `otako_e2e::chaos`). Starts a whole
//! deployment on loopback with a PostgreSQL server of its own (it restarts
//! it), runs clients and writers through a fault schedule, and writes
//! `report.json` and `chaos.png` to the output folder. Exits 1 when any
//! accepted message was lost, duplicated or out of order for any client.

use anyhow::Context;
use clap::Parser;
use otako_e2e::chaos::{self, plot, Config};
use otako_e2e::env::{free_port, state_dir, stop_postgres};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "otako-chaos",
    about = "Counts every message through a fault schedule"
)]
struct Args {
    /// Seconds the writers write; the faults happen within them.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Where report.json and chaos.png go.
    #[arg(long, default_value = "target/otako-e2e/chaos")]
    out: PathBuf,
    #[arg(long, default_value_t = 40)]
    users: usize,
    #[arg(long, default_value_t = 20)]
    channels: usize,
    #[arg(long, default_value_t = 5)]
    channels_per_user: usize,
    /// Messages per second over all channels.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Membership changes per second (adds and removes outside each user's
    /// fixed channels); 0 for none.
    #[arg(long, default_value_t = 1.0)]
    churn: f64,
    /// How many times the six faults are played (evenly spaced).
    #[arg(long, default_value_t = 1)]
    cycles: usize,
    /// The longest the settle period after the writers stop may last (s).
    #[arg(long, default_value_t = 60.0)]
    settle: f64,
    /// The backend's dispatch attempts per event (its default is 5). While
    /// the history stream elects a new leader every event fails; enough
    /// attempts keep the outbox from dropping events meanwhile.
    #[arg(long, default_value_t = 30)]
    dispatch_attempts: u32,
    /// The gateways' heartbeat interval.
    #[arg(long, default_value_t = 5_000)]
    heartbeat_ms: u64,
    /// Seeds memberships, authors and jitter (random by default).
    #[arg(long)]
    seed: Option<u64>,
    /// The port of the run's own PostgreSQL server (a free one by default).
    #[arg(long)]
    pg_port: Option<u16>,
    /// Also write every session and delivery to OUT/deliveries.jsonl.
    #[arg(long)]
    dump_deliveries: bool,
    /// Names the logs' folder under target/otako-e2e/logs/.
    #[arg(long, default_value = "chaos/run")]
    name: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The gateway and backend binaries sit next to this one.
    if std::env::var_os("OTAKO_E2E_BIN_DIR").is_none() {
        let exe = std::env::current_exe().context("finding this binary")?;
        if let Some(dir) = exe.parent() {
            std::env::set_var("OTAKO_E2E_BIN_DIR", dir);
        }
    }
    // A PostgreSQL server of the run's own: the run restarts it, which the
    // server shared by the other tests must never see. Set before any
    // thread starts.
    let port = args.pg_port.unwrap_or_else(free_port);
    let pg_dir = state_dir().join(format!("chaos-postgres-{port}"));
    std::env::set_var("OTAKO_TEST_PG_PORT", port.to_string());
    std::env::set_var("OTAKO_TEST_PG_DIR", &pg_dir);
    let config = Config {
        duration_s: args.duration,
        users: args.users,
        channels: args.channels,
        channels_per_user: args.channels_per_user,
        rate: args.rate,
        churn_per_s: args.churn,
        cycles: args.cycles,
        settle_s: args.settle,
        heartbeat_ms: args.heartbeat_ms,
        seed: args.seed.unwrap_or_else(rand::random),
        dispatch_attempts: args.dispatch_attempts,
        name: args.name.clone(),
        dump: args
            .dump_deliveries
            .then(|| args.out.join("deliveries.jsonl")),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    eprintln!("[chaos] seed {}, PostgreSQL on port {port}", config.seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(async move {
        // A task, so a panic in the harness still lets the server stop.
        let run = tokio::spawn(chaos::run(config)).await;
        stop_postgres().await;
        run
    });
    let _ = std::fs::remove_dir_all(&pg_dir);
    let report = result
        .context("the run panicked")?
        .context("the run could not be made")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = args.out.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let png = args.out.join("chaos.png");
    plot::draw(&report, &png).with_context(|| format!("drawing {}", png.display()))?;
    print!("{}", report.table());
    println!("report: {}, chart: {}", json.display(), png.display());
    if report.failed() {
        std::process::exit(1);
    }
    Ok(())
}
