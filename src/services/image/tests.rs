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
        overflow: None,
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
    let bitmap = mem(bitmap_bytes_for(size, CHUNK, Kind::Dependent));
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

/// Master writes that each first-touch a run of chunks (copied in one go
/// under the run's locks), from four threads at once, across the wrap of
/// the lock stripes, while the copy engine takes its own runs of locks:
/// nothing deadlocks, the shadow keeps the point in time, and every chunk
/// that differs has its bit. Then the same on a dependent set.
#[test]
fn first_touch_runs_under_concurrent_writers_and_the_copy_engine() {
    for kind in [Kind::Independent, Kind::Dependent] {
        let size = 8 << 20; // 2,048 chunks: the stripes wrap once
        let f = fixture(size, kind);
        let t0 = all(f.master.as_ref());
        let set = f.img.get("set").unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let master = &f.master;
                s.spawn(move || {
                    for i in 0..60u64 {
                        // 4 KiB to 256 KiB, some straddling chunk 1023/1024.
                        let len = 4096 * (1 + (i * 7 + t) % 64);
                        let off = if i % 5 == 0 {
                            1024 * CHUNK as u64 - len / 2 / 4096 * 4096
                        } else {
                            (i * 104_729 + t * 7_919) * 512 % (size - len)
                        };
                        master
                            .write(&pattern(t * 1000 + i, off, len as usize), off, false)
                            .unwrap();
                    }
                });
            }
        });
        f.master.flush().unwrap();
        if kind == Kind::Independent {
            assert!(set.wait(Duration::from_secs(60)), "the copy finished");
        }
        assert!(all(f.shadow.as_ref()) == t0, "{kind:?}: the point in time");
        let (m, s) = (all(f.master.as_ref()), all(f.shadow.as_ref()));
        for c in 0..set.chunks() {
            let r = (c * CHUNK as u64) as usize..((c + 1) * CHUNK as u64) as usize;
            if m[r.clone()] != s[r] {
                assert!(
                    set.differs(c),
                    "{kind:?}: chunk {c} differs without its bit"
                );
            }
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
            mem(bitmap_bytes_for(size, CHUNK, Kind::Dependent)),
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
    let bm = || mem(bitmap_bytes_for(1 << 20, CHUNK, Kind::Dependent));
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
            mem(bitmap_bytes_for(size, CHUNK, Kind::Dependent)),
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
    let bitmap = mem(bitmap_bytes_for(size, CHUNK, Kind::Dependent));
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
    for kind in [Kind::Dependent, Kind::Independent, Kind::Compact] {
        let mut n = 1;
        loop {
            let (flushes, frozen) = crash_run(kind, n, None);
            if !frozen {
                assert!(n > flushes, "{kind:?}: ran {flushes} flushes");
                break;
            }
            n += 1;
        }
        assert!(n > 10, "{kind:?}: only {n} crash points");
    }
}

/// The same with the power cut during every flush instead: each device
/// keeps any subset of its writes since the flush before, torn at 512-byte
/// sectors (`CrashClock::reordering`), for several random choices.
#[test]
fn a_cut_within_any_flush_epoch_keeps_the_invariants() {
    for kind in [Kind::Dependent, Kind::Independent, Kind::Compact] {
        for seed in 1..=3u64 {
            let mut n = 1;
            loop {
                let (flushes, frozen) = crash_run(kind, n, Some(seed * 1000 + n));
                if !frozen {
                    assert!(n > flushes, "{kind:?}: ran {flushes} flushes");
                    break;
                }
                n += 1;
            }
            assert!(n > 10, "{kind:?}: only {n} crash points");
        }
    }
}

