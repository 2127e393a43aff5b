use super::*;
use crate::backend::MemoryBackend;
use crate::device::testing::{pattern, run_all, CrashClock, CrashDevice};
use std::time::Duration;

const CHUNK: u32 = 4096;

fn mem(size: u64) -> Arc<dyn BlockDevice> {
    Arc::new(MemoryBackend::new(size))
}

fn vol_on(name: &str, dev: Arc<dyn BlockDevice>) -> Arc<Volume> {
    Arc::new(Volume::new(name, dev, String::new()))
}

fn read(v: &dyn BlockDevice, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    v.read(&mut b, off).unwrap();
    b
}

fn all(v: &dyn BlockDevice) -> Vec<u8> {
    read(v, 0, v.size_bytes() as usize)
}

fn opts(kind: Kind) -> EnableOptions {
    EnableOptions {
        kind,
        chunk_bytes: CHUNK,
        memory_bitmap: false,
        throttle: Throttle::default(),
    }
}

struct Fixture {
    img: Imaging,
    master: Arc<Volume>,
    shadow: Arc<Volume>,
    bitmap: Arc<dyn BlockDevice>,
}

fn fixture(size: u64, kind: Kind) -> Fixture {
    let master = vol_on("m", mem(size));
    master
        .write(&pattern(1, 0, size as usize), 0, false)
        .unwrap();
    let shadow = vol_on("s", mem(size));
    shadow
        .write(&pattern(99, 0, size as usize), 0, false)
        .unwrap();
    let bitmap = mem(bitmap_bytes_for(size, CHUNK));
    let img = Imaging::default();
    img.enable("set", &master, &shadow, bitmap.clone(), &opts(kind), None)
        .unwrap();
    Fixture {
        img,
        master,
        shadow,
        bitmap,
    }
}

#[test]
fn dependent_shadow_keeps_its_point_in_time() {
    let f = fixture(1 << 20, Kind::Dependent);
    let t0 = all(f.master.as_ref());
    assert_eq!(all(f.shadow.as_ref()), t0, "shadow reads the master at T0");
    f.master.write(&[7u8; 6000], 10_000, false).unwrap();
    f.master.write(&[8u8; 100], 10_050, false).unwrap();
    assert_eq!(all(f.shadow.as_ref()), t0);
    let info = f.img.info("set").unwrap();
    assert_eq!(info.chunks_differing, 2, "{info:?}");
    // A shadow write changes the shadow only.
    f.shadow.write(&[5u8; 10], 500_000, false).unwrap();
    let mut expect = t0.clone();
    expect[500_000..500_010].fill(5);
    assert_eq!(all(f.shadow.as_ref()), expect);
    assert_ne!(read(f.master.as_ref(), 500_000, 10), vec![5u8; 10]);
    // Refresh: the shadow becomes the master now, instantly.
    f.img
        .update(&["set".into()], Direction::ToShadow, false)
        .unwrap();
    assert_eq!(all(f.shadow.as_ref()), all(f.master.as_ref()));
    assert_eq!(f.img.info("set").unwrap().chunks_differing, 0);
}

#[test]
fn independent_copy_completes_under_master_writes() {
    let f = fixture(4 << 20, Kind::Independent);
    let t0 = all(f.master.as_ref());
    let set = f.img.get("set").unwrap();
    for i in 0..200u64 {
        let off = (i * 7919 * 512) % ((4 << 20) - 4096);
        f.master
            .write(&pattern(1000 + i, off, 4096), off, false)
            .unwrap();
    }
    assert!(set.wait(Duration::from_secs(30)));
    let info = f.img.info("set").unwrap();
    assert_eq!((info.state, info.chunks_to_copy), ("idle", 0), "{info:?}");
    assert_eq!(all(f.shadow.as_ref()), t0);
    // Every chunk that differs has its bit.
    let (m, s) = (all(f.master.as_ref()), all(f.shadow.as_ref()));
    for c in 0..set.chunks() {
        let r = (c * CHUNK as u64) as usize..((c + 1) * CHUNK as u64) as usize;
        if m[r.clone()] != s[r] {
            assert!(set.differs(c), "chunk {c} differs without its bit");
        }
    }
}

