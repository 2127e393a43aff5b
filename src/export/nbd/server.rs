//! The NBD listener, handshake and transmission loop. See `mod.rs` for the
//! threading model and `proto.rs` for the constants.

use super::proto::*;
use super::{
    CONN_IDLE, CORK_COPY_MAX_BYTES, CORK_MAX_BYTES, OFFLOAD_QUEUE_REQUESTS, OFFLOAD_WORKERS,
};
use crate::buffer::AlignedBuf;
use crate::device::{BlockDevice, LatencyClass};
use crate::interposer::Volume;
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// A client that has not finished its handshake within this is dropped, so
/// a silent or trickling peer cannot hold a connection slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Options one client may send before choosing an export. Real clients
/// send fewer than ten; the bound stops an option loop from spinning.
const MAX_OPTIONS: usize = 64;
/// Option payloads up to this size are skipped and answered ERR_TOO_BIG;
/// anything longer cannot be a real client and drops the connection.
const MAX_SKIPPABLE_OPTION_BYTES: u32 = 1 << 20;
/// Receive buffer per connection: room for a few pipelined request headers
/// and small writes per read(2).
const RECV_BUFFER_BYTES: usize = 256 * 1024;

/// Where a server listens: `HOST:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(String),
    Unix(PathBuf),
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/umbra/nbd.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        match s.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => Ok(ListenAddr::Tcp(s.to_owned())),
            _ => Err(format!(
                "{s:?} is not HOST:PORT or unix:PATH (e.g. 127.0.0.1:10809)"
            )),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A connected client, over TCP or a Unix socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// The transmission phase's reader. The socket's read timeout is
/// [`CONN_IDLE`]; a read that times out is only reported between
/// requests, when `idle_ok` says the dispatcher asked for it (the client
/// went quiet: the connection may park). Anywhere else (half a header, a
/// write's payload) the read simply goes on waiting, as without a
/// timeout. An interrupted read is always retried.
struct Patient {
    s: Stream,
    idle_ok: bool,
}

impl Read for Patient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.s.read(buf) {
                // With a receive timeout set, a signal interrupts recv(2)
                // even under SA_RESTART (signal(7)); BufReader::fill_buf
                // would pass that on as an error.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if timed_out(&e) && !self.idle_ok => continue,
                r => return r,
            }
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone)]
struct Export {
    volume: Arc<Volume>,
    read_only: bool,
}

struct Registered {
    export: Option<String>,
    stream: Stream,
}

struct Inner {
    addr: ListenAddr,
    /// TLS required on this listener (FORCEDTLS: every option but STARTTLS
    /// and ABORT is refused until the client started TLS).
    tls: Option<Arc<rustls::ServerConfig>>,
    exports: RwLock<HashMap<String, Export>>,
    conns: Mutex<HashMap<u64, Registered>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    next_conn_id: AtomicU64,
    stopping: AtomicBool,
    /// Clients at once (see [`super::DEFAULT_MAX_CLIENTS`]).
    max_clients: usize,
    /// Clients closed on accept because `max_clients` were connected.
    refused: AtomicU64,
}

/// One NBD listener and the exports it serves.
pub struct NbdServer {
    inner: Arc<Inner>,
    listener_fd: i32,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
    local_addr: String,
}

