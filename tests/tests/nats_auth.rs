//! NATS credentials and the shipped least-privilege configuration
//! (deploy/nats/otako.conf), over real nats-server processes: both binaries
//! connect with the password in `OTAKO_NATS_URL` and a message flows, a wrong
//! password fails without being printed, TLS with a private CA works, and
//! under the shipped users a client without credentials cannot connect while
//! the backend's user can neither forge cluster traffic nor write the
//! session-limit bucket.

use async_nats::ServerError;
use futures_util::StreamExt;
use otako_common::nats::{connect_options, parse_servers, NatsOptions};
use otako_e2e::{env, Auth, Incoming, Proc, Role, Stack, ARRIVE, QUIET};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;

/// A client whose server errors (permission violations among them) arrive
/// on a channel: the server answers a forbidden publish or subscription with
/// `-ERR 'Permissions Violation ...'` and keeps the connection open.
struct Watched {
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Watched {
    async fn connect(url: &str, options: &NatsOptions) -> Watched {
        let (tx, errors) = mpsc::unbounded_channel();
        let servers = parse_servers(url).unwrap();
        let client = connect_options(&servers, options)
            .await
            .unwrap()
            .name("otako-e2e-attacker")
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let text = match e {
                            ServerError::Other(s) => s,
                            other => other.to_string(),
                        };
                        let _ = tx.send(text);
                    }
                }
            })
            .connect(servers.addrs)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url:?}: {e}"));
        Watched { client, errors }
    }

    /// Waits for the server's permission violation naming `subject`.
    async fn expect_violation(&mut self, what: &str, subject: &str) {
        let deadline = tokio::time::Instant::now() + ARRIVE;
        loop {
            let e = tokio::time::timeout_at(deadline, self.errors.recv())
                .await
                .unwrap_or_else(|_| panic!("{what}: no permissions violation within {ARRIVE:?}"))
                .expect("the error channel stays open");
            let lower = e.to_lowercase();
            if lower.contains("permissions violation") && e.contains(subject) {
                return;
            }
        }
    }
}

/// Creates a user and a channel, opens a session for them on every gateway,
/// posts a message and checks every session receives it.
async fn message_flows(stack: &Stack) {
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "general").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut sessions = Vec::new();
    for (i, gw) in stack.gateways.iter().enumerate() {
        sessions.push(
            gw.connect(&alice.token, &format!("alice@gw-{}", i + 1))
                .await,
        );
    }
    let posted = api
        .post_message(
            &alice.token,
            &channel,
            "over an authenticated bus",
            Some("n-1"),
        )
        .await;
    for s in &mut sessions {
        assert_eq!(s.expect_dispatch("EVENT_MESSAGE_CREATE").await, posted);
    }
}

