//! Write-back: a write is acknowledged once it is durable in the safe store
//! (`safestore.rs`), kept in memory as a dirty block, and destaged to the
//! volume in the background, where runs of adjacent dirty blocks become one
//! large write (write coalescing).
//!
//! * **Group commit.** Writers queue their blocks; one of them (the leader)
//!   writes every queued block as one batch, flushes the store, applies the
//!   batch to the dirty map and wakes the others. Flush and FUA therefore
//!   keep their meaning for free: every acknowledged write is already
//!   durable.
//! * **Ordering.** A block's dirty entry always holds its newest
//!   acknowledged contents; destage removes an entry only if it was not
//!   rewritten meanwhile; the store's tail (the oldest batch replay must
//!   read) advances only after the volume was flushed. A rewrite of a dirty
//!   block replaces it in memory (a *write cancellation*: the older copy is
//!   never written to the volume).
//! * **Throttle.** When the log has no room for the next batch, writers
//!   wait for destage to free space.
//! * **Discard and write-zeroes** drain: they wait for every dirty block to
//!   reach the volume (so no older logged write can be replayed over them),
//!   then go to the volume directly.
//! * **Failure.** A destage error puts the cache in a failed state: writes
//!   fail with EIO, reads still see every acknowledged write, the log keeps
//!   them for the next start.

use super::safestore::{self, Entry, StoreHeader, BLOCK_BYTES, MAX_BATCH_ENTRIES};
use crate::device::{check_range, BlockDevice, DeviceError, LatencyClass, Result};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Destage waits this long for more writes to merge before writing a
/// small amount of dirty data.
const DESTAGE_DELAY: Duration = Duration::from_millis(50);
/// Longest single write destage issues (a run of adjacent dirty blocks).
const DESTAGE_RUN_BLOCKS: usize = 256;
/// Blocks destaged per round.
const DESTAGE_ROUND_BLOCKS: usize = 8192;
/// Striped block locks serialise writes to one block (read-modify-write of
/// partial blocks).
const BLOCK_LOCKS: u64 = 256;

struct Dirty {
    /// `None`: the block reads as zeroes.
    data: Option<Arc<Vec<u8>>>,
    batch_seq: u64,
}

struct Batch {
    pos: u64,
    /// Dirty entries still pointing at this batch.
    live: usize,
}

struct State {
    header: StoreHeader,
    head_pos: u64,
    next_seq: u64,
    next_ticket: u64,
    committed_ticket: u64,
    committing: bool,
    /// Writers' blocks waiting for the next batch: (ticket, entries).
    pending: Vec<(u64, Vec<Entry>)>,
    dirty: HashMap<u64, Dirty>,
    batches: BTreeMap<u64, Batch>,
    /// A drain waits for the dirty map to empty.
    draining: bool,
    failed: Option<String>,
}

#[derive(Default)]
struct Counters {
    write_cancellations: AtomicU64,
    destaged_blocks: AtomicU64,
    destage_writes: AtomicU64,
    throttled_writes: AtomicU64,
}

/// Write-back statistics, merged into `cache stats`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WriteBackStats {
    pub dirty_bytes: u64,
    pub destaged_bytes: u64,
    /// Blocks that reached the volume inside a larger write instead of
    /// their own: logged blocks destaged minus destage writes issued.
    pub writes_coalesced: u64,
    /// Dirty blocks rewritten before they were destaged.
    pub write_cancellations: u64,
    /// Writes that waited for log space.
    pub throttled_writes: u64,
    pub log_used_bytes: u64,
    pub log_capacity_bytes: u64,
    pub failed: Option<String>,
}

pub struct WriteBack {
    store: Arc<dyn BlockDevice>,
    volume_bytes: u64,
    st: Mutex<State>,
    cv: Condvar,
    lower: RwLock<Option<Arc<dyn BlockDevice>>>,
    /// Writers hold it shared; a drain holds it exclusively.
    gate: RwLock<()>,
    block_locks: Box<[Mutex<()>]>,
    counters: Counters,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// A discard or write-zeroes went to the volume directly since the
    /// last flush, which must therefore flush the volume.
    passthrough_dirty: AtomicBool,
    /// Told once when the cache fails (the daemon publishes an event).
    on_failure: Mutex<Option<FailureHook>>,
}

