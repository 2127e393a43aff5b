//! The cache service: a block read cache with read-ahead, at the bottom of a
//! volume's stack (right above the backend), so every other service's reads
//! (copy-on-write, resync) benefit too.
//!
//! * **Blocks** of [`CACHE_BLOCK_BYTES`], in [`SHARDS`] shards (block number
//!   modulo the shard count, so a sequential run spreads over all of them),
//!   each an [`s3fifo::S3Fifo`] under its own mutex. Memory is bounded by the
//!   configured size.
//! * **Write-through.** Writes, discards and write-zeroes go to the device
//!   below first, then drop every cached block they touched. Dropping rather
//!   than patching keeps cache and device identical even when two writers
//!   race on one block (whichever reached the device last wins in both).
//!   Flush and FUA pass straight through: nothing in the read cache is
//!   dirty (the write-back layer below it keeps its own durability).
//! * **Fills never go stale.** Each shard counts the writes that touched it.
//!   A read miss notes the counts of its blocks' shards before reading the
//!   device and inserts a block only if its shard saw no write meanwhile; a
//!   write bumps the count after its device write completed. So a fill that
//!   raced a write is simply not cached.
//! * **Read-ahead.** A read that starts where the previous one ended grows a
//!   window (128 KiB doubling to 2 MiB); the blocks ahead of the stream are
//!   read by one background thread and inserted as `prefetched`, counted as
//!   read-ahead hits when first read. A non-sequential read resets it.
//! * A partial block at the end of a device whose size is not a multiple of
//!   the block size is never cached; requests for it pass through.
//!
//! * **Write-back** (optional, `writeback.rs`): below the read cache, a
//!   layer that acknowledges writes once they are durable in a safe store
//!   (`safestore.rs`, an append log replayed after a crash) and destages
//!   them in the background, merging adjacent blocks into large writes
//!   (write coalescing).

pub mod s3fifo;
pub mod safestore;
pub mod writeback;

use crate::device::{check_range, BlockDevice, LatencyClass, Result};
use crate::interposer::Service;
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use s3fifo::{Lookup, S3Fifo};
use serde::Serialize;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Cache granularity: the page size and the file systems' block size, so a
/// 4 KiB random read is one cache block.
pub const CACHE_BLOCK_BYTES: usize = 4096;
const BS: u64 = CACHE_BLOCK_BYTES as u64;
/// Shards of the index. 16 mutexes make contention between a handful of
/// I/O threads rare; more would only shrink each shard's share of capacity.
pub const SHARDS: usize = 16;
/// Default cache size when `cache enable` is given none.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// Smallest cache accepted: one block per shard per queue and then some.
pub const MIN_CACHE_BYTES: u64 = 1 << 20;
/// Read-ahead window: starts at 128 KiB (the kernel's default read-ahead)
/// and doubles per sequential read up to 2 MiB.
const READAHEAD_MIN_BYTES: u64 = 128 << 10;
const READAHEAD_MAX_BYTES: u64 = 2 << 20;
/// Read-ahead jobs queued for the background thread; more are dropped
/// (read-ahead is a hint, never a reason to block a reader).
const PREFETCH_QUEUE_JOBS: usize = 4;
/// Longest run of missing blocks filled with one device read (256 KiB).
const MAX_FILL_RUN_BLOCKS: usize = 64;

struct Shard {
    index: S3Fifo,
    /// Writes that touched this shard; see "Fills never go stale".
    write_seq: u64,
}

#[derive(Default)]
struct Counters {
    read_hits: AtomicU64,
    read_misses: AtomicU64,
    readahead_hits: AtomicU64,
    readahead_blocks: AtomicU64,
    invalidated_blocks: AtomicU64,
}

/// `cache stats` output.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    pub mode: &'static str,
    /// Write-back only: dirty and destaged bytes, coalescing, cancellations.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub write_back: Option<writeback::WriteBackStats>,
    pub capacity_bytes: u64,
    pub cached_bytes: u64,
    /// Block reads served from the cache / from the device.
    pub read_hits: u64,
    pub read_misses: u64,
    pub hit_ratio: f64,
    /// Hits on blocks that read-ahead brought in.
    pub readahead_hits: u64,
    /// Blocks read-ahead brought in.
    pub readahead_blocks: u64,
    /// Cached blocks dropped because a write, discard or write-zeroes
    /// touched them.
    pub invalidated_blocks: u64,
}

#[derive(Default)]
struct ReadAhead {
    next_offset: u64,
    window_bytes: u64,
    prefetched_until: u64,
}

