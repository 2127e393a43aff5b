//! A thousand volumes on one daemon: created and exported on one NBD
//! listener through one admin connection, each served to a client, with
//! hundreds of clients connected at once (past the old limit of 64); a
//! listener given a lower `--nbd-max-clients` closes the clients past it
//! and counts them; admin requests keep answering, and a restart brings
//! every volume and export back. No timing is asserted here: the speed
//! of it is `tools/bench-scale.sh`'s.

mod common;

use common::nbd::NbdClient;
use common::{free_port, require_tool, scribble, sha, Daemon};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

const VOLUMES: usize = 1000;

/// One admin connection, requests answered in order.
struct Admin {
    tx: UnixStream,
    rx: BufReader<UnixStream>,
    id: u64,
}

impl Admin {
    fn connect(d: &Daemon) -> Admin {
        let tx = UnixStream::connect(d.socket()).unwrap();
        let rx = BufReader::new(tx.try_clone().unwrap());
        Admin { tx, rx, id: 0 }
    }

    fn call(&mut self, op: &str, args: Value) -> Value {
        self.id += 1;
        let req = json!({"v": 1, "id": self.id, "op": op, "args": args});
        writeln!(self.tx, "{req}").unwrap();
        let mut line = String::new();
        self.rx.read_line(&mut line).unwrap();
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["ok"], true, "{op} {args}: {reply}");
        reply["result"].clone()
    }
}

#[test]
fn a_thousand_volumes_on_one_listener() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut d = Daemon::start_with_env(&[("UMBRA_NO_DEFAULT", "1")]);
    let mut admin = Admin::connect(&d);
    for i in 0..VOLUMES {
        let name = format!("v{i:04}");
        admin.call(
            "volume.create",
            json!({"name": name, "size_bytes": 1 << 20}),
        );
        admin.call("export.nbd", json!({"volume": name, "listen": listen}));
    }
    let list = admin.call("volume.list", json!({}));
    assert_eq!(list.as_array().unwrap().len(), VOLUMES);

    // 300 clients at once on the one listener, each on its own volume,
    // each writing and reading back its own block.
    let mut clients: Vec<NbdClient> = (0..300)
        .map(|i| NbdClient::connect(&listen, &format!("v{:04}", i * 3)))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.write(4096, &[(i % 250) as u8 + 1; 4096], 0), 0);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.read(4096, 4096).unwrap(), vec![(i % 250) as u8 + 1; 4096]);
    }
    let exports = admin.call("export.list", json!({}));
    let connected: u64 = exports
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["clients"].as_u64().unwrap())
        .sum();
    assert_eq!(connected, 300);
    // Quiet, the 300 clients give their threads back, and each is served
    // again by its next request.
    wait_no_threads(d.pid(), "nbd-conn", "300 quiet clients kept their threads");
    for (i, c) in clients.iter_mut().enumerate().rev() {
        assert_eq!(c.read(4096, 4096).unwrap(), vec![(i % 250) as u8 + 1; 4096]);
    }
    // Admin requests answer with all of it connected, through the CLI too
    // (its replies are megabytes now: the CLI once refused any over 1 MiB).
    assert_eq!(admin.call("status", json!({}))["volumes"], VOLUMES);
    for args in [&["volume", "list"][..], &["export", "list"], &["stats"]] {
        let v = d.json(args);
        let n = v
            .as_array()
            .or_else(|| v["volumes"].as_array())
            .map(|a| a.len());
        assert_eq!(n, Some(VOLUMES), "umbra {args:?}");
    }
    assert_eq!(d.json(&["status"])["volumes"], VOLUMES);
    for c in clients.drain(..) {
        c.disconnect();
    }
    drop(admin);

    // Every volume and export comes back after a restart.
    d.stop();
    d.spawn();
    let mut admin = Admin::connect(&d);
    assert_eq!(
        admin
            .call("export.list", json!({}))
            .as_array()
            .unwrap()
            .len(),
        VOLUMES
    );
    let c = NbdClient::connect(&listen, "v0999");
    assert_eq!(c.size, 1 << 20);
    c.disconnect();
    let mut c = NbdClient::connect(&listen, "v0003");
    assert_eq!(c.read(4096, 4096).unwrap(), vec![2; 4096]);
    c.disconnect();
}

#[test]
fn a_full_listener_closes_the_clients_past_its_limit_and_counts_them() {
    let d = Daemon::start_with_env(&[("UMBRA_NO_DEFAULT", "1"), ("UMBRA_NBD_MAX_CLIENTS", "4")]);
    d.ok(&["volume", "create", "v", "--size", "1M"]);
    let addr = d.export_nbd("v");
    let addr = addr
        .trim_start_matches("nbd://")
        .trim_end_matches("/v")
        .to_owned();
    let held: Vec<NbdClient> = (0..4).map(|_| NbdClient::connect(&addr, "v")).collect();
    // The fifth is closed before its handshake.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 18];
    assert!(
        std::io::Read::read_exact(&mut s, &mut buf).is_err(),
        "a client past the limit got a handshake"
    );
    let e = d.export_of("v");
    assert_eq!(e["clients"], 4);
    assert_eq!(e["listener_refused_clients"], 1, "{e}");
    // They leave: there is room again.
    for c in held {
        c.disconnect();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.export_of("v")["clients"] != 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let c = NbdClient::connect(&addr, "v");
    assert_eq!(c.size, 1 << 20);
    c.disconnect();
}

/// The threads of process `pid` whose names start with `prefix`.
fn threads_named(pid: i32, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(n) = std::fs::read_to_string(t.path().join("comm")) {
            if n.starts_with(prefix) {
                names.push(n.trim().to_owned());
            }
        }
    }
    names.sort();
    names
}

