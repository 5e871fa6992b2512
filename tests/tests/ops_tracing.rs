//! Tracing: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, both binaries export their
//! spans over OTLP (HTTP by default, gRPC with
//! `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`) to a real collector (rotel), and one
//! message is one trace, from the HTTP request to the delivery on every node;
//! failure records carry the trace id; without the variable nothing is exported
//! at all.

use otako_common::proto::{DISPATCH_SUBJECT, TRACEPARENT_HEADER};
use otako_e2e::env::port_is_free;
use otako_e2e::otlp::{in_trace, Collector, SpanRecord};
use otako_e2e::traceparent::fresh_traceparent;
use otako_e2e::{fresh_event_id, Stack, WsClient, ARRIVE};
use serde_json::{json, Value};
use std::time::Duration;

/// How long spans may take to reach the collector: the SDK batches every
/// 200 ms here (`OTEL_BSP_SCHEDULE_DELAY`), the collector batches too.
const SPANS_ARRIVE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Transport {
    Http,
    Grpc,
}

/// The OpenTelemetry environment of a process exporting to `collector`,
/// with `instance` as its `service.instance.id`.
fn otel_env(collector: &Collector, transport: Transport, instance: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
            format!("service.instance.id={instance}"),
        ),
    ];
    match transport {
        Transport::Http => env.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            collector.http_endpoint(),
        )),
        Transport::Grpc => {
            env.push((
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                collector.grpc_endpoint(),
            ));
            env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), "grpc".to_owned()));
        }
    }
    env
}

/// A stack whose two gateway nodes (gw-1, gw-2) and backend export to a
/// collector of its own.
async fn traced_stack(transport: Transport) -> (Stack, Collector) {
    let mut stack = Stack::builder().gateways(0).backend(false).build().await;
    let collector = Collector::start(&stack.logs, "otel-collector").await;
    for i in 1..=2 {
        stack.gateway_config.extra_env = otel_env(&collector, transport, &format!("gw-{i}"));
        stack.start_gateway().await;
    }
    stack.backend_config.extra_env = otel_env(&collector, transport, "backend");
    stack.start_backend().await;
    (stack, collector)
}

fn one<'a>(spans: &[&'a SpanRecord], name: &str) -> Option<&'a SpanRecord> {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    (found.len() == 1).then(|| *found[0])
}

fn assert_child(child: &SpanRecord, parent: &SpanRecord) {
    assert_eq!(
        child.parent_id,
        parent.span_id,
        "{} must be a child of {}",
        child.brief(),
        parent.brief()
    );
    assert_eq!(child.trace_id, parent.trace_id);
}

