//! A bounded soak of everything at once. A hybrid-replicated primary `a`
//! (data dir on powerfs, so its power can be cut) mirrors volume `v` to `b`
//! through a fault proxy, with a dependent shadow of `v` on `a`. Every cycle
//! runs load (fio with flushes, and the tracker of tests/common/tracker.rs)
//! and one of: kill -9 of `a` plus a power cut (dropping every unsynced
//! write, or keeping a torn subset), kill -9 of `b`, a link fault (drop,
//! stall, partition), a new point in time, a restore of the master, a
//! write-through cache toggled under load, a fio write-and-verify pass. Then
//! it checks: every flushed or FUA write is there (BRIEF 1), the shadow
//! holds its point in time (2), `a` and `b` converge block for block (3).
//!
//! `UMBRA_TORTURE_SECS` bounds it (45 s unless set: CI's smoke run);
//! `tools/torture.sh MINUTES` runs it longer and prints the summary line.
//! `UMBRA_TORTURE_ACTIONS=3,4` draws only those actions (numbered as in
//! the `match` below), to chase one kind of problem faster.

mod common;

use common::nbd::NbdClient;
use common::powerfs::PowerFs;
use common::repl::{differing_blocks, enable_args, node_trusting, settle};
use common::tracker::{check_tracked, fill_v1, reload, tracker, Track};
use common::{fio_load, free_port, require_tool, Daemon};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use umbra::services::repl::proxy::{Fault, FaultProxy};

const SECRET: &str = "torture-secret-0123456789abcdef";
const BLOCKS: u64 = 32 << 20 >> 12;

#[derive(Default, Debug)]
struct Counts {
    cycles: u64,
    power_cuts: u64,
    kills_of_b: u64,
    link_faults: u64,
    updates: u64,
    restores: u64,
    cache_toggles: u64,
    verify_passes: u64,
    lost: u64,
    corrupt: u64,
    divergent: u64,
}

