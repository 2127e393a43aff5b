//! The primary's side of one replication connection: the ordered queue of
//! replicated writes of one consistency group, the sender and receiver
//! threads, and what happens when the link drops.
//!
//! Threads: the receiver runs while anything is outstanding (it is what
//! notices a silent peer); after [`RECEIVER_IDLE`] with an empty queue and
//! no ACK it parks the socket in the process's idle poller (`crate::park`),
//! which takes the heartbeats, starts a receiver again for any other frame
//! and takes the link down when the peer falls silent. The sender runs
//! only while there is something to send: the first write queued after it
//! ended starts it again, and it ends after [`SENDER_IDLE`] with an empty
//! queue, so an idle link costs no thread. Heartbeats go out from the
//! process's one heartbeat thread (heartbeat.rs) through the same writer
//! the sender uses.
//!
//! Every replicated write gets its sequence number (and, in hybrid mode,
//! its group number) under the queue lock, in the order it is sent; that
//! lock is the one ordering point of the group (one short critical section
//! per write). The sender writes queued items to the socket in batches; the
//! receiver reads acknowledgements (cumulative in async and hybrid mode,
//! per write in sync mode) and completes items: their scoreboard counts
//! drop and sync-mode writers wake.
//!
//! When anything goes wrong (a socket error, a malformed frame, no frame
//! from the peer within the timeout, an ERROR frame, a full queue under the
//! drop-to-logging policy) the link goes down: every queued and unacked
//! item completes as failed (its chunks become out of sync, so the next
//! update sync resends them), sync writers wake with an error, and every
//! set of the group drops to logging together.

use super::heartbeat::{self, LinkWriter};
use super::set::ReplSet;
use super::wire::{self, FrameType, WireError};
use super::{Mode, NodeCtx, QueueFull, MAX_GROUP_WRITES};
use crate::park::Woken;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::VecDeque;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How a sync-mode writer learns its write's fate: the completion stores
/// the outcome and unparks exactly this thread (no condition variable
/// shared by every waiter, so an ACK wakes one writer, not all of them).
pub struct Waiter {
    /// 0 waiting, 1 acknowledged, 2 failed.
    state: AtomicU8,
    thread: std::thread::Thread,
}

impl Default for Waiter {
    fn default() -> Self {
        Waiter {
            state: AtomicU8::new(0),
            thread: std::thread::current(),
        }
    }
}

impl Waiter {
    fn done(&self) -> Option<bool> {
        match self.state.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        }
    }
}

/// One queued replicated operation.
pub struct Item {
    pub seq: u64,
    pub group: u64,
    pub set: Arc<ReplSet>,
    pub offset: u64,
    pub len: u32,
    pub flags: u32,
    pub data: Option<Arc<Vec<u8>>>,
    pub waiter: Option<Arc<Waiter>>,
    pub enqueued: Instant,
    acked: bool,
}

struct Queue {
    items: VecDeque<Item>,
    /// Index of the first item not yet handed to the socket.
    unsent: usize,
    bytes: u64,
    next_seq: u64,
    group: u64,
    group_writes: u32,
    /// The open group holds resync copies only (see `enqueue`).
    copy_group: bool,
    /// Connection generation the items belong to; `up` while connected.
    epoch: u64,
    up: bool,
    down_reason: Option<String>,
    /// Connection generation whose sender runs (0: none). Set by the
    /// `enqueue` that starts a sender, cleared by the sender as it ends,
    /// both under this lock: a queued item never waits for a sender that
    /// decided to end.
    sender_epoch: u64,
}

pub struct QueueLimits {
    pub bytes: u64,
    pub items: usize,
    pub on_full: QueueFull,
    /// The RPO bound (`--max-lag`): async and hybrid writers wait while
    /// the queue holds more than this many bytes, or its oldest write has
    /// waited longer than this.
    pub max_lag_bytes: Option<u64>,
    pub max_lag: Option<Duration>,
}

/// Counters `repl info` reports.
#[derive(Default)]
pub struct LinkStats {
    pub sent_writes: AtomicU64,
    pub acked_writes: AtomicU64,
    pub acked_bytes: AtomicU64,
    pub groups: AtomicU64,
    pub reconnects: AtomicU64,
    pub blocked_writers: AtomicU64,
    /// Writers that waited for the lag bound (`--max-lag`).
    pub throttled_writers: AtomicU64,
}