#[test]
fn restore_from_one_shadow_preserves_the_others() {
    let size = 1 << 20;
    let f = fixture(size, Kind::Independent);
    let a = f.img.get("set").unwrap();
    assert!(a.wait(Duration::from_secs(30)));
    let t0 = all(f.master.as_ref());
    f.master.write(&[1u8; 8192], 0, false).unwrap();
    // A second, dependent shadow of the changed master.
    let s2 = vol_on("s2", mem(size));
    f.img
        .enable(
            "b",
            &f.master,
            &s2,
            mem(bitmap_bytes_for(size, CHUNK)),
            &opts(Kind::Dependent),
            None,
        )
        .unwrap();
    let t1 = all(f.master.as_ref());
    // Restore the master from the first shadow (T0).
    f.img
        .update(&["set".into()], Direction::ToMaster, false)
        .unwrap();
    assert_eq!(
        all(f.master.as_ref()),
        t0,
        "master reads T0 while the restore runs"
    );
    assert!(a.wait(Duration::from_secs(30)));
    assert_eq!(all(f.master.as_ref()), t0);
    assert_eq!(
        all(s2.as_ref()),
        t1,
        "the other shadow kept its point in time"
    );
    // A second restore while one runs is refused; disable works after.
    f.img.disable("b", false).unwrap();
    f.img.disable("set", false).unwrap();
    assert!(f.master.service_names().is_empty());
    assert!(f.shadow.service_names().is_empty());
}

#[test]
fn conflicting_relationships_are_refused() {
    let f = fixture(1 << 20, Kind::Dependent);
    let other = vol_on("x", mem(1 << 20));
    let small = vol_on("tiny", mem(1 << 19));
    let bm = || mem(bitmap_bytes_for(1 << 20, CHUNK));
    let o = opts(Kind::Dependent);
    let err = |r: IResult<Arc<ImageSet>>| r.err().expect("refused").to_string();
    assert!(err(f.img.enable("set", &other, &small, bm(), &o, None)).contains("smaller"));
    assert!(err(f.img.enable("set", &f.master, &other, bm(), &o, None)).contains("already exists"));
    assert!(
        err(f.img.enable("y", &other, &f.shadow, bm(), &o, None)).contains("already the shadow")
    );
    assert!(err(f.img.enable("y", &other, &f.master, bm(), &o, None)).contains("is the master"));
    assert!(
        err(f.img.enable("y", &f.shadow, &other, bm(), &o, None)).contains("already the shadow")
    );
    assert!(err(f.img.enable("y", &other, &other, bm(), &o, None)).contains("same volume"));
    let mut bad_chunk = o.clone();
    bad_chunk.chunk_bytes = 3000;
    assert!(err(f.img.enable("y", &other, &small, bm(), &bad_chunk, None)).contains("chunk size"));
}

#[test]
fn conformance_through_master_and_shadow() {
    let f = fixture(8 << 20, Kind::Dependent);
    run_all("image master", f.master.clone());
    run_all("image shadow", f.shadow.clone());
    let g = fixture(8 << 20, Kind::Independent);
    run_all("image master (copying)", g.master.clone());
    run_all("image shadow (copying)", g.shadow.clone());
}

#[test]
fn group_update_takes_one_point_in_time_across_sets() {
    let img = Imaging::default();
    let size = 1 << 20;
    let mut names = Vec::new();
    let mut pairs = Vec::new();
    for i in 0..3 {
        let m = vol_on(&format!("m{i}"), mem(size));
        let s = vol_on(&format!("s{i}"), mem(size));
        let n = format!("set{i}");
        img.enable(
            &n,
            &m,
            &s,
            mem(bitmap_bytes_for(size, CHUNK)),
            &opts(Kind::Dependent),
            None,
        )
        .unwrap();
        names.push(n);
        pairs.push((m, s));
    }
    for (i, (m, _)) in pairs.iter().enumerate() {
        m.write(&[i as u8 + 1; 4096], 0, false).unwrap();
    }
    img.update(&names, Direction::ToShadow, false).unwrap();
    for (i, (m, s)) in pairs.iter().enumerate() {
        m.write(&[0xee; 4096], 0, false).unwrap();
        assert_eq!(read(s.as_ref(), 0, 4096), vec![i as u8 + 1; 4096]);
    }
}

