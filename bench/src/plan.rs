//! What a run does: each scenario's settings, with the flags' overrides.

use crate::config::{Drive, RunArgs, Scenario};
use crate::seed::Layout;
use crate::stack::NatsTuning;
use crate::workload::Rate;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub scenario: Scenario,
    pub sessions: usize,
    pub nodes: usize,
    #[serde(serialize_with = "display")]
    pub layout: Layout,
    pub drive: Drive,
    #[serde(serialize_with = "display")]
    pub rate: Rate,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub payload_bytes: usize,
    pub rss_steps: Vec<usize>,
    pub peer: bool,
    /// Measure the floor (`crate::floor`) after the systems.
    pub floor: bool,
    pub shards: usize,
    pub connect_concurrency: usize,
    pub gateway_threads: usize,
    /// Storm: events posted to each channel while its sessions are away.
    pub gap_events: usize,
    /// Settings of the nats-servers the bench starts, when the run sets them.
    pub nats: NatsTuning,
    /// Instructions: events measured under callgrind.
    pub events: usize,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Sessions one client process holds at most (its open-files limit is 20,000).
pub const SESSIONS_PER_SHARD: usize = 18_000;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("bad --rss-steps {0:?}: comma-separated session counts, or none")]
    RssSteps(String),
    #[error("{0}")]
    Invalid(String),
}

