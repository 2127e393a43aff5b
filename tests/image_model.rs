//! Model-based property test for imaging: random interleavings of master
//! writes, shadow writes, discards, enable, update, full copy, restore,
//! abort, disable and daemon restarts, over memory backends, against a
//! model of both volumes. Copies run in the background while the next
//! operations go on, so the interleavings include I/O racing the engine.
//! After every step both volumes are read in full and compared.

use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use umbra::backend::MemoryBackend;
use umbra::device::BlockDevice;
use umbra::interposer::Volume;
use umbra::services::image::{
    bitmap_bytes_for, Direction, EnableOptions, ImageError, Imaging, Kind, Throttle,
};

const SIZE: u64 = 64 * 1024;
const CHUNK: u32 = 4096;
const SET: &str = "set";

#[derive(Debug, Clone)]
enum Op {
    MasterWrite { off: u64, len: u64, seed: u8 },
    ShadowWrite { off: u64, len: u64, seed: u8 },
    MasterDiscard { off: u64, len: u64 },
    Enable { independent: bool },
    Update { to_master: bool, full: bool },
    Abort,
    Disable { force: bool },
    Restart { clean: bool },
    Throttle { slow: bool },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE / 512, 1..40u64).prop_map(|(s, n)| (s * 512, (n * 512).min(SIZE - s * 512)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (range(), any::<u8>()).prop_map(|((off, len), seed)| Op::MasterWrite { off, len, seed }),
        4 => (range(), any::<u8>()).prop_map(|((off, len), seed)| Op::ShadowWrite { off, len, seed }),
        1 => range().prop_map(|(off, len)| Op::MasterDiscard { off, len }),
        3 => any::<bool>().prop_map(|independent| Op::Enable { independent }),
        3 => (any::<bool>(), any::<bool>()).prop_map(|(to_master, full)| Op::Update { to_master, full }),
        1 => Just(Op::Abort),
        1 => any::<bool>().prop_map(|force| Op::Disable { force }),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
        1 => any::<bool>().prop_map(|slow| Op::Throttle { slow }),
    ]
}

struct World {
    img: Imaging,
    master: Arc<Volume>,
    shadow: Arc<Volume>,
    mb: Arc<dyn BlockDevice>,
    sb: Arc<dyn BlockDevice>,
    bitmap: Option<Arc<dyn BlockDevice>>,
}

struct Model {
    master: Vec<u8>,
    /// None once the shadow's contents are undefined (a dependent set
    /// disabled, or an incomplete independent copy abandoned).
    shadow: Option<Vec<u8>>,
    set: Option<Kind>,
}

fn fill(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}

fn read_all(v: &dyn BlockDevice) -> Vec<u8> {
    let mut b = vec![0u8; SIZE as usize];
    v.read(&mut b, 0).unwrap();
    b
}

fn restart(w: &mut World, clean: bool) {
    if clean {
        w.img.suspend_all();
    } else {
        w.img.halt_all();
    }
    w.img = Imaging::default();
    w.master = Arc::new(Volume::new("m", w.mb.clone(), String::new()));
    w.shadow = Arc::new(Volume::new("s", w.sb.clone(), String::new()));
    if let Some(b) = &w.bitmap {
        w.img
            .open(SET, &w.master, &w.shadow, b.clone(), None)
            .expect("reopen");
    }
}

fn pending(w: &World) -> (u64, Direction) {
    match w.img.info(SET) {
        Ok(i) => (i.chunks_to_copy, i.direction),
        Err(_) => (0, Direction::None),
    }
}

fn wait(w: &World) {
    if let Ok(s) = w.img.get(SET) {
        assert!(s.wait(Duration::from_secs(30)), "copy did not finish");
    }
}