impl NbdServer {
    /// Bind `addr` and start accepting. A stale Unix socket file (nobody
    /// listening) is replaced; a live one is an error. With `tls`, clients
    /// must start TLS (TCP listeners only).
    pub fn start(
        addr: &ListenAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        max_clients: usize,
    ) -> io::Result<Arc<NbdServer>> {
        if tls.is_some() && matches!(addr, ListenAddr::Unix(_)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS is served on TCP listeners only (a unix socket's permissions are its protection)",
            ));
        }
        let (listener, local_addr, fd) = match addr {
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let local = l.local_addr()?.to_string();
                let fd = l.as_raw_fd();
                (Listener::Tcp(l), local, fd)
            }
            ListenAddr::Unix(p) => {
                if p.exists() {
                    if UnixStream::connect(p).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{} is in use by a live server", p.display()),
                        ));
                    }
                    std::fs::remove_file(p)?;
                }
                let l = UnixListener::bind(p)?;
                let fd = l.as_raw_fd();
                (Listener::Unix(l), format!("unix:{}", p.display()), fd)
            }
        };
        let inner = Arc::new(Inner {
            addr: addr.clone(),
            tls,
            exports: RwLock::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            handles: Mutex::new(Vec::new()),
            next_conn_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            max_clients: max_clients.max(1),
            refused: AtomicU64::new(0),
        });
        let accept_inner = inner.clone();
        let accept_thread = thread::Builder::new()
            .name(format!("nbd-accept {local_addr}"))
            .spawn(move || accept_loop(accept_inner, listener))?;
        log::info!("NBD server listening on {local_addr}");
        Ok(Arc::new(NbdServer {
            inner,
            listener_fd: fd,
            accept_thread: Mutex::new(Some(accept_thread)),
            local_addr,
        }))
    }

    /// Whether clients must use TLS.
    pub fn tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> &str {
        &self.local_addr
    }

    pub fn listen_addr(&self) -> &ListenAddr {
        &self.inner.addr
    }

    pub fn add_export(&self, name: &str, volume: Arc<Volume>, read_only: bool) {
        self.inner
            .exports
            .write()
            .insert(name.to_owned(), Export { volume, read_only });
    }

    /// Stop serving `name` and disconnect its clients. Returns whether it
    /// was exported here.
    pub fn remove_export(&self, name: &str) -> bool {
        let existed = self.inner.exports.write().remove(name).is_some();
        for conn in self.inner.conns.lock().values() {
            if conn.export.as_deref() == Some(name) {
                conn.stream.shutdown(Shutdown::Both);
            }
        }
        existed
    }

    pub fn export_names(&self) -> Vec<String> {
        let mut v: Vec<_> = self.inner.exports.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Clients this listener closed on accept because it was full.
    pub fn refused_clients(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Clients connected to `name` right now.
    pub fn clients_of(&self, name: &str) -> usize {
        self.inner
            .conns
            .lock()
            .values()
            .filter(|c| c.export.as_deref() == Some(name))
            .count()
    }

    /// Stop accepting, disconnect every client and wait for their threads.
    pub fn shutdown(&self) {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // shutdown(2) on a listening socket wakes a blocked accept(2) on Linux.
        let _ = nix::sys::socket::shutdown(self.listener_fd, nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.accept_thread.lock().take() {
            let _ = t.join();
        }
        for conn in self.inner.conns.lock().values() {
            conn.stream.shutdown(Shutdown::Both);
        }
        // Parked clients wake on the shutdown above and end on threads of
        // their own, which join the list meanwhile: wait for all of them.
        loop {
            let handles = std::mem::take(&mut *self.inner.handles.lock());
            let none = handles.is_empty();
            for h in handles {
                let _ = h.join();
            }
            if none && self.inner.conns.lock().is_empty() {
                break;
            }
            if none {
                thread::sleep(Duration::from_millis(5));
            }
        }
        if let ListenAddr::Unix(p) = &self.inner.addr {
            let _ = std::fs::remove_file(p);
        }
        log::info!("NBD server on {} stopped", self.local_addr);
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(inner: Arc<Inner>, listener: Listener) {
    loop {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                log::warn!("NBD accept on {}: {e}", inner.addr);
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if inner.conns.lock().len() >= inner.max_clients {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "NBD {}: refusing a client, {} already connected (serve --nbd-max-clients)",
                inner.addr,
                inner.max_clients
            );
            continue;
        }
        let id = inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let Ok(registry_clone) = stream.try_clone() else {
            continue;
        };
        inner.conns.lock().insert(
            id,
            Registered {
                export: None,
                stream: registry_clone,
            },
        );
        start_conn_thread(&inner, id, move |inner| serve_connection(inner, id, stream));
    }
}

/// Run `serve` for connection `id` on a thread of its own; its registry
/// entry goes when `serve` says the connection ended (not when it parked),
/// or when no thread could be started (the socket closes with `serve`).
fn start_conn_thread(
    inner: &Arc<Inner>,
    id: u64,
    serve: impl FnOnce(&Arc<Inner>) -> bool + Send + 'static,
) {
    let conn_inner = inner.clone();
    let spawned = thread::Builder::new()
        .name(format!("nbd-conn-{id}"))
        .spawn(move || {
            if serve(&conn_inner) {
                conn_inner.conns.lock().remove(&id);
            }
        });
    match spawned {
        Ok(h) => {
            // Reap finished threads as each starts: the list stays bounded,
            // and dropping a finished thread's handle releases its stack.
            let mut hs = inner.handles.lock();
            hs.retain(|h| !h.is_finished());
            hs.push(h);
        }
        Err(e) => {
            log::error!("NBD client {id}: cannot start a connection thread: {e}");
            inner.conns.lock().remove(&id);
        }
    }
}

/// Serve one accepted client. Returns whether the connection ended (it
/// may have been parked instead).
fn serve_connection(inner: &Arc<Inner>, id: u64, mut stream: Stream) -> bool {
    if stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_err() {
        return true;
    }
    let Negotiated {
        name,
        export,
        structured,
        allocation,
    } = match handshake(inner, &mut stream) {
        Ok(Some(chosen)) => chosen,
        Ok(None) => return true,
        Err(e) => {
            log::info!("NBD client {id} on {}: handshake ended: {e}", inner.addr);
            return true;
        }
    };
    // Register the export so `remove_export` can disconnect us, then check
    // it was not removed in between.
    if let Some(c) = inner.conns.lock().get_mut(&id) {
        c.export = Some(name.clone());
    }
    if !inner.exports.read().contains_key(&name) || inner.stopping.load(Ordering::SeqCst) {
        return true;
    }
    if stream.set_read_timeout(Some(CONN_IDLE)).is_err() {
        return true;
    }
    log::info!("NBD client {id} on {}: serving {name}", inner.addr);
    let session = Session {
        id,
        name,
        export,
        structured,
        allocation,
    };
    serve_session(inner, session, stream)
}

/// What a connection negotiated: all a thread needs to serve it, again
/// after it was parked.
struct Session {
    id: u64,
    name: String,
    export: Export,
    structured: bool,
    allocation: bool,
}

/// Serve the transmission phase on this thread until the client goes or
/// goes quiet. Quiet, the socket is parked (`crate::park`) and this thread ends;
/// the first request after that starts a thread that comes back here.
/// Returns whether the connection ended (its registry entry may go).
fn serve_session(inner: &Arc<Inner>, session: Session, stream: Stream) -> bool {
    let (mut session, mut stream) = (session, stream);
    loop {
        let Some(back) = transmission(&session, stream) else {
            log::info!(
                "NBD client {} on {}: {} disconnected",
                session.id,
                inner.addr,
                session.name
            );
            return true;
        };
        let woken = inner.clone();
        let parked = crate::park::park(
            (session, back),
            |(_, stream)| stream.as_fd(),
            move |(session, stream)| resume(woken, session, stream),
        );
        match parked {
            Ok(()) => return false,
            // No poller: serve on, on this thread.
            Err((s, back)) => {
                session = s;
                stream = back;
            }
        }
    }
}

/// A parked connection's client sent something (or went): serve it on a
/// new connection thread.
fn resume(inner: Arc<Inner>, session: Session, stream: Stream) {
    let id = session.id;
    start_conn_thread(&inner, id, move |inner| {
        serve_session(inner, session, stream)
    });
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("client did not ask for fixed newstyle (flags {0:#x})")]
    NotFixedNewstyle(u32),
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error("option payload of {0} bytes is too large")]
    OptionTooLarge(u32),
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("client asked for unknown export {0:?} with NBD_OPT_EXPORT_NAME")]
    UnknownExport(String),
    #[error("client did not start TLS, which this listener requires")]
    TlsRequired,
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn read_u32(s: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn transmission_flags(export: &Export) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
    // Flush is volume-wide (the BlockDevice contract), so a flush on one
    // connection covers writes completed on every other: multi-conn holds.
    f |= TF_CAN_MULTI_CONN;
    if export.read_only {
        f |= TF_READ_ONLY;
    }
    f
}

/// Resolve a requested export name. The empty name is the default export:
/// the one named `default`, or the only one there is.
///
/// A volume that refuses writes right now (a replication secondary) is
/// offered read-only, so clients know before they try; a connection keeps
/// what it negotiated (after a promotion, clients reconnect to write).
fn lookup(inner: &Inner, name: &str) -> Option<(String, Export)> {
    let found = {
        let exports = inner.exports.read();
        if let Some(e) = exports.get(name) {
            Some((name.to_owned(), e.clone()))
        } else if name.is_empty() {
            exports
                .get("default")
                .map(|e| ("default".to_owned(), e.clone()))
                .or_else(|| {
                    (exports.len() == 1).then(|| {
                        let (n, e) = exports.iter().next().expect("len is 1");
                        (n.clone(), e.clone())
                    })
                })
        } else {
            None
        }
    };
    found.map(|(n, mut e)| {
        e.read_only |= e.volume.refuses_writes();
        (n, e)
    })
}

/// The TLS identity in `dir`: `server-cert.pem` (the certificate chain,
/// the server's first) and `server-key.pem`, the layout qemu-nbd and
/// nbdkit use.
pub fn load_tls(dir: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_path = dir.join("server-cert.pem");
    let key_path = dir.join("server-key.pem");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(Arc::new)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// What a handshake settled: the export, and whether the client asked for
/// structured replies and the `base:allocation` metadata context.
struct Negotiated {
    name: String,
    export: Export,
    structured: bool,
    allocation: bool,
}

fn handshake(inner: &Inner, s: &mut Stream) -> Result<Option<Negotiated>, HandshakeError> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;

    let client_flags = read_u32(s)?;
    if client_flags & CLIENT_FLAG_FIXED_NEWSTYLE == 0
        || client_flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0
    {
        return Err(HandshakeError::NotFixedNewstyle(client_flags));
    }
    let no_zeroes = client_flags & CLIENT_FLAG_NO_ZEROES != 0;
    let mut structured = false;
    let mut allocation = false;
    let mut in_tls = false;

    for _ in 0..MAX_OPTIONS {
        let magic = read_u64(s)?;
        if magic != IHAVEOPT {
            return Err(HandshakeError::BadOptionMagic(magic));
        }
        let option = read_u32(s)?;
        let len = read_u32(s)?;
        if len > MAX_OPTION_BYTES {
            if len > MAX_SKIPPABLE_OPTION_BYTES {
                return Err(HandshakeError::OptionTooLarge(len));
            }
            io::copy(&mut Read::by_ref(s).take(len as u64), &mut io::sink())?;
            s.write_all(&option_reply(option, REP_ERR_TOO_BIG, b"option too large"))?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;

        if inner.tls.is_some() && !in_tls {
            match option {
                OPT_STARTTLS | OPT_ABORT => {}
                // No error reply exists for it: close.
                OPT_EXPORT_NAME => return Err(HandshakeError::TlsRequired),
                _ => {
                    let msg = b"this server requires TLS: send NBD_OPT_STARTTLS first";
                    s.write_all(&option_reply(option, REP_ERR_TLS_REQD, msg))?;
                    continue;
                }
            }
        }
        match option {
            OPT_STARTTLS => {
                let Some(config) = inner.tls.clone() else {
                    let msg =
                        b"TLS is not configured on this listener (export nbd --tls-certificates)";
                    s.write_all(&option_reply(option, REP_ERR_POLICY, msg))?;
                    continue;
                };
                if in_tls || !data.is_empty() {
                    let msg = b"TLS is already running, or NBD_OPT_STARTTLS carried data";
                    s.write_all(&option_reply(option, REP_ERR_INVALID, msg))?;
                    continue;
                }
                s.write_all(&option_reply(option, REP_ACK, &[]))?;
                let Stream::Tcp(tcp) = &*s else {
                    return Err(HandshakeError::TlsRequired);
                };
                let tcp = tcp.try_clone()?;
                let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
                let (near, ()) = crate::tls::establish(conn.into(), tcp, |_| Ok(()))?;
                *s = Stream::Tcp(near);
                in_tls = true;
            }
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let Some((name, export)) = lookup(inner, &name) else {
                    // This option has no error reply: the spec says close.
                    return Err(HandshakeError::UnknownExport(name));
                };
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&export.volume.size_bytes().to_be_bytes());
                reply.extend_from_slice(&transmission_flags(&export).to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&reply)?;
                return Ok(Some(Negotiated {
                    name,
                    export,
                    structured,
                    allocation,
                }));
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    let msg = b"NBD_OPT_STRUCTURED_REPLY takes no data";
                    s.write_all(&option_reply(option, REP_ERR_INVALID, msg))?;
                    continue;
                }
                structured = true;
                s.write_all(&option_reply(option, REP_ACK, &[]))?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = option == OPT_SET_META_CONTEXT;
                let (name, queries) = match parse_meta_request(&data) {
                    Ok(x) => x,
                    Err(msg) => {
                        s.write_all(&option_reply(option, REP_ERR_INVALID, msg.as_bytes()))?;
                        continue;
                    }
                };
                if set && !structured {
                    let msg = b"negotiate NBD_OPT_STRUCTURED_REPLY before NBD_OPT_SET_META_CONTEXT";
                    s.write_all(&option_reply(option, REP_ERR_INVALID, msg))?;
                    continue;
                }
                if lookup(inner, &name).is_none() {
                    let msg = format!("no export named {name:?}; try NBD_OPT_LIST");
                    s.write_all(&option_reply(option, REP_ERR_UNKNOWN, msg.as_bytes()))?;
                    continue;
                }
                // SET selects exactly what it names; LIST with no query (or
                // the namespace) lists everything.
                let wanted = queries.iter().any(|q| q == BASE_ALLOCATION)
                    || (!set && (queries.is_empty() || queries.iter().any(|q| q == "base:")));
                if set {
                    allocation = wanted;
                }
                if wanted {
                    let mut d = (if set { BASE_ALLOCATION_ID } else { 0 })
                        .to_be_bytes()
                        .to_vec();
                    d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    s.write_all(&option_reply(option, REP_META_CONTEXT, &d))?;
                }
                s.write_all(&option_reply(option, REP_ACK, &[]))?;
            }
            OPT_ABORT => {
                let _ = s.write_all(&option_reply(option, REP_ACK, &[]));
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    s.write_all(&option_reply(
                        option,
                        REP_ERR_INVALID,
                        b"NBD_OPT_LIST takes no data",
                    ))?;
                    continue;
                }
                let names: Vec<String> = inner.exports.read().keys().cloned().collect();
                for n in names {
                    let mut d = Vec::with_capacity(4 + n.len());
                    d.extend_from_slice(&(n.len() as u32).to_be_bytes());
                    d.extend_from_slice(n.as_bytes());
                    s.write_all(&option_reply(option, REP_SERVER, &d))?;
                }
                s.write_all(&option_reply(option, REP_ACK, &[]))?;
            }
            OPT_INFO | OPT_GO => {
                let (name, requests) = match parse_info_request(&data) {
                    Ok(x) => x,
                    Err(msg) => {
                        s.write_all(&option_reply(option, REP_ERR_INVALID, msg.as_bytes()))?;
                        continue;
                    }
                };
                let Some((name, export)) = lookup(inner, &name) else {
                    let msg = format!("no export named {name:?}; try NBD_OPT_LIST");
                    s.write_all(&option_reply(option, REP_ERR_UNKNOWN, msg.as_bytes()))?;
                    continue;
                };
                let mut info = Vec::with_capacity(12);
                info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&export.volume.size_bytes().to_be_bytes());
                info.extend_from_slice(&transmission_flags(&export).to_be_bytes());
                s.write_all(&option_reply(option, REP_INFO, &info))?;
                if requests.contains(&INFO_NAME) {
                    let mut d = INFO_NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    s.write_all(&option_reply(option, REP_INFO, &d))?;
                }
                let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                bs.extend_from_slice(&1u32.to_be_bytes());
                bs.extend_from_slice(&PREFERRED_BLOCK_BYTES.to_be_bytes());
                bs.extend_from_slice(&MAX_REQUEST_BYTES.to_be_bytes());
                s.write_all(&option_reply(option, REP_INFO, &bs))?;
                s.write_all(&option_reply(option, REP_ACK, &[]))?;
                if option == OPT_GO {
                    return Ok(Some(Negotiated {
                        name,
                        export,
                        structured,
                        allocation,
                    }));
                }
            }
            _ => {
                let msg = format!("option {option} is not supported by umbra");
                s.write_all(&option_reply(option, REP_ERR_UNSUP, msg.as_bytes()))?;
            }
        }
    }
    Err(HandshakeError::TooManyOptions)
}