fn crash_run(kind: Kind, freeze_at: u64, reorder: Option<u64>) -> (u64, bool) {
    const SIZE: u64 = 128 << 10;
    let clock = match reorder {
        None => CrashClock::new(freeze_at),
        Some(seed) => CrashClock::reordering(freeze_at, seed),
    };
    let dev = |img: Vec<u8>| Arc::new(CrashDevice::new(img, clock.clone()));
    let compact = kind == Kind::Compact;
    // A compact shadow stores half the chunks; the overflow the rest.
    let store = if compact { SIZE / 2 } else { SIZE };
    let overflow_bytes = 4096 + SIZE / 2;
    let (md, sd, bd, od) = (
        dev(pattern(1, 0, SIZE as usize)),
        dev(pattern(2, 0, store as usize)),
        dev(vec![0; bitmap_bytes_for(SIZE, CHUNK, kind) as usize]),
        dev(vec![0; overflow_bytes as usize]),
    );
    let master = vol_on("m", md.clone());
    let shadow = Arc::new(Volume::with_size("s", sd.clone(), String::new(), SIZE));
    let img = Imaging::default();
    let t0 = all(master.as_ref());
    let mut o = opts(kind);
    if compact {
        img.overflow_add("spill", od.clone(), Some(CHUNK)).unwrap();
        o.overflow = Some("spill".into());
    }
    let added_at = clock.flushes();
    // Whether the cut came before the step that had issued `at` flushes
    // returned: right after flush N, or during it (a reordering cut).
    let cut_before = |at: u64| match reorder {
        None => freeze_at < at,
        Some(_) => freeze_at <= at,
    };
    img.enable("set", &master, &shadow, bd.clone(), &o, None)
        .unwrap();
    // A crash before this point interrupts the establishment itself.
    let established_at = clock.flushes();
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
        if i == 20 && kind != Kind::Independent {
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
    let s2 = Arc::new(Volume::with_size(
        "s",
        Arc::new(MemoryBackend::from_bytes(sd.durable_image())),
        String::new(),
        SIZE,
    ));
    let b2: Arc<dyn BlockDevice> = Arc::new(MemoryBackend::from_bytes(bd.durable_image()));
    let img2 = Imaging::default();
    if compact {
        match img2.overflow_add(
            "spill",
            Arc::new(MemoryBackend::from_bytes(od.durable_image())),
            None,
        ) {
            Ok(_) => {}
            // Adding it had not returned at the cut: not formatted yet.
            Err(_) if cut_before(added_at) => return (flushes, frozen),
            Err(e) => panic!("N={freeze_at} {reorder:?}: overflow reopen: {e}"),
        }
    }
    let set2 = match img2.open("set", &m2, &s2, b2, None) {
        Ok(s) => s,
        // Enable had not returned at the crash: no set is a valid outcome.
        Err(_) if cut_before(established_at) => return (flushes, frozen),
        Err(e) => panic!("{kind:?} N={freeze_at} {reorder:?}: reopen failed: {e}"),
    };
    assert!(set2.wait(Duration::from_secs(30)));
    let shadow_now = all(s2.as_ref());
    assert!(
        points.contains(&shadow_now),
        "{kind:?} N={freeze_at} {reorder:?}: the shadow is not a point in time"
    );
    let master_now = all(m2.as_ref());
    for (c, history) in since.iter().enumerate() {
        let r = c * CHUNK as usize..(c + 1) * CHUNK as usize;
        let got = &master_now[r.clone()];
        if reorder.is_none() {
            assert!(
                got == &checkpoint[r.clone()] || history.iter().any(|v| v == got),
                "{kind:?} N={freeze_at}: master chunk {c} lost a flushed write"
            );
        } else {
            // Writes since the last flush may be kept in part, torn at
            // sectors: each sector holds its flushed bytes or those of a
            // write since.
            for (k, sector) in got.chunks(512).enumerate() {
                let at = k * 512..(k + 1) * 512;
                assert!(
                    sector == &checkpoint[r.start + at.start..r.start + at.end]
                        || history.iter().any(|v| &v[at.clone()] == sector),
                    "{kind:?} N={freeze_at} {reorder:?}: master chunk {c} sector {k} lost a flushed write"
                );
            }
        }
        if got != &shadow_now[r] {
            assert!(
                set2.differs(c as u64),
                "{kind:?} N={freeze_at} {reorder:?}: chunk {c} differs without its bit"
            );
        }
    }
    (flushes, frozen)
}

fn compact_fixture(master_bytes: u64, store: u64, overflow_chunks: Option<u64>) -> Fixture {
    let master = vol_on("m", mem(master_bytes));
    master
        .write(&pattern(5, 0, master_bytes as usize), 0, false)
        .unwrap();
    let shadow = Arc::new(Volume::with_size(
        "c",
        mem(store),
        String::new(),
        master_bytes,
    ));
    let bitmap = mem(bitmap_bytes_for(master_bytes, CHUNK, Kind::Compact));
    let img = Imaging::default();
    let mut o = opts(Kind::Compact);
    if let Some(n) = overflow_chunks {
        img.overflow_add("spill", mem(4096 + n * CHUNK as u64), Some(CHUNK))
            .unwrap();
        o.overflow = Some("spill".into());
    }
    img.enable("set", &master, &shadow, bitmap.clone(), &o, None)
        .unwrap();
    Fixture {
        img,
        master,
        shadow,
        bitmap,
    }
}

#[test]
fn compact_shadow_fills_spills_over_then_fails_visibly() {
    let size = 1 << 20;
    // 4 chunks of store, 8 of overflow: the 13th saved chunk has no room.
    let f = compact_fixture(size, 4 * CHUNK as u64, Some(8));
    let t0 = all(f.master.as_ref());
    assert_eq!(
        f.shadow.size_bytes(),
        size,
        "a compact shadow shows the master's size"
    );
    for i in 0..12u64 {
        f.master
            .write(&[i as u8; 100], i * 3 * CHUNK as u64 + 7, false)
            .unwrap();
        assert_eq!(all(f.shadow.as_ref()), t0, "after saving chunk {i}");
    }
    let set = f.img.get("set").unwrap();
    assert_eq!(set.overflow_chunks(), 8);
    assert_eq!(f.img.overflow_info("spill").unwrap().1, 8);
    // Shadow writes go through the index too.
    f.shadow
        .write(&[0xab; 3000], 3 * CHUNK as u64 + 100, false)
        .unwrap();
    let mut expect = t0.clone();
    expect[3 * CHUNK as usize + 100..3 * CHUNK as usize + 3100].fill(0xab);
    assert_eq!(all(f.shadow.as_ref()), expect);
    assert!(!set.is_failed());
    // No room for the next chunk: the set fails, the master carries on.
    f.master
        .write(&[0xee; 4096], 200 * CHUNK as u64, false)
        .unwrap();
    assert!(set.is_failed());
    assert_eq!(
        read(f.master.as_ref(), 200 * CHUNK as u64, 4096),
        vec![0xee; 4096]
    );
    let info = f.img.info("set").unwrap();
    assert_eq!(info.state, "failed");
    assert!(info.error.unwrap().contains("full"));
    let mut b = vec![0u8; 4096];
    assert_eq!(f.shadow.read(&mut b, 0).unwrap_err().errno(), libc::EIO);
    // Detaching the overflow is refused while chunks live there; after
    // disable the overflow is empty again.
    assert!(f.img.overflow_attach("set", None).is_err());
    f.img.disable("set", false).unwrap();
    assert_eq!(f.img.overflow_info("spill").unwrap().1, 0);
}

#[test]
fn compact_shadow_restores_the_master_and_survives_a_restart() {
    let size = 1 << 20;
    let f = compact_fixture(size, 8 * CHUNK as u64, Some(16));
    let t0 = all(f.master.as_ref());
    for i in 0..20u64 {
        f.master
            .write(&[9; 4096], i * 11 * CHUNK as u64 % size, false)
            .unwrap();
    }
    // Restart without a clean suspend: the index came back with the bits.
    // The writes were flushed (queued ones would land in the backend behind
    // the second registry's back; a crash would have dropped them).
    f.master.flush().unwrap();
    f.img.halt_all();
    let ovf = f.img.get("set").unwrap();
    assert_eq!(ovf.overflow_chunks(), 12);
    let m2 = vol_on("m", f.master.backend().clone());
    let s2 = Arc::new(Volume::with_size(
        "c",
        f.shadow.backend().clone(),
        String::new(),
        size,
    ));
    let img2 = Imaging::default();
    // The overflow's bytes are in the first registry's device: reuse it.
    let (cap, used, _) = f.img.overflow_info("spill").unwrap();
    assert_eq!((cap, used), (16, 12));
    let dev = {
        let reg = f.img.inner.lock();
        reg.overflows["spill"].device_arc()
    };
    img2.overflow_add("spill", dev, None).unwrap();
    img2.open("set", &m2, &s2, f.bitmap.clone(), None).unwrap();
    assert_eq!(all(s2.as_ref()), t0);
    img2.update(&["set".into()], Direction::ToMaster, false)
        .unwrap();
    assert!(img2.get("set").unwrap().wait(Duration::from_secs(30)));
    assert_eq!(
        all(m2.as_ref()),
        t0,
        "master restored from the compact shadow"
    );
    // Refresh frees every slot.
    img2.update(&["set".into()], Direction::ToShadow, false)
        .unwrap();
    assert_eq!(img2.get("set").unwrap().overflow_chunks(), 0);
    img2.overflow_attach("set", None).unwrap();
    assert_eq!(img2.overflow_info("spill").unwrap().1, 0);
}

/// A device whose flushes wait while its gate is closed.
struct GatedFlush {
    inner: Arc<dyn BlockDevice>,
    closed: parking_lot::Mutex<bool>,
    cv: parking_lot::Condvar,
}

impl GatedFlush {
    fn new(inner: Arc<dyn BlockDevice>) -> Arc<Self> {
        Arc::new(GatedFlush {
            inner,
            closed: parking_lot::Mutex::new(false),
            cv: parking_lot::Condvar::new(),
        })
    }
    fn set_closed(&self, closed: bool) {
        *self.closed.lock() = closed;
        self.cv.notify_all();
    }
}

impl BlockDevice for GatedFlush {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> crate::device::Result<()> {
        self.inner.read(buf, offset)
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> crate::device::Result<()> {
        self.inner.write(buf, offset, fua)
    }
    fn flush(&self) -> crate::device::Result<()> {
        let mut c = self.closed.lock();
        while *c {
            self.cv.wait(&mut c);
        }
        drop(c);
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> crate::device::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> crate::device::Result<()> {
        self.inner.write_zeroes(offset, len, fua)
    }
}

const GATED_SIZE: u64 = 256 << 10;

/// A dependent set of a master on `master_dev` (`GATED_SIZE` bytes) whose
/// bitmap volume's flushes can be held.
fn gated_set(
    master_dev: Arc<dyn BlockDevice>,
    notify: Option<Notifier>,
) -> (Imaging, Arc<Volume>, Arc<Volume>, Arc<GatedFlush>) {
    let master = vol_on("m", master_dev);
    let shadow = vol_on("s", mem(GATED_SIZE));
    let bitmap = GatedFlush::new(mem(bitmap_bytes_for(GATED_SIZE, CHUNK, Kind::Dependent)));
    let img = Imaging::default();
    img.enable(
        "set",
        &master,
        &shadow,
        bitmap.clone(),
        &opts(Kind::Dependent),
        notify,
    )
    .unwrap();
    (img, master, shadow, bitmap)
}

/// Run `f` on a thread; its result if it returns within `wait`.
fn within<T: Send + 'static>(
    wait: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (Option<T>, std::sync::mpsc::Receiver<T>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    (rx.recv_timeout(wait).ok(), rx)
}

/// A first touch is acknowledged before its commit (the write-behind), but
/// the master's device sees the write only after the commit; reads see it
/// at once, a flush and a FUA write wait for the commit.
#[test]
fn first_touches_are_acknowledged_before_their_commit_and_applied_after() {
    let mb = mem(GATED_SIZE);
    mb.write(&pattern(1, 0, GATED_SIZE as usize), 0, false)
        .unwrap();
    let (img, master, shadow, bitmap) = gated_set(mb.clone(), None);
    let t0 = all(master.as_ref());
    bitmap.set_closed(true);
    let second = Duration::from_secs(5);

    // Two first touches and a write over the first: all acknowledged while
    // no commit can finish.
    let m = master.clone();
    let (done, _) = within(second, move || {
        m.write(&[7; 1024], 512, false).unwrap();
        m.write(&[8; 4096], 5 * CHUNK as u64, false).unwrap();
        m.write(&[9; 512], 1024, false).unwrap();
    });
    assert!(done.is_some(), "first touches waited for their commit");
    let mut want = t0.clone();
    want[512..1536].fill(7);
    want[1024..1536].fill(9);
    want[5 * CHUNK as usize..6 * CHUNK as usize].fill(8);
    assert!(all(master.as_ref()) == want, "reads see the queued writes");
    assert!(
        all(mb.as_ref()) == t0,
        "the master's device waits for the commit"
    );
    assert!(
        all(shadow.as_ref()) == t0,
        "the shadow keeps its point in time"
    );

    // A flush waits for the commit and the queue; so does a FUA first touch.
    let m = master.clone();
    let (flushed, flush_rx) = within(Duration::from_millis(300), move || m.flush());
    assert!(flushed.is_none(), "a flush returned before the commit");
    let m = master.clone();
    let (fua, fua_rx) = within(Duration::from_millis(300), move || {
        m.write(&[6; 4096], 9 * CHUNK as u64, true)
    });
    assert!(
        fua.is_none(),
        "a FUA first touch returned before its commit"
    );
    bitmap.set_closed(false);
    flush_rx.recv_timeout(second).unwrap().unwrap();
    fua_rx.recv_timeout(second).unwrap().unwrap();
    want[9 * CHUNK as usize..10 * CHUNK as usize].fill(6);
    assert!(
        all(mb.as_ref()) == want,
        "after the flush the device has every write"
    );
    assert!(all(master.as_ref()) == want);
    assert!(all(shadow.as_ref()) == t0);
    let set = img.get("set").unwrap();
    for c in [0, 5, 9] {
        assert!(set.differs(c), "chunk {c} has its bit");
    }
}

/// A queued master write that fails on the master's device: the next flush
/// returns the error (once, as an fsync does) and an event says so.
#[test]
fn a_failed_queued_write_is_returned_by_the_next_flush_and_told() {
    use crate::device::testing::FaultyDevice;
    use std::sync::atomic::Ordering;
    let faulty = Arc::new(FaultyDevice::new(mem(GATED_SIZE)));
    let events = Arc::new(parking_lot::Mutex::new(Vec::<(String, String)>::new()));
    let seen = events.clone();
    let notify: Notifier = Arc::new(move |kind, set, note| {
        seen.lock()
            .push((kind.to_owned(), format!("{set}: {}", note.text)));
    });
    let (_img, master, _shadow, bitmap) = gated_set(faulty.clone(), Some(notify));
    // Hold the commit so the write is queued, then make the device fail.
    bitmap.set_closed(true);
    master.write(&[5; 4096], 3 * CHUNK as u64, false).unwrap();
    faulty.fail_writes.store(true, Ordering::SeqCst);
    bitmap.set_closed(false);
    assert!(master.flush().is_err(), "the flush returns the lost write");
    faulty.fail_writes.store(false, Ordering::SeqCst);
    master.flush().expect("reported once");
    let ev = events.lock();
    assert!(
        ev.iter()
            .any(|(k, d)| k == "image.master_write_failed" && d.starts_with("set: ")),
        "events: {ev:?}"
    );
}
