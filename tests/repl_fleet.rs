//! Several secondaries per set, driven by the CLI against real daemons:
//! three hosts in network namespaces (one sync and one hybrid secondary,
//! one link cut while the other replicates), and promotions (planned and
//! forced) after which the remaining secondary follows the new primary
//! with an update sync.

mod common;

use common::netns::Switch;
use common::repl::{all_settled, enable_args, info, leg, mesh, node_trusting, wait_for, wait_role};
use common::*;
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "fleet-test-secret-0123456789";
const VOL: u64 = 32 << 20;
const CHUNK: u64 = 64 << 10;

/// A secondary whose marks (chunks another member may lack) are down to
/// a few: release rounds caught up.
fn released(v: &serde_json::Value) -> bool {
    v["out_of_sync_bytes"].as_u64().unwrap_or(u64::MAX) <= 8 * CHUNK
}

/// A sparse file of the volume's size holding `seed`-filled 4 KiB blocks
/// at `blocks` (one per 64 KiB chunk each, so chunks changed = blocks).
fn blocks_file(dir: &Path, blocks: &[u64], seed: u8) -> std::path::PathBuf {
    use std::os::unix::fs::FileExt;
    let p = dir.join(format!("blocks-{seed}.raw"));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(VOL).unwrap();
    for b in blocks {
        f.write_all_at(&[seed; 4096], b * CHUNK).unwrap();
    }
    p
}

/// Write `blocks` (chunk numbers) of the volume behind `uri` with `seed`;
/// nbdcopy skips the file's holes, so only those blocks are written.
fn write_blocks(dir: &Path, uri: &str, blocks: &[u64], seed: u8) {
    let f = blocks_file(dir, blocks, seed);
    sh(&format!(
        "nbdcopy --destination-is-zero {} '{uri}' && echo ok",
        f.display()
    ));
    std::fs::remove_file(f).unwrap();
}

fn unix_uri(d: &Daemon, vol: &str) -> String {
    let sock = d.dir.path().join(format!("{vol}.nbd.sock"));
    d.ok(&[
        "export",
        "nbd",
        vol,
        "--listen",
        &format!("unix:{}", sock.display()),
    ]);
    format!("nbd+unix:///{vol}?socket={}", sock.display())
}