struct PrefetchJob {
    lower: Arc<dyn BlockDevice>,
    start_block: u64,
    end_block: u64,
}

struct Shared {
    shards: Vec<Mutex<Shard>>,
    capacity_bytes: u64,
    counters: Counters,
    readahead: Mutex<ReadAhead>,
    prefetch: Sender<PrefetchJob>,
}

/// The service handle kept by the control plane (for stats) and attached to
/// a volume's stack.
pub struct CacheService {
    shared: Arc<Shared>,
    write_back: Option<Arc<writeback::WriteBack>>,
}

thread_local! {
    /// Per-thread scratch for fills: reused, so a miss allocates nothing
    /// once the thread has seen its largest run.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl CacheService {
    /// A cache of `capacity_bytes` (rounded down to whole blocks per shard).
    pub fn new(capacity_bytes: u64) -> Self {
        let per_shard = ((capacity_bytes / BS) as usize / SHARDS).max(2);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    index: S3Fifo::new(per_shard, CACHE_BLOCK_BYTES),
                    write_seq: 0,
                })
            })
            .collect();
        let (tx, rx) = bounded(PREFETCH_QUEUE_JOBS);
        let shared = Arc::new(Shared {
            shards,
            capacity_bytes: (per_shard * SHARDS) as u64 * BS,
            counters: Counters::default(),
            readahead: Mutex::new(ReadAhead::default()),
            prefetch: tx,
        });
        // The thread holds only a Weak: when the last device and the service
        // drop, the Sender inside Shared drops and the thread exits.
        let weak = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name("cache-readahead".into())
            .spawn(move || prefetch_loop(rx, weak));
        if let Err(e) = spawned {
            log::warn!("cache: no read-ahead thread ({e}); reads still cached");
        }
        CacheService {
            shared,
            write_back: None,
        }
    }

    /// A write-back cache over the safe store `wb` (created or replayed by
    /// the caller).
    pub fn with_write_back(capacity_bytes: u64, wb: Arc<writeback::WriteBack>) -> Self {
        let mut c = Self::new(capacity_bytes);
        c.write_back = Some(wb);
        c
    }

    pub fn is_write_back(&self) -> bool {
        self.write_back.is_some()
    }

    /// Be told when a write-back cache fails (a destage or safe-store
    /// error); never called for write-through.
    pub fn on_failure(&self, hook: writeback::FailureHook) {
        if let Some(wb) = &self.write_back {
            wb.on_failure(hook);
        }
    }

    /// Stop the destage thread. With `drain`, everything dirty reaches the
    /// volume first (the safe store is then empty); without, what is left
    /// stays logged and is replayed at the next start.
    pub fn shutdown(&self, drain: bool) -> Result<()> {
        if let Some(wb) = &self.write_back {
            let r = if drain { wb.drain() } else { Ok(()) };
            wb.stop();
            return r;
        }
        Ok(())
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        let cached_blocks: usize = self
            .shared
            .shards
            .iter()
            .map(|s| s.lock().index.len())
            .sum();
        let hits = c.read_hits.load(Ordering::Relaxed);
        let misses = c.read_misses.load(Ordering::Relaxed);
        CacheStats {
            mode: if self.write_back.is_some() {
                "write-back"
            } else {
                "write-through"
            },
            write_back: self.write_back.as_ref().map(|wb| wb.stats()),
            capacity_bytes: self.shared.capacity_bytes,
            cached_bytes: cached_blocks as u64 * BS,
            read_hits: hits,
            read_misses: misses,
            hit_ratio: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            readahead_hits: c.readahead_hits.load(Ordering::Relaxed),
            readahead_blocks: c.readahead_blocks.load(Ordering::Relaxed),
            invalidated_blocks: c.invalidated_blocks.load(Ordering::Relaxed),
        }
    }
}

impl Service for CacheService {
    fn name(&self) -> &str {
        "cache"
    }

    fn tier(&self) -> crate::interposer::Tier {
        crate::interposer::Tier::Cache
    }

    fn stack_on(
        &self,
        lower: Arc<dyn BlockDevice>,
    ) -> std::result::Result<Arc<dyn BlockDevice>, String> {
        let lower: Arc<dyn BlockDevice> = match &self.write_back {
            Some(wb) => {
                wb.set_lower(lower.clone());
                Arc::new(writeback::WriteBackDevice {
                    wb: wb.clone(),
                    lower,
                })
            }
            None => lower,
        };
        Ok(Arc::new(CacheDevice {
            size_bytes: lower.size_bytes(),
            lower,
            shared: self.shared.clone(),
        }))
    }