/// The whole path of one message, as spans of one trace.
async fn one_message_is_one_trace(transport: Transport) {
    let (stack, collector) = traced_stack(transport).await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let carol = api.create_user("carol").await;
    let channel = api.create_channel(&alice.token, "traced").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;

    // Member sessions: 2 on gw-1, 3 on gw-2; carol (no member) on gw-2.
    let (gw1, gw2) = (stack.gateway(0), stack.gateway(1));
    let mut members: Vec<WsClient> = vec![
        gw1.connect(&alice.token, "alice@gw-1").await,
        gw1.connect(&bob.token, "bob@gw-1").await,
        gw2.connect(&alice.token, "alice@gw-2").await,
        gw2.connect(&alice.token, "alice#2@gw-2").await,
        gw2.connect(&bob.token, "bob@gw-2").await,
    ];
    let mut carol2 = gw2.connect(&carol.token, "carol@gw-2").await;

    // A plain subscriber sees every dispatch request with its headers.
    let nats = stack.nats.client(0).await;
    let mut requests = nats.subscribe(DISPATCH_SUBJECT).await.unwrap();
    nats.flush().await.unwrap();

    let message = api
        .post_message(&alice.token, &channel, "one message, one trace", None)
        .await;
    let message_id = message["id"].as_str().unwrap().to_owned();
    for m in members.iter_mut() {
        let d = m.expect_dispatch("EVENT_MESSAGE_CREATE").await;
        assert_eq!(d["id"], json!(message_id), "{}", m.label());
    }
    carol2.expect_no_dispatch(Duration::from_millis(200)).await;

    // The request on otako.dispatch carries the trace in a traceparent header.
    let request_tp = tokio::time::timeout(ARRIVE, async {
        use futures_util::StreamExt;
        while let Some(msg) = requests.next().await {
            let body: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
            if body["t"] == "EVENT_MESSAGE_CREATE" && body["d"]["id"] == json!(message_id) {
                return msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(TRACEPARENT_HEADER))
                    .map(|v| v.as_str().to_owned());
            }
        }
        None
    })
    .await
    .expect("the dispatch request was seen on otako.dispatch")
    .expect("the dispatch request carries a traceparent header");

    let http_name = format!("POST /channels/{channel}/messages");
    let names = [
        "dispatch attempt",
        "gateway dispatch",
        "load from database",
        "fan-out publish",
        "roundtrip reply",
    ];
    let trace: Vec<SpanRecord> = collector
        .wait_for(
            &format!("the trace of {http_name} with every span ({transport:?})"),
            SPANS_ARRIVE,
            |spans| {
                let http = spans
                    .iter()
                    .find(|s| s.name == http_name && s.service() == "otako-backend-shim")?;
                let trace = in_trace(spans, &http.trace_id);
                let complete = names.iter().all(|n| trace.iter().any(|s| s.name == *n))
                    && trace
                        .iter()
                        .filter(|s| s.name == "deliver to sessions")
                        .count()
                        >= 2;
                complete.then(|| trace.into_iter().cloned().collect())
            },
        )
        .await;
    let refs: Vec<&SpanRecord> = trace.iter().collect();
    let dump = || {
        trace
            .iter()
            .map(SpanRecord::brief)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let get = |name: &str| {
        one(&refs, name)
            .unwrap_or_else(|| panic!("expected exactly one {name:?} span in:\n{}", dump()))
    };
    let http = get(&http_name);
    let attempt = get("dispatch attempt");
    let handle = get("gateway dispatch");
    let load = get("load from database");
    let publish = get("fan-out publish");
    let reply = get("roundtrip reply");

    // Who made each span.
    for s in [http, attempt] {
        assert_eq!(s.service(), "otako-backend-shim", "{}", s.brief());
        assert_eq!(s.instance(), Some("backend"), "{}", s.brief());
    }
    for s in [handle, load, publish, reply] {
        assert_eq!(s.service(), "otako-gateway", "{}", s.brief());
        assert_eq!(
            s.instance(),
            handle.instance(),
            "the handling node makes all of {}",
            s.brief()
        );
    }
    let handler = handle.instance().expect("gateway spans name their node");
    assert_eq!(
        handle.attr("node"),
        Some(handler),
        "the gateway dispatch span names the node: {}",
        handle.brief()
    );
    assert_eq!(handle.attr("success"), Some("true"), "{}", handle.brief());
    assert_eq!(
        handle.attr_type("success"),
        Some("Bool"),
        "{}",
        handle.brief()
    );
    assert_eq!(
        handle.attr("t"),
        Some("EVENT_MESSAGE_CREATE"),
        "{}",
        handle.brief()
    );

    // The chain: HTTP request → dispatch attempt → gateway dispatch →
    // load / publish / reply.
    assert_child(attempt, http);
    assert_child(handle, attempt);
    assert_child(load, handle);
    assert_child(publish, handle);
    assert_child(reply, handle);
    // What travelled on NATS is the attempt's context.
    assert_eq!(
        request_tp,
        format!("00-{}-{}-01", attempt.trace_id, attempt.span_id),
        "the dispatch request's traceparent names the dispatch attempt span"
    );

    // Delivery on each node, child of the publish, counting its sessions.
    let delivers: Vec<&SpanRecord> = refs
        .iter()
        .copied()
        .filter(|s| s.name == "deliver to sessions")
        .collect();
    assert_eq!(delivers.len(), 2, "one delivery per node:\n{}", dump());
    for d in &delivers {
        assert_eq!(d.service(), "otako-gateway", "{}", d.brief());
        assert_child(d, publish);
    }
    let recipients = |node: &str| {
        let d = delivers
            .iter()
            .find(|d| d.instance() == Some(node))
            .unwrap_or_else(|| panic!("no delivery span from {node}:\n{}", dump()));
        let n = d
            .attr_i64("recipients")
            .unwrap_or_else(|| panic!("a delivery span without recipients: {}", d.brief()));
        assert_eq!(
            d.attr_type("recipients"),
            Some("Int"),
            "recipients is a count: an integer attribute, not a string: {}",
            d.brief()
        );
        n
    };
    assert_eq!(recipients("gw-1"), 2, "gw-1 holds 2 member sessions");
    assert_eq!(
        recipients("gw-2"),
        3,
        "gw-2 holds 3 member sessions (and one of no member)"
    );

    failed_event_keeps_its_trace(&stack, &collector).await;
}