#[test]
fn three_hosts_sync_and_hybrid_secondaries_and_one_cut_link() {
    require_root();
    require_tool("ip");
    require_tool("nbdcopy");
    let net = Switch::new();
    let host = |h: &str, name: &str, i: u32| {
        let others: Vec<&str> = ["a", "b", "c"].into_iter().filter(|n| *n != name).collect();
        node_trusting(
            Daemon::start_in_netns(&net.ns(h)),
            name,
            &format!("10.78.0.{i}:7800"),
            SECRET,
            &others,
        )
        .0
    };
    let (a, b, c) = (host("A", "a", 1), host("B", "b", 2), host("C", "c", 3));
    let uris: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|d| {
            d.ok(&["volume", "create", "v", "--size", "32M"]);
            unix_uri(d, "v")
        })
        .collect();
    let src = a.dir.path().join("src.raw");
    write_random_file(&src, VOL as usize, 77);
    sh(&format!("nbdcopy {} '{}'", src.display(), uris[0]));
    // A sync secondary nearby, a hybrid one far away: the same set.
    a.ok(&enable_args(
        "s",
        "v",
        "10.78.0.2:7800",
        "v",
        "sync",
        &["--timeout", "2s"],
    ));
    a.ok(&enable_args(
        "s",
        "v",
        "10.78.0.3:7800",
        "v",
        "hybrid",
        &["--timeout", "2s"],
    ));
    let v = info(&a, "s");
    assert_eq!(v["peers"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(leg(&v, "b")["mode"], "sync");
    assert_eq!(leg(&v, "c")["mode"], "hybrid");
    let listed = a.json(&["repl", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "a row per secondary");
    a.ok(&["repl", "sync", "s", "--wait", "--timeout", "120"]);
    wait_for(&a, "s", "settled on both", all_settled, 60);
    let good = sha(&uris[0]);
    assert_eq!(sha(&uris[1]), good);
    assert_eq!(sha(&uris[2]), good);

    // Writes replicate to both.
    write_blocks(a.dir.path(), &uris[0], &[1, 50, 99, 300], 1);
    wait_for(&a, "s", "settled on both", all_settled, 60);
    let good = sha(&uris[0]);
    assert_eq!(sha(&uris[1]), good);
    assert_eq!(sha(&uris[2]), good);
    // Release rounds run about once a second; wait until they cleared
    // what every member holds, so the resync below starts from quiet.
    for d in [&b, &c] {
        wait_for(d, "s", "marks released", released, 60);
    }

    // Cut B's link at the switch: C keeps replicating.
    net.port("B", false);
    let changed: Vec<u64> = (0..30).map(|i| 10 + i * 13).collect();
    write_blocks(a.dir.path(), &uris[0], &changed, 2);
    let v = wait_for(
        &a,
        "s",
        "b logging",
        |v| leg(v, "b")["state"] == "logging",
        30,
    );
    assert!(leg(&v, "b")["out_of_sync_bytes"].as_u64().unwrap() > 0);
    let v = wait_for(
        &a,
        "s",
        "c settled",
        |v| common::repl::settled(leg(v, "c")),
        30,
    );
    assert_eq!(leg(&v, "c")["state"], "replicating");
    assert_eq!(sha(&uris[2]), sha(&uris[0]), "C replicated during the cut");

    // Heal: B resyncs by itself, only the changed chunks.
    net.port("B", true);
    let v = wait_for(&a, "s", "settled on both", all_settled, 90);
    let moved = leg(&v, "b")["sync_total_bytes"].as_u64().unwrap();
    assert!(
        (30 * CHUNK..=40 * CHUNK).contains(&moved),
        "the resync moved {moved} bytes for 30 changed chunks"
    );
    let good = sha(&uris[0]);
    assert_eq!(sha(&uris[1]), good, "B identical after the heal");
    assert_eq!(sha(&uris[2]), good, "C identical");
}

#[test]
fn the_other_secondary_follows_a_promoted_one_with_an_update_sync() {
    require_tool("nbdcopy");
    let [(a, a_addr), (mut b, b_addr), (c, c_addr)] = mesh(["a", "b", "c"], SECRET);
    let _ = a_addr;
    for d in [&a, &b, &c] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    fill(&a, "v", VOL as usize, 3);
    a.ok(&enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        "sync",
        &["--timeout", "2s"],
    ));
    a.ok(&enable_args(
        "s",
        "v",
        &c_addr,
        "v",
        "async",
        &["--timeout", "2s"],
    ));
    a.ok(&["repl", "sync", "s", "--wait", "--timeout", "120"]);
    wait_for(&a, "s", "settled on both", all_settled, 60);
    scribble(&a.addr_of("v"), "v", 50, 4);
    wait_for(&a, "s", "settled on both", all_settled, 60);
    // Release rounds clear what every member holds from the secondaries'
    // marks (the initial sync marked every chunk).
    for d in [&b, &c] {
        wait_for(d, "s", "marks released", released, 60);
    }

    // Planned swap with B: A becomes B's secondary, C follows B.
    a.ok(&["repl", "swap", "s", "--secondary", "b"]);
    let v = wait_for(&b, "s", "settled toward a and c", all_settled, 90);
    assert_eq!(v["role"], "primary");
    assert_eq!(info(&a, "s")["role"], "secondary");
    let cv = info(&c, "s");
    assert_eq!(cv["peer_node"], "b", "C follows B: {cv}");
    let moved = leg(&v, "c")["sync_total_bytes"].as_u64().unwrap();
    assert!(
        moved < 16 * CHUNK,
        "C re-attached with an update sync, not a full one ({moved} bytes)"
    );
    scribble(&b.addr_of("v"), "v", 40, 5);
    wait_for(&b, "s", "settled", all_settled, 60);
    let good = sha(&b.uri_of("v"));
    assert_eq!(sha(&a.uri_of("v")), good);
    assert_eq!(sha(&c.uri_of("v")), good);
    for d in [&a, &c] {
        wait_for(d, "s", "marks released", released, 60);
    }

    // Forced: B dies under writes; C takes over; A follows C.
    // The writer keeps to the first 48 chunks (3 MiB) until B dies.
    let hot = 48u64;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let addr = b.addr_of("v");
        let written = written.clone();
        std::thread::spawn(move || {
            let _ = std::panic::catch_unwind(move || {
                let mut c = common::nbd::NbdClient::connect(&addr, "v");
                for i in 0.. {
                    let off = (i * 7 % (hot * 16)) * 4096;
                    if c.write(off, &[6; 4096], 0) != 0 {
                        return;
                    }
                    written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        })
    };
    // Under writes: B dies once the writer is well under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while written.load(std::sync::atomic::Ordering::SeqCst) < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never got going"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    b.kill9();
    let _ = writer.join();
    wait_for(&c, "s", "link down", |v| v["link"] == "down", 30);
    c.ok(&["repl", "swap", "s", "--force"]);
    let v = wait_for(
        &c,
        "s",
        "a settled",
        |v| common::repl::settled(leg(v, "a")),
        90,
    );
    assert_eq!(info(&a, "s")["peer_node"], "c", "A follows C");
    let moved = leg(&v, "a")["sync_total_bytes"].as_u64().unwrap();
    assert!(
        moved > 0 && moved <= hot * CHUNK,
        "A re-attached with an update sync bounded by the chunks written around the failure ({moved} bytes)"
    );
    scribble(&c.addr_of("v"), "v", 30, 7);
    wait_for(
        &c,
        "s",
        "a settled",
        |v| common::repl::settled(leg(v, "a")),
        60,
    );
    assert_eq!(sha(&a.uri_of("v")), sha(&c.uri_of("v")));

    // B comes back: C took over while it was away, so it steps down and
    // follows C; all three end identical.
    b.spawn();
    wait_role(&b, "s", "secondary", 60);
    wait_for(&c, "s", "settled on a and b", all_settled, 90);
    let good = sha(&c.uri_of("v"));
    assert_eq!(sha(&a.uri_of("v")), good);
    assert_eq!(sha(&b.uri_of("v")), good);
}

#[test]
fn sync_rate_limits_a_running_sync_and_tune_changes_it() {
    require_tool("nbdcopy");
    let [(a, _), (b, b_addr)] = mesh(["a", "b"], SECRET);
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    fill(&a, "v", VOL as usize, 8);
    a.ok(&enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        "hybrid",
        &["--sync-rate", "4M", "--max-lag", "5s"],
    ));
    let v = info(&a, "s");
    assert_eq!(v["sync_rate"], 4 << 20);
    assert_eq!(v["max_lag_ms"], 5000);
    a.ok(&["repl", "sync", "s"]);
    let done0 = wait_for(
        &a,
        "s",
        "a sync under way",
        |v| v["sync_done_bytes"].as_u64().unwrap_or(0) > 0,
        60,
    )["sync_done_bytes"]
        .as_u64()
        .unwrap();
    // The measuring window (not a wait for a state).
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let done = info(&a, "s")["sync_done_bytes"].as_u64().unwrap() - done0;
    let secs = t0.elapsed().as_secs_f64();
    // 4 MiB/s; allow 512 KiB for chunks in flight and the time between
    // reading the start figure and starting the clock.
    assert!(
        done as f64 <= 4.0 * (1 << 20) as f64 * secs + (512 << 10) as f64,
        "a sync at 4 MiB/s moved {done} bytes in {secs:.2} s"
    );
    // Lifted on the running sync: it completes.
    a.ok(&["repl", "tune", "s", "--sync-rate", "0"]);
    assert!(info(&a, "s")["sync_rate"].is_null());
    a.ok(&["repl", "wait", "s", "--timeout", "60"]);
    assert_eq!(sha(&a.uri_of("v")), sha(&b.uri_of("v")));
    // Bad values are refused with a clear error.
    let out = a.cli(&["repl", "tune", "s", "--sync-rate", "fast"]);
    assert!(!out.status.success());
    let out = a.cli(&["repl", "tune", "nope", "--sync-rate", "1M"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn a_primary_with_two_secondaries_comes_back_after_kill9() {
    require_tool("nbdcopy");
    let [(mut a, _), (b, b_addr), (c, c_addr)] = mesh(["a", "b", "c"], SECRET);
    for d in [&a, &b, &c] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    a.ok(&enable_args("s", "v", &b_addr, "v", "sync", &["--no-sync"]));
    a.ok(&enable_args(
        "s",
        "v",
        &c_addr,
        "v",
        "hybrid",
        &["--no-sync"],
    ));
    wait_for(&a, "s", "settled on both", all_settled, 60);
    a.kill9();
    a.spawn();
    let v = wait_for(
        &a,
        "s",
        "settled on both after the restart",
        all_settled,
        60,
    );
    assert_eq!(v["peers"].as_array().unwrap().len(), 2);
    scribble(&a.addr_of("v"), "v", 20, 1);
    wait_for(&a, "s", "settled on both", all_settled, 60);
    let good = sha(&a.uri_of("v"));
    assert_eq!(sha(&b.uri_of("v")), good);
    assert_eq!(sha(&c.uri_of("v")), good);
}