/// Called with the reason when the write-back cache fails.
pub type FailureHook = Box<dyn Fn(&str) + Send + Sync>;

impl WriteBack {
    /// Format `store` and start with an empty log.
    pub fn create(
        store: Arc<dyn BlockDevice>,
        volume_bytes: u64,
    ) -> std::result::Result<Arc<Self>, String> {
        let header = safestore::format(store.as_ref(), volume_bytes)?;
        let head = header.tail_pos;
        let seq = header.tail_seq;
        Ok(Self::start(
            store,
            volume_bytes,
            header,
            head,
            seq,
            Vec::new(),
        ))
    }

    /// Open `store` and replay it: every acknowledged write the log holds
    /// becomes a dirty block again and is destaged.
    pub fn open(
        store: Arc<dyn BlockDevice>,
        volume_bytes: u64,
    ) -> std::result::Result<Arc<Self>, String> {
        let r = safestore::replay(store.as_ref(), volume_bytes)?;
        let n: usize = r.batches.iter().map(|b| b.2.len()).sum();
        if n > 0 {
            log::info!(
                "safe store: replaying {n} logged blocks from {} batches",
                r.batches.len()
            );
        }
        Ok(Self::start(
            store,
            volume_bytes,
            r.header,
            r.head_pos,
            r.next_seq,
            r.batches,
        ))
    }

    fn start(
        store: Arc<dyn BlockDevice>,
        volume_bytes: u64,
        header: StoreHeader,
        head_pos: u64,
        next_seq: u64,
        batches: Vec<(u64, u64, Vec<Entry>)>,
    ) -> Arc<Self> {
        let mut st = State {
            header,
            head_pos,
            next_seq,
            next_ticket: 1,
            committed_ticket: 0,
            committing: false,
            pending: Vec::new(),
            dirty: HashMap::new(),
            batches: BTreeMap::new(),
            draining: false,
            failed: None,
        };
        for (pos, seq, entries) in batches {
            st.batches.insert(seq, Batch { pos, live: 0 });
            apply(&mut st, seq, entries, None);
        }
        let wb = Arc::new(WriteBack {
            store,
            volume_bytes,
            st: Mutex::new(st),
            cv: Condvar::new(),
            lower: RwLock::new(None),
            gate: RwLock::new(()),
            block_locks: (0..BLOCK_LOCKS).map(|_| Mutex::new(())).collect(),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            passthrough_dirty: AtomicBool::new(false),
            on_failure: Mutex::new(None),
        });
        let weak = Arc::downgrade(&wb);
        let handle = std::thread::Builder::new()
            .name("cache-destage".into())
            .spawn(move || destage_loop(weak))
            .expect("spawn the destage thread");
        *wb.thread.lock() = Some(handle);
        wb
    }

    /// Be told (once) when the cache fails.
    pub fn on_failure(&self, hook: FailureHook) {
        *self.on_failure.lock() = Some(hook);
    }

    fn failed(&self, why: String) {
        let mut st = self.st.lock();
        if st.failed.is_some() {
            return;
        }
        log::error!("write-back cache: {why}");
        st.failed = Some(why.clone());
        self.cv.notify_all();
        drop(st);
        if let Some(h) = self.on_failure.lock().take() {
            h(&why);
        }
    }

    /// The device below the cache (set at every stack rebuild).
    pub fn set_lower(&self, lower: Arc<dyn BlockDevice>) {
        *self.lower.write() = Some(lower);
        self.cv.notify_all();
    }

    fn lower(&self) -> Result<Arc<dyn BlockDevice>> {
        self.lower.read().clone().ok_or(DeviceError::Failed {
            reason: "write-back cache is not attached".into(),
        })
    }

