//! Write-behind of master writes whose copy-on-write is not durable yet.
//!
//! A master write that touches a chunk first copies the point-in-time data
//! to the shadow and sets the chunk's bits in memory; the write may reach
//! the master's lower device only once that copy and those bits are
//! durable (the crash rule in `set.rs`). Waiting for that commit before
//! acknowledging made a first touch cost two flushes, shared only by the
//! requests in flight at the time. A write without FUA need not be durable
//! before the client's next flush, though, so the master layer queues it
//! here and acknowledges it: one applier thread per master (started at the
//! first queued write) waits for the commit that covers everything queued,
//! leading it, then writes the queued data to the lower device in order.
//! Each commit thus covers every first touch that arrived while the one
//! before it ran.
//!
//! The rules that keep this invisible to clients:
//! * a write overlapping a queued one is queued behind it, so acknowledged
//!   writes to a block land in the order they were acknowledged;
//! * a read lays the queued writes it overlaps over what the lower device
//!   returned (taken before the read, so an entry written and removed
//!   meanwhile is in the lower device's answer);
//! * a flush, a FUA write and a write that restores a chunk drain the
//!   queue first; a flush then returns the first failed queued write (as
//!   an fsync returns a failed page-cache write-back);
//! * at most [`MAX_QUEUED_BYTES`] are queued; a writer beyond waits.
//!
//! A crash loses what is queued: writes that were never flushed, which a
//! disk's volatile cache may lose as well. The quiesce of every
//! reconfiguration flushes the volume first, so no queued write outlives
//! the stack it was queued in.

use super::set::{ImageSet, Prepared};
use crate::device::{BlockDevice, DeviceError};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Bytes of queued writes per master before a writer waits: the queue
/// holds a copy of each write, so this is its memory. 16 MiB is 4,096
/// writes of 4 KiB; a commit (two fdatasyncs, 2-10 ms on a disk) then
/// covers the first touches of at least 400,000 writes a second, more
/// than two cores of frontend deliver.
pub(super) const MAX_QUEUED_BYTES: usize = 16 << 20;

/// The overlap map's granule (64 KiB): requests touching a region that
/// holds a queued write order behind it or overlay it. A coarse region
/// costs only false overlaps (a write queued that could have gone
/// straight down, a read that scans the queue).
const REGION_SHIFT: u32 = 16;

/// Threads that write one batch of queued writes (the applier and helpers
/// it starts for the batch): a file backend's buffered writes scale with
/// cores until the page cache's locks, and four covers the machines we run.
const APPLY_THREADS: usize = 4;
/// Batches of fewer single-region entries are written by the applier alone
/// (starting helpers costs more than it saves).
const APPLY_PARALLEL_MIN: usize = 64;

/// An applier without work for this long ends; the next queued write
/// starts another (a thread start is microseconds, a commit milliseconds).
const IDLE_EXIT: std::time::Duration = std::time::Duration::from_secs(10);

struct Entry {
    offset: u64,
    data: Arc<[u8]>,
}

/// Queued writes a read must lay over the lower device's data, taken
/// before the read ([`WriteBehind::snapshot`]).
pub(super) struct Overlay(Vec<Entry>);

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Queued entries per region.
    regions: HashMap<u64, u32>,
    bytes: usize,
    /// Per set of the master (same index): the highest generation a queued
    /// write waits for, since the committer last took the queue.
    need: Vec<u64>,
    /// Sequence numbers (entries queued so far): queued; taken by the
    /// committer; covered by a durable commit; written and removed.
    pushed: u64,
    taken: u64,
    committed: u64,
    applied: u64,
    stop: bool,
    /// The committer and the writer thread run. Each ends after
    /// [`IDLE_EXIT`] without work (the writer only once the queue is
    /// empty) and the next queued write starts it again.
    running: [bool; 2],
    threads: [Option<JoinHandle<()>>; 2],
    /// The first queued write that failed since the last flush.
    error: Option<DeviceError>,
}

