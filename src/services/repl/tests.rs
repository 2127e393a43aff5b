//! In-process replication tests: a primary stack and a secondary applier
//! joined by a real TCP connection on loopback (optionally through the
//! fault proxy).

use super::link::{Link, QueueLimits};
use super::peer::{self, Listener, PeerHandler};
use super::scoreboard::{file_bytes_for, Scoreboard};
use super::secondary::{serve_link, SecondaryGuard, SecondarySet};
use super::set::{PrimaryLayer, ReplSet};
use super::*;
use crate::backend::memory::MemoryBackend;
use crate::device::{BlockDevice, DeviceError, Result as DevResult};
use crate::interposer::Volume;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BLOCK: usize = 4096;

/// A secondary backend that "crashes" at its N-th write: the image at that
/// instant is kept, and every later write fails (the link drops).
struct CutDevice {
    inner: MemoryBackend,
    writes: AtomicU64,
    cut_at: u64,
    image: parking_lot::Mutex<Option<Vec<u8>>>,
}

impl BlockDevice for CutDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> DevResult<()> {
        self.inner.read(buf, offset)
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> DevResult<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.cut_at {
            let mut img = self.image.lock();
            if img.is_none() {
                *img = Some(self.inner.snapshot());
            }
            return Err(DeviceError::Failed {
                reason: "cut".into(),
            });
        }
        self.inner.write(buf, offset, fua)
    }
    fn flush(&self) -> DevResult<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> DevResult<()> {
        self.inner.write_zeroes(offset, len, fua)
    }
}

struct TestSecondary {
    set: Arc<SecondarySet>,
}

impl PeerHandler for TestSecondary {
    fn control(
        &self,
        _peer: &str,
        req: super::requests::PeerRequest,
    ) -> Result<(Value, Option<Vec<u8>>), String> {
        Err(format!("unexpected control request {}", req.op()))
    }
    fn link(
        &self,
        _peer: &str,
        _group: String,
        mode: Mode,
        _sets: Vec<super::requests::LinkSet>,
        mut stream: TcpStream,
    ) {
        let _ = peer::reply(&mut stream, Ok((json!({}), None)));
        serve_link(
            stream,
            vec![Some(self.set.clone())],
            mode,
            Duration::from_secs(5),
        );
    }
}

fn ctx(name: &str, peer: &str) -> Arc<NodeCtx> {
    let c = Arc::new(NodeCtx::default());
    c.set_name(name);
    c.set_secret(peer, Some(b"test-secret".to_vec()));
    c
}

/// One secondary of a [`Fleet`]: its leg on the primary, its volume.
struct Leg {
    set: Arc<ReplSet>,
    secondary_vol: Arc<Volume>,
    proxy: Option<Arc<proxy::FaultProxy>>,
    _listener: Listener,
}

/// A primary volume replicating to one secondary per leg, each over its
/// own loopback connection (through a fault proxy when limits are given).
struct Fleet {
    primary: Arc<Volume>,
    legs: Vec<Leg>,
    /// Held as the runtime holds it (legs only point back weakly).
    _registry: Arc<super::set::Legs>,
}

fn default_limits() -> QueueLimits {
    QueueLimits {
        bytes: 8 << 20,
        items: 1024,
        on_full: QueueFull::Block,
        max_lag_bytes: None,
        max_lag: None,
    }
}

