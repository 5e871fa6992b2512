//! The HTTP API's rules a chat app expects: who may remove whom from a
//! channel, input PostgreSQL cannot store refused as bad input, and nonces
//! that answer for one channel only. No gateway runs: these are about what
//! the backend answers and writes.

use otako_e2e::{Stack, User};
use serde_json::Value;

async fn stack() -> Stack {
    Stack::builder().gateways(0).build().await
}

async fn members(stack: &Stack, channel: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT user_id FROM channel_members WHERE channel_id = $1::text::bigint ORDER BY user_id",
    )
    .bind(channel)
    .fetch_all(stack.db.pool())
    .await
    .unwrap()
}

fn id(u: &User) -> i64 {
    u.id.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removes_only_themselves_and_the_owner_removes_anyone() {
    let stack = stack().await;
    let api = stack.api();
    let owner = api.create_user("owner").await;
    let bob = api.create_user("bob").await;
    let carol = api.create_user("carol").await;
    let dave = api.create_user("dave").await;
    let channel = api.create_channel(&owner.token, "owned").await;
    // Any member may add: bob, added by the owner, adds carol.
    api.add_member(&owner.token, &channel, &bob.id).await;
    api.add_member(&bob.token, &channel, &carol.id).await;
    api.add_member(&bob.token, &channel, &dave.id).await;

    // bob may not remove carol, nor the owner.
    for target in [&carol, &owner] {
        let r = api
            .try_remove_member(&bob.token, &channel, &target.id)
            .await;
        assert_eq!(
            r.status, 403,
            "bob removing {}: {}",
            target.username, r.body
        );
        assert_eq!(r.code(), Some("forbidden"), "{}", r.body);
    }
    assert_eq!(
        members(&stack, &channel).await,
        vec![id(&owner), id(&bob), id(&carol), id(&dave)],
        "nobody was removed"
    );
    // Nothing was announced for the refused removals.
    let removes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE event_type = 'EVENT_CHANNEL_MEMBER_REMOVE'",
    )
    .fetch_one(stack.db.pool())
    .await
    .unwrap();
    assert_eq!(removes, 0);

    // carol leaves on her own; the owner removes dave.
    api.remove_member(&carol.token, &channel, &carol.id).await;
    api.remove_member(&owner.token, &channel, &dave.id).await;
    assert_eq!(members(&stack, &channel).await, vec![id(&owner), id(&bob)]);
    // A non-member (dave, now) gets 403 as before.
    let r = api.try_remove_member(&dave.token, &channel, &bob.id).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // The owner may leave too; ownership stays with the creator, so while
    // away nobody can remove others, and back they are the owner again.
    api.remove_member(&owner.token, &channel, &owner.id).await;
    let r = api.try_remove_member(&bob.token, &channel, &owner.id).await;
    assert_eq!(r.status, 403, "{}", r.body);
    api.add_member(&bob.token, &channel, &owner.id).await;
    api.remove_member(&owner.token, &channel, &bob.id).await;
    assert_eq!(members(&stack, &channel).await, vec![id(&owner)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_character_is_bad_input_not_a_server_error() {
    let stack = stack().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "plain").await;

    let r = api.try_create_channel(&alice.token, "bad\0name").await;
    assert_eq!(
        (r.status, r.code()),
        (400, Some("bad_request")),
        "{}",
        r.body
    );
    let r = api
        .try_post_message(&alice.token, &channel, "bad\0content", None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, Some("bad_request")),
        "{}",
        r.body
    );
    let r = api
        .try_post_message(&alice.token, &channel, "fine", Some("bad\0nonce"))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, Some("bad_request")),
        "{}",
        r.body
    );
    let m = api.post_message(&alice.token, &channel, "fine", None).await;
    let r = api
        .try_edit_message(
            &alice.token,
            &channel,
            m["id"].as_str().unwrap(),
            "bad\0edit",
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, Some("bad_request")),
        "{}",
        r.body
    );

    let messages = api.list_messages(&alice.token, &channel, None, None).await;
    assert_eq!(
        messages.len(),
        1,
        "only the good post was written: {messages:?}"
    );
    assert_eq!(messages[0]["content"], "fine");
    let backend_log = stack.backend.as_ref().unwrap().log_text();
    assert!(
        !backend_log.contains("request failed"),
        "no internal error was logged:\n{backend_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_answers_for_one_channel_only() {
    let stack = stack().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let first = api.create_channel(&alice.token, "first").await;
    let second = api.create_channel(&alice.token, "second").await;
    api.add_member(&alice.token, &first, &bob.id).await;

    let a = api
        .post_message(&alice.token, &first, "in first", Some("n-1"))
        .await;
    let b = api
        .post_message(&alice.token, &second, "in second", Some("n-1"))
        .await;
    assert_eq!(b["channel_id"], Value::String(second.clone()), "{b}");
    assert_eq!(b["content"], "in second", "{b}");
    assert_ne!(a["id"], b["id"]);

    // The same nonce again in each channel returns that channel's message.
    let again = api
        .post_message(&alice.token, &first, "again", Some("n-1"))
        .await;
    assert_eq!(again["id"], a["id"], "{again}");
    let again = api
        .post_message(&alice.token, &second, "again", Some("n-1"))
        .await;
    assert_eq!(again["id"], b["id"], "{again}");
    // Another author's nonce is theirs.
    let c = api
        .post_message(&bob.token, &first, "bob's", Some("n-1"))
        .await;
    assert_ne!(c["id"], a["id"]);

    let creates: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'EVENT_MESSAGE_CREATE'")
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
    assert_eq!(creates, 3, "one create event per new message");
}
