//! The event stream as scripts use it: `events --now` prints every object
//! once, then `now.done`, then follows; every event names its object's
//! kind; and the list of event kinds in docs/admin-protocol.md is the list
//! the code emits.

mod common;

use common::repl::{enable_args, node, settle};
use common::*;
use common::{Daemon, EventLog};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn events_now_prints_each_object_once_then_follows() {
    let (a, _) = node("a", "events-secret-0123456789", "b");
    let (b, b_addr) = node("b", "events-secret-0123456789", "a");
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "8M"]);
    }
    a.ok(&["volume", "create", "snap", "--size", "8M"]);
    a.export_nbd("v");
    a.ok(&[
        "image",
        "enable",
        "nightly",
        "--master",
        "v",
        "--shadow",
        "snap",
        "--mode",
        "dependent",
    ]);
    a.ok(&enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        "async",
        &["--no-sync"],
    ));
    settle(&a, "s");

    let mut child = Command::new(UMBRA)
        .args(["events", "--follow", "--now", "--json"])
        .env("UMBRA_SOCKET", a.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&l).unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(10)).expect("an event");
    let mut states = Vec::new();
    loop {
        let e = next();
        if e["kind"] == "now.done" {
            break;
        }
        states.push(e);
    }
    let objs: Vec<(String, String)> = states
        .iter()
        .map(|e| {
            assert_eq!(
                e["kind"].as_str().unwrap(),
                format!("{}.state", e["object_kind"].as_str().unwrap())
            );
            assert!(e["state"].is_object(), "{e}");
            (
                e["object_kind"].as_str().unwrap().to_owned(),
                e["object"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let unique: BTreeSet<_> = objs.iter().cloned().collect();
    assert_eq!(unique.len(), objs.len(), "each object once: {objs:?}");
    for want in [
        ("volume", "default"),
        ("volume", "v"),
        ("volume", "snap"),
        ("export", "default"),
        ("export", "v"),
        ("image_set", "nightly"),
        ("set", "s"),
    ] {
        assert!(
            unique.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} missing from {objs:?}"
        );
    }
    let set = states.iter().find(|e| e["object_kind"] == "set").unwrap();
    assert_eq!(set["state"]["role"], "primary");
    assert_eq!(set["state"]["peers"][0]["peer_node"], "b");
    // The state lines carry the sequence number of the last event before
    // the stream; what follows is numbered after it.
    let at = states[0]["seq"].as_u64().unwrap();
    assert!(states.iter().all(|e| e["seq"] == at));
    a.ok(&["volume", "create", "late", "--size", "1M"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let created = loop {
        let e = next();
        if e["kind"] == "volume.created" {
            break e;
        }
        assert!(Instant::now() < deadline);
    };
    assert_eq!(created["object"], "late");
    assert_eq!(created["object_kind"], "volume");
    assert!(created["seq"].as_u64().unwrap() > at);
    let _ = child.kill();
    let _ = child.wait();

    // `--now` alone: the same state lines, then it exits by itself.
    let out = Command::new(UMBRA)
        .args(["events", "--now", "--json"])
        .env("UMBRA_SOCKET", a.socket())
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .all(|e| e["kind"].as_str().unwrap().ends_with(".state")));
    assert!(lines
        .iter()
        .any(|e| e["object_kind"] == "volume" && e["object"] == "late"));
}

/// The text of every Rust source file under `dir`.
fn rust_sources(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(std::fs::read_to_string(&p).unwrap());
        }
    }
}

/// Every literal event kind in the code (`publish("kind", ...)`, and the
/// services' `emit` and `notify`).
fn emitted_kinds(dir: &Path, out: &mut BTreeSet<String>) {
    let mut files = Vec::new();
    rust_sources(dir, &mut files);
    for text in &files {
        let calls = ["publish(", "emit(", "notify("];
        for (i, call) in calls.iter().flat_map(|c| text.match_indices(c)) {
            let rest = text[i + call.len()..].trim_start();
            let Some(lit) = rest.strip_prefix('"') else {
                continue;
            };
            let kind: String = lit.chars().take_while(|c| *c != '"').collect();
            let shaped = kind.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && kind
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
            });
            if shaped {
                out.insert(kind);
            }
        }
    }
}