fn fleet(secondaries: Vec<(Mode, Arc<dyn BlockDevice>, Option<QueueLimits>)>) -> Fleet {
    let size = secondaries[0].1.size_bytes();
    let primary = Arc::new(Volume::new(
        "p",
        Arc::new(MemoryBackend::new(size)),
        "test".into(),
    ));
    let legs_reg = Arc::new(super::set::Legs::default());
    let mut legs = Vec::new();
    for (i, (mode, secondary_dev, via_proxy)) in secondaries.into_iter().enumerate() {
        let node = format!("b{i}");
        let guard = Arc::new(SecondaryGuard::new("s"));
        let secondary_vol = Arc::new(Volume::new("s", secondary_dev, "test".into()));
        secondary_vol.attach(guard.clone()).unwrap();
        let ssb_dev: Arc<dyn BlockDevice> =
            Arc::new(MemoryBackend::new(file_bytes_for(size, 4096 * 16)));
        let ssb =
            Scoreboard::create(ssb_dev, "set", size, 4096 * 16, false, Default::default()).unwrap();
        let sset = Arc::new(SecondarySet::new("set", "s", size, guard, Arc::new(ssb)));
        let listener = Listener::start(
            ctx(&node, "a"),
            "127.0.0.1:0",
            Arc::new(TestSecondary { set: sset }),
        )
        .unwrap();
        let proxy = via_proxy
            .is_some()
            .then(|| proxy::FaultProxy::start("127.0.0.1:0", &listener.addr).unwrap());
        let target = proxy
            .as_ref()
            .map(|p| p.addr.clone())
            .unwrap_or(listener.addr.clone());
        let link = Link::new(
            ctx("a", &node),
            "set",
            &target,
            mode,
            Duration::from_secs(2),
            via_proxy.unwrap_or_else(default_limits),
        );
        let sb_dev: Arc<dyn BlockDevice> =
            Arc::new(MemoryBackend::new(file_bytes_for(size, 4096 * 16)));
        let sb =
            Scoreboard::create(sb_dev, "set", size, 4096 * 16, false, Default::default()).unwrap();
        let set = Arc::new(ReplSet::new(
            "set",
            &node,
            &legs_reg,
            0,
            "p",
            "s",
            size,
            mode,
            PeerLoss::Log,
            true,
            sb,
            link.clone(),
            SetState::Logging,
            None,
        ));
        link.add_set(set.clone());
        legs_reg.push(set.clone());
        primary
            .attach(Arc::new(PrimaryLayer::new(set.clone())))
            .unwrap();
        link.connect().unwrap();
        set.set_state(SetState::Replicating, "test");
        legs.push(Leg {
            set,
            secondary_vol,
            proxy,
            _listener: listener,
        });
    }
    Fleet {
        primary,
        legs,
        _registry: legs_reg,
    }
}

fn pair(mode: Mode, secondary_dev: Arc<dyn BlockDevice>, via_proxy: Option<QueueLimits>) -> Fleet {
    fleet(vec![(mode, secondary_dev, via_proxy)])
}

fn block(seq: u64, pred: u64) -> Vec<u8> {
    let mut b = vec![(seq % 251) as u8; BLOCK];
    b[0..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&pred.to_le_bytes());
    b
}

/// Every write present in `image` has its predecessor present.
fn check_order(image: &[u8], what: &str) -> usize {
    let mut present = 0;
    for b in image.chunks(BLOCK) {
        let seq = u64::from_le_bytes(b[0..8].try_into().unwrap());
        if seq == 0 {
            continue;
        }
        present += 1;
        let pred = u64::from_le_bytes(b[8..16].try_into().unwrap());
        if pred != 0 {
            let p = &image[pred as usize * BLOCK..pred as usize * BLOCK + 8];
            assert_eq!(
                u64::from_le_bytes(p.try_into().unwrap()),
                pred,
                "{what}: write {seq} is on the secondary without its predecessor {pred}"
            );
        }
    }
    present
}

/// Writers issue each write only after its predecessor completed; each
/// of two secondaries (modes `modes`) is cut at a random write of its
/// own; no cut holds a write without its predecessor, and a cut secondary
/// never fails or stops the writers (the other keeps replicating).
fn write_order_fidelity(modes: [Mode; 2], cuts: u64) {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(0x5eed ^ modes[0] as u64 ^ (modes[1] as u64) << 4);
    let blocks = 1024u64;
    let mut max_present = [0; 2];
    for cut in 0..cuts {
        let devs: Vec<Arc<CutDevice>> = (0..2)
            .map(|_| {
                Arc::new(CutDevice {
                    inner: MemoryBackend::new(blocks * BLOCK as u64),
                    writes: AtomicU64::new(0),
                    cut_at: rng.gen_range(1..400),
                    image: parking_lot::Mutex::new(None),
                })
            })
            .collect();
        let p = fleet(
            devs.iter()
                .zip(modes)
                .map(|(d, m)| (m, d.clone() as Arc<dyn BlockDevice>, None))
                .collect(),
        );
        let next = Arc::new(AtomicU64::new(1));
        let done = Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (next, done, vol) = (next.clone(), done.clone(), p.primary.clone());
                s.spawn(move || loop {
                    let seq = next.fetch_add(1, Ordering::SeqCst);
                    if seq >= blocks {
                        return;
                    }
                    let pred = done.load(Ordering::SeqCst);
                    vol.write(&block(seq, pred), seq * BLOCK as u64, false)
                        .unwrap();
                    if (seq + t) % 50 == 0 {
                        vol.flush().unwrap();
                    }
                    done.fetch_max(seq, Ordering::SeqCst);
                });
            }
        });
        for (i, (l, d)) in p.legs.iter().zip(&devs).enumerate() {
            let _ = l.set.link().drain();
            let image = d.image.lock().clone();
            if let Some(image) = image {
                max_present[i] = max_present[i].max(check_order(
                    &image,
                    &format!(
                        "{:?} secondary {i} cut {cut} at write {}",
                        modes[i], d.cut_at
                    ),
                ));
            }
        }
    }
    for (i, m) in max_present.iter().enumerate() {
        assert!(*m > 10, "the cuts caught writes on secondary {i}");
    }
}