fn repl_threads(pid: i32) -> Vec<String> {
    threads_named(pid, "repl")
}

/// Wait (up to a minute) until `pid` runs no thread named `prefix`.
fn wait_no_threads(pid: i32, prefix: &str, why: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let t = threads_named(pid, prefix);
        if t.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{why}: {t:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Connected NBD clients that went quiet cost no thread: their sockets
/// wait in the daemon's one idle poller, and a request starts a thread
/// for its client again. Parked clients still count as connected, still
/// read what they wrote, are cut off when their export is removed, and do
/// not hold up a shutdown.
#[test]
fn idle_nbd_clients_give_their_threads_back() {
    let mut d = Daemon::start_with_env(&[("UMBRA_NO_DEFAULT", "1")]);
    for v in ["a", "b"] {
        d.ok(&["volume", "create", v, "--size", "1M"]);
    }
    let addr = format!("127.0.0.1:{}", free_port());
    for v in ["a", "b"] {
        d.ok(&["export", "nbd", v, "--listen", &addr]);
    }
    let mut clients: Vec<(NbdClient, &str, u8)> = (0..16u8)
        .map(|i| {
            let v = if i % 2 == 0 { "a" } else { "b" };
            (NbdClient::connect(&addr, v), v, i + 1)
        })
        .collect();
    for (c, _, k) in clients.iter_mut() {
        assert_eq!(c.write(*k as u64 * 4096, &[*k; 4096], 0), 0);
        assert_eq!(c.flush(), 0);
    }
    wait_no_threads(d.pid(), "nbd-conn", "quiet clients kept their threads");
    assert_eq!(d.export_of("a")["clients"], 8);
    assert_eq!(d.export_of("b")["clients"], 8);
    // Every parked client is served again, in any order.
    for (c, _, k) in clients.iter_mut().rev() {
        assert_eq!(c.read(*k as u64 * 4096, 4096).unwrap(), vec![*k; 4096]);
        assert_eq!(c.write(*k as u64 * 4096 + 512, &[*k; 512], 0), 0);
    }
    wait_no_threads(d.pid(), "nbd-conn", "quiet clients kept their threads");
    // Removing a parked client's export cuts it off.
    d.ok(&["export", "remove", "a"]);
    for (c, v, _) in clients.iter_mut() {
        if *v == "a" {
            c.send(common::nbd::CMD_READ, 0, 0, 4096, &[]);
            assert!(c.reply(None).is_err(), "a removed export's parked client");
        }
    }
    // A shutdown with parked clients ends them and the daemon.
    assert_eq!(d.stop(), 0);
    d.spawn();
    let mut c = NbdClient::connect(&addr, "b");
    assert_eq!(c.read(4096 * 2, 4096).unwrap()[..512], [2u8; 512]);
    c.disconnect();
}

/// Idle replication links cost no thread of their own on either side:
/// a primary with `LINKS` sets (each its own link, sync, async and hybrid)
/// replicating to one secondary, after every set took writes and went
/// quiet again, runs only a fixed few replication threads (manager,
/// heartbeats, listener) on each side: the primary's receivers and the
/// secondary's readers park their sockets in the idle poller, which takes
/// the heartbeats itself. (A sender, a receiver and a manager per link on
/// the primary, and a reader, a heartbeat and four apply workers per link
/// on the secondary, were the first design's; a receiver and a reader per
/// link the second's.) Parked links stay up past several link timeouts,
/// replicate the next write, and still notice a peer that falls silent.
#[test]
fn idle_replication_links_give_their_threads_back() {
    idle_links(12, "never");
}

/// [`idle_replication_links_give_their_threads_back`] over TLS (as links
/// off the host run by default): a quiet link's TLS tunnels give their
/// threads back too, and the idle reactor carries the heartbeats through
/// the session until traffic brings a tunnel thread back.
#[test]
fn idle_tls_replication_links_give_their_threads_back() {
    idle_links(6, "always");
}

fn idle_links(links: usize, tls: &str) {
    use common::repl::{enable_args, leg, node_trusting, settle, wait_for, wait_state};
    const FIXED: usize = 4;
    const MODES: [&str; 3] = ["sync", "async", "hybrid"];
    require_tool("nbdcopy");
    let secret = "scale-test-secret-0123456789";
    let env = [("UMBRA_REPL_TLS", tls)];
    let (a, _) = node_trusting(
        Daemon::start_with_env(&env),
        "a",
        "127.0.0.1:0",
        secret,
        &["b"],
    );
    let (b, b_addr) = node_trusting(
        Daemon::start_with_env(&env),
        "b",
        "127.0.0.1:0",
        secret,
        &["a"],
    );
    for d in [&a, &b] {
        for i in 0..links {
            d.ok(&["volume", "create", &format!("v{i}"), "--size", "32M"]);
        }
    }
    for i in 0..links {
        let (set, vol) = (format!("s{i}"), format!("v{i}"));
        a.ok(&enable_args(
            &set,
            &vol,
            &b_addr,
            &vol,
            MODES[i % 3],
            &["--no-sync", "--timeout", "2s"],
        ));
    }
    for i in 0..links {
        let vol = format!("v{i}");
        a.export_nbd(&vol);
        b.export_nbd(&vol);
        scribble(&a.addr_of(&vol), &vol, 16, i as u8);
    }
    let connects: Vec<_> = (0..links)
        .map(|i| leg(&settle(&a, &format!("s{i}")), "b")["connects"].clone())
        .collect();
    let quiet = |why: &str| {
        // Senders, apply workers and parked readers go after 2 s idle,
        // round threads after 10 s without a round.
        wait_no_threads(a.pid(), "repl-recv", why);
        wait_no_threads(a.pid(), "repl-send", why);
        wait_no_threads(b.pid(), "repl-peer", why);
        wait_no_threads(b.pid(), "repl-apply", why);
        wait_no_threads(a.pid(), "tls-tunnel", why);
        wait_no_threads(b.pid(), "tls-tunnel", why);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (pa, pb) = (repl_threads(a.pid()), repl_threads(b.pid()));
            if pa.len() <= FIXED && pb.len() <= FIXED {
                eprintln!("{links} idle links: primary {pa:?}; secondary {pb:?}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{why}: primary {pa:?}, secondary {pb:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    };
    quiet("idle links kept their threads");
    // Parked for three link timeouts: the poller's heartbeats keep every
    // link up on both sides.
    std::thread::sleep(std::time::Duration::from_secs(6));
    for (i, before) in connects.iter().enumerate() {
        let v = settle(&a, &format!("s{i}"));
        assert_eq!(
            &leg(&v, "b")["connects"],
            before,
            "parked link stayed up: {v}"
        );
        let w = b.json(&["repl", "info", &format!("s{i}")]);
        assert_eq!(
            w["link"], "up",
            "the secondary's side of a parked link: {w}"
        );
    }
    // A write wakes the link's threads, replicates, and is acknowledged.
    for i in 0..links {
        let vol = format!("v{i}");
        scribble(&a.addr_of(&vol), &vol, 8, 100 + i as u8);
        if i == 0 && tls == "always" {
            let t = threads_named(a.pid(), "tls-tunnel");
            assert!(!t.is_empty(), "writes bring a parked tunnel's thread back");
        }
    }
    for (i, before) in connects.iter().enumerate() {
        let v = settle(&a, &format!("s{i}"));
        assert_eq!(&leg(&v, "b")["connects"], before, "the link stayed up: {v}");
        let vol = format!("v{i}");
        assert_eq!(sha(&a.uri_of(&vol)), sha(&b.uri_of(&vol)), "{vol}");
    }
    quiet("links idle again kept their threads");
    // A secondary that falls silent (stopped, its sockets open) takes
    // every parked link down on the primary within the timeout (2 s) and
    // the poller's tick; continued, it is caught up by autosync.
    let stop = |d: &Daemon, sig| {
        // SAFETY: kill(2) on the test's own child; no memory is involved.
        assert_eq!(unsafe { libc::kill(d.pid(), sig) }, 0);
    };
    stop(&b, libc::SIGSTOP);
    for i in 0..links {
        wait_state(&a, &format!("s{i}"), "logging", 10);
    }
    for i in 0..links {
        let vol = format!("v{i}");
        scribble(&a.addr_of(&vol), &vol, 4, 200 + i as u8);
    }
    stop(&b, libc::SIGCONT);
    for i in 0..links {
        wait_for(
            &a,
            &format!("s{i}"),
            "caught up after the silence",
            |v| v["state"] == "replicating" && v["lag_writes"] == 0,
            90,
        );
    }
    for i in 0..links {
        let vol = format!("v{i}");
        assert_eq!(
            sha(&a.uri_of(&vol)),
            sha(&b.uri_of(&vol)),
            "{vol} after the silence"
        );
    }
    // The primary falls silent: every parked reader on the secondary
    // notices and its link goes down there.
    quiet("links idle a third time kept their threads");
    stop(&a, libc::SIGSTOP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for i in 0..links {
        loop {
            let w = b.json(&["repl", "info", &format!("s{i}")]);
            if w["link"] == "down" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a silent primary's parked link stayed up on the secondary: {w}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    stop(&a, libc::SIGCONT);
}
