//! The count at the end of a run: for every client, every accepted message
//! of every channel its user was a member of, received (over the WebSocket,
//! or by a refetch after `resumed:false`), lost, duplicated (the same
//! message over the WebSocket twice), out of order (a channel's message ids
//! must arrive increasing); what each fault did to the clients; the series
//! the chart draws. Written as JSON and printed as a table.

use super::churn::ChurnLog;
use super::client::{ClientLog, ClientSpec, Delivery, SessionRecord};
use super::faults::FaultRecord;
use super::writer::{Accepted, WriterLog};
use super::{Clock, Config};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;

/// A delivery later than this after its message was written is late.
pub const LATE_MS: f64 = 1_000.0;
/// Violations listed in full in the report (all are counted).
const MAX_VIOLATIONS: usize = 200;
/// The window after a fault's end in which the sessions it closed count
/// as closed by it (a slow client reads its close only after its backlog).
const CLOSE_SLACK_S: f64 = 5.0;

/// Everything the run gathered.
pub struct Inputs {
    pub config: Config,
    pub clock: Clock,
    pub logs_dir: String,
    /// When the writers started and stopped (run seconds).
    pub writing: (f64, f64),
    pub settle_s: f64,
    pub outbox_settled: bool,
    pub caught_up: bool,
    pub outbox: OutboxCounts,
    pub writers: WriterLog,
    pub churn: ChurnLog,
    pub clients: Vec<(ClientSpec, ClientLog)>,
    pub faults: Vec<FaultRecord>,
    /// Every event the backend committed, in commit order.
    pub timeline: Vec<OutboxEvent>,
    /// Each user's channels in the database at the end.
    pub memberships: HashMap<i64, BTreeSet<i64>>,
}

/// One outbox row: an event as the backend committed it. A channel's rows
/// are committed under the channel's lock, so their ids are the order its
/// events are sent in.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub id: i64,
    pub t: String,
    pub channel_id: i64,
    pub message_id: Option<i64>,
    pub user_id: Option<i64>,
}

fn id_field(v: &serde_json::Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
}

/// The whole outbox, in commit order.
pub async fn read_timeline(pool: &sqlx::PgPool) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    let rows: Vec<(i64, String, i64, String)> =
        sqlx::query_as("SELECT id, event_type, channel_id, data::text FROM outbox ORDER BY id")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, t, channel_id, data)| {
            let d: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
            let message_id = if t.starts_with("EVENT_MESSAGE_") {
                id_field(&d["id"])
            } else {
                None
            };
            OutboxEvent {
                id,
                t,
                channel_id,
                message_id,
                user_id: id_field(&d["user_id"]),
            }
        })
        .collect())
}

/// Every user's channels now.
pub async fn read_memberships(
    pool: &sqlx::PgPool,
) -> Result<HashMap<i64, BTreeSet<i64>>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT user_id, channel_id FROM channel_members")
        .fetch_all(pool)
        .await?;
    let mut out: HashMap<i64, BTreeSet<i64>> = HashMap::new();
    for (user, channel) in rows {
        out.entry(user).or_default().insert(channel);
    }
    Ok(out)
}

/// Which messages each user may see: a channel's messages committed between
/// the user's add to it and their removal from it (by outbox order).
pub fn visible(timeline: &[OutboxEvent]) -> HashMap<i64, HashSet<i64>> {
    let mut members: HashMap<i64, HashSet<i64>> = HashMap::new();
    let mut out: HashMap<i64, HashSet<i64>> = HashMap::new();
    for e in timeline {
        match (e.t.as_str(), e.user_id, e.message_id) {
            ("EVENT_CHANNEL_MEMBER_ADD", Some(u), _) => {
                members.entry(e.channel_id).or_default().insert(u);
            }
            ("EVENT_CHANNEL_MEMBER_REMOVE", Some(u), _) => {
                members.entry(e.channel_id).or_default().remove(&u);
            }
            ("EVENT_MESSAGE_CREATE", _, Some(m)) => {
                for u in members.get(&e.channel_id).into_iter().flatten() {
                    out.entry(*u).or_default().insert(m);
                }
            }
            _ => {}
        }
    }
    out
}

