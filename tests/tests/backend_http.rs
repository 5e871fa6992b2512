//! The backend's HTTP edges that `docs/protocol.md` states: `/healthz`
//! answers 503 while the database does not answer, bodies over 64 KiB are
//! answered 413, nonces are capped at 64 characters, and the same nonce from
//! the same author returns the first message without a second event.

use otako_e2e::wait;
use otako_e2e::{expect_all_quiet, Proxy, Stack, ARRIVE};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `GET /healthz` of the backend: status and body.
async fn healthz(stack: &Stack) -> (u16, Value) {
    otako_e2e::http::http_json(&format!("{}/healthz", stack.api().base())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_database_is_cut_and_200_once_it_is_back() {
    // The backend reaches its database through a proxy the test cuts; the
    // database name is known once the stack has made it.
    let proxy = Proxy::to_postgres().await;
    let mut stack = Stack::builder().backend(false).build().await;
    let through_proxy = format!(
        "postgres://otako@127.0.0.1:{}/{}",
        proxy.port(),
        stack.db.name()
    );
    stack
        .backend_config
        .extra_env
        .push(("DATABASE_URL".into(), through_proxy));
    stack.start_backend().await;
    let (status, body) = healthz(&stack).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"], true, "{body}");
    assert!(proxy.open_connections() >= 1, "the backend uses the proxy");

    proxy.cut().await;
    let body = wait::until("/healthz to answer 503", ARRIVE, || async {
        let (status, body) = healthz(&stack).await;
        Ok::<_, String>((status == 503).then_some(body))
    })
    .await;
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["database"], false, "{body}");
    assert!(
        stack.backend.as_mut().unwrap().proc().is_running(),
        "the backend stays up while its database is away"
    );

    proxy.restore();
    wait::until_true("/healthz to answer 200 again", ARRIVE, || async {
        healthz(&stack).await.0 == 200
    })
    .await;
    let alice = stack.api().create_user("alice").await;
    assert!(!alice.token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_are_413_and_nonces_over_64_characters_are_400() {
    let stack = Stack::builder().build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "limits").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let events_before = stack.db.outbox().await.len();

    // Just over 64 KiB of body: refused before it is read as a message.
    let path = format!("/channels/{channel}/messages");
    let content = "x".repeat(64 * 1024);
    let r = api
        .call(
            reqwest::Method::POST,
            &path,
            Some(&alice.token),
            Some(json!({ "content": content })),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
        "a body over 64 KiB: {}",
        r.body
    );
    assert!(r.code().is_some(), "an error body has a code: {}", r.body);

    // Nonces: 64 characters (not bytes) are fine, 65 are not.
    let at_cap = "é".repeat(64);
    let m = api
        .post_message(&alice.token, &channel, "at the cap", Some(&at_cap))
        .await;
    assert_eq!(m["nonce"], json!(at_cap));
    let over = "n".repeat(65);
    let r = api
        .try_post_message(&alice.token, &channel, "over the cap", Some(&over))
        .await;
    assert_eq!(r.status, 400, "a 65-character nonce: {}", r.body);
    assert!(r.code().is_some(), "an error body has a code: {}", r.body);

    // Only the accepted message wrote an event.
    stack.db.wait_outbox_settled(ARRIVE).await;
    assert_eq!(stack.db.outbox().await.len(), events_before + 1);
    let listed = api.list_messages(&alice.token, &channel, None, None).await;
    assert_eq!(listed, vec![m]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_nonce_returns_the_first_message_and_dispatches_once() {
    let stack = Stack::builder().build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let channel = api.create_channel(&alice.token, "once").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut watchers = vec![
        stack.gateway(0).connect(&alice.token, "alice").await,
        stack.gateway(0).connect(&bob.token, "bob").await,
    ];

    let first = api
        .post_message(&alice.token, &channel, "first", Some("n-1"))
        .await;
    // A retry of the same write, even with other content: the first message.
    let again = api
        .post_message(&alice.token, &channel, "second", Some("n-1"))
        .await;
    assert_eq!(again, first, "the same nonce returns the first message");
    for w in &mut watchers {
        let d = w.expect_dispatch("EVENT_MESSAGE_CREATE").await;
        assert_eq!(d, first, "{}", w.label());
    }
    expect_all_quiet(&mut watchers).await;

    // The nonce is the author's: bob's same nonce is a message of his own.
    let bobs = api
        .post_message(&bob.token, &channel, "mine", Some("n-1"))
        .await;
    assert_ne!(bobs["id"], first["id"]);
    for w in &mut watchers {
        assert_eq!(
            w.expect_dispatch("EVENT_MESSAGE_CREATE").await,
            bobs,
            "{}",
            w.label()
        );
    }
    expect_all_quiet(&mut watchers).await;
    let listed = api.list_messages(&alice.token, &channel, None, None).await;
    assert_eq!(listed, vec![bobs, first], "two messages, newest first");
}