/// Parse NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count,
/// count × u16 info types.
fn parse_info_request(data: &[u8]) -> Result<(String, Vec<u16>), String> {
    let bad = || "malformed NBD_OPT_INFO/GO payload".to_string();
    if data.len() < 6 {
        return Err(bad());
    }
    let name_len = u32::from_be_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
    let rest = data.get(4..).ok_or_else(bad)?;
    if name_len > rest.len().saturating_sub(2) {
        return Err(bad());
    }
    let name = std::str::from_utf8(&rest[..name_len])
        .map_err(|_| "export name is not UTF-8".to_string())?
        .to_owned();
    let rest = &rest[name_len..];
    let count = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    let rest = &rest[2..];
    if rest.len() != count * 2 {
        return Err(bad());
    }
    let requests = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok((name, requests))
}

/// The payload of NBD_OPT_{LIST,SET}_META_CONTEXT: the export name and
/// the queries (each a context name or a namespace prefix).
fn parse_meta_request(data: &[u8]) -> Result<(String, Vec<String>), String> {
    let bad = || "malformed NBD_OPT_*_META_CONTEXT payload".to_string();
    let mut rest = data;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err(bad());
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Ok(a)
    };
    let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize;
    let name_len = u32_of(take(4)?);
    let name = std::str::from_utf8(take(name_len)?)
        .map_err(|_| "export name is not UTF-8".to_string())?
        .to_owned();
    let count = u32_of(take(4)?);
    let mut queries = Vec::new();
    for _ in 0..count {
        let len = u32_of(take(4)?);
        if len > 4096 {
            return Err(bad());
        }
        let q = std::str::from_utf8(take(len)?).map_err(|_| "query is not UTF-8".to_string())?;
        queries.push(q.to_owned());
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok((name, queries))
}

