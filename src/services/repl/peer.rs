//! Talking to a peer daemon: dialling (TCP + the mutual handshake), the
//! CONTROL/REPLY exchange both sides use to manage sets from one host, and
//! the replication listener that accepts peers.
//!
//! A CONTROL frame carries a JSON object with an `op`; the answer is one
//! REPLY frame (`{"ok": true, ...}` or `{"ok": false, "error": "..."}`),
//! followed by one DATA frame when the reply says `"data": true` (a
//! bitmap, a chunk read for a reverse sync). The `link` op turns the
//! connection into a data link (see `secondary.rs`).

use super::requests::{LinkSet, PeerRequest};
use super::tls;
use super::wire::{self, FrameType, Role, WireError};
use super::{Mode, NodeCtx};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a handshake or a control request may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections still authenticating at once: beyond this a new one is
/// closed at accept (each costs a thread until its handshake ends). A
/// handful of peers reconnecting together fit many times over.
const MAX_UNAUTHENTICATED: usize = 16;
/// An unauthenticated connection gets this long per read of its
/// handshake (a few small messages), then it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the service does with peers' requests.
pub trait PeerHandler: Send + Sync {
    /// A control request from authenticated peer `peer`.
    fn control(&self, peer: &str, req: PeerRequest) -> Result<(Value, Option<Vec<u8>>), String>;
    /// A data link: the handler answers the `link` request itself and then
    /// serves the connection until it ends.
    fn link(&self, peer: &str, group: String, mode: Mode, sets: Vec<LinkSet>, stream: TcpStream);
}

