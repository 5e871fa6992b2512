//! The floor (`otako-bench floor`): what the kernel alone charges for the
//! latency scenario's deliveries on this machine, measured with no gateway,
//! no broker and no protocol.
//!
//! A relay process (`otako-bench floor-relay`, one thread, blocking sockets:
//! no epoll, no runtime, no parsing) holds the sessions' TCP connections
//! with `TCP_NODELAY` set, as the gateway and nats-server do. For each
//! message it does one read(2) of a 4-byte channel index from its control
//! socket, then one write(2) of a ready-made frame to each of that
//! channel's members. The bench holds the other ends, paces the messages
//! as the latency scenario does, and reads the relay's CPU time and sleeps
//! from `/proc` over the measuring window. That is the cheapest way any
//! process can take one message in and hand it to ten sockets here, so it
//! bounds from below what a gateway (or the peer, whose job is the same
//! read and ten writes plus its protocol) can spend per message.

use crate::measure;
use crate::process::{die_with_parent, raise_nofile_limit};
use clap::Args;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Channels; each message goes to one, in turn.
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Sessions per channel.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of sending before the measuring window.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Seconds of the measuring window.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Bytes of each delivered frame: a gateway's MESSAGE_CREATE frame of
    /// the latency scenario is about this size.
    #[arg(long, default_value_t = 300)]
    pub frame_bytes: usize,
}

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    #[arg(long)]
    pub sessions: usize,
    #[arg(long)]
    pub members: usize,
    #[arg(long)]
    pub frame_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("relay socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the relay did not say its port: {0:?}")]
    NoPort(String),
    #[error("channel index {index} is past the {channels} channels")]
    BadChannel { index: usize, channels: usize },
    #[error("reading the relay's CPU time: {0}")]
    Proc(#[from] measure::ProcError),
    #[error("the sessions read {got} bytes, not the {sent} the messages make")]
    Miscount { got: u64, sent: u64 },
}

/// What one run measured over its window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloorResult {
    pub messages: u64,
    pub deliveries: u64,
    pub relay_cpu_us_per_message: f64,
    pub relay_cpu_us_per_delivery: f64,
    pub relay_sleeps_per_message: f64,
    pub busy_cores: f64,
    pub stolen_cores: f64,
    pub loadavg_at_start: f64,
}

/// The relay process: accepts the control connection, then `sessions`
/// connections in order (connection k is session k, channel k / members),
/// and writes the frame to a channel's members for each index it reads.
/// Returns when the control connection closes.
pub fn relay(args: &RelayArgs) -> Result<(), FloorError> {
    raise_nofile_limit();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    serve(listener, args)
}

fn serve(listener: TcpListener, args: &RelayArgs) -> Result<(), FloorError> {
    let (mut control, _) = listener.accept()?;
    let mut sessions = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        let (socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        sessions.push(socket);
    }
    let channels = args.sessions / args.members.max(1);
    let frame = vec![b'x'; args.frame_bytes];
    let mut buf = [0u8; 4096];
    let mut held = 0;
    loop {
        let n = control.read(&mut buf[held..])?;
        if n == 0 {
            return Ok(());
        }
        held += n;
        let whole = held - held % 4;
        for index in buf[..whole].chunks_exact(4) {
            let c = u32::from_le_bytes(index.try_into().expect("4 bytes")) as usize;
            if c >= channels {
                return Err(FloorError::BadChannel { index: c, channels });
            }
            for socket in &sessions[c * args.members..(c + 1) * args.members] {
                (&*socket).write_all(&frame)?;
            }
        }
        buf.copy_within(whole..held, 0);
        held -= whole;
    }
}

/// Starts the relay, drives it and measures it.
pub async fn run(args: &FloorArgs) -> Result<FloorResult, FloorError> {
    raise_nofile_limit();
    let sessions = args.channels * args.members;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "floor-relay",
        "--sessions",
        &sessions.to_string(),
        "--members",
        &args.members.to_string(),
        "--frame-bytes",
        &args.frame_bytes.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = KillOnDrop(cmd.spawn()?);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(FloorError::Io)?;
    let port: u16 = line
        .trim()
        .parse()
        .map_err(|_| FloorError::NoPort(line.clone()))?;
    let pid = child.0.id();
    let result = drive(args, port, Some(pid)).await?;
    let _ = child.0.wait();
    Ok(result)
}

