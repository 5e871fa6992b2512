//! The targets, checked against a run's figures.

use crate::config::Scenario;
use crate::report::{Report, TargetCheck};

fn check(name: &str, target: &str, measured: String, met: bool) -> TargetCheck {
    TargetCheck {
        name: name.into(),
        target: target.into(),
        measured,
        met,
    }
}

/// The targets that apply to the report's scenario.
pub fn evaluate(r: &Report) -> Vec<TargetCheck> {
    let o = &r.otako;
    let mut out = Vec::new();
    match r.plan.scenario {
        Scenario::Idle => {
            out.push(check(
                "sessions held on one node",
                "19000",
                o.sessions_held.to_string(),
                o.sessions_held >= 19_000,
            ));
            if let Some(b) = o.rss_bytes_per_session {
                out.push(check(
                    "gateway RSS per session",
                    "≤ 8 KiB",
                    format!("{:.2} KiB", b / 1024.0),
                    b <= 8192.0,
                ));
            }
            let per: Vec<f64> = o.rss_curve.iter().map(|p| p.bytes_per_session).collect();
            if per.len() >= 2 {
                let (lo, hi) = per
                    .iter()
                    .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                out.push(check(
                    "RSS per session flat from first to last step",
                    "max/min ≤ 1.25",
                    format!("{:.2}", hi / lo.max(1.0)),
                    hi / lo.max(1.0) <= 1.25,
                ));
            }
        }
        Scenario::Nodes => out.push(check(
            "sessions held by the nodes",
            &r.plan.sessions.to_string(),
            o.sessions_held.to_string(),
            o.sessions_held as usize >= r.plan.sessions,
        )),
        Scenario::Fanout => {
            if let Some(cpu) = o.drive.as_ref().and_then(|d| d.server_cpu_us_per_delivery) {
                out.push(check(
                    "gateway CPU per delivery",
                    "≤ 5 µs",
                    format!("{cpu:.2} µs"),
                    cpu <= 5.0,
                ));
            }
            if let Some(x) = r
                .comparison
                .as_ref()
                .and_then(|c| c.deliveries_per_sec_ratio)
            {
                out.push(check(
                    "deliveries/s over the peer's",
                    "≥ 2×",
                    format!("{x:.2}×"),
                    x >= 2.0,
                ));
            }
        }
        Scenario::Latency | Scenario::LatencyHttp => {
            if let Some(l) = o.drive.as_ref().and_then(|d| d.latency_us) {
                out.push(check(
                    "end-to-end p99",
                    "< 10 ms",
                    format!("{:.2} ms", l.p99 as f64 / 1000.0),
                    l.p99 < 10_000,
                ));
                out.push(check(
                    "end-to-end p99.9",
                    "< 25 ms",
                    format!("{:.2} ms", l.p999 as f64 / 1000.0),
                    l.p999 < 25_000,
                ));
            }
        }
        Scenario::Smoke => out.push(check(
            "sessions held",
            &r.plan.sessions.to_string(),
            o.sessions_held.to_string(),
            o.sessions_held as usize == r.plan.sessions,
        )),
    }
    out
}
