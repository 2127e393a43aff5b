//! The secondary side: the guard layer that keeps clients from writing to
//! a replication target, and the applier that serves a data link.
//!
//! Applying in order (async and hybrid mode): writes arrive in sequence
//! order carrying group numbers that never decrease. The applier runs the
//! writes of the current group concurrently on a few workers and holds
//! every write of a later group until the current group is fully applied
//! (and flushed when it carried a flush), then acknowledges everything up
//! to the group's last write with one cumulative ACK. In async mode every
//! write is its own group, so writes are applied one at a time. A cut at
//! any moment (a crash of this daemon, a dropped link) leaves groups
//! 1..k applied plus a subset of group k+1: a state the primary itself
//! could have crashed in.
//!
//! Sync mode needs no ordering here (the primary acknowledges nothing
//! before we did), so writes are applied as they come and acknowledged
//! one by one.

use super::heartbeat::{self, LinkWriter};
use super::pool::LazyPool;
use super::scoreboard::Scoreboard;
use super::wire::{self, FrameType, WireError, WriteFrame};
use super::Mode;
use crate::device::{BlockDevice, DeviceError, Result};
use crate::interposer::Service;
use crate::park::Woken;
use crossbeam_channel::Receiver;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Name of the guard layer in a secondary volume's stack.
pub const SECONDARY_LAYER: &str = "repl-secondary";
const WORKERS: usize = 4;
/// An apply worker ends after this long without a write (an idle link
/// keeps none; a busy one keeps its workers between bursts).
const WORKER_IDLE: Duration = Duration::from_secs(2);
/// Writes dispatched to the apply workers and not yet collected (sync
/// mode; the ordered modes keep at most `WORKERS`). A sync-mode primary
/// has at most its link window in flight; 64 keeps the four workers busy
/// with room to spare, and bounds the two channels.
const MAX_APPLYING: usize = 64;

/// The guard: reads pass, client writes are refused (EPERM). The applier
/// writes below it.
pub struct SecondaryGuard {
    volume: String,
    lower: RwLock<Option<Arc<dyn BlockDevice>>>,
}

impl SecondaryGuard {
    pub fn new(volume: &str) -> Self {
        SecondaryGuard {
            volume: volume.to_owned(),
            lower: RwLock::new(None),
        }
    }

    pub fn with_lower<T>(&self, f: impl FnOnce(&dyn BlockDevice) -> Result<T>) -> Result<T> {
        let g = self.lower.read_recursive();
        match g.as_ref() {
            Some(d) => f(d.as_ref()),
            None => Err(DeviceError::Failed {
                reason: format!("volume {} has no replication guard", self.volume),
            }),
        }
    }
}

impl Service for SecondaryGuard {
    fn name(&self) -> &str {
        SECONDARY_LAYER
    }

    fn tier(&self) -> crate::interposer::Tier {
        crate::interposer::Tier::Guard
    }

    fn stack_on(
        &self,
        lower: Arc<dyn BlockDevice>,
    ) -> std::result::Result<Arc<dyn BlockDevice>, String> {
        *self.lower.write() = Some(lower.clone());
        Ok(Arc::new(GuardDevice { lower }))
    }
}

struct GuardDevice {
    lower: Arc<dyn BlockDevice>,
}

impl BlockDevice for GuardDevice {
    fn size_bytes(&self) -> u64 {
        self.lower.size_bytes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.lower.read(buf, offset)
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<crate::device::Extent>> {
        self.lower.allocation(offset, len)
    }
    fn write(&self, _buf: &[u8], _offset: u64, _fua: bool) -> Result<()> {
        Err(DeviceError::ReadOnly)
    }
    fn flush(&self) -> Result<()> {
        self.lower.flush()
    }
    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(DeviceError::ReadOnly)
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _fua: bool) -> Result<()> {
        Err(DeviceError::ReadOnly)
    }
    fn block_size_bytes(&self) -> u32 {
        self.lower.block_size_bytes()
    }
    fn latency_class(&self) -> crate::device::LatencyClass {
        self.lower.latency_class()
    }
    fn write_may_block(&self, _offset: u64, _len: u64) -> bool {
        false
    }
    fn refuses_writes(&self) -> bool {
        true
    }
}

