use super::*;
use crate::backend::{EngineKind, FileBackend, FileOptions, MemoryBackend};
use crate::device::testing::{self, pattern};
use crate::interposer::Volume;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn cached_memory_volume(size: u64, cache_bytes: u64) -> (Arc<Volume>, Arc<CacheService>) {
    let v = Arc::new(Volume::new(
        "c",
        Arc::new(MemoryBackend::new(size)),
        String::new(),
    ));
    let cache = Arc::new(CacheService::new(cache_bytes));
    v.quiesce("enable cache")
        .unwrap()
        .insert(0, cache.clone())
        .unwrap();
    (v, cache)
}

#[test]
fn conformance_with_cache_on_memory_and_each_file_engine() {
    // A 1 MiB cache on 8 MiB devices: the suite runs through evictions.
    let (v, cache) = cached_memory_volume(8 << 20, MIN_CACHE_BYTES);
    testing::run_all("memory+cache", v);
    assert!(cache.stats().read_hits > 0);
    for engine in [EngineKind::Sync, EngineKind::Uring] {
        let dir = tempfile::tempdir().unwrap();
        let be = FileBackend::create(
            &dir.path().join("v"),
            8 << 20,
            FileOptions {
                engine,
                direct: false,
                ..Default::default()
            },
        )
        .unwrap();
        let v = Arc::new(Volume::with_describe("f", be));
        v.quiesce("enable cache")
            .unwrap()
            .insert(0, Arc::new(CacheService::new(MIN_CACHE_BYTES)))
            .unwrap();
        testing::run_all(&format!("file/{engine:?}+cache"), v);
    }
}

