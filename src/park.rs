//! Where idle connections wait without a thread.
//!
//! A connection that has gone quiet (an NBD client that sent nothing for a
//! while, a replication link with nothing in flight) hands its socket here
//! and its thread ends. One process-wide thread waits on every parked
//! socket with epoll. When one becomes readable it is taken out of the set
//! and its wake function runs on that thread, which starts a connection
//! thread for it again. A thousand connected, idle clients or links then
//! cost one thread instead of a thousand.
//!
//! Two refinements serve replication links, whose idle ends still hear a
//! heartbeat every half second and must notice one that stops:
//! * a *readable* hook ([`Watch::on_readable`]) runs on the poller's thread
//!   first and may consume what it understands without blocking (the
//!   heartbeats); when it says [`Ready::Stay`] the socket stays parked and
//!   no thread starts;
//! * a *timeout* ([`Watch::timeout`]): a socket whose hook reported no
//!   sign of life ([`Ready::Alive`]) for that long is woken with
//!   [`Woken::TimedOut`]. Deadlines are checked every [`TIMEOUT_TICK`], so
//!   one fires up to that much late.
//!
//! The wake function owns the socket (the payload holds the stream), so
//! the descriptor the epoll set names stays open until the poller removed
//! it.

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often the poller checks the deadlines of parked sockets that have a
/// timeout: a tenth of the shortest link timeout we allow (1 s).
pub const TIMEOUT_TICK: Duration = Duration::from_millis(100);

/// Why a parked socket's wake function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// Something arrived that the readable hook left for the thread (or
    /// the peer closed, or the socket was shut down).
    Readable,
    /// The timeout passed without a sign of life.
    TimedOut,
}

/// What a readable hook found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// It consumed a sign of life (a heartbeat): stay parked, deadline
    /// renewed.
    Alive,
    /// Nothing it could use and nothing to hand on (a spurious wake-up):
    /// stay parked, deadline unchanged.
    Stay,
    /// Wake the owner: there is something its thread must read.
    Wake,
}

/// How a parked socket is watched besides readability.
pub struct Watch<T> {
    /// Runs on the poller's thread each time the socket is readable; must
    /// not block.
    pub on_readable: fn(&mut T) -> Ready,
    /// Wake with [`Woken::TimedOut`] after this long without
    /// [`Ready::Alive`].
    pub timeout: Duration,
}

/// One parked socket, its payload type erased.
trait Entry: Send {
    fn readable(&mut self) -> Ready;
    fn wake(self: Box<Self>, why: Woken);
}

struct Holder<T, W> {
    payload: T,
    on_readable: Option<fn(&mut T) -> Ready>,
    wake: W,
}

impl<T: Send, W: FnOnce(T, Woken) + Send> Entry for Holder<T, W> {
    fn readable(&mut self) -> Ready {
        match self.on_readable {
            Some(f) => f(&mut self.payload),
            None => Ready::Wake,
        }
    }

    fn wake(self: Box<Self>, why: Woken) {
        (self.wake)(self.payload, why)
    }
}

struct Parked {
    fd: RawFd,
    entry: Box<dyn Entry>,
    /// The timeout and the deadline it sets, for a watched socket.
    timeout: Option<(Duration, Instant)>,
}

struct Poller {
    epoll: Epoll,
    parked: Mutex<HashMap<u64, Parked>>,
    next: AtomicU64,
    /// Parked sockets with a timeout: while any are, the poller wakes every
    /// [`TIMEOUT_TICK`].
    timed: AtomicUsize,
}

fn poller() -> Option<&'static Poller> {
    static P: OnceLock<Option<Poller>> = OnceLock::new();
    P.get_or_init(|| {
        let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(e) => e,
            Err(e) => {
                log::error!("no epoll for idle connections ({e}); they keep their threads");
                return None;
            }
        };
        let started = std::thread::Builder::new()
            .name("conn-idle".into())
            .spawn(|| run(poller().expect("the poller exists once its thread runs")));
        if let Err(e) = started {
            log::error!(
                "cannot start the idle-connection thread ({e}); connections keep their threads"
            );
            return None;
        }
        Some(Poller {
            epoll,
            parked: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            timed: AtomicUsize::new(0),
        })
    })
    .as_ref()
}