struct Shared {
    q: Mutex<Queue>,
    /// `q.entries.len()`, read without the lock on every request.
    queued: AtomicUsize,
    /// The applier waits here for entries; writers for room; drains for
    /// the applier's progress.
    cv: Condvar,
    lower: Arc<dyn BlockDevice>,
    sets: Vec<Arc<ImageSet>>,
}

pub(super) struct WriteBehind {
    shared: Arc<Shared>,
    volume: String,
}

fn regions(offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    (offset >> REGION_SHIFT)..=((offset + len.max(1) - 1) >> REGION_SHIFT)
}

impl WriteBehind {
    pub(super) fn new(volume: &str, lower: Arc<dyn BlockDevice>, sets: Vec<Arc<ImageSet>>) -> Self {
        let q = Queue {
            need: vec![0; sets.len()],
            ..Queue::default()
        };
        WriteBehind {
            shared: Arc::new(Shared {
                q: Mutex::new(q),
                queued: AtomicUsize::new(0),
                cv: Condvar::new(),
                lower,
                sets,
            }),
            volume: volume.to_owned(),
        }
    }

    #[inline]
    fn idle(&self) -> bool {
        self.shared.queued.load(Ordering::SeqCst) == 0
    }

    /// Whether a queued write touches a region of `[offset, offset + len)`.
    pub(super) fn overlaps(&self, offset: u64, len: u64) -> bool {
        if self.idle() {
            return false;
        }
        let q = self.shared.q.lock();
        regions(offset, len).any(|r| q.regions.contains_key(&r))
    }

    /// Queue a write of `buf` at `offset` that owes `owed` (per set, in the
    /// master's order; empty when it only orders behind another). `false`:
    /// nothing was queued (no applier thread could start); the caller
    /// writes synchronously.
    pub(super) fn push(&self, buf: &[u8], offset: u64, owed: &[Prepared]) -> bool {
        // The one allocation of the path: the queue must own the data once
        // the write is acknowledged and the client reuses its buffer.
        let data: Arc<[u8]> = Arc::from(buf);
        let mut q = self.shared.q.lock();
        for (role, name) in [(COMMITTER, "commit"), (WRITER, "write")] {
            if q.running[role] {
                continue;
            }
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("umbra-{name}-{}", self.volume))
                .spawn(move || {
                    if role == COMMITTER {
                        commit_loop(&shared)
                    } else {
                        write_loop(&shared)
                    }
                });
            match spawned {
                // A thread that ended idle left its handle; it is done.
                Ok(h) => {
                    q.threads[role] = Some(h);
                    q.running[role] = true;
                }
                Err(e) => {
                    log::error!(
                        "volume {}: no write-behind thread, writing through: {e}",
                        self.volume
                    );
                    // The other thread, if it started, has no work and
                    // ends idle.
                    return false;
                }
            }
        }
        while q.bytes > 0 && q.bytes + data.len() > MAX_QUEUED_BYTES {
            self.shared.cv.wait(&mut q);
        }
        for (i, p) in owed.iter().enumerate() {
            q.need[i] = q.need[i].max(p.need);
        }
        for r in regions(offset, data.len() as u64) {
            *q.regions.entry(r).or_insert(0) += 1;
        }
        q.bytes += data.len();
        q.pushed += 1;
        q.entries.push_back(Entry { offset, data });
        self.shared.queued.store(q.entries.len(), Ordering::SeqCst);
        drop(q);
        self.shared.cv.notify_all();
        true
    }

    /// Wait until every write queued so far reached the lower device.
    pub(super) fn drain(&self) {
        if self.idle() {
            return;
        }
        let mut q = self.shared.q.lock();
        let target = q.pushed;
        while q.applied < target {
            self.shared.cv.wait(&mut q);
        }
    }

    /// The first queued write that failed since the last call.
    pub(super) fn take_error(&self) -> Option<DeviceError> {
        self.shared.q.lock().error.take()
    }

    /// The queued writes a read of `[offset, offset + len)` overlaps, in
    /// queue order. Taken before the read of the lower device.
    pub(super) fn snapshot(&self, offset: u64, len: u64) -> Overlay {
        if self.idle() {
            return Overlay(Vec::new());
        }
        let q = self.shared.q.lock();
        if !regions(offset, len).any(|r| q.regions.contains_key(&r)) {
            return Overlay(Vec::new());
        }
        let end = offset + len;
        Overlay(
            q.entries
                .iter()
                .filter(|e| e.offset < end && e.offset + e.data.len() as u64 > offset)
                .map(|e| Entry {
                    offset: e.offset,
                    data: e.data.clone(),
                })
                .collect(),
        )
    }
}

