//! Helpers of the operations tests (issues #4 and #5, `tests/tests/ops_*.rs`):
//! a real OTLP collector (rotel) whose debug log is parsed into spans,
//! Prometheus text, admin and health endpoints, NATS micro-service requests,
//! JSON log lines, W3C trace context and process signals.

use crate::env::{free_port, workspace_root};
use crate::process::Proc;
use crate::wait;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// The OTLP collector
// ---------------------------------------------------------------------------

/// `rotel-agent`, the collector of PyPI's `rotel` (pinned in
/// `deploy/requirements.txt`), from `./.venv`. Installs the Python tools with
/// `deploy/scripts/install-deps.sh` when it is missing.
pub fn rotel_agent() -> PathBuf {
    if let Some(p) = find_rotel() {
        return p;
    }
    let script = workspace_root().join("deploy/scripts/install-deps.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    find_rotel().unwrap_or_else(|| {
        panic!(
            "rotel-agent is not in {}/.venv/lib/python3*/site-packages/rotel/ even after \
             install-deps.sh; is rotel in deploy/requirements.txt?",
            workspace_root().display()
        )
    })
}

fn find_rotel() -> Option<PathBuf> {
    let venv = std::env::var_os("OTAKO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut found: Vec<PathBuf> = lib
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/rotel/rotel-agent"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// One span as the collector printed it.
#[derive(Debug, Clone, Default)]
pub struct SpanRecord {
    /// The resource's attributes (`service.name`, `service.instance.id`, …).
    pub resource: BTreeMap<String, String>,
    pub trace_id: String,
    /// Empty for a root span.
    pub parent_id: String,
    pub span_id: String,
    pub name: String,
    pub kind: String,
    /// Attribute values without their type: `Str(x)` is `x`, `Int(3)` is `3`.
    pub attributes: BTreeMap<String, String>,
    /// Attribute types as printed: `Str`, `Int`, `Bool`, `Double`, …
    pub attribute_types: BTreeMap<String, String>,
}

impl SpanRecord {
    pub fn service(&self) -> &str {
        self.resource
            .get("service.name")
            .map(String::as_str)
            .unwrap_or("")
    }

    /// `service.instance.id` of the resource (set by the tests per node with
    /// `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn instance(&self) -> Option<&str> {
        self.resource.get("service.instance.id").map(String::as_str)
    }

    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attr(key)?.parse().ok()
    }

    /// The attribute's OTLP type as printed (`Str`, `Int`, `Bool`, …).
    pub fn attr_type(&self, key: &str) -> Option<&str> {
        self.attribute_types.get(key).map(String::as_str)
    }

    /// A one-line description for failure messages.
    pub fn brief(&self) -> String {
        format!(
            "{:?} [{}{}] trace {} id {} parent {:?} {:?}",
            self.name,
            self.service(),
            self.instance().map(|i| format!("/{i}")).unwrap_or_default(),
            self.trace_id,
            self.span_id,
            self.parent_id,
            self.attributes
        )
    }
}

/// Removes terminal colour sequences (`ESC [ … letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `Str(abc)` → (`Str`, `abc`), `Int(3)` → (`Int`, `3`); anything else as it is.
fn attr_value(raw: &str) -> (String, String) {
    let raw = raw.trim();
    match (raw.find('('), raw.ends_with(')')) {
        (Some(open), true) if raw[..open].chars().all(|c| c.is_ascii_alphabetic()) => (
            raw[..open].to_owned(),
            raw[open + 1..raw.len() - 1].to_owned(),
        ),
        _ => (String::new(), raw.to_owned()),
    }
}