/// A reply's header: simple, or the structured chunk header with what
/// precedes the data (a read's offset, an error chunk's error).
struct ReplyHeader {
    bytes: [u8; 32],
    len: usize,
}

impl ReplyHeader {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// One client connection in the transmission phase.
struct Conn<'a> {
    id: u64,
    name: &'a str,
    volume: &'a Volume,
    read_only: bool,
    /// Structured replies negotiated: reads (and block status) use them.
    structured: bool,
    /// The `base:allocation` context was selected: block status served.
    allocation: bool,
    /// Replies go out under this lock: the dispatcher's corked batches and
    /// the offload workers' single replies interleave whole.
    tx: Mutex<Stream>,
    /// Offloaded requests not replied to yet: a connection with any never
    /// parks (its client may be waiting for them before it sends more).
    in_flight: AtomicUsize,
}

/// A request handed to an offload worker, with its payload or read buffer.
struct Job {
    req: Request,
    buf: AlignedBuf,
}

/// Why the dispatcher stopped.
enum Stop {
    Disconnect,
    Drop(String),
    /// The client sent nothing for [`CONN_IDLE`] and waits for no reply.
    Park,
}

/// Serve requests until the client disconnects (None) or goes quiet (the
/// stream comes back, to be parked, with nothing of it buffered here).
fn transmission(session: &Session, stream: Stream) -> Option<Stream> {
    let Session {
        id,
        ref name,
        ref export,
        structured,
        allocation,
    } = *session;
    let tx = stream.try_clone().ok()?;
    let conn = Conn {
        id,
        name,
        volume: &export.volume,
        read_only: export.read_only,
        structured,
        allocation,
        tx: Mutex::new(tx),
        in_flight: AtomicUsize::new(0),
    };
    let mut rx = BufReader::with_capacity(
        RECV_BUFFER_BYTES,
        Patient {
            s: stream,
            idle_ok: false,
        },
    );
    let (job_tx, job_rx) = bounded::<Job>(OFFLOAD_QUEUE_REQUESTS);
    let (free_tx, free_rx) = bounded::<AlignedBuf>(OFFLOAD_QUEUE_REQUESTS + OFFLOAD_WORKERS + 1);
    thread::scope(|scope| {
        let mut workers = 0usize;
        let stop = conn.dispatch(
            &mut rx,
            |job| {
                // Grow the pool only while queued jobs wait for a free worker.
                if workers == 0 || (!job_tx.is_empty() && workers < OFFLOAD_WORKERS) {
                    let (conn, jobs, free) = (&conn, job_rx.clone(), free_tx.clone());
                    let spawned = thread::Builder::new()
                        .name(format!("nbd-{id}-w{workers}"))
                        .spawn_scoped(scope, move || conn.offload_worker(jobs, free));
                    if spawned.is_ok() {
                        workers += 1;
                    }
                }
                // Without a single worker nobody would ever take the job.
                workers > 0 && job_tx.send(job).is_ok()
            },
            &free_rx,
        );
        if let Stop::Drop(why) = &stop {
            log::warn!("NBD client {id} ({name}): dropped: {why}");
            conn.tx.lock().shutdown(Shutdown::Read);
        }
        // Closing the job channel lets the workers finish what they hold
        // (their replies still go out) and exit; the scope joins them.
        drop(job_tx);
        matches!(stop, Stop::Park).then(|| rx.into_inner().s)
    })
}

