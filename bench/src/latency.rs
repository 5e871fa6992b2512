//! Latency recording: one HDR histogram for a whole measuring window and a
//! coarser one per wall-clock second (for the latency-over-time chart), both
//! in microseconds, and their exchange between processes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Highest latency tracked: anything slower is recorded as this.
const MAX_US: u64 = 120_000_000;

#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    #[error("histogram is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram does not decode: {0}")]
    Decode(String),
    #[error("histograms do not merge: {0}")]
    Merge(String),
}

/// Unix time in microseconds (the clock every process of the bench shares).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, sigfig).expect("valid histogram bounds")
}

pub struct Recorder {
    total: Histogram<u64>,
    per_second: BTreeMap<i64, Histogram<u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            total: histogram(3),
            per_second: BTreeMap::new(),
        }
    }
}

impl Recorder {
    /// Records a receipt at `now_us` of something sent at `sent_us`.
    pub fn record(&mut self, now_us: i64, sent_us: i64) {
        let lat = (now_us - sent_us).max(1) as u64;
        self.total.saturating_record(lat);
        self.per_second
            .entry(now_us.div_euclid(1_000_000))
            .or_insert_with(|| histogram(2))
            .saturating_record(lat);
    }

    pub fn reset(&mut self) {
        *self = Recorder::default();
    }

    pub fn export(&self) -> Result<ExportedLatency, HistogramError> {
        Ok(ExportedLatency {
            total: encode(&self.total)?,
            per_second: self
                .per_second
                .iter()
                .map(|(s, h)| Ok((*s, encode(h)?)))
                .collect::<Result<_, HistogramError>>()?,
        })
    }
}

/// A recorder's histograms, serialised (HdrHistogram V2, base64) to cross
/// from a client process to the coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportedLatency {
    pub total: String,
    pub per_second: Vec<(i64, String)>,
}

fn encode(h: &Histogram<u64>) -> Result<String, HistogramError> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .map_err(|e| HistogramError::Decode(format!("{e:?}")))?;
    Ok(STANDARD.encode(out))
}

fn decode(s: &str) -> Result<Histogram<u64>, HistogramError> {
    let bytes = STANDARD.decode(s)?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| HistogramError::Decode(format!("{e:?}")))
}

/// Histograms merged from every client process.
pub struct Merged {
    pub total: Histogram<u64>,
    pub per_second: BTreeMap<i64, Histogram<u64>>,
}

impl Default for Merged {
    fn default() -> Self {
        Merged {
            total: histogram(3),
            per_second: BTreeMap::new(),
        }
    }
}

impl Merged {
    pub fn add(&mut self, e: &ExportedLatency) -> Result<(), HistogramError> {
        self.total
            .add(decode(&e.total)?)
            .map_err(|e| HistogramError::Merge(format!("{e:?}")))?;
        for (s, h) in &e.per_second {
            self.per_second
                .entry(*s)
                .or_insert_with(|| histogram(2))
                .add(decode(h)?)
                .map_err(|e| HistogramError::Merge(format!("{e:?}")))?;
        }
        Ok(())
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        summarize(&self.total)
    }

    /// Per-second points, `t` in seconds since `start_us`.
    pub fn series(&self, start_us: i64) -> Vec<SecondPoint> {
        self.per_second
            .iter()
            .map(|(s, h)| SecondPoint {
                // The middle of the second, from the window's start.
                t: ((s * 1_000_000 + 500_000 - start_us) as f64 / 1e6).max(0.0),
                count: h.len(),
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
            })
            .collect()
    }

    /// (quantile, latency) pairs for the distribution chart.
    pub fn distribution(&self) -> Vec<(f64, u64)> {
        const Q: [f64; 17] = [
            0.0, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998,
            0.9999, 0.99995, 0.99999,
        ];
        if self.total.is_empty() {
            return Vec::new();
        }
        Q.iter()
            .map(|&q| (q, self.total.value_at_quantile(q)))
            .chain(std::iter::once((1.0, self.total.max())))
            .collect()
    }
}

/// Latency figures in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

fn summarize(h: &Histogram<u64>) -> Option<LatencySummary> {
    (!h.is_empty()).then(|| LatencySummary {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: h.mean(),
    })
}

/// How late a thread that sleeps 1 ms wakes up, over and over until `stop`
/// is set: the machine's own scheduling floor during a run. Every hop of a
/// message (generator, NATS, gateway, PostgreSQL, client) waits for such a
/// wake-up, so no end-to-end figure can beat a few of these in a row. On
/// this virtual machine the host decides most of it (idle: p99 ≈ 2 ms).
pub struct WakeupProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<LatencySummary>>,
}

impl WakeupProbe {
    pub fn start() -> WakeupProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut h = histogram(3);
            let nap = std::time::Duration::from_millis(1);
            while !flag.load(Ordering::Relaxed) {
                let t = std::time::Instant::now();
                std::thread::sleep(nap);
                let late = t.elapsed().saturating_sub(nap);
                h.saturating_record((late.as_micros() as u64).max(1));
            }
            summarize(&h)
        });
        WakeupProbe { stop, thread }
    }

    /// Stops the probe and returns what it saw (None if it saw nothing).
    /// Waits for the nap in progress: a millisecond or so.
    pub fn finish(self) -> Option<LatencySummary> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().ok().flatten()
    }
}

/// One second of the latency-over-time series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondPoint {
    pub t: f64,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Finds `ts=<unix micros>` at the start of `b`, as the bench writes it at
/// the head of every message it sends.
pub fn parse_stamp(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"ts=")?;
    let mut v: i64 = 0;
    let mut n = 0;
    for &c in digits.iter().take(19) {
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + i64::from(c - b'0');
        n += 1;
    }
    (n > 0).then_some(v)
}

/// A message body of exactly `len` bytes (at least the stamp's) that starts
/// with the send time: `ts=<micros>;` and then filler.
pub fn stamped_payload(sent_us: i64, len: usize) -> String {
    let mut s = format!("ts={sent_us};");
    while s.len() < len {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wakeup_probe_measures_until_stopped() {
        let probe = WakeupProbe::start();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let s = probe.finish().expect("some naps were measured");
        assert!(
            s.count >= 1 && s.count <= 30,
            "one sample per 1 ms nap: {s:?}"
        );
        assert!(s.max >= s.p50);
    }

    #[test]
    fn stamp_round_trip() {
        let p = stamped_payload(1_700_000_000_123_456, 300);
        assert_eq!(p.len(), 300);
        assert_eq!(parse_stamp(p.as_bytes()), Some(1_700_000_000_123_456));
        assert_eq!(parse_stamp(b"xx"), None);
    }

    #[test]
    fn recorders_merge_across_processes() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 0..1000 {
            a.record(10_000_000 + i, 10_000_000 + i - 1000);
            b.record(11_000_000 + i, 11_000_000 + i - 3000);
        }
        let mut m = Merged::default();
        m.add(&a.export().unwrap()).unwrap();
        m.add(&b.export().unwrap()).unwrap();
        let s = m.summary().unwrap();
        assert_eq!(s.count, 2000);
        assert!((990..=1010).contains(&s.p50) || (2990..=3010).contains(&s.p50));
        assert!(s.max >= 2990);
        assert_eq!(m.series(10_000_000).len(), 2);
    }
}