/// Connect to `addr` and authenticate. Returns the stream and the peer's
/// node name.
pub fn dial(ctx: &NodeCtx, addr: &str, timeout: Duration) -> Result<(TcpStream, String), String> {
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("peer address {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("peer address {addr} resolves to nothing"))?;
    let s = TcpStream::connect_timeout(&sa, timeout.min(Duration::from_secs(5)))
        .map_err(|e| format!("connecting to peer {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(timeout.max(Duration::from_secs(2))))
        .map_err(|e| e.to_string())?;
    let (mut s, binding) = if tls::required_for(&sa) {
        let (s, b) = tls::client(s).map_err(|e| format!("peer {addr}: {e}"))?;
        (s, b.to_vec())
    } else {
        (s, Vec::new())
    };
    let name = ctx.name();
    let peer = wire::handshake_with(
        &mut s,
        Role::Dialer,
        &name,
        &|p: &str| ctx.secret(p),
        &binding,
    )
    .map_err(|e| format!("peer {addr}: {e}"))?;
    Ok((s, peer))
}

pub fn send_control(w: &mut impl Write, req: &PeerRequest) -> Result<(), WireError> {
    let body = serde_json::to_vec(req).expect("a request serialises");
    wire::write_frame(w, FrameType::Control, &body)?;
    w.flush()?;
    Ok(())
}

/// Read a REPLY; an `ok: false` reply is the peer's error message.
pub fn read_reply(r: &mut impl Read) -> Result<Value, String> {
    let f = wire::read_frame(r).map_err(|e| e.to_string())?;
    if f.kind != FrameType::Reply {
        return Err(format!("malformed: expected REPLY, got {:?}", f.kind));
    }
    let v: Value =
        serde_json::from_slice(&f.payload).map_err(|e| format!("malformed reply: {e}"))?;
    if v["ok"] != true {
        return Err(v["error"].as_str().unwrap_or("peer refused").to_owned());
    }
    Ok(v)
}

/// One control request on a fresh connection.
pub fn request(
    ctx: &NodeCtx,
    addr: &str,
    req: &PeerRequest,
) -> Result<(Value, Option<Vec<u8>>), String> {
    Session::open(ctx, addr)?.call(req)
}

/// [`request`] with its own timeout (a short one for queries whose
/// silence is an answer; a long one for a peer's group operation).
pub fn request_within(
    ctx: &NodeCtx,
    addr: &str,
    req: &PeerRequest,
    timeout: Duration,
) -> Result<(Value, Option<Vec<u8>>), String> {
    let (s, _) = dial(ctx, addr, timeout)?;
    Session {
        s,
        addr: addr.to_owned(),
    }
    .call(req)
}

/// A session of several control requests on one connection (a reverse
/// sync reads chunk after chunk).
pub struct Session {
    s: TcpStream,
    addr: String,
}

impl Session {
    pub fn open(ctx: &NodeCtx, addr: &str) -> Result<Session, String> {
        let (s, _) = dial(ctx, addr, CONTROL_TIMEOUT)?;
        Ok(Session {
            s,
            addr: addr.to_owned(),
        })
    }

    pub fn call(&mut self, req: &PeerRequest) -> Result<(Value, Option<Vec<u8>>), String> {
        let addr = &self.addr;
        send_control(&mut self.s, req).map_err(|e| format!("peer {addr}: {e}"))?;
        let v = read_reply(&mut self.s).map_err(|e| format!("peer {addr}: {e}"))?;
        let data = if v["data"] == true {
            let f = wire::read_frame(&mut self.s).map_err(|e| format!("peer {addr}: {e}"))?;
            if f.kind != FrameType::Data {
                return Err(format!("peer {addr}: malformed: expected DATA"));
            }
            Some(f.payload)
        } else {
            None
        };
        Ok((v, data))
    }
}

/// The replication listener: accepts peers on its own address.
pub struct Listener {
    pub addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    pub fn start(
        ctx: Arc<NodeCtx>,
        addr: &str,
        handler: Arc<dyn PeerHandler>,
    ) -> Result<Listener, String> {
        let l = TcpListener::bind(addr).map_err(|e| format!("replication listener {addr}: {e}"))?;
        let bound = l.local_addr().map_err(|e| e.to_string())?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let unauthenticated = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("repl-listen".into())
            .spawn(move || {
                let mut refused = 0u64;
                // Blocking accept; `stop` wakes it with a connection of its own.
                while !stop2.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok(_) if stop2.load(Ordering::SeqCst) => return,
                        Ok((s, from)) => {
                            if unauthenticated.load(Ordering::SeqCst) >= MAX_UNAUTHENTICATED {
                                refused += 1;
                                if refused.is_power_of_two() {
                                    log::warn!(
                                        "replication listener: {MAX_UNAUTHENTICATED} connections are still authenticating; closed the one from {from} ({refused} so far)"
                                    );
                                }
                                drop(s);
                                continue;
                            }
                            unauthenticated.fetch_add(1, Ordering::SeqCst);
                            let (ctx, handler, pending) =
                                (ctx.clone(), handler.clone(), unauthenticated.clone());
                            let spawned = std::thread::Builder::new()
                                .name("repl-peer".into())
                                .spawn(move || {
                                    serve_peer(ctx, s, from.to_string(), handler, &pending)
                                });
                            if spawned.is_err() {
                                unauthenticated.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) => {
                            log::warn!("replication listener: accept: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Listener {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let wake = self
                .addr
                .replace("0.0.0.0", "127.0.0.1")
                .replace("[::]", "[::1]");
            let _ = TcpStream::connect_timeout(
                &wake.parse().expect("a bound socket address"),
                Duration::from_secs(1),
            );
            let _ = t.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// TLS if the dialer starts it (tls.rs), then the HMAC handshake; refusals
/// are logged and announced here. The authenticated stream and the peer's
/// name, or None when the connection is done with.
fn authenticate(ctx: &NodeCtx, mut s: TcpStream, from: &str) -> Option<(TcpStream, String)> {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = s.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let refuse = |why: String| {
        log::warn!("replication: refused peer from {from}: {why}");
        ctx.notify(
            "repl.peer_refused",
            from,
            crate::services::Note::new(why.clone())
                .field("from_addr", from)
                .field("why", why),
        );
    };
    // TLS or not, by the first byte; nothing at all is a probe.
    let mut first = [0u8; 1];
    let tls_hello = match s.peek(&mut first) {
        Ok(1) => first[0] == tls::TLS_RECORD_HANDSHAKE,
        _ => {
            log::debug!("replication: connection from {from} closed before its handshake");
            return None;
        }
    };
    let mut binding = Vec::new();
    if tls_hello {
        match tls::server(s) {
            Ok((t, b)) => {
                s = t;
                binding = b.to_vec();
            }
            Err(e) => {
                refuse(e.to_string());
                return None;
            }
        }
    } else if s.peer_addr().map_or(true, |a| tls::required_for(&a)) {
        let e = format!(
            "replication from {from} must use TLS (UMBRA_REPL_TLS is {:?} here)",
            tls::policy()
        );
        refuse(e.clone());
        let _ = wire::write_frame(&mut s, FrameType::Error, e.as_bytes());
        // Let the dialer read why: closing with its HELLO unread would
        // reset the connection before our frame arrives.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = std::io::copy(
            &mut Read::by_ref(&mut s).take(1 << 16),
            &mut std::io::sink(),
        );
        return None;
    }
    let name = ctx.name();
    let shook = wire::handshake_with(
        &mut s,
        Role::Listener,
        &name,
        &|p: &str| ctx.secret(p),
        &binding,
    );
    let _ = s.set_read_timeout(Some(CONTROL_TIMEOUT));
    let _ = s.set_write_timeout(None);
    match shook {
        Ok(peer) => Some((s, peer)),
        // Closed before saying anything: a reachability probe (a link
        // manager waiting to sync), not an authentication failure.
        Err(WireError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            log::debug!("replication: connection from {from} closed before its handshake");
            None
        }
        Err(e) => {
            refuse(e.to_string());
            let _ = wire::write_frame(&mut s, FrameType::Error, e.to_string().as_bytes());
            None
        }
    }
}

fn serve_peer(
    ctx: Arc<NodeCtx>,
    s: TcpStream,
    from: String,
    handler: Arc<dyn PeerHandler>,
    unauthenticated: &AtomicUsize,
) {
    let authenticated = authenticate(&ctx, s, &from);
    unauthenticated.fetch_sub(1, Ordering::SeqCst);
    let Some((mut s, peer)) = authenticated else {
        return;
    };
    loop {
        let f = match wire::read_frame(&mut s) {
            Ok(f) => f,
            Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                log::warn!("replication: peer {peer} ({from}): {e}; connection dropped");
                let _ = wire::write_frame(&mut s, FrameType::Error, e.to_string().as_bytes());
                return;
            }
        };
        if f.kind != FrameType::Control {
            log::warn!(
                "replication: peer {peer} sent {:?} before opening a link; dropped",
                f.kind
            );
            let _ = wire::write_frame(&mut s, FrameType::Error, b"expected CONTROL");
            return;
        }
        let req: PeerRequest = match serde_json::from_slice(&f.payload) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("replication: peer {peer} ({from}): malformed control request: {e}");
                let _ = reply(&mut s, Err(format!("malformed control request: {e}")));
                return;
            }
        };
        if let PeerRequest::Link { group, mode, sets } = req {
            handler.link(&peer, group, mode, sets, s);
            return;
        }
        let res = handler.control(&peer, req);
        if reply(&mut s, res).is_err() {
            return;
        }
    }
}

/// Write a REPLY (and its DATA frame).
pub fn reply(
    s: &mut impl Write,
    res: Result<(Value, Option<Vec<u8>>), String>,
) -> Result<(), WireError> {
    match res {
        Ok((mut v, data)) => {
            if !v.is_object() {
                v = json!({"value": v});
            }
            v["ok"] = json!(true);
            v["data"] = json!(data.is_some());
            wire::write_frame(s, FrameType::Reply, v.to_string().as_bytes())?;
            if let Some(d) = data {
                wire::write_frame(s, FrameType::Data, &d)?;
            }
        }
        Err(e) => {
            let v = json!({"ok": false, "error": e});
            wire::write_frame(s, FrameType::Reply, v.to_string().as_bytes())?;
        }
    }
    s.flush()?;
    Ok(())
}