impl Conn<'_> {
    /// Read requests and run them: inline when the stack serves from memory
    /// (replies corked and sent as a batch just before the next read could
    /// block), through `offload` when the request may block.
    fn dispatch(
        &self,
        rx: &mut BufReader<Patient>,
        mut offload: impl FnMut(Job) -> bool,
        free: &Receiver<AlignedBuf>,
    ) -> Stop {
        let mut cork: Vec<u8> = Vec::with_capacity(CORK_MAX_BYTES);
        // Reused for every inline request: no allocation on the hot path.
        let mut inline_buf = Some(AlignedBuf::new(64 * 1024));
        let stop = loop {
            // Never sit on replies while waiting for the client: it may be
            // waiting for them before it sends more.
            if rx.buffer().len() < REQUEST_HEADER_BYTES {
                if let Err(e) = self.send_cork(&mut cork) {
                    break Stop::Drop(format!("sending replies: {e}"));
                }
            }
            if rx.buffer().is_empty() {
                // Between requests: the one read that may report the
                // client quiet for CONN_IDLE.
                rx.get_mut().idle_ok = true;
                let got = rx.fill_buf().map(|b| b.len());
                rx.get_mut().idle_ok = false;
                match got {
                    Err(e) if timed_out(&e) => {
                        if self.in_flight.load(Ordering::SeqCst) == 0 {
                            break Stop::Park;
                        }
                        continue;
                    }
                    Err(e) => break Stop::Drop(format!("reading requests: {e}")),
                    Ok(_) => {}
                }
            }
            let req = match Request::read_from(rx) {
                Ok(r) => r,
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    break Stop::Disconnect
                }
                Err(e) => break Stop::Drop(e.to_string()),
            };
            if req.command == CMD_DISC {
                break Stop::Disconnect;
            }
            let may_block = match req.command {
                CMD_READ | CMD_BLOCK_STATUS => {
                    self.volume.latency_class() == LatencyClass::Blocking
                }
                CMD_FLUSH => true,
                _ => {
                    req.flags & CMD_FLAG_FUA != 0
                        || self.volume.write_may_block(req.offset, req.length as u64)
                }
            };
            let mut buf = if may_block {
                free.try_recv()
                    .unwrap_or_else(|_| AlignedBuf::new(64 * 1024))
            } else {
                inline_buf
                    .take()
                    .expect("returned after every inline request")
            };
            if req.command == CMD_WRITE {
                if req.length > MAX_REQUEST_BYTES {
                    break Stop::Drop(format!(
                        "write of {} bytes exceeds the {MAX_REQUEST_BYTES}-byte maximum",
                        req.length
                    ));
                }
                if rx.buffer().len() < req.length as usize {
                    if let Err(e) = self.send_cork(&mut cork) {
                        break Stop::Drop(format!("sending replies: {e}"));
                    }
                }
                ensure_len(&mut buf, req.length as usize);
                if let Err(e) = rx.read_exact(&mut buf[..]) {
                    break Stop::Drop(format!("reading write payload: {e}"));
                }
            }
            if may_block {
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                if !offload(Job { req, buf }) {
                    break Stop::Drop("offload workers are gone".into());
                }
                continue;
            }
            let error = self.execute(&req, &mut buf);
            let (header, data) = self.reply(&req, error, &buf);
            let sent = if data.len() > CORK_COPY_MAX_BYTES {
                self.send_cork(&mut cork)
                    .and_then(|_| self.send(header.as_slice(), data))
            } else {
                cork.extend_from_slice(header.as_slice());
                cork.extend_from_slice(data);
                if cork.len() >= CORK_MAX_BYTES {
                    self.send_cork(&mut cork)
                } else {
                    Ok(())
                }
            };
            inline_buf = Some(buf);
            if let Err(e) = sent {
                break Stop::Drop(format!("sending replies: {e}"));
            }
        };
        let _ = self.send_cork(&mut cork);
        stop
    }

    fn offload_worker(&self, jobs: Receiver<Job>, free: Sender<AlignedBuf>) {
        for mut job in jobs.iter() {
            let error = self.execute(&job.req, &mut job.buf);
            let (header, data) = self.reply(&job.req, error, &job.buf);
            if let Err(e) = self.send(header.as_slice(), data) {
                log::debug!("NBD client {} ({}): reply lost: {e}", self.id, self.name);
                self.tx.lock().shutdown(Shutdown::Both);
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = free.try_send(job.buf);
        }
    }

    /// The reply to `req` that ended with `error`, and the data after its
    /// header (a read's bytes, block status descriptors, in `buf`). With
    /// structured replies a read is one OFFSET_DATA chunk or one ERROR
    /// chunk, never a simple reply (the spec forbids it); other commands
    /// keep simple replies, which the spec allows.
    fn reply<'b>(&self, req: &Request, error: u32, buf: &'b AlignedBuf) -> (ReplyHeader, &'b [u8]) {
        let mut h = ReplyHeader {
            bytes: [0u8; 32],
            len: 0,
        };
        let mut put = |b: &[u8]| {
            h.bytes[h.len..h.len + b.len()].copy_from_slice(b);
            h.len += b.len();
        };
        let chunked = self.structured && matches!(req.command, CMD_READ | CMD_BLOCK_STATUS);
        if !chunked {
            put(&simple_reply(error, req.handle));
            let ok_read = req.command == CMD_READ && error == 0;
            return (h, if ok_read { &buf[..] } else { &[] });
        }
        if error != 0 {
            put(&structured_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                req.handle,
                6,
            ));
            put(&error.to_be_bytes());
            put(&0u16.to_be_bytes()); // no message
            return (h, &[]);
        }
        if req.command == CMD_READ {
            let len = 8 + buf.len() as u32;
            put(&structured_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                req.handle,
                len,
            ));
            put(&req.offset.to_be_bytes());
        } else {
            let len = buf.len() as u32;
            put(&structured_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_BLOCK_STATUS,
                req.handle,
                len,
            ));
        }
        (h, &buf[..])
    }

    fn send(&self, header: &[u8], data: &[u8]) -> io::Result<()> {
        write_all_vectored(&mut *self.tx.lock(), header, data)
    }

    fn send_cork(&self, cork: &mut Vec<u8>) -> io::Result<()> {
        if cork.is_empty() {
            return Ok(());
        }
        let r = self.tx.lock().write_all(cork);
        cork.clear();
        r
    }

    /// Run one request; returns the NBD error to reply with (0 = success).
    fn execute(&self, req: &Request, buf: &mut AlignedBuf) -> u32 {
        const KNOWN_FLAGS: u16 = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_REQ_ONE;
        if req.flags & !KNOWN_FLAGS != 0
            || (req.flags & CMD_FLAG_NO_HOLE != 0 && req.command != CMD_WRITE_ZEROES)
            || (req.flags & CMD_FLAG_REQ_ONE != 0 && req.command != CMD_BLOCK_STATUS)
        {
            return NBD_EINVAL;
        }
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let writes = matches!(req.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && self.read_only {
            return NBD_EPERM;
        }
        let len = req.length as u64;
        let result = match req.command {
            CMD_READ => {
                if req.length > MAX_REQUEST_BYTES {
                    return NBD_EINVAL;
                }
                ensure_len(buf, req.length as usize);
                self.volume.read(&mut buf[..], req.offset)
            }
            CMD_WRITE => {
                crate::fault::panic_point("nbd.write");
                self.volume.write(&buf[..], req.offset, fua)
            }
            CMD_FLUSH => self.volume.flush(),
            CMD_TRIM => self.volume.discard(req.offset, len).and_then(|_| {
                if fua {
                    self.volume.flush()
                } else {
                    Ok(())
                }
            }),
            CMD_WRITE_ZEROES => self.volume.write_zeroes(req.offset, len, fua),
            CMD_BLOCK_STATUS => {
                if !self.allocation || len == 0 {
                    return NBD_EINVAL;
                }
                let one = req.flags & CMD_FLAG_REQ_ONE != 0;
                self.volume
                    .allocation(req.offset, len)
                    .map(|runs| encode_block_status(&runs, one, buf))
            }
            _ => return NBD_EINVAL,
        };
        match result {
            Ok(()) => 0,
            Err(e) => {
                log::debug!(
                    "NBD client {} ({}): command {} at {} len {}: {e}",
                    self.id,
                    self.name,
                    req.command,
                    req.offset,
                    req.length
                );
                wire_errno(e.errno())
            }
        }
    }
}

