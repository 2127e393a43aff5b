//! The cluster as tests see it through the CLI: joining, etcd's owner
//! records, and convergence of two copies.

use super::repl::{differing_blocks, info};
use super::Daemon;
use std::time::{Duration, Instant};

pub fn cluster_status(d: &Daemon) -> serde_json::Value {
    d.json(&["cluster", "status"])
}

pub fn owner(d: &Daemon, g: &str) -> Option<String> {
    cluster_status(d)["groups"]
        .as_array()?
        .iter()
        .find(|x| x["group"] == g)?["owner"]["node"]
        .as_str()
        .map(str::to_owned)
}

/// `cluster join` of `d` to the etcd at `etcd`, as cluster `name` with a
/// lease of `ttl` seconds.
pub fn join(d: &Daemon, etcd: &str, name: &str, ttl: u32) {
    d.ok(&[
        "cluster",
        "join",
        "--etcd",
        etcd,
        "--name",
        name,
        "--ttl",
        &ttl.to_string(),
    ]);
}

/// Wait until etcd, read through `d`, gives each group of `owners` its
/// owner.
pub fn wait_owners(d: &Daemon, owners: &[(&str, &str)], secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while owners
        .iter()
        .any(|(g, n)| owner(d, g).as_deref() != Some(*n))
    {
        assert!(
            Instant::now() < deadline,
            "etcd never said {owners:?}: {}",
            cluster_status(d)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A's and B's copies of `v` are the same, block for block (a resync
/// still finishing gets its time); otherwise name the blocks, whose
/// writer's bytes each side holds, and both sides' state of set `s`.
pub fn assert_converged(a: &Daemon, b: &Daemon, after: &str) {
    let differ = differing_blocks(a, b, "v");
    assert!(
        differ.is_empty(),
        "blocks differ after {after} (block, byte on A, byte on B): {differ:x?}; A: {}; B: {}",
        info(a, "s"),
        info(b, "s")
    );
}
