//! NBD export: fixed-newstyle handshake and the transmission phase with
//! simple replies (which the Linux kernel client needs).
//!
//! One [`NbdServer`] per listen address (TCP, default `127.0.0.1:10809`, or a
//! Unix socket); each serves any number of exports, and the export name is
//! the volume name. Per client connection:
//!
//! * one thread does the handshake, then becomes a worker;
//! * [`WORKERS_PER_CONNECTION`] workers each loop: take the receive lock,
//!   read one request (and its payload), release it, run the request on the
//!   volume, take the send lock, write the reply. Requests are served
//!   concurrently with no hand-off between threads on the hot path (the
//!   design nbdkit calls "parallel").
//!
//! A frame that cannot be trusted (bad magic, a write longer than
//! [`proto::MAX_REQUEST_BYTES`], a broken handshake) drops that one client;
//! a request that is merely wrong (out of range, unknown command, bad flag)
//! gets an error reply and the connection carries on.

pub mod proto;
mod server;

pub use server::{ListenAddr, NbdServer, DEFAULT_LISTEN};

/// Concurrent requests served per connection. fio's and the kernel's
/// clients keep up to 32 to 128 in flight; 16 workers keep a 2-core machine
/// busy without thrashing, and a client with more in flight simply queues in
/// the socket buffer.
pub const WORKERS_PER_CONNECTION: usize = 16;

/// Clients a server accepts at once; one more is closed on accept with a log
/// line, so a connection flood cannot exhaust threads.
pub const MAX_CONNECTIONS: usize = 64;
