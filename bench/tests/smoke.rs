//! A small run of the real bench binary against a stack it starts itself
//! (debug binaries from `cargo build --workspace --bins`, PostgreSQL and
//! nats-server through deploy/scripts), so the tool keeps working.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn smoke_run_reports_sessions_deliveries_latency_and_a_chart() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("otako-bench-smoke");
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_otako-bench"))
        .args([
            "run",
            "--scenario",
            "smoke",
            "--sessions",
            "200",
            "--floor",
            "true",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting otako-bench");
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for otako-bench") {
            break s;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("otako-bench smoke run took longer than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "otako-bench failed: {status}");

    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json written");
    let r: serde_json::Value = serde_json::from_str(&text).expect("report.json is JSON");
    assert_eq!(r["sessions_held"], 200, "{text}");
    assert!(
        r["deliveries"].as_u64().unwrap_or(0) > 0,
        "no deliveries: {text}"
    );
    for q in ["p50", "p99", "p999", "max"] {
        assert!(
            r["latency_us"][q].as_u64().is_some_and(|v| v > 0),
            "latency {q} missing: {text}"
        );
    }
    assert!(r["otako"]["drive"]["server_cpu_us_per_delivery"].is_number());
    assert_eq!(r["peer"]["sessions_held"], 200, "the peer's run: {text}");
    assert!(r["peer"]["drive"]["deliveries"].as_u64().unwrap_or(0) > 0);
    for (floor, figure) in [
        ("fanout", "cpu_us_per_message"),
        ("path", "nodes"),
        ("path", "broker"),
    ] {
        let cpu = &r["floor"][floor][figure];
        let cpu = cpu.as_f64().or_else(|| cpu[0].as_f64());
        assert!(
            cpu.is_some_and(|c| c > 0.0),
            "floor {floor} {figure}: {text}"
        );
    }
    for delivery in ["history", "republish", "core"] {
        let cpu = r["floor"]["nats"][delivery]["broker"][0].as_f64();
        assert!(
            cpu.is_some_and(|c| c > 0.0),
            "nats-server's floor, {delivery}: {text}"
        );
    }
    let png = std::fs::metadata(out.join("report.png")).expect("report.png written");
    assert!(png.len() > 1000, "report.png is {} bytes", png.len());
}
