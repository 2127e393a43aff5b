//! Replication round 2 through real daemons and the CLI: the admin lock is
//! never held across a peer request, generations decide the sync direction
//! by themselves, and split brain is detected, kept and resolved.

mod common;

use common::repl::{
    differing_blocks, enable_args, info, node, settle, wait_acked, wait_state, writer,
};
use common::{fill, nbd_read_only, require_tool, scribble, sha, Daemon, EventLog};
use std::time::{Duration, Instant};
use umbra::services::repl::proxy::{Fault, FaultProxy};

const SECRET: &str = "generations-secret-0001";

#[test]
fn enables_toward_each_other_at_once_never_block_status() {
    let (a, a_addr) = node("east", SECRET, "west");
    let (b, b_addr) = node("west", SECRET, "east");
    for d in [&a, &b] {
        d.ok(&["volume", "create", "mine", "--size", "8M"]);
        d.ok(&["volume", "create", "theirs", "--size", "8M"]);
    }
    // Every peer request crawls (300 ms each way), so both enables are in
    // their peer request at the same moment, each needing the other
    // daemon to answer.
    let to_b = FaultProxy::start("127.0.0.1:0", &b_addr).unwrap();
    let to_a = FaultProxy::start("127.0.0.1:0", &a_addr).unwrap();
    to_b.set_delay(Duration::from_millis(300));
    to_a.set_delay(Duration::from_millis(300));
    std::thread::scope(|sc| {
        let ea = sc.spawn(|| {
            a.cli(&enable_args(
                "e2w",
                "mine",
                &to_b.addr,
                "theirs",
                "async",
                &[],
            ))
        });
        let eb = sc.spawn(|| {
            b.cli(&enable_args(
                "w2e",
                "mine",
                &to_a.addr,
                "theirs",
                "async",
                &[],
            ))
        });
        let mut worst = Duration::ZERO;
        let mut samples = 0;
        while !(ea.is_finished() && eb.is_finished()) {
            for d in [&a, &b] {
                let t = Instant::now();
                d.ok(&["status"]);
                worst = worst.max(t.elapsed());
                samples += 1;
            }
        }
        let (ra, rb) = (ea.join().unwrap(), eb.join().unwrap());
        assert!(
            ra.status.success(),
            "{}",
            String::from_utf8_lossy(&ra.stderr)
        );
        assert!(
            rb.status.success(),
            "{}",
            String::from_utf8_lossy(&rb.stderr)
        );
        assert!(
            samples >= 4,
            "the enables were too quick to overlap ({samples} samples)"
        );
        assert!(
            worst < Duration::from_secs(1),
            "status took {worst:?} while enables waited on their peers"
        );
    });
    assert_eq!(info(&a, "e2w")["role"], "primary");
    assert_eq!(info(&a, "w2e")["role"], "secondary");
    assert_eq!(info(&b, "w2e")["role"], "primary");
    assert_eq!(info(&b, "e2w")["role"], "secondary");
}

#[test]
fn generations_pick_the_sync_direction_by_themselves() {
    require_tool("nbdcopy");
    let (mut a, _) = node("a", SECRET, "b");
    let (mut b, b_addr) = node("b", SECRET, "a");
    a.ok(&["volume", "create", "v", "--size", "32M"]);
    b.ok(&["volume", "create", "v", "--size", "32M"]);
    a.export_nbd("v");
    b.export_nbd("v");
    fill(&a, "v", 32 << 20, 7);
    a.ok(&enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        "hybrid",
        &["--timeout", "2s"],
    ));
    a.ok(&["repl", "sync", "s", "--wait"]);
    settle(&a, "s");
    let g0 = info(&a, "s")["generations"].clone();
    assert_eq!(info(&b, "s")["generations"]["current"], g0["current"]);
    // A `repl sync --wait` on a set that replicates succeeds at once.
    a.ok(&["repl", "sync", "s", "--wait"]);

    // The secondary is away while the primary writes: a new generation
    // starts on the primary, and when the secondary returns the primary
    // syncs it by itself.
    b.kill9();
    scribble(&a.addr_of("v"), "v", 64, 3);
    wait_state(&a, "s", "logging", 30);
    let g1 = info(&a, "s")["generations"].clone();
    assert_ne!(
        g1["current"], g0["current"],
        "logging writes start a generation"
    );
    assert_eq!(g1["history"][0], g0["current"]);
    b.spawn();
    let ev_a = EventLog::follow(&a);
    settle(&a, "s");
    assert_eq!(sha(&a.uri_of("v")), sha(&b.uri_of("v")));
    assert_eq!(info(&b, "s")["generations"]["current"], g1["current"]);

    // The primary restarts after kill -9 and writes before it reconnects:
    // its peer is an ancestor, not a split brain.
    a.kill9();
    a.spawn();
    let ev_a2 = EventLog::follow(&a);
    scribble(&a.addr_of("v"), "v", 32, 4);
    settle(&a, "s");
    assert_eq!(sha(&a.uri_of("v")), sha(&b.uri_of("v")));
    assert!(ev_a.of_kind("repl.split_brain").is_empty());
    assert!(ev_a2.of_kind("repl.split_brain").is_empty());
    assert_ne!(info(&a, "s")["state"], "split brain");
}