    fn before_detach(&self) -> std::result::Result<(), String> {
        // Disabling a write-back cache destages everything first.
        match &self.write_back {
            Some(wb) => wb
                .drain()
                .map_err(|e| format!("destaging before the cache is removed: {e}")),
            None => Ok(()),
        }
    }
}

impl Shared {
    fn shard(&self, block: u64) -> &Mutex<Shard> {
        &self.shards[(block % SHARDS as u64) as usize]
    }

    /// Read blocks `[start, end)` from `lower` and insert those whose shard
    /// saw no write meanwhile (and, for read-ahead, that are not cached).
    /// Returns the data read, in the thread's scratch, through `use_data`.
    fn fill(
        &self,
        lower: &dyn BlockDevice,
        start: u64,
        end: u64,
        prefetched: bool,
        use_data: impl FnOnce(&[u8]),
    ) -> Result<()> {
        let n = (end - start) as usize;
        debug_assert!(n > 0 && n <= MAX_FILL_RUN_BLOCKS);
        let mut seqs = [0u64; MAX_FILL_RUN_BLOCKS];
        for (i, seq) in seqs.iter_mut().enumerate().take(n) {
            *seq = self.shard(start + i as u64).lock().write_seq;
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.resize(n * CACHE_BLOCK_BYTES, 0);
            lower.read(&mut scratch[..], start * BS)?;
            let mut inserted = 0;
            for (i, &seq) in seqs.iter().enumerate().take(n) {
                let block = start + i as u64;
                let mut shard = self.shard(block).lock();
                if shard.write_seq == seq && !(prefetched && shard.index.contains(block)) {
                    let data = &scratch[i * CACHE_BLOCK_BYTES..(i + 1) * CACHE_BLOCK_BYTES];
                    shard.index.insert(block, data, prefetched);
                    inserted += 1;
                }
            }
            if prefetched {
                self.counters
                    .readahead_blocks
                    .fetch_add(inserted, Ordering::Relaxed);
            }
            use_data(&scratch[..]);
            Ok(())
        })
    }

    /// Drop cached blocks overlapping `[offset, offset+len)` and bump the
    /// write counts of their shards. Called after the device write.
    fn invalidate(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / BS;
        let end = (offset + len - 1) / BS + 1;
        let mut dropped = 0u64;
        if end - first <= (SHARDS * 4) as u64 {
            for block in first..end {
                let mut shard = self.shard(block).lock();
                shard.write_seq += 1;
                dropped += shard.index.remove(block) as u64;
            }
        } else {
            for shard in &self.shards {
                let mut shard = shard.lock();
                shard.write_seq += 1;
                dropped += shard.index.remove_range(first, end) as u64;
            }
        }
        self.counters
            .invalidated_blocks
            .fetch_add(dropped, Ordering::Relaxed);
    }
}

/// The layer in the stack.
struct CacheDevice {
    lower: Arc<dyn BlockDevice>,
    shared: Arc<Shared>,
    size_bytes: u64,
}

