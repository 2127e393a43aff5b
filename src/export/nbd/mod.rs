//! NBD export: fixed-newstyle handshake and the transmission phase with
//! simple replies (which the Linux kernel client needs).
//!
//! One [`NbdServer`] per listen address (TCP, default `127.0.0.1:10809`, or a
//! Unix socket); each serves any number of exports, and the export name is
//! the volume name.
//!
//! # Per connection
//! One dispatcher thread reads requests and decides, per request:
//! * **inline**: when the volume's stack serves from memory (memory
//!   backend, a buffered file in the page cache) and the request is a read,
//!   a plain write, a trim or a write-zeroes, the dispatcher runs it itself
//!   and appends the reply to a *cork*; the cork is sent in one `write(2)`
//!   just before the dispatcher could block reading the socket. Under a
//!   queue-depth-32 client that is one `recv` and one `send` for a whole
//!   batch of requests, and no thread hand-off at all;
//! * **offloaded**: flushes, FUA writes, and every request when the stack
//!   may block (O_DIRECT, raw devices, later network-bound services) go to a
//!   pool of up to [`OFFLOAD_WORKERS`] threads, grown only while jobs queue,
//!   which reply on their own. A slow fsync never stalls the reads queued
//!   behind it.
//!
//! A client quiet for [`CONN_IDLE`] with no reply outstanding gives its
//! thread (and its buffers) back: the dispatcher's read between requests
//! is the only one that may time out, and then the socket is parked in the
//! process's one epoll set (`crate::park`); its next request, its close, or a
//! shutdown by the server (export removed, daemon stopping) wakes it and a
//! new dispatcher thread carries on with the negotiated session. A
//! thousand connected, idle clients cost one thread, not a thousand.
//!
//! NBD lets replies come in any order, and a flush only covers writes whose
//! replies the client had before it sent the flush; inline writes are done
//! before the next request is read, so both paths keep those semantics.
//!
//! A frame that cannot be trusted (bad magic, a write longer than
//! [`proto::MAX_REQUEST_BYTES`], a broken handshake) drops that one client;
//! a request that is merely wrong (out of range, unknown command, bad flag)
//! gets an error reply and the connection carries on.

pub mod proto;
mod server;

pub use server::{load_tls, ListenAddr, NbdServer, DEFAULT_LISTEN};

/// Most offload workers per connection: enough to keep a device queue of 16
/// busy from one connection (fio and the kernel client keep 32 to 128
/// requests in flight; the rest wait in the queue below).
pub const OFFLOAD_WORKERS: usize = 16;

/// Offloaded requests queued for a free worker before the dispatcher waits
/// (back-pressure on the client instead of unbounded memory).
pub const OFFLOAD_QUEUE_REQUESTS: usize = 32;

/// Corked reply bytes that force a send even while more requests are
/// buffered: bounds the latency of the first reply in a long batch.
pub const CORK_MAX_BYTES: usize = 256 * 1024;

/// Read data larger than this is sent straight from the read buffer with
/// `writev` rather than copied into the cork.
pub const CORK_COPY_MAX_BYTES: usize = 64 * 1024;

/// A connected client that sent nothing for this long, with no reply
/// outstanding, gives its thread back: its socket waits in the process's
/// one idle poller (`crate::park`) until the next request starts a thread for it
/// again (a thread spawn, tens of microseconds, on that request). Long
/// enough that a client pausing between bursts keeps its thread.
pub const CONN_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Clients one listener accepts at once unless `serve --nbd-max-clients`
/// says otherwise; one more is closed on accept with a log line, so a
/// connection flood cannot exhaust threads or descriptors. Sized for a
/// thousand volumes on one listener with a client each: an idle client
/// costs no thread once parked ([`CONN_IDLE`]; its offload workers start
/// only under load), three descriptors and, while it has a thread, a
/// 256 KiB receive buffer; the daemon raises its descriptor limit to the
/// hard limit at start.
pub const DEFAULT_MAX_CLIENTS: usize = 1024;
