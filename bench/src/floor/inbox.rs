//! How the floor's processes read their inputs: whole fixed-size messages
//! from each socket, poll(2) over several.

use super::FloorError;
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// A socket's unread bytes, taken whole messages at a time.
pub struct Inbox {
    pub socket: TcpStream,
    buf: Vec<u8>,
    held: usize,
}

impl Inbox {
    pub fn new(socket: TcpStream) -> Inbox {
        Inbox {
            socket,
            buf: vec![0; 4096],
            held: 0,
        }
    }

    /// One read(2), then `each` for every whole `size`-byte message held.
    /// False once the peer has closed.
    pub fn read(
        &mut self,
        size: usize,
        mut each: impl FnMut(&[u8]) -> Result<(), FloorError>,
    ) -> Result<bool, FloorError> {
        let n = self.socket.read(&mut self.buf[self.held..])?;
        if n == 0 {
            return Ok(false);
        }
        self.held += n;
        let whole = self.held - self.held % size;
        for message in self.buf[..whole].chunks_exact(size) {
            each(message)?;
        }
        self.buf.copy_within(whole..self.held, 0);
        self.held -= whole;
        Ok(true)
    }
}

/// Serves `inboxes` until any of them closes (the run is over): waits
/// until some are readable, reads each once and hands every whole
/// `size`-byte message to `handle` with the index of its inbox.
pub fn serve_inboxes(
    inboxes: &mut [Inbox],
    size: usize,
    mut handle: impl FnMut(usize, &[u8]) -> Result<(), FloorError>,
) -> Result<(), FloorError> {
    loop {
        let readable = ready(inboxes)?;
        for (from, (inbox, _)) in inboxes
            .iter_mut()
            .zip(readable)
            .enumerate()
            .filter(|(_, (_, r))| *r)
        {
            if !inbox.read(size, |m| handle(from, m))? {
                return Ok(());
            }
        }
    }
}

/// Blocks until at least one of `inboxes` is readable; which ones are.
fn ready(inboxes: &[Inbox]) -> Result<Vec<bool>, FloorError> {
    let mut fds: Vec<libc::pollfd> = inboxes
        .iter()
        .map(|i| libc::pollfd {
            fd: i.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `fds` is a live array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n >= 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err.into());
        }
    }
    Ok(fds.iter().map(|f| f.revents != 0).collect())
}
