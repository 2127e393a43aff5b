use super::passthrough::Passthrough;
use super::*;
use crate::backend::{EngineKind, FileBackend, FileOptions, MemoryBackend};
use crate::device::testing::{self, pattern, FaultyDevice, Recorded, RecordingDevice};
use std::sync::atomic::{AtomicBool, Ordering};

fn mem_volume(size: u64) -> Volume {
    Volume::new("v", Arc::new(MemoryBackend::new(size)), "memory".into())
}

#[test]
fn conformance_empty_stack_and_passthrough_on_memory() {
    let v = Arc::new(mem_volume(8 << 20));
    testing::run_all("volume/memory", v.clone());
    v.attach(Arc::new(Passthrough::new("passthrough"))).unwrap();
    testing::run_all("volume/memory+passthrough", v);
}

#[test]
fn conformance_passthrough_on_each_file_engine() {
    for engine in [EngineKind::Uring, EngineKind::Sync] {
        for direct in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let be = FileBackend::create(
                &dir.path().join("v"),
                8 << 20,
                FileOptions {
                    engine,
                    direct,
                    ..Default::default()
                },
            )
            .unwrap();
            let v = Arc::new(Volume::with_describe("v", be));
            let pt = Arc::new(Passthrough::new("passthrough"));
            v.attach(pt.clone()).unwrap();
            testing::run_all(&format!("volume/file/{engine:?}/{direct}+passthrough"), v);
            assert!(pt.requests() > 100, "requests went through the layer");
        }
    }
}

/// Writers and flushers run while another thread attaches and detaches a
/// pass-through layer over and over. Afterwards every write is in place, and
/// the backend saw each thread's requests in the order the thread made them:
/// nothing lost, nothing reordered across a flush.
#[test]
fn attach_detach_under_concurrent_io_loses_and_reorders_nothing() {
    const THREADS: u64 = 4;
    const WRITES: u64 = 300;
    const BLOCK: u64 = 4096;
    let rec = Arc::new(RecordingDevice::new(Arc::new(MemoryBackend::new(
        THREADS * WRITES * BLOCK,
    ))));
    let vol = Arc::new(Volume::new("v", rec.clone(), "recorded memory".into()));
    let stop = Arc::new(AtomicBool::new(false));

    let flipper = {
        let (vol, stop) = (vol.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flips = 0u32;
            while !stop.load(Ordering::Relaxed) {
                vol.attach(Arc::new(Passthrough::new("pt"))).unwrap();
                std::thread::yield_now();
                vol.detach("pt").unwrap();
                flips += 1;
            }
            flips
        })
    };
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let vol = vol.clone();
            std::thread::spawn(move || {
                let mut expected = Vec::new();
                for i in 0..WRITES {
                    let off = (i * THREADS + t) * BLOCK;
                    let fua = i % 7 == 0;
                    vol.write(&pattern(t, off, BLOCK as usize), off, fua)
                        .unwrap();
                    expected.push(Recorded::Write {
                        offset: off,
                        len: BLOCK,
                        fua,
                    });
                    if i % 10 == 9 {
                        vol.flush().unwrap();
                        expected.push(Recorded::Flush);
                    }
                }
                (std::thread::current().id(), expected)
            })
        })
        .collect();
    let results: Vec<_> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(flips > 0, "the layer was flipped at least once");

    for (tid, expected) in results {
        assert_eq!(rec.log_of(tid), expected, "backend order of one thread");
    }
    for i in 0..THREADS * WRITES {
        let off = i * BLOCK;
        let mut buf = vec![0; BLOCK as usize];
        vol.read(&mut buf, off).unwrap();
        assert_eq!(buf, pattern(i % THREADS, off, BLOCK as usize), "block {i}");
    }
}

struct BrokenService;
impl Service for BrokenService {
    fn name(&self) -> &str {
        "broken"
    }
    fn stack_on(
        &self,
        _lower: Arc<dyn BlockDevice>,
    ) -> std::result::Result<Arc<dyn BlockDevice>, String> {
        Err("cannot stack".into())
    }
}

