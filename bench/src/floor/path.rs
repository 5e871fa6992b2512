//! The contract's path at its floor: a broker, the nodes and a database
//! stand-in pass each event along the hops Otako's event takes, as 16-byte
//! messages (tag, handling node, two spare bytes, channel, send stamp):
//!
//! driver -REQ-> broker -REQ-> node (channel % nodes, the queue group)
//! -QUERY-> db -ROW-> node -APPEND-> broker -HIST-> every node, each of
//! which writes the frame to its members of the channel; the handling node
//! then -REPLY-> broker -REPLY-> driver.
//!
//! That is the latency scenario's traffic less its content: the same
//! sockets, the same number of messages on each, the same wake-ups when
//! events do not overlap.

use super::{
    all_answered, count_sessions, frame, hold_sessions, latency_line, serve_inboxes, stamp_of,
    FloorArgs, FloorError, Hop, HopArgs, Inbox, Latencies, MachineWindow, Pacer, Usage, STAMP,
};
use crate::latency::{LatencySummary, WakeupProbe};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const REQ: u8 = 1;
const QUERY: u8 = 2;
const ROW: u8 = 3;
const APPEND: u8 = 4;
const HIST: u8 = 5;
const REPLY: u8 = 6;
/// The first byte the driver sends the broker; a node sends its index.
const DRIVER: u8 = 0xff;

const MESSAGE: usize = 8 + STAMP;

fn message(tag: u8, handler: u8, channel: u32, stamp: i64) -> [u8; MESSAGE] {
    let mut m = [0u8; MESSAGE];
    m[0] = tag;
    m[1] = handler;
    m[4..8].copy_from_slice(&channel.to_le_bytes());
    m[8..].copy_from_slice(&stamp.to_le_bytes());
    m
}

/// The same message with a new tag and handler: channel and stamp travel on.
fn next(m: &[u8], tag: u8, handler: u8) -> [u8; MESSAGE] {
    message(tag, handler, channel_of(m), stamp_of(&m[8..]))
}

fn channel_of(m: &[u8]) -> u32 {
    u32::from_le_bytes(m[4..8].try_into().expect("a whole message"))
}

fn accepted(listener: &TcpListener) -> Result<TcpStream, FloorError> {
    let (socket, _) = listener.accept()?;
    socket.set_nodelay(true)?;
    Ok(socket)
}

fn dial(port: u16) -> Result<TcpStream, FloorError> {
    let socket = TcpStream::connect(("127.0.0.1", port))?;
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// Serves until any input closes: the run is over.
pub fn broker(listener: TcpListener, args: &HopArgs) -> Result<(), FloorError> {
    let mut driver = None;
    let mut nodes: Vec<Option<TcpStream>> = (0..args.nodes).map(|_| None).collect();
    for _ in 0..=args.nodes {
        let mut socket = accepted(&listener)?;
        let mut who = [0u8];
        socket.read_exact(&mut who)?;
        match who[0] {
            DRIVER => driver = Some(socket),
            k => *nodes.get_mut(k as usize).ok_or(FloorError::BadNode(k))? = Some(socket),
        }
    }
    let (Some(driver), Some(nodes)) = (driver, nodes.into_iter().collect::<Option<Vec<_>>>())
    else {
        return Err(FloorError::Unheard);
    };
    let to_driver = driver.try_clone()?;
    let to_nodes = nodes
        .iter()
        .map(TcpStream::try_clone)
        .collect::<Result<Vec<_>, _>>()?;
    let mut inboxes: Vec<Inbox> = std::iter::once(driver)
        .chain(nodes)
        .map(Inbox::new)
        .collect();
    serve_inboxes(&mut inboxes, MESSAGE, |_, m| {
        let c = channel_of(m);
        match m[0] {
            REQ => (&to_nodes[c as usize % to_nodes.len()]).write_all(&next(m, REQ, 0))?,
            APPEND => {
                for node in &to_nodes {
                    (&*node).write_all(&next(m, HIST, m[1]))?;
                }
            }
            REPLY => (&to_driver).write_all(&next(m, REPLY, m[1]))?,
            t => return Err(FloorError::BadTag(t)),
        }
        Ok(())
    })
}

/// Serves until any input closes.
pub fn db(listener: TcpListener, args: &HopArgs) -> Result<(), FloorError> {
    let mut inboxes = Vec::with_capacity(args.nodes);
    for _ in 0..args.nodes {
        inboxes.push(Inbox::new(accepted(&listener)?));
    }
    let answers = inboxes
        .iter()
        .map(|i| i.socket.try_clone())
        .collect::<Result<Vec<_>, _>>()?;
    serve_inboxes(&mut inboxes, MESSAGE, |from, m| match m[0] {
        QUERY => Ok((&answers[from]).write_all(&next(m, ROW, 0))?),
        t => Err(FloorError::BadTag(t)),
    })
}

/// Node `index` of `nodes`: dials the broker and the database, then holds
/// every `nodes`-th session (session s is channel s / members), and serves
/// until the broker's connection closes.
pub fn node(listener: TcpListener, args: &HopArgs) -> Result<(), FloorError> {
    let (Some(broker_port), Some(db_port)) = (args.broker, args.db) else {
        return Err(FloorError::NoPeers);
    };
    let broker = dial(broker_port)?;
    (&broker).write_all(&[args.index as u8])?;
    let db = dial(db_port)?;
    let members = args.members.max(1);
    let mut sessions = Vec::with_capacity(args.sessions);
    let mut local: Vec<Vec<usize>> = Vec::new();
    for i in 0..args.sessions {
        sessions.push(accepted(&listener)?);
        let channel = (args.index + i * args.nodes) / members;
        if local.len() <= channel {
            local.resize_with(channel + 1, Vec::new);
        }
        local[channel].push(i);
    }
    let mut frame = frame(args.frame_bytes);
    let (to_broker, to_db) = (broker.try_clone()?, db.try_clone()?);
    let me = args.index as u8;
    let mut inboxes = [Inbox::new(broker), Inbox::new(db)];
    serve_inboxes(&mut inboxes, MESSAGE, |_, m| {
        let c = channel_of(m);
        match m[0] {
            REQ => (&to_db).write_all(&next(m, QUERY, 0))?,
            ROW => (&to_broker).write_all(&next(m, APPEND, me))?,
            HIST => {
                frame[..STAMP].copy_from_slice(&m[8..]);
                let channel = local.get(c as usize).map_or(&[][..], Vec::as_slice);
                for &k in channel {
                    (&sessions[k]).write_all(&frame)?;
                }
                if m[1] == me {
                    (&to_broker).write_all(&next(m, REPLY, me))?;
                }
            }
            t => return Err(FloorError::BadTag(t)),
        }
        Ok(())
    })
}

/// What one run measured over its window, per message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathResult {
    pub messages: u64,
    pub deliveries: u64,
    /// (CPU µs, sleeps) per message.
    pub nodes: (f64, f64),
    pub broker: (f64, f64),
    pub db: (f64, f64),
    pub latency_us: Option<LatencySummary>,
    pub machine: MachineWindow,
}