fn run(ops: Vec<Op>) {
    let mb: Arc<dyn BlockDevice> = Arc::new(MemoryBackend::new(SIZE));
    let sb: Arc<dyn BlockDevice> = Arc::new(MemoryBackend::new(SIZE));
    mb.write(&fill(1, SIZE), 0, false).unwrap();
    sb.write(&fill(2, SIZE), 0, false).unwrap();
    let mut w = World {
        img: Imaging::default(),
        master: Arc::new(Volume::new("m", mb.clone(), String::new())),
        shadow: Arc::new(Volume::new("s", sb.clone(), String::new())),
        mb,
        sb,
        bitmap: None,
    };
    let mut m = Model {
        master: fill(1, SIZE),
        shadow: Some(fill(2, SIZE)),
        set: None,
    };
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::MasterWrite { off, len, seed } => {
                let d = fill(seed, len);
                w.master.write(&d, off, false).unwrap();
                m.master[off as usize..(off + len) as usize].copy_from_slice(&d);
            }
            Op::ShadowWrite { off, len, seed } => {
                let d = fill(seed, len);
                w.shadow.write(&d, off, false).unwrap();
                if let Some(s) = &mut m.shadow {
                    s[off as usize..(off + len) as usize].copy_from_slice(&d);
                }
            }
            Op::MasterDiscard { off, len } => {
                w.master.discard(off, len).unwrap();
                m.master[off as usize..(off + len) as usize].fill(0);
            }
            Op::Enable { independent } => {
                let kind = if independent {
                    Kind::Independent
                } else {
                    Kind::Dependent
                };
                let bitmap: Arc<dyn BlockDevice> =
                    Arc::new(MemoryBackend::new(bitmap_bytes_for(SIZE, CHUNK)));
                let r = w.img.enable(
                    SET,
                    &w.master,
                    &w.shadow,
                    bitmap.clone(),
                    &EnableOptions {
                        kind,
                        chunk_bytes: CHUNK,
                        memory_bitmap: false,
                        throttle: Throttle::default(),
                    },
                    None,
                );
                match (m.set, r) {
                    (None, Ok(_)) => {
                        m.set = Some(kind);
                        m.shadow = Some(m.master.clone());
                        w.bitmap = Some(bitmap);
                    }
                    (Some(_), Err(ImageError::Conflict(_))) => {}
                    (s, r) => panic!(
                        "step {step}: enable with set {s:?} gave {:?}",
                        r.map(|_| ())
                    ),
                }
            }
            Op::Update { to_master, full } => {
                wait(&w);
                let (left, dir) = pending(&w);
                let to = if to_master {
                    Direction::ToMaster
                } else {
                    Direction::ToShadow
                };
                let r = w.img.update(&[SET.to_string()], to, full);
                let refused = m.set.is_none()
                    || (left > 0 && dir == Direction::ToMaster && !to_master)
                    || (left > 0 && dir == Direction::ToShadow && to_master);
                match r {
                    Ok(()) => {
                        assert!(!refused, "step {step}: update should be refused");
                        if to_master {
                            m.master = m.shadow.clone().expect("a set's shadow is defined");
                        } else {
                            m.shadow = Some(m.master.clone());
                        }
                    }
                    Err(e) => assert!(refused, "step {step}: update refused: {e}"),
                }
            }
            Op::Abort => {
                let _ = w.img.abort(SET);
            }
            Op::Disable { force } => {
                let (left, dir) = pending(&w);
                let r = w.img.disable(SET, force);
                match m.set {
                    None => assert!(r.is_err()),
                    Some(kind) => {
                        let refused = (left > 0 && dir == Direction::ToMaster)
                            || (left > 0 && kind == Kind::Independent && !force);
                        if r.is_ok() {
                            if kind == Kind::Dependent || left > 0 {
                                m.shadow = None;
                            }
                            m.set = None;
                            w.bitmap = None;
                        } else {
                            // The engine may have finished between the
                            // check and the call; only a refusal the model
                            // predicts is acceptable.
                            assert!(refused, "step {step}: disable refused: {:?}", r.err());
                        }
                    }
                }
            }
            Op::Restart { clean } => restart(&mut w, clean),
            Op::Throttle { slow } => {
                let t = if slow {
                    Throttle {
                        delay_ms: 1,
                        unit: 2,
                    }
                } else {
                    Throttle {
                        delay_ms: 0,
                        unit: 0,
                    }
                };
                let _ = w.img.set_throttle(SET, t);
            }
        }
        assert!(
            read_all(w.master.as_ref()) == m.master,
            "step {step}: master diverged from the model"
        );
        if let Some(s) = &m.shadow {
            assert!(
                read_all(w.shadow.as_ref()) == *s,
                "step {step}: shadow diverged from the model"
            );
        }
    }
    // Let every copy finish and check once more, after a restart.
    wait(&w);
    restart(&mut w, false);
    wait(&w);
    assert!(read_all(w.master.as_ref()) == m.master, "final master");
    if let Some(s) = &m.shadow {
        assert!(read_all(w.shadow.as_ref()) == *s, "final shadow");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn image_sets_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
