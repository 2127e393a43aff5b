//! TLS for replication connections (rustls, TLS 1.3 only).
//!
//! Who is who stays the shared secret's business, as before TLS: each
//! daemon presents a self-signed certificate made at start, the dialer
//! accepts any certificate (after checking the handshake signature, so the
//! listener holds the certificate's key), and then the HMAC handshake of
//! `wire::handshake_with` runs inside TLS with the session's exported
//! keying material (RFC 5705/8446 exporter, label `EXPORTER-umbra-repl`)
//! in every proof. A man in the middle who terminates TLS toward each side
//! has two sessions with different exporters, so neither side's proof
//! verifies on the other: the secret authenticates the peer *and* this TLS
//! session. Why not certificates: a PKI per pair of sites is one more
//! thing to issue, rotate and get wrong, and the secret is already
//! configured (`repl peer add --secret-file`) and checked.
//!
//! When: the dialer uses TLS for a peer that is not on loopback, or always
//! with `UMBRA_REPL_TLS=always` (`never` turns it off, e.g. to measure its
//! cost). A listener tells a TLS connection by its first byte (a TLS
//! record starts 0x16, a replication frame with `U` of `UMRP`) and refuses
//! a plaintext one from off the host unless the policy is `never`, and
//! from anywhere under `always`.
//!
//! The rest of the replication code keeps its blocking `TcpStream`s: a TLS
//! connection is handed over as the near end of a loopback TCP pair, and a
//! tunnel thread per connection moves bytes between the far end and the
//! TLS session (poll on both sockets, non-blocking, bounded buffers). The
//! cost is that thread and a loopback copy each way; a link is one
//! connection, so it is one thread per link.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ServerConfig};
use rustls::{ServerConnection, SignatureScheme};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Bytes of exported keying material bound into the HMAC proofs.
pub const BINDING_BYTES: usize = 32;
const EXPORTER_LABEL: &[u8] = b"EXPORTER-umbra-repl";
/// The first byte of a TLS handshake record.
pub const TLS_RECORD_HANDSHAKE: u8 = 0x16;
/// Plaintext the tunnel holds for the near end before it stops reading
/// the TLS side (back-pressure, so a slow reader bounds our memory).
const TUNNEL_BUFFER_BYTES: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// TLS toward peers off the host; plaintext only on loopback.
    Auto,
    Always,
    Never,
}

/// The policy of this process (`UMBRA_REPL_TLS`: auto, always, never).
pub fn policy() -> Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    *P.get_or_init(|| match std::env::var("UMBRA_REPL_TLS").as_deref() {
        Ok("always") => Policy::Always,
        Ok("never") => Policy::Never,
        Ok("auto") | Err(_) => Policy::Auto,
        Ok(other) => {
            log::error!("UMBRA_REPL_TLS={other:?}: expected auto, always or never; using auto");
            Policy::Auto
        }
    })
}

/// Whether a connection to (or from) `peer` must be encrypted.
pub fn required_for(peer: &SocketAddr) -> bool {
    match policy() {
        Policy::Always => true,
        Policy::Never => false,
        Policy::Auto => !peer.ip().is_loopback(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config() -> io::Result<Arc<ServerConfig>> {
    static C: OnceLock<Result<Arc<ServerConfig>, String>> = OnceLock::new();
    C.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["umbra-replication".to_owned()])
            .map_err(|e| format!("generating the TLS certificate: {e}"))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(io::Error::other)
}

fn client_config() -> io::Result<Arc<ClientConfig>> {
    static C: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    C.get_or_init(|| {
        let p = provider();
        Ok(Arc::new(
            ClientConfig::builder_with_provider(p.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SecretAuthenticates(p)))
                .with_no_client_auth(),
        ))
    })
    .clone()
    .map_err(io::Error::other)
}

/// Accepts any certificate whose key signed the handshake: the shared
/// secret, bound to the session, authenticates the peer (module doc).
#[derive(Debug)]
struct SecretAuthenticates(Arc<CryptoProvider>);

impl ServerCertVerifier for SecretAuthenticates {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only: never asked.
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Run the TLS handshake as the dialer on `tcp`; returns the plaintext
/// stream and the session binding for the HMAC handshake.
pub fn client(tcp: TcpStream) -> io::Result<(TcpStream, [u8; BINDING_BYTES])> {
    let name = ServerName::try_from("umbra-replication").expect("a valid DNS name");
    let conn = ClientConnection::new(client_config()?, name).map_err(io::Error::other)?;
    establish(conn.into(), tcp)
}

/// Run the TLS handshake as the listener on `tcp`.
pub fn server(tcp: TcpStream) -> io::Result<(TcpStream, [u8; BINDING_BYTES])> {
    let conn = ServerConnection::new(server_config()?).map_err(io::Error::other)?;
    establish(conn.into(), tcp)
}

fn establish(
    mut conn: Connection,
    mut tcp: TcpStream,
) -> io::Result<(TcpStream, [u8; BINDING_BYTES])> {
    let (rt, wt) = (tcp.read_timeout()?, tcp.write_timeout()?);
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
    }
    let binding = conn
        .export_keying_material([0u8; BINDING_BYTES], EXPORTER_LABEL, None)
        .map_err(io::Error::other)?;
    let (near, far) = loopback_pair()?;
    near.set_read_timeout(rt)?;
    near.set_write_timeout(wt)?;
    let _ = near.set_nodelay(true);
    let _ = far.set_nodelay(true);
    std::thread::Builder::new()
        .name("repl-tls".into())
        .spawn(move || tunnel(conn, tcp, far))?;
    Ok((near, binding))
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
                loop {
                    match conn.reader().read(&mut buf) {
                        // The peer's close_notify.
                        Ok(0) => {
                            tcp_done = true;
                            break;
                        }
                        Ok(n) => to_far.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                            tcp_done = true;
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if fr.intersects(PollFlags::POLLIN | hangup) && far_ev.contains(PollFlags::POLLIN) {
            match far.read(&mut buf) {
                // The near end closed (or shut down): say goodbye, then go.
                Ok(0) => {
                    conn.send_close_notify();
                    while conn.wants_write() {
                        match conn.write_tls(&mut tcp) {
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(1))
                            }
                            Err(_) => break,
                        }
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
        log::debug!("replication TLS tunnel ended: {e}");
    }
    let _ = tcp.shutdown(Shutdown::Both);
    let _ = far.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

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