/// Connects the control socket and the sessions to a relay on `port`,
/// sends the messages and reads `pid`'s CPU over the window (none: a
/// relay in this process, as the unit test runs it).
async fn drive(args: &FloorArgs, port: u16, pid: Option<u32>) -> Result<FloorResult, FloorError> {
    let loadavg_at_start = crate::procfs::loadavg();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut control = TcpStream::connect(addr)?;
    control.set_nodelay(true)?;
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..args.channels * args.members {
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        readers.spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut bytes = 0u64;
            while let Ok(n @ 1..) = socket.read(&mut buf).await {
                bytes += n as u64;
            }
            bytes
        });
    }
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let warmup = (args.warmup * args.rate) as u64;
    let window = (args.seconds * args.rate) as u64;
    let mut next_channel = 0u32;
    let mut send = |control: &mut TcpStream| -> Result<(), FloorError> {
        control.write_all(&next_channel.to_le_bytes())?;
        next_channel = (next_channel + 1) % args.channels as u32;
        Ok(())
    };
    for _ in 0..warmup {
        ticks.tick().await;
        send(&mut control)?;
    }
    let cpu = |pid: Option<u32>| pid.map_or(Ok(Duration::ZERO), measure::cpu_time);
    let sleeps = |pid: Option<u32>| pid.map_or(Ok(0), measure::sleeps);
    let (cpu0, sleeps0, machine0) = (cpu(pid)?, sleeps(pid)?, measure::machine_cpu());
    for _ in 0..window {
        ticks.tick().await;
        send(&mut control)?;
    }
    let (cpu1, sleeps1, machine1) = (cpu(pid)?, sleeps(pid)?, measure::machine_cpu());
    let wall = machine1
        .at
        .zip(machine0.at)
        .map_or(Duration::ZERO, |(b, a)| b.duration_since(a));
    drop(control);
    // The relay ends when the control socket closes, which closes every
    // session: the readers' counts are then final.
    let sent = (warmup + window) * args.members as u64 * args.frame_bytes as u64;
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
    let deliveries = window * args.members as u64;
    let cpu_us = (cpu1 - cpu0).as_secs_f64() * 1e6;
    let cores = |d: Duration| d.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    Ok(FloorResult {
        messages: window,
        deliveries,
        relay_cpu_us_per_message: cpu_us / window.max(1) as f64,
        relay_cpu_us_per_delivery: cpu_us / deliveries.max(1) as f64,
        relay_sleeps_per_message: (sleeps1 - sleeps0) as f64 / window.max(1) as f64,
        busy_cores: cores(machine1.busy_since(&machine0)),
        stolen_cores: cores(machine1.stolen_since(&machine0)),
        loadavg_at_start,
    })
}

pub fn table(r: &FloorResult) -> String {
    format!(
        "floor: one read(2) and a write(2) per member, blocking sockets, one thread\n\
         messages {} / deliveries {}\n\
         relay CPU {:.1} us per message, {:.2} us per delivery\n\
         relay sleeps {:.2} per message\n\
         machine: {:.2} busy / {:.2} stolen cores, load {:.2} at start\n",
        r.messages,
        r.deliveries,
        r.relay_cpu_us_per_message,
        r.relay_cpu_us_per_delivery,
        r.relay_sleeps_per_message,
        r.busy_cores,
        r.stolen_cores,
        r.loadavg_at_start,
    )
}

/// The relay dies with the run, even one that fails half-way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drive_a_relay(relay_members: usize) -> Result<FloorResult, FloorError> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay_args = RelayArgs {
            sessions: 6,
            members: relay_members,
            frame_bytes: 50,
        };
        let relay = std::thread::spawn(move || serve(listener, &relay_args));
        let args = FloorArgs {
            channels: 3,
            members: 2,
            rate: 500.0,
            warmup: 0.02,
            seconds: 0.1,
            frame_bytes: 50,
        };
        let result = drive(&args, port, None).await;
        relay.join().unwrap().unwrap();
        result
    }

    /// The run counts every byte the sessions read, so a relay that writes
    /// to the wrong number of sessions per message fails it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_message_reaches_its_channels_members_and_no_one_else() {
        let result = drive_a_relay(2).await.unwrap();
        assert_eq!((result.messages, result.deliveries), (50, 100));
        let err = drive_a_relay(1).await.unwrap_err();
        assert!(
            matches!(err, FloorError::Miscount { got: 3_000, sent: 6_000 }),
            "{err}"
        );
    }

    #[test]
    fn an_index_past_the_channels_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let relay = std::thread::spawn(move || {
            serve(
                listener,
                &RelayArgs {
                    sessions: 2,
                    members: 2,
                    frame_bytes: 10,
                },
            )
        });
        let mut control = TcpStream::connect(addr).unwrap();
        let _a = TcpStream::connect(addr).unwrap();
        let _b = TcpStream::connect(addr).unwrap();
        control.write_all(&7u32.to_le_bytes()).unwrap();
        let err = relay.join().unwrap().unwrap_err();
        assert!(
            matches!(err, FloorError::BadChannel { index: 7, channels: 1 }),
            "{err}"
        );
    }
}
