//! Replication through two real daemons driven by the CLI only: on
//! loopback (with the fault proxy between them) and in two network
//! namespaces joined by veth. Data is compared with nbdcopy checksums.

mod common;

use common::nbd::NbdClient;
use common::repl::{
    all_settled, enable_args, info, leg, node, node_trusting, settle, wait_for, wait_role,
    wait_state,
};
use common::{
    fill, fio_load, require_root, require_tool, scribble, sh, sha, write_random_file, Daemon,
};
use std::time::{Duration, Instant};
use umbra::services::repl::proxy::{Fault, FaultProxy};

#[test]
fn repl_lifecycle_group_safety_snapshot_swap_and_restart() {
    require_tool("nbdcopy");
    let (a, a_addr) = node("site-a", "correct horse battery staple", "site-b");
    let (b, b_addr) = node("site-b", "correct horse battery staple", "site-a");
    let proxy = FaultProxy::start("127.0.0.1:0", &b_addr).unwrap();
    for v in ["v1", "v2"] {
        a.ok(&["volume", "create", v, "--size", "32M"]);
        b.ok(&["volume", "create", v, "--size", "32M"]);
        a.export_nbd(v);
        b.export_nbd(v);
        fill(&a, v, 32 << 20, v.len() as u64 + 1);
    }
    // Refusals with clear errors.
    let e = a.cli(&enable_args("x", "v1", &proxy.addr, "nope", "hybrid", &[]));
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("nope"), "{e:?}");
    for v in ["v1", "v2"] {
        a.ok(&enable_args(
            v,
            v,
            &proxy.addr,
            v,
            "hybrid",
            &["--group", "g", "--timeout", "2s"],
        ));
    }
    assert_eq!(info(&a, "v1")["state"], "logging");
    assert_eq!(info(&b, "v1")["role"], "secondary");
    // The secondary refuses client writes (EPERM).
    let mut c = NbdClient::connect(&b.addr_of("v1"), "v1");
    assert_eq!(c.write(0, &[1; 4096], 0), libc::EPERM as u32);
    c.disconnect();
    // Full initial sync of the group, then replication of new writes.
    a.ok(&["repl", "sync", "v1", "--wait", "--timeout", "120"]);
    settle(&a, "v2");
    for v in ["v1", "v2"] {
        assert_eq!(
            sha(&a.uri_of(v)),
            sha(&b.uri_of(v)),
            "{v} after the initial sync"
        );
    }
    scribble(&a.addr_of("v1"), "v1", 500, 7);
    settle(&a, "v1");
    assert_eq!(sha(&a.uri_of("v1")), sha(&b.uri_of("v1")));
    assert_eq!(
        b.json(&["image", "list"]).as_array().unwrap().len(),
        0,
        "safety snapshot dropped after the sync"
    );

    // `repl log` on one set suspends the whole group; writes are logged.
    a.ok(&["repl", "log", "v1"]);
    assert_eq!(info(&a, "v2")["state"], "logging");
    let before = sha(&b.uri_of("v1"));
    fill(&a, "v1", 32 << 20, 99);
    assert!(info(&a, "v1")["out_of_sync_bytes"].as_u64().unwrap() > 16 << 20);
    // An update sync that the network cuts halfway: the secondary's
    // safety snapshot still holds its consistent pre-sync image.
    proxy.set_delay(Duration::from_millis(30));
    a.ok(&["repl", "sync", "v1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while info(&a, "v1")["sync_done_bytes"].as_u64().unwrap_or(0) < 1 << 20 {
        assert!(Instant::now() < deadline, "sync made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.set_fault(Fault::Partition);
    proxy.drop_connections();
    wait_state(&a, "v1", "need sync", 30);
    let snaps = b.json(&["image", "list"]);
    let snap = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["master"] == "v1")
        .expect("safety snapshot on the secondary");
    let snap_vol = snap["shadow"].as_str().unwrap().to_owned();
    b.export_nbd(&snap_vol);
    assert_eq!(
        sha(&b.uri_of(&snap_vol)),
        before,
        "the safety snapshot is the pre-sync image"
    );
    b.ok(&["export", "remove", &snap_vol]);
    // The network heals: autosync finishes the job by itself.
    proxy.set_delay(Duration::ZERO);
    proxy.set_fault(Fault::Pass);
    wait_state(&a, "v1", "replicating", 60);
    settle(&a, "v1");
    assert_eq!(sha(&a.uri_of("v1")), sha(&b.uri_of("v1")));
    assert_eq!(b.json(&["image", "list"]).as_array().unwrap().len(), 0);

    // Swap roles: B becomes the primary, A refuses writes; then back.
    a.ok(&["repl", "swap", "v1"]);
    assert_eq!(info(&a, "v1")["role"], "secondary");
    assert_eq!(info(&b, "v2")["role"], "primary");
    wait_state(&b, "v1", "replicating", 30);
    scribble(&b.addr_of("v2"), "v2", 300, 9);
    settle(&b, "v2");
    let mut c = NbdClient::connect(&a.addr_of("v2"), "v2");
    assert_eq!(c.write(0, &[1; 4096], 0), libc::EPERM as u32);
    c.disconnect();
    assert_eq!(sha(&a.uri_of("v2")), sha(&b.uri_of("v2")));
    b.ok(&["repl", "swap", "v2"]);
    wait_state(&a, "v1", "replicating", 30);

    // Both daemons restart cleanly; the sets come back and reconnect.
    let (mut a, mut b) = (a, b);
    b.stop();
    a.stop();
    b.spawn();
    a.spawn();
    wait_state(&a, "v1", "replicating", 60);
    scribble(&a.addr_of("v1"), "v1", 100, 3);
    settle(&a, "v1");
    assert_eq!(sha(&a.uri_of("v1")), sha(&b.uri_of("v1")));
    let _ = a_addr;
    a.ok(&["repl", "disable", "v1"]);
    a.ok(&["repl", "disable", "v2"]);
    assert_eq!(b.json(&["repl", "list"]).as_array().unwrap().len(), 0);
    let mut c = NbdClient::connect(&b.addr_of("v1"), "v1");
    assert_eq!(
        c.write(0, &[1; 4096], 0),
        0,
        "a former secondary takes writes"
    );
    c.disconnect();
    proxy.stop();
}

/// A named fault to inject through the proxy.
type Injected<'a> = (&'static str, Box<dyn Fn() + 'a>);

#[test]
fn link_faults_through_the_proxy_end_byte_identical() {
    require_tool("nbdcopy");
    require_tool("fio");
    // Two secondaries: B (hybrid) behind the fault proxy, C (sync) on a
    // clean link. C must replicate through every fault of B's link.
    const KEY: &str = "0123456789abcdef0123";
    let (a, _) = node_trusting(Daemon::start(), "a", "127.0.0.1:0", KEY, &["b", "c"]);
    let (b, b_addr) = node("b", KEY, "a");
    let (c, c_addr) = node("c", KEY, "a");
    let proxy = FaultProxy::start("127.0.0.1:0", &b_addr).unwrap();
    for d in [&a, &b, &c] {
        d.ok(&["volume", "create", "v", "--size", "64M"]);
    }
    let uri = a.export_nbd("v");
    b.export_nbd("v");
    c.export_nbd("v");
    a.ok(&enable_args(
        "s",
        "v",
        &proxy.addr,
        "v",
        "hybrid",
        &["--no-sync", "--timeout", "1500ms"],
    ));
    a.ok(&enable_args(
        "s",
        "v",
        &c_addr,
        "v",
        "sync",
        &["--no-sync", "--timeout", "1500ms"],
    ));
    wait_for(&a, "s", "replicating to both", all_settled, 10);
    let b_leg = |v: &serde_json::Value| leg(v, "b").clone();
    let c_connects = leg(&info(&a, "s"), "c")["connects"].as_u64().unwrap();
    let mut fio = fio_load(&uri, "0", "64M", &[]);
    let faults: [Injected; 4] = [
        ("drop", Box::new(|| proxy.drop_connections())),
        ("stall", Box::new(|| proxy.set_fault(Fault::Stall))),
        (
            "partition",
            Box::new(|| {
                proxy.set_fault(Fault::Partition);
                proxy.drop_connections();
            }),
        ),
        (
            "delay",
            Box::new(|| proxy.set_delay(Duration::from_millis(5))),
        ),
    ];
    let acked = |v: &serde_json::Value| b_leg(v)["acked_writes"].as_u64().unwrap_or(0);
    for (what, fault) in faults.iter() {
        // fio's writes reach B before each fault.
        let start = acked(&info(&a, "s"));
        wait_for(&a, "s", "writes reaching b", |v| acked(v) > start + 50, 30);
        let connects = b_leg(&info(&a, "s"))["connects"].as_u64().unwrap();
        fault();
        let v = if *what == "delay" {
            // A slow link is no loss: writes go on reaching B through it.
            let start = acked(&info(&a, "s"));
            wait_for(
                &a,
                "s",
                "writes through the delayed link",
                |v| acked(v) > start + 20,
                30,
            )
        } else {
            // Noticed, a stall too (the peer timeout is 1.5 s).
            wait_for(
                &a,
                "s",
                &format!("{what} noticed"),
                |v| {
                    let l = b_leg(v);
                    l["state"] != "replicating" || l["connects"].as_u64().unwrap() > connects
                },
                30,
            )
        };
        let cl = leg(&v, "c");
        assert_eq!(
            cl["state"], "replicating",
            "{what}: C kept replicating: {cl}"
        );
        assert_eq!(
            cl["connects"].as_u64().unwrap(),
            c_connects,
            "{what}: C's link never dropped"
        );
        proxy.set_fault(Fault::Pass);
        proxy.set_delay(Duration::ZERO);
        wait_for(
            &a,
            "s",
            "b replicating",
            |v| b_leg(v)["state"] == "replicating",
            60,
        );
    }
    let _ = fio.kill();
    let _ = fio.wait();
    wait_for(&a, "s", "settled on both", all_settled, 60);
    assert_eq!(sha(&uri), sha(&c.uri_of("v")), "C byte-identical");
    let (x, y) = (sha(&uri), sha(&b.uri_of("v")));
    if x != y {
        let fa = std::fs::read(a.data_dir().join("v.img")).unwrap();
        let fb = std::fs::read(b.data_dir().join("v.img")).unwrap();
        let diff: Vec<usize> = (0..fa.len() / 4096)
            .filter(|i| fa[i * 4096..(i + 1) * 4096] != fb[i * 4096..(i + 1) * 4096])
            .collect();
        panic!(
            "not byte-identical after the faults: {} blocks differ, first {:?}; {}",
            diff.len(),
            &diff[..diff.len().min(8)],
            info(&a, "s")
        );
    }
    assert!(b_leg(&info(&a, "s"))["connects"].as_u64().unwrap() >= 4);
    proxy.stop();
}

#[test]
fn kill9_of_the_primary_under_load_needs_only_an_update_sync() {
    require_tool("nbdcopy");
    require_tool("fio");
    let (mut a, _) = node("a", "kill-nine-secret-value", "b");
    let (b, b_addr) = node("b", "kill-nine-secret-value", "a");
    a.ok(&["volume", "create", "v", "--size", "64M"]);
    b.ok(&["volume", "create", "v", "--size", "64M"]);
    let uri = a.export_nbd("v");
    b.export_nbd("v");
    a.ok(&enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        "async",
        &["--no-sync"],
    ));
    wait_state(&a, "s", "replicating", 10);
    // fio writes into the first 4 MiB only: at most 64 of 1024 chunks.
    let mut fio = fio_load(&uri, "0", "4M", &[]);
    // The kill comes once fio's writes are flowing (the volume's own
    // counters say so), however slow the machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while a.json(&["stats", "v"])["volumes"][0]["io"]["write"]["ops"]
        .as_u64()
        .unwrap_or(0)
        < 500
    {
        assert!(
            std::time::Instant::now() < deadline,
            "fio's writes never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.kill9();
    let _ = fio.kill();
    let _ = fio.wait();
    a.spawn();
    // Autosync: an update sync moves only the chunks the scoreboard holds.
    wait_state(&a, "s", "replicating", 60);
    settle(&a, "s");
    let v = info(&a, "s");
    let moved = v["synced_chunks_total"].as_u64().unwrap();
    assert!(
        moved <= 64,
        "the update sync moved {moved} chunks, not only the changed ones"
    );
    assert_eq!(sha(&a.uri_of("v")), sha(&b.uri_of("v")));
}

#[test]
fn sync_mode_without_peer_fails_writes_or_logs_by_policy() {
    let (a, _) = node("a", "sync-mode-secret-0000", "b");
    let (mut b, b_addr) = node("b", "sync-mode-secret-0000", "a");
    for v in ["f", "l"] {
        a.ok(&["volume", "create", v, "--size", "16M"]);
        b.ok(&["volume", "create", v, "--size", "16M"]);
        a.export_nbd(v);
    }
    a.ok(&enable_args(
        "f",
        "f",
        &b_addr,
        "f",
        "sync",
        &["--no-sync", "--on-peer-loss", "fail", "--timeout", "2s"],
    ));
    a.ok(&enable_args(
        "l",
        "l",
        &b_addr,
        "l",
        "sync",
        &["--no-sync", "--timeout", "2s"],
    ));
    let mut cf = NbdClient::connect(&a.addr_of("f"), "f");
    let mut cl = NbdClient::connect(&a.addr_of("l"), "l");
    assert_eq!(cf.write(0, &[1; 4096], 1), 0);
    assert_eq!(cl.write(0, &[1; 4096], 1), 0);
    b.kill9();
    let t = Instant::now();
    let mut err = 0;
    while err == 0 && t.elapsed() < Duration::from_secs(15) {
        err = cf.write(4096, &[2; 4096], 0);
    }
    assert_eq!(err, libc::EIO as u32, "policy fail: EIO");
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "EIO within the timeout ({:?})",
        t.elapsed()
    );
    for i in 0..20u64 {
        assert_eq!(
            cl.write(i * 65536, &[3; 4096], 0),
            0,
            "policy log: writes go on"
        );
    }
    let v = info(&a, "l");
    assert_eq!(v["state"], "logging");
    assert!(
        v["out_of_sync_bytes"].as_u64().unwrap() >= 20 * 65536,
        "{v}"
    );
    // The peer returns: both resync by themselves; writes work again.
    b.spawn();
    wait_state(&a, "f", "replicating", 60);
    wait_state(&a, "l", "replicating", 60);
    assert_eq!(cf.write(4096, &[4; 4096], 0), 0);
    settle(&a, "l");
    assert_eq!(info(&a, "l")["out_of_sync_bytes"], 0);
}

#[test]
fn bad_peers_are_refused_and_the_daemon_stays_up() {
    use std::io::{Read, Write};
    use umbra::services::repl::wire::{self, FrameType};
    let (mut b, b_addr) = node("b", "the-right-secret-123", "a");
    let (c, _) = node("a", "a-wrong-secret-12345", "b");
    c.ok(&["volume", "create", "v", "--size", "1M"]);
    b.ok(&["volume", "create", "v", "--size", "1M"]);
    let out = c.cli(&enable_args("s", "v", &b_addr, "v", "sync", &[]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secret") || err.contains("refused"), "{err}");
    // An unknown node name.
    let (u, _) = node("stranger", "the-right-secret-123", "b");
    u.ok(&["volume", "create", "v", "--size", "1M"]);
    let out = u.cli(&enable_args("s", "v", &b_addr, "v", "sync", &[]));
    assert!(!out.status.success());
    // Garbage bytes, a frame with a future version, a bad checksum.
    let mut hello_v9 = Vec::new();
    wire::write_frame(&mut hello_v9, FrameType::Hello, &[9, 9, 1, b'x']).unwrap();
    hello_v9[4] = 9;
    let mut bad_crc = Vec::new();
    wire::write_frame(&mut bad_crc, FrameType::Hello, &[1, 1, 1, b'x']).unwrap();
    bad_crc[12] ^= 0xff;
    for junk in [
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        vec![0u8; 4096],
        hello_v9,
        bad_crc,
    ] {
        let mut s = std::net::TcpStream::connect(&b_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&junk);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf); // the daemon closes the connection
    }
    assert!(b.alive(), "the daemon survived bad peers");
    assert_eq!(
        b.json(&["repl", "list"]).as_array().unwrap().len(),
        0,
        "nothing was created"
    );
    b.ok(&["status"]);
}

/// Two daemons in two network namespaces joined by a veth pair, managed
/// with the CLI only (their admin sockets are files, reachable from here).
#[test]
fn two_hosts_in_network_namespaces() {
    require_root();
    require_tool("ip");
    require_tool("nbdcopy");
    let tag = std::process::id() % 100_000;
    let (na, nb) = (format!("umA{tag}"), format!("umB{tag}"));
    let cleanup = |na: &str, nb: &str| {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", na])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", nb])
            .status();
    };
    cleanup(&na, &nb);
    sh(&format!(
        "ip netns add {na} && ip netns add {nb} && \
         ip link add va{tag} netns {na} type veth peer name vb{tag} netns {nb} && \
         ip -n {na} addr add 10.77.0.1/24 dev va{tag} && ip -n {nb} addr add 10.77.0.2/24 dev vb{tag} && \
         ip -n {na} link set va{tag} up && ip -n {nb} link set vb{tag} up && \
         ip -n {na} link set lo up && ip -n {nb} link set lo up && echo ok"
    ));
    let _guard = scopeguard(move || cleanup(&na.clone(), &nb.clone()));
    let ns_a = format!("umA{tag}");
    let ns_b = format!("umB{tag}");
    let a = Daemon::start_in_netns(&ns_a);
    let b = Daemon::start_in_netns(&ns_b);
    let key = a.dir.path().join("k");
    std::fs::write(&key, "namespace-secret-0123456789").unwrap();
    a.ok(&["repl", "setup", "--node", "a", "--listen", "10.77.0.1:7800"]);
    b.ok(&["repl", "setup", "--node", "b", "--listen", "10.77.0.2:7800"]);
    a.ok(&[
        "repl",
        "peer",
        "add",
        "b",
        "--secret-file",
        key.to_str().unwrap(),
    ]);
    b.ok(&[
        "repl",
        "peer",
        "add",
        "a",
        "--secret-file",
        key.to_str().unwrap(),
    ]);
    a.ok(&["volume", "create", "v", "--size", "16M"]);
    b.ok(&["volume", "create", "v", "--size", "16M"]);
    a.ok(&["export", "nbd", "v", "--listen", "127.0.0.1:10809"]);
    b.ok(&["export", "nbd", "v", "--listen", "127.0.0.1:10809"]);
    let src = a.dir.path().join("src.raw");
    write_random_file(&src, 16 << 20, 42);
    sh(&format!(
        "ip netns exec {ns_a} nbdcopy {} nbd://127.0.0.1:10809/v",
        src.display()
    ));
    a.ok(&enable_args("s", "v", "10.77.0.2:7800", "v", "hybrid", &[]));
    a.ok(&["repl", "sync", "s", "--wait", "--timeout", "120"]);
    settle(&a, "s");
    let sa = sh(&format!(
        "ip netns exec {ns_a} nbdcopy nbd://127.0.0.1:10809/v - | sha256sum"
    ));
    let sb = sh(&format!(
        "ip netns exec {ns_b} nbdcopy nbd://127.0.0.1:10809/v - | sha256sum"
    ));
    assert_eq!(sa, sb);
    assert_eq!(sa, sh(&format!("sha256sum < {}", src.display())));
}