impl Overlay {
    /// Lay the snapshot's writes over `buf`, read at `offset`.
    pub(super) fn apply(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        for e in &self.0 {
            let from = e.offset.max(offset);
            let to = (e.offset + e.data.len() as u64).min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&e.data[(from - e.offset) as usize..(to - e.offset) as usize]);
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // The stack is gone after a quiesce drained it; whatever is still
        // queued (a volume dropped without one) is written before the
        // threads end.
        let threads = {
            let mut q = self.shared.q.lock();
            q.stop = true;
            std::mem::take(&mut q.threads)
        };
        self.shared.cv.notify_all();
        for h in threads.into_iter().flatten() {
            let _ = h.join();
        }
    }
}

const COMMITTER: usize = 0;
const WRITER: usize = 1;

/// Wait while `idle` holds; `false` once the thread `role` should end
/// (stopped, or idle for [`IDLE_EXIT`]), marked not running.
fn wait_for_work(
    shared: &Shared,
    q: &mut parking_lot::MutexGuard<'_, Queue>,
    role: usize,
    idle: impl Fn(&Queue) -> bool,
) -> bool {
    while idle(q) {
        if q.stop || (shared.cv.wait_for(q, IDLE_EXIT).timed_out() && idle(q)) {
            q.running[role] = false;
            return false;
        }
    }
    true
}

/// The committer: take what was queued since its last round, wait for the
/// commits it owes (leading them), mark it committed. It runs while the
/// writer applies the round before, so a commit's flushes overlap the
/// writes of the previous batch.
fn commit_loop(shared: &Shared) {
    loop {
        let (upto, need) = {
            let mut q = shared.q.lock();
            if !wait_for_work(shared, &mut q, COMMITTER, |q| q.taken == q.pushed) {
                return;
            }
            let need = q.need.clone();
            q.need.iter_mut().for_each(|g| *g = 0);
            q.taken = q.pushed;
            (q.taken, need)
        };
        for (set, g) in shared.sets.iter().zip(need) {
            if g > 0 {
                // A failed commit fails the set (its shadow goes offline);
                // the master's write goes on, as a direct one would.
                let _ = set.finish_master(Prepared {
                    need: g,
                    restored: false,
                });
            }
        }
        shared.q.lock().committed = upto;
        shared.cv.notify_all();
    }
}