pub struct Link {
    pub group: String,
    pub peer_addr: String,
    pub mode: Mode,
    pub timeout: Duration,
    ctx: Arc<NodeCtx>,
    sets: RwLock<Vec<Arc<ReplSet>>>,
    q: Mutex<Queue>,
    cv_send: Condvar,
    cv_space: Condvar,
    cv_ack: Condvar,
    /// Seed 001's "group in progress" flag: set when a write joins or
    /// opens a group, cleared when any write completes locally, so a write
    /// issued after another completed always lands in a later group.
    group_open: AtomicBool,
    limits: QueueLimits,
    conn: Mutex<Option<TcpStream>>,
    /// The connection's writer (sender and heartbeats), while connected.
    writer: Mutex<Option<LinkWriter>>,
    /// This link, for the sender `enqueue` starts.
    me: Weak<Link>,
    pub stats: LinkStats,
    pub stop: AtomicBool,
    /// Set by `Replication::manage`: the link manager starts its care of
    /// this link afresh (manager.rs).
    pub rearm: AtomicBool,
    /// A sync of this group is running (one at a time).
    pub syncing: AtomicBool,
    /// The last sync could not connect to the peer: the link manager
    /// probes it every tick and syncs as soon as it answers, instead of
    /// waiting for the next autosync retry.
    pub unreachable: AtomicBool,
    pub peer_node: Mutex<Option<String>>,
}

/// What the sender copies out of an item: set id, seq, group, offset,
/// length, flags, data.
type Outgoing = (u32, u64, u64, u64, u32, u32, Option<Arc<Vec<u8>>>);

const SEND_BATCH: usize = 128;
/// The link writer's buffer while a sender runs: a batch of frames (128
/// writes of 4 KiB, or 16 resync chunks of 64 KiB) in one socket write.
const SEND_BUFFER_BYTES: usize = 1 << 20;
/// ... and while the link is idle: heartbeats only.
const IDLE_BUFFER_BYTES: usize = 8 << 10;
/// The sender ends after this long with nothing to send. Long enough that
/// a writer pausing between bursts keeps its sender (starting one costs a
/// thread spawn, tens of microseconds, on the next write), short enough
/// that idle links give their threads back soon.
pub const SENDER_IDLE: Duration = Duration::from_secs(2);
/// The receiver parks its socket (`crate::park`) when nothing is
/// outstanding and no ACK came for this long: the same grace as the
/// sender's, for the same reason (a writer pausing between bursts keeps
/// its threads; an idle link gives them back).
pub const RECEIVER_IDLE: Duration = SENDER_IDLE;

#[derive(Debug, Clone)]
pub struct Down(pub String);

impl Link {
    pub fn new(
        ctx: Arc<NodeCtx>,
        group: &str,
        peer_addr: &str,
        mode: Mode,
        timeout: Duration,
        limits: QueueLimits,
    ) -> Arc<Link> {
        Arc::new_cyclic(|me| Link {
            group: group.to_owned(),
            peer_addr: peer_addr.to_owned(),
            mode,
            timeout,
            ctx,
            sets: RwLock::new(Vec::new()),
            q: Mutex::new(Queue {
                items: VecDeque::new(),
                unsent: 0,
                bytes: 0,
                next_seq: 1,
                group: 0,
                group_writes: 0,
                copy_group: false,
                epoch: 0,
                up: false,
                down_reason: Some("not connected yet".into()),
                sender_epoch: 0,
            }),
            cv_send: Condvar::new(),
            cv_space: Condvar::new(),
            cv_ack: Condvar::new(),
            group_open: AtomicBool::new(false),
            limits,
            conn: Mutex::new(None),
            writer: Mutex::new(None),
            me: me.clone(),
            stats: LinkStats::default(),
            stop: AtomicBool::new(false),
            rearm: AtomicBool::new(false),
            syncing: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
            peer_node: Mutex::new(None),
        })
    }

    pub fn sets(&self) -> Vec<Arc<ReplSet>> {
        self.sets.read().clone()
    }

    pub fn add_set(&self, set: Arc<ReplSet>) {
        self.sets.write().push(set);
    }

    pub fn remove_set(&self, name: &str) {
        self.sets.write().retain(|s| s.name != name);
    }

    pub fn is_up(&self) -> bool {
        self.q.lock().up
    }