struct Guard<F: FnMut()>(F);
impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}

/// Failback from the secondary's data: while logging, the primary's volume
/// is overwritten by mistake; a reverse update sync copies the changed
/// chunks back from the peer, then replication resumes.
#[test]
fn reverse_sync_restores_the_primary_from_the_peer() {
    require_tool("nbdcopy");
    let (a, _) = node("a", "reverse-sync-secret-01", "b");
    let (b, b_addr) = node("b", "reverse-sync-secret-01", "a");
    a.ok(&["volume", "create", "v", "--size", "32M"]);
    b.ok(&["volume", "create", "v", "--size", "32M"]);
    let uri = a.export_nbd("v");
    b.export_nbd("v");
    fill(&a, "v", 32 << 20, 5);
    a.ok(&enable_args("s", "v", &b_addr, "v", "async", &[]));
    a.ok(&["repl", "sync", "s", "--wait", "--timeout", "120"]);
    settle(&a, "s");
    let good = sha(&b.uri_of("v"));
    assert_eq!(sha(&uri), good);
    a.ok(&["repl", "log", "s"]);
    scribble(&a.addr_of("v"), "v", 200, 0xbd);
    assert_ne!(sha(&uri), good);
    let oos = info(&a, "s")["out_of_sync_bytes"].as_u64().unwrap();
    assert!(oos > 0);
    // Refused while the volume is exported read-write, unless --force.
    let out = a.cli(&["repl", "sync", "s", "--reverse"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported read-write"));
    a.ok(&[
        "repl",
        "sync",
        "s",
        "--reverse",
        "--force",
        "--wait",
        "--timeout",
        "120",
    ]);
    let v = info(&a, "s");
    assert_eq!(v["state"], "replicating");
    assert_eq!(
        v["sync_done_bytes"].as_u64().unwrap(),
        oos,
        "only the changed chunks came back"
    );
    assert_eq!(sha(&uri), good, "the primary holds the peer's data again");
    scribble(&a.addr_of("v"), "v", 50, 0x11);
    settle(&a, "s");
    assert_eq!(sha(&uri), sha(&b.uri_of("v")));
}

/// Failover with the primary gone (`repl swap --force` on the secondary),
/// then the old primary comes back, is demoted the same way, and the new
/// primary's autosync makes both identical.
#[test]
fn failover_after_the_primary_dies_and_the_old_primary_rejoins() {
    require_tool("nbdcopy");
    let (mut a, _) = node("a", "failover-secret-000001", "b");
    let (b, b_addr) = node("b", "failover-secret-000001", "a");
    a.ok(&["volume", "create", "v", "--size", "32M"]);
    b.ok(&["volume", "create", "v", "--size", "32M"]);
    a.export_nbd("v");
    b.export_nbd("v");
    a.ok(&enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        "hybrid",
        &["--no-sync", "--timeout", "2s"],
    ));
    wait_state(&a, "s", "replicating", 10);
    scribble(&a.addr_of("v"), "v", 200, 1);
    settle(&a, "s");
    a.kill9();
    // Failover: the secondary takes over and serves writes.
    let out = b.cli(&["repl", "swap", "s"]);
    assert!(!out.status.success(), "a plain swap needs the primary");
    b.ok(&["repl", "swap", "s", "--force"]);
    let v = info(&b, "s");
    assert_eq!(v["role"], "primary");
    scribble(&b.addr_of("v"), "v", 150, 2);
    assert!(info(&b, "s")["out_of_sync_bytes"].as_u64().unwrap() > 0);
    // The old primary returns still believing it is primary. It wrote
    // nothing since it died, so its generation is an ancestor of the new
    // primary's: it steps down by itself (no split brain) and gets an
    // update sync.
    a.spawn();
    wait_role(&a, "s", "secondary", 30);
    wait_state(&b, "s", "replicating", 60);
    assert_ne!(info(&b, "s")["state"], "split brain");
    settle(&b, "s");
    assert_eq!(sha(&a.uri_of("v")), sha(&b.uri_of("v")));
    let mut c = NbdClient::connect(&a.addr_of("v"), "v");
    assert_eq!(c.write(0, &[1; 4096], 0), libc::EPERM as u32);
    c.disconnect();
}

/// A restore of a replicated master reaches the secondary whatever order
/// the layers came in: imaging enabled before replication, and again after
/// a restart (which attaches imaging first). Found by tools/torture.sh:
/// with the imaging layer below the replication layer the restore's copies
/// bypassed it and the secondary silently diverged.
#[test]
fn a_restore_of_a_replicated_master_reaches_the_secondary() {
    require_tool("nbdcopy");
    let (mut a, _) = node("a", "restore-order-secret", "b");
    let (b, b_addr) = node("b", "restore-order-secret", "a");
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "32M"]);
        d.export_nbd("v");
    }
    fill(&a, "v", 32 << 20, 3);
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
    a.ok(&enable_args("s", "v", &b_addr, "v", "sync", &[]));
    a.ok(&["repl", "sync", "s", "--wait"]);
    for round in 0..2 {
        if round == 1 {
            a.stop();
            a.spawn();
            settle(&a, "s");
        }
        scribble(&a.addr_of("v"), "v", 64, 11 + round);
        settle(&a, "s");
        a.ok(&[
            "image", "update", "pit", "--to", "master", "--yes", "--force", "--wait",
        ]);
        settle(&a, "s");
        assert_eq!(
            a.sha_of("v"),
            b.sha_of("v"),
            "round {round}: the secondary has the restored master"
        );
        let services = a.json(&["volume", "info", "v"])["services"].clone();
        assert_eq!(
            services,
            serde_json::json!(["repl:b", "image"]),
            "round {round}"
        );
    }
}