impl CacheDevice {
    /// Serve `[offset, offset+buf.len())`, all inside whole blocks.
    fn read_cached(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let first = offset / BS;
        let last = (end - 1) / BS;
        let mut block_buf = [0u8; CACHE_BLOCK_BYTES];
        let mut run_start: Option<u64> = None;
        // Copy the part of block-aligned `data` (starting at block `from`)
        // that the request covers into `buf`.
        let copy_out = |buf: &mut [u8], from: u64, data: &[u8]| {
            let data_start = from * BS;
            let lo = offset.max(data_start);
            let hi = end.min(data_start + data.len() as u64);
            buf[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&data[(lo - data_start) as usize..(hi - data_start) as usize]);
        };
        for block in first..=last {
            let lookup = self
                .shared
                .shard(block)
                .lock()
                .index
                .get(block, &mut block_buf);
            match lookup {
                Lookup::Hit { was_prefetched } => {
                    let c = &self.shared.counters;
                    c.read_hits.fetch_add(1, Ordering::Relaxed);
                    if was_prefetched {
                        c.readahead_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(start) = run_start.take() {
                        self.shared
                            .fill(self.lower.as_ref(), start, block, false, |d| {
                                copy_out(buf, start, d)
                            })?;
                        self.count_misses(block - start);
                    }
                    copy_out(buf, block, &block_buf);
                }
                Lookup::Miss => {
                    let start = *run_start.get_or_insert(block);
                    if block + 1 - start == MAX_FILL_RUN_BLOCKS as u64 {
                        run_start = None;
                        self.shared
                            .fill(self.lower.as_ref(), start, block + 1, false, |d| {
                                copy_out(buf, start, d)
                            })?;
                        self.count_misses(block + 1 - start);
                    }
                }
            }
        }
        if let Some(start) = run_start {
            self.shared
                .fill(self.lower.as_ref(), start, last + 1, false, |d| {
                    copy_out(buf, start, d)
                })?;
            self.count_misses(last + 1 - start);
        }
        Ok(())
    }

    fn count_misses(&self, blocks: u64) {
        self.shared
            .counters
            .read_misses
            .fetch_add(blocks, Ordering::Relaxed);
    }

    /// Track the sequential stream and queue read-ahead past its end.
    fn note_read(&self, offset: u64, len: u64, cacheable_end: u64) {
        let job = {
            let mut ra = self.shared.readahead.lock();
            if offset == ra.next_offset && offset != 0 {
                ra.window_bytes =
                    (ra.window_bytes * 2).clamp(READAHEAD_MIN_BYTES, READAHEAD_MAX_BYTES);
            } else {
                ra.window_bytes = 0;
                ra.prefetched_until = 0;
            }
            ra.next_offset = offset + len;
            if ra.window_bytes == 0 {
                return;
            }
            let from = (offset + len).max(ra.prefetched_until).next_multiple_of(BS);
            let to = (offset + len + ra.window_bytes).min(cacheable_end) / BS * BS;
            // Only queue worthwhile chunks: at least half a window.
            if to <= from || to - from < ra.window_bytes / 2 {
                return;
            }
            ra.prefetched_until = to;
            PrefetchJob {
                lower: self.lower.clone(),
                start_block: from / BS,
                end_block: to / BS,
            }
        };
        // Full queue: drop the hint rather than wait.
        let _ = self.shared.prefetch.try_send(job);
    }
}

fn prefetch_loop(jobs: Receiver<PrefetchJob>, shared: Weak<Shared>) {
    for job in jobs.iter() {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut block = job.start_block;
        while block < job.end_block {
            // Skip what is cached already; fill the next missing run.
            if shared.shard(block).lock().index.contains(block) {
                block += 1;
                continue;
            }
            let end = (block + MAX_FILL_RUN_BLOCKS as u64).min(job.end_block);
            if let Err(e) = shared.fill(job.lower.as_ref(), block, end, true, |_| {}) {
                log::debug!("cache read-ahead at block {block}: {e}");
                break;
            }
            block = end;
        }
    }
}

impl BlockDevice for CacheDevice {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size_bytes)?;
        if buf.is_empty() {
            return Ok(());
        }
        let cacheable_end = self.size_bytes / BS * BS;
        let end = offset + buf.len() as u64;
        if offset >= cacheable_end {
            return self.lower.read(buf, offset);
        }
        let split = (end.min(cacheable_end) - offset) as usize;
        let (cached, tail) = buf.split_at_mut(split);
        if !tail.is_empty() {
            self.lower.read(tail, cacheable_end)?;
        }
        self.read_cached(cached, offset)?;
        self.note_read(offset, split as u64, cacheable_end);
        Ok(())
    }

    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size_bytes)?;
        // Invalidate even when the write failed: the device may hold part
        // of it, and the cache must never claim the old data is current.
        let r = self.lower.write(buf, offset, fua);
        self.shared.invalidate(offset, buf.len() as u64);
        r
    }

    fn flush(&self) -> Result<()> {
        self.lower.flush()
    }

    /// The read cache holds only what its lower device reads, so the
    /// lower's holes are its own (a write-back layer below answers for
    /// its dirty blocks).
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<crate::device::Extent>> {
        self.lower.allocation(offset, len)
    }

    /// The same reasoning: what it serves is what its lower device reads.
    fn clone_source(&self) -> Option<&std::fs::File> {
        self.lower.clone_source()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size_bytes)?;
        let r = self.lower.discard(offset, len);
        self.shared.invalidate(offset, len);
        r
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        check_range(offset, len, self.size_bytes)?;
        let r = self.lower.write_zeroes(offset, len, fua);
        self.shared.invalidate(offset, len);
        r
    }

    fn block_size_bytes(&self) -> u32 {
        self.lower.block_size_bytes()
    }

    fn latency_class(&self) -> LatencyClass {
        self.lower.latency_class()
    }
}

#[cfg(test)]
mod tests;
