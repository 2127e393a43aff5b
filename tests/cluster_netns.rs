//! Seed 004 across hosts: three umbra nodes in network namespaces on one
//! bridge, etcd on the switch, two groups each replicated from A to both
//! other nodes. fio writes a verifiable pattern, then A is killed with -9
//! under fio load; the less loaded candidate takes both groups over, the
//! clients reconnect to it and fio's verify passes, and the lock and
//! owner records in etcd say so. Then the old primary comes back (as a
//! secondary, by itself) and the new one dies: priority picks the other
//! candidate again. And fencing: a production node cut from the etcd
//! network only (it still reaches its peer) stops acknowledging writes
//! before its lease can expire, the peer takes over, and when the cut
//! heals it rejoins as a secondary and the copies converge; a primary
//! isolated from everything; one that lost its peers before etcd (their
//! outdated copies never take over); and the cascade of a group the first
//! candidate cannot serve to the next.

mod common;

use common::cluster::{assert_converged, cluster_status, join, owner, wait_owners};
use common::etcd::Etcd;
use common::netns::{host_ip, Switch, CONTROL_IP, SWITCH_IP};
use common::repl::{
    all_settled, enable_args, leg, node_trusting, wait_acked, wait_for, wait_role, writer_in,
};
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "cluster-netns-secret-0123456789";
const NBD_PORT: u16 = 10809;

/// fio's NBD engine, run on the switch (a client host of its own).
fn fio(net: &Switch, host: &str, vol: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &net.ns("S"),
        "fio",
        "--name=j",
        "--ioengine=nbd",
    ])
    .arg(format!("--uri=nbd://{}:{NBD_PORT}/{vol}", host_ip(host)))
    .args(args)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

/// The verifiable pattern: every 4 KiB block of the first 8 MiB carries a
/// crc32c header fio checks later.
const PATTERN: [&str; 5] = [
    "--rw=write",
    "--bs=4k",
    "--size=8M",
    "--verify=crc32c",
    "--do_verify=0",
];

/// Node `name` (of a, b, c) on host `h`, its replication listener on the
/// data network, trusting the other two.
fn host(net: &Switch, h: &str, name: &str) -> Daemon {
    let others: Vec<&str> = ["a", "b", "c"].into_iter().filter(|n| *n != name).collect();
    node_trusting(
        Daemon::start_in_netns(&net.ns(h)),
        name,
        &format!("{}:7800", host_ip(h)),
        SECRET,
        &others,
    )
    .0
}