/// Role changes while clients write to both nodes (the secondary's
/// writer is refused until it is the primary): the stack never serves a
/// write with neither the secondary's guard nor the primary's layer in
/// it, so every acknowledged write is tracked and the copies converge.
#[test]
fn swaps_under_writers_on_both_nodes_leave_no_write_untracked() {
    require_tool("nbdcopy");
    let (a, _) = node("a", SECRET, "b");
    let (b, b_addr) = node("b", SECRET, "a");
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "16M"]);
        d.export_nbd("v");
    }
    a.ok(&enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        "sync",
        &["--no-sync", "--timeout", "2s"],
    ));
    settle(&a, "s");
    // The secondary's export is offered read-only; the primary's is not.
    assert!(
        nbd_read_only(&b.uri_of("v")),
        "a secondary offers read-only"
    );
    assert!(!nbd_read_only(&a.uri_of("v")));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = [
        writer(a.addr_of("v"), 0xa, stop.clone()),
        writer(b.addr_of("v"), 0xb, stop.clone()),
    ];
    wait_acked(&writers[0].1, "a", 30);
    let t0 = Instant::now();
    let mut swapped = Vec::new();
    for round in 0..12 {
        let (p, s) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        // The swap's drain may see a write still in flight: retry.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = p.cli(&["repl", "swap", "s"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "swap {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        swapped.push(t0.elapsed());
        assert_eq!(info(s, "s")["role"], "primary", "swap {round}");
        if round == 0 {
            // New connections see the roles as they are now.
            assert!(
                nbd_read_only(&a.uri_of("v")),
                "the old primary is read-only now"
            );
            assert!(!nbd_read_only(&b.uri_of("v")));
        }
        settle(s, "s");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acks: Vec<Vec<(Instant, u64)>> = writers
        .into_iter()
        .map(|(h, acks)| {
            h.join().unwrap();
            let v = acks.lock().clone();
            v
        })
        .collect();
    assert!(
        acks.iter().all(|v| !v.is_empty()),
        "both writers were acknowledged as primaries: {:?}",
        acks.iter().map(Vec::len).collect::<Vec<_>>()
    );
    settle(&a, "s");
    let differ = differing_blocks(&a, &b, "v");
    // For a difference: when each writer had that block acknowledged,
    // against the swaps' times.
    let history: Vec<(usize, Vec<Vec<Duration>>)> = differ
        .iter()
        .map(|&(blk, _, _)| {
            let at = |v: &Vec<(Instant, u64)>| {
                v.iter()
                    .filter(|(_, b)| *b == blk as u64)
                    .map(|(t, _)| t.saturating_duration_since(t0))
                    .collect()
            };
            (blk, acks.iter().map(at).collect())
        })
        .collect();
    assert!(
        differ.is_empty(),
        "blocks differ after the swaps (block, byte on a, byte on b): {differ:x?}; acknowledged (a's writer, b's): {history:?}; swaps at {swapped:?}; a: {}; b: {}",
        info(&a, "s"),
        info(&b, "s")
    );
}

#[test]
fn split_brain_is_detected_both_sides_kept_and_resolved_with_an_update_sync() {
    require_tool("nbdcopy");
    for discard_on_a in ["here", "peer"] {
        let (a, _) = node("a", SECRET, "b");
        let (b, b_addr) = node("b", SECRET, "a");
        a.ok(&["volume", "create", "v", "--size", "32M"]);
        b.ok(&["volume", "create", "v", "--size", "32M"]);
        a.export_nbd("v");
        b.export_nbd("v");
        fill(&a, "v", 32 << 20, 11);
        let proxy = FaultProxy::start("127.0.0.1:0", &b_addr).unwrap();
        a.ok(&enable_args(
            "s",
            "v",
            &proxy.addr,
            "v",
            "async",
            &["--timeout", "2s"],
        ));
        a.ok(&["repl", "sync", "s", "--wait"]);
        settle(&a, "s");
        let ev_a = EventLog::follow(&a);
        let ev_b = EventLog::follow(&b);
        // Partition: the primary goes on alone and writes.
        proxy.set_fault(Fault::Partition);
        proxy.drop_connections();
        wait_state(&a, "s", "logging", 30);
        scribble(&a.addr_of("v"), "v", 40, 21);
        // The secondary is promoted by force and writes too.
        b.ok(&["repl", "swap", "s", "--force"]);
        scribble(&b.addr_of("v"), "v", 30, 22);
        // B reaches A (its path to A is not partitioned): both notice.
        ev_b.wait_for("repl.split_brain", Duration::from_secs(30));
        ev_a.wait_for("repl.split_brain", Duration::from_secs(30));
        let (sa, sb) = (sha(&a.uri_of("v")), sha(&b.uri_of("v")));
        assert_ne!(sa, sb);
        proxy.set_fault(Fault::Pass);
        for d in [&a, &b] {
            let v = info(d, "s");
            assert_eq!(v["state"], "split brain", "{v}");
            assert_eq!(v["role"], "primary");
        }
        // Healed, nothing replicates: autosync retries every few hundred
        // ms, so after two seconds both sides still hold their own data.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(sha(&a.uri_of("v")), sa);
        assert_eq!(sha(&b.uri_of("v")), sb);
        let e = a.cli(&["repl", "sync", "s"]);
        assert!(!e.status.success());
        assert!(String::from_utf8_lossy(&e.stderr).contains("repl resolve"));
        // Resolve in B's favour, from either side.
        if discard_on_a == "here" {
            a.ok(&["repl", "resolve", "s", "--discard", "here"]);
        } else {
            b.ok(&["repl", "resolve", "s", "--discard", "peer"]);
        }
        let v = settle(&b, "s");
        assert_eq!(info(&a, "s")["role"], "secondary");
        let moved = v["sync_total_bytes"].as_u64().unwrap();
        assert!(
            moved > 0 && moved < 32 << 20,
            "an update sync from the union of both bitmaps, not a full one: {moved} bytes"
        );
        assert_eq!(sha(&a.uri_of("v")), sb, "A converged to B's data");
        assert_eq!(sha(&b.uri_of("v")), sb, "B kept its data");
    }
}

