//! The cluster agent against a real etcd (Debian's etcd-server, started
//! here): automatic failover to the best candidate by priority, the
//! other replica following the new primary, the lock and owner records
//! in etcd, and the old primary rejoining as a secondary by itself.

mod common;

use common::cluster::{assert_converged, cluster_status, join, owner, wait_owners};
use common::etcd::Etcd;
use common::repl::{
    all_settled, enable_args, info, leg, mesh, wait_acked, wait_for, wait_role, writer,
};
use common::*;
use std::time::{Duration, Instant};

const KEY: &str = "cluster-test-secret-0123456789";

/// Two nodes A and B, volume `v` (32 MiB, exported over NBD) on each,
/// set `s` replicating it from A to B in `mode`, settled.
fn two_sites(mode: &str) -> [Daemon; 2] {
    let [(a, _), (b, b_addr)] = mesh(["a", "b"], KEY);
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    a.ok(&enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        mode,
        &["--no-sync", "--timeout", "2s"],
    ));
    wait_for(&a, "s", "settled", common::repl::settled, 30);
    [a, b]
}

/// A proxy in front of the (single) etcd member, which a test can cut to
/// separate one node from etcd only.
fn etcd_proxy(etcd: &Etcd) -> std::sync::Arc<umbra::services::repl::proxy::FaultProxy> {
    let addr = etcd.members[0].client.trim_start_matches("http://");
    umbra::services::repl::proxy::FaultProxy::start("127.0.0.1:0", addr).unwrap()
}

