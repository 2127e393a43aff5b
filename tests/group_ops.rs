//! Seed 000's group operations on two sites, driven by the CLI: each one
//! drives the group into its state and returns only when it holds;
//! repeating one is a no-op success; a copy cut mid-resync refuses a
//! takeover unless told to use its safety snapshot's data.

mod common;

use common::repl::{enable_args, info, mesh, settle, wait_for};
use common::*;
use std::time::Duration;

const KEY: &str = "group-ops-secret-0123456789";

fn status(d: &Daemon) -> serde_json::Value {
    d.json(&["group", "status", "g"])
}

fn exports_read_only(d: &Daemon, vol: &str) -> bool {
    d.export_of(vol)["read_only"] == true
}

#[test]
fn online_offline_swap_failback_join_and_a_cut_resync() {
    require_tool("nbdcopy");
    let [(mut a, _), (mut b, b_addr)] = mesh(["a", "b"], KEY);
    for d in [&a, &b] {
        for v in ["v1", "v2"] {
            d.ok(&["volume", "create", v, "--size", "32M"]);
            d.export_nbd(v);
        }
    }
    fill(&a, "v1", 32 << 20, 1);
    fill(&a, "v2", 32 << 20, 2);
    for v in ["v1", "v2"] {
        a.ok(&enable_args(
            v,
            v,
            &b_addr,
            v,
            "hybrid",
            &["--group", "g", "--timeout", "2s"],
        ));
    }
    a.ok(&["repl", "sync", "v1", "--wait", "--timeout", "120"]);
    settle(&a, "v2");

    // Status from either node; `online` where it already is does nothing,
    // however often.
    let s = status(&b);
    assert_eq!(s["production"], "a", "{s}");
    assert_eq!(s["production_reachable"], true);
    assert_eq!(s["replicas"][0]["node"], "b");
    assert_eq!(s["online_here"]["action"], "swap", "{s}");
    for _ in 0..2 {
        let v = a.json(&["group", "online", "g"]);
        assert_eq!(v["actions"].as_array().unwrap().len(), 0, "{v}");
        assert_eq!(v["production"], "a");
    }

    // Offline: writes stop (exports read-only), replicas in sync.
    let v = a.json(&["group", "offline", "g"]);
    assert!(v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["state"] == "up-to-date"));
    assert!(exports_read_only(&a, "v1") && exports_read_only(&a, "v2"));
    let mut c = common::nbd::NbdClient::connect(&a.addr_of("v1"), "v1");
    assert_ne!(c.write(0, &[1; 4096], 0), 0, "offline refuses writes");
    c.disconnect();
    a.ok(&["group", "offline", "g"]); // again: holds already

    // Online on B: the production node answers, so a planned swap.
    let v = b.json(&["group", "online", "g"]);
    assert_eq!(v["production"], "b", "{v}");
    assert_eq!(v["actions"][0]["action"], "swap");
    assert_eq!(info(&a, "v1")["role"], "secondary");
    assert_eq!(
        b.json(&["group", "online", "g"])["actions"],
        serde_json::json!([])
    );
    wait_for(&b, "v1", "replicating", |v| v["state"] == "replicating", 60);
    scribble(&b.addr_of("v1"), "v1", 60, 3);
    b.ok(&[
        "group",
        "wait",
        "g",
        "--state",
        "in-sync",
        "--timeout",
        "60",
    ]);
    assert_eq!(sha(&a.uri_of("v1")), sha(&b.uri_of("v1")));

    // Definitions agree; a policy set on one node reaches the other.
    b.ok(&["group", "policy", "g", "--preferred", "a,b"]);
    assert_eq!(
        a.json(&["group", "status", "g"])["policy"]["preferred"][0],
        "a"
    );
    assert_eq!(b.json(&["group", "verify", "g"])["consistent"], true);

    // Failback to the preferred node; its exports take writes again.
    let v = b.json(&["group", "failback", "g"]);
    assert_eq!(v["production"], "a", "{v}");
    assert!(!exports_read_only(&a, "v1"), "online restored the exports");
    scribble(&a.addr_of("v2"), "v2", 40, 4);
    a.ok(&[
        "group",
        "wait",
        "g",
        "--state",
        "in-sync",
        "--timeout",
        "60",
    ]);
    assert_eq!(sha(&a.uri_of("v2")), sha(&b.uri_of("v2")));
    // A release round after the writes settled: B knows its lag as of now.
    let settled_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status(&b)["sets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["last_contact_unix_ms"].as_u64().unwrap_or(0) <= settled_ms)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no release round reached B: {}",
            status(&b)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A dies: B takes over (nothing was in flight), A joins when back.
    a.kill9();
    let s = status(&b);
    assert_eq!(s["production_reachable"], false, "{s}");
    assert_eq!(s["online_here"]["action"], "takeover", "{s}");
    let v = b.json(&["group", "online", "g"]);
    assert_eq!(v["production"], "b");
    assert_eq!(v["actions"][0]["action"], "takeover");
    scribble(&b.addr_of("v1"), "v1", 30, 5);
    a.spawn();
    let v = a.json(&["group", "join", "g"]);
    assert_eq!(v["role"], "secondary", "{v}");
    a.ok(&["group", "join", "g"]); // again: holds already
    assert_eq!(sha(&a.uri_of("v1")), sha(&b.uri_of("v1")));

    // B logs, writes a lot, and the resync to A (slowed down) is cut by
    // B's death: A's copy is inconsistent. A takeover is refused; with
    // --use-inconsistent A comes up on its safety snapshot: the image it
    // held before the resync began.
    b.ok(&["repl", "log", "v1"]);
    let before = sha(&a.uri_of("v1"));
    fill(&b, "v1", 32 << 20, 9);
    for v in ["v1", "v2"] {
        b.ok(&["repl", "tune", v, "--sync-rate", "2M"]);
    }
    b.ok(&["repl", "sync", "v1"]);
    wait_for(
        &b,
        "v1",
        "resync under way",
        |v| v["sync_done_bytes"].as_u64().unwrap_or(0) > 1 << 20,
        60,
    );
    b.kill9();
    let s = status(&a);
    assert_eq!(s["online_here"]["action"], "refuse", "{s}");
    let out = a.cli(&["group", "online", "g"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("potential data loss") && err.contains("--use-inconsistent"),
        "{err}"
    );
    let v = a.json(&["group", "online", "g", "--use-inconsistent"]);
    assert_eq!(v["production"], "a", "{v}");
    assert_eq!(sha(&a.uri_of("v1")), before, "the safety snapshot's data");
    assert_eq!(a.json(&["image", "list"]).as_array().unwrap().len(), 0);
    let _ = &mut b;
}