#[test]
fn repeated_reads_hit_and_writes_invalidate() {
    let (v, cache) = cached_memory_volume(4 << 20, 4 << 20);
    v.write(&pattern(1, 0, 65536), 0, false).unwrap();
    let mut buf = vec![0; 65536];
    v.read(&mut buf, 0).unwrap();
    let s = cache.stats();
    assert_eq!((s.read_hits, s.read_misses), (0, 16));
    v.read(&mut buf, 0).unwrap();
    assert_eq!(cache.stats().read_hits, 16);
    assert_eq!(buf, pattern(1, 0, 65536));
    // An unaligned write into a cached block: the next read sees it.
    v.write(&[0xEE; 100], 5000, false).unwrap();
    v.read(&mut buf, 0).unwrap();
    let mut expect = pattern(1, 0, 65536);
    expect[5000..5100].fill(0xEE);
    assert_eq!(buf, expect);
    assert!(cache.stats().invalidated_blocks >= 1);
    v.discard(0, 65536).unwrap();
    v.read(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn a_partial_last_block_passes_through() {
    let size = (1 << 20) + 100;
    let (v, _) = cached_memory_volume(size, MIN_CACHE_BYTES);
    v.write(&pattern(2, size - 4196, 4196), size - 4196, false)
        .unwrap();
    let mut buf = vec![0; 4196];
    for _ in 0..2 {
        v.read(&mut buf, size - 4196).unwrap();
        assert_eq!(buf, pattern(2, size - 4196, 4196));
    }
}

/// Block contents: its version, repeated.
fn versioned(version: u64) -> Vec<u8> {
    version.to_le_bytes().repeat(CACHE_BLOCK_BYTES / 8)
}

/// Readers must never see a block older than a write that completed before
/// their read began, however reads, fills, evictions and writes interleave.
#[test]
fn reads_never_see_data_older_than_a_completed_write() {
    const BLOCKS: u64 = 64;
    // 16 shards x 2 blocks: far smaller than the working set, so blocks are
    // evicted and refilled constantly.
    let (v, cache) = cached_memory_volume(BLOCKS * BS, 0);
    let completed: Arc<Vec<AtomicU64>> = Arc::new((0..BLOCKS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut handles = Vec::new();
    for w in 0..2u64 {
        let (v, completed, stop) = (v.clone(), completed.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            // Each block has one writer (block % 2 == w), so a block's
            // versions only grow and "the latest completed write" is exact.
            let mut version = 0u64;
            while !stop.load(Ordering::Relaxed) {
                version += 1;
                let block = (version * 7 % (BLOCKS / 2)) * 2 + w;
                v.write(&versioned(version), block * BS, false).unwrap();
                completed[block as usize].fetch_max(version, Ordering::SeqCst);
            }
        }));
    }
    for r in 0..2u64 {
        let (v, completed, stop) = (v.clone(), completed.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            // Stop the writers however this reader ends (a failed assert
            // included), so the test reports instead of hanging.
            struct StopOnDrop(Arc<AtomicBool>);
            impl Drop for StopOnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = StopOnDrop(stop.clone());
            let mut buf = vec![0u8; CACHE_BLOCK_BYTES];
            let mut i = r;
            while Instant::now() < deadline {
                i += 1;
                let block = (i * 13) % BLOCKS;
                let floor = completed[block as usize].load(Ordering::SeqCst);
                v.read(&mut buf, block * BS).unwrap();
                let seen = u64::from_le_bytes(buf[..8].try_into().unwrap());
                assert!(buf == versioned(seen), "block {block} is torn");
                assert!(
                    seen >= floor,
                    "block {block}: read version {seen} after {floor} completed"
                );
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert!(cache.stats().read_hits > 0, "{:?}", cache.stats());
}

#[test]
fn sequential_reads_trigger_read_ahead_that_later_reads_hit() {
    let (v, cache) = cached_memory_volume(32 << 20, 32 << 20);
    let mut buf = vec![0u8; 64 << 10];
    for i in 0..64u64 {
        v.read(&mut buf, i * (64 << 10)).unwrap();
        if i % 8 == 0 {
            // Give the read-ahead thread a moment, as a real reader's
            // processing time would.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let s = cache.stats();
    assert!(s.readahead_blocks > 0, "{s:?}");
    assert!(s.readahead_hits > 0, "{s:?}");
    // A random read resets the stream: no read-ahead from it. First let
    // the prefetches the stream already queued finish: wait until the
    // count stops moving.
    let mut before = cache.stats().readahead_blocks;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = cache.stats().readahead_blocks;
        if now == before {
            break;
        }
        before = now;
    }
    v.read(&mut buf, 3 << 20).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(cache.stats().readahead_blocks, before);
}

#[test]
fn enable_and_disable_under_concurrent_io_loses_nothing() {
    for write_back in [false, true] {
        enable_and_disable_under_concurrent_io(write_back);
    }
}

fn enable_and_disable_under_concurrent_io(write_back: bool) {
    const THREADS: u64 = 4;
    const WRITES: u64 = 200;
    let v = Arc::new(Volume::new(
        "v",
        Arc::new(MemoryBackend::new(THREADS * WRITES * BS)),
        String::new(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (v, stop) = (v.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flips = 0;
            while !stop.load(Ordering::Relaxed) {
                let cache = Arc::new(if write_back {
                    let store = Arc::new(MemoryBackend::new(
                        safestore::LOG_OFFSET + safestore::MIN_LOG_BYTES,
                    ));
                    let wb = writeback::WriteBack::create(store, v.size_bytes()).unwrap();
                    CacheService::with_write_back(MIN_CACHE_BYTES, wb)
                } else {
                    CacheService::new(MIN_CACHE_BYTES)
                });
                v.quiesce("enable cache")
                    .unwrap()
                    .insert(0, cache.clone())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(2));
                // Disabling a write-back cache destages it first.
                v.detach("cache").unwrap();
                cache.shutdown(false).unwrap();
                flips += 1;
            }
            flips
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0; BS as usize];
                for i in 0..WRITES {
                    let off = (i * THREADS + t) * BS;
                    let data = pattern(t, off, BS as usize);
                    v.write(&data, off, false).unwrap();
                    v.read(&mut buf, off).unwrap();
                    assert_eq!(buf, data, "read back through a changing stack");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(flipper.join().unwrap() > 0);
    for i in 0..THREADS * WRITES {
        let mut buf = vec![0; BS as usize];
        v.read(&mut buf, i * BS).unwrap();
        assert_eq!(buf, pattern(i % THREADS, i * BS, BS as usize));
    }
}

// ----- write-back --------------------------------------------------------

use crate::device::testing::{CrashClock, CrashDevice};
use writeback::WriteBack;

const STORE_BYTES: u64 = safestore::LOG_OFFSET + safestore::MIN_LOG_BYTES;

fn write_back_volume(
    backend: Arc<dyn BlockDevice>,
    store: Arc<dyn BlockDevice>,
    create: bool,
) -> (Arc<Volume>, Arc<CacheService>) {
    let size = backend.size_bytes();
    let wb = if create {
        WriteBack::create(store, size).unwrap()
    } else {
        WriteBack::open(store, size).unwrap()
    };
    let v = Arc::new(Volume::new("wb", backend, String::new()));
    let cache = Arc::new(CacheService::with_write_back(MIN_CACHE_BYTES, wb));
    v.quiesce("enable cache")
        .unwrap()
        .insert(0, cache.clone())
        .unwrap();
    (v, cache)
}

#[test]
fn conformance_in_write_back_mode() {
    let (v, cache) = write_back_volume(
        Arc::new(MemoryBackend::new(8 << 20)),
        Arc::new(MemoryBackend::new(STORE_BYTES)),
        true,
    );
    testing::run_all("memory+write-back", v.clone());
    let s = cache.stats();
    assert_eq!(s.mode, "write-back");
    assert!(s.write_back.unwrap().destaged_bytes > 0);
    // Disabling destages everything first.
    v.detach("cache").unwrap();
    cache.shutdown(false).unwrap();
}

#[test]
fn write_back_coalesces_small_sequential_writes_and_cancels_rewrites() {
    // A volume that takes 100 ms per write: the destage thread is busy
    // with its first batch while every write below lands in the log, so
    // what it finds next coalesces and the rewrites cancel whatever the
    // machine's load (with a fast volume the counts depend on the timing).
    let slow = Arc::new(SlowDevice::new(8 << 20));
    let (v, cache) = write_back_volume(
        slow.clone(),
        Arc::new(MemoryBackend::new(STORE_BYTES)),
        true,
    );
    // Something to keep the destage thread busy first: wait until its
    // 100 ms write to the volume has begun.
    v.write(&pattern(7, 6 << 20, 4096), 6 << 20, false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.started.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "nothing destaged");
        std::thread::yield_now();
    }
    // 256 sequential 4 KiB writes, then one block rewritten 10 times.
    for i in 0..256u64 {
        v.write(&pattern(i, i * 4096, 4096), i * 4096, false)
            .unwrap();
    }
    for k in 0..10u64 {
        v.write(&pattern(1000 + k, 0, 4096), 4 << 20, false)
            .unwrap();
    }
    v.flush().unwrap();
    let dev: Arc<dyn BlockDevice> = v.clone();
    cache.shutdown(true).unwrap();
    let s = cache.stats().write_back.unwrap();
    assert_eq!(s.dirty_bytes, 0);
    assert!(s.write_cancellations >= 9, "{s:?}");
    // 266 logged blocks reached the volume in a handful of writes.
    assert!(s.writes_coalesced >= 200, "{s:?}");
    let mut b = vec![0u8; 4096];
    dev.read(&mut b, 4 << 20).unwrap();
    assert_eq!(b, pattern(1009, 0, 4096));
}

/// A volume that takes 100 ms per write: destage falls behind. `started`
/// counts the writes begun.
struct SlowDevice {
    mem: MemoryBackend,
    started: AtomicU64,
}

impl SlowDevice {
    fn new(bytes: u64) -> SlowDevice {
        SlowDevice {
            mem: MemoryBackend::new(bytes),
            started: AtomicU64::new(0),
        }
    }
}

impl BlockDevice for SlowDevice {
    fn size_bytes(&self) -> u64 {
        self.mem.size_bytes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.mem.read(buf, offset)
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.started.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        self.mem.write(buf, offset, fua)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.mem.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.mem.write_zeroes(offset, len, fua)
    }
}

#[test]
fn write_back_full_store_throttles_writers_then_catches_up() {
    let (v, cache) = write_back_volume(
        Arc::new(SlowDevice::new(32 << 20)),
        Arc::new(MemoryBackend::new(STORE_BYTES)),
        true,
    );
    let cap = cache.stats().write_back.unwrap().log_capacity_bytes;
    // Write three times the log's capacity.
    let total = 3 * cap;
    let mut off = 0;
    while off < total {
        v.write(
            &pattern(off, off % (32 << 20), 65536),
            off % (32 << 20),
            false,
        )
        .unwrap();
        off += 65536;
    }
    let s = cache.stats().write_back.unwrap();
    assert!(s.throttled_writes > 0, "{s:?}");
    assert!(s.log_used_bytes <= cap);
    cache.shutdown(true).unwrap();
}

#[test]
fn write_back_destage_error_fails_the_cache_visibly() {
    let faulty = Arc::new(testing::FaultyDevice::new(Arc::new(MemoryBackend::new(
        8 << 20,
    ))));
    let (v, cache) = write_back_volume(
        faulty.clone(),
        Arc::new(MemoryBackend::new(STORE_BYTES)),
        true,
    );
    let told = Arc::new(parking_lot::Mutex::new(None::<String>));
    let t = told.clone();
    cache.on_failure(Box::new(move |why: &str| *t.lock() = Some(why.to_owned())));
    faulty.fail_writes.store(true, Ordering::SeqCst);
    v.write(&[1u8; 4096], 0, false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stats().write_back.unwrap().failed.is_none() {
        assert!(Instant::now() < deadline, "destage error not reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = v.write(&[2u8; 4096], 4096, false).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(told.lock().as_deref().unwrap_or("").contains("destage"));
    // The acknowledged write is still readable.
    let mut b = vec![0u8; 4096];
    v.read(&mut b, 0).unwrap();
    assert_eq!(b, vec![1u8; 4096]);
    cache.shutdown(false).unwrap();
}

/// Freeze the durable state of the volume and its safe store at the N-th
/// flush, for every N; replay the store over what the volume kept: every
/// write acknowledged before the freeze is there, nothing else changed.
#[test]
fn write_back_crash_at_every_flush_replays_every_acknowledged_write() {
    let mut n = 1;
    loop {
        let (flushes, frozen) = write_back_crash_run(n, None);
        if !frozen {
            assert!(n > flushes);
            break;
        }
        n += 1;
    }
    assert!(n > 20, "only {n} crash points");
}

/// The same with the power cut during every flush: the volume and the
/// store each keep any subset of their writes since the flush before,
/// torn at 512-byte sectors (`CrashClock::reordering`).
#[test]
fn write_back_cut_within_any_flush_epoch_replays_every_acknowledged_write() {
    for seed in 1..=3u64 {
        let mut n = 1;
        loop {
            let (flushes, frozen) = write_back_crash_run(n, Some(seed * 1000 + n));
            if !frozen {
                assert!(n > flushes);
                break;
            }
            n += 1;
        }
        assert!(n > 20, "only {n} crash points");
    }
}

fn write_back_crash_run(freeze_at: u64, reorder: Option<u64>) -> (u64, bool) {
    const SIZE: u64 = 1 << 20;
    let clock = match reorder {
        None => CrashClock::new(freeze_at),
        Some(seed) => CrashClock::reordering(freeze_at, seed),
    };
    let original = pattern(3, 0, SIZE as usize);
    let backend = Arc::new(CrashDevice::new(original.clone(), clock.clone()));
    let store = Arc::new(CrashDevice::new(
        vec![0; STORE_BYTES as usize],
        clock.clone(),
    ));
    let (v, cache) = write_back_volume(backend.clone(), store.clone(), true);
    // A cut during the store's formatting: enabling had not returned.
    let ready_at = clock.flushes();
    if reorder.is_some() && freeze_at <= ready_at {
        cache.shutdown(false).unwrap();
        return (clock.flushes(), clock.frozen());
    }
    // Per 4 KiB block: the value durable at the freeze, and values written
    // after it (one of which may be durable: the write whose commit was
    // the freezing flush).
    let blocks = (SIZE / 4096) as usize;
    let mut durable: Vec<Vec<u8>> = (0..blocks)
        .map(|b| original[b * 4096..(b + 1) * 4096].to_vec())
        .collect();
    let mut later: Vec<Vec<Vec<u8>>> = vec![Vec::new(); blocks];
    let mut model = original.clone();
    for i in 0..60u64 {
        let block = (i * 37) % blocks as u64;
        let (off, len) = match i % 4 {
            0 => (block * 4096, 4096u64),
            1 => (block * 4096 + 512, 1024),
            2 => (block * 4096, 3 * 4096),
            _ => (block * 4096 + 1000, 5000),
        };
        let len = len.min(SIZE - off);
        if i % 13 == 12 {
            v.write_zeroes(off, len, false).unwrap();
            v.flush().unwrap();
            model[off as usize..(off + len) as usize].fill(0);
        } else {
            let data = pattern(100 + i, off, len as usize);
            v.write(&data, off, false).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        let acked = !clock.frozen();
        for b in off / 4096..=(off + len - 1) / 4096 {
            let cur = model[(b * 4096) as usize..((b + 1) * 4096) as usize].to_vec();
            if acked {
                durable[b as usize] = cur;
                later[b as usize].clear();
            } else {
                later[b as usize].push(cur);
            }
        }
        if i == 30 {
            std::thread::sleep(Duration::from_millis(70)); // let destage run
        }
    }
    let flushes = clock.flushes();
    let frozen = clock.frozen();
    // Crash: the destage thread dies with the process.
    cache.shutdown(false).unwrap();
    drop(v);
    let backend2: Arc<dyn BlockDevice> =
        Arc::new(MemoryBackend::from_bytes(backend.durable_image()));
    let store2: Arc<dyn BlockDevice> = Arc::new(MemoryBackend::from_bytes(store.durable_image()));
    let (v2, cache2) = write_back_volume(backend2, store2, false);
    let mut got = vec![0u8; SIZE as usize];
    v2.read(&mut got, 0).unwrap();
    for b in 0..blocks {
        let g = &got[b * 4096..(b + 1) * 4096];
        if reorder.is_none() {
            assert!(
                g == durable[b].as_slice() || later[b].iter().any(|l| l.as_slice() == g),
                "N={freeze_at}: block {b} lost an acknowledged write or changed"
            );
            continue;
        }
        // A write not acknowledged may be kept in part, torn at sectors:
        // each sector holds its acknowledged bytes or a later write's.
        for (k, sector) in g.chunks(512).enumerate() {
            let at = k * 512..(k + 1) * 512;
            assert!(
                sector == &durable[b][at.clone()] || later[b].iter().any(|l| &l[at.clone()] == sector),
                "N={freeze_at} {reorder:?}: block {b} sector {k} lost an acknowledged write or changed"
            );
        }
    }
    // After destaging, the volume alone holds it all.
    cache2.shutdown(true).unwrap();
    drop(v2);
    (flushes, frozen)
}