fn interest(token: u64) -> EpollEvent {
    EpollEvent::new(
        EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT,
        token,
    )
}

/// Park the socket `fd_of(&payload)` until it is readable, then run
/// `wake(payload)` (on the poller's thread: it should only start a
/// thread). The payload owns the socket, so it stays open while parked.
/// On failure the payload comes back: the caller serves on.
pub fn park<T: Send + 'static>(
    payload: T,
    fd_of: fn(&T) -> BorrowedFd<'_>,
    wake: impl FnOnce(T) + Send + 'static,
) -> Result<(), T> {
    insert(payload, fd_of, None, move |t, _| wake(t))
}

/// [`park`] with a readable hook and a timeout (see the module notes):
/// `wake(payload, why)` runs when the hook says [`Ready::Wake`] or the
/// timeout passes.
pub fn park_watched<T: Send + 'static>(
    payload: T,
    fd_of: fn(&T) -> BorrowedFd<'_>,
    watch: Watch<T>,
    wake: impl FnOnce(T, Woken) + Send + 'static,
) -> Result<(), T> {
    insert(payload, fd_of, Some(watch), wake)
}

fn insert<T: Send + 'static>(
    payload: T,
    fd_of: fn(&T) -> BorrowedFd<'_>,
    watch: Option<Watch<T>>,
    wake: impl FnOnce(T, Woken) + Send + 'static,
) -> Result<(), T> {
    let Some(p) = poller() else {
        return Err(payload);
    };
    let token = p.next.fetch_add(1, Ordering::Relaxed);
    // Registered and recorded under one lock hold: the poller, woken at
    // once, waits for the record instead of missing it.
    let mut parked = p.parked.lock();
    let fd = fd_of(&payload);
    if let Err(e) = p.epoll.add(fd, interest(token)) {
        log::warn!("parking an idle connection: {e}");
        return Err(payload);
    }
    let raw = fd.as_raw_fd();
    let timeout = watch
        .as_ref()
        .map(|w| (w.timeout, Instant::now() + w.timeout));
    if timeout.is_some() {
        p.timed.fetch_add(1, Ordering::SeqCst);
    }
    parked.insert(
        token,
        Parked {
            fd: raw,
            entry: Box::new(Holder {
                payload,
                on_readable: watch.map(|w| w.on_readable),
                wake,
            }),
            timeout,
        },
    );
    Ok(())
}

/// Take a parked socket (already out of the records) out of the epoll set
/// and wake its owner.
fn wake(p: &Poller, parked: Parked, why: Woken) {
    // SAFETY: the entry owns the stream whose descriptor `fd` is, and its
    // wake function has not run yet, so `fd` is open for this whole call.
    let bfd = unsafe { BorrowedFd::borrow_raw(parked.fd) };
    // Out of the set before the descriptor can close (a duplicate of it,
    // such as the NBD server's registry copy, keeps the description alive,
    // and with it a registration epoll would otherwise keep).
    let _ = p.epoll.delete(bfd);
    if parked.timeout.is_some() {
        p.timed.fetch_sub(1, Ordering::SeqCst);
    }
    parked.entry.wake(why);
}

