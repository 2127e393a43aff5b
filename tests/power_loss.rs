//! Power loss under the real daemon: its data dir lives on powerfs
//! (tests/common/powerfs.rs), which keeps every write since a file's last
//! fsync in memory and, at a simulated power cut, drops them or keeps a
//! random subset torn at 512-byte sectors.
//!
//! Each volume kind (plain, O_DIRECT, write-back cache, a master with a
//! dependent shadow, a sync-replicated primary) runs `POWER_CYCLES` times
//! (6 unless `UMBRA_POWER_CYCLES` says more): fio and a tracker write for a
//! random while, `kill -9`, the power cut, a restart, and the BRIEF's
//! invariants 1-3 checked. Proven able to fail: with the file backend's
//! flush turned into `return Ok(())` every kind fails in its first cycle
//! ("version N was durable (flushed or FUA), found 0", a bitmap volume,
//! scoreboard or safe store with a wrong magic).

mod common;

use common::nbd::NbdClient;
use common::powerfs::PowerFs;
use common::repl::{differing_blocks, enable_args, node, node_trusting, settle};
use common::tracker::{check_tracked, fill_v1, sector_data, tracker, Track, BLOCK};
use common::{fio_load, require_tool, Daemon};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The filesystem itself: synced data survives a cut, unsynced data does
/// not (or only in sectors), namespace operations are durable.
#[test]
fn powerfs_keeps_synced_data_and_drops_the_rest() {
    let mut fs = PowerFs::mount();
    let p = fs.path().join("f");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&[1u8; 8192]).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(&[2u8; 4096], 0).unwrap();
    drop(f);
    assert_eq!(fs.pending_bytes(), 4096);
    let cut = fs.cut(1, false);
    assert_eq!(cut.lost_bytes, 4096);
    let mut back = Vec::new();
    std::fs::File::open(&p)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, vec![1u8; 8192], "the unsynced overwrite is gone");

    // Keeping a subset: every sector is old or new, never anything else.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    for i in 0..64u64 {
        f.write_all_at(&[3u8; 4096], (i % 2) * 4096).unwrap();
    }
    drop(f);
    fs.cut(7, true);
    let mut back = Vec::new();
    std::fs::File::open(&p)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back.len(), 8192);
    for s in back.chunks(512) {
        assert!(s == [1u8; 512] || s == [3u8; 512], "a sector holds a mix");
    }
    // Sparse files and SEEK_DATA.
    let q = fs.path().join("sparse");
    let g = std::fs::File::create(&q).unwrap();
    g.set_len(1 << 30).unwrap();
    g.write_all_at(&[9u8; 4096], 1 << 20).unwrap();
    let at = nix::unistd::lseek(g.as_raw_fd(), 0, nix::unistd::Whence::SeekData).unwrap();
    assert_eq!(at, 1 << 20);
    drop(g);
    std::fs::rename(&q, fs.path().join("renamed")).unwrap();
    fs.cut(3, false);
    let meta = std::fs::metadata(fs.path().join("renamed")).unwrap();
    assert_eq!(meta.len(), 1 << 30, "the size (metadata) is durable");
    let mut buf = vec![0u8; 4096];
    std::fs::File::open(fs.path().join("renamed"))
        .unwrap()
        .read_exact_at(&mut buf, 1 << 20)
        .unwrap();
    assert_eq!(buf, vec![0u8; 4096], "its unsynced data is not");
}

/// A write with `RWF_DSYNC` (the file backend's FUA) is durable by itself,
/// through the page cache and through `O_DIRECT`. Files are opened
/// `FOPEN_DIRECT_IO`, and on that path the kernel sends no fsync after a
/// synchronous write: it passes `O_DSYNC` in the write's flags, and powerfs
/// must honour it (it once did not, and a FUA write the O_DIRECT power
/// test counted durable was dropped by a cut now and then).
#[test]
fn a_dsync_write_survives_a_cut_with_and_without_o_direct() {
    use std::os::unix::fs::OpenOptionsExt;
    let mut fs = PowerFs::mount();
    for (name, custom) in [("buffered", 0), ("direct", libc::O_DIRECT)] {
        let p = fs.path().join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .custom_flags(custom)
            .open(&p)
            .unwrap();
        let mut buf = umbra::buffer::AlignedBuf::new(4096);
        buf.fill(7);
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over `buf`, which outlives the call.
        let n = unsafe { libc::pwritev2(f.as_raw_fd(), &iov, 1, 0, libc::RWF_DSYNC) };
        assert_eq!(
            n,
            4096,
            "{name}: pwritev2: {}",
            std::io::Error::last_os_error()
        );
    }
    assert_eq!(fs.pending_bytes(), 0, "every dsync write was made durable");
    fs.cut(5, false);
    for name in ["buffered", "direct"] {
        let back = std::fs::read(fs.path().join(name)).unwrap();
        assert_eq!(back, vec![7u8; 4096], "{name}: the dsync write survived");
    }
}

const VOLUME: &str = "32M";
const POWER_CYCLES: u64 = 6;
const SECRET: &str = "power-loss-secret-0123456789";

/// The volume kinds, each set up on a daemon whose data dir is on powerfs.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Plain,
    Direct,
    WriteBack,
    Imaging,
    Replicated,
}