/// fio writes 8 MiB at [24M, 32M) and reads it back verifying checksums;
/// true when it found nothing wrong.
fn fio_verify(uri: &str) -> bool {
    let out = Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--offset=24M",
            "--size=8M",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ])
        .output()
        .expect("run fio");
    if !out.status.success() {
        eprintln!(
            "fio verify failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// The first 16 4 KiB blocks where volumes `x` and `y` of `d` differ, with
/// the first 16 bytes of each side.
fn blocks_differing(d: &Daemon, x: &str, y: &str) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let mut cx = NbdClient::connect(&d.addr_of(x), x);
    let mut cy = NbdClient::connect(&d.addr_of(y), y);
    let mut out = Vec::new();
    for block in 0..BLOCKS {
        let (bx, by) = (
            cx.read(block * 4096, 4096).unwrap(),
            cy.read(block * 4096, 4096).unwrap(),
        );
        if bx != by && out.len() < 16 {
            out.push((block, bx[..16].to_vec(), by[..16].to_vec()));
        }
    }
    cx.disconnect();
    cy.disconnect();
    out
}

/// Wait until no client is connected to `v` on `a`: a killed fio's last
/// requests may still be in the server's buffer and land after it died
/// (unacknowledged writes, free to land late), which would race the
/// checks and a restore.
fn drained(a: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.export_of("v")["clients"] != 0 {
        assert!(Instant::now() < deadline, "clients of v did not go away");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn torture() {
    require_tool("fio");
    let given: Option<u64> = std::env::var("UMBRA_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    let secs = given.unwrap_or(45);
    // CI's smoke run repeats one sequence of choices (timing still varies);
    // tools/torture.sh draws a new seed each run unless given one.
    let seed: u64 = std::env::var("UMBRA_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201);
    eprintln!("torture: {secs} s, seed {seed} (UMBRA_TORTURE_SEED={seed} repeats the choices)");
    let mut rng = StdRng::seed_from_u64(seed);
    let only: Option<Vec<u32>> = std::env::var("UMBRA_TORTURE_ACTIONS").ok().map(|s| {
        s.split(',')
            .map(|a| a.trim().parse().expect("an action number"))
            .collect()
    });

    // Fields drop in order: daemons first, the filesystem last.
    let mut fs = PowerFs::mount();
    let (mut a, _) = node_trusting(
        Daemon::start_in(fs.path()),
        "a",
        "127.0.0.1:0",
        SECRET,
        &["b"],
    );
    std::fs::File::open(a.dir.path().join("peer.key"))
        .and_then(|f| f.sync_all())
        .unwrap();
    // b's listener keeps its port across restarts: the proxy forwards to it.
    let b_listen = format!("127.0.0.1:{}", free_port());
    let (mut b, b_addr) = node_trusting(Daemon::start(), "b", &b_listen, SECRET, &["a"]);
    let proxy = FaultProxy::start("127.0.0.1:0", &b_addr).unwrap();
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    a.ok(&enable_args(
        "s",
        "v",
        &proxy.addr,
        "v",
        "hybrid",
        &["--no-sync", "--timeout", "1500ms"],
    ));
    settle(&a, "s");
    fill_v1(&a.addr_of("v"), "v", BLOCKS);
    a.ok(&[
        "image",
        "enable",
        "pit",
        "--master",
        "v",
        "--shadow",
        "snap",
        "--mode",
        "dependent",
    ]);
    a.export_nbd("snap");
    let mut pit = a.sha_of("v");
    let track = Arc::new(Mutex::new(Track::default()));
    let mut cached = false;
    let mut n = Counts::default();

    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        n.cycles += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Some((
            tracker(
                a.addr_of("v"),
                rng.gen(),
                false,
                track.clone(),
                stop.clone(),
            ),
            fio_load(&a.uri_of("v"), "8M", "16M", &["--fsync=32"]),
        ));
        // Stop the writers (they also stop by themselves when `a` dies).
        let mut stop_load = || {
            stop.store(true, Ordering::SeqCst);
            if let Some((t, mut fio)) = load.take() {
                let _ = fio.kill();
                let _ = fio.wait();
                t.join().unwrap();
            }
        };
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        let action = loop {
            let a = rng.gen_range(0..7);
            if only.as_ref().is_none_or(|o| o.contains(&a)) {
                break a;
            }
        };
        let what = match action {
            0 => {
                a.kill9();
                let cut = fs.cut(rng.gen(), rng.gen_bool(0.5));
                a.spawn();
                n.power_cuts += 1;
                format!("power cut of a ({} unsynced bytes dropped)", cut.lost_bytes)
            }
            1 => {
                b.kill9();
                std::thread::sleep(Duration::from_millis(rng.gen_range(200..1000)));
                b.spawn();
                n.kills_of_b += 1;
                "kill -9 of b".to_owned()
            }
            2 => {
                let kind = rng.gen_range(0..3);
                match kind {
                    0 => proxy.drop_connections(),
                    1 => proxy.set_fault(Fault::Stall),
                    _ => {
                        proxy.set_fault(Fault::Partition);
                        proxy.drop_connections();
                    }
                }
                std::thread::sleep(Duration::from_millis(rng.gen_range(500..2500)));
                proxy.set_fault(Fault::Pass);
                n.link_faults += 1;
                ["link drop", "link stall", "partition"][kind].to_owned()
            }
            3 => {
                stop_load();
                drained(&a);
                a.ok(&["image", "update", "pit", "--to", "shadow"]);
                pit = a.sha_of("v");
                n.updates += 1;
                "new point in time".to_owned()
            }
            4 => {
                stop_load();
                drained(&a);
                a.ok(&[
                    "image", "update", "pit", "--to", "master", "--yes", "--force", "--wait",
                ]);
                let mut c = NbdClient::connect(&a.addr_of("v"), "v");
                assert_eq!(c.flush(), 0);
                c.disconnect();
                if a.sha_of("v") != pit {
                    eprintln!(
                        "cycle {}: the restored master is not the point in time; blocks (block, master's first bytes, shadow's) differing from the shadow: {:?}",
                        n.cycles,
                        blocks_differing(&a, "v", "snap")
                    );
                    n.corrupt += 1;
                }
                reload(&a.addr_of("v"), &mut track.lock());
                n.restores += 1;
                "restore of the master".to_owned()
            }
            5 => {
                if cached {
                    a.ok(&["cache", "disable", "v"]);
                } else {
                    a.ok(&["cache", "enable", "v", "--size", "4M"]);
                }
                cached = !cached;
                std::thread::sleep(Duration::from_millis(rng.gen_range(200..1000)));
                n.cache_toggles += 1;
                format!("cache {}", if cached { "enabled" } else { "disabled" })
            }
            _ => {
                if !fio_verify(&a.uri_of("v")) {
                    n.corrupt += 1;
                }
                n.verify_passes += 1;
                "fio write and verify".to_owned()
            }
        };
        stop_load();
        drained(&a);

        let problems = check_tracked(&a.addr_of("v"), &track.lock());
        if !problems.is_empty() {
            eprintln!("cycle {} ({what}): {problems:#?}", n.cycles);
            n.lost += problems.len() as u64;
        }
        if a.sha_of("snap") != pit {
            eprintln!(
                "cycle {} ({what}): the shadow left its point in time",
                n.cycles
            );
            n.corrupt += 1;
        }
        settle(&a, "s");
        let diff = differing_blocks(&a, &b, "v");
        if !diff.is_empty() {
            eprintln!(
                "cycle {} ({what}): a and b differ in blocks {diff:?}",
                n.cycles
            );
            n.divergent += 1;
        }
        eprintln!("cycle {} ({what}): checked", n.cycles);
    }
    let t = track.lock();
    println!(
        "torture: {} cycles in {} s ({} power cuts, {} kills of b, {} link faults, {} new points in time, {} restores, {} cache toggles, {} fio verify passes; {} tracked writes, {} flushes): {} lost, {} corrupt, {} divergent",
        n.cycles,
        start.elapsed().as_secs(),
        n.power_cuts,
        n.kills_of_b,
        n.link_faults,
        n.updates,
        n.restores,
        n.cache_toggles,
        n.verify_passes,
        t.writes,
        t.flushes,
        n.lost,
        n.corrupt,
        n.divergent
    );
    assert!(
        n.lost == 0 && n.corrupt == 0 && n.divergent == 0,
        "torture found problems (seed {seed}): {n:?}"
    );
}
