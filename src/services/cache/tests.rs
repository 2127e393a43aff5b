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
                v.quiesce("enable cache")
                    .unwrap()
                    .insert(0, Arc::new(CacheService::new(MIN_CACHE_BYTES)))
                    .unwrap();
                std::thread::yield_now();
                v.detach("cache").unwrap();
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