/// `cycles` times: load (fio and the tracker) for a random while, `kill -9`,
/// cut the power (alternately dropping every unsynced write and keeping a
/// random torn subset), restart, check the invariants.
fn power_cycles(kind: Kind) {
    require_tool("fio");
    let mut fs = PowerFs::mount();
    let mut d = Daemon::start_in(fs.path());
    let mut create = vec!["volume", "create", "v", "--size", VOLUME];
    if kind == Kind::Direct {
        create.push("--direct");
    }
    d.ok(&create);
    d.export_nbd("v");
    let store = d.data_dir().join("v.safe");
    let mut secondary = None;
    match kind {
        Kind::WriteBack => {
            d.ok(&[
                "cache",
                "enable",
                "v",
                "--mode",
                "write-back",
                "--safe-store",
                store.to_str().unwrap(),
                "--safe-store-size",
                "8M",
            ]);
        }
        Kind::Imaging => {
            fill_v1(&d.addr_of("v"), "v", 32 << 20 >> 12);
            d.ok(&[
                "image",
                "enable",
                "pit",
                "--master",
                "v",
                "--shadow",
                "s",
                "--mode",
                "dependent",
            ]);
            d.export_nbd("s");
        }
        Kind::Replicated => {
            let (a, _) = node_trusting(d, "a", "127.0.0.1:0", SECRET, &["b"]);
            d = a;
            // The administrator's key file is durable before any cut.
            std::fs::File::open(d.dir.path().join("peer.key"))
                .and_then(|f| f.sync_all())
                .unwrap();
            let (b, b_addr) = node("b", SECRET, "a");
            b.ok(&["volume", "create", "v", "--size", VOLUME]);
            b.export_nbd("v");
            d.ok(&enable_args("s", "v", &b_addr, "v", "sync", &["--no-sync"]));
            settle(&d, "s");
            secondary = Some(b);
        }
        _ => {}
    }
    let mut rng = StdRng::seed_from_u64(0x5eed ^ kind as u64);
    let track = Arc::new(Mutex::new(Track::default()));
    let mut lost = 0;
    let cycles = std::env::var("UMBRA_POWER_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(POWER_CYCLES);
    for cycle in 0..cycles {
        let what = format!("{kind:?} cycle {cycle}");
        let uri = d.uri_of("v");
        let mut fio = fio_load(&uri, "8M", "24M", &["--fsync=32"]);
        let t = tracker(
            d.addr_of("v"),
            rng.gen(),
            kind == Kind::WriteBack,
            track.clone(),
            Arc::new(AtomicBool::new(false)),
        );
        // A random while of load, and at least a few of this cycle's
        // flushes however slow the machine: the cut must have something
        // durable to keep and something unsynced to drop.
        let flushes_before = track.lock().flushes;
        std::thread::sleep(Duration::from_millis(rng.gen_range(800..2500)));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while track.lock().flushes < flushes_before + 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: the tracker made no progress"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d.kill9();
        t.join().unwrap();
        let _ = fio.kill();
        let _ = fio.wait();
        let cut = fs.cut(rng.gen(), cycle % 2 == 1);
        lost += cut.lost_bytes;
        d.spawn();
        let t = track.lock();
        assert!(
            t.writes > 50 && t.flushes > 2,
            "{what}: the tracker made progress ({} writes)",
            t.writes
        );
        let problems = check_tracked(&d.addr_of("v"), &t);
        assert!(problems.is_empty(), "{what}: {problems:#?}");
        if kind == Kind::Imaging {
            // BRIEF invariants 2 and 3: the shadow is the point in time, so
            // every chunk written since has its copy and its bit.
            let mut c = NbdClient::connect(&d.addr_of("s"), "s");
            for block in 0..(32 << 20 >> 12) {
                let data = c.read(block * BLOCK, BLOCK as usize).unwrap();
                assert!(
                    data == sector_data(block, 1),
                    "{what}: shadow block {block} is not its point in time"
                );
            }
        }
        if let Some(b) = &secondary {
            // BRIEF invariant 3: the scoreboard had a bit for every chunk the
            // cut left different on the two sides; a resync converges.
            settle(&d, "s");
            let diff = differing_blocks(&d, b, "v");
            assert!(
                diff.is_empty(),
                "{what}: primary and secondary differ in blocks {diff:?}"
            );
        }
    }
    let t = track.lock();
    eprintln!(
        "{kind:?}: {cycles} power cuts, {} tracked writes, {} flushes, {lost} unsynced bytes dropped; 0 lost, 0 corrupt, 0 divergent",
        t.writes, t.flushes
    );
    assert!(lost > 0, "{kind:?}: the power cuts dropped something");
    drop(t);
    drop(secondary);
    d.stop();
}

#[test]
fn power_cuts_under_load_plain() {
    power_cycles(Kind::Plain);
}

#[test]
fn power_cuts_under_load_o_direct() {
    power_cycles(Kind::Direct);
}

#[test]
fn power_cuts_under_load_write_back() {
    power_cycles(Kind::WriteBack);
}

#[test]
fn power_cuts_under_load_imaging() {
    power_cycles(Kind::Imaging);
}

#[test]
fn power_cuts_under_load_replicated() {
    power_cycles(Kind::Replicated);
}