/// Parses rotel's `--debug-log traces --debug-log-verbosity detailed` output.
pub fn parse_spans(text: &str) -> Vec<SpanRecord> {
    #[derive(PartialEq)]
    enum Section {
        Other,
        Resource,
        SpanAttributes,
    }
    let text = strip_ansi(text);
    let mut spans = Vec::new();
    let mut resource: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<SpanRecord> = None;
    let mut section = Section::Other;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            resource.clear();
            section = Section::Other;
            continue;
        }
        if t == "Resource attributes:" {
            section = Section::Resource;
            continue;
        }
        if t.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(SpanRecord {
                resource: resource.clone(),
                ..Default::default()
            });
            section = Section::Other;
            continue;
        }
        if t.starts_with("ScopeSpans #") {
            spans.extend(current.take());
            section = Section::Other;
            continue;
        }
        if t == "Attributes:" && current.is_some() {
            section = Section::SpanAttributes;
            continue;
        }
        if let Some(attr) = t.strip_prefix("-> ") {
            let Some((k, v)) = attr.split_once(": ") else {
                continue;
            };
            match section {
                Section::Resource => {
                    resource.insert(k.trim().to_owned(), attr_value(v).1);
                }
                Section::SpanAttributes => {
                    if let Some(s) = current.as_mut() {
                        let (kind, value) = attr_value(v);
                        s.attributes.insert(k.trim().to_owned(), value);
                        s.attribute_types.insert(k.trim().to_owned(), kind);
                    }
                }
                Section::Other => {}
            }
            continue;
        }
        // Any other line ends an attribute list (events, links, timestamps).
        if section == Section::SpanAttributes || section == Section::Resource {
            section = Section::Other;
        }
        let Some(span) = current.as_mut() else {
            continue;
        };
        if let Some((k, v)) = t.split_once(':') {
            let v = v.trim().to_owned();
            match k.trim() {
                "Trace ID" => span.trace_id = v,
                "Parent ID" => span.parent_id = v,
                "ID" => span.span_id = v,
                "Name" => span.name = v,
                "Kind" => span.kind = v,
                _ => {}
            }
        }
    }
    spans.extend(current.take());
    spans.retain(|s| !s.span_id.is_empty());
    spans
}

/// A running `rotel-agent` that prints every span it receives (and exports
/// nothing: `--exporter blackhole`).
pub struct Collector {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    proc: Proc,
}

impl Collector {
    /// Starts a collector on free loopback ports; its output goes to
    /// `<logs>/<name>.log`.
    pub async fn start(logs: &Path, name: &str) -> Collector {
        Collector::start_on(logs, name, free_port(), free_port()).await
    }

    /// Starts a collector on the given ports (gRPC, HTTP).
    pub async fn start_on(logs: &Path, name: &str, grpc_port: u16, http_port: u16) -> Collector {
        let grpc: SocketAddr = ([127, 0, 0, 1], grpc_port).into();
        let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
        let run = logs.join(format!("{name}.run"));
        std::fs::create_dir_all(&run).expect("creating the collector's run directory");
        let (grpc_s, http_s) = (grpc.to_string(), http.to_string());
        let pid_file = run.join("rotel.pid").to_string_lossy().into_owned();
        let log_file = run.join("rotel-agent.log").to_string_lossy().into_owned();
        let agent = rotel_agent();
        let mut proc = Proc::spawn(
            name,
            &agent,
            &[
                "start",
                "--otlp-grpc-endpoint",
                &grpc_s,
                "--otlp-http-endpoint",
                &http_s,
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log-verbosity",
                "detailed",
                // Per instance, so collectors of parallel tests do not share them.
                "--pid-file",
                &pid_file,
                "--log-file",
                &log_file,
            ],
            &[],
            &logs.join(format!("{name}.log")),
        );
        let what = format!("the collector {name} to listen on {grpc} and {http}");
        let p = &mut proc;
        wait::until(&what, Duration::from_secs(20), || {
            p.assert_running();
            async move {
                tokio::net::TcpStream::connect(grpc).await?;
                tokio::net::TcpStream::connect(http).await?;
                Ok::<_, std::io::Error>(Some(()))
            }
        })
        .await;
        Collector { grpc, http, proc }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for OTLP/HTTP.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for OTLP/gRPC.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        parse_spans(&self.proc.log_text())
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Polls the received spans until `pick` returns something; panics
    /// naming `what` (and listing what did arrive) after `timeout`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&[SpanRecord]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if let Some(v) = pick(&spans) {
                return v;
            }
            if Instant::now() >= deadline {
                let list: Vec<String> = spans.iter().map(SpanRecord::brief).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; the collector has {} spans:\n{}",
                    spans.len(),
                    list.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The spans of one trace.
pub fn in_trace<'a>(spans: &'a [SpanRecord], trace_id: &str) -> Vec<&'a SpanRecord> {
    spans.iter().filter(|s| s.trace_id == trace_id).collect()
}