#[test]
fn hybrid_cuts_never_hold_a_write_without_its_predecessor() {
    write_order_fidelity([Mode::Hybrid, Mode::Hybrid], 100);
}

#[test]
fn async_cuts_never_hold_a_write_without_its_predecessor() {
    write_order_fidelity([Mode::Async, Mode::Hybrid], 80);
}

#[test]
fn every_mode_mirrors_and_a_link_fault_resyncs_to_identical() {
    for mode in [Mode::Sync, Mode::Async, Mode::Hybrid] {
        let size = 4u64 << 20;
        let sec: Arc<dyn BlockDevice> = Arc::new(MemoryBackend::new(size));
        let p = pair(mode, sec.clone(), None);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..300u64 {
            let off = rng.gen_range(0..size / 4096 - 4) * 4096;
            let data = vec![(i % 255) as u8 + 1; 4096 * rng.gen_range(1..4)];
            p.primary.write(&data, off, i % 17 == 0).unwrap();
            if i == 150 {
                p.primary.discard(0, 65536).unwrap();
            }
        }
        p.primary.flush().unwrap();
        p.legs[0].set.link().drain().unwrap();
        let mut a = vec![0u8; size as usize];
        let mut b = vec![0u8; size as usize];
        p.primary.read(&mut a, 0).unwrap();
        p.legs[0].secondary_vol.read(&mut b, 0).unwrap();
        assert!(a == b, "{mode:?}: secondary differs after replication");
        // Requests past the end are refused, not a panic (the NBD frontend
        // asks `write_may_block` before anything checks the range).
        let _ = p.primary.write_may_block(size + (1 << 20), 4096);
        assert!(matches!(
            p.primary.write(&[0; 4096], size, false),
            Err(DeviceError::OutOfRange { .. })
        ));
        // Clients cannot write to the secondary.
        assert!(matches!(
            p.legs[0].secondary_vol.write(&[1; 512], 0, false),
            Err(DeviceError::ReadOnly)
        ));
        // Drop the link: writes continue into the scoreboard; an update
        // sync makes both identical again.
        p.legs[0].set.link().close("test: link cut");
        assert_eq!(p.legs[0].set.state(), SetState::Logging);
        for i in 0..50u64 {
            p.primary
                .write(&vec![0xee; 4096], i * 65536 * 3 % size, false)
                .unwrap();
        }
        assert!(p.legs[0].set.scoreboard.oos_chunks() > 0);
        p.legs[0].set.link().connect().unwrap();
        p.legs[0].set.set_state(SetState::Syncing, "test");
        let sent = p.legs[0].set.resync().unwrap();
        p.legs[0].set.link().drain().unwrap();
        p.legs[0].set.set_state(SetState::Replicating, "test");
        assert!(
            sent <= 50 * 65536,
            "the update sync moved only changed chunks ({sent})"
        );
        p.primary.read(&mut a, 0).unwrap();
        p.legs[0].secondary_vol.read(&mut b, 0).unwrap();
        assert!(a == b, "{mode:?}: secondary differs after the update sync");
    }
}