/// A secondary set: the target volume of a primary elsewhere.
///
/// Its scoreboard marks every chunk it received a write for (durably,
/// before applying it) until the primary says every other member holds
/// that chunk too (the release round, `mark` and `release`): a promotion
/// here then knows which chunks another secondary may lack or hold
/// differently, without a full sync (DRBD 9 keeps a bitmap per peer on
/// every node for the same reason; docs/replication-protocol.md).
pub struct SecondarySet {
    pub name: String,
    pub volume: String,
    pub size_bytes: u64,
    pub guard: Arc<SecondaryGuard>,
    /// The applier holds this shared per write; taking the safety snapshot
    /// holds it exclusively, so no replicated write slips between the
    /// snapshot's establish and its layer.
    pub gate: RwLock<()>,
    pub applied_writes: AtomicU64,
    pub applied_bytes: AtomicU64,
    pub last_seq: AtomicU64,
    pub connected: AtomicBool,
    pub scoreboard: Arc<Scoreboard>,
    /// The release epoch each chunk was last written in (0: before this
    /// daemon started, or a change of this node's own).
    marks: Box<[AtomicU32]>,
    epoch: AtomicU32,
    /// Random per runtime: a release from before a restart is ignored.
    pub session: u64,
    /// When released marks were last cleared on disk.
    last_clean: Mutex<std::time::Instant>,
    /// The lag the primary reported at its last release round, and when
    /// (unix ms): what a takeover here may lose.
    pub primary_lag_bytes: AtomicU64,
    pub primary_lag_ms: AtomicU64,
    pub last_contact_ms: AtomicU64,
}

/// Released marks are cleared in memory at once (what `mark` answers) but
/// on disk only this often: a chunk written again meanwhile finds its bit
/// still durable and waits for no commit. After a crash the file holds at
/// most this much more than the marks did, which only makes a later
/// re-attach compare more.
const MARK_CLEAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

impl SecondarySet {
    pub fn new(
        name: &str,
        volume: &str,
        size_bytes: u64,
        guard: Arc<SecondaryGuard>,
        scoreboard: Arc<Scoreboard>,
    ) -> Self {
        let chunks = scoreboard.chunks();
        SecondarySet {
            marks: (0..chunks).map(|_| AtomicU32::new(0)).collect(),
            epoch: AtomicU32::new(1),
            session: u64::from_le_bytes(
                wire::nonce().expect("the kernel's random source")[..8]
                    .try_into()
                    .expect("8 bytes"),
            ),
            scoreboard,
            last_clean: Mutex::new(std::time::Instant::now()),
            primary_lag_bytes: AtomicU64::new(0),
            primary_lag_ms: AtomicU64::new(0),
            last_contact_ms: AtomicU64::new(0),
            name: name.to_owned(),
            volume: volume.to_owned(),
            size_bytes,
            guard,
            gate: RwLock::new(()),
            applied_writes: AtomicU64::new(0),
            applied_bytes: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            connected: AtomicBool::new(false),
        }
    }