/// The writer: write every committed entry in queue order, then remove it.
fn write_loop(shared: &Shared) {
    loop {
        let batch: Vec<(u64, Arc<[u8]>)> = {
            let mut q = shared.q.lock();
            while q.committed == q.applied {
                if q.pushed > q.applied {
                    // Queued, not committed yet: the committer notifies.
                    shared.cv.wait(&mut q);
                    continue;
                }
                // Empty. It ends only then: queued entries will need it.
                if !wait_for_work(shared, &mut q, WRITER, |q| q.pushed == q.applied) {
                    return;
                }
            }
            let n = (q.committed - q.applied) as usize;
            q.entries
                .iter()
                .take(n)
                .map(|e| (e.offset, e.data.clone()))
                .collect()
        };
        let failed = write_batch(&shared.lower, &batch);
        let mut q = shared.q.lock();
        for _ in 0..batch.len() {
            let e = q
                .entries
                .pop_front()
                .expect("only the writer removes entries");
            for r in regions(e.offset, e.data.len() as u64) {
                if let Some(n) = q.regions.get_mut(&r) {
                    *n -= 1;
                    if *n == 0 {
                        q.regions.remove(&r);
                    }
                }
            }
            q.bytes -= e.data.len();
        }
        q.applied += batch.len() as u64;
        if let Some((offset, len, e)) = failed {
            // The client learns at its next flush; the operator now.
            if let Some(set) = shared.sets.first() {
                set.emit(
                    "image.master_write_failed",
                    crate::services::Note::new(format!(
                        "a write to the master acknowledged before its copy-on-write commit \
                         failed on the master's device: {e}; the next flush returns it"
                    ))
                    .field("offset_bytes", offset)
                    .field("length_bytes", len)
                    .field("why", e.to_string()),
                );
            }
            q.error.get_or_insert(e);
        }
        shared.queued.store(q.entries.len(), Ordering::SeqCst);
        drop(q);
        shared.cv.notify_all();
    }
}

/// Write `batch` to `lower`: in order for entries that overlap, spread over
/// up to [`APPLY_THREADS`] threads otherwise. Returns the first failure
/// with the offset and length of its write.
///
/// A file backend's buffered write of 4 KiB costs tens of microseconds of
/// one core (page-cache bookkeeping, more over large folios); the queue's
/// writes come from many clients, so one thread applying them would cap
/// the master below what the clients write without a shadow. Entries
/// within one region are applied by one thread in queue order; an entry
/// that spans regions is a barrier (everything before it is written, then
/// it, then what follows), so overlapping entries never reorder.
fn write_batch(
    lower: &Arc<dyn BlockDevice>,
    batch: &[(u64, Arc<[u8]>)],
) -> Option<(u64, usize, DeviceError)> {
    let write = |(offset, data): &(u64, Arc<[u8]>)| {
        lower.write(data, *offset, false).map_err(|e| {
            log::error!("a queued master write at byte {offset} failed: {e}");
            (*offset, data.len(), e)
        })
    };
    let threads = APPLY_THREADS.min(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    let mut failed = None;
    let mut rest = batch;
    while !rest.is_empty() {
        let single = |e: &(u64, Arc<[u8]>)| {
            let r = regions(e.0, e.1.len() as u64);
            r.start() == r.end()
        };
        let n = rest.iter().take_while(|e| single(e)).count();
        let (run, after) = rest.split_at(n);
        if run.len() < APPLY_PARALLEL_MIN || threads < 2 {
            for e in run {
                if let Err(e) = write(e) {
                    failed.get_or_insert(e);
                }
            }
        } else {
            let share = |i: usize| {
                let mut first = None;
                for e in run
                    .iter()
                    .filter(|e| (e.0 >> REGION_SHIFT) as usize % threads == i)
                {
                    if let Err(e) = write(e) {
                        first.get_or_insert(e);
                    }
                }
                first
            };
            let results: Vec<Option<(u64, usize, DeviceError)>> = std::thread::scope(|s| {
                let others: Vec<_> = (1..threads).map(|i| s.spawn(move || share(i))).collect();
                let mut v = vec![share(0)];
                v.extend(others.into_iter().map(|h| h.join().unwrap_or(None)));
                v
            });
            if let Some(e) = results.into_iter().flatten().next() {
                failed.get_or_insert(e);
            }
        }
        if let Some((spanning, next)) = after.split_first() {
            if let Err(e) = write(spanning) {
                failed.get_or_insert(e);
            }
            rest = next;
        } else {
            rest = after;
        }
    }
    failed
}
