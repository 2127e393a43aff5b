//! The admin control socket: versioned JSON lines over a Unix socket.
//!
//! Each request is one line, `{"v":1,"id":N,"op":"volume.list","args":{}}`;
//! each reply one line, `{"v":1,"id":N,"ok":true,"result":...}` or
//! `{"v":1,"id":N,"ok":false,"error":{"code":"not_found","message":"..."}}`.
//! `events.follow` turns the connection into a stream of `{"event":...}`
//! lines. The full protocol is in `docs/admin-protocol.md`.
//!
//! The socket is mode 0600 and every peer's credentials are checked
//! (SO_PEERCRED: root or the daemon's own uid). A malformed, oversized or
//! unknown request gets an error reply; an oversized one also ends that
//! connection (there is no line boundary to resynchronise on). No request
//! can take the daemon or another client down: each client has its own
//! thread and every handler returns errors instead of panicking.

use super::daemon::Daemon;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line. The largest real request is a few hundred bytes;
/// 1 MiB leaves room for later bulk requests and stops a flood.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Longest reply line a client reads. Replies grow with the daemon's
/// objects (`status` of a thousand volumes is over a megabyte); this bound
/// only stops a runaway peer on the socket, at tens of thousands of
/// volumes.
pub const MAX_REPLY_BYTES: usize = 256 << 20;
/// Admin clients served at once.
pub const MAX_ADMIN_CLIENTS: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(default)]
    pub id: u64,
    pub op: String,
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// The stable machine codes of failed requests (docs/admin-protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a request.
    BadRequest,
    UnsupportedVersion,
    UnknownOp,
    /// The arguments make no sense as given.
    Invalid,
    NotFound,
    Exists,
    /// Conflicts with the state of an object or a running operation.
    Busy,
    /// The peer could not be reached or refused.
    Peer,
    /// Both sides of a replication set wrote since they last agreed.
    SplitBrain,
    /// Tried and failed (I/O, persisting).
    Failed,
    Permission,
    TooLarge,
    ShuttingDown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::Busy => "busy",
            ErrorCode::Peer => "peer",
            ErrorCode::SplitBrain => "split_brain",
            ErrorCode::Failed => "failed",
            ErrorCode::Permission => "permission",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ShuttingDown => "shutting_down",
        }
    }
}

/// An operation's failure: a stable machine code and a message that names
/// the object and the cause.
#[derive(Debug, Clone)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Failed, message)
    }
}

impl From<crate::services::repl::ReplError> for OpError {
    fn from(e: crate::services::repl::ReplError) -> Self {
        use crate::services::repl::ReplError as R;
        let code = match &e {
            R::Invalid(_) => ErrorCode::Invalid,
            R::NotFound(_) => ErrorCode::NotFound,
            R::Exists(_) => ErrorCode::Exists,
            R::Busy(_) => ErrorCode::Busy,
            R::Peer(_) => ErrorCode::Peer,
            R::SplitBrain(_) => ErrorCode::SplitBrain,
            R::Failed(_) => ErrorCode::Failed,
        };
        OpError::new(code, e.to_string())
    }
}

impl Reply {
    fn ok(id: u64, result: Value) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            id,
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    fn err(id: u64, e: OpError) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            id,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code: e.code.as_str().to_owned(),
                message: e.message,
            }),
        }
    }
}

