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
use common::{fio_load, require_tool, Daemon};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
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

const BLOCK: u64 = 4096;
const SECTOR: usize = 512;
/// The tracker's blocks: the first 8 MiB of a 32 MiB volume; fio writes
/// (with a flush every 32 writes) over the rest.
const TRACKED: u64 = 2048;
const VOLUME: &str = "32M";
const POWER_CYCLES: u64 = 6;
const SECRET: &str = "power-loss-secret-0123456789";

/// A tracked block: every 512-byte sector says which block, which version
/// and which sector it is, so a torn or misplaced write is recognisable at
/// the disk's unit of atomicity.
fn sector_data(block: u64, version: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK as usize);
    for s in 0..(BLOCK as usize / SECTOR) as u64 {
        while v.len() < (s as usize + 1) * SECTOR {
            for x in [block, version, s] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v.truncate((s as usize + 1) * SECTOR);
    }
    v
}

/// The version sector `s` of `block` holds (0: never written), or None.
fn decode_sector(block: u64, s: usize, data: &[u8]) -> Option<u64> {
    if data.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let version = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let want = sector_data(block, version);
    (data == &want[s * SECTOR..(s + 1) * SECTOR]).then_some(version)
}

/// What the tracker has been told: versions written to each block, and
/// the newest version of each that was made durable (covered by a
/// completed flush, written FUA, or acknowledged when every acknowledged
/// write is durable).
#[derive(Default)]
struct Track {
    written: HashMap<u64, Vec<u64>>,
    durable: HashMap<u64, u64>,
    writes: u64,
    flushes: u64,
}

/// Writes versioned blocks at random over the tracked region until the
/// daemon dies: every 37th write FUA, a flush every 16 writes (a FUA
/// write may sync the whole file, so a rare one leaves flushes to prove).
fn tracker(
    addr: String,
    seed: u64,
    acked_is_durable: bool,
    track: Arc<Mutex<Track>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = NbdClient::connect(&addr, "v");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut acked: HashMap<u64, u64> = HashMap::new();
        let base = track
            .lock()
            .written
            .values()
            .flatten()
            .max()
            .copied()
            .unwrap_or(1);
        for version in base + 1.. {
            let block = rng.gen_range(0..TRACKED);
            let fua = version % 37 == 0;
            track.lock().written.entry(block).or_default().push(version);
            let h = c.send(
                1,
                u16::from(fua),
                block * BLOCK,
                BLOCK as u32,
                &sector_data(block, version),
            );
            match c.reply(None) {
                Ok((rh, 0)) if rh == h => {}
                _ => return,
            }
            acked.insert(block, version);
            let mut t = track.lock();
            t.writes += 1;
            if fua || acked_is_durable {
                t.durable.insert(block, version);
            }
            drop(t);
            if version % 16 == 0 {
                let snapshot = acked.clone();
                let h = c.send(3, 0, 0, 0, &[]);
                match c.reply(None) {
                    Ok((rh, 0)) if rh == h => {}
                    _ => return,
                }
                let mut t = track.lock();
                t.flushes += 1;
                for (b, v) in snapshot {
                    let d = t.durable.entry(b).or_default();
                    *d = (*d).max(v);
                }
            }
        }
    })
}

/// BRIEF invariant 1 over the tracked region: every sector holds a version
/// that was written to its block, no older than the block's durable one.
fn check_tracked(addr: &str, track: &Track, what: &str) {
    let mut c = NbdClient::connect(addr, "v");
    for block in 0..TRACKED {
        let data = c.read(block * BLOCK, BLOCK as usize).unwrap();
        let durable = track.durable.get(&block).copied().unwrap_or(0);
        for (s, sector) in data.chunks(SECTOR).enumerate() {
            let v = decode_sector(block, s, sector).unwrap_or_else(|| {
                panic!("{what}: block {block} sector {s} holds data nobody wrote")
            });
            assert!(
                v == 0 || v == 1 || track.written.get(&block).is_some_and(|w| w.contains(&v)),
                "{what}: block {block} sector {s} holds version {v}, never written there"
            );
            assert!(
                v >= durable,
                "{what}: block {block} sector {s}: version {durable} was durable (flushed or FUA), found {v}"
            );
        }
    }
    c.disconnect();
}

/// Fill the whole volume with version 1 of every block (the point in time
/// an imaging test's shadow must keep), and flush.
fn fill_v1(addr: &str, volume: &str, blocks: u64) {
    let mut c = NbdClient::connect(addr, volume);
    for block in 0..blocks {
        assert_eq!(c.write(block * BLOCK, &sector_data(block, 1), 0), 0);
    }
    assert_eq!(c.flush(), 0);
    c.disconnect();
}

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
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(800..2500)));
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
        check_tracked(&d.addr_of("v"), &t, &what);
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