    fn apply(&self, w: &WriteFrame) -> Result<()> {
        let _g = self.gate.read();
        let marked = (w.flags & wire::WRITE_FLUSH == 0)
            .then(|| self.scoreboard.chunk_range(w.offset, (w.len as u64).max(1)));
        if let Some(chunks) = marked.clone() {
            // The epoch first, then the bit: a release that reads the old
            // epoch clears the bit before this sets it again.
            let e = self.epoch.load(Ordering::SeqCst);
            for c in chunks.clone() {
                self.marks[c as usize].store(e, Ordering::SeqCst);
            }
            self.scoreboard.count(chunks.clone());
            for c in chunks.clone() {
                self.scoreboard.set_oos(c);
            }
            if let Err(e) = self.scoreboard.make_durable(chunks.clone()) {
                self.scoreboard.uncount(chunks);
                return Err(e);
            }
        }
        let r = self.guard.with_lower(|d| {
            if w.flags & wire::WRITE_FLUSH != 0 {
                d.flush()
            } else if w.flags & wire::WRITE_ZEROES != 0 {
                d.write_zeroes(w.offset, w.len as u64, w.fua())
            } else {
                d.write(w.data(), w.offset, w.fua())
            }
        });
        if r.is_ok() && w.flags & wire::WRITE_FLUSH == 0 {
            self.applied_writes.fetch_add(1, Ordering::Relaxed);
            self.applied_bytes
                .fetch_add(w.len as u64, Ordering::Relaxed);
        }
        self.last_seq.fetch_max(w.seq, Ordering::Relaxed);
        if let Some(chunks) = marked {
            self.scoreboard.uncount(chunks);
        }
        r
    }

    /// Mark the chunks of writes about to be applied (`ranges`: offset and
    /// length, from the frames buffered behind the current one) in one
    /// commit, so each of them finds its mark durable already. Ranges
    /// past the end are left to the frame check.
    pub fn mark_ahead(&self, ranges: impl Iterator<Item = (u64, u64)>) {
        let e = self.epoch.load(Ordering::SeqCst);
        let mut chunks = Vec::new();
        for (off, len) in ranges {
            if len == 0 || off.checked_add(len).is_none_or(|end| end > self.size_bytes) {
                continue;
            }
            for c in self.scoreboard.chunk_range(off, len) {
                self.marks[c as usize].store(e, Ordering::SeqCst);
                self.scoreboard.set_oos(c);
                chunks.push(c);
            }
        }
        // A failure here shows again, and fails the write, in `apply`.
        let _ = self.scoreboard.make_durable_each(chunks.into_iter());
    }

    /// The primary was heard from just now (a heartbeat, a release round):
    /// what `repl status` shows as the last contact.
    pub fn contact(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_contact_ms.store(now, Ordering::Relaxed);
    }

    /// Release round, step 1: writes received from now on belong to a new
    /// epoch; returns the one that closed.
    pub fn mark(&self) -> u32 {
        self.epoch.fetch_add(1, Ordering::SeqCst)
    }

    /// Release round, step 2: `runs` are the same on every member; their
    /// chunks last written in `epoch` or before lose their bit.
    pub fn release(&self, session: u64, epoch: u32, runs: &[[u64; 2]]) -> Result<u64> {
        if session != self.session {
            return Ok(0);
        }
        let mut n = 0;
        for [first, count] in runs {
            let end = first.saturating_add(*count).min(self.scoreboard.chunks());
            for c in *first..end {
                if self.marks[c as usize].load(Ordering::SeqCst) <= epoch && self.scoreboard.take(c)
                {
                    n += 1;
                }
            }
        }
        let mut last = self.last_clean.lock();
        if last.elapsed() >= MARK_CLEAN_INTERVAL {
            self.scoreboard.clean()?;
            *last = std::time::Instant::now();
        }
        Ok(n)
    }

    pub fn flush(&self) -> Result<()> {
        let _g = self.gate.read();
        self.guard.with_lower(|d| d.flush())
    }
}

/// Running data links by group, so a reconnect replaces the old link only
/// after its applier has stopped (two appliers of one group never run).
#[derive(Default)]
pub struct LinkTable {
    active: Mutex<HashMap<String, (TcpStream, Receiver<()>)>>,
}

impl LinkTable {
    /// Stop the group's running link, if any, and wait for its applier.
    pub fn replace(&self, group: &str, new: Option<(TcpStream, Receiver<()>)>) {
        let old = {
            let mut a = self.active.lock();
            let old = a.remove(group);
            if let Some(n) = new {
                a.insert(group.to_owned(), n);
            }
            old
        };
        if let Some((s, done)) = old {
            let _ = s.shutdown(Shutdown::Both);
            let _ = done.recv_timeout(Duration::from_secs(60));
        }
    }

