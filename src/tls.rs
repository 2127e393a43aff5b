//! A TLS session behind a plain socket. The replication link and the NBD
//! server are written against blocking `TcpStream`s (timeouts, shutdown,
//! one clone reading while another writes); a rustls session cannot be
//! split that way. So once the handshake is done, the session moves to a
//! tunnel thread, and the caller gets the near end of a loopback TCP pair
//! whose far end the tunnel serves: it moves bytes between the far end and
//! the session on the real socket (poll on both, non-blocking, bounded
//! buffers, close_notify when the near end closes). The cost is a thread
//! per busy TLS connection and a loopback copy each way; a connection
//! that goes quiet (heartbeats only) gives its thread back and waits in
//! the one idle reactor (`idle` below) until traffic resumes.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustls::Connection;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// The first byte of a TLS handshake record.
pub const TLS_RECORD_HANDSHAKE: u8 = 0x16;
/// Plaintext the tunnel holds for the near end before it stops reading
/// the TLS side (back-pressure, so a slow reader bounds our memory).
const TUNNEL_BUFFER_BYTES: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Complete the TLS handshake of `conn` on `tcp` (blocking, at most 5 s per
/// read), take `after` of the established session (an exporter), and
/// hand the session to a tunnel thread. Returns the plaintext stream (the
/// near end of a loopback pair, with `tcp`'s timeouts) and `after`'s value.
pub fn establish<T>(
    mut conn: Connection,
    mut tcp: TcpStream,
    after: impl FnOnce(&Connection) -> io::Result<T>,
) -> io::Result<(TcpStream, T)> {
    let (rt, wt) = (tcp.read_timeout()?, tcp.write_timeout()?);
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
    }
    let value = after(&conn)?;
    let (near, far) = loopback_pair()?;
    near.set_read_timeout(rt)?;
    near.set_write_timeout(wt)?;
    let _ = near.set_nodelay(true);
    let _ = far.set_nodelay(true);
    std::thread::Builder::new()
        .name("tls-tunnel".into())
        .spawn(move || tunnel(conn, tcp, far))?;
    Ok((near, value))
}

/// Two connected TCP sockets on loopback. The listener lives only for the
/// accept, and the accepted socket must be the one we connected (another
/// process could race us to the port).
fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let near = TcpStream::connect(l.local_addr()?)?;
    loop {
        let (far, from) = l.accept()?;
        if from == near.local_addr()? {
            return Ok((near, far));
        }
    }
}

/// A tunnel thread hands its tunnel to the idle reactor after a window of
/// this long in which it moved at most [`IDLE_BYTES`] and holds nothing.
const TUNNEL_IDLE: Duration = Duration::from_secs(2);
/// Bytes a tunnel may move in one [`TUNNEL_IDLE`] window and still count
/// as idle: a replication link's heartbeats both ways (16 bytes of
/// plaintext each, under 40 on the wire, every 500 ms) are well under it.
const IDLE_BYTES: usize = 16 << 10;
/// An idle tunnel whose one round on the reactor moved more than this
/// goes back to a thread of its own (traffic resumed).
const IDLE_ROUND_BYTES: usize = 4 << 10;

/// One TLS session and the plaintext socket it serves.
struct Tunnel {
    conn: Connection,
    tcp: TcpStream,
    far: TcpStream,
    to_far: Vec<u8>,
    buf: Vec<u8>,
    tcp_done: bool,
}

