//! The backend's rate limits: message posts per user (the contract's 429),
//! member changes per user and account creation per source address. Over a
//! limit the answer is 429 `{"code":"rate_limited","message","retry_after_ms"}`
//! with `Retry-After` in whole seconds, and nothing is written or dispatched.

use otako_e2e::api::ApiResponse;
use otako_e2e::{wait, Stack};
use std::time::Duration;

fn assert_limited(r: &ApiResponse, what: &str) -> u64 {
    assert_eq!(r.status, 429, "{what}: {}", r.body);
    assert_eq!(r.code(), Some("rate_limited"), "{what}: {}", r.body);
    assert!(r.body["message"].as_str().is_some(), "{what}: {}", r.body);
    let ms = r.body["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: retry_after_ms is a number: {}", r.body));
    assert!(ms > 0, "{what}: {}", r.body);
    ms
}

/// `Retry-After` of a raw request, as the header is not in `ApiResponse`.
async fn retry_after(url: &str, token: &str, body: serde_json::Value) -> (u16, Option<String>) {
    let r = reqwest::Client::new()
        .post(url)
        .header("authorization", token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let header = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), header)
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(stack.db.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_over_the_rate_are_refused_with_429_and_not_written() {
    // A slow refill, so the test is not a race against it.
    let stack = Stack::builder()
        .gateways(0)
        .backend_env("OTAKO_MESSAGE_RATE_PER_S", "0.5")
        .backend_env("OTAKO_MESSAGE_BURST", "5")
        .build()
        .await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let channel = api.create_channel(&alice.token, "busy").await;
    api.add_member(&alice.token, &channel, &bob.id).await;

    for i in 0..5 {
        api.post_message(&alice.token, &channel, &format!("burst {i}"), None)
            .await;
    }
    let r = api
        .try_post_message(&alice.token, &channel, "one too many", None)
        .await;
    let ms = assert_limited(&r, "the sixth post");
    assert!(
        ms <= 2_000,
        "one token comes back within 2 s at 0.5/s: {ms}"
    );
    let url = format!("{}/channels/{channel}/messages", api.base());
    let (status, header) =
        retry_after(&url, &alice.token, serde_json::json!({"content": "again"})).await;
    assert_eq!(status, 429);
    let secs: u64 = header.expect("Retry-After is set").parse().unwrap();
    assert!((1..=2).contains(&secs), "whole seconds, rounded up: {secs}");

    // The limit is per user: bob still posts.
    api.post_message(&bob.token, &channel, "bob is fine", None)
        .await;
    assert_eq!(
        count(&stack, "SELECT count(*) FROM messages").await,
        6,
        "the refused posts wrote nothing"
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM outbox WHERE event_type = 'EVENT_MESSAGE_CREATE'"
        )
        .await,
        6,
        "and dispatched nothing"
    );

    // After the wait it says, alice may post again.
    wait::until_true(
        "alice's bucket to refill",
        Duration::from_secs(10),
        || async {
            api.try_post_message(&alice.token, &channel, "later", None)
                .await
                .status
                == 200
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_changes_over_the_rate_are_refused_with_429() {
    let stack = Stack::builder()
        .gateways(0)
        .backend_env("OTAKO_MEMBER_RATE_PER_S", "0.2")
        .backend_env("OTAKO_MEMBER_BURST", "3")
        .build()
        .await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let others = [
        api.create_user("bob").await,
        api.create_user("carol").await,
        api.create_user("dave").await,
    ];
    // Creating the channel adds alice: one change of her three.
    let channel = api.create_channel(&alice.token, "club").await;
    api.add_member(&alice.token, &channel, &others[0].id).await;
    api.add_member(&alice.token, &channel, &others[1].id).await;
    let r = api
        .try_add_member(&alice.token, &channel, &others[2].id)
        .await;
    assert_limited(&r, "the fourth change");
    let r = api
        .try_remove_member(&alice.token, &channel, &others[0].id)
        .await;
    assert_limited(&r, "a removal counts too");
    assert_eq!(
        count(&stack, "SELECT count(*) FROM channel_members").await,
        3,
        "alice, bob and carol; dave was not added, bob not removed"
    );
    // Another user has a bucket of their own: bob leaves.
    api.remove_member(&others[0].token, &channel, &others[0].id)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_creation_is_limited_per_source_address() {
    let stack = Stack::builder()
        .gateways(0)
        .backend_env("OTAKO_SIGNUP_RATE_PER_S", "0.1")
        .backend_env("OTAKO_SIGNUP_BURST", "4")
        .build()
        .await;
    let api = stack.api();
    for i in 0..4 {
        api.create_user(&format!("user_{i}")).await;
    }
    let mut refused = 0;
    for i in 4..200 {
        let r = api.try_create_user(&format!("user_{i}")).await;
        if r.status == 429 {
            assert_limited(&r, "a sign-up over the limit");
            refused += 1;
        } else {
            assert_eq!(r.status, 201, "{}", r.body);
        }
    }
    let created = count(&stack, "SELECT count(*) FROM users").await;
    // 4 at once, then one per 10 s: the 196 quick ones add at most one or two.
    assert!(
        created <= 6,
        "200 sign-ups from one address made {created} accounts"
    );
    assert!(refused >= 194, "{refused} refused");
}