    pub fn stats(&self) -> WriteBackStats {
        let st = self.st.lock();
        let c = &self.counters;
        let destaged = c.destaged_blocks.load(Ordering::Relaxed);
        WriteBackStats {
            dirty_bytes: st.dirty.len() as u64 * BLOCK_BYTES,
            destaged_bytes: destaged * BLOCK_BYTES,
            writes_coalesced: destaged.saturating_sub(c.destage_writes.load(Ordering::Relaxed)),
            write_cancellations: c.write_cancellations.load(Ordering::Relaxed),
            throttled_writes: c.throttled_writes.load(Ordering::Relaxed),
            log_used_bytes: st.head_pos - st.header.tail_pos,
            log_capacity_bytes: st.header.capacity,
            failed: st.failed.clone(),
        }
    }

    fn failed_error(why: &str) -> DeviceError {
        DeviceError::Failed {
            reason: format!("write-back cache failed: {why}"),
        }
    }

    /// Log `entries` durably (group commit) and make them the blocks'
    /// current contents.
    fn commit(&self, entries: Vec<Entry>) -> Result<()> {
        let mut st = self.st.lock();
        if let Some(f) = &st.failed {
            return Err(Self::failed_error(f));
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.pending.push((ticket, entries));
        let mut throttled = false;
        loop {
            // Batches hold a prefix of the queue, so every ticket up to the
            // last committed one is durable.
            if st.committed_ticket >= ticket {
                return Ok(());
            }
            if let Some(f) = st.failed.clone() {
                st.pending.retain(|(t, _)| *t != ticket);
                return Err(Self::failed_error(&f));
            }
            if st.committing {
                self.cv.wait(&mut st);
                continue;
            }
            // Lead: take as many queued writers as fit in one batch and in
            // the log's free space.
            let cap = st.header.capacity;
            let mut take = 0;
            let mut n_entries = 0;
            let mut bytes = BLOCK_BYTES;
            for (_, e) in &st.pending {
                let add = safestore::batch_bytes(e) - BLOCK_BYTES;
                if take > 0 && (n_entries + e.len() > MAX_BATCH_ENTRIES) {
                    break;
                }
                n_entries += e.len();
                bytes += add;
                take += 1;
            }
            let pos = safestore::place(st.head_pos, bytes, cap);
            if pos + bytes > st.header.tail_pos + cap {
                // No room: destage must free some first.
                if !throttled {
                    throttled = true;
                    self.counters
                        .throttled_writes
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.cv.notify_all();
                self.cv.wait_for(&mut st, Duration::from_millis(100));
                continue;
            }
            let group: Vec<(u64, Vec<Entry>)> = st.pending.drain(..take).collect();
            let seq = st.next_seq;
            st.committing = true;
            let flat: Vec<Entry> = group.iter().flat_map(|(_, e)| e.iter().cloned()).collect();
            let last_ticket = group.last().map(|g| g.0).unwrap_or(ticket);
            let res = parking_lot::MutexGuard::unlocked(&mut st, || {
                let image = safestore::encode_batch(seq, pos, &flat);
                self.store
                    .write(&image, safestore::LOG_OFFSET + pos % cap, false)
                    .and_then(|_| self.store.flush())
            });
            st.committing = false;
            match res {
                Ok(()) => {
                    st.head_pos = pos + bytes;
                    st.next_seq = seq + 1;
                    st.batches.insert(seq, Batch { pos, live: 0 });
                    apply(&mut st, seq, flat, Some(&self.counters));
                    st.committed_ticket = st.committed_ticket.max(last_ticket);
                }
                Err(e) => {
                    let why = format!("writing the safe store: {e}");
                    // These writers were never acknowledged.
                    for (t, _) in &group {
                        st.pending.retain(|(p, _)| p != t);
                    }
                    drop(st);
                    self.failed(why.clone());
                    return Err(Self::failed_error(&why));
                }
            }
            self.cv.notify_all();
        }
    }

    /// Wait until every dirty block is on the volume and the log is empty.
    /// Callers hold the write gate, so no write is added meanwhile.
    fn drain_locked(&self) -> Result<()> {
        let mut st = self.st.lock();
        st.draining = true;
        self.cv.notify_all();
        // Empty means the durable tail caught up with the head too: no
        // logged write can be replayed over what comes next.
        while !st.dirty.is_empty() || st.header.tail_pos != st.head_pos {
            if let Some(f) = st.failed.clone() {
                st.draining = false;
                return Err(Self::failed_error(&f));
            }
            self.cv.wait_for(&mut st, Duration::from_millis(100));
        }
        st.draining = false;
        Ok(())
    }

    /// Destage everything (used before the cache is detached).
    pub fn drain(&self) -> Result<()> {
        let _gate = self.gate.write();
        self.drain_locked()
    }

    /// Stop the destage thread (after a drain, or at shutdown: what is left
    /// stays in the log for the next start).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cv.notify_all();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }

    /// The dirty blocks among `[first, first + n)`: (index in the range,
    /// contents, `None` for zeroes). Shares the data (no copy under the
    /// lock); empty when nothing is dirty.
    fn dirty_in(&self, first: u64, n: usize) -> Vec<(usize, Option<Arc<Vec<u8>>>)> {
        let st = self.st.lock();
        if st.dirty.is_empty() {
            return Vec::new();
        }
        (0..n)
            .filter_map(|i| {
                st.dirty
                    .get(&(first + i as u64))
                    .map(|d| (i, d.data.clone()))
            })
            .collect()
    }
}

/// Apply a committed batch to the dirty map; a replaced dirty block is a
/// write cancellation.
fn apply(st: &mut State, seq: u64, entries: Vec<Entry>, counters: Option<&Counters>) {
    let mut cancelled = 0;
    for e in entries {
        let new = Dirty {
            data: e.data.map(Arc::new),
            batch_seq: seq,
        };
        if let Some(old) = st.dirty.insert(e.block, new) {
            if let Some(b) = st.batches.get_mut(&old.batch_seq) {
                b.live -= 1;
            }
            cancelled += 1;
        }
        if let Some(b) = st.batches.get_mut(&seq) {
            b.live += 1;
        }
    }
    if let Some(c) = counters {
        c.write_cancellations
            .fetch_add(cancelled, Ordering::Relaxed);
    }
}

fn destage_loop(weak: Weak<WriteBack>) {
    loop {
        let Some(wb) = weak.upgrade() else { return };
        if wb.stop.load(Ordering::SeqCst) {
            return;
        }
        if wb.lower.read().is_none() {
            // Opened (its log replayed, dirty blocks and all) but not yet
            // stacked on its volume: nothing can be destaged before
            // `set_lower`, which wakes this thread. Failing here would
            // fail the cache of every volume slower to assemble than
            // DESTAGE_DELAY after a restart.
            let mut st = wb.st.lock();
            if wb.lower.read().is_none() && !wb.stop.load(Ordering::SeqCst) {
                wb.cv.wait_for(&mut st, Duration::from_millis(200));
            }
            continue;
        }
        match destage_round(&wb) {
            Ok(true) => {}
            Ok(false) => {
                // Nothing to do: sleep until woken (new dirty data, a drain).
                let mut st = wb.st.lock();
                if st.dirty.is_empty() && !wb.stop.load(Ordering::SeqCst) {
                    wb.cv.wait_for(&mut st, Duration::from_millis(200));
                }
            }
            Err(e) => {
                wb.failed(format!("destage: {e}"));
                // Stay alive for stats; do nothing more.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// A dirty block picked for destage: (block, data or zeroes, batch seq).
type Picked = (u64, Option<Arc<Vec<u8>>>, u64);

/// One destage round. Returns whether it did anything.
fn destage_round(wb: &WriteBack) -> Result<bool> {
    // Let small amounts of dirty data gather (more merging), unless the
    // log is filling, a drain waits, or writers are throttled.
    let picked: Vec<Picked> = {
        let mut st = wb.st.lock();
        if st.failed.is_some() {
            return Ok(false);
        }
        if st.dirty.is_empty() {
            // Nothing dirty, but the durable tail may lag (batches whose
            // blocks were all rewritten then destaged): catch it up.
            if st.header.tail_pos == st.head_pos {
                return Ok(false);
            }
            let mut h = st.header.clone();
            h.seq += 1;
            h.tail_pos = st.head_pos;
            h.tail_seq = st.next_seq;
            st.batches.clear();
            drop(st);
            wb.lower()?.flush()?;
            safestore::write_header(wb.store.as_ref(), &h)
                .map_err(|e| safestore::store_error("header", e))?;
            let mut st = wb.st.lock();
            // A batch committed meanwhile keeps the tail where it was.
            if st.batches.is_empty() && st.head_pos == h.tail_pos {
                st.header = h;
            } else {
                st.header.seq = h.seq;
            }
            wb.cv.notify_all();
            return Ok(true);
        }
        // Wait up to DESTAGE_DELAY for more to merge, but not while a
        // drain waits, writers are throttled or the log fills.
        let deadline = std::time::Instant::now() + DESTAGE_DELAY;
        loop {
            let used = st.head_pos - st.header.tail_pos;
            let throttled = !st.pending.is_empty() && !st.committing;
            if st.draining
                || throttled
                || used * 2 > st.header.capacity
                || wb.stop.load(Ordering::SeqCst)
                || wb.cv.wait_until(&mut st, deadline).timed_out()
            {
                break;
            }
        }
        let mut v: Vec<Picked> = st
            .dirty
            .iter()
            .map(|(b, d)| (*b, d.data.clone(), d.batch_seq))
            .collect();
        v.sort_unstable_by_key(|e| e.0);
        v.truncate(DESTAGE_ROUND_BLOCKS);
        v
    };
    if picked.is_empty() {
        return Ok(false);
    }
    let lower = wb.lower()?;
    let mut i = 0;
    let mut ios = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    while i < picked.len() {
        // A run of adjacent blocks of the same kind.
        let zero = picked[i].1.is_none();
        let mut j = i + 1;
        while j < picked.len()
            && j - i < DESTAGE_RUN_BLOCKS
            && picked[j].0 == picked[j - 1].0 + 1
            && picked[j].1.is_none() == zero
        {
            j += 1;
        }
        let offset = picked[i].0 * BLOCK_BYTES;
        let len = (j - i) as u64 * BLOCK_BYTES;
        if zero {
            lower.write_zeroes(offset, len, false)?;
        } else {
            buf.clear();
            for e in &picked[i..j] {
                buf.extend_from_slice(e.1.as_ref().expect("data run"));
            }
            lower.write(&buf, offset, false)?;
        }
        ios += 1;
        i = j;
    }
    lower.flush()?;
    // Forget what reached the volume (unless rewritten meanwhile), then
    // move the tail past batches nothing points at any more.
    let new_header = {
        let mut st = wb.st.lock();
        for (block, _, seq) in &picked {
            if st.dirty.get(block).is_some_and(|d| d.batch_seq == *seq) {
                st.dirty.remove(block);
                if let Some(b) = st.batches.get_mut(seq) {
                    b.live -= 1;
                }
            }
        }
        while let Some((&seq, b)) = st.batches.iter().next() {
            if b.live > 0 {
                break;
            }
            st.batches.remove(&seq);
        }
        let (tail_pos, tail_seq) = match st.batches.iter().next() {
            Some((&seq, b)) => (b.pos, seq),
            None => (st.head_pos, st.next_seq),
        };
        if (tail_pos, tail_seq) == (st.header.tail_pos, st.header.tail_seq) {
            None
        } else {
            let mut h = st.header.clone();
            h.seq += 1;
            h.tail_pos = tail_pos;
            h.tail_seq = tail_seq;
            Some(h)
        }
    };
    wb.counters
        .destaged_blocks
        .fetch_add(picked.len() as u64, Ordering::Relaxed);
    wb.counters.destage_writes.fetch_add(ios, Ordering::Relaxed);
    if let Some(h) = new_header {
        safestore::write_header(wb.store.as_ref(), &h)
            .map_err(|e| safestore::store_error("header", e))?;
        wb.st.lock().header = h;
    }
    wb.cv.notify_all();
    Ok(true)
}

/// The write-back layer in the stack (below the read cache).
pub struct WriteBackDevice {
    pub(super) wb: Arc<WriteBack>,
    pub(super) lower: Arc<dyn BlockDevice>,
}

impl WriteBackDevice {
    fn block_locks(&self, first: u64, last: u64) -> Vec<parking_lot::MutexGuard<'_, ()>> {
        let mut stripes: Vec<u64> = (first..=last.min(first + BLOCK_LOCKS - 1))
            .map(|b| b % BLOCK_LOCKS)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|s| self.wb.block_locks[s as usize].lock())
            .collect()
    }

    /// Log a write of `data` (None: zeroes) at `offset`.
    fn log_write(&self, data: &[u8], offset: u64) -> Result<()> {
        check_range(offset, data.len() as u64, self.wb.volume_bytes)?;
        if data.is_empty() {
            return Ok(());
        }
        let _gate = self.wb.gate.read();
        let first = offset / BLOCK_BYTES;
        let last = (offset + data.len() as u64 - 1) / BLOCK_BYTES;
        let _locks = self.block_locks(first, last);
        let mut entries = Vec::with_capacity((last - first + 1) as usize);
        for block in first..=last {
            let bstart = block * BLOCK_BYTES;
            let lo = offset.max(bstart);
            let hi = (offset + data.len() as u64).min(bstart + BLOCK_BYTES);
            let mut content = vec![0u8; BLOCK_BYTES as usize];
            if hi - lo < BLOCK_BYTES {
                // Partial block: start from its current contents.
                self.read(&mut content, bstart)?;
            }
            content[(lo - bstart) as usize..(hi - bstart) as usize]
                .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
            entries.push(Entry {
                block,
                data: Some(content),
            });
        }
        for chunk in entries.chunks(MAX_BATCH_ENTRIES) {
            self.wb.commit(chunk.to_vec())?;
        }
        Ok(())
    }

    /// Discard and write-zeroes: drain, then straight to the volume.
    fn drained<T>(&self, f: impl FnOnce(&dyn BlockDevice) -> Result<T>) -> Result<T> {
        let _gate = self.wb.gate.write();
        self.wb.drain_locked()?;
        self.wb.passthrough_dirty.store(true, Ordering::SeqCst);
        f(self.lower.as_ref())
    }
}

impl BlockDevice for WriteBackDevice {
    fn size_bytes(&self) -> u64 {
        self.lower.size_bytes()
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.wb.volume_bytes)?;
        if buf.is_empty() {
            return Ok(());
        }
        let aligned = offset % BLOCK_BYTES == 0 && buf.len() as u64 % BLOCK_BYTES == 0;
        if !aligned {
            // Widen to whole blocks, then copy the requested part.
            let first = offset / BLOCK_BYTES;
            let last = (offset + buf.len() as u64 - 1) / BLOCK_BYTES;
            let mut tmp = vec![0u8; ((last - first + 1) * BLOCK_BYTES) as usize];
            self.read(&mut tmp, first * BLOCK_BYTES)?;
            let skip = (offset - first * BLOCK_BYTES) as usize;
            buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
            return Ok(());
        }
        let first = offset / BLOCK_BYTES;
        let n = buf.len() / BLOCK_BYTES as usize;
        // Snapshot the dirty blocks first, then read the volume: a block
        // that was not dirty at the snapshot is current on the volume (a
        // dirty entry is removed only after it reached the volume).
        let dirty = self.wb.dirty_in(first, n);
        self.lower.read(buf, offset)?;
        for (i, data) in dirty {
            let out = &mut buf[i * BLOCK_BYTES as usize..(i + 1) * BLOCK_BYTES as usize];
            match data {
                Some(d) => out.copy_from_slice(&d),
                None => out.fill(0),
            }
        }
        Ok(())
    }

    fn write(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
        // Durable when logged: FUA needs nothing more.
        self.log_write(buf, offset)
    }

    fn flush(&self) -> Result<()> {
        // Every acknowledged write is already durable in the safe store;
        // only discards and write-zeroes went to the volume unlogged.
        if self.wb.passthrough_dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.lower.flush() {
                self.wb.passthrough_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.wb.volume_bytes)?;
        self.drained(|d| d.discard(offset, len))
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        check_range(offset, len, self.wb.volume_bytes)?;
        self.drained(|d| d.write_zeroes(offset, len, fua))
    }

    fn block_size_bytes(&self) -> u32 {
        self.lower.block_size_bytes()
    }

    fn latency_class(&self) -> LatencyClass {
        // Every write waits for a store flush.
        LatencyClass::Blocking
    }
}