/// What the server logged, all servers.
fn nats_log(stack: &Stack) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(&stack.logs).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("nats-") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_connect_with_the_password_in_the_url_and_the_shipped_config_denies_them_nothing_they_use(
) {
    let stack = Stack::builder().nats_auth(true).gateways(2).build().await;
    message_flows(&stack).await;
    // Revocation goes the backend -> gateways way.
    let api = stack.api();
    let bob = api.create_user("bob").await;
    let mut session = stack.gateway(1).connect(&bob.token, "bob@gw-2").await;
    api.revoke(&bob.token).await;
    session
        .expect_close(otako_e2e::CloseCode::AuthFailed, ARRIVE)
        .await;

    // Each binary sees the other through service discovery ($SRV pings and
    // replies on the role's own inbox): the backend's health says so.
    let health_url = format!("http://{}/healthz", stack.backend.as_ref().unwrap().addr);
    otako_e2e::wait::until_true("the backend to see a gateway", ARRIVE, || {
        let url = health_url.clone();
        async move {
            let Ok(r) = reqwest::get(&url).await else {
                return false;
            };
            let Ok(v) = r.json::<serde_json::Value>().await else {
                return false;
            };
            v["gateways"]["nodes"].as_u64().unwrap_or(0) >= 2
        }
    })
    .await;

    // Nothing either binary did was refused: the shipped permissions cover
    // every subject they use today. (The server logs "Publish Violation",
    // "Subscription Violation" and the like.)
    let log = nats_log(&stack);
    assert!(
        !log.contains("Violation"),
        "the shipped config refused something a binary uses:\n{}",
        log.lines()
            .filter(|l| l.contains("Violation"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Passwords never appear in the binaries' logs; the user names do.
    let gw_password = stack.nats.password(Role::Gateway).to_owned();
    let backend_password = stack.nats.password(Role::Backend).to_owned();
    for gw in &stack.gateways {
        let log = gw.log_text();
        assert!(
            !log.contains(&gw_password),
            "{}: password in its log",
            gw.node_id
        );
        assert!(log.contains("otako-gateway:***@"), "{}: {log}", gw.node_id);
    }
    let log = stack.backend.as_ref().unwrap().log_text();
    assert!(
        !log.contains(&backend_password),
        "the backend's password in its log"
    );
    assert!(log.contains("otako-backend:***@"), "{log}");
}

/// Starts `binary` with `nats_env` (its NATS settings) and the rest of what
/// it needs, expects it to exit because NATS refused it, with an error that
/// names the cause; returns its log.
async fn refused_at_start(
    stack: &Stack,
    name: &str,
    binary: &str,
    nats_env: &[(&str, String)],
) -> String {
    let mut vars: Vec<(&str, String)> = nats_env.to_vec();
    vars.extend([
        ("DATABASE_URL", stack.db.url().to_owned()),
        ("OTAKO_TOKEN_SECRET", env::TEST_SECRET.to_owned()),
        ("OTAKO_GATEWAY_LISTEN", "127.0.0.1:0".into()),
        ("OTAKO_ADMIN_LISTEN", "127.0.0.1:0".into()),
        ("OTAKO_HTTP_LISTEN", "127.0.0.1:0".into()),
    ]);
    let mut p = Proc::spawn(
        name,
        env::binary(binary),
        &[],
        &vars,
        &stack.logs.join(format!("{name}.log")),
    );
    let status = p.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "{binary} must exit when NATS refuses its credentials ({status:?})"
    );
    let log = p.log_text();
    assert!(
        log.contains("authorization violation"),
        "{binary}: the error names the cause:\n{log}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_at_start_with_an_error_that_does_not_show_it() {
    let stack = Stack::builder()
        .nats_auth(true)
        .gateways(0)
        .backend(false)
        .build()
        .await;
    let wrong = "wr0ng-pa55word-e2e";
    let url = stack
        .nats
        .url(0)
        .replacen("://", &format!("://otako-gateway:{wrong}@"), 1);
    for (name, binary) in [
        ("gateway-wrong-password", "otako-gateway"),
        ("backend-wrong-password", "otako-backend-shim"),
    ] {
        // Two servers in the list, the second down: every entry gets the
        // credentials, and the error still hides them.
        let nats_url = format!("{url},nats://otako-gateway:{wrong}@127.0.0.1:1");
        let log = refused_at_start(&stack, name, binary, &[("OTAKO_NATS_URL", nats_url)]).await;
        assert!(
            !log.contains(wrong),
            "{binary}: the password is in its log:\n{log}"
        );
        assert!(log.contains("otako-gateway:***@"), "{binary}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_no_client_connects_to_the_shipped_config() {
    let stack = Stack::builder()
        .nats_auth(true)
        .gateways(0)
        .backend(false)
        .build()
        .await;
    let none = stack
        .nats
        .try_client(&stack.nats.url(0), &NatsOptions::default())
        .await
        .expect_err("a client without credentials must be refused");
    assert!(none.contains("authorization violation"), "{none}");
    let guessed = stack
        .nats
        .try_client(
            &stack.nats.url(0).replacen("://", "://otako-ops:otako@", 1),
            &NatsOptions::default(),
        )
        .await
        .expect_err("a guessed password must be refused");
    assert!(!guessed.contains("otako@"), "{guessed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_user_cannot_forge_cluster_traffic_nor_read_it() {
    let stack = Stack::builder().nats_auth(true).gateways(1).build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "general").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut session = stack.gateway(0).connect(&alice.token, "alice").await;

    // A privileged watcher of everything the attacker aims at.
    let ops = stack.nats.client(0).await;
    let mut watched = ops.subscribe(">").await.unwrap();
    ops.flush().await.unwrap();

    let mut attacker = Watched::connect(
        &stack.nats.url_as(0, Role::Backend),
        &stack.nats.options_for(Role::Backend),
    )
    .await;
    let forged = json!({
        "t": "EVENT_MESSAGE_CREATE",
        "d": {"id": "999", "channel_id": channel, "content": "forged"},
    })
    .to_string();
    for subject in [
        "otako.fanout",
        "otako.ev.1.m",
        "$KV.otako_sessions.u1",
        "$JS.API.STREAM.INFO.KV_otako_sessions",
        "otako.errors",
    ] {
        attacker
            .client
            .publish(subject, forged.clone().into())
            .await
            .unwrap();
        attacker.client.flush().await.unwrap();
        attacker
            .expect_violation(&format!("publish on {subject}"), subject)
            .await;
    }
    // Reading the firehose, the history, the gateways' replies, or taking
    // dispatch requests in the gateways' queue group.
    let mut forbidden_subs = Vec::new();
    for subject in [
        "otako.fanout",
        "otako.ev.>",
        "_INBOX.>",
        "_INBOX.otako-gateway.>",
    ] {
        forbidden_subs.push(attacker.client.subscribe(subject).await.unwrap());
        attacker.client.flush().await.unwrap();
        attacker
            .expect_violation(&format!("subscribe to {subject}"), subject)
            .await;
    }
    forbidden_subs.push(
        attacker
            .client
            .queue_subscribe("otako.dispatch", "otako-gateway".into())
            .await
            .unwrap(),
    );
    attacker.client.flush().await.unwrap();
    attacker
        .expect_violation("joining the dispatch queue group", "otako.dispatch")
        .await;

    // None of it went anywhere: the server dropped every forged publish
    // (the watcher saw none), and the session got nothing.
    let deadline = tokio::time::Instant::now() + QUIET;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, watched.next()).await {
        assert!(
            msg.payload.as_ref() != forged.as_bytes(),
            "a forged message reached {}",
            msg.subject
        );
    }
    session.expect_no_dispatch(QUIET).await;

    // A real post still flows, and none of it reaches the attacker's refused
    // subscriptions.
    let posted = api
        .post_message(&alice.token, &channel, "real", Some("n-1"))
        .await;
    assert_eq!(
        session.expect_dispatch("EVENT_MESSAGE_CREATE").await,
        posted
    );
    for sub in &mut forbidden_subs {
        assert!(
            tokio::time::timeout(QUIET, sub.next())
                .await
                .ok()
                .flatten()
                .is_none(),
            "a refused subscription received a message"
        );
    }

    // The gateway's user, too, takes dispatch requests only in its group:
    // a plain subscription would see every request without answering.
    let mut gw_attacker = Watched::connect(
        &stack.nats.url_as(0, Role::Gateway),
        &stack.nats.options_for(Role::Gateway),
    )
    .await;
    let _plain = gw_attacker
        .client
        .subscribe("otako.dispatch")
        .await
        .unwrap();
    gw_attacker.client.flush().await.unwrap();
    gw_attacker
        .expect_violation("a plain subscription to otako.dispatch", "otako.dispatch")
        .await;
}

/// The attack: entries under a user's key in `otako_sessions` count as that
/// user's sessions, so ten fake ones locked the user out with 4010. Under
/// the shipped configuration only the gateways may write the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_lockout_under_the_shipped_config() {
    let stack = Stack::builder()
        .nats_auth(true)
        .max_sessions_per_user(10)
        .gateways(1)
        .build()
        .await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    // Prove the bucket exists and where the key is: a real session writes it.
    drop(stack.gateway(0).connect(&alice.token, "alice#probe").await);
    let key = format!("u{}", alice.id);
    let fake: serde_json::Map<String, serde_json::Value> = (0..10)
        .map(|i| (format!("fake-{i}"), json!("gw-1")))
        .collect();
    let fake = serde_json::to_vec(&fake).unwrap();

    let mut attacker = Watched::connect(
        &stack.nats.url_as(0, Role::Backend),
        &stack.nats.options_for(Role::Backend),
    )
    .await;
    // Through the KV API: opening the bucket needs the JetStream API.
    let js = async_nats::jetstream::new(attacker.client.clone());
    let opened = tokio::time::timeout(ARRIVE, js.get_key_value("otako_sessions")).await;
    assert!(
        !matches!(opened, Ok(Ok(_))),
        "the backend's user opened the otako_sessions bucket"
    );
    // Straight to the bucket's subject, as a JetStream publish would.
    let subject = format!("$KV.otako_sessions.{key}");
    attacker
        .client
        .publish(subject.clone(), fake.clone().into())
        .await
        .unwrap();
    attacker.client.flush().await.unwrap();
    attacker
        .expect_violation("writing the user's key", &subject)
        .await;

    // The entry holds no fake session, and the user still gets READY.
    let kv = async_nats::jetstream::new(stack.nats.client(0).await)
        .get_key_value("otako_sessions")
        .await
        .unwrap();
    let entry = kv.get(&key).await.unwrap().unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&entry).contains("fake-"),
        "a fake session entry was written"
    );
    let mut c = stack
        .gateway(0)
        .connect_raw(Auth::Header(&alice.token), "alice")
        .await;
    c.hello().await;
    match c.next_incoming(ARRIVE).await {
        Some(Incoming::Json(v)) if v["t"] == "READY" => {}
        other => panic!("alice must still get READY, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_the_shipped_users() {
    let stack = Stack::builder()
        .nats_auth(true)
        .nats_tls(true)
        .gateways(1)
        .build()
        .await;
    assert!(stack.nats.url(0).starts_with("tls://"));
    message_flows(&stack).await;
    // Without the CA the server's certificate is not trusted.
    let untrusted = stack
        .nats
        .try_client(&stack.nats.url_as(0, Role::Ops), &NatsOptions::default())
        .await
        .expect_err("a client that does not trust the private CA must fail");
    assert!(
        !untrusted.contains(stack.nats.password(Role::Ops)),
        "{untrusted}"
    );
    // And a plain nats:// URL with the CA set still speaks TLS (required).
    let plain = stack
        .nats
        .url_as(0, Role::Ops)
        .replacen("tls://", "nats://", 1);
    stack
        .nats
        .try_client(&plain, &stack.nats.options_for(Role::Ops))
        .await
        .expect("with OTAKO_NATS_TLS_CA set, TLS is used on a nats:// URL too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_authenticate_with_a_creds_file_and_a_strangers_fails_at_start() {
    // Operator mode, as `nsc` sets it up: the servers know the operator and
    // the account; each binary has its user's JWT and seed in a file.
    let stack = Stack::builder().nats_creds(true).gateways(2).build().await;
    message_flows(&stack).await;
    for gw in &stack.gateways {
        let log = gw.log_text();
        assert!(log.contains("otako-gateway.creds"), "{}: {log}", gw.node_id);
    }

    // A user of an account the servers do not know: both binaries exit with
    // an error that says so, naming the file and never its seed.
    let stranger = stack.nats.stranger_creds().expect("operator mode");
    let seed = std::fs::read_to_string(stranger)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("SU"))
        .expect("the file holds a user seed")
        .to_owned();
    for (name, binary) in [
        ("gateway-stranger-creds", "otako-gateway"),
        ("backend-stranger-creds", "otako-backend-shim"),
    ] {
        let nats_env = [
            ("OTAKO_NATS_URL", stack.nats.url(0)),
            ("OTAKO_NATS_CREDS", stranger.to_string_lossy().into_owned()),
        ];
        let log = refused_at_start(&stack, name, binary, &nats_env).await;
        assert!(
            !log.contains(&seed),
            "{binary}: the seed is in its log:\n{log}"
        );
    }
}
