//! Several backend replicas share one outbox: each channel's events are sent
//! by one replica at a time (a lease per channel in PostgreSQL), and a
//! replica SIGKILLed while messages flow hands its channels to the others,
//! with every message delivered once and in per-channel order.

use futures_util::StreamExt;
use otako_common::proto::DISPATCH_SUBJECT;
use otako_e2e::{Api, Stack, ARRIVE};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHANNELS: usize = 6;
const ROUNDS: usize = 24;
/// The round after which the third replica is SIGKILLed.
const KILL_AFTER: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_outbox_and_one_killed_loses_nothing() {
    let mut stack = Stack::builder()
        .gateways(1)
        .backend_env("OTAKO_OUTBOX_LEASE_MS", "2000")
        .build()
        .await;
    let second = stack.start_backend_replica("backend-2").await;
    let mut third = stack.start_backend_replica("backend-3").await;
    let apis = [
        stack.api().clone(),
        Api::new(format!("http://{}", second.addr)),
        Api::new(format!("http://{}", third.addr)),
    ];
    let (alice, bob, _) = stack.alice_and_bob("general").await;
    let mut channels = Vec::new();
    for i in 0..CHANNELS {
        let c = apis[i % 3]
            .create_channel(&alice.token, &format!("c{i}"))
            .await;
        apis[i % 3].add_member(&alice.token, &c, &bob.id).await;
        channels.push(c);
    }
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut session = stack.gateway(0).connect(&bob.token, "bob").await;

    // Every dispatch request any replica sends, counted per event id (a
    // plain subscriber gets a copy of each, outside the queue group).
    let nats = stack.nats.client(0).await;
    let mut requests = nats.subscribe(DISPATCH_SUBJECT).await.unwrap();
    nats.flush().await.unwrap();
    let seen: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let counter = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(msg) = requests.next().await {
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
                *seen
                    .lock()
                    .unwrap()
                    .entry(v["event_id"].to_string())
                    .or_default() += 1;
            }
        }
    });

    // Writes spread over the live replicas, a channel's writes one after
    // another; the third replica dies a third of the way in.
    let mut live = 3;
    for round in 0..ROUNDS {
        if round == KILL_AFTER {
            third.proc().kill();
            live = 2;
        }
        for (i, c) in channels.iter().enumerate() {
            apis[(round + i) % live]
                .post_message(&alice.token, c, &format!("{i}-{round}"), None)
                .await;
        }
    }
    // The dead replica's leases run out (2 s) and the others take its
    // channels at their next poll.
    stack.db.wait_outbox_settled(Duration::from_secs(30)).await;

    let want = CHANNELS * ROUNDS;
    let mut got: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for _ in 0..want {
        let d = session.expect_dispatch("EVENT_MESSAGE_CREATE").await;
        let content = d["content"].as_str().unwrap().to_owned();
        let (i, round) = content.split_once('-').unwrap();
        got.entry(i.parse().unwrap())
            .or_default()
            .push(round.parse().unwrap());
    }
    for i in 0..CHANNELS {
        assert_eq!(
            got.get(&i).cloned().unwrap_or_default(),
            (0..ROUNDS).collect::<Vec<_>>(),
            "channel c{i}: every message once, in order"
        );
    }
    session.expect_no_dispatch(otako_e2e::QUIET).await;

    // One replica at a time per channel: an event is requested once, except
    // where the dead replica's request was in flight at its death (at most
    // one per channel it held).
    nats.flush().await.unwrap();
    counter.abort();
    let seen = seen.lock().unwrap().clone();
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        seen.len() >= want,
        "the subscriber saw {} of {want} events' requests",
        seen.len()
    );
    assert!(
        repeated.len() <= CHANNELS,
        "events requested more than once: {repeated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_channel_is_taken_over_once_its_lease_runs_out() {
    let stack = Stack::builder().gateways(1).build().await;
    let (alice, bob, channel) = stack.alice_and_bob("general").await;
    let mut session = stack.gateway(0).connect(&bob.token, "bob").await;
    // What a replica that died while sending the channel's events leaves
    // behind: its lease, 3 s from running out (over the row the channel's
    // first events left, given back).
    sqlx::query(
        "INSERT INTO outbox_leases (channel_id, holder, expires_at) \
         VALUES ($1, 'backend-dead', now() + interval '3 seconds') \
         ON CONFLICT (channel_id) DO UPDATE \
            SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at",
    )
    .bind(channel.parse::<i64>().unwrap())
    .execute(stack.db.pool())
    .await
    .unwrap();
    let posted = std::time::Instant::now();
    stack
        .api()
        .post_message(&alice.token, &channel, "after the death", None)
        .await;
    let d = session.expect_dispatch("EVENT_MESSAGE_CREATE").await;
    let took = posted.elapsed();
    assert_eq!(d["content"], "after the death");
    // Not before the lease ran out (by the database's clock), and within
    // the stated bound after it: the TTL plus one poll (0.5 s).
    assert!(
        took >= Duration::from_millis(2_500),
        "sent while another replica's lease held: {took:?}"
    );
    assert!(took < Duration::from_secs(3) + ARRIVE, "{took:?}");
}
