//! Heartbeats for every data link of the process from one thread.
//!
//! Both ends of a data link send a HEARTBEAT frame every [`HEARTBEAT`], so
//! the other end's reader (whose read timeout is the link timeout) learns
//! that a silent link is alive and that a dead one is dead. Instead of a
//! thread per link end, each end registers the writer it sends its frames
//! through, and the ticker writes a heartbeat into each one every tick.
//!
//! The ticker never waits for a link: it skips a writer someone else holds
//! (that end is sending right now, which tells the peer just as well) and
//! a socket whose send buffer would not take the frame at once (a peer
//! that stopped reading; its own timeout or ours ends that link). It keeps
//! only weak references: a link end that is gone drops out on the next
//! tick.

use super::wire::{self, FrameType};
use crate::park::Ready;
use parking_lot::Mutex;
use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// How often each end of a link sends a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// The writer of one end of a data link: every frame of that end goes
/// through it, whole, under its lock.
pub type LinkWriter = Arc<Mutex<BufWriter<TcpStream>>>;

/// A new link writer over `stream`, registered for heartbeats.
pub fn writer(stream: TcpStream, capacity: usize) -> LinkWriter {
    let w = Arc::new(Mutex::new(BufWriter::with_capacity(capacity, stream)));
    register(&w);
    w
}

/// Give `w` a buffer of `capacity` bytes, flushing what the old one holds
/// (nothing, between batches). A link's sender holds a large one while it
/// runs, so a batch of frames goes out in few writes; an idle link a small
/// one, so a thousand of them do not keep a megabyte each resident. The
/// buffer's stream is a duplicate of the same socket: the old descriptor
/// closes, the connection stays.
pub fn set_capacity(w: &LinkWriter, capacity: usize) -> std::io::Result<()> {
    let mut g = w.lock();
    if g.capacity() == capacity {
        return Ok(());
    }
    g.flush()?;
    let stream = g.get_ref().try_clone()?;
    *g = BufWriter::with_capacity(capacity, stream);
    Ok(())
}

/// Every registered writer, weakly.
type Registry = Mutex<Vec<Weak<Mutex<BufWriter<TcpStream>>>>>;

fn register(w: &LinkWriter) {
    let t = ticker();
    t.lock().push(Arc::downgrade(w));
}

/// The registry, and the ticker thread started with it.
fn ticker() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    static STARTED: std::sync::Once = std::sync::Once::new();
    let reg = REG.get_or_init(|| Mutex::new(Vec::new()));
    STARTED.call_once(|| {
        std::thread::Builder::new()
            .name("repl-heartbeat".into())
            .spawn(move || loop {
                std::thread::sleep(HEARTBEAT);
                tick(reg);
            })
            .expect("start the replication heartbeat thread");
    });
    reg
}

fn tick(reg: &Registry) {
    // Upgrade under the registry lock, write outside it: registering a
    // new link never waits for a tick's sockets.
    let live: Vec<LinkWriter> = {
        let mut r = reg.lock();
        r.retain(|w| w.strong_count() > 0);
        r.iter().filter_map(Weak::upgrade).collect()
    };
    for w in live {
        let Some(mut g) = w.try_lock() else { continue };
        if !g.buffer().is_empty() || !writable_now(g.get_ref()) {
            continue;
        }
        // An error here is the link's reader's business (it sees the
        // connection end, or no heartbeat within the timeout).
        let _ = wire::write_frame(&mut *g, FrameType::Heartbeat, &[]).and_then(|()| {
            g.flush()?;
            Ok(())
        });
    }
}

/// Whether the socket's send buffer takes a small frame without blocking.
fn writable_now(s: &TcpStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLOUT) && !r.contains(PollFlags::POLLERR))
}

/// The one encoding of a HEARTBEAT frame (a header without payload).
fn heartbeat_frame() -> &'static [u8; wire::HEADER_BYTES] {
    static F: OnceLock<[u8; wire::HEADER_BYTES]> = OnceLock::new();
    F.get_or_init(|| {
        let mut v = Vec::with_capacity(wire::HEADER_BYTES);
        wire::write_frame(&mut v, FrameType::Heartbeat, &[]).expect("a header fits a Vec");
        v.try_into().expect("a heartbeat is one header")
    })
}

/// A parked link end's readable hook (`crate::park`): consume the
/// heartbeats waiting on `s` without blocking. [`Ready::Alive`] when it
/// took at least one and nothing else waits; [`Ready::Wake`] when anything
/// else is there (another frame or part of one, the end of the stream, an
/// error): the link's thread reads it.
pub fn take_heartbeats(s: &TcpStream) -> Ready {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let mut took = false;
    loop {
        let mut hdr = [0u8; wire::HEADER_BYTES];
        match recv(fd, &mut hdr, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(n) if n == hdr.len() && &hdr == heartbeat_frame() => {
                // Peeked whole, so this takes exactly those bytes.
                if recv(fd, &mut hdr, MsgFlags::MSG_DONTWAIT) != Ok(hdr.len()) {
                    return Ready::Wake;
                }
                took = true;
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return if took { Ready::Alive } else { Ready::Stay };
            }
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return Ready::Wake,
        }
    }
}