    pub fn stop_all(&self) {
        let all: Vec<String> = self.active.lock().keys().cloned().collect();
        for g in all {
            self.replace(&g, None);
        }
    }
}

fn send(w: &LinkWriter, kind: FrameType, payload: &[u8]) -> std::result::Result<(), WireError> {
    let mut g = w.lock();
    wire::write_frame(&mut *g, kind, payload)?;
    g.flush()?;
    Ok(())
}

/// What a [`DataLink`] run stopped for.
enum Step {
    /// The link ended, for this reason (its end is not run yet).
    Ended(String),
    /// Nothing is outstanding and only heartbeats came for [`LINK_IDLE`]:
    /// the socket may be parked.
    Idle,
}

/// A data link's reader parks its socket (`crate::park`) after this long
/// with nothing but heartbeats: the apply workers' grace, so a link
/// between bursts keeps its reader and an idle one gives it back.
const LINK_IDLE: Duration = WORKER_IDLE;

/// The ordered applier's state between runs of a parked link (every write
/// applied and acknowledged, nothing outstanding).
#[derive(Default, Clone, Copy)]
struct OrderState {
    current: Option<u64>,
    last_seq: u64,
    acked: u64,
}

/// One data link being served: everything its reader needs, owned, so a
/// quiet link's session can wait in the idle poller without a thread.
struct DataLink {
    stream: TcpStream,
    sets: Vec<Option<Arc<SecondarySet>>>,
    sets_all: Vec<Arc<SecondarySet>>,
    mode: Mode,
    timeout: Duration,
    writer: LinkWriter,
    job_tx: LazyPool<(Arc<SecondarySet>, WriteFrame)>,
    done_rx: Receiver<(u64, std::result::Result<(), String>)>,
    order: OrderState,
    overlaps: Overlaps,
}

/// Serve a data link until it ends, on this thread. `sets[id]` is the set
/// a WRITE's set id names. Returns why the link ended.
pub fn serve_link(
    stream: TcpStream,
    sets: Vec<Option<Arc<SecondarySet>>>,
    mode: Mode,
    timeout: Duration,
) -> String {
    match DataLink::new(stream, sets, mode, timeout) {
        Ok(l) => l.serve_here(),
        Err(e) => e,
    }
}

/// [`serve_link`] that gives its thread back while the link is quiet: the
/// socket waits in the idle poller (`crate::park`), which takes the
/// primary's heartbeats itself, ends the link when they stop, and starts a
/// thread that serves on when anything else arrives. This call returns
/// once the link ended or parked; `ended(why)` runs when it ends, on
/// whichever thread serves it then.
pub fn serve_link_parking(
    stream: TcpStream,
    sets: Vec<Option<Arc<SecondarySet>>>,
    mode: Mode,
    timeout: Duration,
    ended: impl FnOnce(String) + Send + 'static,
) {
    match DataLink::new(stream, sets, mode, timeout) {
        Ok(l) => drive(l, Box::new(ended)),
        Err(e) => ended(e),
    }
}

type Ended = Box<dyn FnOnce(String) + Send>;