#[test]
fn a_killed_primary_of_two_groups_fails_over_and_fio_verifies_on_the_new_one() {
    require_root();
    require_tool("ip");
    require_tool("fio");
    let net = Switch::new();
    let etcd = Etcd::start_in_netns(&net.ns("S"), SWITCH_IP);
    let (mut a, b, c) = (
        host(&net, "A", "a"),
        host(&net, "B", "b"),
        host(&net, "C", "c"),
    );
    for (d, h) in [(&a, "A"), (&b, "B"), (&c, "C")] {
        for v in ["v1", "v2"] {
            d.ok(&["volume", "create", v, "--size", "32M"]);
            d.ok(&[
                "export",
                "nbd",
                v,
                "--listen",
                &format!("{}:{NBD_PORT}", host_ip(h)),
            ]);
        }
    }
    // Two groups (a set each), each replicated in sync mode from A to B
    // and to C.
    for (set, vol) in [("s1", "v1"), ("s2", "v2")] {
        for peer in ["B", "C"] {
            a.ok(&enable_args(
                set,
                vol,
                &format!("{}:7800", host_ip(peer)),
                vol,
                "sync",
                &["--no-sync", "--timeout", "2s"],
            ));
        }
        wait_for(&a, set, "settled on both", all_settled, 60);
        a.ok(&["group", "policy", set, "--auto-failover", "on"]);
    }
    let endpoint = format!("http://{SWITCH_IP}:2379");
    for d in [&a, &b, &c] {
        d.ok(&[
            "cluster", "join", "--etcd", &endpoint, "--name", "n", "--ttl", "3",
        ]);
    }
    // C is the loaded candidate: B must win both groups.
    c.ok(&["cluster", "priority", "--bias", "100000"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while owner(&b, "s1").as_deref() != Some("a") || owner(&b, "s2").as_deref() != Some("a") {
        assert!(Instant::now() < deadline, "A never held both locks");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The pattern on both groups, acknowledged by B and C (sync mode).
    for vol in ["v1", "v2"] {
        let out = fio(&net, "A", vol, &PATTERN).output().unwrap();
        assert!(
            out.status.success(),
            "fio pattern on {vol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Load elsewhere on the volumes while A dies.
    let loads: Vec<_> = ["v1", "v2"]
        .iter()
        .map(|vol| {
            fio(
                &net,
                "A",
                vol,
                &[
                    "--rw=randwrite",
                    "--bs=4k",
                    "--offset=16M",
                    "--size=8M",
                    "--iodepth=8",
                    "--time_based",
                    "--runtime=30",
                ],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    a.kill9();
    let t0 = Instant::now();
    for set in ["s1", "s2"] {
        wait_role(&b, set, "primary", 60);
    }
    let took = t0.elapsed();
    eprintln!("both groups failed over to B in {took:?}");
    assert!(
        took < Duration::from_secs(3 + 2 + 15),
        "failover took {took:?} (TTL 3 s, voting window, two takeovers)"
    );
    for mut l in loads {
        let _ = l.kill();
        let _ = l.wait();
    }
    // etcd says B owns both; C stayed a secondary and follows B.
    for set in ["s1", "s2"] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while owner(&c, set).as_deref() != Some("b") {
            assert!(Instant::now() < deadline, "etcd never named b for {set}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(common::repl::info(&c, set)["role"], "secondary");
        wait_for(
            &b,
            set,
            "c following",
            |v| common::repl::settled(leg(v, "c")),
            60,
        );
    }
    // The clients reconnect to the new primary: the pattern is all there.
    for vol in ["v1", "v2"] {
        let mut verify: Vec<&str> = PATTERN.to_vec();
        verify[0] = "--rw=read";
        verify[4] = "--do_verify=1";
        let out = fio(&net, "B", vol, &verify).output().unwrap();
        assert!(
            out.status.success(),
            "fio verify on B's {vol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // And B takes new writes.
        let out = fio(
            &net,
            "B",
            vol,
            &["--rw=randwrite", "--bs=4k", "--offset=24M", "--size=1M"],
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "writes on B's {vol}");
    }

    // A second run, other winner: A comes back (it rejoins as B's
    // secondary by itself), then B dies; C is still the loaded one, so A
    // takes both groups.
    a.spawn();
    for set in ["s1", "s2"] {
        wait_role(&a, set, "secondary", 60);
        wait_for(&b, set, "a and c settled", all_settled, 90);
    }
    // B wrote without A (sync mode): etcd recorded A's copies as outdated
    // until they were in sync again; only then is A a candidate.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = b.json(&["cluster", "status"]);
        let marks: Vec<&serde_json::Value> = st["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.get("outdated"))
            .filter(|m| m.as_object().is_some_and(|m| !m.is_empty()))
            .collect();
        if marks.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "A stayed outdated: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut b = b;
    let ev = EventLog::follow(&a);
    b.kill9();
    let t0 = Instant::now();
    for set in ["s1", "s2"] {
        let deadline = Instant::now() + Duration::from_secs(40);
        while common::repl::info(&a, set)["role"] != "primary" {
            assert!(
                Instant::now() < deadline,
                "A never took {set}: {}; events {:?}; c: {}",
                a.json(&["cluster", "status"]),
                ev.of_kind("cluster.refused")
                    .into_iter()
                    .chain(ev.of_kind("cluster.takeover"))
                    .collect::<Vec<_>>(),
                common::repl::info(&c, set)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!("both groups failed over to A in {:?}", t0.elapsed());
    for set in ["s1", "s2"] {
        assert_eq!(
            common::repl::info(&c, set)["role"],
            "secondary",
            "the loaded candidate stayed out again"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while owner(&c, set).as_deref() != Some("a") {
            assert!(Instant::now() < deadline, "etcd never named a for {set}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for vol in ["v1", "v2"] {
        let mut verify: Vec<&str> = PATTERN.to_vec();
        verify[0] = "--rw=read";
        verify[4] = "--do_verify=1";
        let out = fio(&net, "A", vol, &verify).output().unwrap();
        assert!(
            out.status.success(),
            "fio verify on A's {vol} after the second failover: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(etcd);
}

#[test]
fn a_primary_cut_from_the_etcd_network_fences_itself_and_rejoins_when_it_heals() {
    use std::sync::atomic::{AtomicBool, Ordering};
    require_root();
    require_tool("ip");
    require_tool("nbdcopy");
    let net = Switch::new();
    // etcd on the control network only: cutting a host's control port
    // leaves its replication link and its clients alone.
    let etcd = Etcd::start_in_netns(&net.ns("S"), CONTROL_IP);
    let (mut a, b) = (host(&net, "A", "a"), host(&net, "B", "b"));
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    a.ok(&enable_args(
        "s",
        "v",
        &format!("{}:7800", host_ip("B")),
        "v",
        "sync",
        &["--no-sync", "--timeout", "2s"],
    ));
    wait_for(&a, "s", "settled", common::repl::settled, 30);
    a.ok(&["group", "policy", "s", "--auto-failover", "on"]);
    for d in [&a, &b] {
        join(d, &format!("http://{CONTROL_IP}:2379"), "f", 3);
    }
    wait_owners(&b, &[("s", "a")], 30);

    // Writers on both sides all along, each from inside its host.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (wa, acks_a) = writer_in(a.netns.clone(), a.addr_of("v"), 0xa, stop.clone());
    let (wb, acks_b) = writer_in(b.netns.clone(), b.addr_of("v"), 0xb, stop.clone());
    wait_acked(&acks_a, "A before the cut", 30);
    net.control_port("A", false);
    let cut = Instant::now();
    wait_role(&b, "s", "primary", 60);
    let took = cut.elapsed();
    wait_acked(&acks_b, "B after taking over", 30);
    stop.store(true, Ordering::SeqCst);
    wa.join().unwrap();
    wb.join().unwrap();
    let last_a = acks_a.lock().last().expect("A acknowledged writes").0;
    let first_b = acks_b.lock().first().expect("B acknowledged writes").0;
    assert!(
        last_a < first_b,
        "A acknowledged a write {:?} after B's first",
        last_a - first_b
    );
    // Its lease was renewed at the cut at the latest, so it expires at
    // etcd within a TTL of the cut: A stopped acknowledging before that.
    assert!(
        last_a < cut + Duration::from_secs(3),
        "A acknowledged writes {:?} after the cut (TTL 3 s)",
        last_a - cut
    );
    eprintln!(
        "A's last ack {:?} after the cut, {:?} before B's first; B production {took:?} after the cut",
        last_a.saturating_duration_since(cut),
        first_b - last_a
    );
    assert_eq!(owner(&b, "s").as_deref(), Some("b"));
    // A reached B all along: B's takeover was a planned swap, A is its
    // secondary and the copies converge even before the cut heals.
    wait_role(&a, "s", "secondary", 60);
    wait_for(&b, "s", "settled", common::repl::settled, 60);
    assert_converged(&a, &b, "the swap");

    // The cut heals: A finds B holding the lock, gets a lease again, stays
    // B's secondary, and new writes on B reach it.
    net.control_port("A", true);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = cluster_status(&a);
        let back = st["etcd_reachable"] == true
            && st["fenced_groups"] == serde_json::json!([])
            && st["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|n| n["node"] == "a"));
        if back {
            break;
        }
        assert!(Instant::now() < deadline, "A never came back: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(common::repl::info(&a, "s")["role"], "secondary");
    let addr = b.addr_of("v");
    b.in_net(move || scribble(&addr, "v", 20, 9));
    wait_for(&b, "s", "settled", common::repl::settled, 60);
    assert_converged(&a, &b, "the rejoin");
    a.stop();
    drop(etcd);
}

/// A production node cut off from everything (etcd and both its peers;
/// only its own clients still reach it) fences itself before its lease
/// can expire although no peer answers its probe, so its writes stop
/// before the best candidate takes over; back on the network it rejoins
/// as a secondary and the copies converge.
#[test]
fn an_isolated_primary_stops_acknowledging_before_a_candidate_takes_over() {
    use std::sync::atomic::{AtomicBool, Ordering};
    require_root();
    require_tool("ip");
    require_tool("nbdcopy");
    let net = Switch::new();
    let etcd = Etcd::start_in_netns(&net.ns("S"), CONTROL_IP);
    let (mut a, b, c) = (
        host(&net, "A", "a"),
        host(&net, "B", "b"),
        host(&net, "C", "c"),
    );
    for d in [&a, &b, &c] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    for peer in ["B", "C"] {
        a.ok(&enable_args(
            "s",
            "v",
            &format!("{}:7800", host_ip(peer)),
            "v",
            "sync",
            &["--no-sync", "--timeout", "2s"],
        ));
    }
    wait_for(&a, "s", "settled on both", all_settled, 30);
    a.ok(&["group", "policy", "s", "--auto-failover", "on"]);
    for d in [&a, &b, &c] {
        join(d, &format!("http://{CONTROL_IP}:2379"), "i", 3);
    }
    c.ok(&["cluster", "priority", "--bias", "100000"]);
    wait_owners(&b, &[("s", "a")], 30);

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (wa, acks_a) = writer_in(a.netns.clone(), a.addr_of("v"), 0xa, stop.clone());
    let (wb, acks_b) = writer_in(b.netns.clone(), b.addr_of("v"), 0xb, stop.clone());
    wait_acked(&acks_a, "A before the cut", 30);
    net.port("A", false);
    net.control_port("A", false);
    let cut = Instant::now();
    wait_role(&b, "s", "primary", 60);
    eprintln!("B production {:?} after the cut", cut.elapsed());
    wait_acked(&acks_b, "B after taking over", 30);
    stop.store(true, Ordering::SeqCst);
    wa.join().unwrap();
    wb.join().unwrap();
    let last_a = acks_a.lock().last().expect("A acknowledged writes").0;
    let first_b = acks_b.lock().first().expect("B acknowledged writes").0;
    eprintln!(
        "A's last ack {:?} after the cut, {:?} before B's first",
        last_a.saturating_duration_since(cut),
        first_b.saturating_duration_since(last_a)
    );
    assert!(
        last_a < first_b,
        "A acknowledged a write {:?} after B's first",
        last_a - first_b
    );
    assert!(
        last_a < cut + Duration::from_secs(3),
        "A acknowledged writes {:?} after the cut (TTL 3 s)",
        last_a - cut
    );
    assert_eq!(common::repl::info(&c, "s")["role"], "secondary");

    // Back on the network: B holds the lock, A joins it by itself.
    net.port("A", true);
    net.control_port("A", true);
    wait_role(&a, "s", "secondary", 60);
    wait_for(&b, "s", "settled on a and c", all_settled, 90);
    assert_converged(&a, &b, "the rejoin");
    a.stop();
    drop(etcd);
}

/// Sync mode, the partition in two steps: A loses its peers first (etcd
/// still reachable), so before it acknowledges a write they lack it
/// records their copies as outdated in etcd; then A loses etcd too and is
/// fenced. Neither B nor C takes the group over (their copies lack
/// acknowledged writes), and when A is back it is production again, its
/// secondaries resync and their marks go.
#[test]
fn secondaries_a_primary_wrote_without_never_take_over() {
    use std::sync::atomic::{AtomicBool, Ordering};
    require_root();
    require_tool("ip");
    require_tool("nbdcopy");
    let net = Switch::new();
    let etcd = Etcd::start_in_netns(&net.ns("S"), CONTROL_IP);
    let (a, b, c) = (
        host(&net, "A", "a"),
        host(&net, "B", "b"),
        host(&net, "C", "c"),
    );
    for d in [&a, &b, &c] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    for peer in ["B", "C"] {
        a.ok(&enable_args(
            "s",
            "v",
            &format!("{}:7800", host_ip(peer)),
            "v",
            "sync",
            &["--no-sync", "--timeout", "2s"],
        ));
    }
    wait_for(&a, "s", "settled on both", all_settled, 30);
    a.ok(&["group", "policy", "s", "--auto-failover", "on"]);
    for d in [&a, &b, &c] {
        join(d, &format!("http://{CONTROL_IP}:2379"), "o", 3);
    }
    wait_owners(&b, &[("s", "a")], 30);

    // Step 1: A loses its peers; it goes on writing once etcd says they
    // are outdated.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (wa, acks_a) = writer_in(a.netns.clone(), a.addr_of("v"), 0xa, stop.clone());
    wait_acked(&acks_a, "A before the cut", 30);
    net.port("A", false);
    let cut = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    let outdated = |st: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = st["groups"][0]["outdated"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    while outdated(&cluster_status(&b)) != ["b", "c"] {
        assert!(
            Instant::now() < deadline,
            "etcd never marked b and c outdated: {}",
            cluster_status(&b)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = acks_a.lock().len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while acks_a.lock().len() < n + 5 {
        assert!(
            Instant::now() < deadline,
            "A took no write without its peers"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("A writes alone {:?} after losing its peers", cut.elapsed());
    // Step 2: A loses etcd as well; it is fenced, its lease expires, and
    // neither outdated copy takes over.
    net.control_port("A", false);
    std::thread::sleep(Duration::from_secs(3 + 2 * 2 + 3));
    for d in [&b, &c] {
        assert_eq!(
            common::repl::info(d, "s")["role"],
            "secondary",
            "{}",
            cluster_status(d)
        );
    }
    let st = cluster_status(&b);
    assert!(
        st["groups"][0]["owner"].is_null(),
        "nobody may hold the lock: {st}"
    );
    stop.store(true, Ordering::SeqCst);
    wa.join().unwrap();

    // A is back: production again (the lock was free), the secondaries
    // resync and are candidates again.
    net.port("A", true);
    net.control_port("A", true);
    wait_owners(&b, &[("s", "a")], 30);
    wait_for(&a, "s", "settled on b and c", all_settled, 90);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !outdated(&cluster_status(&b)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the outdated marks stayed: {}",
            cluster_status(&b)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_converged(&a, &b, "the resync");
    drop(etcd);
}

/// Cascade across hosts: B, the first candidate, holds a copy of group s2
/// cut mid-resync (it cannot serve it), so when A dies B takes s1, gives
/// s2's lock back (`cluster.refused`), and C, the next candidate, takes s2.
#[test]
fn what_the_first_candidate_cannot_serve_cascades_to_the_next_host() {
    require_root();
    require_tool("ip");
    let net = Switch::new();
    let etcd = Etcd::start_in_netns(&net.ns("S"), CONTROL_IP);
    let (mut a, b, c) = (
        host(&net, "A", "a"),
        host(&net, "B", "b"),
        host(&net, "C", "c"),
    );
    for d in [&a, &b, &c] {
        for v in ["v1", "v2"] {
            d.ok(&["volume", "create", v, "--size", "32M"]);
            d.export_nbd(v);
        }
    }
    for (set, vol) in [("s1", "v1"), ("s2", "v2")] {
        for peer in ["B", "C"] {
            a.ok(&enable_args(
                set,
                vol,
                &format!("{}:7800", host_ip(peer)),
                vol,
                "sync",
                &["--no-sync", "--timeout", "2s"],
            ));
        }
        wait_for(&a, set, "settled on both", all_settled, 60);
        a.ok(&["group", "policy", set, "--auto-failover", "on"]);
    }
    // B's copy of s2 is cut mid-resync: every chunk out of sync, resynced
    // at 1 MiB/s.
    a.ok(&["repl", "log", "s2", "--secondary", "b"]);
    let addr = a.addr_of("v2");
    a.in_net(move || scribble(&addr, "v2", 1200, 4));
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
        join(d, &format!("http://{CONTROL_IP}:2379"), "k", 3);
    }
    c.ok(&["cluster", "priority", "--bias", "100000"]); // B is the first candidate
    wait_owners(&b, &[("s1", "a"), ("s2", "a")], 30);
    let ev_b = EventLog::follow(&b);
    a.kill9();
    wait_role(&b, "s1", "primary", 60);
    wait_role(&c, "s2", "primary", 60);
    wait_owners(&c, &[("s1", "b"), ("s2", "c")], 20);
    let refused = ev_b.wait_for("cluster.refused", Duration::from_secs(10));
    assert_eq!(refused["object"], "s2", "{refused}");
    assert_eq!(common::repl::info(&b, "s2")["role"], "secondary");
    assert_eq!(common::repl::info(&c, "s1")["role"], "secondary");
    drop(etcd);
}