#[test]
fn a_full_queue_blocks_writers_or_drops_to_logging_by_policy() {
    for on_full in [QueueFull::Log, QueueFull::Block] {
        let size = 4u64 << 20;
        let limits = QueueLimits {
            bytes: 64 << 10,
            items: 8,
            on_full,
            max_lag_bytes: None,
            max_lag: None,
        };
        let p = pair(
            Mode::Async,
            Arc::new(MemoryBackend::new(size)),
            Some(limits),
        );
        let proxy = p.legs[0].proxy.clone().unwrap();
        // A stalled network: nothing is acknowledged, the queue fills.
        proxy.set_fault(proxy::Fault::Stall);
        let done = Arc::new(AtomicU64::new(0));
        let writer = {
            let (vol, done) = (p.primary.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..20u64 {
                    vol.write(&[7; 4096], i * 65536, false).unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        match on_full {
            QueueFull::Log => {
                writer.join().unwrap();
                assert_eq!(done.load(Ordering::SeqCst), 20, "writers never block");
                assert_eq!(
                    p.legs[0].set.state(),
                    SetState::Logging,
                    "a full queue drops to logging"
                );
                assert!(p.legs[0].set.scoreboard.oos_chunks() >= 8);
            }
            QueueFull::Block => {
                let n = done.load(Ordering::SeqCst);
                assert!(n < 20, "writers wait while the queue is full ({n} done)");
                assert!(
                    p.legs[0]
                        .set
                        .link()
                        .stats
                        .blocked_writers
                        .load(Ordering::SeqCst)
                        > 0
                );
                assert_eq!(p.legs[0].set.state(), SetState::Replicating);
                proxy.set_fault(proxy::Fault::Pass);
                writer.join().unwrap();
                p.legs[0].set.link().drain().unwrap();
                let mut a = vec![0u8; size as usize];
                let mut b = vec![0u8; size as usize];
                p.primary.read(&mut a, 0).unwrap();
                p.legs[0].secondary_vol.read(&mut b, 0).unwrap();
                assert!(a == b, "everything arrived once the network moved again");
            }
        }
        proxy.stop();
    }
}

fn image(v: &Volume, size: u64) -> Vec<u8> {
    let mut b = vec![0u8; size as usize];
    v.read(&mut b, 0).unwrap();
    b
}

#[test]
fn two_secondaries_replicate_and_a_cut_one_never_stops_the_other() {
    let size = 4u64 << 20;
    let p = fleet(vec![
        (Mode::Sync, Arc::new(MemoryBackend::new(size)), None),
        (Mode::Hybrid, Arc::new(MemoryBackend::new(size)), None),
    ]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut write_some = |n: u64, fill: u8| {
        for _ in 0..n {
            let off = rng.gen_range(0..size / 4096) * 4096;
            p.primary.write(&[fill; 4096], off, false).unwrap();
        }
    };
    write_some(200, 1);
    p.primary.flush().unwrap();
    for l in &p.legs {
        l.set.link().drain().unwrap();
        assert!(image(&p.primary, size) == image(&l.secondary_vol, size));
    }
    // Cut the sync secondary: the hybrid one keeps replicating, writers
    // never see an error.
    p.legs[0].set.link().close("test: link cut");
    assert_eq!(p.legs[0].set.state(), SetState::Logging);
    write_some(40, 2);
    p.legs[1].set.link().drain().unwrap();
    assert_eq!(p.legs[1].set.state(), SetState::Replicating);
    assert!(image(&p.primary, size) == image(&p.legs[1].secondary_vol, size));
    assert!(p.legs[1].set.scoreboard.oos_chunks() == 0);
    let oos = p.legs[0].set.scoreboard.oos_chunks();
    assert!(
        (1..=40).contains(&oos),
        "{oos} chunks out of sync on the cut leg"
    );
    // The cut one resyncs only what changed.
    let l = &p.legs[0];
    l.set.link().connect().unwrap();
    l.set.set_state(SetState::Syncing, "test");
    let sent = l.set.resync().unwrap();
    l.set.link().drain().unwrap();
    assert!(sent <= 40 * 65536, "moved {sent} bytes for 40 chunks");
    assert!(image(&p.primary, size) == image(&l.secondary_vol, size));
    // The volume's generation moved on for the cut leg only: the other
    // leg shares the new current but its peer agreed on the old one.
    let g0 = p.legs[0].set.scoreboard.generations();
    let g1 = p.legs[1].set.scoreboard.generations();
    assert_eq!(g0.current, g1.current);
    assert_eq!(g0.history, g1.history);
}

#[test]
fn max_lag_throttles_writers_within_one_write_of_the_bound() {
    let size = 4u64 << 20;
    let bound = 64u64 << 10;
    let limits = QueueLimits {
        max_lag_bytes: Some(bound),
        ..default_limits()
    };
    let p = fleet(vec![
        (
            Mode::Async,
            Arc::new(MemoryBackend::new(size)),
            Some(limits),
        ),
        (Mode::Hybrid, Arc::new(MemoryBackend::new(size)), None),
    ]);
    let l = &p.legs[0];
    let proxy = l.proxy.clone().unwrap();
    proxy.set_fault(proxy::Fault::Stall);
    let done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (vol, done) = (p.primary.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..64u64 {
                vol.write(&[9; 4096], i * 4096, false).unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut worst = 0;
    for _ in 0..100 {
        worst = worst.max(l.set.link().lag().1);
        std::thread::sleep(Duration::from_millis(5));
    }
    let n = done.load(Ordering::SeqCst);
    assert!(n < 64, "writers wait under the lag bound ({n} done)");
    assert!(
        worst <= bound + 4096,
        "lag {worst} exceeded the bound {bound} by more than one write"
    );
    assert!(l.set.link().stats.throttled_writers.load(Ordering::SeqCst) > 0);
    assert_eq!(
        l.set.state(),
        SetState::Replicating,
        "throttled, not dropped"
    );
    proxy.set_fault(proxy::Fault::Pass);
    writer.join().unwrap();
    for l in &p.legs {
        l.set.link().drain().unwrap();
        assert!(image(&p.primary, size) == image(&l.secondary_vol, size));
    }
    proxy.stop();
}

/// The device conformance suite through a replication primary layer in
/// every mode: the primary behaves as a block device should, and every
/// write the suite made (FUA, discard, write-zeroes, unaligned, large,
/// concurrent) reached the secondary's applier, below its guard, intact.
#[test]
fn conformance_over_the_primary_layer_and_the_secondary_applier() {
    for mode in [Mode::Sync, Mode::Async, Mode::Hybrid] {
        let size = 8u64 << 20;
        let sec: Arc<dyn BlockDevice> = Arc::new(MemoryBackend::new(size));
        let p = pair(mode, sec, None);
        crate::device::testing::run_all(&format!("repl primary {mode:?}"), p.primary.clone());
        p.primary.flush().unwrap();
        p.legs[0].set.link().drain().unwrap();
        assert_eq!(p.legs[0].set.state(), SetState::Replicating, "{mode:?}");
        assert!(
            image(&p.primary, size) == image(&p.legs[0].secondary_vol, size),
            "{mode:?}: the secondary differs from the primary after the suite"
        );
    }
}

/// The secondary guard as a device: reads are the volume's, at any
/// alignment and up to its last byte; out-of-range reads are refused;
/// every kind of client write is refused as read-only and changes
/// nothing; flush passes.
#[test]
fn conformance_of_the_secondary_guard() {
    let size = 4u64 << 20;
    let backend = Arc::new(MemoryBackend::new(size));
    let data = crate::device::testing::pattern(3, 0, size as usize);
    backend.write(&data, 0, false).unwrap();
    let v = Volume::new("s", backend, "test".into());
    v.attach(Arc::new(SecondaryGuard::new("s"))).unwrap();
    for (off, len) in [
        (0u64, 4096usize),
        (1, 511),
        (4095, 8193),
        (size - 1, 1),
        (0, 1 << 20),
    ] {
        let mut buf = vec![0u8; len];
        v.read(&mut buf, off).unwrap();
        assert_eq!(
            buf,
            data[off as usize..off as usize + len],
            "read at {off}+{len}"
        );
    }
    let mut buf = [0u8; 512];
    assert!(matches!(
        v.read(&mut buf, size),
        Err(DeviceError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.write(&[9; 4096], 0, false),
        Err(DeviceError::ReadOnly)
    ));
    assert!(matches!(
        v.write(&[9; 4096], 4096, true),
        Err(DeviceError::ReadOnly)
    ));
    assert!(matches!(v.discard(0, 65536), Err(DeviceError::ReadOnly)));
    assert!(matches!(
        v.write_zeroes(0, 65536, false),
        Err(DeviceError::ReadOnly)
    ));
    v.flush().unwrap();
    assert!(image(&v, size) == data, "refused writes changed nothing");
}
