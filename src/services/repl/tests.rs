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

struct Pair {
    primary: Arc<Volume>,
    set: Arc<ReplSet>,
    secondary_vol: Arc<Volume>,
    proxy: Option<Arc<proxy::FaultProxy>>,
    _listener: Listener,
}

fn pair(mode: Mode, secondary_dev: Arc<dyn BlockDevice>, via_proxy: Option<QueueLimits>) -> Pair {
    let size = secondary_dev.size_bytes();
    let guard = Arc::new(SecondaryGuard::new("s"));
    let secondary_vol = Arc::new(Volume::new("s", secondary_dev, "test".into()));
    secondary_vol.attach(guard.clone()).unwrap();
    let sset = Arc::new(SecondarySet::new("set", "s", size, guard));
    let listener = Listener::start(
        ctx("b", "a"),
        "127.0.0.1:0",
        Arc::new(TestSecondary { set: sset }),
    )
    .unwrap();
    // With limits given, the link goes through a fault proxy.
    let proxy = via_proxy
        .is_some()
        .then(|| proxy::FaultProxy::start("127.0.0.1:0", &listener.addr).unwrap());
    let target = proxy
        .as_ref()
        .map(|p| p.addr.clone())
        .unwrap_or(listener.addr.clone());
    let link = Arc::new(Link::new(
        ctx("a", "b"),
        "set",
        &target,
        mode,
        Duration::from_secs(2),
        via_proxy.unwrap_or(QueueLimits {
            bytes: 8 << 20,
            items: 1024,
            on_full: QueueFull::Block,
        }),
    ));
    let sb_dev: Arc<dyn BlockDevice> =
        Arc::new(MemoryBackend::new(file_bytes_for(size, 4096 * 16)));
    let sb = Scoreboard::create(sb_dev, "set", size, 4096 * 16, false, Default::default()).unwrap();
    let set = Arc::new(ReplSet::new(
        "set",
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
    let primary = Arc::new(Volume::new(
        "p",
        Arc::new(MemoryBackend::new(size)),
        "test".into(),
    ));
    primary
        .attach(Arc::new(PrimaryLayer::new(set.clone())))
        .unwrap();
    link.connect().unwrap();
    set.set_state(SetState::Replicating, "test");
    Pair {
        primary,
        set,
        secondary_vol,
        proxy,
        _listener: listener,
    }
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

/// Writers issue each write only after its predecessor completed; the
/// secondary is cut at a random write; no cut holds a write without its
/// predecessor.
fn write_order_fidelity(mode: Mode, cuts: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed ^ mode as u64);
    let blocks = 1024u64;
    let mut max_present = 0;
    for cut in 0..cuts {
        let cut_at = rng.gen_range(1..400);
        let dev = Arc::new(CutDevice {
            inner: MemoryBackend::new(blocks * BLOCK as u64),
            writes: AtomicU64::new(0),
            cut_at,
            image: parking_lot::Mutex::new(None),
        });
        let p = pair(mode, dev.clone(), None);
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
        let _ = p.set.link().drain();
        let image = dev.image.lock().clone();
        if let Some(image) = image {
            max_present = max_present.max(check_order(
                &image,
                &format!("{mode:?} cut {cut} at write {cut_at}"),
            ));
        }
    }
    assert!(max_present > 10, "the cuts caught writes on the secondary");
}

#[test]
fn hybrid_cuts_never_hold_a_write_without_its_predecessor() {
    write_order_fidelity(Mode::Hybrid, 150);
}

#[test]
fn async_cuts_never_hold_a_write_without_its_predecessor() {
    write_order_fidelity(Mode::Async, 100);
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
        p.set.link().drain().unwrap();
        let mut a = vec![0u8; size as usize];
        let mut b = vec![0u8; size as usize];
        p.primary.read(&mut a, 0).unwrap();
        p.secondary_vol.read(&mut b, 0).unwrap();
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
            p.secondary_vol.write(&[1; 512], 0, false),
            Err(DeviceError::ReadOnly)
        ));
        // Drop the link: writes continue into the scoreboard; an update
        // sync makes both identical again.
        p.set.link().close("test: link cut");
        assert_eq!(p.set.state(), SetState::Logging);
        for i in 0..50u64 {
            p.primary
                .write(&vec![0xee; 4096], i * 65536 * 3 % size, false)
                .unwrap();
        }
        assert!(p.set.scoreboard.oos_chunks() > 0);
        p.set.link().connect().unwrap();
        p.set.set_state(SetState::Syncing, "test");
        let sent = p.set.resync().unwrap();
        p.set.link().drain().unwrap();
        p.set.set_state(SetState::Replicating, "test");
        assert!(
            sent <= 50 * 65536,
            "the update sync moved only changed chunks ({sent})"
        );
        p.primary.read(&mut a, 0).unwrap();
        p.secondary_vol.read(&mut b, 0).unwrap();
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
        };
        let p = pair(
            Mode::Async,
            Arc::new(MemoryBackend::new(size)),
            Some(limits),
        );
        let proxy = p.proxy.clone().unwrap();
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
                    p.set.state(),
                    SetState::Logging,
                    "a full queue drops to logging"
                );
                assert!(p.set.scoreboard.oos_chunks() >= 8);
            }
            QueueFull::Block => {
                let n = done.load(Ordering::SeqCst);
                assert!(n < 20, "writers wait while the queue is full ({n} done)");
                assert!(p.set.link().stats.blocked_writers.load(Ordering::SeqCst) > 0);
                assert_eq!(p.set.state(), SetState::Replicating);
                proxy.set_fault(proxy::Fault::Pass);
                writer.join().unwrap();
                p.set.link().drain().unwrap();
                let mut a = vec![0u8; size as usize];
                let mut b = vec![0u8; size as usize];
                p.primary.read(&mut a, 0).unwrap();
                p.secondary_vol.read(&mut b, 0).unwrap();
                assert!(a == b, "everything arrived once the network moved again");
            }
        }
        proxy.stop();
    }
}