impl Tunnel {
    /// Take what rustls already holds, then the events each socket waits
    /// for: `(tcp, far)`, or None when the tunnel is done.
    fn prepare(&mut self) -> io::Result<Option<(PollFlags, PollFlags)>> {
        // Plaintext rustls already holds: the handshake's last read may
        // have brought application data along (a client's first request
        // right behind its Finished), and no poll would announce it.
        if self.to_far.len() < TUNNEL_BUFFER_BYTES && !self.tcp_done {
            self.tcp_done = drain_plaintext(&mut self.conn, &mut self.to_far, &mut self.buf)?;
        }
        if self.tcp_done && self.to_far.is_empty() {
            return Ok(None);
        }
        let mut tcp_ev = PollFlags::empty();
        if !self.tcp_done && self.to_far.len() < TUNNEL_BUFFER_BYTES {
            tcp_ev |= PollFlags::POLLIN;
        }
        if self.conn.wants_write() {
            tcp_ev |= PollFlags::POLLOUT;
        }
        let mut far_ev = PollFlags::empty();
        if !self.conn.wants_write() && !self.tcp_done {
            far_ev |= PollFlags::POLLIN;
        }
        if !self.to_far.is_empty() {
            far_ev |= PollFlags::POLLOUT;
        }
        Ok(Some((tcp_ev, far_ev)))
    }