#[test]
fn the_best_candidate_takes_over_a_dead_primary_and_the_old_one_rejoins() {
    require_tool("nbdcopy");
    let etcd = Etcd::start(1);
    let [(mut a, _), (b, b_addr), (c, c_addr)] = mesh(["a", "b", "c"], KEY);
    for d in [&a, &b, &c] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    fill(&a, "v", 32 << 20, 5);
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
        "sync",
        &["--timeout", "2s"],
    ));
    a.ok(&["repl", "sync", "s", "--wait", "--timeout", "120"]);
    wait_for(&a, "s", "settled on both", all_settled, 60);
    a.ok(&["group", "policy", "s", "--auto-failover", "on"]);
    // C is the loaded one: B must win.
    for d in [&a, &b, &c] {
        join(d, &etcd.endpoints(), "t", 3);
    }
    c.ok(&["cluster", "priority", "--bias", "100000"]);
    wait_owners(&b, &[("s", "a")], 30);
    let st = cluster_status(&b);
    assert_eq!(st["members"].as_array().unwrap().len(), 3, "{st}");
    // The group's definition lives in etcd (written by its production
    // node), and `group verify` checks every member against it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let def = loop {
        let d = cluster_status(&b)["groups"][0]["definition"].clone();
        if !d.is_null() {
            break d;
        }
        assert!(Instant::now() < deadline, "no definition in etcd");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(def["nodes"], serde_json::json!(["a", "b", "c"]), "{def}");
    assert_eq!(def["sets"][0]["name"], "s", "{def}");
    assert_eq!(def["policy"]["auto_failover"], true, "{def}");
    for d in [&b, &c] {
        let v = d.json(&["group", "verify", "s"]);
        assert_eq!(v["consistent"], true, "{v}");
        assert_eq!(v["etcd"]["definition"]["sets"], def["sets"], "{v}");
    }
    // The candidates' list lives in etcd too: both secondaries, consistent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = cluster_status(&b);
        let cands: Vec<String> = st["groups"][0]["candidates"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|c| c["consistent"] == true)
                    .map(|c| c["node"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if cands == ["b", "c"] {
            break;
        }
        assert!(Instant::now() < deadline, "candidates in etcd: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }

    scribble(&a.addr_of("v"), "v", 40, 6);
    let good = sha(&a.uri_of("v"));
    a.kill9();
    let t0 = Instant::now();
    let v = wait_role(&b, "s", "primary", 60);
    let took = t0.elapsed();
    assert_eq!(v["role"], "primary");
    assert!(
        took < Duration::from_secs(3 + 2 + 10),
        "failover took {took:?} (TTL 3 s, voting window, a takeover)"
    );
    wait_owners(&c, &[("s", "b")], 20);
    assert_eq!(
        info(&c, "s")["role"],
        "secondary",
        "the loaded candidate stayed out"
    );
    // Sync mode: nothing acknowledged was lost.
    assert_eq!(sha(&b.uri_of("v")), good);
    // C follows B; writes on B reach it.
    wait_for(
        &b,
        "s",
        "c following",
        |v| common::repl::settled(leg(v, "c")),
        60,
    );
    scribble(&b.addr_of("v"), "v", 30, 7);
    wait_for(
        &b,
        "s",
        "c settled",
        |v| common::repl::settled(leg(v, "c")),
        60,
    );
    assert_eq!(sha(&c.uri_of("v")), sha(&b.uri_of("v")));

    // A comes back: B holds the lock, so A joins as a secondary by itself.
    a.spawn();
    wait_role(&a, "s", "secondary", 60);
    wait_for(&b, "s", "settled on a and c", all_settled, 90);
    assert_eq!(sha(&a.uri_of("v")), sha(&b.uri_of("v")));
    eprintln!("failover took {took:?}");
}

#[test]
fn a_primary_cut_from_etcd_fences_itself_before_another_takes_over() {
    use umbra::services::repl::proxy::Fault;
    require_tool("nbdcopy");
    let etcd = Etcd::start(1);
    let [mut a, b] = two_sites("sync");
    a.ok(&["group", "policy", "s", "--auto-failover", "on"]);
    // A reaches etcd only through a proxy the test can cut.
    let proxy = etcd_proxy(&etcd);
    join(&a, &format!("http://{}", proxy.addr), "f", 3);
    join(&b, &etcd.endpoints(), "f", 3);
    wait_owners(&b, &[("s", "a")], 30);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (wa, acks_a) = writer(a.addr_of("v"), 0xa, stop.clone());
    let (wb, acks_b) = writer(b.addr_of("v"), 0xb, stop.clone());
    wait_acked(&acks_a, "A before the cut", 30);
    // Cut A from etcd only: it still reaches B.
    proxy.set_fault(Fault::Partition);
    proxy.drop_connections();
    wait_role(&b, "s", "primary", 60);
    wait_acked(&acks_b, "B after taking over", 30);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    wa.join().unwrap();
    wb.join().unwrap();
    let (acked_a, acked_b) = (acks_a.lock().clone(), acks_b.lock().clone());
    let last_a = acked_a
        .last()
        .expect("A acknowledged writes before the cut")
        .0;
    let first_b = acked_b
        .first()
        .expect("B acknowledged writes after taking over")
        .0;
    assert!(
        last_a < first_b,
        "A acknowledged a write {:?} after B's first",
        last_a - first_b
    );
    eprintln!(
        "A's last ack {:?} before B's first",
        first_b.duration_since(last_a)
    );
    // B took over with a planned swap (A was reachable): A, still cut
    // from etcd, is B's secondary, and the copies converge: no write of
    // either side slipped past the role change untracked.
    wait_role(&a, "s", "secondary", 60);
    wait_for(&b, "s", "settled", common::repl::settled, 60);
    assert_converged(&a, &b, "the swap");
    // The cut heals: A's agent finds B holding the lock and joins it
    // (with a new lease: the old one expired), and they stay converged.
    proxy.set_fault(Fault::Pass);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster_status(&a)["fenced_groups"] != serde_json::json!([]) {
        assert!(
            Instant::now() < deadline,
            "A never rejoined: {}",
            cluster_status(&a)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_role(&a, "s", "secondary", 60);
    wait_for(&b, "s", "settled", common::repl::settled, 60);
    scribble(&b.addr_of("v"), "v", 20, 9);
    wait_for(&b, "s", "settled", common::repl::settled, 60);
    assert_converged(&a, &b, "the rejoin");
    a.stop();
    proxy.stop();
}

/// The `block` fence: a production node cut from etcd holds its writers
/// (no error, no acknowledgement) instead of failing them, and when the
/// cut heals before anyone takes over (here nobody may: no automatic
/// failover) the held writes complete and writing goes on.
#[test]
fn a_block_fence_holds_writes_and_releases_them_when_the_lease_is_back() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use umbra::services::repl::proxy::Fault;
    let etcd = Etcd::start(1);
    let [a, b] = two_sites("sync");
    a.ok(&["group", "policy", "s", "--fence", "block"]);
    assert_eq!(
        a.json(&["group", "status", "s"])["policy"]["fence"],
        "block"
    );
    let proxy = etcd_proxy(&etcd);
    join(&a, &format!("http://{}", proxy.addr), "blk", 3);
    join(&b, &etcd.endpoints(), "blk", 3);
    wait_owners(&b, &[("s", "a")], 30);
    // A writer that counts what it got back.
    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let w = {
        let (ok, failed, stop, addr) = (ok.clone(), failed.clone(), stop.clone(), a.addr_of("v"));
        std::thread::spawn(move || {
            let mut c = common::nbd::NbdClient::connect(&addr, "v");
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                match c.write((i % 2048) * 4096, &[9; 4096], 0) {
                    0 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
            c.disconnect();
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::SeqCst) < 10 {
        assert!(Instant::now() < deadline, "the writer made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.set_fault(Fault::Partition);
    proxy.drop_connections();
    // Fenced within 2/3 of the TTL: the writer is held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster_status(&a)["fenced_groups"] != serde_json::json!(["s"]) {
        assert!(
            Instant::now() < deadline,
            "A never fenced: {}",
            cluster_status(&a)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let held_at = ok.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        ok.load(Ordering::SeqCst) <= held_at + 1,
        "writes were acknowledged while fenced"
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0, "a held write failed");
    // The cut heals: a new lease, the lock again, the writes complete.
    proxy.set_fault(Fault::Pass);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok.load(Ordering::SeqCst) < held_at + 20 {
        assert!(
            Instant::now() < deadline,
            "the held writes never resumed: {}",
            cluster_status(&a)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no write failed at all");
    assert_eq!(owner(&b, "s").as_deref(), Some("a"));
    assert_eq!(info(&a, "s")["role"], "primary");
    drop(proxy);
}

/// Planned swaps move the group's lock with the group; `cluster leave`
/// hands every production group over first (a planned swap), then gives up
/// its lease: the other node is production and holds the lock, the leaver
/// is gone from etcd; leaving again changes nothing.
#[test]
fn leaving_the_cluster_hands_groups_over_first() {
    require_tool("nbdcopy");
    let etcd = Etcd::start(1);
    let [a, b] = two_sites("sync");
    scribble(&a.addr_of("v"), "v", 20, 3);
    wait_for(&a, "s", "settled", common::repl::settled, 30);
    for d in [&a, &b] {
        join(d, &etcd.endpoints(), "lv", 3);
    }
    wait_owners(&b, &[("s", "a")], 30);
    // A planned swap moves the lock with the group: the old holder gives
    // it up, the new production node takes it and is not fenced.
    a.ok(&["group", "swap", "s"]);
    wait_owners(&a, &[("s", "b")], 30);
    assert_eq!(cluster_status(&b)["fenced_groups"], serde_json::json!([]));
    scribble(&b.addr_of("v"), "v", 10, 4);
    b.ok(&["group", "swap", "s"]);
    wait_owners(&b, &[("s", "a")], 30);
    assert_eq!(cluster_status(&a)["fenced_groups"], serde_json::json!([]));
    wait_for(&a, "s", "settled", common::repl::settled, 30);
    let good = sha(&a.uri_of("v"));
    a.ok(&["cluster", "leave"]);
    assert_eq!(
        info(&b, "s")["role"],
        "primary",
        "handed over before leaving"
    );
    assert_eq!(info(&a, "s")["role"], "secondary");
    wait_owners(&b, &[("s", "b")], 30);
    let members = cluster_status(&b)["members"].clone();
    assert!(
        members.as_array().unwrap().iter().all(|m| m["node"] != "a"),
        "a is gone from etcd: {members}"
    );
    assert_eq!(sha(&b.uri_of("v")), good);
    // Leaving again is a no-op success.
    let again = a.json(&["cluster", "leave"]);
    assert!(again["cluster"].is_null(), "{again}");
}

#[test]
fn etcd_member_loss_changes_nothing_and_a_full_outage_fails_nothing_over() {
    require_tool("nbdcopy");
    let mut etcd = Etcd::start(3);
    let [a, b] = two_sites("async");
    a.ok(&["group", "policy", "s", "--auto-failover", "on"]);
    for d in [&a, &b] {
        join(d, &etcd.endpoints(), "o", 9);
    }
    wait_owners(&b, &[("s", "a")], 30);
    let ev = common::EventLog::follow(&a);
    // One member of three goes: quorum holds, nothing changes.
    etcd.kill(0);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(owner(&b, "s").as_deref(), Some("a"));
    assert_eq!(info(&a, "s")["role"], "primary");
    scribble(&a.addr_of("v"), "v", 20, 1);
    // All of etcd goes: nobody can take over, so writes go on (every
    // peer says it cannot reach etcd either) and the events say so.
    etcd.kill(1);
    etcd.kill(2);
    ev.wait_for("cluster.etcd_unreachable", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(18)); // two TTLs
    assert_eq!(info(&a, "s")["role"], "primary");
    assert_eq!(info(&b, "s")["role"], "secondary");
    assert!(
        ev.of_kind("cluster.fenced").is_empty(),
        "no fencing in an outage"
    );
    scribble(&a.addr_of("v"), "v", 20, 2); // asserts every write succeeds
    wait_for(&a, "s", "settled", common::repl::settled, 30);
    assert_eq!(sha(&a.uri_of("v")), sha(&b.uri_of("v")));
}

#[test]
fn what_the_first_candidate_cannot_serve_cascades_to_the_next() {
    require_tool("nbdcopy");
    let etcd = Etcd::start(1);
    let [(mut a, _), (b, b_addr), (c, c_addr)] = mesh(["a", "b", "c"], KEY);
    for d in [&a, &b, &c] {
        for v in ["v1", "v2"] {
            d.ok(&["volume", "create", v, "--size", "32M"]);
            d.export_nbd(v);
        }
    }
    for (set, vol) in [("s1", "v1"), ("s2", "v2")] {
        for addr in [&b_addr, &c_addr] {
            a.ok(&enable_args(
                set,
                vol,
                addr,
                vol,
                "sync",
                &["--no-sync", "--timeout", "2s"],
            ));
        }
        wait_for(&a, set, "settled", all_settled, 60);
        a.ok(&["group", "policy", set, "--auto-failover", "on"]);
    }
    // B's copy of s2 is cut mid-resync: it cannot serve s2.
    a.ok(&["repl", "log", "s2", "--secondary", "b"]);
    fill(&a, "v2", 32 << 20, 3);
    a.ok(&[
        "repl",
        "tune",
        "s2",
        "--secondary",
        "b",
        "--sync-rate",
        "1M",
    ]);
    a.ok(&["repl", "sync", "s2", "--secondary", "b"]);
    wait_for(
        &b,
        "s2",
        "in a resync",
        |v| !v["safety_snapshot"].is_null(),
        30,
    );
    for d in [&a, &b, &c] {
        join(d, &etcd.endpoints(), "k", 3);
    }
    c.ok(&["cluster", "priority", "--bias", "100000"]); // B is the first candidate
    wait_owners(&b, &[("s1", "a"), ("s2", "a")], 30);
    let ev_b = common::EventLog::follow(&b);
    a.kill9();
    wait_role(&b, "s1", "primary", 60);
    wait_role(&c, "s2", "primary", 60);
    wait_owners(&c, &[("s1", "b"), ("s2", "c")], 20);
    let refused = ev_b.wait_for("cluster.refused", Duration::from_secs(10));
    assert_eq!(refused["object"], "s2", "{refused}");
    assert_eq!(info(&b, "s2")["role"], "secondary");
    assert_eq!(info(&c, "s1")["role"], "secondary");
}