#[test]
fn reopen_after_clean_suspend_and_after_a_crash() {
    let size = 1 << 20;
    for clean in [true, false] {
        let f = fixture(size, Kind::Dependent);
        let t0 = all(f.master.as_ref());
        f.master.write(&[3u8; 9000], 4096, false).unwrap();
        if clean {
            f.img.suspend_all();
            assert_eq!(
                read_header(f.bitmap.as_ref()).unwrap().state,
                HeaderState::Clean
            );
        }
        // Restart: fresh volumes over the same backends.
        let m2 = vol_on("m", f.master.backend().clone());
        let s2 = vol_on("s", f.shadow.backend().clone());
        let img2 = Imaging::default();
        img2.open("set", &m2, &s2, f.bitmap.clone(), None).unwrap();
        assert_eq!(all(s2.as_ref()), t0, "clean={clean}");
        assert_eq!(
            read_header(f.bitmap.as_ref()).unwrap().state,
            HeaderState::Dirty
        );
        // A mismatched name is refused.
        let img3 = Imaging::default();
        let e = img3
            .open("other", &m2, &s2, f.bitmap.clone(), None)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("belongs to set set"), "{e}");
    }
}

#[test]
fn memory_bitmap_after_a_crash_takes_the_dependent_shadow_offline() {
    let size = 1 << 20;
    let master = vol_on("m", mem(size));
    let shadow = vol_on("s", mem(size));
    let bitmap = mem(bitmap_bytes_for(size, CHUNK));
    let img = Imaging::default();
    let mut o = opts(Kind::Dependent);
    o.memory_bitmap = true;
    img.enable("set", &master, &shadow, bitmap.clone(), &o, None)
        .unwrap();
    master.write(&[1u8; 4096], 0, false).unwrap();
    // Crash: no suspend. Reopen.
    let m2 = vol_on("m", master.backend().clone());
    let s2 = vol_on("s", shadow.backend().clone());
    let img2 = Imaging::default();
    let set = img2.open("set", &m2, &s2, bitmap, None).unwrap();
    assert!(set.is_failed());
    let mut b = vec![0u8; 4096];
    assert_eq!(s2.read(&mut b, 0).unwrap_err().errno(), libc::EIO);
    m2.write(&[2u8; 4096], 0, false).unwrap();
    assert_eq!(img2.info("set").unwrap().state, "failed");
    img2.disable("set", false).unwrap();
}

#[test]
fn bad_bitmap_volumes_are_refused_with_a_reason() {
    let size = 1 << 20;
    let f = fixture(size, Kind::Dependent);
    f.img.suspend_all();
    let good = all(f.bitmap.as_ref());
    let try_open = |image: Vec<u8>| {
        let dev: Arc<dyn BlockDevice> = Arc::new(CrashDevice::new(image, CrashClock::new(0)));
        let m = vol_on("m", f.master.backend().clone());
        let s = vol_on("s", f.shadow.backend().clone());
        Imaging::default()
            .open("set", &m, &s, dev, None)
            .err()
            .expect("refused")
            .to_string()
    };
    let mut b = good.clone();
    b[0] = b'X';
    b[4096] = b'X';
    assert!(try_open(b).contains("magic"));
    let mut b = good.clone();
    b[60] ^= 1;
    b[4096 + 60] ^= 1;
    assert!(try_open(b).contains("checksum"));
    assert!(try_open(good[..good.len() - 4096].to_vec()).contains("truncated"));
    assert!(try_open(good[..100].to_vec()).contains("truncated"));
    // A bit past the last chunk.
    let mut b = good.clone();
    let chunks = (size / CHUNK as u64) as usize;
    b[8192 + chunks / 8 + 1] = 1;
    assert!(try_open(b).contains("past the last chunk"));
}