// ---------------------------------------------------------------------------
// W3C trace context
// ---------------------------------------------------------------------------

/// A fresh sampled `traceparent`; returns (header, trace id, parent span id).
pub fn fresh_traceparent() -> (String, String, String) {
    let trace = format!("{:032x}", rand::random::<u128>() | 1);
    let span = format!("{:016x}", rand::random::<u64>() | 1);
    (format!("00-{trace}-{span}-01"), trace, span)
}

// ---------------------------------------------------------------------------
// HTTP: admin endpoints, health, Prometheus text
// ---------------------------------------------------------------------------

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// The status of `GET url`, or `None` when nothing answers.
pub async fn http_status(url: &str) -> Option<u16> {
    http()
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// `GET url` as text; panics unless 200.
pub async fn http_text(url: &str) -> String {
    let resp = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"));
    assert_eq!(status, 200, "GET {url}: {text}");
    text
}

/// `GET url` as JSON, with its status.
pub async fn http_json(url: &str) -> (u16, Value) {
    let resp = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"));
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "GET {url}: not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}

/// One sample line of Prometheus text: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the sample lines of Prometheus text (comments skipped).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = if let Some(close) = line.rfind('}') {
            (&line[..=close], line[close + 1..].trim())
        } else {
            match line.split_once(' ') {
                Some((h, v)) => (h, v.trim()),
                None => continue,
            }
        };
        // A timestamp may follow the value.
        let value = value.split_whitespace().next().unwrap_or("");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (head, BTreeMap::new()),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 2..];
        let mut value = String::new();
        let mut end = after.len();
        let mut chars = after.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        rest = &after[end.min(after.len())..];
    }
    labels
}

/// Parsed Prometheus text with lookups.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: String) -> Metrics {
        Metrics {
            samples: parse_prometheus(&text),
            text,
        }
    }

    /// Reads `url` (a `/metrics` endpoint).
    pub async fn fetch(url: &str) -> Metrics {
        Metrics::parse(http_text(url).await)
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the samples of `name` whose labels include `labels`; 0 when
    /// there is none (a counter never incremented is not rendered).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The one sample of `name` with `labels`, if rendered.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut it = self.matching(name, labels);
        let first = it.next()?.value;
        Some(first + it.map(|s| s.value).sum::<f64>())
    }

    /// Whether any sample of `name` is rendered.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Whether the text declares `name` with `# TYPE name <kind>`.
    pub fn has_type(&self, name: &str, kind: &str) -> bool {
        self.text
            .lines()
            .any(|l| l.trim() == format!("# TYPE {name} {kind}"))
    }
}

// ---------------------------------------------------------------------------
// NATS micro-services
// ---------------------------------------------------------------------------

/// Sends one request to `subject` and collects the answers, until `enough`
/// says the answers so far suffice or `timeout` passes; returns them all.
pub async fn collect_answers(
    client: &async_nats::Client,
    subject: &str,
    timeout: Duration,
    enough: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .unwrap_or_else(|e| panic!("subscribing to {inbox}: {e}"));
    client
        .publish_with_reply(subject.to_owned(), inbox, "".into())
        .await
        .unwrap_or_else(|e| panic!("publishing to {subject}: {e}"));
    client
        .flush()
        .await
        .unwrap_or_else(|e| panic!("flushing: {e}"));
    let deadline = Instant::now() + timeout;
    let mut out: Vec<Value> = Vec::new();
    while !enough(&out) {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(msg)) => {
                let v: Value = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
                    panic!(
                        "an answer on {subject} is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(&msg.payload)
                    )
                });
                out.push(v);
            }
            _ => break,
        }
    }
    let _ = sub.unsubscribe().await;
    out
}