impl Plan {
    pub fn resolve(a: &RunArgs) -> Result<Plan, PlanError> {
        use Scenario::*;
        let s = a.scenario;
        let (sessions, nodes, layout, drive, rate, warmup, duration, steps, peer, shards): (
            usize,
            usize,
            Layout,
            Drive,
            Rate,
            f64,
            f64,
            &[usize],
            bool,
            usize,
        ) = match s {
            Idle => (
                19_000,
                1,
                Layout::Small(10),
                Drive::None,
                Rate::PerSecond(1.0),
                0.0,
                0.0,
                &[1_000, 2_000, 5_000, 10_000, 19_000],
                true,
                2,
            ),
            Nodes => (
                100_000,
                6,
                Layout::Small(10),
                Drive::Dispatch,
                Rate::PerSecond(100.0),
                3.0,
                10.0,
                &[10_000, 50_000, 100_000],
                false,
                7,
            ),
            Fanout => (
                10_000,
                1,
                Layout::One,
                Drive::Dispatch,
                Rate::Max { window: 8 },
                3.0,
                15.0,
                &[],
                true,
                2,
            ),
            Latency | LatencyHttp => (
                10_000,
                2,
                Layout::Small(10),
                if s == Latency {
                    Drive::Dispatch
                } else {
                    Drive::Http
                },
                Rate::PerSecond(1000.0),
                5.0,
                30.0,
                &[],
                true,
                1,
            ),
            // 10,000 sessions (not 20,000 of one DM channel each): every
            // process, the nodes and the peer's listener included, may hold
            // 20,000 open files, so each user is in 4 channels of 2.
            Dm => (
                10_000,
                2,
                Layout::Dm(4),
                Drive::Dispatch,
                Rate::PerSecond(2000.0),
                5.0,
                30.0,
                &[],
                true,
                1,
            ),
            // The live messages before the drop give the sessions real
            // cursors: about 600 messages over the 1,000 channels.
            Storm => (
                10_000,
                1,
                Layout::Small(10),
                Drive::Dispatch,
                Rate::PerSecond(100.0),
                1.0,
                5.0,
                &[],
                false,
                2,
            ),
            // One node under callgrind holds 100 channels of 10; the
            // events go out one at a time (see `callgrind.rs`), not by rate.
            Instructions => (
                1_000,
                1,
                Layout::Small(10),
                Drive::None,
                Rate::PerSecond(1.0),
                0.0,
                0.0,
                &[],
                false,
                1,
            ),
            Smoke => (
                200,
                2,
                Layout::Mix(10),
                Drive::Dispatch,
                Rate::PerSecond(50.0),
                1.0,
                3.0,
                &[100, 200],
                true,
                1,
            ),
        };
        let sessions = a.sessions.unwrap_or(sessions);
        let mut rss_steps: Vec<usize> = match a.rss_steps.as_deref() {
            None => steps.iter().copied().filter(|&n| n <= sessions).collect(),
            Some("none") | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|v| v.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| PlanError::RssSteps(list.to_owned()))?,
        };
        rss_steps.retain(|&n| n > 0 && n <= sessions);
        rss_steps.sort_unstable();
        rss_steps.dedup();
        if !rss_steps.is_empty() && rss_steps.last() != Some(&sessions) {
            rss_steps.push(sessions);
        }
        let shards = a
            .shards
            .unwrap_or(shards)
            .max(sessions.div_ceil(SESSIONS_PER_SHARD))
            .max(1);
        let nodes = a.nodes.unwrap_or(nodes).max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Under callgrind one worker thread, as each latency node has on
        // this machine: valgrind runs one thread at a time anyway, and a
        // second worker only adds wake-ups that differ from run to run.
        let default_threads = if s == Instructions { 1 } else { cores / nodes };
        let plan = Plan {
            scenario: s,
            sessions,
            nodes,
            layout: a.layout.unwrap_or(layout),
            drive: a.drive.unwrap_or(drive),
            rate: a.rate.unwrap_or(rate),
            warmup_s: a.warmup.unwrap_or(warmup),
            duration_s: a.duration.unwrap_or(duration),
            payload_bytes: a.payload.unwrap_or(300).max(32),
            rss_steps,
            peer: a.peer.unwrap_or(peer),
            floor: a.floor.unwrap_or(matches!(s, Latency | LatencyHttp | Dm)),
            shards,
            connect_concurrency: a.connect_concurrency.max(1),
            gateway_threads: a.gateway_threads.unwrap_or(default_threads).max(1),
            gap_events: a.gap_events.unwrap_or(1),
            nats: NatsTuning {
                max_consumers: a.nats_max_consumers,
                procs: a.nats_procs.map(|n| n.max(1)),
            },
            events: a.events.unwrap_or(2_000).max(1),
        };
        if plan.sessions == 0 {
            return Err(PlanError::Invalid("--sessions must be at least 1".into()));
        }
        plan.layout
            .check(plan.sessions)
            .map_err(PlanError::Invalid)?;
        if plan.drive != Drive::None && plan.duration_s <= 0.0 {
            return Err(PlanError::Invalid(
                "--duration must be positive when messages are sent".into(),
            ));
        }
        Ok(plan)
    }

    /// The floor's settings for this plan's workload: its channel size,
    /// rate and windows; none for a closed-loop rate. The floor's channels
    /// are the sessions split into channels of that size, each session in
    /// one: a layout whose users sit in several channels (dm, mix) would
    /// need more sockets than a process may open, and what a message costs
    /// depends on its channel's size, not on how many channels there are.
    pub fn floor_args(&self) -> Option<crate::floor::FloorArgs> {
        let members = match self.layout {
            Layout::Small(k) | Layout::Mix(k) => k as usize,
            Layout::Dm(_) => 2,
            Layout::One => self.sessions,
        };
        let Rate::PerSecond(rate) = self.rate else {
            return None;
        };
        Some(crate::floor::FloorArgs {
            channels: (self.sessions / members.max(1)).max(1),
            members: members.max(1),
            nodes: self.nodes,
            rate,
            warmup: self.warmup_s,
            seconds: self.duration_s,
            frame_bytes: crate::floor::FRAME_BYTES,
            nats_procs: self.nats.procs,
        })
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s.max(0.0))
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s.max(0.0))
    }

    /// Sessions process `shard` holds once `total` are open (session `i`
    /// lives in process `i % shards`).
    pub fn shard_share(&self, shard: usize, total: usize) -> usize {
        total / self.shards + usize::from(shard < total % self.shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> RunArgs {
        let mut v = vec!["otako-bench", "run"];
        v.extend_from_slice(extra);
        match crate::config::Cli::parse_from(v).command {
            crate::config::Command::Run(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn presets_and_overrides() {
        let p = Plan::resolve(&args(&["--scenario", "idle"])).unwrap();
        assert_eq!(p.rss_steps, vec![1_000, 2_000, 5_000, 10_000, 19_000]);
        assert_eq!(p.shards, 2);
        let p = Plan::resolve(&args(&["--scenario", "nodes"])).unwrap();
        assert!(p.shards * SESSIONS_PER_SHARD >= 100_000);
        let p = Plan::resolve(&args(&["--sessions", "150", "--rss-steps", "50,100"])).unwrap();
        assert_eq!(p.rss_steps, vec![50, 100, 150]);
        let p = Plan::resolve(&args(&["--scenario", "fanout", "--rate", "max:4"])).unwrap();
        assert_eq!(p.rate, Rate::Max { window: 4 });
        let p = Plan::resolve(&args(&["--nodes", "64"])).unwrap();
        assert_eq!(p.gateway_threads, 1, "at least one thread per node");
        let p = Plan::resolve(&args(&["--gateway-threads", "3"])).unwrap();
        assert_eq!(p.gateway_threads, 3);
        let p = Plan::resolve(&args(&["--scenario", "storm"])).unwrap();
        assert_eq!((p.sessions, p.nodes, p.gap_events), (10_000, 1, 1));
        assert!(p.rss_steps.is_empty());
        let p = Plan::resolve(&args(&["--scenario", "dm"])).unwrap();
        assert_eq!(
            (p.sessions, p.nodes, p.layout, p.drive, p.rate, p.peer, p.shards),
            (
                10_000,
                2,
                Layout::Dm(4),
                Drive::Dispatch,
                Rate::PerSecond(2000.0),
                true,
                1
            )
        );
        assert_eq!(p.layout.channel_count(p.sessions), 20_000);
        assert!(p.rss_steps.is_empty());
        assert!(Plan::resolve(&args(&["--scenario", "dm", "--sessions", "4"])).is_err());
    }

    #[test]
    fn shares_add_up() {
        let p = Plan::resolve(&args(&["--sessions", "1001", "--shards", "3"])).unwrap();
        let total: usize = (0..3).map(|s| p.shard_share(s, 1001)).sum();
        assert_eq!(total, 1001);
        assert_eq!(p.shard_share(0, 1001), 334);
    }
}