    /// Move what the sockets are ready for (`ready`: what was asked,
    /// `revents`: what poll said), without blocking except for a closing
    /// session's close_notify when `may_block`. Returns the bytes moved
    /// and whether the tunnel is done.
    fn step(
        &mut self,
        (tcp_ev, far_ev): (PollFlags, PollFlags),
        (tr, fr): (PollFlags, PollFlags),
        may_block: bool,
    ) -> io::Result<(usize, bool)> {
        let mut moved = 0;
        let hangup = PollFlags::POLLHUP | PollFlags::POLLERR;
        if tr.intersects(PollFlags::POLLIN | hangup) && tcp_ev.contains(PollFlags::POLLIN) {
            // Record by record: rustls holds a bounded amount of plaintext,
            // so take it out after each read.
            while !self.tcp_done && self.to_far.len() < TUNNEL_BUFFER_BYTES {
                match self.conn.read_tls(&mut self.tcp) {
                    Ok(0) => self.tcp_done = true,
                    Ok(n) => moved += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
                self.conn.process_new_packets().map_err(io::Error::other)?;
                self.tcp_done |= drain_plaintext(&mut self.conn, &mut self.to_far, &mut self.buf)?;
            }
        }
        if fr.intersects(PollFlags::POLLIN | hangup) && far_ev.contains(PollFlags::POLLIN) {
            match self.far.read(&mut self.buf) {
                // The near end closed (or shut down): say goodbye, then go.
                // On a thread of its own what is queued goes out blocking,
                // bounded by a timeout; on the reactor, what the socket
                // takes at once (the peer sees the end either way).
                Ok(0) => {
                    self.conn.send_close_notify();
                    if may_block {
                        self.tcp.set_nonblocking(false)?;
                        self.tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
                    }
                    while self.conn.wants_write() {
                        match self.conn.write_tls(&mut self.tcp) {
                            Ok(_) => {}
                            Err(e) if !may_block && e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                    return Ok((moved, true));
                }
                Ok(n) => {
                    moved += n;
                    self.conn.writer().write_all(&self.buf[..n])?
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.tcp) {
                Ok(n) => moved += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while !self.to_far.is_empty() {
            match self.far.write(&self.to_far) {
                Ok(n) => {
                    moved += n;
                    self.to_far.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok((moved, false))
    }

    /// Nothing held in either direction.
    fn quiet(&self) -> bool {
        self.to_far.is_empty() && !self.conn.wants_write()
    }

    fn close(self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
        let _ = self.far.shutdown(Shutdown::Both);
    }
}

/// What poll says of each `(socket, events)`, waiting at most `wait`.
fn ready_now(
    fds: [(BorrowedFd<'_>, PollFlags); 2],
    wait: PollTimeout,
) -> io::Result<[PollFlags; 2]> {
    let mut p = [
        PollFd::new(fds[0].0, fds[0].1),
        PollFd::new(fds[1].0, fds[1].1),
    ];
    loop {
        match poll(&mut p, wait) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok([
        p[0].revents().unwrap_or(PollFlags::empty()),
        p[1].revents().unwrap_or(PollFlags::empty()),
    ])
}

/// Move bytes between `far` (plaintext, the near end's partner) and the
/// TLS session on `tcp` until either side ends; then close both. A
/// tunnel that goes quiet (a window of [`TUNNEL_IDLE`] with at most
/// [`IDLE_BYTES`] moved: heartbeats) moves to the idle reactor, and this
/// thread ends.
fn tunnel(conn: Connection, tcp: TcpStream, far: TcpStream) {
    if tcp.set_nonblocking(true).is_err() || far.set_nonblocking(true).is_err() {
        return;
    }
    let t = Box::new(Tunnel {
        conn,
        tcp,
        far,
        to_far: Vec::new(),
        buf: vec![0u8; 64 * 1024],
        tcp_done: false,
    });
    run_tunnel(t);
}

/// Serve `t` on this thread until it ends or goes idle.
fn run_tunnel(t: Box<Tunnel>) {
    serve_tunnel(t, true)
}

/// Serve `t` on this thread until it ends or, with `may_park`, goes idle
/// and parks (when it cannot, it is served on here without going idle).
fn serve_tunnel(mut t: Box<Tunnel>, may_park: bool) {
    enum End {
        Done,
        Idle,
    }
    let mut window = Instant::now();
    let mut moved = 0usize;
    let result: io::Result<End> = (|| loop {
        let Some(ev) = t.prepare()? else {
            return Ok(End::Done);
        };
        let wait = if may_park {
            let left = TUNNEL_IDLE.saturating_sub(window.elapsed());
            PollTimeout::try_from(left.max(Duration::from_millis(1))).unwrap_or(PollTimeout::MAX)
        } else {
            PollTimeout::NONE
        };
        let [tr, fr] = ready_now([(t.tcp.as_fd(), ev.0), (t.far.as_fd(), ev.1)], wait)?;
        let (n, done) = t.step(ev, (tr, fr), true)?;
        if done {
            return Ok(End::Done);
        }
        moved += n;
        if may_park && window.elapsed() >= TUNNEL_IDLE {
            if moved <= IDLE_BYTES && t.quiet() {
                return Ok(End::Idle);
            }
            (window, moved) = (Instant::now(), 0);
        }
    })();
    match result {
        Ok(End::Idle) => match idle::park(t) {
            Ok(()) => return,
            // No reactor: serve on here.
            Err(back) => return serve_tunnel(back, false),
        },
        Err(e) => log::debug!("TLS tunnel ended: {e}"),
        Ok(End::Done) => {}
    }
    t.close();
}

/// Idle tunnels, served without a thread each: one `tls-idle` thread waits
/// on both sockets of every idle tunnel with epoll (level-triggered) and
/// runs a round of the tunnel on it when either is ready, never blocking.
/// A round that moves little and leaves nothing held (a heartbeat each
/// way) keeps the tunnel here; one that moves more, or cannot finish
/// without waiting, starts a thread for the tunnel again.
mod idle {
    use super::{ready_now, run_tunnel, Tunnel, IDLE_ROUND_BYTES};
    use nix::poll::PollTimeout;
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    struct Reactor {
        epoll: Epoll,
        tunnels: Mutex<HashMap<u64, Box<Tunnel>>>,
        next: AtomicU64,
    }

    fn reactor() -> Option<&'static Reactor> {
        static R: OnceLock<Option<Reactor>> = OnceLock::new();
        R.get_or_init(|| {
            let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
                Ok(e) => e,
                Err(e) => {
                    log::error!("no epoll for idle TLS tunnels ({e}); they keep their threads");
                    return None;
                }
            };
            let started = std::thread::Builder::new()
                .name("tls-idle".into())
                .spawn(|| run(reactor().expect("the reactor exists once its thread runs")));
            if let Err(e) = started {
                log::error!("cannot start the idle TLS thread ({e}); tunnels keep their threads");
                return None;
            }
            Some(Reactor {
                epoll,
                tunnels: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
            })
        })
        .as_ref()
    }

    /// Serve `t` from the reactor; it comes back when there is none.
    pub(super) fn park(t: Box<Tunnel>) -> Result<(), Box<Tunnel>> {
        let Some(r) = reactor() else {
            return Err(t);
        };
        let id = r.next.fetch_add(1, Ordering::Relaxed);
        // Registered and recorded under one lock hold: the reactor, woken
        // at once, waits for the record instead of missing it.
        let mut all = r.tunnels.lock();
        // Both sockets carry the tunnel's id: either being ready runs it.
        let added = [t.tcp.as_fd(), t.far.as_fd()]
            .into_iter()
            .try_for_each(|fd| {
                let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, id);
                r.epoll.add(fd, ev)
            });
        if let Err(e) = added {
            log::warn!("parking an idle TLS tunnel: {e}");
            forget(r, &t);
            return Err(t);
        }
        all.insert(id, t);
        Ok(())
    }

    /// Whether the tunnel serving the plaintext socket `near` waits here.
    #[cfg(test)]
    pub(super) fn holds(near: std::net::SocketAddr) -> bool {
        reactor().is_some_and(|r| {
            r.tunnels
                .lock()
                .values()
                .any(|t| t.far.peer_addr().ok() == Some(near))
        })
    }

    /// Out of the epoll set (before its sockets close or move to a thread).
    fn forget(r: &Reactor, t: &Tunnel) {
        let _ = r.epoll.delete(t.tcp.as_fd());
        let _ = r.epoll.delete(t.far.as_fd());
    }

    fn run(r: &'static Reactor) {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let n = match r.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("waiting on idle TLS tunnels: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            for ev in &events[..n] {
                let id = ev.data();
                // Both sockets of one tunnel may be in this batch: the
                // first takes it out, the second finds it gone or back.
                let Some(mut t) = r.tunnels.lock().remove(&id) else {
                    continue;
                };
                match round(&mut t) {
                    Ok(Some(true)) => {
                        r.tunnels.lock().insert(id, t);
                    }
                    Ok(Some(false)) => {
                        forget(r, &t);
                        let spawned = std::thread::Builder::new()
                            .name("tls-tunnel".into())
                            .spawn(move || run_tunnel(t));
                        if let Err(e) = spawned {
                            log::warn!("TLS tunnel: cannot start its thread again ({e}); closed");
                        }
                    }
                    Ok(None) => {
                        forget(r, &t);
                        t.close();
                    }
                    Err(e) => {
                        log::debug!("TLS tunnel ended: {e}");
                        forget(r, &t);
                        t.close();
                    }
                }
            }
        }
    }

    /// One round of an idle tunnel: `Some(true)` it stays idle,
    /// `Some(false)` it needs its thread again, None it is done.
    fn round(t: &mut Tunnel) -> std::io::Result<Option<bool>> {
        let Some(ev) = t.prepare()? else {
            return Ok(None);
        };
        let [tr, fr] = ready_now(
            [(t.tcp.as_fd(), ev.0), (t.far.as_fd(), ev.1)],
            PollTimeout::ZERO,
        )?;
        let (moved, done) = t.step(ev, (tr, fr), false)?;
        if done {
            return Ok(None);
        }
        Ok(Some(moved <= IDLE_ROUND_BYTES && t.quiet()))
    }
}

/// Move the plaintext rustls holds into `to_far`; true once the peer
/// closed (its close_notify, or the end without one).
fn drain_plaintext(
    conn: &mut Connection,
    to_far: &mut Vec<u8>,
    buf: &mut [u8],
) -> io::Result<bool> {
    loop {
        match conn.reader().read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => to_far.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::repl::tls::{client, server};

    /// A client and a server session through the tunnels: bytes both ways,
    /// the same binding on both ends, and a close that reaches the other
    /// side as end of stream.
    #[test]
    fn tunnels_carry_bytes_both_ways_with_one_binding() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (mut s, b) = server(s).unwrap();
            let mut got = vec![0u8; 3 << 20];
            s.read_exact(&mut got).unwrap();
            s.write_all(&got).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            (b, got, rest.len())
        });
        let (mut c, cb) = client(TcpStream::connect(addr).unwrap()).unwrap();
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        // Write and read at once: the tunnel must not deadlock with both
        // directions full.
        let mut c2 = c.try_clone().unwrap();
        let d2 = data.clone();
        let w = std::thread::spawn(move || c2.write_all(&d2).unwrap());
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).unwrap();
        w.join().unwrap();
        assert!(back == data, "the echo matches");
        c.shutdown(Shutdown::Both).unwrap();
        drop(c);
        let (sb, got, rest) = srv.join().unwrap();
        assert_eq!(sb, cb, "both ends export the same binding");
        assert!(got == data);
        assert_eq!(rest, 0, "the close arrived as end of stream");
    }

    /// Tunnels that went quiet (their sessions on the idle reactor) carry
    /// small messages both ways, give way to bulk traffic (back on their
    /// threads), go quiet again, and pass the close on.
    #[test]
    fn idle_tunnels_carry_bytes_and_wake_for_bulk() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // The server echoes whatever it reads until the end of stream.
        let (near_tx, near_rx) = std::sync::mpsc::channel();
        let srv = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (mut s, _) = server(s).unwrap();
            near_tx.send(s.local_addr().unwrap()).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                match s.read(&mut buf).unwrap() {
                    0 => return total,
                    n => {
                        s.write_all(&buf[..n]).unwrap();
                        total += n;
                    }
                }
            }
        });
        let (mut c, _) = client(TcpStream::connect(addr).unwrap()).unwrap();
        let nears = [c.local_addr().unwrap(), near_rx.recv().unwrap()];
        // Both tunnels (client's and server's) wait in the reactor.
        let parked = || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !nears.iter().all(|n| idle::holds(*n)) {
                assert!(Instant::now() < deadline, "the quiet tunnels did not park");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let ping = |c: &mut TcpStream, msg: &[u8]| {
            c.write_all(msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        };
        ping(&mut c, b"before");
        for round in 0..2 {
            parked();
            for i in 0..20u8 {
                ping(&mut c, &[i; 16]);
            }
            let bulk: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8 ^ round).collect();
            let mut c2 = c.try_clone().unwrap();
            let b2 = bulk.clone();
            let w = std::thread::spawn(move || c2.write_all(&b2).unwrap());
            let mut back = vec![0u8; bulk.len()];
            c.read_exact(&mut back).unwrap();
            w.join().unwrap();
            assert!(back == bulk, "round {round}: the bulk echo matches");
        }
        parked();
        c.shutdown(Shutdown::Both).unwrap();
        drop(c);
        assert_eq!(srv.join().unwrap(), 6 + 2 * (20 * 16 + (1 << 20)));
    }
}

#[cfg(test)]
mod first_bytes {
    use super::*;
    use crate::services::repl::tls::{client_config, server};

    /// The peer's first bytes in the same segment as its handshake's last
    /// message (a client's Finished and its first request, as gnutls
    /// sends them) reach the reader: they arrive in the handshake's last
    /// read, which no poll announces.
    #[test]
    fn bytes_in_the_handshakes_last_segment_are_delivered() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (mut s, _) = server(s).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).map(|_| b)
        });
        let name = rustls::pki_types::ServerName::try_from("umbra-replication").unwrap();
        let mut conn = rustls::ClientConnection::new(client_config().unwrap(), name).unwrap();
        let mut tcp = TcpStream::connect(addr).unwrap();
        while conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        }
        while conn.is_handshaking() {
            conn.read_tls(&mut tcp).unwrap();
            conn.process_new_packets().unwrap();
        }
        // Finished is queued, not sent: the request goes out with it.
        conn.writer().write_all(b"opt!").unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        tcp.write_all(&out).unwrap();
        let got = srv.join().unwrap();
        assert_eq!(got.expect("the first bytes were held back"), *b"opt!");
    }
}