    pub fn down_reason(&self) -> Option<String> {
        self.q.lock().down_reason.clone()
    }

    /// (queued items, queued bytes, seconds the oldest has waited).
    pub fn lag(&self) -> (usize, u64, f64) {
        let q = self.q.lock();
        let age = q
            .items
            .front()
            .map(|i| i.enqueued.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        (q.items.len(), q.bytes, age)
    }

    /// Groups still unacknowledged (hybrid).
    pub fn groups_outstanding(&self) -> u64 {
        let q = self.q.lock();
        match (q.items.front(), q.items.back()) {
            (Some(a), Some(b)) if self.mode == Mode::Hybrid => b.group - a.group + 1,
            (Some(_), Some(_)) => q.items.len() as u64,
            _ => 0,
        }
    }

    /// Queue one replicated operation (a write of up to 4 MiB, zeroes, or a
    /// flush) and return its sequence number. Blocks while the queue is
    /// full under the blocking policy. `isolate`: in hybrid mode the item
    /// gets a group of its own (a resync copy must apply after every
    /// write queued before it).
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        set: &Arc<ReplSet>,
        offset: u64,
        len: u32,
        flags: u32,
        data: Option<Arc<Vec<u8>>>,
        waiter: Option<Arc<Waiter>>,
        isolate: bool,
    ) -> Result<u64, Down> {
        let mut q = self.q.lock();
        loop {
            if !q.up {
                return Err(Down(
                    q.down_reason.clone().unwrap_or_else(|| "link down".into()),
                ));
            }
            let full = self.mode != Mode::Sync
                && !q.items.is_empty()
                && (q.bytes + len as u64 > self.limits.bytes || q.items.len() >= self.limits.items);
            // The lag bound throttles (never drops to logging): a writer
            // waits until the peer caught up enough for this write to fit.
            let lagging = self.mode != Mode::Sync
                && !q.items.is_empty()
                && (self
                    .limits
                    .max_lag_bytes
                    .is_some_and(|m| q.bytes + len as u64 > m)
                    || self.limits.max_lag.is_some_and(|m| {
                        q.items.front().is_some_and(|i| i.enqueued.elapsed() > m)
                    }));
            if lagging {
                self.stats.throttled_writers.fetch_add(1, Ordering::Relaxed);
                self.cv_space.wait_for(&mut q, Duration::from_millis(20));
                continue;
            }
            if !full {
                break;
            }
            match self.limits.on_full {
                QueueFull::Block => {
                    self.stats.blocked_writers.fetch_add(1, Ordering::Relaxed);
                    self.cv_space.wait_for(&mut q, Duration::from_millis(100));
                }
                QueueFull::Log => {
                    let epoch = q.epoch;
                    drop(q);
                    self.down(epoch, "the async queue is full (policy: drop to logging)");
                    return Err(Down("async queue full".into()));
                }
            }
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        let group = match self.mode {
            Mode::Sync => 0,
            Mode::Async => seq,
            Mode::Hybrid => {
                // A resync copy (`isolate`) never shares a group with a
                // client write: the peer applies a group's writes in any
                // order, and a copy must land after the writes to its
                // chunk queued before it and before those queued after.
                // Copies of distinct ranges may share one with each other
                // (the peer then applies them side by side): consecutive
                // copies join the open copy group; anything else opens a
                // new group.
                let was_open = self.group_open.swap(true, Ordering::SeqCst);
                let joins = if isolate {
                    q.copy_group
                } else {
                    was_open && !q.copy_group
                };
                q.copy_group = isolate;
                if !joins || q.group_writes >= MAX_GROUP_WRITES || q.group == 0 {
                    q.group += 1;
                    q.group_writes = 0;
                    self.stats.groups.fetch_add(1, Ordering::Relaxed);
                }
                q.group_writes += 1;
                if flags & wire::WRITE_FLUSH != 0 || isolate {
                    // A flush closes its group: the peer flushes after the
                    // group and before the next one.
                    self.group_open.store(false, Ordering::SeqCst);
                }
                q.group
            }
        };
        q.bytes += len as u64;
        q.items.push_back(Item {
            seq,
            group,
            set: set.clone(),
            offset,
            len,
            flags,
            data,
            waiter,
            enqueued: Instant::now(),
            acked: false,
        });
        let start = q.sender_epoch != q.epoch;
        if start {
            q.sender_epoch = q.epoch;
        }
        let epoch = q.epoch;
        drop(q);
        if start {
            self.start_sender(epoch);
        } else {
            self.cv_send.notify_one();
        }
        Ok(seq)
    }

    /// Start the sender of connection generation `epoch` (the caller set
    /// `sender_epoch`). A failure to start it takes the link down: the
    /// queued items fail and their chunks go out of sync.
    fn start_sender(&self, epoch: u64) {
        let (Some(me), Some(w)) = (self.me.upgrade(), self.writer.lock().clone()) else {
            return; // closing, or the connection is gone already
        };
        let spawned = std::thread::Builder::new()
            .name(format!("repl-send-{}", self.group))
            .spawn(move || me.sender(epoch, w));
        if let Err(e) = spawned {
            self.down(epoch, &format!("starting the sender: {e}"));
        }
    }

    /// A write completed locally (seed 001: the next write opens a group).
    #[inline]
    pub fn local_complete(&self) {
        if self.mode == Mode::Hybrid {
            self.group_open.store(false, Ordering::SeqCst);
        }
    }

    /// Wait for a sync-mode item's acknowledgement (the waiter was made on
    /// this thread). `false`: it failed.
    pub fn wait(&self, w: &Waiter) -> bool {
        loop {
            if let Some(ok) = w.done() {
                return ok;
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
    }

    /// Wait until every queued item is acknowledged (or the link drops).
    pub fn drain(&self) -> Result<(), Down> {
        let mut q = self.q.lock();
        loop {
            if !q.up {
                return Err(Down(q.down_reason.clone().unwrap_or_default()));
            }
            if q.items.is_empty() {
                return Ok(());
            }
            self.cv_ack.wait_for(&mut q, Duration::from_millis(100));
        }
    }

    /// [`Self::drain`] for at most `limit`.
    pub fn drain_for(&self, limit: Duration) -> Result<(), Down> {
        let deadline = Instant::now() + limit;
        let mut q = self.q.lock();
        while q.up && !q.items.is_empty() {
            if Instant::now() >= deadline {
                return Err(Down("drain timed out".into()));
            }
            self.cv_ack.wait_for(&mut q, Duration::from_millis(50));
        }
        Ok(())
    }

    /// Dial the peer, authenticate, open the link for this group's sets and
    /// start the sender and receiver. Items queued from now on are sent.
    pub fn connect(self: &Arc<Self>) -> Result<(), String> {
        if self.is_up() {
            return Ok(());
        }
        let sets = self.sets();
        let names: Vec<super::requests::LinkSet> = sets
            .iter()
            .map(|s| super::requests::LinkSet {
                id: s.id,
                name: s.name.clone(),
                size_bytes: s.size_bytes,
            })
            .collect();
        let (stream, peer) = super::peer::dial(&self.ctx, &self.peer_addr, self.timeout)?;
        let mut s = &stream;
        let req = super::requests::PeerRequest::Link {
            group: self.group.clone(),
            mode: self.mode,
            sets: names,
        };
        super::peer::send_control(&mut s, &req).map_err(|e| e.to_string())?;
        super::peer::read_reply(&mut s).map_err(|e| format!("peer refused the link: {e}"))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        // Everything that can fail before the link is published: a writer
        // registered for heartbeats on a link that never came up would keep
        // the peer's side of it alive.
        let send_stream = stream.try_clone().map_err(|e| e.to_string())?;
        let conn = stream.try_clone().map_err(|e| e.to_string())?;
        // In place before `up`: the first enqueue starts the sender with it.
        *self.writer.lock() = Some(heartbeat::writer(send_stream, IDLE_BUFFER_BYTES));
        let epoch = {
            let mut q = self.q.lock();
            q.epoch += 1;
            q.up = true;
            q.down_reason = None;
            q.group = q.group.max(1);
            q.copy_group = false;
            q.epoch
        };
        *self.conn.lock() = Some(conn);
        *self.peer_node.lock() = Some(peer);
        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.start_receiver(epoch, stream) {
            // Up without a receiver nobody would notice the peer go.
            let why = format!("starting the receiver: {e}");
            self.down(epoch, &why);
            return Err(why);
        }
        Ok(())
    }

    fn sender(self: Arc<Self>, epoch: u64, w: LinkWriter) {
        let mut batch: Vec<Outgoing> = Vec::with_capacity(SEND_BATCH);
        // A small buffer would still work, one write per frame or so.
        if let Err(e) = heartbeat::set_capacity(&w, SEND_BUFFER_BYTES) {
            log::debug!("link {}: growing the send buffer: {e}", self.group);
        }
        loop {
            {
                let mut q = self.q.lock();
                loop {
                    if q.epoch != epoch || !q.up {
                        if q.sender_epoch == epoch {
                            q.sender_epoch = 0;
                        }
                        return;
                    }
                    if q.unsent < q.items.len() {
                        break;
                    }
                    if self.cv_send.wait_for(&mut q, SENDER_IDLE).timed_out()
                        && q.unsent >= q.items.len()
                    {
                        // Under the queue lock, before a new sender can
                        // start and grow it again. The buffer is empty
                        // (every batch ends with a flush).
                        let _ = heartbeat::set_capacity(&w, IDLE_BUFFER_BYTES);
                        q.sender_epoch = 0;
                        return;
                    }
                }
                let end = (q.unsent + SEND_BATCH).min(q.items.len());
                for i in q.unsent..end {
                    let it = &q.items[i];
                    batch.push((
                        it.set.id,
                        it.seq,
                        it.group,
                        it.offset,
                        it.len,
                        it.flags,
                        it.data.clone(),
                    ));
                }
                q.unsent = end;
            }
            let res = (|| -> Result<(), WireError> {
                let mut w = w.lock();
                for (set, seq, group, off, len, flags, data) in batch.drain(..) {
                    let fields = wire::write_fields(set, seq, group, off, len, flags);
                    let body: &[u8] = data.as_deref().map(|d| d.as_slice()).unwrap_or(&[]);
                    wire::write_frame_parts(&mut *w, FrameType::Write, &[&fields, body])?;
                    self.stats.sent_writes.fetch_add(1, Ordering::Relaxed);
                }
                w.flush()?;
                Ok(())
            })();
            if let Err(e) = res {
                self.down(epoch, &format!("sending to {}: {e}", self.peer_addr));
                return;
            }
        }
    }

    /// Start the receiver thread of connection generation `epoch`.
    fn start_receiver(self: &Arc<Self>, epoch: u64, stream: TcpStream) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("repl-recv-{}", self.group))
            .spawn(move || me.receiver(epoch, stream))
            .map(drop)
    }

    fn receiver(self: Arc<Self>, epoch: u64, mut stream: TcpStream) {
        let mut last_ack = Instant::now();
        loop {
            let f = match wire::read_frame(&mut stream) {
                Ok(f) => f,
                Err(e) if e.is_timeout() => {
                    self.down(epoch, &self.silence());
                    return;
                }
                Err(e) => {
                    self.down(epoch, &format!("from {}: {e}", self.peer_addr));
                    return;
                }
            };
            let res = match f.kind {
                FrameType::Ack => {
                    last_ack = Instant::now();
                    wire::decode_ack(&f.payload)
                        .map_err(|e| e.to_string())
                        .and_then(|(seq, flags)| self.ack(epoch, seq, flags))
                }
                FrameType::Heartbeat => {
                    if last_ack.elapsed() >= RECEIVER_IDLE && self.q.lock().items.is_empty() {
                        match self.park_receiver(epoch, stream) {
                            Ok(()) => return,
                            Err(back) => stream = back,
                        }
                        last_ack = Instant::now();
                    }
                    Ok(())
                }
                FrameType::Error => Err(format!(
                    "peer reported: {}",
                    String::from_utf8_lossy(&f.payload)
                )),
                other => Err(format!("malformed: unexpected {other:?} frame")),
            };
            if let Err(e) = res {
                self.down(epoch, &e);
                return;
            }
        }
    }

    /// Nothing is outstanding and the peer sent only heartbeats for
    /// [`RECEIVER_IDLE`]: hand the socket to the process's idle poller
    /// (`crate::park`), which takes the peer's heartbeats itself, wakes a
    /// receiver thread for anything else (an ACK, an ERROR, the end), and
    /// takes the link down when the heartbeats stop. The stream comes back
    /// when there is no poller.
    fn park_receiver(self: &Arc<Self>, epoch: u64, stream: TcpStream) -> Result<(), TcpStream> {
        let watch = crate::park::Watch {
            on_readable: |(_, _, s): &mut (Arc<Link>, u64, TcpStream)| {
                heartbeat::take_heartbeats(s)
            },
            timeout: self.timeout,
        };
        crate::park::park_watched(
            (self.clone(), epoch, stream),
            |(_, _, s)| s.as_fd(),
            watch,
            |(link, epoch, stream), why| {
                // On the poller's thread: only start one.
                let res = match why {
                    Woken::Readable => link.start_receiver(epoch, stream),
                    Woken::TimedOut => {
                        let l = link.clone();
                        std::thread::Builder::new()
                            .name(format!("repl-recv-{}", link.group))
                            .spawn(move || l.down(epoch, &l.silence()))
                            .map(drop)
                    }
                };
                if let Err(e) = res {
                    link.down(epoch, &format!("starting the receiver: {e}"));
                }
            },
        )
        .map_err(|(_, _, s)| s)
    }

    /// Why the link goes down when the peer falls silent.
    fn silence(&self) -> String {
        format!(
            "no heartbeat from {} within {:.1}s",
            self.peer_addr,
            self.timeout.as_secs_f64()
        )
    }

    fn ack(&self, epoch: u64, seq: u64, flags: u32) -> Result<(), String> {
        let mut done = Vec::new();
        {
            let mut q = self.q.lock();
            if q.epoch != epoch || !q.up {
                return Ok(());
            }
            if flags & wire::ACK_CUMULATIVE != 0 {
                if q.unsent > 0 && q.items[q.unsent - 1].seq < seq || q.unsent == 0 {
                    if q.items.front().is_none_or(|i| i.seq > seq) {
                        return Ok(()); // already acknowledged
                    }
                    return Err(format!("peer acknowledged write {seq}, never sent"));
                }
                while q.items.front().is_some_and(|i| i.seq <= seq) {
                    let it = q.items.pop_front().expect("front");
                    q.unsent -= 1;
                    q.bytes -= it.len as u64;
                    done.push(it);
                }
            } else {
                let sent = q.unsent;
                let idx = q.items.range(..sent).position(|i| i.seq == seq);
                let Some(idx) = idx else {
                    return Err(format!("peer acknowledged write {seq}, not outstanding"));
                };
                q.items[idx].acked = true;
                while q.items.front().is_some_and(|i| i.acked) {
                    let it = q.items.pop_front().expect("front");
                    q.unsent -= 1;
                    q.bytes -= it.len as u64;
                    done.push(it);
                }
            }
            for it in &done {
                complete(it, true);
            }
        }
        if !done.is_empty() {
            let bytes: u64 = done.iter().map(|i| i.len as u64).sum();
            self.stats
                .acked_writes
                .fetch_add(done.len() as u64, Ordering::Relaxed);
            self.stats.acked_bytes.fetch_add(bytes, Ordering::Relaxed);
            self.cv_ack.notify_all();
            self.cv_space.notify_all();
        }
        Ok(())
    }

    /// Take the link down (connection generation `epoch`): fail everything
    /// outstanding, drop every set of the group to logging.
    pub fn down(&self, epoch: u64, reason: &str) {
        let items = {
            let mut q = self.q.lock();
            if q.epoch != epoch || !q.up {
                return;
            }
            q.up = false;
            q.down_reason = Some(reason.to_owned());
            q.unsent = 0;
            q.bytes = 0;
            std::mem::take(&mut q.items)
        };
        if let Some(c) = self.conn.lock().take() {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.writer.lock().take();
        for it in &items {
            complete(it, false);
        }
        self.cv_ack.notify_all();
        self.cv_space.notify_all();
        self.cv_send.notify_all();
        log::warn!(
            "replication link {} to {}: down: {reason}",
            self.group,
            self.peer_addr
        );
        for s in self.sets() {
            s.link_lost(reason);
        }
    }

    /// Close the link on purpose (suspend, disable, swap, shutdown).
    pub fn close(&self, reason: &str) {
        let epoch = self.q.lock().epoch;
        self.down(epoch, reason);
    }
}

fn complete(it: &Item, ok: bool) {
    if it.flags & wire::WRITE_FLUSH == 0 {
        it.set.scoreboard.end(it.offset, it.len as u64, ok);
    }
    if let Some(w) = &it.waiter {
        w.state.store(if ok { 1 } else { 2 }, Ordering::SeqCst);
        w.thread.unpark();
    }
}