fn run(p: &'static Poller) {
    let mut events = vec![EpollEvent::empty(); 64];
    let mut last_scan = Instant::now();
    loop {
        let wait = if p.timed.load(Ordering::SeqCst) > 0 {
            EpollTimeout::try_from(TIMEOUT_TICK).expect("100 ms is a valid epoll timeout")
        } else {
            EpollTimeout::NONE
        };
        let n = match p.epoll.wait(&mut events, wait) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                log::error!("waiting on idle connections: {e}");
                std::thread::sleep(TIMEOUT_TICK);
                0
            }
        };
        for ev in &events[..n] {
            let Some(mut parked) = p.parked.lock().remove(&ev.data()) else {
                continue;
            };
            match parked.entry.readable() {
                Ready::Wake => wake(p, parked, Woken::Readable),
                stay => {
                    if let (Ready::Alive, Some((t, deadline))) = (stay, &mut parked.timeout) {
                        *deadline = Instant::now() + *t;
                    }
                    // SAFETY: as in `wake`: the entry still owns the stream.
                    let bfd = unsafe { BorrowedFd::borrow_raw(parked.fd) };
                    let mut parked_all = p.parked.lock();
                    if let Err(e) = p.epoll.modify(bfd, &mut interest(ev.data())) {
                        drop(parked_all);
                        log::warn!("re-arming a parked connection: {e}; waking it");
                        wake(p, parked, Woken::Readable);
                        continue;
                    }
                    parked_all.insert(ev.data(), parked);
                }
            }
        }
        if p.timed.load(Ordering::SeqCst) > 0 && last_scan.elapsed() >= TIMEOUT_TICK {
            let now = Instant::now();
            last_scan = now;
            let expired: Vec<Parked> = {
                let mut all = p.parked.lock();
                let due: Vec<u64> = all
                    .iter()
                    .filter(|(_, e)| e.timeout.is_some_and(|(_, d)| d <= now))
                    .map(|(k, _)| *k)
                    .collect();
                due.iter().filter_map(|k| all.remove(k)).collect()
            };
            for e in expired {
                wake(p, e, Woken::TimedOut);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::sync::mpsc;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// Consume single `h` bytes as the sign of life; anything else wakes.
    fn hearts(s: &mut TcpStream) -> Ready {
        let mut b = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        let r = match s.peek(&mut b) {
            Ok(1) if b[0] == b'h' => {
                s.read_exact(&mut b).unwrap();
                Ready::Alive
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ready::Stay,
            _ => Ready::Wake,
        };
        s.set_nonblocking(false).unwrap();
        r
    }

    #[test]
    fn a_watched_socket_stays_parked_on_heartbeats_and_wakes_on_data() {
        let (mut a, b) = pair();
        let (tx, rx) = mpsc::channel();
        let watch = Watch {
            on_readable: hearts,
            timeout: Duration::from_secs(5),
        };
        park_watched(
            b,
            |s| s.as_fd(),
            watch,
            move |mut s, why| {
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte).unwrap();
                tx.send((why, byte[0])).unwrap();
            },
        )
        .map_err(|_| "parked")
        .unwrap();
        for _ in 0..5 {
            a.write_all(b"h").unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(rx.try_recv().is_err(), "heartbeats alone must not wake it");
        a.write_all(b"x").unwrap();
        let (why, byte) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((why, byte), (Woken::Readable, b'x'));
    }

    #[test]
    fn a_silent_watched_socket_times_out_and_heartbeats_postpone_it() {
        let (mut a, b) = pair();
        let (tx, rx) = mpsc::channel();
        let timeout = Duration::from_millis(400);
        let parked_at = Instant::now();
        let watch = Watch {
            on_readable: hearts,
            timeout,
        };
        park_watched(
            b,
            |s| s.as_fd(),
            watch,
            move |_, why| {
                tx.send((why, Instant::now())).unwrap();
            },
        )
        .map_err(|_| "parked")
        .unwrap();
        // Alive for 0.8 s (twice the timeout), then silent.
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(100));
            a.write_all(b"h").unwrap();
        }
        let last = Instant::now();
        let (why, at) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(why, Woken::TimedOut);
        assert!(
            at - parked_at >= Duration::from_millis(800),
            "heartbeats renew the deadline"
        );
        assert!(
            at - last >= timeout,
            "not before the timeout after the last heartbeat"
        );
        assert!(
            at - last <= timeout + TIMEOUT_TICK * 5,
            "fired {:?} after the last heartbeat",
            at - last
        );
    }

    #[test]
    fn a_plain_parked_socket_wakes_when_the_peer_closes() {
        let (a, b) = pair();
        let (tx, rx) = mpsc::channel();
        park(b, |s| s.as_fd(), move |_| tx.send(()).unwrap())
            .map_err(|_| "parked")
            .unwrap();
        drop(a);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}
