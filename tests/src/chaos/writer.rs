//! Writers: one per channel, posting over HTTP at a steady pace with a nonce
//! per message, one message at a time, so a channel's message ids are
//! committed (and dispatched) in increasing order. A message is accepted
//! when it is answered 200; until then the same nonce is posted again, so a
//! write that committed before its answer was lost is not written twice.

use super::Clock;
use crate::api::User;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a message is posted again after the writers were told to stop.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// A message the API accepted.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub id: i64,
    pub channel_id: i64,
    pub author_id: i64,
    pub nonce: String,
    /// The message's own timestamp (run seconds): when it was written.
    pub created_at: f64,
    /// When the 200 came.
    pub accepted_at: f64,
    pub attempts: u32,
}

#[derive(Debug, Default)]
pub struct WriterLog {
    pub accepted: Vec<Accepted>,
    /// Posts that were not answered 200 and were tried again.
    pub retries: u64,
    /// Messages given up on (a 4xx, or no answer before the end): such a
    /// message may exist without being counted.
    pub abandoned: Vec<String>,
    /// The last error of each kind, for the report.
    pub errors: Vec<String>,
}

fn lock(log: &Mutex<WriterLog>) -> std::sync::MutexGuard<'_, WriterLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Posts to `channel` every `period_s` seconds (from a random phase) as a
/// random one of `authors`, until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    channel: i64,
    authors: Vec<User>,
    period_s: f64,
    api_base: String,
    clock: Clock,
    log: Arc<Mutex<WriterLog>>,
    stop: watch::Receiver<bool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let period = Duration::from_secs_f64(period_s);
    let mut next = Instant::now() + period.mul_f64(rng.random::<f64>());
    let url = format!("{api_base}/channels/{channel}/messages");
    let mut seq = 0u64;
    loop {
        let mut stop_wait = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop_wait.wait_for(|s| *s) => return,
        }
        if *stop.borrow() {
            return;
        }
        seq += 1;
        let author = authors
            .choose(&mut rng)
            .expect("every channel has a member");
        let nonce = format!("chaos-{channel}-{seq}");
        post(&http, &url, author, channel, &nonce, clock, &log, &stop).await;
        next += period;
        // After a stall, carry on at the pace instead of catching up in a burst.
        let now = Instant::now();
        if next < now {
            next = now;
        }
    }
}

/// Posts one message until it is answered 200 (or given up on).
#[allow(clippy::too_many_arguments)]
async fn post(
    http: &reqwest::Client,
    url: &str,
    author: &User,
    channel: i64,
    nonce: &str,
    clock: Clock,
    log: &Mutex<WriterLog>,
    stop: &watch::Receiver<bool>,
) {
    let body = serde_json::json!({"content": format!("chaos {nonce}"), "nonce": nonce});
    let mut wait = Duration::from_millis(100);
    let mut attempts = 0u32;
    let mut stopping_since: Option<Instant> = None;
    loop {
        attempts += 1;
        let resp = http
            .post(url)
            .header("authorization", &author.token)
            .json(&body)
            .send()
            .await;
        let error = match resp {
            Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                Ok(m) => match accepted(&m, channel, nonce, clock, attempts) {
                    Ok(a) => {
                        lock(log).accepted.push(a);
                        return;
                    }
                    Err(e) => e,
                },
                Err(e) => format!("reading a 200 answer: {e}"),
            },
            Ok(r) if r.status().is_client_error() && r.status() != 429 => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let mut log = lock(log);
                log.abandoned.push(nonce.to_owned());
                log.errors.push(format!("{nonce}: {status} {text}"));
                return;
            }
            Ok(r) => format!("status {}", r.status()),
            Err(e) => format!("{e}"),
        };
        {
            let mut log = lock(log);
            log.retries += 1;
            if log.errors.len() < 50 {
                log.errors.push(format!("{nonce}: {error}"));
            }
        }
        if *stop.borrow() {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if since.elapsed() > FINISH_TIMEOUT {
                lock(log).abandoned.push(nonce.to_owned());
                return;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

fn accepted(
    m: &Value,
    channel: i64,
    nonce: &str,
    clock: Clock,
    attempts: u32,
) -> Result<Accepted, String> {
    let id = m["id"].as_str().and_then(|i| i.parse().ok());
    let author = m["author"]["id"].as_str().and_then(|i| i.parse().ok());
    let created = m["timestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    match (id, author, created) {
        (Some(id), Some(author_id), Some(created)) if m["nonce"] == nonce => Ok(Accepted {
            id,
            channel_id: channel,
            author_id,
            nonce: nonce.to_owned(),
            created_at: clock.at(created.to_utc()),
            accepted_at: clock.now(),
            attempts,
        }),
        _ => Err(format!("a 200 answer that is not this message: {m}")),
    }
}
