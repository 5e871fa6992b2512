//! Prometheus text as a gateway node renders it on its admin port, parsed
//! into samples with lookups by name and labels: the one parser every test
//! reads metrics with.

use crate::http::http_text;
use crate::stack::Gateway;
use crate::ws::ARRIVE;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

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

    /// Reads a gateway node's `/metrics` (on its admin port).
    pub async fn of(gw: &Gateway) -> Metrics {
        Metrics::fetch(&gw.admin_url("/metrics")).await
    }

    /// Polls the node's metrics until `cond` holds and returns them; panics
    /// naming `what`, with the last text read, after [`ARRIVE`].
    pub async fn until(gw: &Gateway, what: &str, cond: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + ARRIVE;
        loop {
            let m = Metrics::of(gw).await;
            if cond(&m) {
                return m;
            }
            if Instant::now() >= deadline {
                panic!("timed out waiting for {what}; /metrics:\n{}", m.text);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// One metric of one gateway node, read now: the sum of the samples of
/// `name` whose labels include `labels` (0 when none is rendered).
pub async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    Metrics::of(gw).await.sum(name, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP otako_sessions_closed_total Sessions closed, by code.
# TYPE otako_sessions_closed_total counter
otako_sessions_closed_total{code="1000"} 2
otako_sessions_closed_total{code="4011",node="gw-1"} 1
otako_sessions_open 3
# TYPE otako_dispatch_duration_seconds histogram
otako_dispatch_duration_seconds_bucket{t="EVENT_MESSAGE_CREATE",le="+Inf"} 7 1700000000
odd_label{text="a \"quoted\", comma\nnewline"} +Inf
not a sample line
"#;

    #[test]
    fn samples_labels_and_sums() {
        let m = Metrics::parse(TEXT.to_owned());
        assert_eq!(m.samples.len(), 5, "{:?}", m.samples);
        assert_eq!(m.sum("otako_sessions_closed_total", &[]), 3.0);
        assert_eq!(
            m.sum("otako_sessions_closed_total", &[("code", "4011")]),
            1.0
        );
        assert_eq!(
            m.get("otako_sessions_closed_total", &[("code", "4008")]),
            None
        );
        assert_eq!(
            m.sum("otako_sessions_closed_total", &[("code", "4008")]),
            0.0
        );
        assert_eq!(m.get("otako_sessions_open", &[]), Some(3.0));
        // A timestamp after the value is not the value.
        assert_eq!(
            m.sum("otako_dispatch_duration_seconds_bucket", &[("le", "+Inf")]),
            7.0
        );
        assert!(m.has_type("otako_dispatch_duration_seconds", "histogram"));
        assert!(!m.has("otako_nothing"));
        let odd = &m.samples[4];
        assert_eq!(odd.value, f64::INFINITY);
        assert_eq!(odd.labels["text"], "a \"quoted\", comma\nnewline");
    }
}