/// Serve `l` on this thread until it ends or parks.
fn drive(mut l: DataLink, ended: Ended) {
    match l.run(true) {
        Step::Ended(reason) => return ended(l.end(reason)),
        Step::Idle => {}
    }
    let watch = crate::park::Watch {
        on_readable: |(l, _): &mut (DataLink, Ended)| l.heartbeats(),
        timeout: l.timeout,
    };
    let parked = crate::park::park_watched(
        (l, ended),
        |(l, _)| l.stream.as_fd(),
        watch,
        |(l, ended), why| {
            // On the poller's thread: only start a thread.
            let timeout = l.timeout;
            let slot = Arc::new(Mutex::new(Some((l, ended))));
            let taken = slot.clone();
            let spawned = std::thread::Builder::new()
                .name("repl-peer".into())
                .spawn(move || {
                    let Some((l, ended)) = taken.lock().take() else {
                        return;
                    };
                    match why {
                        Woken::Readable => drive(l, ended),
                        Woken::TimedOut => ended(l.end(silence(timeout))),
                    }
                });
            if let Err(e) = spawned {
                if let Some((l, ended)) = slot.lock().take() {
                    ended(l.end(format!("starting the link's reader: {e}")));
                }
            }
        },
    );
    // No poller: serve on here, without asking again.
    if let Err((l, ended)) = parked {
        ended(l.serve_here());
    }
}

fn silence(timeout: Duration) -> String {
    format!(
        "no heartbeat from the primary within {:.1}s",
        timeout.as_secs_f64()
    )
}

impl DataLink {
    fn new(
        stream: TcpStream,
        sets: Vec<Option<Arc<SecondarySet>>>,
        mode: Mode,
        timeout: Duration,
    ) -> std::result::Result<DataLink, String> {
        let _ = stream.set_read_timeout(Some(timeout));
        // Heartbeats from this side (so the primary notices a dead
        // secondary) go out through this writer from the process's
        // heartbeat thread.
        let writer: LinkWriter = match stream.try_clone() {
            Ok(s) => heartbeat::writer(s, 8 << 10),
            Err(e) => return Err(e.to_string()),
        };
        for s in sets.iter().flatten() {
            s.connected.store(true, Ordering::SeqCst);
            s.contact();
        }
        // The workers start with the first write dispatched to them and
        // end when the link is idle (pool.rs); the reader collects their
        // results. Bounded both ways: at most MAX_APPLYING writes are
        // dispatched and not yet reaped (sync mode waits for one before it
        // dispatches more; the ordered modes keep at most WORKERS), so the
        // pool's queue stays that short and a worker never blocks on a
        // full result channel while the reader waits for it.
        let (done_tx, done_rx) =
            crossbeam_channel::bounded::<(u64, std::result::Result<(), String>)>(MAX_APPLYING);
        let job_tx = {
            let writer = writer.clone();
            LazyPool::new(
                "repl-apply",
                WORKERS,
                WORKER_IDLE,
                move |(set, w): (Arc<SecondarySet>, WriteFrame)| {
                    let r = set
                        .apply(&w)
                        .map_err(|e| format!("set {}: applying write {}: {e}", set.name, w.seq));
                    if mode == Mode::Sync {
                        // Acknowledged one by one, as soon as applied.
                        match &r {
                            Ok(()) => {
                                let _ = send(&writer, FrameType::Ack, &wire::encode_ack(w.seq, 0));
                            }
                            Err(e) => {
                                let _ = send(&writer, FrameType::Error, e.as_bytes());
                            }
                        }
                    }
                    let _ = done_tx.send((w.seq, r));
                },
            )
        };
        let sets_all = sets.iter().flatten().cloned().collect();
        Ok(DataLink {
            stream,
            sets,
            sets_all,
            mode,
            timeout,
            writer,
            job_tx,
            done_rx,
            order: OrderState::default(),
            overlaps: Overlaps::default(),
        })
    }

    /// The parked socket's readable hook: take the primary's heartbeats
    /// (each one a contact of every set, as when the reader reads it).
    fn heartbeats(&mut self) -> crate::park::Ready {
        let r = heartbeat::take_heartbeats(&self.stream);
        if r == crate::park::Ready::Alive {
            for s in &self.sets_all {
                s.contact();
            }
        }
        r
    }

