//! Notification hooks through the real daemon and CLI: a hook command gets
//! each matching event on stdin and in its environment; a hook that hangs
//! is killed at its timeout while the daemon goes on serving; hooks
//! persist across a restart; bad hooks are refused with the hook named.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The hook `name` as `hook list --json` shows it.
fn hook(d: &Daemon, name: &str) -> Value {
    d.json(&["hook", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hooks_get_their_events_time_out_and_survive_a_restart() {
    let mut d = Daemon::start();
    let dir = d.dir.path().to_owned();
    let log = dir.join("events.log");
    let rec = dir.join("record.sh");
    // One line per event: the environment's kind and object, then the
    // JSON that came on stdin.
    script(
        &rec,
        &format!(
            "printf '%s %s %s %s ' \"$UMBRA_HOOK\" \"$UMBRA_EVENT_KIND\" \"$UMBRA_EVENT_OBJECT\" \"${{UMBRA_FIELD_SIZE_BYTES:--}}\" >> {0}\ncat >> {0}",
            log.display()
        ),
    );
    let hang = dir.join("hang.sh");
    script(&hang, "sleep 600");
    let fail = dir.join("fail.sh");
    script(&fail, "echo 'no pager configured' >&2\nexit 3");

    d.ok(&[
        "hook",
        "add",
        "rec",
        "--on",
        "volume.*",
        "--run",
        rec.to_str().unwrap(),
    ]);
    // Adding the same hook again changes nothing; another with the name
    // is refused.
    d.ok(&[
        "hook",
        "add",
        "rec",
        "--on",
        "volume.*",
        "--run",
        rec.to_str().unwrap(),
    ]);
    let e = d.fails(&[
        "hook",
        "add",
        "rec",
        "--on",
        "repl.*",
        "--run",
        rec.to_str().unwrap(),
    ]);
    assert!(e.contains("hook rec exists"), "{e}");
    let e = d.fails(&["hook", "add", "bad", "--on", "re*pl", "--run", "/bin/true"]);
    assert!(e.contains("hook bad") && e.contains("wildcard"), "{e}");
    let e = d.fails(&[
        "hook",
        "add",
        "gone",
        "--on",
        "*",
        "--run",
        "/nonexistent/cmd",
    ]);
    assert!(e.contains("hook gone") && e.contains("not a file"), "{e}");
    d.ok(&[
        "hook",
        "add",
        "hang",
        "--on",
        "volume.created",
        "--run",
        hang.to_str().unwrap(),
        "--timeout",
        "1s",
    ]);
    d.ok(&[
        "hook",
        "add",
        "fail",
        "--on",
        "volume.removed",
        "--run",
        fail.to_str().unwrap(),
    ]);

    d.ok(&["volume", "create", "a", "--size", "1M"]);
    // The daemon serves while the hanging hook runs.
    let t = Instant::now();
    d.ok(&["volume", "create", "b", "--size", "1M"]);
    d.ok(&["status"]);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    d.ok(&["volume", "remove", "b"]);
    wait_until("rec saw three events", 10, || {
        std::fs::read_to_string(&log)
            .map(|s| s.lines().filter(|l| l.ends_with('}')).count() >= 3)
            .unwrap_or(false)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // A field in the environment: the created volumes' size.
    assert!(
        lines[0].starts_with("rec volume.created a 1048576 {"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("rec volume.created b 1048576 {"),
        "{text}"
    );
    assert!(lines[2].starts_with("rec volume.removed b - {"), "{text}");
    for l in &lines {
        let json: Value = serde_json::from_str(l.splitn(5, ' ').nth(4).unwrap()).unwrap();
        assert!(json["fields"].is_object(), "{l}");
        assert!(json["seq"].as_u64().unwrap() > 0, "{l}");
        assert!(json["kind"].as_str().unwrap().starts_with("volume."));
    }
    // The hanging hook was killed at its timeout, twice; the failing one
    // says why.
    wait_until("hang timed out twice", 10, || {
        hook(&d, "hang")["status"]["failures"] == 2
    });
    let h = hook(&d, "hang");
    assert!(
        h["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1000 ms"),
        "{h}"
    );
    wait_until("fail ran", 10, || hook(&d, "fail")["status"]["runs"] == 1);
    let f = hook(&d, "fail");
    let err = f["status"]["last_error"].as_str().unwrap();
    assert!(
        err.contains("exit status: 3") && err.contains("no pager configured"),
        "{f}"
    );
    assert_eq!(hook(&d, "rec")["status"]["failures"], 0);

    // Persisted: after a restart the hooks are back and run.
    d.stop();
    d.spawn();
    assert_eq!(d.json(&["hook", "list"]).as_array().unwrap().len(), 3);
    d.ok(&["hook", "remove", "hang"]);
    d.ok(&["volume", "create", "c", "--size", "1M"]);
    wait_until("rec saw c after the restart", 10, || {
        std::fs::read_to_string(&log)
            .map(|s| s.contains("rec volume.created c 1048576 {"))
            .unwrap_or(false)
    });
    assert!(hook(&d, "hang").is_null());
    let e = d.fails(&["hook", "remove", "hang"]);
    assert!(e.contains("no hook named hang"), "{e}");
}
