//! nats-server on the contract's path: the stack's own broker
//! (`deploy/scripts/nats.sh`, the stack's `GOMAXPROCS`) moving each event's
//! messages for clients that do no work at all, so that only what the
//! server itself spends on them is measured.
//!
//! driver -request-> a node (queue group `floor`) -event-> every node; the
//! handling node replies when its own copy comes back (as the gateway does:
//! that copy shows the stream stored the event) -> driver. Three ways of
//! reaching every node, each measured on a fresh server over its own window:
//!
//! - [`Delivery::History`]: Otako's. The event goes into a file stream set
//!   up as the event history is (message ids, a signature-sized header, a
//!   10-minute duplicate window) and each node follows the stream with an
//!   ordered push consumer, as `History::follow` does.
//! - [`Delivery::Republish`]: the same stream, which republishes each
//!   stored event to a core subject the nodes subscribe to (the stream's
//!   `republish`), so no consumer runs: what following the history that
//!   way would save the server.
//! - [`Delivery::Core`]: one core NATS publish that every node subscribes
//!   to, no stream. No design that hands each event to every node through
//!   nats-server and answers the request can give the server fewer
//!   messages, so this bounds any such design from below, history or none.
//!
//! The messages are sized as the latency scenario's: a request of the
//! contract's shape, an event with a message object, the reply.

use super::{all_answered, FloorArgs, FloorError, MachineWindow, Pacer, Usage};
use crate::process::{free_port, Proc};
use async_nats::jetstream::{self, consumer::push, stream};
use futures_util::StreamExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DISPATCH: &str = "floor.dispatch";
const EVENTS: &str = "floor.ev";
const STREAM: &str = "FLOOR_HISTORY";
/// Where the stream republishes what it stores ([`Delivery::Republish`]).
const LIVE: &str = "floor.live";
const REPLIES: &str = "floor.replies";
const EVENT_HEADER: &str = "Floor-Event";
/// A request as the backend sends it.
const REQUEST: &[u8] =
    br#"{"t":"EVENT_MESSAGE_CREATE","d":{"id":"3","channel_id":"1"},"op":0,"s":"14","event_id":"1"}"#;
/// A reply as a node sends it, with its signature field.
const REPLY: &[u8] = br#"{"t":"EVENT_ROUNDTRIP","event_id":"1","success":true,"op":0,"s":"14","sig":"v1.1764780000000.9f3c0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7"}"#;
/// A stored history event of the latency scenario (its message object
/// holds the 300-byte frame's content) is about this long.
const EVENT_BYTES: usize = 420;
const SIGNATURE: &str =
    "v1.1764780000000.9f3c0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7";

/// How each event reaches every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Delivery {
    History,
    Republish,
    Core,
}

/// What nats-server spent over one window: (CPU µs, sleeps) per message.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Spent {
    pub broker: (f64, f64),
    pub machine: MachineWindow,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NatsPathResult {
    pub messages: u64,
    /// The server's `GOMAXPROCS`, when set (else Go's own: every core).
    pub procs: Option<usize>,
    pub history: Spent,
    pub republish: Spent,
    pub core: Spent,
}

/// Measures each delivery, each on a server of its own.
pub async fn run(args: &FloorArgs) -> Result<NatsPathResult, FloorError> {
    Ok(NatsPathResult {
        messages: (args.seconds * args.rate) as u64,
        procs: args.nats_procs,
        history: measure(args, Delivery::History).await?,
        republish: measure(args, Delivery::Republish).await?,
        core: measure(args, Delivery::Core).await?,
    })
}