/// Every event kind the Events section of docs/admin-protocol.md names.
fn documented_kinds() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/admin-protocol.md")).unwrap();
    let section = &doc[doc.find("## Events").expect("an Events section")..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map(|i| i + 3)
        .unwrap_or(section.len())];
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| {
            t.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_documented_event_kinds_are_the_emitted_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut emitted = BTreeSet::new();
    emitted_kinds(&root.join("src"), &mut emitted);
    assert!(emitted.len() > 30, "the scan found only {emitted:?}");
    let documented = documented_kinds();
    let undocumented: Vec<_> = emitted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "emitted but not in docs/admin-protocol.md's Events: {undocumented:?}"
    );
    // Documented but never emitted literally: only the replication state
    // changes (`repl.<state>`, named after the state) and the `--now`
    // lines may be.
    let states: BTreeSet<String> = [
        "logging",
        "syncing",
        "replicating",
        "need_sync",
        "reverse_syncing",
        "need_reverse_sync",
        "split_brain",
        "failed",
    ]
    .iter()
    .map(|s| format!("repl.{s}"))
    .chain(
        ["volume", "export", "image_set", "set", "hook"]
            .iter()
            .map(|k| format!("{k}.state")),
    )
    .chain(["now.done".to_owned()])
    .collect();
    let stale: Vec<_> = documented
        .difference(&emitted)
        .filter(|k| !states.contains(*k))
        .collect();
    assert!(
        stale.is_empty(),
        "documented but emitted nowhere: {stale:?}"
    );
}

/// Every field name the code gives an event (`.field("name", ...)`).
fn emitted_fields(dir: &Path, out: &mut BTreeSet<String>) {
    let mut files = Vec::new();
    rust_sources(dir, &mut files);
    for text in &files {
        for (i, m) in text.match_indices(".field(\"") {
            let name: String = text[i + m.len()..]
                .chars()
                .take_while(|c| *c != '"')
                .collect();
            out.insert(name);
        }
    }
}

/// The field names in the `fields` column of the Events table (values in
/// parentheses, such as `(nbd, ublk)`, are not names).
fn documented_fields() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/admin-protocol.md")).unwrap();
    let section = &doc[doc.find("## Events").expect("an Events section")..];
    let mut out = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split('|').nth(4).expect("a fields column");
        let mut plain = String::new();
        let mut depth = 0;
        for c in cell.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        for t in plain.split('`').skip(1).step_by(2) {
            if !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                out.insert(t.to_owned());
            }
        }
    }
    out
}

#[test]
fn the_documented_event_fields_are_the_emitted_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut emitted = BTreeSet::new();
    emitted_fields(&root.join("src"), &mut emitted);
    assert!(emitted.len() > 30, "the scan found only {emitted:?}");
    let documented = documented_fields();
    let undocumented: Vec<_> = emitted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "event fields emitted but not in docs/admin-protocol.md's table: {undocumented:?}"
    );
    let stale: Vec<_> = documented.difference(&emitted).collect();
    assert!(
        stale.is_empty(),
        "event fields documented but emitted nowhere: {stale:?}"
    );
}

/// `events --follow` on `d`, returned once it is known to stream: it
/// carries an event made after it started (a marker volume, made again
/// until one is seen, since the subscription may lag the first).
fn follow_started(d: &Daemon) -> EventLog {
    let ev = EventLog::follow(d);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while ev.of_kind("volume.created").is_empty() {
        assert!(Instant::now() < deadline, "the event stream never started");
        i += 1;
        d.ok(&["volume", "create", &format!("marker{i}"), "--size", "1M"]);
        std::thread::sleep(Duration::from_millis(50));
    }
    ev
}