    /// Read and apply frames until the link ends or, with `may_park`, has
    /// been quiet for [`LINK_IDLE`] with nothing outstanding.
    fn run(&mut self, may_park: bool) -> Step {
        let DataLink {
            stream,
            sets,
            sets_all,
            mode,
            timeout,
            writer,
            job_tx,
            done_rx,
            order,
            overlaps,
        } = self;
        let mut ordered = Ordered {
            job_tx,
            done_rx,
            writer,
            sets: sets_all,
            current: order.current,
            outstanding: 0,
            last_seq: order.last_seq,
            acked: order.acked,
            needs_flush: false,
            // Async: every write is its own group; nothing to overlap.
            inline_only: *mode == Mode::Async,
        };
        let is_ordered = *mode != Mode::Sync;
        let mut reader = BufReader::with_capacity(1 << 20, &*stream);
        let mut last_write = std::time::Instant::now();
        let step = loop {
            // About to wait for the socket: finish and acknowledge what was
            // received, or the primary would wait for us while we wait for it.
            if is_ordered && reader.buffer().is_empty() {
                if let Err(e) = ordered.idle() {
                    let _ = send(writer, FrameType::Error, e.as_bytes());
                    break Step::Ended(e);
                }
            }
            let f = match wire::read_frame(&mut reader) {
                Ok(f) => f,
                Err(e) if e.is_timeout() => break Step::Ended(silence(*timeout)),
                Err(e) => break Step::Ended(e.to_string()),
            };
            match f.kind {
                FrameType::Heartbeat => {
                    for s in sets_all.iter() {
                        s.contact();
                    }
                    if may_park && reader.buffer().is_empty() && last_write.elapsed() >= LINK_IDLE {
                        let settled = if is_ordered {
                            ordered.idle()
                        } else {
                            overlaps.reap(done_rx)
                        };
                        if let Err(e) = settled {
                            let _ = send(writer, FrameType::Error, e.as_bytes());
                            break Step::Ended(e);
                        }
                        if overlaps.running.is_empty() && ordered.outstanding == 0 {
                            break Step::Idle;
                        }
                    }
                    continue;
                }
                FrameType::Write => last_write = std::time::Instant::now(),
                other => {
                    let m = format!("malformed: unexpected {other:?} frame on a data link");
                    let _ = send(writer, FrameType::Error, m.as_bytes());
                    break Step::Ended(m);
                }
            }
            let w = match WriteFrame::decode(f.payload) {
                Ok(w) => w,
                Err(e) => {
                    let _ = send(writer, FrameType::Error, e.to_string().as_bytes());
                    break Step::Ended(e.to_string());
                }
            };
            let Some(set) = sets.get(w.set_id as usize).and_then(|s| s.clone()) else {
                let m = format!("malformed: write for unknown set id {}", w.set_id);
                let _ = send(writer, FrameType::Error, m.as_bytes());
                break Step::Ended(m);
            };
            if w.offset
                .checked_add(w.len as u64)
                .is_none_or(|end| end > set.size_bytes)
            {
                let m = format!(
                    "malformed: write [{}, +{}) past the end of set {} ({} bytes)",
                    w.offset, w.len, set.name, set.size_bytes
                );
                let _ = send(writer, FrameType::Error, m.as_bytes());
                break Step::Ended(m);
            }
            // A write to a chunk whose mark is not durable yet would wait
            // for a commit of its own: mark every write already buffered in
            // the same commit (one per buffer-full instead of one per cold
            // chunk).
            if w.flags & wire::WRITE_FLUSH == 0
                && !set.scoreboard.is_durable(w.offset, w.len as u64)
            {
                let ahead = std::iter::once((w.set_id, w.offset, w.len))
                    .chain(wire::peek_writes(reader.buffer()));
                let mut by_set: Vec<Vec<(u64, u64)>> = vec![Vec::new(); sets.len()];
                for (id, off, len) in ahead {
                    if let Some(v) = by_set.get_mut(id as usize) {
                        v.push((off, len as u64));
                    }
                }
                for (s, ranges) in sets.iter().zip(by_set) {
                    if let (Some(s), false) = (s, ranges.is_empty()) {
                        s.mark_ahead(ranges.into_iter());
                    }
                }
            }
            let r = if is_ordered {
                let next = wire::peek_write_group(reader.buffer());
                let same_group_follows = next == Some(w.group);
                ordered.write(set, w, same_group_follows)
            } else {
                overlaps
                    .admit(done_rx, &w)
                    .and_then(|()| job_tx.send((set, w)))
                    .and_then(|()| overlaps.reap(done_rx))
            };
            if let Err(e) = r {
                let _ = send(writer, FrameType::Error, e.as_bytes());
                break Step::Ended(e);
            }
        };
        match step {
            Step::Idle => {
                *order = OrderState {
                    current: ordered.current,
                    last_seq: ordered.last_seq,
                    acked: ordered.acked,
                };
                Step::Idle
            }
            Step::Ended(reason) => {
                // Stop: nothing more is dispatched (later groups were never
                // read); what the workers hold completes.
                let applied = if is_ordered {
                    ordered.wait_all()
                } else {
                    Ok(())
                };
                Step::Ended(match applied {
                    Err(e) => e,
                    Ok(()) => reason,
                })
            }
        }
    }