/// The outbox rows by status at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutboxCounts {
    pub delivered: i64,
    pub dropped: i64,
    pub pending: i64,
    /// Set when the outbox could not be read.
    pub error: Option<String>,
}

impl OutboxCounts {
    pub async fn read(pool: &sqlx::PgPool) -> OutboxCounts {
        let rows: Result<Vec<(String, i64)>, _> =
            sqlx::query_as("SELECT status, count(*) FROM outbox GROUP BY status")
                .fetch_all(pool)
                .await;
        let mut c = OutboxCounts::default();
        match rows {
            Ok(rows) => {
                for (status, n) in rows {
                    match status.as_str() {
                        "delivered" => c.delivered = n,
                        "dropped" => c.dropped = n,
                        _ => c.pending += n,
                    }
                }
            }
            Err(e) => c.error = Some(e.to_string()),
        }
        c
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub accepted: usize,
    /// Σ over clients of the accepted messages of the user's channels.
    pub expected: usize,
    pub received: usize,
    /// Of `received`, read by a refetch only.
    pub received_by_refetch: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    /// Messages of a channel the user was not in when they were written.
    pub foreign: usize,
    /// Clients whose channel list (READY's, with the member events applied)
    /// differs from the database's at the end.
    pub channel_lists_wrong: usize,
    /// Membership changes made while the writers wrote.
    pub member_adds: u64,
    pub member_removes: u64,
    /// Messages received that no writer saw accepted (a write whose answer
    /// was lost and that was given up on).
    pub unaccepted: usize,
    pub protocol_errors: usize,
    pub sessions: usize,
    /// Sessions that asked to resume, and how many of them READY said
    /// `resumed:false` to.
    pub resumes: usize,
    pub resumed_false: usize,
    pub refetches: usize,
    pub connect_failures: u64,
    /// Session ends by close code ("client" when the client closed).
    pub closes: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientSummary {
    pub user: String,
    /// The channels the user is in for the whole run.
    pub fixed_channels: Vec<i64>,
    /// The user's channels in the database at the end, and as the client
    /// kept them.
    pub channels_at_end: Vec<i64>,
    pub client_channels: Vec<i64>,
    pub expected: usize,
    pub received: usize,
    pub received_by_refetch: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub foreign: usize,
    pub sessions: usize,
    pub resumed_false: usize,
    pub refetches: usize,
    pub closes: BTreeMap<String, usize>,
    pub protocol_errors: Vec<String>,
}

/// A loss, duplicate, order or protocol violation, with what it takes to
/// find it in the gateways' logs.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub kind: &'static str,
    pub client: String,
    pub channel_id: i64,
    pub message_id: i64,
    pub detail: String,
    /// The deliveries of the message to this client (duplicates), or of it
    /// and the one before it in the channel (order).
    pub deliveries: Vec<Delivery>,
    /// The client's sessions around the event.
    pub sessions: Vec<(usize, SessionRecord)>,
    /// The user's membership changes in the channel while writing.
    pub membership: Vec<super::churn::Change>,
    /// The channel's committed events around the message, in commit order:
    /// `outbox id, type, message or user id`.
    pub channel_events: Vec<String>,
}

/// What one fault did to the clients.
#[derive(Debug, Clone, Serialize)]
pub struct FaultSummary {
    #[serde(flatten)]
    pub fault: FaultRecord,
    /// Sessions that ended between the fault's start and shortly after its
    /// end (each put down to one fault only; see [`closer`]).
    pub sessions_closed: usize,
    pub closes: BTreeMap<String, usize>,
    /// The longest a client whose session it closed went without a READY
    /// session (seconds; 0 when none closed).
    pub reconnect_max_s: f64,
    /// READYs with `resumed:false` to a session asking to resume.
    pub resumed_false: usize,
    /// Deliveries later than [`LATE_MS`] put down to this fault (see
    /// [`culprit`]).
    pub late_deliveries: usize,
    /// The same, by the node of the session they came on.
    pub late_by_node: BTreeMap<String, usize>,
    /// Clients with a READY session per node when the fault began.
    pub clients_by_node: BTreeMap<String, usize>,
    /// The largest delay of those late deliveries (ms; 0 when none).
    pub max_delay_ms: f64,
    /// From the fault's start to the last of its late deliveries: by then
    /// every client had caught up (0 when nothing was late).
    pub recovery_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Quantiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Quantiles {
    fn of(mut v: Vec<f64>) -> Quantiles {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return Quantiles::default();
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Quantiles {
            count: v.len(),
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: v[v.len() - 1],
        }
    }
}

/// Per-second series for the chart (index = run second).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    pub deliveries_per_s: Vec<u64>,
    pub accepted_per_s: Vec<u64>,
    /// The largest delivery delay among the deliveries of each second (ms).
    pub max_delay_ms_per_s: Vec<f64>,
    /// `(run second, clients with a READY session)`, every half second.
    pub sessions_live: Vec<(f64, usize)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriterSummary {
    pub accepted: usize,
    pub retries: u64,
    pub abandoned: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: Config,
    pub started_at: String,
    /// The processes' logs.
    pub logs: String,
    pub writing: (f64, f64),
    pub settle_s: f64,
    pub outbox_settled: bool,
    pub caught_up: bool,
    pub totals: Totals,
    /// Delivery delay from the message's timestamp, over every delivery (ms).
    pub delay_ms: Quantiles,
    pub outbox: OutboxCounts,
    pub writers: WriterSummary,
    pub faults: Vec<FaultSummary>,
    pub clients: Vec<ClientSummary>,
    pub violations: Vec<Violation>,
    pub series: Series,
}

impl Report {
    /// Whether anything was lost, duplicated, out of order, shown to a
    /// non-member or broke the protocol.
    pub fn failed(&self) -> bool {
        let t = &self.totals;
        t.lost
            + t.duplicated
            + t.out_of_order
            + t.foreign
            + t.protocol_errors
            + t.channel_lists_wrong
            > 0
    }
}

fn close_key(rec: &SessionRecord) -> String {
    match rec.close {
        Some(c) => c.to_string(),
        None => "client".to_owned(),
    }
}

/// The user's membership changes in the channel.
fn changes(inp: &Inputs, user: i64, channel: i64) -> Vec<super::churn::Change> {
    inp.churn
        .changes
        .iter()
        .filter(|c| c.user_id == user && c.channel_id == channel)
        .cloned()
        .collect()
}

/// The channel's committed events from five before the message to five
/// after it.
fn around(timeline: &[OutboxEvent], channel: i64, message: i64) -> Vec<String> {
    let events: Vec<&OutboxEvent> = timeline
        .iter()
        .filter(|e| e.channel_id == channel)
        .collect();
    let Some(at) = events.iter().position(|e| e.message_id == Some(message)) else {
        return Vec::new();
    };
    events[at.saturating_sub(5)..(at + 6).min(events.len())]
        .iter()
        .map(|e| {
            let what = match (e.message_id, e.user_id) {
                (Some(m), _) => format!("message {m}"),
                (None, Some(u)) => format!("user {u}"),
                _ => String::new(),
            };
            format!("{} {} {what}", e.id, e.t)
        })
        .collect()
}

/// The sessions of a client whose life overlaps `[from, to]`.
fn sessions_around(log: &ClientLog, from: f64, to: f64) -> Vec<(usize, SessionRecord)> {
    log.sessions
        .iter()
        .enumerate()
        .filter(|(_, s)| s.opened <= to && s.ended.is_none_or(|e| e >= from))
        .map(|(i, s)| (i, s.clone()))
        .collect()
}

pub fn count(inp: Inputs) -> Report {
    let accepted = &inp.writers.accepted;
    let by_id: HashMap<i64, &Accepted> = accepted.iter().map(|m| (m.id, m)).collect();
    let mut totals = Totals {
        accepted: accepted.len(),
        member_adds: inp.churn.adds,
        member_removes: inp.churn.removes,
        ..Totals::default()
    };
    let visible = visible(&inp.timeline);
    let nothing = HashSet::new();
    let mut violations = Vec::new();
    let push = |v: Violation, violations: &mut Vec<Violation>| {
        if violations.len() < MAX_VIOLATIONS {
            violations.push(v);
        }
    };
    let mut clients = Vec::new();
    for (spec, log) in &inp.clients {
        let at_end: Vec<i64> = inp
            .memberships
            .get(&spec.user_id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let kept: Vec<i64> = log.channels.iter().copied().collect();
        if at_end != kept {
            totals.channel_lists_wrong += 1;
            push(
                Violation {
                    kind: "channel_list",
                    client: spec.username.clone(),
                    channel_id: 0,
                    message_id: 0,
                    detail: format!(
                        "the client keeps channels {kept:?}, the database has {at_end:?}"
                    ),
                    deliveries: Vec::new(),
                    sessions: Vec::new(),
                    membership: Vec::new(),
                    channel_events: Vec::new(),
                },
                &mut violations,
            );
        }
        let mut c = ClientSummary {
            user: spec.username.clone(),
            fixed_channels: spec.channels.clone(),
            channels_at_end: at_end,
            client_channels: kept,
            expected: 0,
            received: 0,
            received_by_refetch: 0,
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            foreign: 0,
            sessions: log.sessions.len(),
            resumed_false: 0,
            refetches: log.refetches.len(),
            closes: BTreeMap::new(),
            protocol_errors: log.protocol_errors.iter().take(10).cloned().collect(),
        };
        let mine = visible.get(&spec.user_id).unwrap_or(&nothing);
        let mut ws_count: HashMap<i64, Vec<&Delivery>> = HashMap::new();
        let mut last_in_channel: HashMap<i64, &Delivery> = HashMap::new();
        for d in &log.deliveries {
            let seen = ws_count.entry(d.message_id).or_default();
            seen.push(d);
            if !by_id.contains_key(&d.message_id) {
                totals.unaccepted += 1;
            }
            if !mine.contains(&d.message_id) {
                c.foreign += 1;
                push(
                    Violation {
                        kind: "foreign",
                        client: spec.username.clone(),
                        channel_id: d.channel_id,
                        message_id: d.message_id,
                        detail: "a message written while the user was not in its channel".into(),
                        deliveries: vec![d.clone()],
                        sessions: sessions_around(log, d.at, d.at),
                        membership: changes(&inp, spec.user_id, d.channel_id),
                        channel_events: around(&inp.timeline, d.channel_id, d.message_id),
                    },
                    &mut violations,
                );
                continue;
            }
            if seen.len() > 1 {
                c.duplicated += 1;
                let ds: Vec<Delivery> = seen.iter().map(|d| (*d).clone()).collect();
                let from = ds[0].at;
                push(
                    Violation {
                        kind: "duplicated",
                        client: spec.username.clone(),
                        channel_id: d.channel_id,
                        message_id: d.message_id,
                        detail: format!("received {} times", ds.len()),
                        deliveries: ds,
                        sessions: sessions_around(log, from, d.at),
                        membership: Vec::new(),
                        channel_events: Vec::new(),
                    },
                    &mut violations,
                );
                continue;
            }
            if let Some(prev) = last_in_channel.get(&d.channel_id) {
                if d.message_id < prev.message_id {
                    c.out_of_order += 1;
                    push(
                        Violation {
                            kind: "out_of_order",
                            client: spec.username.clone(),
                            channel_id: d.channel_id,
                            message_id: d.message_id,
                            detail: format!(
                                "arrived after message {} of the same channel",
                                prev.message_id
                            ),
                            deliveries: vec![(*prev).clone(), d.clone()],
                            sessions: sessions_around(log, prev.at, d.at),
                            membership: Vec::new(),
                            channel_events: Vec::new(),
                        },
                        &mut violations,
                    );
                    continue;
                }
            }
            last_in_channel.insert(d.channel_id, d);
        }
        for m in accepted {
            if mine.contains(&m.id) {
                c.expected += 1;
                if ws_count.contains_key(&m.id) {
                    c.received += 1;
                } else if log.refetched.contains(&m.id) {
                    c.received += 1;
                    c.received_by_refetch += 1;
                } else {
                    c.lost += 1;
                    push(
                        Violation {
                            kind: "lost",
                            client: spec.username.clone(),
                            channel_id: m.channel_id,
                            message_id: m.id,
                            detail: format!(
                                "written at {:.3} s (accepted at {:.3} s), never received",
                                m.created_at, m.accepted_at
                            ),
                            deliveries: Vec::new(),
                            sessions: sessions_around(log, m.created_at - 1.0, m.created_at + 1.0),
                            membership: changes(&inp, spec.user_id, m.channel_id),
                            channel_events: around(&inp.timeline, m.channel_id, m.id),
                        },
                        &mut violations,
                    );
                }
            }
        }
        for s in &log.sessions {
            *c.closes.entry(close_key(s)).or_default() += 1;
            if s.resume_from.is_some() {
                totals.resumes += 1;
                if s.resumed == Some(false) {
                    c.resumed_false += 1;
                }
            }
        }
        for e in &log.protocol_errors {
            push(
                Violation {
                    kind: "protocol",
                    client: spec.username.clone(),
                    channel_id: 0,
                    message_id: 0,
                    detail: e.clone(),
                    deliveries: Vec::new(),
                    sessions: Vec::new(),
                    membership: Vec::new(),
                    channel_events: Vec::new(),
                },
                &mut violations,
            );
        }
        totals.expected += c.expected;
        totals.received += c.received;
        totals.received_by_refetch += c.received_by_refetch;
        totals.lost += c.lost;
        totals.duplicated += c.duplicated;
        totals.out_of_order += c.out_of_order;
        totals.foreign += c.foreign;
        totals.protocol_errors += log.protocol_errors.len();
        totals.sessions += c.sessions;
        totals.resumed_false += c.resumed_false;
        totals.refetches += c.refetches;
        totals.connect_failures += log.connect_failures;
        for (k, n) in &c.closes {
            *totals.closes.entry(k.clone()).or_default() += n;
        }
        clients.push(c);
    }

    let delay_ms = Quantiles::of(
        inp.clients
            .iter()
            .flat_map(|(_, l)| l.deliveries.iter().map(|d| d.delay_ms))
            .collect(),
    );
    let faults = summarize_faults(&inp);
    let series = series(&inp);
    Report {
        config: inp.config.clone(),
        started_at: inp.clock.start_rfc3339(),
        logs: inp.logs_dir.clone(),
        writing: inp.writing,
        settle_s: inp.settle_s,
        outbox_settled: inp.outbox_settled,
        caught_up: inp.caught_up,
        totals,
        delay_ms,
        outbox: inp.outbox.clone(),
        writers: WriterSummary {
            accepted: inp.writers.accepted.len(),
            retries: inp.writers.retries,
            abandoned: inp.writers.abandoned.clone(),
            errors: inp.writers.errors.iter().take(20).cloned().collect(),
        },
        faults,
        clients,
        violations,
        series,
    }
}

/// The fault a late delivery is put down to: the first one under way while
/// the message waited (from its writing to its arrival), else the last one
/// that ended before it was written (a backlog the fault left).
fn culprit(faults: &[FaultRecord], d: &Delivery) -> Option<usize> {
    let written = d.at - d.delay_ms / 1e3;
    faults
        .iter()
        .position(|f| f.start <= d.at && f.end >= written)
        .or_else(|| faults.iter().rposition(|f| f.end < written))
}

/// The fault a session that ended at `ended` is put down to: the first one
/// under way then, or ended at most [`CLOSE_SLACK_S`] before.
fn closer(faults: &[FaultRecord], ended: f64) -> Option<usize> {
    faults
        .iter()
        .position(|f| f.start <= ended && ended <= f.end + CLOSE_SLACK_S)
}

fn summarize_faults(inp: &Inputs) -> Vec<FaultSummary> {
    let mut out = Vec::new();
    for (k, f) in inp.faults.iter().enumerate() {
        let until = inp
            .faults
            .get(k + 1)
            .map(|n| n.start)
            .unwrap_or(f64::INFINITY);
        let mut s = FaultSummary {
            fault: f.clone(),
            sessions_closed: 0,
            closes: BTreeMap::new(),
            reconnect_max_s: 0.0,
            resumed_false: 0,
            late_deliveries: 0,
            late_by_node: BTreeMap::new(),
            clients_by_node: BTreeMap::new(),
            max_delay_ms: 0.0,
            recovery_s: 0.0,
        };
        for (_, log) in &inp.clients {
            for (i, rec) in log.sessions.iter().enumerate() {
                let Some(ended) = rec.ended else { continue };
                if rec.reason == "the run ended" || closer(&inp.faults, ended) != Some(k) {
                    continue;
                }
                s.sessions_closed += 1;
                *s.closes.entry(close_key(rec)).or_default() += 1;
                // Back when a later session of the client got READY.
                let back = log.sessions[i + 1..]
                    .iter()
                    .find_map(|n| n.ready)
                    .unwrap_or(inp.writing.1.max(ended));
                s.reconnect_max_s = s.reconnect_max_s.max(back - ended);
            }
            if let Some(rec) = log.sessions.iter().find(|x| {
                x.ready.is_some_and(|r| r <= f.start) && x.ended.is_none_or(|e| e > f.start)
            }) {
                *s.clients_by_node.entry(rec.node.clone()).or_default() += 1;
            }
            for rec in &log.sessions {
                if rec.resume_from.is_some()
                    && rec.resumed == Some(false)
                    && rec.opened >= f.start
                    && rec.opened < until
                {
                    s.resumed_false += 1;
                }
            }
            for d in &log.deliveries {
                if d.delay_ms <= LATE_MS || culprit(&inp.faults, d) != Some(k) {
                    continue;
                }
                s.max_delay_ms = s.max_delay_ms.max(d.delay_ms);
                s.late_deliveries += 1;
                *s.late_by_node
                    .entry(log.sessions[d.session].node.clone())
                    .or_default() += 1;
                s.recovery_s = s.recovery_s.max(d.at - f.start);
            }
        }
        out.push(s);
    }
    out
}

fn series(inp: &Inputs) -> Series {
    let end = inp.writing.1 + inp.settle_s + 1.0;
    let seconds = end.ceil().max(1.0) as usize;
    let mut deliveries = vec![0u64; seconds];
    let mut accepted = vec![0u64; seconds];
    let mut max_delay = vec![0f64; seconds];
    for (_, log) in &inp.clients {
        for d in &log.deliveries {
            let i = d.at.max(0.0) as usize;
            if let Some(b) = deliveries.get_mut(i) {
                *b += 1;
                max_delay[i] = max_delay[i].max(d.delay_ms);
            }
        }
    }
    for m in &inp.writers.accepted {
        if let Some(b) = accepted.get_mut(m.created_at.max(0.0) as usize) {
            *b += 1;
        }
    }
    let mut sessions_live = Vec::new();
    let mut t = 0.0;
    while t < end {
        let live = inp
            .clients
            .iter()
            .filter(|(_, log)| {
                log.sessions
                    .iter()
                    .any(|s| s.ready.is_some_and(|r| r <= t) && s.ended.is_none_or(|e| e > t))
            })
            .count();
        sessions_live.push((t, live));
        t += 0.5;
    }
    Series {
        deliveries_per_s: deliveries,
        accepted_per_s: accepted,
        max_delay_ms_per_s: max_delay,
        sessions_live,
    }
}

impl Report {
    /// The human-readable summary: totals, faults, clients.
    pub fn table(&self) -> String {
        let t = &self.totals;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos run: {} users, {} channels ({} per user), {} msg/s for {:.0} s, {} fault(s); logs {}",
            self.config.users,
            self.config.channels,
            self.config.channels_per_user,
            self.config.rate,
            self.config.duration_s,
            self.faults.len(),
            self.logs
        );
        let _ = writeln!(
            s,
            "accepted {} messages; expected deliveries {}; received {} ({} by refetch); \
             LOST {}; DUPLICATED {}; OUT OF ORDER {}; foreign {}; protocol errors {}",
            t.accepted,
            t.expected,
            t.received,
            t.received_by_refetch,
            t.lost,
            t.duplicated,
            t.out_of_order,
            t.foreign,
            t.protocol_errors
        );
        let _ = writeln!(
            s,
            "sessions {}; resumes {} ({} resumed:false, {} refetches); failed upgrades {}; closes {:?}",
            t.sessions, t.resumes, t.resumed_false, t.refetches, t.connect_failures, t.closes
        );
        let _ = writeln!(
            s,
            "membership changes while writing: {} adds, {} removes; client channel lists wrong at the end: {}",
            t.member_adds, t.member_removes, t.channel_lists_wrong
        );
        let _ = writeln!(
            s,
            "delivery delay ms: p50 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1}; outbox delivered {}, dropped {}, pending {}; \
             writer retries {}, abandoned {}; settled in {:.1} s",
            self.delay_ms.p50,
            self.delay_ms.p99,
            self.delay_ms.p999,
            self.delay_ms.max,
            self.outbox.delivered,
            self.outbox.dropped,
            self.outbox.pending,
            self.writers.retries,
            self.writers.abandoned.len(),
            self.settle_s
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<20} {:<8} {:>7} {:>7} {:>7} {:>6} {:>9} {:>7} {:>11} {:>10} closes",
            "fault",
            "target",
            "start s",
            "end s",
            "closed",
            "resume",
            "reconn s",
            "late",
            "max delay",
            "recovery s"
        );
        for f in &self.faults {
            let _ = writeln!(
                s,
                "{:<20} {:<8} {:>7.1} {:>7.1} {:>7} {:>6} {:>9.2} {:>7} {:>8.0} ms {:>10.2} {:?}",
                f.fault.label,
                f.fault.target,
                f.fault.start,
                f.fault.end,
                f.sessions_closed,
                f.resumed_false,
                f.reconnect_max_s,
                f.late_deliveries,
                f.max_delay_ms,
                f.recovery_s,
                f.closes
            );
            let _ = writeln!(
                s,
                "{:<20} clients by node at the start {:?}; late deliveries by node {:?}",
                "", f.clients_by_node, f.late_by_node
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<12} {:>8} {:>8} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} closes",
            "client",
            "expected",
            "received",
            "lost",
            "dup",
            "order",
            "sessions",
            "resumed0",
            "refetch"
        );
        for c in &self.clients {
            let _ = writeln!(
                s,
                "{:<12} {:>8} {:>8} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:?}",
                c.user,
                c.expected,
                c.received,
                c.lost,
                c.duplicated,
                c.out_of_order,
                c.sessions,
                c.resumed_false,
                c.refetches,
                c.closes
            );
        }
        if !self.violations.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "first violations (all in report.json):");
            for v in self.violations.iter().take(20) {
                let _ = writeln!(
                    s,
                    "  {} {} channel {} message {}: {}",
                    v.kind, v.client, v.channel_id, v.message_id, v.detail
                );
                for c in &v.membership {
                    let _ = writeln!(
                        s,
                        "      {} user {} channel {}: sent {:.3} s, answered {:.3} s",
                        if c.add { "add" } else { "remove" },
                        c.user_id,
                        c.channel_id,
                        c.sent,
                        c.answered
                    );
                }
                for e in &v.channel_events {
                    let _ = writeln!(s, "      outbox {e}");
                }
            }
        }
        let verdict = if self.failed() { "FAILED" } else { "OK" };
        let _ = writeln!(
            s,
            "\n{verdict}: {} lost, {} duplicated, {} out of order",
            t.lost, t.duplicated, t.out_of_order
        );
        s
    }
}
