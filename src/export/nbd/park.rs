//! Where idle NBD connections wait without a thread.
//!
//! A connection whose client sent nothing for [`super::CONN_IDLE`] (and
//! has no request in flight) hands its socket here and its thread ends.
//! One process-wide thread waits on every parked socket with epoll; when
//! one becomes readable (a request, the client closing, or the server
//! shutting the socket down to disconnect it) it is taken out of the set
//! and its wake function runs on that thread, which starts a connection
//! thread for it again. A thousand connected, idle clients then cost one
//! thread instead of a thousand.
//!
//! The wake function owns the socket (the stream is moved into it), so the
//! descriptor the epoll set names stays open until the poller removed it.

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// What runs when a parked socket becomes readable.
pub type Wake = Box<dyn FnOnce() + Send>;

struct Poller {
    epoll: Epoll,
    parked: Mutex<HashMap<u64, (RawFd, Wake)>>,
    next: AtomicU64,
}

fn poller() -> Option<&'static Poller> {
    static P: OnceLock<Option<Poller>> = OnceLock::new();
    P.get_or_init(|| {
        let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(e) => e,
            Err(e) => {
                log::error!("NBD: no epoll for idle connections ({e}); they keep their threads");
                return None;
            }
        };
        let started = std::thread::Builder::new()
            .name("nbd-idle".into())
            .spawn(|| run(poller().expect("the poller exists once its thread runs")));
        if let Err(e) = started {
            log::error!("NBD: cannot start the idle-connection thread ({e}); connections keep their threads");
            return None;
        }
        Some(Poller {
            epoll,
            parked: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        })
    })
    .as_ref()
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
    let Some(p) = poller() else {
        return Err(payload);
    };
    let token = p.next.fetch_add(1, Ordering::Relaxed);
    let ev = EpollEvent::new(
        EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT,
        token,
    );
    // Registered and recorded under one lock hold: the poller, woken at
    // once, waits for the record instead of missing it.
    let mut parked = p.parked.lock();
    let fd = fd_of(&payload);
    if let Err(e) = p.epoll.add(fd, ev) {
        log::warn!("NBD: parking an idle connection: {e}");
        return Err(payload);
    }
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    parked.insert(token, (raw, Box::new(move || wake(payload))));
    Ok(())
}

fn run(p: &'static Poller) {
    let mut events = vec![EpollEvent::empty(); 64];
    loop {
        let n = match p.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::error!("NBD: waiting on idle connections: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        for ev in &events[..n] {
            let Some((fd, wake)) = p.parked.lock().remove(&ev.data()) else {
                continue;
            };
            // SAFETY: `wake` owns the stream whose descriptor `fd` is, and
            // it has not run yet, so `fd` is open for this whole call.
            let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
            // Out of the set before the descriptor can close (a duplicate
            // of it, the server's registry copy, keeps the description
            // alive, and with it a registration epoll would otherwise keep).
            let _ = p.epoll.delete(bfd);
            wake();
        }
    }
}