#[test]
fn failed_attach_rolls_back_and_volume_keeps_serving() {
    let v = mem_volume(1 << 20);
    v.attach(Arc::new(Passthrough::new("a"))).unwrap();
    let err = v.attach(Arc::new(BrokenService)).unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert!(err.to_string().contains("volume v"), "{err}");
    assert_eq!(v.service_names(), vec!["a".to_string()]);
    v.write(&[1; 512], 0, false).unwrap();
}

#[test]
fn failed_sync_changes_nothing() {
    let faulty = Arc::new(FaultyDevice::new(Arc::new(MemoryBackend::new(1 << 20))));
    let v = Volume::new("v", faulty.clone(), "faulty".into());
    faulty.fail_flush.store(true, Ordering::SeqCst);
    let err = v.attach(Arc::new(Passthrough::new("a"))).unwrap_err();
    assert!(matches!(err, VolumeError::Sync { .. }), "{err}");
    assert!(v.service_names().is_empty());
    faulty.fail_flush.store(false, Ordering::SeqCst);
    v.attach(Arc::new(Passthrough::new("a"))).unwrap();
}

#[test]
fn stack_is_capped_and_names_are_unique() {
    let v = mem_volume(1 << 20);
    for i in 0..MAX_SERVICES {
        v.attach(Arc::new(Passthrough::new(&format!("p{i}"))))
            .unwrap();
    }
    assert!(matches!(
        v.attach(Arc::new(Passthrough::new("extra"))),
        Err(VolumeError::StackFull { .. })
    ));
    assert!(matches!(
        v.attach(Arc::new(Passthrough::new("p0"))),
        Err(VolumeError::DuplicateService { .. })
    ));
    assert!(matches!(
        v.detach("nope"),
        Err(VolumeError::NoSuchService { .. })
    ));
}

#[test]
fn closed_volume_refuses_io() {
    let v = mem_volume(1 << 20);
    v.close().unwrap();
    assert!(matches!(
        v.write(&[0; 512], 0, false),
        Err(DeviceError::ShuttingDown)
    ));
    assert!(v.quiesce("x").is_err());
}

#[test]
fn quiesce_many_dedups_and_orders() {
    let a = Volume::new("a", Arc::new(MemoryBackend::new(4096)), String::new());
    let b = Volume::new("b", Arc::new(MemoryBackend::new(4096)), String::new());
    let guards = quiesce_many(&[&b, &a, &b], "group").unwrap();
    let names: Vec<_> = guards
        .iter()
        .map(|g| g.volume().name().to_owned())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
}

/// A passthrough that claims a tier.
struct Tiered(&'static str, Tier);
impl Service for Tiered {
    fn name(&self) -> &str {
        self.0
    }
    fn tier(&self) -> Tier {
        self.1
    }
    fn stack_on(
        &self,
        lower: Arc<dyn BlockDevice>,
    ) -> std::result::Result<Arc<dyn BlockDevice>, String> {
        Passthrough::new(self.0).stack_on(lower)
    }
}

#[test]
fn stacks_are_ordered_by_tier_whatever_the_attach_order() {
    let v = mem_volume(1 << 20);
    v.attach(Arc::new(Tiered("guard", Tier::Guard))).unwrap();
    v.attach(Arc::new(Tiered("image", Tier::Service))).unwrap();
    v.attach(Arc::new(Tiered("repl:b", Tier::Replication)))
        .unwrap();
    v.attach(Arc::new(Tiered("cache", Tier::Cache))).unwrap();
    v.attach(Arc::new(Tiered("repl:c", Tier::Replication)))
        .unwrap();
    v.attach(Arc::new(Passthrough::new("other"))).unwrap();
    assert_eq!(
        v.service_names(),
        ["cache", "repl:b", "repl:c", "image", "other", "guard"]
    );
    v.write(&[7; 512], 0, false).unwrap();
    let mut buf = [0; 512];
    v.read(&mut buf, 0).unwrap();
    assert_eq!(buf, [7; 512]);
}
