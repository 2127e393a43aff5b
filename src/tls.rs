//! A TLS session behind a plain socket. The replication link and the NBD
//! server are written against blocking `TcpStream`s (timeouts, shutdown,
//! one clone reading while another writes); a rustls session cannot be
//! split that way. So once the handshake is done, the session moves to a
//! tunnel thread, and the caller gets the near end of a loopback TCP pair
//! whose far end the tunnel serves: it moves bytes between the far end and
//! the session on the real socket (poll on both, non-blocking, bounded
//! buffers, close_notify when the near end closes). The cost is a thread
//! per TLS connection and a loopback copy each way.

use rustls::Connection;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

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

/// Move bytes between `far` (plaintext, the near end's partner) and the
/// TLS session on `tcp` until either side ends; then close both.
fn tunnel(mut conn: Connection, mut tcp: TcpStream, mut far: TcpStream) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    if tcp.set_nonblocking(true).is_err() || far.set_nonblocking(true).is_err() {
        return;
    }
    let mut to_far: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut tcp_done = false;
    let result: io::Result<()> = (|| loop {
        // Plaintext rustls already holds: the handshake's last read may
        // have brought application data along (a client's first request
        // right behind its Finished), and no poll would announce it.
        if to_far.len() < TUNNEL_BUFFER_BYTES && !tcp_done {
            tcp_done = drain_plaintext(&mut conn, &mut to_far, &mut buf)?;
        }
        let mut tcp_ev = PollFlags::empty();
        if !tcp_done && to_far.len() < TUNNEL_BUFFER_BYTES {
            tcp_ev |= PollFlags::POLLIN;
        }
        if conn.wants_write() {
            tcp_ev |= PollFlags::POLLOUT;
        }
        let mut far_ev = PollFlags::empty();
        if !conn.wants_write() && !tcp_done {
            far_ev |= PollFlags::POLLIN;
        }
        if !to_far.is_empty() {
            far_ev |= PollFlags::POLLOUT;
        }
        if tcp_done && to_far.is_empty() {
            return Ok(());
        }
        let mut fds = [
            PollFd::new(tcp.as_fd(), tcp_ev),
            PollFd::new(far.as_fd(), far_ev),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let (tr, fr) = (
            fds[0].revents().unwrap_or(PollFlags::empty()),
            fds[1].revents().unwrap_or(PollFlags::empty()),
        );
        let hangup = PollFlags::POLLHUP | PollFlags::POLLERR;
        if tr.intersects(PollFlags::POLLIN | hangup) && tcp_ev.contains(PollFlags::POLLIN) {
            // Record by record: rustls holds a bounded amount of plaintext,
            // so take it out after each read.
            while !tcp_done && to_far.len() < TUNNEL_BUFFER_BYTES {
                match conn.read_tls(&mut tcp) {
                    Ok(0) => tcp_done = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
                conn.process_new_packets().map_err(io::Error::other)?;
                tcp_done |= drain_plaintext(&mut conn, &mut to_far, &mut buf)?;
            }
        }
        if fr.intersects(PollFlags::POLLIN | hangup) && far_ev.contains(PollFlags::POLLIN) {
            match far.read(&mut buf) {
                // The near end closed (or shut down): say goodbye, then go.
                // What is queued goes out blocking, bounded by a timeout.
                Ok(0) => {
                    conn.send_close_notify();
                    tcp.set_nonblocking(false)?;
                    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
                    while conn.wants_write() {
                        conn.write_tls(&mut tcp)?;
                    }
                    return Ok(());
                }
                Ok(n) => conn.writer().write_all(&buf[..n])?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        while conn.wants_write() {
            match conn.write_tls(&mut tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while !to_far.is_empty() {
            match far.write(&to_far) {
                Ok(n) => {
                    to_far.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    })();
    if let Err(e) = result {
        log::debug!("TLS tunnel ended: {e}");
    }
    let _ = tcp.shutdown(Shutdown::Both);
    let _ = far.shutdown(Shutdown::Both);
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