/// Sparse data stays sparse: a full sync of a 256 MiB volume holding 2 MiB
/// moves about those 2 MiB (holes and zeroes go as zeroings), zeroes what
/// the secondary held elsewhere, and leaves the secondary's file sparse.
#[test]
fn a_full_sync_of_a_sparse_volume_moves_only_its_data() {
    require_tool("nbdcopy");
    use std::os::unix::fs::MetadataExt;
    let (a, _) = node("a", "sparse-sync-secret", "b");
    let (b, b_addr) = node("b", "sparse-sync-secret", "a");
    let proxy = FaultProxy::start("127.0.0.1:0", &b_addr).unwrap();
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "256M"]);
        d.export_nbd("v");
    }
    let data: Vec<u8> = (0..2 << 20).map(|i| (i * 13 % 251) as u8 + 1).collect();
    let mut c = NbdClient::connect(&a.addr_of("v"), "v");
    assert_eq!(c.write(100 << 20, &data, 0), 0);
    // An allocated chunk of zeroes goes as a zeroing too.
    assert_eq!(c.write(150 << 20, &[0; 65536], 0), 0);
    assert_eq!(c.flush(), 0);
    c.disconnect();
    // What the secondary held where the primary has holes must go.
    scribble(&b.addr_of("v"), "v", 32, 9);
    a.ok(&enable_args("s", "v", &proxy.addr, "v", "async", &[]));
    a.ok(&["repl", "sync", "s", "--wait"]);
    settle(&a, "s");
    assert_eq!(a.sha_of("v"), b.sha_of("v"), "the copies are identical");
    let moved = proxy.bytes();
    assert!(
        moved < 4 << 20,
        "a full sync of 2 MiB of data in 256 MiB moved {moved} bytes"
    );
    let allocated = std::fs::metadata(b.data_dir().join("v.img"))
        .unwrap()
        .blocks()
        * 512;
    assert!(
        allocated < 8 << 20,
        "the secondary's file stays sparse ({allocated} bytes allocated)"
    );
}