/// Events say only what happened: an `image enable` that created its
/// shadow volume and then failed removes the volume again and says so,
/// truthfully about its backing file.
#[test]
fn a_failed_image_enable_takes_back_the_shadow_it_created_and_says_so() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "v", "--size", "4M"]);
    let ev = follow_started(&d);
    let e = d.fails(&[
        "image",
        "enable",
        "s",
        "--master",
        "v",
        "--shadow",
        "snap",
        "--mode",
        "dependent",
        "--bitmap",
        "/nonexistent-dir/s.bitmap",
    ]);
    assert!(e.contains("s.bitmap") || e.contains("bitmap"), "{e}");
    let removed = ev.wait_for("volume.removed", Duration::from_secs(10));
    assert_eq!(removed["object"], "snap");
    assert!(
        removed["detail"].as_str().unwrap().contains("deleted"),
        "{removed}"
    );
    assert_eq!(removed["fields"]["backing_kept"], false, "{removed}");
    assert!(removed["fields"]["path"]
        .as_str()
        .unwrap()
        .ends_with("snap.img"));
    assert!(
        ev.of_kind("volume.created")
            .iter()
            .any(|e| e["object"] == "snap"),
        "its creation was said first"
    );
    let vols = d.json(&["volume", "list"]);
    assert!(vols.as_array().unwrap().iter().all(|v| v["name"] != "snap"));
    assert!(!d.data_dir().join("snap.img").exists());
}

/// `KIND`'s events in `log` (waiting for `end` first), checked as a
/// progress bar would read them: at least two, the bytes done never going
/// back, the total constant, at most about one a second.
fn progress_of(log: &EventLog, kind: &str, done: &str, end: &str) -> Vec<Value> {
    log.wait_for(end, Duration::from_secs(60));
    let p = log.of_kind(kind);
    assert!(p.len() >= 2, "{kind}: {p:?}");
    for w in p.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(
            b["fields"][done].as_u64() >= a["fields"][done].as_u64(),
            "{a} {b}"
        );
        assert_eq!(a["fields"]["total_bytes"], b["fields"]["total_bytes"]);
        let gap = b["time_ms"].as_u64().unwrap() - a["time_ms"].as_u64().unwrap();
        assert!(gap >= 900, "{kind} events {gap} ms apart: {a} {b}");
    }
    p
}

#[test]
fn progress_events_follow_a_copy_and_a_sync_at_most_once_a_second() {
    let (a, _) = node("a", "events-secret-0123456789", "b");
    let (b, b_addr) = node("b", "events-secret-0123456789", "a");
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "16M"]);
    }
    a.export_nbd("v");
    fill(&a, "v", 16 << 20, 7);
    let log = follow_started(&a);

    // A throttled full copy: 16 MiB in 64 KiB chunks, 12 ms after each.
    a.ok(&[
        "image",
        "enable",
        "full",
        "--master",
        "v",
        "--shadow",
        "copy",
        "--mode",
        "independent",
        "--chunk-size",
        "64K",
        "--throttle-delay-ms",
        "12",
        "--throttle-unit",
        "1",
    ]);
    let p = progress_of(
        &log,
        "image.copy_progress",
        "copied_bytes",
        "image.copy_done",
    );
    assert_eq!(p[0]["object"], "full");
    assert_eq!(p[0]["fields"]["total_bytes"], 16 << 20);
    assert_eq!(p[0]["fields"]["direction"], "to-shadow");
    assert!(p
        .iter()
        .any(|e| e["fields"]["rate_bytes_per_s"].as_u64() > Some(0)));

    // A full sync held at 4 MiB/s.
    a.ok(&enable_args(
        "s",
        "v",
        &b_addr,
        "v",
        "async",
        &["--sync-rate", "4M"],
    ));
    a.ok(&["repl", "sync", "s"]);
    let p = progress_of(
        &log,
        "repl.sync_progress",
        "synced_bytes",
        "repl.replicating",
    );
    assert_eq!(p[0]["object"], "s");
    assert_eq!(p[0]["fields"]["peer"], "b");
    assert_eq!(p[0]["fields"]["total_bytes"], 16 << 20);
    let last = p.last().unwrap();
    let rate = last["fields"]["rate_bytes_per_s"].as_u64().unwrap();
    assert!(
        (1 << 20..12 << 20).contains(&rate),
        "a sync limited to 4 MiB/s moved {rate} bytes/s"
    );
    settle(&a, "s");

    // One shape per object whatever the role: the primary's and the
    // secondary's view of the set have the same keys.
    let keys = |v: Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let (pa, pb) = (
        a.json(&["repl", "info", "s"]),
        b.json(&["repl", "info", "s"]),
    );
    assert_eq!(pa["role"], "primary");
    assert_eq!(pb["role"], "secondary");
    assert!(pb["lag_bytes"].is_null() && pa["applied_writes"].is_null());
    assert_eq!(keys(pa), keys(pb));
}