/// Freeze the durable state of master, shadow and bitmap volume at the
/// N-th flush, for every N; reopen from what survived and check that the
/// shadow is exactly a point in time, acknowledged-and-flushed master
/// writes survived, and every differing chunk has its bit.
#[test]
fn crash_at_every_flush_keeps_the_invariants() {
    for kind in [Kind::Dependent, Kind::Independent] {
        let mut n = 1;
        loop {
            let (flushes, frozen) = crash_run(kind, n);
            if !frozen {
                assert!(n > flushes, "{kind:?}: ran {flushes} flushes");
                break;
            }
            n += 1;
        }
        assert!(n > 10, "{kind:?}: only {n} crash points");
    }
}

fn crash_run(kind: Kind, freeze_at: u64) -> (u64, bool) {
    const SIZE: u64 = 128 << 10;
    let clock = CrashClock::new(freeze_at);
    let dev = |img: Vec<u8>| Arc::new(CrashDevice::new(img, clock.clone()));
    let (md, sd, bd) = (
        dev(pattern(1, 0, SIZE as usize)),
        dev(pattern(2, 0, SIZE as usize)),
        dev(vec![0; bitmap_bytes_for(SIZE, CHUNK) as usize]),
    );
    let master = vol_on("m", md.clone());
    let shadow = vol_on("s", sd.clone());
    let img = Imaging::default();
    let t0 = all(master.as_ref());
    img.enable("set", &master, &shadow, bd.clone(), &opts(kind), None)
        .unwrap();
    let set = img.get("set").unwrap();
    set.set_throttle(Throttle {
        delay_ms: 0,
        unit: 0,
    })
    .unwrap();
    let mut points = vec![t0];
    // Master contents as of the last flush that completed unfrozen, and
    // the chunks written since.
    let mut model = all(master.as_ref());
    let mut checkpoint = model.clone();
    let mut since: Vec<Vec<Vec<u8>>> = vec![Vec::new(); (SIZE / CHUNK as u64) as usize];
    for i in 0..40u64 {
        let c = (i * 7) % (SIZE / CHUNK as u64);
        let off = c * CHUNK as u64 + (i % 3) * 512;
        let data = pattern(100 + i, off, 1024);
        master.write(&data, off, false).unwrap();
        model[off as usize..off as usize + 1024].copy_from_slice(&data);
        since[c as usize]
            .push(model[(c * CHUNK as u64) as usize..((c + 1) * CHUNK as u64) as usize].to_vec());
        if i % 5 == 4 {
            master.flush().unwrap();
            if !clock.frozen() {
                checkpoint = model.clone();
                since.iter_mut().for_each(|v| v.clear());
            }
        }
        if i == 20 && kind == Kind::Dependent {
            img.update(&["set".into()], Direction::ToShadow, false)
                .unwrap();
            points.push(all(master.as_ref()));
        }
    }
    set.wait(Duration::from_secs(30));
    let flushes = clock.flushes();
    let frozen = clock.frozen();
    drop(set);
    // "Restart" on what the disks kept.
    let m2 = vol_on("m", Arc::new(MemoryBackend::from_bytes(md.durable_image())));
    let s2 = vol_on("s", Arc::new(MemoryBackend::from_bytes(sd.durable_image())));
    let b2: Arc<dyn BlockDevice> = Arc::new(MemoryBackend::from_bytes(bd.durable_image()));
    let img2 = Imaging::default();
    let set2 = img2
        .open("set", &m2, &s2, b2, None)
        .unwrap_or_else(|e| panic!("{kind:?} N={freeze_at}: reopen failed: {e}"));
    assert!(set2.wait(Duration::from_secs(30)));
    let shadow_now = all(s2.as_ref());
    assert!(
        points.contains(&shadow_now),
        "{kind:?} N={freeze_at}: the shadow is not a point in time"
    );
    let master_now = all(m2.as_ref());
    for (c, history) in since.iter().enumerate() {
        let r = c * CHUNK as usize..(c + 1) * CHUNK as usize;
        let got = &master_now[r.clone()];
        assert!(
            got == &checkpoint[r.clone()] || history.iter().any(|v| v == got),
            "{kind:?} N={freeze_at}: master chunk {c} lost a flushed write"
        );
        if got != &shadow_now[r] {
            assert!(
                set2.differs(c as u64),
                "{kind:?} N={freeze_at}: chunk {c} differs without its bit"
            );
        }
    }
    (flushes, frozen)
}