/// Replication over TLS (`UMBRA_REPL_TLS=always`, as it is by default for
/// a peer off the host): the set replicates, and on the wire (captured by
/// the fault proxy) there is no replication frame and no byte pattern of
/// the data, only TLS records; a dialer that will not speak TLS is refused
/// with a reason that says so.
#[test]
fn replication_over_tls_is_encrypted_and_a_plaintext_peer_is_refused() {
    require_tool("nbdcopy");
    let tls = [("UMBRA_REPL_TLS", "always")];
    let secret = "tls-replication-secret";
    let (a, _) = node_trusting(
        Daemon::start_with_env(&tls),
        "a",
        "127.0.0.1:0",
        secret,
        &["b", "c"],
    );
    let (b, b_addr) = node_trusting(
        Daemon::start_with_env(&tls),
        "b",
        "127.0.0.1:0",
        secret,
        &["a", "c"],
    );
    assert_eq!(a.json(&["repl", "status"])["tls"], "always");
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
        "sync",
        &["--no-sync"],
    ));
    settle(&a, "s");
    let marker: Vec<u8> = b"umbra-plaintext-marker-0123456789"
        .iter()
        .copied()
        .cycle()
        .take(4096)
        .collect();
    let mut c = NbdClient::connect(&a.addr_of("v"), "v");
    for i in 0..256u64 {
        assert_eq!(c.write(i * 4096, &marker, 0), 0);
    }
    assert_eq!(c.flush(), 0);
    c.disconnect();
    settle(&a, "s");
    assert_eq!(a.sha_of("v"), b.sha_of("v"), "replicated through TLS");
    let wire = proxy.captured();
    assert!(wire.len() > 256 * 4096, "the data went through the proxy");
    assert_eq!(wire[0], 0x16, "the connection starts with a TLS handshake");
    let has = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(
        !has(b"umbra-plaintext-marker"),
        "the data is not readable on the wire"
    );
    assert!(
        !has(b"UMRP"),
        "no replication frame is readable on the wire"
    );

    // A node that refuses TLS cannot replicate to one that insists on it.
    let (c_node, _) = node_trusting(
        Daemon::start_with_env(&[("UMBRA_REPL_TLS", "never")]),
        "c",
        "127.0.0.1:0",
        secret,
        &["b"],
    );
    c_node.ok(&["volume", "create", "w", "--size", "4M"]);
    b.ok(&["volume", "create", "w", "--size", "4M"]);
    let e = c_node.fails(&enable_args("t", "w", &b_addr, "w", "sync", &["--no-sync"]));
    assert!(e.contains("must use TLS"), "{e}");
}

