//! A real OTLP collector (rotel) that prints every span it receives, and
//! those prints parsed back into spans, so tracing tests check what an
//! exporter really sent.

use crate::env::{free_port, workspace_root};
use crate::process::Proc;
use crate::wait;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_parsed_from_the_debug_log() {
        let log = "\u{1b}[32mResourceSpans #0\u{1b}[0m
Resource attributes:
     -> service.name: Str(otako-gateway)
     -> service.instance.id: Str(gw-1)
ScopeSpans #0
Span #0
    Trace ID       : 0af7651916cd43dd8448eb211c80319c
    Parent ID      : b7ad6b7169203331
    ID             : 00f067aa0ba902b7
    Name           : deliver to sessions
    Kind           : Internal
Attributes:
     -> recipients: Int(3)
     -> node: Str(gw-1)
Span #1
    Trace ID       : 0af7651916cd43dd8448eb211c80319c
    Parent ID      :
    ID             : b7ad6b7169203331
    Name           : gateway dispatch
";
        let spans = parse_spans(log);
        assert_eq!(spans.len(), 2, "{spans:?}");
        let d = &spans[0];
        assert_eq!(d.service(), "otako-gateway");
        assert_eq!(d.instance(), Some("gw-1"));
        assert_eq!(d.name, "deliver to sessions");
        assert_eq!(d.parent_id, "b7ad6b7169203331");
        assert_eq!(d.attr_i64("recipients"), Some(3));
        assert_eq!(d.attr_type("recipients"), Some("Int"));
        assert_eq!(d.attr("node"), Some("gw-1"));
        assert_eq!(spans[1].parent_id, "");
        assert_eq!(spans[1].service(), "otako-gateway");
        assert_eq!(
            in_trace(&spans, "0af7651916cd43dd8448eb211c80319c").len(),
            2
        );
    }
}