    /// Serve until the link ends, on this thread; returns why it ended.
    fn serve_here(mut self) -> String {
        match self.run(false) {
            Step::Ended(reason) => self.end(reason),
            Step::Idle => unreachable!("a run that may not park never stops idle"),
        }
    }

    /// The link is over: stop the workers, close the socket, and say why.
    fn end(self, reason: String) -> String {
        self.job_tx.close();
        let _ = self.stream.shutdown(Shutdown::Both);
        for s in &self.sets_all {
            s.connected.store(false, Ordering::SeqCst);
        }
        reason
    }
}

/// The group-ordered applier (seed 001, backup side), run by the link's
/// reader thread: a write of the current group is applied at once (by a
/// worker when the next buffered frame is a write of the same group, so a
/// group's writes overlap; by the reader otherwise, which costs no thread
/// hop for the many groups of one write); the first write of a later group is
/// only applied after every write of the current group completed (and the
/// volume was flushed when the group carried a flush). Frames after it are
/// not even read meanwhile.
struct Ordered<'a> {
    job_tx: &'a LazyPool<(Arc<SecondarySet>, WriteFrame)>,
    done_rx: &'a Receiver<(u64, std::result::Result<(), String>)>,
    writer: &'a LinkWriter,
    sets: &'a [Arc<SecondarySet>],
    current: Option<u64>,
    outstanding: usize,
    last_seq: u64,
    acked: u64,
    needs_flush: bool,
    inline_only: bool,
}

impl Ordered<'_> {
    fn write(
        &mut self,
        set: Arc<SecondarySet>,
        w: WriteFrame,
        same_group_follows: bool,
    ) -> std::result::Result<(), String> {
        if self.current != Some(w.group) {
            self.wait_all()?;
            finish(
                self.writer,
                self.sets,
                &mut self.needs_flush,
                self.last_seq,
                &mut self.acked,
                false,
            )?;
            self.current = Some(w.group);
        }
        self.last_seq = self.last_seq.max(w.seq);
        if w.flags & wire::WRITE_FLUSH != 0 {
            self.needs_flush = true;
            return Ok(());
        }
        if !self.inline_only && same_group_follows && self.outstanding < WORKERS {
            self.outstanding += 1;
            self.job_tx.send((set, w))?;
        } else {
            set.apply(&w)
                .map_err(|e| format!("set {}: applying write {}: {e}", set.name, w.seq))?;
        }
        reap(self.done_rx, &mut self.outstanding)
    }

    fn wait_all(&mut self) -> std::result::Result<(), String> {
        while self.outstanding > 0 {
            let (_, r) = self
                .done_rx
                .recv()
                .map_err(|_| "the workers stopped".to_string())?;
            self.outstanding -= 1;
            r?;
        }
        Ok(())
    }

    /// Nothing more is buffered: complete and acknowledge everything.
    fn idle(&mut self) -> std::result::Result<(), String> {
        self.wait_all()?;
        if self.acked < self.last_seq || self.needs_flush {
            finish(
                self.writer,
                self.sets,
                &mut self.needs_flush,
                self.last_seq,
                &mut self.acked,
                true,
            )?;
        }
        Ok(())
    }
}