/// A resync after an outage moves what was written, not whole chunks:
/// 2,000 random 4 KiB writes (8 MiB, in about 1,600 distinct 64 KiB
/// chunks) made while the link is cut cost about 8 MiB on the wire once
/// it heals, not the 100 MiB of their chunks, and the copies converge.
/// (After a restart the map is gone and whole chunks go: the
/// scoreboard's unit test.)
#[test]
fn a_resync_after_an_outage_moves_what_was_written() {
    let (a, _) = node("a", "fine-resync-secret", "b");
    let (b, b_addr) = node("b", "fine-resync-secret", "a");
    let proxy = FaultProxy::start("127.0.0.1:0", &b_addr).unwrap();
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "256M"]);
        d.export_nbd("v");
    }
    a.ok(&enable_args(
        "s",
        "v",
        &proxy.addr,
        "v",
        "async",
        &["--no-sync", "--timeout", "1s"],
    ));
    settle(&a, "s");
    proxy.set_fault(Fault::Partition);
    proxy.drop_connections();
    wait_state(&a, "s", "logging", 30);
    let mut c = NbdClient::connect(&a.addr_of("v"), "v");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..2000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let block = x % (256 << 20 >> 12);
        assert_eq!(c.write(block << 12, &[(i % 250) as u8 + 1; 4096], 0), 0);
    }
    assert_eq!(c.flush(), 0);
    c.disconnect();
    let oos = a.json(&["repl", "info", "s"])["out_of_sync_bytes"]
        .as_u64()
        .unwrap();
    assert!(oos > 80 << 20, "the scoreboard counts whole chunks: {oos}");
    let before = proxy.bytes();
    proxy.set_fault(Fault::Pass);
    settle(&a, "s");
    let moved = proxy.bytes() - before;
    assert!(
        moved < 12 << 20,
        "8 MiB written during the outage, {moved} bytes moved to resync"
    );
    assert_eq!(a.sha_of("v"), b.sha_of("v"));
}
