//! Differential property test: random read, write, FUA write, flush, discard
//! and write-zeroes sequences through a volume (with and without a
//! pass-through layer, over memory and over a file with each engine) against
//! a `Vec<u8>` model, with the pass-through layer and the cache switched on
//! and off along the way. Any divergence fails with the shrunk op sequence.

use proptest::prelude::*;
use std::sync::Arc;
use umbra::backend::{EngineKind, FileBackend, FileOptions, MemoryBackend};
use umbra::device::BlockDevice;
use umbra::interposer::passthrough::Passthrough;
use umbra::interposer::Volume;
use umbra::services::cache::writeback::WriteBack;
use umbra::services::cache::{safestore, CacheService};

const SIZE: u64 = 256 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Read {
        off: u64,
        len: u64,
    },
    Write {
        off: u64,
        len: u64,
        fua: bool,
        seed: u8,
    },
    Flush,
    Discard {
        off: u64,
        len: u64,
    },
    WriteZeroes {
        off: u64,
        len: u64,
        fua: bool,
    },
    OutOfRangeWrite {
        len: u64,
    },
    ToggleLayer,
    ToggleCache {
        write_back: bool,
    },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    // Mostly sector-aligned, sometimes byte-granular, up to 64 KiB.
    prop_oneof![
        (0..SIZE / 512, 1..128u64).prop_map(|(s, n)| (s * 512, n * 512)),
        (0..SIZE, 1..70_000u64),
    ]
    .prop_map(|(off, len)| (off, len.min(SIZE - off)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => range().prop_map(|(off, len)| Op::Read { off, len }),
        6 => (range(), any::<bool>(), any::<u8>())
            .prop_map(|((off, len), fua, seed)| Op::Write { off, len, fua, seed }),
        1 => Just(Op::Flush),
        1 => range().prop_map(|(off, len)| Op::Discard { off, len }),
        1 => (range(), any::<bool>()).prop_map(|((off, len), fua)| Op::WriteZeroes { off, len, fua }),
        1 => (1..4096u64).prop_map(|len| Op::OutOfRangeWrite { len }),
        1 => Just(Op::ToggleLayer),
        1 => any::<bool>().prop_map(|write_back| Op::ToggleCache { write_back }),
    ]
}

fn run(vol: &Volume, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = vec![0u8; SIZE as usize];
    let mut layered = false;
    let mut cached: Option<Arc<CacheService>> = None;
    for op in ops {
        match *op {
            Op::Read { off, len } => {
                let mut buf = vec![0xAA; len as usize];
                vol.read(&mut buf, off).unwrap();
                prop_assert_eq!(&buf[..], &model[off as usize..(off + len) as usize]);
            }
            Op::Write {
                off,
                len,
                fua,
                seed,
            } => {
                let data: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                    .collect();
                vol.write(&data, off, fua).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            Op::Flush => vol.flush().unwrap(),
            Op::Discard { off, len } => {
                vol.discard(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::WriteZeroes { off, len, fua } => {
                vol.write_zeroes(off, len, fua).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::OutOfRangeWrite { len } => {
                prop_assert!(vol
                    .write(&vec![9; len as usize], SIZE - len / 2, false)
                    .is_err());
            }
            Op::ToggleLayer => {
                if layered {
                    vol.detach("pt").unwrap();
                } else {
                    vol.attach(Arc::new(Passthrough::new("pt"))).unwrap();
                }
                layered = !layered;
            }
            Op::ToggleCache { write_back } => {
                if let Some(cache) = cached.take() {
                    // A write-back cache destages everything here.
                    vol.detach("cache").unwrap();
                    cache.shutdown(false).unwrap();
                } else {
                    // A tiny cache (two blocks per shard) so runs evict;
                    // write-back over a small safe store, so it wraps and
                    // throttles.
                    let cache = Arc::new(if write_back {
                        let store = Arc::new(MemoryBackend::new(
                            safestore::LOG_OFFSET + safestore::MIN_LOG_BYTES,
                        ));
                        CacheService::with_write_back(
                            0,
                            WriteBack::create(store, vol.size_bytes()).unwrap(),
                        )
                    } else {
                        CacheService::new(0)
                    });
                    vol.quiesce("enable cache")
                        .unwrap()
                        .insert(0, cache.clone())
                        .unwrap();
                    cached = Some(cache);
                }
            }
        }
    }
    let mut all = vec![0; SIZE as usize];
    vol.read(&mut all, 0).unwrap();
    prop_assert!(all == model, "final contents differ from the model");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_volume_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let vol = Volume::new("m", Arc::new(MemoryBackend::new(SIZE)), String::new());
        run(&vol, &ops)?;
    }

    #[test]
    fn file_volume_matches_model(
        ops in prop::collection::vec(op(), 1..80),
        engine in prop_oneof![Just(EngineKind::Uring), Just(EngineKind::Sync)],
        direct in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let be = FileBackend::create(&dir.path().join("v"), SIZE, FileOptions {
                    engine,
                    direct,
                    ..Default::default()
                }).unwrap();
        let vol = Volume::with_describe("f", be);
        run(&vol, &ops)?;
    }
}
