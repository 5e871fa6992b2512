//! The sessions' ends, held by the bench: stamped frames in, their latency
//! recorded, every byte counted.

use super::FloorError;
use crate::latency::{now_us, LatencySummary, Merged, Recorder};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Send stamp to a session's read, for the messages sent in the window:
/// every frame starts with its message's send time (`latency::now_us`, Unix
/// µs, which all processes share), as the bench's real messages do.
pub struct Latencies {
    /// Send stamps from `start` up to `end` are recorded.
    start: AtomicI64,
    end: AtomicI64,
    recorder: std::sync::Mutex<Recorder>,
}

impl Latencies {
    pub fn new() -> Arc<Latencies> {
        Arc::new(Latencies {
            start: AtomicI64::new(i64::MAX),
            end: AtomicI64::new(i64::MAX),
            recorder: Default::default(),
        })
    }

    /// Records the messages sent from now on, until `close`.
    pub fn open(&self) {
        self.start.store(now_us(), Ordering::Relaxed);
    }

    pub fn close(&self) {
        self.end.store(now_us(), Ordering::Relaxed);
    }

    fn record(&self, now: i64, sent: i64) {
        let (start, end) = (
            self.start.load(Ordering::Relaxed),
            self.end.load(Ordering::Relaxed),
        );
        if (start..end).contains(&sent) {
            self.recorder
                .lock()
                .expect("not poisoned")
                .record(now, sent);
        }
    }

    pub fn summary(&self) -> Result<Option<LatencySummary>, FloorError> {
        let mut merged = Merged::default();
        merged.add(&self.recorder.lock().expect("not poisoned").export()?)?;
        Ok(merged.summary())
    }
}

/// The sessions' ends: connects `count` sockets, the k-th to `port_of(k)`,
/// each read by a task that records each frame's latency and returns the
/// bytes it read once its socket closes.
pub async fn hold_sessions(
    count: usize,
    port_of: impl Fn(usize) -> u16,
    frame_bytes: usize,
    latencies: &Arc<Latencies>,
) -> Result<tokio::task::JoinSet<u64>, FloorError> {
    let frame = frame_bytes.max(STAMP);
    let mut readers = tokio::task::JoinSet::new();
    for k in 0..count {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port_of(k))).await?;
        let latencies = latencies.clone();
        readers.spawn(async move {
            let mut buf = vec![0u8; 8192.max(2 * frame)];
            let (mut held, mut bytes) = (0, 0u64);
            while let Ok(n @ 1..) = socket.read(&mut buf[held..]).await {
                let now = now_us();
                bytes += n as u64;
                held += n;
                let whole = held - held % frame;
                for f in buf[..whole].chunks_exact(frame) {
                    latencies.record(now, stamp_of(f));
                }
                buf.copy_within(whole..held, 0);
                held -= whole;
            }
            bytes
        });
    }
    Ok(readers)
}

/// Bytes of a send stamp: the front of each frame and of each message
/// between the floor's processes.
pub const STAMP: usize = 8;

pub fn stamp_of(b: &[u8]) -> i64 {
    i64::from_le_bytes(b[..STAMP].try_into().expect("a stamp's 8 bytes"))
}

/// A frame of `frame_bytes` (at least a stamp) to stamp and send.
pub fn frame(frame_bytes: usize) -> Vec<u8> {
    vec![b'x'; frame_bytes.max(STAMP)]
}

/// Waits for every session to close (its process ended) and checks that
/// they read exactly `sent` bytes in all.
pub async fn count_sessions(
    mut readers: tokio::task::JoinSet<u64>,
    sent: u64,
) -> Result<(), FloorError> {
    let mut got = 0;
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(bytes) = readers.join_next().await {
            got += bytes.unwrap_or(0);
        }
    })
    .await;
    if counted.is_err() || got != sent {
        return Err(FloorError::Miscount { got, sent });
    }
    Ok(())
}

/// The latency of a floor's frames, as the bench reports a system's.
pub fn latency_line(l: Option<LatencySummary>) -> String {
    let ms = |us: u64| us as f64 / 1e3;
    l.map_or("latency: none recorded".into(), |l| {
        format!(
            "latency p50 / p99 / p99.9 / max: {:.2} / {:.2} / {:.2} / {:.2} ms",
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        )
    })
}