/// Overwrite 100 bytes in each of `chunks` (64 KiB chunks) of a backing
/// file behind umbra's back.
fn corrupt(path: &std::path::Path, chunks: &[u64], seed: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for c in chunks {
        f.write_all_at(&[seed; 100], c * 65536 + 1000).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn verify_finds_exactly_the_corrupted_chunks_and_checksum_resync_moves_only_them() {
    require_tool("nbdcopy");
    let (a, _) = node("a", SECRET, "b");
    let (b, b_addr) = node("b", SECRET, "a");
    a.ok(&["volume", "create", "v", "--size", "32M"]);
    b.ok(&["volume", "create", "v", "--size", "32M"]);
    a.export_nbd("v");
    b.export_nbd("v");
    fill(&a, "v", 32 << 20, 5);
    a.ok(&enable_args("s", "v", &b_addr, "v", "sync", &[]));
    a.ok(&["repl", "sync", "s", "--wait"]);
    settle(&a, "s");
    let good = sha(&a.uri_of("v"));
    assert_eq!(sha(&b.uri_of("v")), good);
    let b_file = b.data_dir().join("v.img");

    // Corrupt three chunks of the secondary; verify while a writer runs.
    let bad = [3u64, 200, 511];
    corrupt(&b_file, &bad, 0xEE);
    let writer = {
        let addr = a.addr_of("v");
        std::thread::spawn(move || scribble(&addr, "v", 50, 9))
    };
    let v = a.json(&["repl", "verify", "s", "--wait"]);
    writer.join().unwrap();
    let r = &v["verify"];
    assert_eq!(r["running"], false);
    assert_eq!(r["chunks_done"], 512);
    assert!(r["error"].is_null(), "{r}");
    // The writer's blocks (scribble seed 9) miss the corrupted bytes
    // (1000..1100 of each bad chunk), so exactly the bad chunks differ;
    // the comparison with the volumes themselves says the same.
    let differing: Vec<u64> = r["differing_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    let truth = diff_chunks(&a, &b, "v");
    assert_eq!(
        differing, truth,
        "verify found {differing:?}, the volumes differ in {truth:?}"
    );
    assert_eq!(truth, bad.to_vec());
    assert_eq!(
        info(&a, "s")["out_of_sync_bytes"],
        (truth.len() as u64) * 65536
    );
    // An update sync repairs exactly those chunks.
    a.ok(&["repl", "sync", "s", "--wait"]);
    let v = settle(&a, "s");
    assert_eq!(v["sync_total_bytes"], (truth.len() as u64) * 65536);
    assert_eq!(sha(&a.uri_of("v")), sha(&b.uri_of("v")));

    // A checksum resync after "a restore from backup" on the secondary:
    // every chunk is a candidate, only the corrupted ones are sent.
    corrupt(&b_file, &bad, 0x11);
    a.ok(&["repl", "log", "s"]);
    a.ok(&["repl", "sync", "s", "--full", "--checksum", "--wait"]);
    let v = settle(&a, "s");
    assert_eq!(v["sync_done_bytes"], (bad.len() as u64) * 65536, "{v}");
    assert_eq!(sha(&a.uri_of("v")), sha(&b.uri_of("v")));
}

/// The 64 KiB chunks in which two daemons' exports of `volume` differ.
fn diff_chunks(a: &Daemon, b: &Daemon, volume: &str) -> Vec<u64> {
    let dump = |d: &Daemon| {
        let p = d.dir.path().join("dump.raw");
        common::sh(&format!("nbdcopy '{}' {}", d.uri_of(volume), p.display()));
        std::fs::read(&p).unwrap()
    };
    let (x, y) = (dump(a), dump(b));
    x.chunks(65536)
        .zip(y.chunks(65536))
        .enumerate()
        .filter(|(_, (p, q))| p != q)
        .map(|(i, _)| i as u64)
        .collect()
}
