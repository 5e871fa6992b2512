//! Membership churn: at a steady pace the channels' owner adds a user to a
//! channel, or removes them from it, outside the user's fixed channels (so
//! the writers, who post as fixed members, stay members). What a client
//! must receive then depends on where each message falls between its
//! user's member events; the count reads that from the outbox.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a change is retried after the run was told to stop.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct ChurnLog {
    pub adds: u64,
    pub removes: u64,
    pub retries: u64,
    pub errors: Vec<String>,
    pub changes: Vec<Change>,
}

/// One membership change the API answered.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub user_id: i64,
    pub channel_id: i64,
    pub add: bool,
    /// When the request was first sent and when it was answered (run s).
    pub sent: f64,
    pub answered: f64,
}

fn lock(log: &Mutex<ChurnLog>) -> std::sync::MutexGuard<'_, ChurnLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// The users churned: id and the channels never taken from them.
pub struct Churned {
    pub user_id: i64,
    pub fixed: BTreeSet<i64>,
}

/// Adds or removes one membership every `period_s` seconds until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    owner_token: String,
    users: Vec<Churned>,
    channels: Vec<i64>,
    period_s: f64,
    api_base: String,
    log: Arc<Mutex<ChurnLog>>,
    stop: watch::Receiver<bool>,
    seed: u64,
    clock: super::Clock,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    // The churned memberships each user holds now.
    let mut extra: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); users.len()];
    let period = Duration::from_secs_f64(period_s);
    let mut next = Instant::now() + period.mul_f64(rng.random::<f64>());
    loop {
        let mut stop_wait = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop_wait.wait_for(|s| *s) => return,
        }
        next += period;
        let u = rng.random_range(0..users.len());
        // As many removes as adds in the long run: remove one of the user's
        // churned channels half of the time, when there is one.
        let held: Vec<i64> = extra[u].iter().copied().collect();
        let add = held.is_empty() || rng.random_bool(0.5);
        let pool: Vec<i64> = if add {
            channels
                .iter()
                .copied()
                .filter(|c| !users[u].fixed.contains(c) && !extra[u].contains(c))
                .collect()
        } else {
            held
        };
        let Some(&channel) = pool.choose(&mut rng) else {
            continue;
        };
        let user = users[u].user_id;
        let url = format!("{api_base}/channels/{channel}/members/{user}");
        let sent = clock.now();
        let done = change(&http, &url, &owner_token, add, &log, &stop).await;
        if done {
            let mut log = lock(&log);
            log.changes.push(Change {
                user_id: user,
                channel_id: channel,
                add,
                sent,
                answered: clock.now(),
            });
            if add {
                extra[u].insert(channel);
                log.adds += 1;
            } else {
                extra[u].remove(&channel);
                log.removes += 1;
            }
        }
    }
}

/// PUT (add) or DELETE (remove) until it takes. A DELETE answered 404 was
/// done by an earlier try whose answer was lost.
async fn change(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    add: bool,
    log: &Mutex<ChurnLog>,
    stop: &watch::Receiver<bool>,
) -> bool {
    let mut wait = Duration::from_millis(100);
    let mut stopping_since: Option<Instant> = None;
    loop {
        let req = if add { http.put(url) } else { http.delete(url) };
        let error = match req.header("authorization", token).send().await {
            Ok(r) if r.status() == 204 => return true,
            Ok(r) if !add && r.status() == 404 => return true,
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                lock(log).errors.push(format!("{url}: {status} {text}"));
                return false;
            }
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        {
            let mut log = lock(log);
            log.retries += 1;
            if log.errors.len() < 50 {
                log.errors.push(format!("{url}: {error}"));
            }
        }
        if *stop.borrow() {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if since.elapsed() > FINISH_TIMEOUT {
                return false;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
