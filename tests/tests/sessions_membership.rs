//! Membership: EVENT_CHANNEL_MEMBER_ADD makes the user's already open sessions
//! receive the channel's events from then on, on every node;
//! EVENT_CHANNEL_MEMBER_REMOVE stops them. Both reach the user concerned and
//! the channel's members. Promised to clients: once a member-add has been answered by the
//! HTTP API, every later event of that channel reaches the new member's open
//! sessions.

use otako_e2e::{expect_all_quiet, metric, Reader, Stack, WsClient, ARRIVE, QUIET};
use serde_json::{json, Value};
use std::time::Duration;

fn member(channel: &str, user: &str) -> Value {
    json!({"channel_id": channel, "user_id": user})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_and_remove_move_open_sessions_on_every_node() {
    let stack = Stack::builder().gateways(3).build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let carol = api.create_user("carol").await;
    let dave = api.create_user("dave").await;
    let channel = api.create_channel(&alice.token, "general").await;
    api.add_member(&alice.token, &channel, &carol.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;

    // bob, not yet a member, has a session on every node; alice and carol
    // are members; dave never is.
    let mut bobs = Vec::new();
    for gw in &stack.gateways {
        let c = gw.connect(&bob.token, &format!("bob@{}", gw.node_id)).await;
        assert!(c.ready_channels().is_empty(), "{}", c.label());
        bobs.push(c);
    }
    let mut alice1 = stack.gateway(0).connect(&alice.token, "alice@gw-1").await;
    let mut carol3 = stack.gateway(2).connect(&carol.token, "carol@gw-3").await;
    let mut dave2 = stack.gateway(1).connect(&dave.token, "dave@gw-2").await;

    // The add, and a message right after the API answered it.
    api.add_member(&alice.token, &channel, &bob.id).await;
    let m1 = api
        .post_message(&alice.token, &channel, "welcome bob", None)
        .await;
    for c in bobs.iter_mut().chain([&mut alice1, &mut carol3]) {
        let d = c.expect_dispatch("EVENT_CHANNEL_MEMBER_ADD").await;
        assert_eq!(d, member(&channel, &bob.id), "{}", c.label());
        assert_eq!(
            c.expect_dispatch("EVENT_MESSAGE_CREATE").await,
            m1,
            "{}",
            c.label()
        );
    }
    // bob's own messages reach everyone, him included.
    let m2 = api.post_message(&bob.token, &channel, "hi all", None).await;
    for c in bobs.iter_mut().chain([&mut alice1, &mut carol3]) {
        assert_eq!(
            c.expect_dispatch("EVENT_MESSAGE_CREATE").await,
            m2,
            "{}",
            c.label()
        );
    }
    expect_all_quiet(
        bobs.iter_mut()
            .chain([&mut alice1, &mut carol3, &mut dave2]),
    )
    .await;
    // A new session of bob lists the channel.
    let fresh = stack.gateway(1).connect(&bob.token, "bob fresh").await;
    assert_eq!(fresh.ready_channels(), vec![channel.clone()]);
    fresh.close().await;

    // The remove, and a message right after the API answered it: the remove
    // is the last event of the channel bob's sessions get.
    api.remove_member(&alice.token, &channel, &bob.id).await;
    let m3 = api
        .post_message(&alice.token, &channel, "bye bob", None)
        .await;
    for c in bobs.iter_mut().chain([&mut alice1, &mut carol3]) {
        let d = c.expect_dispatch("EVENT_CHANNEL_MEMBER_REMOVE").await;
        assert_eq!(d, member(&channel, &bob.id), "{}", c.label());
    }
    for c in [&mut alice1, &mut carol3] {
        assert_eq!(
            c.expect_dispatch("EVENT_MESSAGE_CREATE").await,
            m3,
            "{}",
            c.label()
        );
    }
    expect_all_quiet(
        bobs.iter_mut()
            .chain([&mut alice1, &mut carol3, &mut dave2]),
    )
    .await;
    assert_eq!(
        api.try_post_message(&bob.token, &channel, "let me in", None)
            .await
            .status,
        403
    );

    // Added again, he receives again.
    api.add_member(&carol.token, &channel, &bob.id).await;
    let m4 = api.post_message(&carol.token, &channel, "back", None).await;
    for c in bobs.iter_mut().chain([&mut alice1, &mut carol3]) {
        let d = c.expect_dispatch("EVENT_CHANNEL_MEMBER_ADD").await;
        assert_eq!(d, member(&channel, &bob.id), "{}", c.label());
        assert_eq!(
            c.expect_dispatch("EVENT_MESSAGE_CREATE").await,
            m4,
            "{}",
            c.label()
        );
    }

    // A channel bob creates reaches his open sessions at once (the
    // project's addition: creating dispatches a member-add for the creator).
    let own = api.create_channel(&bob.token, "bobs-place").await;
    let m5 = api.post_message(&bob.token, &own, "mine", None).await;
    for c in &mut bobs {
        let d = c.expect_dispatch("EVENT_CHANNEL_MEMBER_ADD").await;
        assert_eq!(d, member(&own, &bob.id), "{}", c.label());
        assert_eq!(
            c.expect_dispatch("EVENT_MESSAGE_CREATE").await,
            m5,
            "{}",
            c.label()
        );
    }
    expect_all_quiet(
        bobs.iter_mut()
            .chain([&mut alice1, &mut carol3, &mut dave2]),
    )
    .await;
}

/// Many add → message → remove → message rounds over three gateway nodes of
/// a NATS cluster, with the backend's requests spread over the nodes, so
/// consecutive events of a channel are often handled by different nodes and
/// published on different servers. Every round, each of bob's sessions must
/// see exactly: the add, the message after it, the remove, and not the
/// message after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_takes_effect_in_event_order_on_every_node_of_a_nats_cluster() {
    const ROUNDS: usize = 30;
    let stack = Stack::builder()
        .spread_over_nodes()
        .gateways(3)
        .build()
        .await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let mut bobs = Vec::new();
    for gw in &stack.gateways {
        bobs.push(
            Reader::open(
                gw,
                &bob.token,
                &format!("bob@{}", gw.node_id),
                Duration::from_secs(10),
            )
            .await,
        );
    }
    let watcher = Reader::open(
        stack.gateway(2),
        &alice.token,
        "alice@gw-3",
        Duration::from_secs(10),
    )
    .await;

    let mut expected = Vec::new();
    for round in 0..ROUNDS {
        let channel = api
            .create_channel(&alice.token, &format!("room-{round}"))
            .await;
        api.add_member(&alice.token, &channel, &bob.id).await;
        let inside = api
            .post_message(&alice.token, &channel, &format!("for bob {round}"), None)
            .await;
        let inside_id: i64 = inside["id"].as_str().unwrap().parse().unwrap();
        // Let the message reach bob before he goes, so that the add is not
        // made moot by the remove.
        for b in &bobs {
            b.wait_for(&format!("round {round}'s message"), ARRIVE, |s| {
                s.ids_of("EVENT_MESSAGE_CREATE").contains(&inside_id)
            })
            .await;
        }
        api.remove_member(&alice.token, &channel, &bob.id).await;
        let outside = api
            .post_message(
                &alice.token,
                &channel,
                &format!("not for bob {round}"),
                None,
            )
            .await;
        expected.push((channel, inside, outside));
    }
    // alice sees every last message; once she has, so would bob have.
    let last_id: i64 = expected.last().unwrap().2["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    watcher
        .wait_for("the last message", ARRIVE, |s| {
            s.ids_of("EVENT_MESSAGE_CREATE").contains(&last_id)
        })
        .await;
    tokio::time::sleep(QUIET).await;

    let mut problems = Vec::new();
    for b in &bobs {
        let seen = b.seen().await;
        assert!(
            b.is_open(),
            "{}: the session ended: {:?}",
            b.label,
            seen.end
        );
        for (round, (channel, inside, outside)) in expected.iter().enumerate() {
            let got: Vec<(String, Value)> = seen
                .events
                .iter()
                .filter(|(_, d, _)| d["channel_id"] == json!(channel))
                .map(|(t, d, _)| (t.clone(), d.clone()))
                .collect();
            let want = vec![
                (
                    "EVENT_CHANNEL_MEMBER_ADD".to_owned(),
                    member(channel, &bob.id),
                ),
                ("EVENT_MESSAGE_CREATE".to_owned(), inside.clone()),
                (
                    "EVENT_CHANNEL_MEMBER_REMOVE".to_owned(),
                    member(channel, &bob.id),
                ),
            ];
            if got != want {
                problems.push(format!(
                    "{} round {round}: got {:?}, want add, message {}, remove (not message {})",
                    b.label,
                    got.iter()
                        .map(|(t, d)| format!("{t} {d}"))
                        .collect::<Vec<_>>(),
                    inside["id"],
                    outside["id"]
                ));
            }
        }
    }
    // The test means something only if the events were spread over nodes.
    let mut handled = Vec::new();
    for gw in &stack.gateways {
        handled.push(metric(gw, "otako_dispatch_requests_total", &[]).await);
    }
    println!("dispatch requests handled per node: {handled:?}");
    assert!(
        handled.iter().filter(|&&n| n > 0.0).count() >= 2,
        "the events were not spread over the nodes: {handled:?}"
    );
    assert!(
        problems.is_empty(),
        "{} of {} session-rounds went wrong:\n{}",
        problems.len(),
        ROUNDS * bobs.len(),
        problems.join("\n")
    );
}

/// Sessions that start while their user is being removed from a channel:
/// whatever READY lists, after the remove's event no session of the user may
/// receive the channel's events. (A session reads its channel list from the
/// database while it starts; a remove handled in between must not be undone
/// by that list.) The remove lands at a different moment of the sessions'
/// start in each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_starting_during_a_remove_does_not_keep_the_channel() {
    const ROUNDS: u64 = 20;
    const SESSIONS: u64 = 20;
    let stack = Stack::builder()
        .gateways(2)
        .max_sessions_per_user(100)
        .build()
        .await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let channel = api.create_channel(&alice.token, "revolving").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut watcher = stack.gateway(0).connect(&alice.token, "alice").await;
    let mut leaks = Vec::new();
    for round in 0..ROUNDS {
        api.add_member(&alice.token, &channel, &bob.id).await;
        let d = watcher.expect_dispatch("EVENT_CHANNEL_MEMBER_ADD").await;
        assert_eq!(d, member(&channel, &bob.id));
        // bob's sessions start, 1 ms apart, while he is removed.
        let opening = futures_util::future::join_all((0..SESSIONS).map(|k| {
            let gw = stack.gateway(k as usize % 2);
            let label = format!("bob round {round} #{k}");
            let token = bob.token.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(k)).await;
                gw.connect(&token, &label).await
            }
        }));
        let removing = async {
            tokio::time::sleep(Duration::from_millis(round % 10 * 2)).await;
            api.remove_member(&alice.token, &channel, &bob.id).await;
        };
        let (mut sessions, ()) = tokio::join!(opening, removing);
        let d = watcher.expect_dispatch("EVENT_CHANNEL_MEMBER_REMOVE").await;
        assert_eq!(d, member(&channel, &bob.id));
        let after = api
            .post_message(&alice.token, &channel, &format!("after {round}"), None)
            .await;
        assert_eq!(watcher.expect_dispatch("EVENT_MESSAGE_CREATE").await, after);
        // Whatever each session saw of the add and the remove, the message
        // after the remove must not reach it.
        let seen = futures_util::future::join_all(sessions.iter_mut().map(|c| async move {
            let mut events = Vec::new();
            loop {
                match c.next_incoming(QUIET).await {
                    None => return events,
                    Some(otako_e2e::Incoming::Json(v)) if v["op"] == 0 => {
                        events.push(v["t"].as_str().unwrap_or_default().to_owned())
                    }
                    Some(other) => panic!("{}: unexpected {other:?}", c.label()),
                }
            }
        }))
        .await;
        for (c, events) in sessions.iter().zip(seen) {
            if events.iter().any(|t| t == "EVENT_MESSAGE_CREATE") {
                leaks.push(format!(
                    "{}: READY listed {:?}, then it received {events:?}",
                    c.label(),
                    c.ready_channels()
                ));
            }
        }
        futures_util::future::join_all(sessions.into_iter().map(WsClient::close)).await;
    }
    assert!(
        leaks.is_empty(),
        "{} of {} sessions received a channel's message after their user was removed \
         from it:\n{}",
        leaks.len(),
        ROUNDS * SESSIONS,
        leaks.join("\n")
    );
}