/// The started processes of one path run.
pub struct Pids {
    pub nodes: Vec<u32>,
    pub broker: Vec<u32>,
    pub db: Vec<u32>,
}

/// Starts the database stand-in, the broker and the nodes, drives them and
/// measures them.
pub async fn run(args: &FloorArgs) -> Result<PathResult, FloorError> {
    let n = args.nodes.max(1);
    let sessions = args.channels * args.members;
    let db = Hop::start(&[
        "--role".into(),
        "db".into(),
        "--nodes".into(),
        n.to_string(),
    ])?;
    let broker = Hop::start(&[
        "--role".into(),
        "broker".into(),
        "--nodes".into(),
        n.to_string(),
    ])?;
    let nodes = (0..n)
        .map(|k| {
            Hop::start(&[
                "--role".into(),
                "node".into(),
                "--index".into(),
                k.to_string(),
                "--nodes".into(),
                n.to_string(),
                "--sessions".into(),
                // Node k holds sessions k, k + n, ...
                ((sessions + n - 1 - k) / n).to_string(),
                "--members".into(),
                args.members.to_string(),
                "--frame-bytes".into(),
                args.frame_bytes.to_string(),
                "--broker".into(),
                broker.port.to_string(),
                "--db".into(),
                db.port.to_string(),
            ])
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports: Vec<u16> = nodes.iter().map(|h| h.port).collect();
    let pids = Pids {
        nodes: nodes.iter().map(Hop::pid).collect(),
        broker: vec![broker.pid()],
        db: vec![db.pid()],
    };
    drive(args, broker.port, &ports, &pids).await
}

async fn drive(
    args: &FloorArgs,
    broker_port: u16,
    node_ports: &[u16],
    pids: &Pids,
) -> Result<PathResult, FloorError> {
    let load = crate::procfs::loadavg();
    let latencies = Latencies::new();
    let readers = hold_sessions(
        args.channels * args.members,
        |k| node_ports[k % node_ports.len()],
        args.frame_bytes,
        &latencies,
    )
    .await?;
    let mut driver = dial(broker_port)?;
    driver.write_all(&[DRIVER])?;
    let replies = Arc::new(AtomicU64::new(0));
    let mut reply_inbox = Inbox::new(driver.try_clone()?);
    let counter = replies.clone();
    std::thread::spawn(move || {
        while let Ok(true) = reply_inbox.read(MESSAGE, |m| {
            if m[0] == REPLY {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }) {}
    });
    let mut pacer = Pacer::new(args);
    let mut next = 0u32;
    let mut send = |stamp: i64| -> Result<(), FloorError> {
        driver.write_all(&message(REQ, 0, next, stamp))?;
        next = (next + 1) % args.channels as u32;
        Ok(())
    };
    pacer.send(pacer.warmup, &mut send).await?;
    let all = |p: &Pids| [Usage::of(&p.nodes), Usage::of(&p.broker), Usage::of(&p.db)];
    let (usage0, machine0) = (all(pids), crate::measure::machine_cpu());
    let probe = WakeupProbe::start();
    latencies.open();
    pacer.send(pacer.window, &mut send).await?;
    latencies.close();
    let (usage1, machine1) = (all(pids), crate::measure::machine_cpu());
    let wakeup = probe.finish();
    // Every reply back means every delivery written: then the end of the
    // driver's connection ends the broker, the broker's the nodes, and the
    // nodes' the sessions and the database.
    let sent = pacer.warmup + pacer.window;
    all_answered(&replies, sent).await?;
    // The reply reader holds a clone of the socket, so only a shutdown
    // ends the connection.
    driver.shutdown(std::net::Shutdown::Both)?;
    count_sessions(
        readers,
        sent * (args.members * frame(args.frame_bytes).len()) as u64,
    )
    .await?;
    let per = |i: usize| usage1[i].per_message_since(&usage0[i], pacer.window);
    Ok(PathResult {
        messages: pacer.window,
        deliveries: pacer.window * args.members as u64,
        nodes: per(0),
        broker: per(1),
        db: per(2),
        latency_us: latencies.summary()?,
        machine: MachineWindow::between(&machine0, &machine1, wakeup, load),
    })
}

pub fn table(r: &PathResult) -> String {
    let per_delivery = |us: f64| us * r.messages as f64 / r.deliveries.max(1) as f64;
    let whole = r.nodes.0 + r.broker.0 + r.db.0;
    format!(
        "floor of the contract's path: request, query, row, append, history to every node, frames, reply\n\
         messages {} / deliveries {}\n\
         nodes CPU {:.1} us per message ({:.2} per delivery), {:.2} sleeps per message\n\
         broker CPU {:.1} us per message ({:.2} per delivery), {:.2} sleeps per message\n\
         database CPU {:.1} us per message ({:.2} per delivery), {:.2} sleeps per message\n\
         whole path {:.1} us per message, {:.2} per delivery\n\
         {}\n\
         {}\n",
        r.messages,
        r.deliveries,
        r.nodes.0,
        per_delivery(r.nodes.0),
        r.nodes.1,
        r.broker.0,
        per_delivery(r.broker.0),
        r.broker.1,
        r.db.0,
        per_delivery(r.db.0),
        r.db.1,
        whole,
        per_delivery(whole),
        latency_line(r.latency_us),
        r.machine.line(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::Role;
    use super::*;

    fn listen() -> (TcpListener, u16) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    /// Runs the path in threads: two nodes, three channels of `members`,
    /// the nodes told `node_members`.
    async fn drive_a_path(node_members: usize) -> Result<PathResult, FloorError> {
        let hop = |role, index, sessions, broker, db| HopArgs {
            role,
            sessions,
            members: node_members,
            nodes: 2,
            index,
            frame_bytes: 40,
            broker,
            db,
        };
        let (db_l, db_port) = listen();
        let (broker_l, broker_port) = listen();
        let mut threads = Vec::new();
        let a = hop(Role::Db, 0, 0, None, None);
        threads.push(std::thread::spawn(move || db(db_l, &a)));
        let a = hop(Role::Broker, 0, 0, None, None);
        threads.push(std::thread::spawn(move || broker(broker_l, &a)));
        let mut ports = Vec::new();
        for k in 0..2 {
            let (l, port) = listen();
            ports.push(port);
            let a = hop(Role::Node, k, 3, Some(broker_port), Some(db_port));
            threads.push(std::thread::spawn(move || node(l, &a)));
        }
        let args = FloorArgs::short(2, 40);
        let pids = Pids {
            nodes: vec![],
            broker: vec![],
            db: vec![],
        };
        let result = drive(&args, broker_port, &ports, &pids).await;
        for t in threads {
            t.join().unwrap().unwrap();
        }
        result
    }

    /// Every event is answered once and reaches exactly its channel's
    /// members; nodes that route to the wrong sessions fail the count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_event_is_answered_and_reaches_its_members_only() {
        let result = drive_a_path(2).await.unwrap();
        assert_eq!((result.messages, result.deliveries), (50, 100));
        // Told channels of 1, the nodes see six channels where there are
        // three: channels 0-2 are sessions 0-2, so some members miss out.
        let err = drive_a_path(1).await.unwrap_err();
        assert!(matches!(err, FloorError::Miscount { .. }), "{err}");
    }
}