/// Asks `$SRV.<verb>.<service>` until every node in `nodes` (by
/// `metadata.node_id`) has answered; panics after `timeout`. Returns the
/// answers by node id.
pub async fn srv_answers(
    client: &async_nats::Client,
    verb: &str,
    service: &str,
    nodes: &[&str],
    timeout: Duration,
) -> BTreeMap<String, Value> {
    let subject = format!("$SRV.{verb}.{service}");
    let want: HashSet<String> = nodes.iter().map(|s| s.to_string()).collect();
    let answers = collect_answers(client, &subject, timeout, |got| {
        let seen: HashSet<String> = got.iter().filter_map(node_of).collect();
        want.is_subset(&seen)
    })
    .await;
    let mut by_node = BTreeMap::new();
    for a in answers {
        if let Some(n) = node_of(&a) {
            by_node.insert(n, a);
        }
    }
    let seen: HashSet<String> = by_node.keys().cloned().collect();
    assert!(
        want.is_subset(&seen),
        "{subject}: expected answers from {want:?} within {timeout:?}, got {by_node:?}"
    );
    by_node
}

fn node_of(v: &Value) -> Option<String> {
    v["metadata"]["node_id"].as_str().map(str::to_owned)
}

/// `$SRV.STATS.<service>` answers of every node in `nodes`, by node id.
/// async-nats leaves `metadata` out of STATS answers, so instances are
/// matched to nodes by their `id`, learnt from `$SRV.PING` first.
pub async fn srv_stats(
    client: &async_nats::Client,
    service: &str,
    nodes: &[&str],
    timeout: Duration,
) -> BTreeMap<String, Value> {
    let pings = srv_answers(client, "PING", service, nodes, timeout).await;
    let ids: BTreeMap<String, String> = pings
        .iter()
        .map(|(node, p)| {
            let id = p["id"]
                .as_str()
                .unwrap_or_else(|| panic!("a ping answer without id: {p}"));
            (id.to_owned(), node.clone())
        })
        .collect();
    let subject = format!("$SRV.STATS.{service}");
    let answers = collect_answers(client, &subject, timeout, |got| {
        let seen: HashSet<&str> = got.iter().filter_map(|a| a["id"].as_str()).collect();
        ids.keys().all(|id| seen.contains(id.as_str()))
    })
    .await;
    let mut by_node = BTreeMap::new();
    for a in answers {
        if let Some(node) = a["id"].as_str().and_then(|id| ids.get(id)) {
            by_node.insert(node.clone(), a);
        }
    }
    assert_eq!(
        by_node.len(),
        nodes.len(),
        "{subject}: expected answers from {nodes:?} within {timeout:?}, got {by_node:?}"
    );
    by_node
}

/// The custom `data` of a `$SRV.STATS` answer (of its first endpoint that
/// has one).
pub fn stats_data(answer: &Value) -> Value {
    answer["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["data"].is_object()))
        .map(|e| e["data"].clone())
        .unwrap_or_else(|| panic!("a $SRV.STATS answer without endpoint data: {answer}"))
}

// ---------------------------------------------------------------------------
// Logs and processes
// ---------------------------------------------------------------------------

/// Lines the harness itself writes into process logs.
pub fn is_harness_line(line: &str) -> bool {
    line.starts_with("===== e2e:")
}

/// Every line of a process log except the harness's own, parsed as JSON;
/// `Err` holds the first line that is not a JSON object.
pub fn json_lines(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if is_harness_line(line) || line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => out.push(v),
            _ => return Err(line.to_owned()),
        }
    }
    Ok(out)
}

/// Sends `sig` to a process under test (e.g. `libc::SIGSTOP`).
pub fn signal(proc: &Proc, sig: libc::c_int) {
    let pid = proc
        .pid()
        .unwrap_or_else(|| panic!("{} is not running", proc.name()));
    // SAFETY: a plain syscall on our own child, not yet reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Whether `port` on loopback can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}