/// A BLOCK_STATUS chunk's payload in `buf`: the context id, then a (length,
/// status) pair per run, neighbours of one status merged (just the first
/// run for REQ_ONE).
fn encode_block_status(runs: &[crate::device::Extent], one: bool, buf: &mut AlignedBuf) {
    let mut merged: Vec<(u64, u32)> = Vec::with_capacity(runs.len());
    for r in runs.iter().filter(|r| r.len > 0) {
        let status = if r.hole { STATE_HOLE | STATE_ZERO } else { 0 };
        match merged.last_mut() {
            Some((len, s)) if *s == status => *len += r.len,
            _ => merged.push((r.len, status)),
        }
    }
    if one {
        merged.truncate(1);
    }
    ensure_len(buf, 4 + 8 * merged.len());
    buf[0..4].copy_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (i, (len, status)) in merged.iter().enumerate() {
        // A run never exceeds the request's 32-bit length.
        let at = 4 + 8 * i;
        buf[at..at + 4].copy_from_slice(&(*len as u32).to_be_bytes());
        buf[at + 4..at + 8].copy_from_slice(&status.to_be_bytes());
    }
}

/// Grow `buf` (doubling, so a stream of growing requests allocates a few
/// times at most) and set its length.
fn ensure_len(buf: &mut AlignedBuf, len: usize) {
    if buf.capacity() < len {
        *buf = AlignedBuf::new(len.next_power_of_two());
    }
    buf.set_len(len);
}

fn write_all_vectored(w: &mut impl Write, header: &[u8], data: &[u8]) -> io::Result<()> {
    let mut slices = [IoSlice::new(header), IoSlice::new(data)];
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_parsing() {
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert!("127.0.0.1:0".parse::<ListenAddr>().is_ok());
        assert!("nonsense".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn info_request_parsing_rejects_malformed() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&d).unwrap(),
            ("abc".to_string(), vec![INFO_BLOCK_SIZE])
        );
        assert!(parse_info_request(&d[..d.len() - 1]).is_err());
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0, 0]);
        assert!(parse_info_request(&huge).is_err());
        assert!(parse_info_request(&[]).is_err());
    }
}