/// A failing event sent with a traceparent: the OTAKO_ERRORS record carries
/// that trace id, and the gateway's span continues that trace.
async fn failed_event_keeps_its_trace(stack: &Stack, collector: &Collector) {
    let (tp, trace_id, parent_span) = fresh_traceparent();
    let client = stack.nats.client(0).await;
    let event_id = fresh_event_id();
    let body = otako_e2e::event_body(
        "EVENT_MESSAGE_CREATE",
        json!({"id": "987654321", "channel_id": "1"}),
        json!("7"),
        json!(event_id),
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(TRACEPARENT_HEADER, tp.as_str());
    let reply = tokio::time::timeout(
        ARRIVE,
        client.request_with_headers(DISPATCH_SUBJECT, headers, body.into()),
    )
    .await
    .expect("a reply in time")
    .expect("a reply");
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["success"], false, "{reply}");

    let dispatch = stack.dispatcher(0).await;
    let records = otako_e2e::wait::until("the failure record in OTAKO_ERRORS", ARRIVE, || {
        let dispatch = dispatch.clone();
        let id = json!(event_id);
        async move {
            let r = dispatch.error_records_for(&id).await;
            Ok::<_, String>((!r.is_empty()).then_some(r))
        }
    })
    .await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0]["trace_id"],
        json!(trace_id),
        "the record carries the trace id of the request's traceparent: {}",
        records[0]
    );

    let span = collector
        .wait_for(
            "the gateway's span of the failed event, in the sender's trace",
            SPANS_ARRIVE,
            |spans| {
                spans
                    .iter()
                    .find(|s| s.trace_id == trace_id && s.name == "gateway dispatch")
                    .cloned()
            },
        )
        .await;
    assert_eq!(span.parent_id, parent_span, "{}", span.brief());
    assert_eq!(span.attr("success"), Some("false"), "{}", span.brief());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_over_otlp_http() {
    one_message_is_one_trace(Transport::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_over_otlp_grpc() {
    one_message_is_one_trace(Transport::Grpc).await;
}

/// The OTLP ports an exporter left at its defaults sends to (gRPC, HTTP).
const OTLP_DEFAULT_PORTS: (u16, u16) = (4317, 4318);

/// Without `OTEL_EXPORTER_OTLP_ENDPOINT`, no exporter runs. The collector
/// listens on the standard OTLP ports, where an exporter left at its
/// defaults would send; a second node configured to export to it proves
/// that spans do arrive and marks when they would have. A collector
/// anywhere else would prove nothing, so taken ports fail the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_endpoint_variable_nothing_is_exported() {
    let mut stack = Stack::builder().gateways(0).backend(false).build().await;
    let (grpc, http) = OTLP_DEFAULT_PORTS;
    assert!(
        port_is_free(grpc) && port_is_free(http),
        "ports {grpc} and {http} are taken: this test listens there, where a default \
         exporter would send, to show that nothing is sent; stop what holds them"
    );
    let collector = Collector::start_on(&stack.logs, "otel-collector", grpc, http).await;
    // Not exporting: gw-1 and the backend get the batch delay (so that an
    // exporter, if one ran, would send at once) but no endpoint.
    let quiet = vec![("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned())];
    stack.gateway_config.extra_env = quiet.clone();
    stack.start_gateway().await;
    // Exporting: gw-2, the positive control.
    stack.gateway_config.extra_env = otel_env(&collector, Transport::Http, "gw-2");
    stack.start_gateway().await;
    stack.backend_config.extra_env = quiet;
    stack.start_backend().await;

    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "untraced").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut on1 = stack.gateway(0).connect(&alice.token, "alice@gw-1").await;
    let mut on2 = stack.gateway(1).connect(&alice.token, "alice@gw-2").await;

    // Three rounds, each waiting for gw-2's delivery span before the next:
    // by the end, several export intervals have passed since the first
    // message went through gw-1 and the backend.
    for round in 1..=3 {
        let m = api
            .post_message(&alice.token, &channel, &format!("round {round}"), None)
            .await;
        for c in [&mut on1, &mut on2] {
            let d = c.expect_dispatch("EVENT_MESSAGE_CREATE").await;
            assert_eq!(d["id"], m["id"]);
        }
        collector
            .wait_for(
                &format!("gw-2's delivery span of round {round}"),
                SPANS_ARRIVE,
                |spans| {
                    let n = spans
                        .iter()
                        .filter(|s| {
                            s.name == "deliver to sessions"
                                && s.instance() == Some("gw-2")
                                && s.attr("recipients") == Some("1")
                        })
                        .count();
                    (n >= round).then_some(())
                },
            )
            .await;
    }
    let spans = collector.spans();
    let foreign: Vec<String> = spans
        .iter()
        .filter(|s| s.instance() != Some("gw-2"))
        .map(SpanRecord::brief)
        .collect();
    assert!(
        foreign.is_empty(),
        "only gw-2 was given an endpoint, yet the collector received:\n{}",
        foreign.join("\n")
    );
    for (name, log) in [
        ("gw-1", stack.gateway(0).log_text()),
        ("backend", stack.backend.as_ref().unwrap().log_text()),
    ] {
        assert!(
            !log.to_ascii_lowercase().contains("opentelemetry")
                && !log.to_ascii_lowercase().contains("otlp"),
            "{name} mentions an exporter although none is configured:\n{log}"
        );
    }
}
