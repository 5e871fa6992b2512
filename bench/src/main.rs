//! otako-bench: wires the modules together. See BENCHMARKS.md.

mod callgrind;
mod config;
mod control;
mod driver;
mod fleet;
mod floor;
mod latency;
mod measure;
mod nats_wire;
mod plan;
mod plot;
mod process;
mod procfs;
mod report;
mod resuming;
mod runner;
mod seed;
mod sessions;
mod shard;
mod stack;
mod storm;
mod targets;
mod workload;
mod wsclient;

use clap::Parser;
use config::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(runner::run(&args))?;
            print!("{}", report::table(&report));
            Ok(())
        }
        Command::Clients => {
            // One thread per client process: a run that needs more CPU for
            // its clients uses more processes.
            process::raise_nofile_limit();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(shard::serve_stdio())?;
            Ok(())
        }
        Command::Floor(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            print!(
                "{}",
                rt.block_on(floor::FloorResult::measure(&args))?.table()
            );
            Ok(())
        }
        Command::FloorHop(args) => Ok(floor::hop(&args)?),
    }
}