/// Bind the socket (replacing a stale one), restrict it to 0600.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use: is another umbra serving this data dir?",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accept admin clients until the listener is shut down.
pub fn accept_loop(listener: UnixListener, daemon: Arc<Daemon>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if daemon.is_stopping() {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("admin socket accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if let Err(why) = check_peer(&stream) {
            log::warn!("admin socket: refused a client: {why}");
            let mut s = &stream;
            let _ = write_line(
                &mut s,
                &Reply::err(0, OpError::new(ErrorCode::Permission, why)),
            );
            continue;
        }
        if active.load(Ordering::SeqCst) >= MAX_ADMIN_CLIENTS {
            let mut s = &stream;
            let _ = write_line(
                &mut s,
                &Reply::err(0, OpError::new(ErrorCode::Busy, "too many admin clients")),
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (daemon, active) = (daemon.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("admin-client".into())
            .spawn(move || {
                if let Err(e) = serve_client(stream, &daemon) {
                    log::debug!("admin client ended: {e}");
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::error!("admin socket: cannot spawn a client thread: {e}");
        }
    }
}

fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let cred = getsockopt(stream, PeerCredentials)
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == 0 || cred.uid() == me {
        Ok(())
    } else {
        Err(format!(
            "uid {} may not manage this daemon (only root or uid {me})",
            cred.uid()
        ))
    }
}

/// Write all of `buf` to `s` with MSG_NOSIGNAL: a closed peer is an
/// EPIPE error, never a SIGPIPE (the CLI keeps SIGPIPE's default action
/// for its own stdout).
fn send_all(s: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        match send(s.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(())
}

fn write_line(w: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// Read one line of at most `limit` bytes (`what` names it in the error:
/// a request, a reply). `Ok(None)` at a clean end of stream; an error for
/// an oversized line.
fn read_line(
    r: &mut impl BufRead,
    line: &mut Vec<u8>,
    limit: usize,
    what: &str,
) -> io::Result<Option<()>> {
    line.clear();
    let n = r.take(limit as u64 + 1).read_until(b'\n', line)?;
    if n == 0 {
        return Ok(None);
    }
    // A last line without a newline is accepted; only a line that ran
    // into the limit is refused.
    if line.last() != Some(&b'\n') && line.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} longer than {limit} bytes"),
        ));
    }
    Ok(Some(()))
}

fn serve_client(stream: UnixStream, daemon: &Arc<Daemon>) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        match read_line(&mut reader, &mut line, MAX_REQUEST_BYTES, "request") {
            Ok(Some(())) => {}
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                write_line(
                    &mut writer,
                    &Reply::err(0, OpError::new(ErrorCode::TooLarge, e.to_string())),
                )?;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let req: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!(
                    "malformed request: {e}; expected {{\"v\":1,\"op\":...,\"args\":{{...}}}}"
                );
                write_line(
                    &mut writer,
                    &Reply::err(0, OpError::new(ErrorCode::BadRequest, msg)),
                )?;
                continue;
            }
        };
        if req.v != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {} is not supported; this daemon speaks version {PROTOCOL_VERSION}",
                req.v
            );
            write_line(
                &mut writer,
                &Reply::err(req.id, OpError::new(ErrorCode::UnsupportedVersion, msg)),
            )?;
            continue;
        }
        if req.op == "events.follow" {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct FollowArgs {
                #[serde(default)]
                now: bool,
            }
            let args = if req.args.is_null() {
                serde_json::json!({})
            } else {
                req.args.clone()
            };
            match serde_json::from_value::<FollowArgs>(args) {
                Ok(a) => return follow_events(&mut writer, daemon, req.id, a.now),
                Err(e) => {
                    let err = OpError::invalid(format!("events.follow: bad arguments: {e}"));
                    write_line(&mut writer, &Reply::err(req.id, err))?;
                    continue;
                }
            }
        }
        let reply = match daemon.handle(&req.op, &req.args) {
            Ok(result) => Reply::ok(req.id, result),
            Err(e) => Reply::err(req.id, e),
        };
        write_line(&mut writer, &reply)?;
    }
}

/// Stream events; with `now`, first every object's state (`KIND.state`
/// events carrying the sequence number of the last event before the
/// stream), then `now.done`, then what happens.
fn follow_events(w: &mut UnixStream, daemon: &Daemon, id: u64, now: bool) -> io::Result<()> {
    let (rx, seq) = daemon.events().subscribe_at();
    write_line(w, &Reply::ok(id, serde_json::json!({"following": true})))?;
    if now {
        let states = daemon.object_states();
        let n = states.len();
        for (kind, name, state) in states {
            let e = super::events::state_event(seq, kind, &name, state);
            write_line(w, &serde_json::json!({ "event": e }))?;
        }
        let mut done =
            super::events::state_event(seq, "daemon", "", serde_json::json!({"objects": n}));
        done.kind = "now.done".into();
        write_line(w, &serde_json::json!({ "event": done }))?;
    }
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(event) => write_line(w, &serde_json::json!({ "event": event }))?,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if daemon.is_stopping() {
                    return Ok(());
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let lagged = serde_json::json!({"event": {"kind": "lagged", "detail": "this subscriber fell too far behind and was cut off"}});
                let _ = write_line(w, &lagged);
                return Ok(());
            }
        }
    }
}

/// A client of the admin socket (used by the CLI and the tests).
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> io::Result<Client> {
        let s = UnixStream::connect(path)?;
        Ok(Client {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
            next_id: 1,
        })
    }

    /// Send one request and wait for its reply.
    ///
    /// A daemon that refuses the client (its uid, too many clients) writes
    /// one error reply and closes at once, maybe before the request is
    /// sent: the send then fails (EPIPE, without the signal) and the
    /// refusal is read from what the daemon wrote, not lost behind a
    /// "broken pipe".
    pub fn call(&mut self, op: &str, args: Value) -> io::Result<Reply> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request {
            v: PROTOCOL_VERSION,
            id,
            op: op.to_owned(),
            args,
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        if let Err(e) = send_all(&self.writer, &line) {
            let closed = matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            );
            return match self.read_reply() {
                Ok(r) if closed => Ok(r),
                _ => Err(e),
            };
        }
        self.read_reply()
    }

    /// Read the next line as a reply (or, after `events.follow`, an event).
    pub fn read_value(&mut self) -> io::Result<Option<Value>> {
        let mut line = Vec::new();
        if read_line(&mut self.reader, &mut line, MAX_REPLY_BYTES, "reply")?.is_none() {
            return Ok(None);
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let v = self.read_value()?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "daemon closed the connection")
        })?;
        serde_json::from_value(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}
