//! The peer's job at its floor: one process reads a message (a 4-byte
//! channel index and its send stamp) from its control socket and writes a
//! ready-made frame, the stamp at its front, to each of that channel's
//! members (connection k is session k, of channel k / members).

use super::{
    count_sessions, frame, hold_sessions, latency_line, FloorArgs, FloorError, Hop, HopArgs, Inbox,
    Latencies, MachineWindow, Pacer, Usage, STAMP,
};
use crate::latency::{LatencySummary, WakeupProbe};
use std::io::Write;
use std::net::{TcpListener, TcpStream};

/// What one run measured over its window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FanoutResult {
    pub messages: u64,
    pub deliveries: u64,
    pub cpu_us_per_message: f64,
    pub sleeps_per_message: f64,
    pub latency_us: Option<LatencySummary>,
    pub machine: MachineWindow,
}

/// A control message: the channel, then the send stamp.
const MESSAGE: usize = 4 + STAMP;

/// The relay: accepts the control connection, then `sessions` connections
/// in order, and serves until the control connection closes.
pub fn serve(listener: TcpListener, args: &HopArgs) -> Result<(), FloorError> {
    let (control, _) = listener.accept()?;
    let mut sessions = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        let (socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        sessions.push(socket);
    }
    let members = args.members.max(1);
    let channels = args.sessions / members;
    let mut frame = frame(args.frame_bytes);
    let mut control = Inbox::new(control);
    while control.read(MESSAGE, |m| {
        let c = u32::from_le_bytes(m[..4].try_into().expect("4 bytes")) as usize;
        if c >= channels {
            return Err(FloorError::BadChannel { index: c, channels });
        }
        frame[..STAMP].copy_from_slice(&m[4..]);
        for socket in &sessions[c * members..(c + 1) * members] {
            (&*socket).write_all(&frame)?;
        }
        Ok(())
    })? {}
    Ok(())
}

/// Starts the relay, drives it and measures it.
pub async fn run(args: &FloorArgs) -> Result<FanoutResult, FloorError> {
    let hop = Hop::start(&[
        "--role".into(),
        "fanout".into(),
        "--sessions".into(),
        (args.channels * args.members).to_string(),
        "--members".into(),
        args.members.to_string(),
        "--frame-bytes".into(),
        args.frame_bytes.to_string(),
    ])?;
    drive(args, hop.port, &[hop.pid()]).await
}

/// Connects the control socket and the sessions to a relay on `port`,
/// sends the messages and reads `pids`' CPU over the window.
async fn drive(args: &FloorArgs, port: u16, pids: &[u32]) -> Result<FanoutResult, FloorError> {
    let load = crate::procfs::loadavg();
    let mut control = TcpStream::connect(("127.0.0.1", port))?;
    control.set_nodelay(true)?;
    let latencies = Latencies::new();
    let readers = hold_sessions(
        args.channels * args.members,
        |_| port,
        args.frame_bytes,
        &latencies,
    )
    .await?;
    let mut pacer = Pacer::new(args);
    let mut next = 0u32;
    let mut send = |stamp: i64| -> Result<(), FloorError> {
        let mut m = [0u8; MESSAGE];
        m[..4].copy_from_slice(&next.to_le_bytes());
        m[4..].copy_from_slice(&stamp.to_le_bytes());
        control.write_all(&m)?;
        next = (next + 1) % args.channels as u32;
        Ok(())
    };
    pacer.send(pacer.warmup, &mut send).await?;
    let (usage0, machine0) = (Usage::of(pids), crate::measure::machine_cpu());
    let probe = WakeupProbe::start();
    latencies.open();
    pacer.send(pacer.window, &mut send).await?;
    latencies.close();
    let (usage1, machine1) = (Usage::of(pids), crate::measure::machine_cpu());
    let wakeup = probe.finish();
    drop(control);
    // The relay ends when its control socket closes, which closes every
    // session: the readers' counts are then final.
    let sent =
        (pacer.warmup + pacer.window) * (args.members * frame(args.frame_bytes).len()) as u64;
    count_sessions(readers, sent).await?;
    let (cpu_us_per_message, sleeps_per_message) = usage1.per_message_since(&usage0, pacer.window);
    Ok(FanoutResult {
        messages: pacer.window,
        deliveries: pacer.window * args.members as u64,
        cpu_us_per_message,
        sleeps_per_message,
        latency_us: latencies.summary()?,
        machine: MachineWindow::between(&machine0, &machine1, wakeup, load),
    })
}

pub fn table(r: &FanoutResult) -> String {
    format!(
        "floor of the peer's job: one read(2) and a write(2) per member\n\
         messages {} / deliveries {}\n\
         relay CPU {:.1} us per message, {:.2} us per delivery, {:.2} sleeps per message\n\
         {}\n\
         {}\n",
        r.messages,
        r.deliveries,
        r.cpu_us_per_message,
        r.cpu_us_per_message * r.messages as f64 / r.deliveries.max(1) as f64,
        r.sleeps_per_message,
        latency_line(r.latency_us),
        r.machine.line(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drive_a_relay(relay_members: usize) -> Result<FanoutResult, FloorError> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hop = HopArgs {
            role: super::super::Role::Fanout,
            sessions: 6,
            members: relay_members,
            nodes: 1,
            index: 0,
            frame_bytes: 50,
            broker: None,
            db: None,
        };
        let relay = std::thread::spawn(move || serve(listener, &hop));
        let args = FloorArgs::short(1, 50);
        let result = drive(&args, port, &[]).await;
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
            matches!(
                err,
                FloorError::Miscount {
                    got: 3_000,
                    sent: 6_000
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_index_past_the_channels_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hop = HopArgs {
            role: super::super::Role::Fanout,
            sessions: 2,
            members: 2,
            nodes: 1,
            index: 0,
            frame_bytes: 10,
            broker: None,
            db: None,
        };
        let relay = std::thread::spawn(move || serve(listener, &hop));
        let mut control = TcpStream::connect(addr).unwrap();
        let _a = TcpStream::connect(addr).unwrap();
        let _b = TcpStream::connect(addr).unwrap();
        control
            .write_all(&[7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        let err = relay.join().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                FloorError::BadChannel {
                    index: 7,
                    channels: 1
                }
            ),
            "{err}"
        );
    }
}
