//! Replication test helpers: daemons with a replication identity, the
//! arguments of `repl enable`, and waits on a set's `repl info`.

use super::Daemon;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The CLI arguments of `repl enable SET --local LOCAL --peer PEER
/// --remote REMOTE --mode MODE`, then `extra`.
pub fn enable_args<'a>(
    set: &'a str,
    local: &'a str,
    peer: &'a str,
    remote: &'a str,
    mode: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec![
        "repl", "enable", set, "--local", local, "--peer", peer, "--remote", remote, "--mode", mode,
    ];
    v.extend_from_slice(extra);
    v
}

/// A daemon named `name` with a replication listener on loopback that
/// trusts `peer` with `secret`; returns it and its listener's address.
pub fn node(name: &str, secret: &str, peer: &str) -> (Daemon, String) {
    node_trusting(Daemon::start(), name, "127.0.0.1:0", secret, &[peer])
}

/// Give daemon `d` the replication identity `name`, a listener on
/// `listen`, and trust in every one of `peers` with `secret`.
pub fn node_trusting(
    d: Daemon,
    name: &str,
    listen: &str,
    secret: &str,
    peers: &[&str],
) -> (Daemon, String) {
    let key = d.dir.path().join("peer.key");
    std::fs::write(&key, format!("{secret}\n")).unwrap();
    d.ok(&["repl", "setup", "--node", name, "--listen", listen]);
    for peer in peers {
        d.ok(&[
            "repl",
            "peer",
            "add",
            peer,
            "--secret-file",
            key.to_str().unwrap(),
        ]);
    }
    let addr = d.json(&["repl", "status"])["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    (d, addr)
}

/// Daemons named `names` on loopback, each trusting every other with
/// `secret`; each with its listener's address.
pub fn mesh<const N: usize>(names: [&str; N], secret: &str) -> [(Daemon, String); N] {
    names.map(|n| {
        let others: Vec<&str> = names.iter().copied().filter(|x| *x != n).collect();
        node_trusting(Daemon::start(), n, "127.0.0.1:0", secret, &others)
    })
}

/// The leg toward secondary `node` in a primary's `repl info`.
pub fn leg<'a>(v: &'a Value, node: &str) -> &'a Value {
    v["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|l| l["peer_node"] == node))
        .unwrap_or(&Value::Null)
}

/// Every leg of the primary's set is replicating with nothing in flight.
pub fn all_settled(v: &Value) -> bool {
    v["peers"]
        .as_array()
        .is_some_and(|p| !p.is_empty() && p.iter().all(settled))
}

pub fn info(d: &Daemon, set: &str) -> Value {
    d.json(&["repl", "info", set])
}

/// Poll `repl info` until `ok` holds (fail after `secs`, naming `what`).
pub fn wait_for(
    d: &Daemon,
    set: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
    secs: u64,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = info(d, set);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "set {set}: never {what}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replicating with nothing in flight.
pub fn settled(v: &Value) -> bool {
    v["state"] == "replicating" && v["lag_writes"] == 0
}

/// Wait until the set is replicating with nothing in flight.
pub fn settle(d: &Daemon, set: &str) -> Value {
    wait_for(d, set, "settled", settled, 60)
}

pub fn wait_state(d: &Daemon, set: &str, state: &str, secs: u64) -> Value {
    wait_for(
        d,
        set,
        &format!("in state {state}"),
        |v| v["state"] == state,
        secs,
    )
}

pub fn wait_role(d: &Daemon, set: &str, role: &str, secs: u64) -> Value {
    wait_for(d, set, role, |v| v["role"] == role, secs)
}

/// Acknowledged writes, as a writer records them: when, and which block.
pub type Acks = std::sync::Arc<parking_lot::Mutex<Vec<(Instant, u64)>>>;

/// Writes 4 KiB blocks of `byte` to volume `v` at `addr` (block `i % 2048`
/// for the i-th attempt) every few milliseconds until `stop`, recording at
/// once the instant each write is acknowledged. Refused writes (a
/// secondary, a fenced node) and dropped connections are part of the
/// game: it reconnects and goes on.
pub fn writer(
    addr: String,
    byte: u8,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (std::thread::JoinHandle<()>, Acks) {
    writer_in(None, addr, byte, stop)
}

/// [`writer`] from inside network namespace `ns`.
pub fn writer_in(
    ns: Option<String>,
    addr: String,
    byte: u8,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (std::thread::JoinHandle<()>, Acks) {
    let acked = Acks::default();
    let log = acked.clone();
    let h = std::thread::spawn(move || {
        if let Some(ns) = ns {
            super::netns::enter(&ns);
        }
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok(s) = std::net::TcpStream::connect(&addr) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            drop(s);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut c = super::nbd::NbdClient::connect(&addr, "v");
                for _ in 0..50 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    i += 1;
                    if c.write((i % 2048) * 4096, &[byte; 4096], 0) == 0 {
                        log.lock().push((Instant::now(), i % 2048));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                c.disconnect();
            }));
        }
    });
    (h, acked)
}

/// Wait until `acks` holds at least one acknowledgement.
pub fn wait_acked(acks: &Acks, who: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while acks.lock().is_empty() {
        assert!(Instant::now() < deadline, "{who} acknowledged no write");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The 4 KiB blocks in which volume `v`'s backing files on `a` and `b`
/// differ once they converge (a resync still finishing gets 30 s), with
/// each side's first byte (which writer's bytes it holds; 0 for none).
pub fn differing_blocks(a: &Daemon, b: &Daemon, v: &str) -> Vec<(usize, u8, u8)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.sha_of(v) != b.sha_of(v) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let img = format!("{v}.img");
    let (fa, fb) = (
        std::fs::read(a.data_dir().join(&img)).unwrap(),
        std::fs::read(b.data_dir().join(&img)).unwrap(),
    );
    (0..fa.len().min(fb.len()) / 4096)
        .filter(|i| fa[i * 4096..(i + 1) * 4096] != fb[i * 4096..(i + 1) * 4096])
        .map(|i| (i, fa[i * 4096], fb[i * 4096]))
        .take(16)
        .collect()
}