async fn measure(args: &FloorArgs, delivery: Delivery) -> Result<Spent, FloorError> {
    let dir = std::env::temp_dir().join(format!(
        "otako-floor-nats-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    let result = async {
        let (server, url) = start_server(args, &dir).await?;
        drive(args, delivery, &url, server.pid()).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The stack's nats-server, started as the stack starts it.
async fn start_server(args: &FloorArgs, dir: &Path) -> Result<(Proc, String), FloorError> {
    let port = free_port()?;
    let script = crate::runner::default_root().join("deploy/scripts/nats.sh");
    let env: Vec<(&str, String)> = args
        .nats_procs
        .map(|n| ("GOMAXPROCS", n.to_string()))
        .into_iter()
        .collect();
    let store = dir.join("store");
    let server = Proc::spawn(
        "floor-nats",
        "bash",
        &[
            &script.to_string_lossy(),
            &port.to_string(),
            &store.to_string_lossy(),
        ],
        &env,
        &dir.join("nats.log"),
    )
    .map_err(|e| FloorError::Nats(e.to_string()))?;
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(FloorError::Nats(format!(
                "nats-server did not listen: {}",
                server.log_tail(5)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((server, url))
}

fn nats<E: std::fmt::Display>(e: E) -> FloorError {
    FloorError::Nats(e.to_string())
}

async fn drive(
    args: &FloorArgs,
    delivery: Delivery,
    url: &str,
    server_pid: u32,
) -> Result<Spent, FloorError> {
    drive_forgetting(args, delivery, url, server_pid, 0).await
}

/// [`drive`] with nodes that do not record the last `forget` events they
/// receive, so a test sees the loss check fail.
async fn drive_forgetting(
    args: &FloorArgs,
    delivery: Delivery,
    url: &str,
    server_pid: u32,
    forget: u64,
) -> Result<Spent, FloorError> {
    let mut pacer = Pacer::new(args);
    let sent = pacer.warmup + pacer.window;
    let driver = async_nats::connect(url).await.map_err(nats)?;
    if delivery != Delivery::Core {
        let republish = (delivery == Delivery::Republish).then(|| stream::Republish {
            source: format!("{EVENTS}.>"),
            destination: format!("{LIVE}.>"),
            headers_only: false,
        });
        jetstream::new(driver.clone())
            .create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![format!("{EVENTS}.>")],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(600),
                max_age: Duration::from_secs(3600),
                allow_direct: true,
                republish,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
    }
    let mut nodes = Vec::new();
    for _ in 0..args.nodes.max(1) {
        nodes.push(Node::start(url, delivery, sent.saturating_sub(forget)).await?);
    }
    let mut replies = driver.subscribe(REPLIES).await.map_err(nats)?;
    let answered = Arc::new(AtomicU64::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        while replies.next().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    driver.flush().await.map_err(nats)?;

    let load = crate::procfs::loadavg();
    let mut next = 0u64;
    let (warmup, window) = (pacer.warmup, pacer.window);
    send(&driver, &mut pacer, warmup, &mut next).await?;
    let (usage0, machine0) = (Usage::of(&[server_pid]), crate::measure::machine_cpu());
    let probe = crate::latency::WakeupProbe::start();
    send(&driver, &mut pacer, window, &mut next).await?;
    let (usage1, machine1) = (Usage::of(&[server_pid]), crate::measure::machine_cpu());
    let wakeup = probe.finish();

    // Every event answered and delivered to every node once, or the run
    // measured something else.
    all_answered(&answered, sent).await?;
    for node in &nodes {
        let got = node.distinct();
        if got != sent {
            return Err(FloorError::Undelivered { got, sent });
        }
    }
    Ok(Spent {
        broker: usage1.per_message_since(&usage0, pacer.window),
        machine: MachineWindow::between(&machine0, &machine1, wakeup, load),
    })
}

/// Sends `count` requests, each when it is due, numbering them from `next`.
async fn send(
    driver: &async_nats::Client,
    pacer: &mut Pacer,
    count: u64,
    next: &mut u64,
) -> Result<(), FloorError> {
    for _ in 0..count {
        if !pacer.tick().await {
            break;
        }
        // The event's number travels in a header, as the request's ids do
        // in its body: the nodes match copies and replies by it.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(EVENT_HEADER, next.to_string().as_str());
        driver
            .publish_with_reply_and_headers(DISPATCH, REPLIES.to_string(), headers, REQUEST.into())
            .await
            .map_err(nats)?;
        *next += 1;
    }
    Ok(())
}

/// Where a node's copies of the events come from.
type Copies = futures_util::stream::BoxStream<'static, Option<async_nats::HeaderMap>>;

/// A node stand-in: answers its share of the requests by publishing the
/// event, and replies once its own copy of the event comes back.
struct Node {
    /// Which events reached this node, by number (those numbered past its
    /// length go unrecorded).
    seen: Arc<Mutex<Vec<bool>>>,
}

impl Node {
    /// Starts the node on a thread of its own with a single-threaded
    /// runtime, as a gateway node with one worker thread runs, so the
    /// nodes do not share the bench's runtime with the driver.
    async fn start(url: &str, delivery: Delivery, recorded: u64) -> Result<Node, FloorError> {
        let seen = Arc::new(Mutex::new(vec![false; recorded as usize]));
        let (ready, started) = tokio::sync::oneshot::channel();
        let (url, marks) = (url.to_owned(), seen.clone());
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(FloorError::Io(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match Node::connect(&url, delivery).await {
                    Ok((client, requests, copies)) => {
                        let _ = ready.send(Ok(()));
                        Node::serve(client, requests, copies, marks).await;
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            });
        });
        started
            .await
            .map_err(|_| FloorError::Nats("a node's thread ended before it started".into()))??;
        Ok(Node { seen })
    }

    async fn connect(
        url: &str,
        delivery: Delivery,
    ) -> Result<(async_nats::Client, async_nats::Subscriber, Copies), FloorError> {
        let client = async_nats::connect(url).await.map_err(nats)?;
        let requests = client
            .queue_subscribe(DISPATCH, "floor".into())
            .await
            .map_err(nats)?;
        let copies: Copies = match delivery {
            Delivery::Core | Delivery::Republish => client
                .subscribe(if delivery == Delivery::Core {
                    format!("{EVENTS}.>")
                } else {
                    format!("{LIVE}.>")
                })
                .await
                .map_err(nats)?
                .map(|m| m.headers)
                .boxed(),
            Delivery::History => {
                let stream = jetstream::new(client.clone())
                    .get_stream(STREAM)
                    .await
                    .map_err(nats)?;
                stream
                    .create_consumer(push::OrderedConfig {
                        deliver_subject: client.new_inbox(),
                        filter_subject: format!("{EVENTS}.>"),
                        ..Default::default()
                    })
                    .await
                    .map_err(nats)?
                    .messages()
                    .await
                    .map_err(nats)?
                    .filter_map(|m| async move { m.ok().map(|m| m.message.headers) })
                    .boxed()
            }
        };
        client.flush().await.map_err(nats)?;
        Ok((client, requests, copies))
    }

    /// Handles requests and copies until the server goes.
    async fn serve(
        client: async_nats::Client,
        mut requests: async_nats::Subscriber,
        mut copies: Copies,
        marks: Arc<Mutex<Vec<bool>>>,
    ) {
        let body = bytes::Bytes::from(vec![b'x'; EVENT_BYTES]);
        // Requests this node handles, by event number, awaiting their copy.
        let mut waiting = std::collections::HashMap::new();
        loop {
            tokio::select! {
                Some(request) = requests.next() => {
                    let Some(k) = event_number(request.headers.as_ref()) else { continue };
                    let Some(reply) = request.reply else { continue };
                    waiting.insert(k, reply);
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(EVENT_HEADER, k.to_string().as_str());
                    headers.insert("Nats-Msg-Id", format!("floor-{k:040}").as_str());
                    headers.insert("Otako-Signature", SIGNATURE);
                    let subject = format!("{EVENTS}.{}", k % 1000);
                    if client.publish_with_headers(subject, headers, body.clone()).await.is_err() {
                        return;
                    }
                }
                Some(headers) = copies.next() => {
                    let Some(k) = event_number(headers.as_ref()) else { continue };
                    if let Some(slot) = marks.lock().expect("not poisoned").get_mut(k as usize) {
                        *slot = true;
                    }
                    if let Some(reply) = waiting.remove(&k) {
                        if client.publish(reply, REPLY.into()).await.is_err() {
                            return;
                        }
                    }
                }
                else => return,
            }
        }
    }

    fn distinct(&self) -> u64 {
        let seen = self.seen.lock().expect("not poisoned");
        seen.iter().filter(|&&s| s).count() as u64
    }
}

fn event_number(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    headers?.get(EVENT_HEADER)?.as_str().parse().ok()
}

pub fn table(r: &NatsPathResult) -> String {
    let procs = r
        .procs
        .map_or("Go's own".to_owned(), |n| format!("GOMAXPROCS={n}"));
    let line = |name: &str, s: &Spent| {
        format!(
            "{name}: broker CPU {:.1} us per message, {:.2} sleeps per message\n{}\n",
            s.broker.0,
            s.broker.1,
            s.machine.line()
        )
    };
    format!(
        "nats-server on the contract's path, its clients doing nothing ({procs})\n\
         messages {}\n{}{}{}",
        r.messages,
        line("history (file stream, ordered consumers)", &r.history),
        line(
            "republish (the stream republishes, no consumers)",
            &r.republish
        ),
        line("core (one publish to every node, no stream)", &r.core),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> FloorArgs {
        FloorArgs {
            nats_procs: Some(1),
            ..FloorArgs::short(2, 40)
        }
    }

    /// Both deliveries answer every request and reach every node once,
    /// through a real nats-server whose CPU is read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_event_is_answered_and_reaches_every_node() {
        let result = run(&args()).await.unwrap();
        assert_eq!((result.messages, result.procs), (50, Some(1)));
        for spent in [result.history, result.republish, result.core] {
            assert!(spent.broker.0 > 0.0, "the server's CPU was read");
        }
    }

    /// Nodes that miss events fail the run instead of measuring less work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_misses_events_fails_the_run() {
        let dir =
            std::env::temp_dir().join(format!("otako-floor-nats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (server, url) = start_server(&args(), &dir).await.unwrap();
        let err = drive_forgetting(&args(), Delivery::Core, &url, server.pid(), 3)
            .await
            .unwrap_err();
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(err, FloorError::Undelivered { got: 57, sent: 60 }),
            "{err}"
        );
    }
}