/// Collect finished worker results without waiting; the first error wins.
/// Sync mode's applier runs writes concurrently on the workers, but two
/// writes that overlap apply in the order they arrived: the primary sends
/// them in the order it queued them, and a resync's copy of a chunk is
/// queued before the client writes to that chunk that waited for it (were
/// the two applied the other way round, the copy's older bytes would
/// overwrite the newer write here while the primary's bit is clear).
#[derive(Default)]
struct Overlaps {
    /// Dispatched, not yet completed: (seq, set id, start, end).
    running: Vec<(u64, u32, u64, u64)>,
}

impl Overlaps {
    /// Wait until no running write overlaps `w`, then count it running.
    fn admit(
        &mut self,
        done_rx: &Receiver<(u64, std::result::Result<(), String>)>,
        w: &WriteFrame,
    ) -> std::result::Result<(), String> {
        if w.len == 0 {
            return Ok(());
        }
        let (start, end) = (w.offset, w.offset + w.len as u64);
        let clash = |r: &(u64, u32, u64, u64)| r.1 == w.set_id && r.2 < end && start < r.3;
        while self.running.iter().any(clash) {
            let (seq, r) = done_rx
                .recv()
                .map_err(|_| "the workers stopped".to_string())?;
            self.done(seq);
            r?;
        }
        // Bounded: past MAX_APPLYING dispatched writes the reader waits
        // for one (TCP back-pressure on the primary, not memory here).
        while self.running.len() >= MAX_APPLYING {
            let (seq, r) = done_rx
                .recv()
                .map_err(|_| "the workers stopped".to_string())?;
            self.done(seq);
            r?;
        }
        self.running.push((w.seq, w.set_id, start, end));
        Ok(())
    }

    fn done(&mut self, seq: u64) {
        if let Some(i) = self.running.iter().position(|r| r.0 == seq) {
            self.running.swap_remove(i);
        }
    }

    /// Collect what completed; the first failure ends the link.
    fn reap(
        &mut self,
        done_rx: &Receiver<(u64, std::result::Result<(), String>)>,
    ) -> std::result::Result<(), String> {
        while let Ok((seq, r)) = done_rx.try_recv() {
            self.done(seq);
            r?;
        }
        Ok(())
    }
}

fn reap(
    done_rx: &Receiver<(u64, std::result::Result<(), String>)>,
    outstanding: &mut usize,
) -> std::result::Result<(), String> {
    while let Ok((_, r)) = done_rx.try_recv() {
        *outstanding = outstanding.saturating_sub(1);
        r?;
    }
    Ok(())
}

/// Acknowledge at least every this many writes while more are queued.
const ACK_EVERY: u64 = 256;

/// The current group is applied: flush when it carried a flush, then
/// acknowledge everything up to `last_seq` (at once when `now`, else only
/// every `ACK_EVERY` writes: while writes keep arriving one cumulative ACK
/// covers many groups).
fn finish(
    writer: &LinkWriter,
    sets: &[Arc<SecondarySet>],
    needs_flush: &mut bool,
    last_seq: u64,
    acked: &mut u64,
    now: bool,
) -> std::result::Result<(), String> {
    if *needs_flush {
        for s in sets {
            s.flush()
                .map_err(|e| format!("set {}: flush: {e}", s.name))?;
        }
        *needs_flush = false;
    }
    if last_seq > *acked && (now || last_seq - *acked >= ACK_EVERY) {
        *acked = last_seq;
        // The primary may be gone; the link's reader notices.
        let _ = send(
            writer,
            FrameType::Ack,
            &wire::encode_ack(last_seq, wire::ACK_CUMULATIVE),
        );
    }
    Ok(())
}
