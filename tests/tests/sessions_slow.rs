//! Slow clients: a session that stops reading never delays other sessions, the
//! node's NATS subscriptions or the dispatch replies; its outbound queue is
//! bounded (OTAKO_SESSION_QUEUE, default 512 frames) and on overflow it is
//! closed with 4011; the node's memory stays bounded.

use otako_e2e::process::proc_status_kib;
use otako_e2e::{event_body, CloseCode, Stack, QUIET};
use otako_e2e::{metric, Reader, StalledClient};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const EVENTS: usize = 20_000;
/// Dispatch requests in flight at once.
const IN_FLIGHT: usize = 48;
/// Distinct message rows the events point at.
const ROWS: usize = 100;
/// The stated bound on the growth of the node's resident memory while a
/// client stalls under this flood.
const RSS_BOUND_MIB: f64 = 64.0;
/// A dispatch reply slower than the backend's default attempt timeout
/// (OTAKO_DISPATCH_TIMEOUT_MS = 2000) would count as a failed attempt.
const REPLY_BOUND: Duration = Duration::from_secs(2);
/// How long after the flood's last reply every other session may still be
/// reading it. Readers that keep up finish within about a tenth of a second
/// on two busy cores; a reader held up behind the stalled client would lag
/// by the time the node takes to give up on it, seconds.
const READER_LAG_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_4011_and_delays_nobody() {
    let mut stack = Stack::builder().backend(false).gateways(2).build().await;
    let pid = stack.gateways[0].proc().pid().expect("gw-1 runs");
    let db = &stack.db;
    let slow = db.insert_user("slowpoke").await;
    let members: Vec<i64> = vec![
        db.insert_user("m1").await,
        db.insert_user("m2").await,
        db.insert_user("m3").await,
    ];
    let channel = db.insert_channel(members[0], "firehose").await;
    for &m in members[1..].iter().chain([&slow]) {
        db.insert_member(channel, m).await;
    }
    let mut rows = Vec::new();
    for i in 0..ROWS {
        let content = format!("event payload #{i}: {}", "x".repeat(120));
        rows.push(db.insert_message(channel, members[i % 3], &content).await);
    }

    // Two readers on gw-1 (the slow client's node), one on gw-2.
    let (gw1, gw2) = (stack.gateway(0), stack.gateway(1));
    let beat = Duration::from_secs(10);
    let readers = vec![
        Reader::open(gw1, &stack.token_for(members[0], "m1"), "m1@gw-1", beat).await,
        Reader::open(gw1, &stack.token_for(members[1], "m2"), "m2@gw-1", beat).await,
        Reader::open(gw2, &stack.token_for(members[2], "m3"), "m3@gw-2", beat).await,
    ];
    let stalled =
        StalledClient::connect(gw1, &stack.token_for(slow, "slowpoke"), "slowpoke@gw-1").await;
    assert_eq!(stalled.ready["channels"], json!([channel.to_string()]));

    let rss_before = proc_status_kib(pid, "VmRSS");
    let peak = Arc::new(AtomicUsize::new(rss_before as usize));
    let sampler = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                let rss = proc_status_kib(pid, "VmRSS") as usize;
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // The flood: 20,000 dispatch requests straight on otako.dispatch, many
    // in flight, from two NATS connections.
    let senders = [stack.dispatcher(0).await, stack.dispatcher(0).await];
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|w| {
            let sender = senders[w % 2].clone();
            let (next, rows) = (next.clone(), rows.clone());
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= EVENTS {
                        return (slowest, by_node);
                    }
                    let body = event_body(
                        "EVENT_MESSAGE_CREATE",
                        json!({"id": rows[i % ROWS].to_string(), "channel_id": channel.to_string()}),
                        json!(i.to_string()),
                        json!(format!("flood-{i}")),
                    );
                    let sent = Instant::now();
                    let reply = sender.send(body).await;
                    slowest = slowest.max(sent.elapsed());
                    assert!(reply.success(), "flood #{i}: {}", reply.raw);
                    *by_node.entry(reply.node().to_owned()).or_default() += 1;
                }
            })
        })
        .collect();
    let mut slowest_reply = Duration::ZERO;
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for w in workers {
        let (s, n) = w.await.expect("a flood worker");
        slowest_reply = slowest_reply.max(s);
        for (node, k) in n {
            *by_node.entry(node).or_default() += k;
        }
    }
    let flood_took = started.elapsed();
    let all_replied = Instant::now();

    // Every reader gets every event, soon after the last reply.
    for r in &readers {
        r.wait_for("all 20,000 events", Duration::from_secs(30), |s| {
            s.count_of("EVENT_MESSAGE_CREATE") >= EVENTS
        })
        .await;
    }
    // Anything delivered twice would come now: count after a quiet window.
    tokio::time::sleep(QUIET).await;
    let mut lags = Vec::new();
    for r in &readers {
        let seen = r.seen().await;
        assert!(r.is_open(), "{}: closed: {:?}", r.label, seen.end);
        assert_eq!(
            seen.count_of("EVENT_MESSAGE_CREATE"),
            EVENTS,
            "{}: every event exactly once (more is duplicates)",
            r.label
        );
        let last = seen.events[EVENTS - 1].2;
        lags.push((r.label.clone(), last.saturating_duration_since(all_replied)));
    }
    let shown_lags: Vec<String> = lags
        .iter()
        .map(|(label, lag)| format!("{label} {:.0} ms", lag.as_secs_f64() * 1e3))
        .collect();

    // The stalled session was closed as too slow, and only it: it cannot be
    // made to read its close frame, so the node's counters say.
    let too_slow_code = CloseCode::TooSlow.code().to_string();
    let too_slow = [("code", too_slow_code.as_str())];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let closed = metric(gw1, "otako_sessions_closed_total", &too_slow).await;
        if closed >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled session was not closed with 4011 within 30 s of the flood's end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slow_closes = metric(gw1, "otako_slow_client_closes_total", &[]).await;
    let closed_4011 = metric(gw1, "otako_sessions_closed_total", &too_slow).await;
    let other_node_4011 = metric(gw2, "otako_sessions_closed_total", &too_slow).await;
    assert_eq!(slow_closes, 1.0, "exactly one session of gw-1 was too slow");
    assert_eq!(
        closed_4011, 1.0,
        "exactly one session of gw-1 was closed with 4011"
    );
    assert_eq!(
        other_node_4011, 0.0,
        "no session of gw-2 was closed with 4011"
    );
    for r in &readers {
        assert!(r.is_open(), "{} must still be open", r.label);
    }
    // Its connection is closed: reading what is left ends, with a 4011
    // close frame if one made it into the socket.
    let (frames, code, ended) = stalled.drain(Duration::from_secs(20)).await;
    assert!(ended, "the stalled client's connection was not closed");
    assert!(
        code.is_none() || code == Some(CloseCode::TooSlow.code()),
        "the stalled client's close frame says {code:?}, not 4011"
    );
    assert!(
        frames < EVENTS,
        "the stalled client got all {frames} frames: it was not cut off"
    );

    sampler.abort();
    let rss_after = proc_status_kib(pid, "VmRSS");
    let peak = peak.load(Ordering::Relaxed) as u64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let growth = mib(peak.saturating_sub(rss_before));
    println!(
        "{EVENTS} events dispatched in {:.2} s ({:.0}/s; handled per node {by_node:?}); \
         slowest dispatch reply {:.0} ms; readers done after the last reply: {}; \
         stalled client read {frames} frames then the connection ended (close frame {code:?}); \
         gw-1 VmRSS {:.1} MiB before, peak {:.1} MiB, {:.1} MiB after: growth {growth:.1} MiB \
         (bound {RSS_BOUND_MIB} MiB)",
        flood_took.as_secs_f64(),
        EVENTS as f64 / flood_took.as_secs_f64(),
        slowest_reply.as_secs_f64() * 1e3,
        shown_lags.join(", "),
        mib(rss_before),
        mib(peak),
        mib(rss_after),
    );
    assert!(
        growth < RSS_BOUND_MIB,
        "gw-1's resident memory grew by {growth:.1} MiB under the flood (bound {RSS_BOUND_MIB} MiB)"
    );
    // Delays nobody: the dispatch replies, and every other session of the
    // stalled client's node and of the other node.
    assert!(
        slowest_reply < REPLY_BOUND,
        "a dispatch reply took {slowest_reply:?} while a client stalled (bound {REPLY_BOUND:?})"
    );
    for (label, lag) in &lags {
        assert!(
            *lag < READER_LAG_BOUND,
            "{label} read the flood's last event {lag:?} after its last reply while a client \
             stalled (bound {READER_LAG_BOUND:?})"
        );
    }
    // Neither the node's NATS connection nor the server saw a slow consumer.
    for gw in &stack.gateways {
        assert!(
            !gw.log_text().to_lowercase().contains("slow consumer"),
            "{} reports a slow consumer on its NATS connection",
            gw.node_id
        );
    }
    let nats_log = std::fs::read_to_string(stack.logs.join("nats-1.log")).unwrap_or_default();
    assert!(
        !nats_log.contains("Slow Consumer"),
        "nats-server saw a slow consumer"
    );
}
