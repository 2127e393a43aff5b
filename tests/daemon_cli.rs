//! The daemon driven through its CLI only: lifecycle, persistence across a
//! restart, exit codes, errors that name the object, help, events, socket
//! permissions, a second daemon on the same data dir.

mod common;

use common::nbd::NbdClient;
use common::{Daemon, UMBRA};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

#[test]
fn first_start_creates_the_default_volume_and_export() {
    let d = Daemon::start();
    let banner = d.stdout.join("\n");
    assert!(banner.contains("created volume `default`"), "{banner}");
    assert!(banner.contains("nbdinfo 'nbd://127.0.0.1:"), "{banner}");
    let vols = d.json(&["volume", "list"]);
    assert_eq!(vols[0]["name"], "default");
    assert_eq!(vols[0]["size_bytes"], 1u64 << 30);
    assert_eq!(vols[0]["state"], "online");
    let mut c = NbdClient::connect(&d.addr_of("default"), "default");
    assert_eq!(c.size, 1 << 30);
    assert_eq!(c.write(0, &[7; 4096], 0), 0);
    assert_eq!(c.read(0, 4096).unwrap(), vec![7; 4096]);

    // `--no-default` (here through its variable): a first start with
    // nothing, and it stays empty after a restart.
    let mut e = Daemon::start_with_env(&[("UMBRA_NO_DEFAULT", "1")]);
    assert!(!e.stdout.join("\n").contains("created volume"));
    assert_eq!(e.json(&["volume", "list"]), serde_json::json!([]));
    assert_eq!(e.json(&["export", "list"]), serde_json::json!([]));
    e.stop();
    e.spawn();
    assert_eq!(e.json(&["volume", "list"]), serde_json::json!([]));
}

#[test]
fn volumes_exports_and_data_survive_a_restart() {
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "db", "--size", "64M"]);
    d.ok(&[
        "volume", "create", "logs", "--size", "16M", "--engine", "sync",
    ]);
    let file = d.dir.path().join("existing.img");
    std::fs::write(&file, vec![0x5a; 8 << 20]).unwrap();
    d.ok(&["volume", "add", "ext", "--path", file.to_str().unwrap()]);
    let uri = d.export_nbd("db");
    let addr = d.addr_of("db");
    let sock = d.dir.path().join("logs.sock");
    d.ok(&[
        "export",
        "nbd",
        "logs",
        "--listen",
        &format!("unix:{}", sock.display()),
    ]);

    let mut c = NbdClient::connect(&addr, "db");
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(c.write(1 << 20, &data, 0), 0);
    assert_eq!(c.flush(), 0);
    c.disconnect();

    let before_vols = d.json(&["volume", "list"]);
    let before_exports = d.json(&["export", "list"]);
    assert_eq!(before_vols.as_array().unwrap().len(), 4);
    assert_eq!(d.stop(), 0, "clean shutdown exits 0");

    d.spawn();
    assert!(!d.stdout.join("\n").contains("first start"));
    let after_vols = d.json(&["volume", "list"]);
    let after_exports = d.json(&["export", "list"]);
    // Everything but the I/O counters, which start again at zero.
    let without_io = |v: &serde_json::Value| {
        let mut v = v.clone();
        for x in v.as_array_mut().unwrap() {
            x.as_object_mut().unwrap().remove("io");
        }
        v
    };
    assert_eq!(without_io(&before_vols), without_io(&after_vols));
    assert_eq!(after_vols[0]["io"]["write"]["ops"], 0);
    // Same addresses (the ephemeral port was recorded), clients reset to 0.
    assert_eq!(before_exports, after_exports);
    assert_eq!(d.uri_of("db"), uri);
    let mut c = NbdClient::connect(&addr, "db");
    assert_eq!(c.read(1 << 20, data.len()).unwrap(), data);
    let info = d.json(&["volume", "info", "ext"]);
    assert_eq!(info["size_bytes"], 8 << 20);
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
}

#[test]
fn exit_codes_and_errors_name_the_object() {
    let d = Daemon::start();
    let out = d.cli(&["volume", "info", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ghost"), "{err}");

    let out = d.cli(&["volume", "create", "x"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --size is a usage error"
    );
    let out = d.cli(&["volume", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.cli(&["volume", "create", "x", "--size", "12Q"]);
    assert_eq!(out.status.code(), Some(2));

    d.ok(&["volume", "create", "x", "--size", "1M"]);
    let out = d.cli(&["volume", "create", "x", "--size", "1M"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("volume x already exists"));

    let out = d.cli(&["volume", "create", "odd", "--size", "1000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of 512"));

    let out = d.cli(&["volume", "add", "nofile", "--path", "/nonexistent/disk.img"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nofile") && err.contains("/nonexistent/disk.img"),
        "{err}"
    );

    d.export_nbd("x");
    let out = d.cli(&["volume", "remove", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is exported"));
    let out = d.cli(&["export", "nbd", "x"]);
    assert_eq!(out.status.code(), Some(1));
    d.ok(&["volume", "remove", "x", "--force"]);
    assert!(d
        .json(&["export", "list"])
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["volume"] != "x"));

    let out = Command::new(UMBRA)
        .args(["status"])
        .env("UMBRA_SOCKET", "/nonexistent/umbra.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `umbra serve` running"));
}

#[test]
fn help_teaches_with_examples_at_every_level() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["volume", "create", "--help"],
        vec!["volume", "add", "--help"],
        vec!["volume", "remove", "--help"],
        vec!["volume", "list", "--help"],
        vec!["volume", "info", "--help"],
        vec!["export", "nbd", "--help"],
        vec!["export", "list", "--help"],
        vec!["export", "remove", "--help"],
        vec!["cache", "enable", "--help"],
        vec!["cache", "disable", "--help"],
        vec!["cache", "stats", "--help"],
        vec!["status", "--help"],
        vec!["events", "--help"],
    ] {
        let out = Command::new(UMBRA).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example") || text.contains("umbra serve &"),
            "{args:?} --help has no example:\n{text}"
        );
    }
}

#[test]
fn events_stream_state_changes_as_they_happen() {
    let d = Daemon::start();
    let mut follower = Command::new(UMBRA)
        .args(["events", "--follow", "--json"])
        .env("UMBRA_SOCKET", d.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI says so on stderr once the subscription is live.
    let mut err_lines = BufReader::new(follower.stderr.take().unwrap()).lines();
    let first = err_lines.next().unwrap().unwrap();
    assert!(first.contains("following events"), "{first}");
    d.ok(&["volume", "create", "ev", "--size", "1M"]);
    d.export_nbd("ev");
    d.ok(&["export", "remove", "ev"]);
    d.ok(&["volume", "remove", "ev"]);
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let line = lines.next().expect("event line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["object"], "ev");
        kinds.push(v["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        kinds,
        [
            "volume.created",
            "export.added",
            "export.removed",
            "volume.removed"
        ]
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
}

#[test]
fn admin_socket_is_private_and_the_data_dir_is_locked() {
    let d = Daemon::start();
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = d.serve_again();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another umbra daemon"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first daemon is unaffected.
    d.ok(&["status"]);
}

#[test]
fn a_corrupt_configuration_is_refused_with_a_clear_error() {
    let mut d = Daemon::start();
    assert_eq!(d.stop(), 0);
    std::fs::write(
        d.data_dir().join("umbra.json"),
        "{\"version\": 1, \"volumes\": [ oops",
    )
    .unwrap();
    let out = d.serve_again();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("umbra.json") && err.contains("not a valid"),
        "{err}"
    );
}

#[test]
fn a_missing_backing_file_leaves_the_volume_offline_not_the_daemon_down() {
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "gone", "--size", "1M"]);
    d.export_nbd("gone");
    assert_eq!(d.stop(), 0);
    std::fs::remove_file(d.data_dir().join("gone.img")).unwrap();
    d.spawn();
    let v = d.json(&["volume", "info", "gone"]);
    assert_eq!(v["state"], "offline");
    assert!(v["error"].as_str().unwrap().contains("gone.img"));
    let gone = d.export_of("gone");
    assert_eq!(gone["state"], "failed");
    assert!(gone["error"].as_str().unwrap().contains("offline"));
    // Everything else works.
    let mut c = NbdClient::connect(&d.addr_of("default"), "default");
    assert_eq!(c.flush(), 0);
}

#[test]
fn cache_enable_stats_restart_disable_through_the_cli() {
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "c", "--size", "16M"]);
    d.export_nbd("c");
    let addr = d.addr_of("c");
    let mut client = NbdClient::connect(&addr, "c");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    assert_eq!(client.write(0, &data, 0), 0);

    d.ok(&["cache", "enable", "c", "--size", "8M"]);
    let info = d.json(&["volume", "info", "c"]);
    assert_eq!(info["services"], serde_json::json!(["cache"]));
    assert_eq!(info["cache"]["size_bytes"], 8 << 20);
    // The same client keeps working across the enable, and reads twice.
    for _ in 0..2 {
        assert_eq!(client.read(0, data.len()).unwrap(), data);
    }
    let stats = d.json(&["cache", "stats", "c"]);
    assert_eq!(stats["read_misses"], 256, "{stats}");
    assert!(stats["read_hits"].as_u64().unwrap() >= 256, "{stats}");
    assert_eq!(stats["mode"], "write-through");
    let table = d.ok(&["cache", "stats"]);
    assert!(table.contains("HIT%") && table.contains("c "), "{table}");

    // Errors name the volume; exit code 1.
    for (args, needle) in [
        (vec!["cache", "enable", "c"], "already has a cache"),
        (vec!["cache", "enable", "ghost"], "ghost"),
        (vec!["cache", "disable", "default"], "has no cache"),
        (vec!["cache", "stats", "default"], "has no cache"),
    ] {
        let out = d.cli(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}"
        );
    }
    let out = d.cli(&["cache", "enable", "default", "--size", "4K"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("minimum"));

    drop(client);
    assert_eq!(d.stop(), 0);
    d.spawn();
    let info = d.json(&["volume", "info", "c"]);
    assert_eq!(
        info["services"],
        serde_json::json!(["cache"]),
        "cache restored"
    );
    let mut client = NbdClient::connect(&addr, "c");
    assert_eq!(client.read(0, data.len()).unwrap(), data);
    d.ok(&["cache", "disable", "c"]);
    assert_eq!(
        d.json(&["volume", "info", "c"])["services"],
        serde_json::json!([])
    );
    assert_eq!(client.read(0, data.len()).unwrap(), data);
}

#[test]
fn export_remove_disconnects_its_clients_and_no_one_else() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "a", "--size", "1M"]);
    d.ok(&["volume", "create", "b", "--size", "1M"]);
    d.export_nbd("a");
    let addr = d.addr_of("a");
    d.ok(&["export", "nbd", "b", "--listen", &addr]);
    let mut ca = NbdClient::connect(&addr, "a");
    let mut cb = NbdClient::connect(&addr, "b");
    assert_eq!(ca.write(0, &[1; 4096], 0), 0);
    assert_eq!(d.export_of("a")["clients"], 1);

    d.ok(&["export", "remove", "a"]);
    // a's client is cut off; b's carries on, on the same listener.
    ca.send(common::nbd::CMD_READ, 0, 0, 4096, &[]);
    assert!(
        ca.reply(None).is_err(),
        "removed export's client disconnected"
    );
    assert_eq!(cb.write(0, &[2; 4096], 0), 0);
    assert_eq!(cb.read(0, 4096).unwrap(), vec![2; 4096]);
    // The data written through the removed export is kept.
    d.ok(&["export", "nbd", "a", "--listen", &addr]);
    let mut ca = NbdClient::connect(&addr, "a");
    assert_eq!(ca.read(0, 4096).unwrap(), vec![1; 4096]);
}

#[test]
fn a_read_only_export_refuses_writes_with_eperm() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "ro", "--size", "1M"]);
    d.ok(&[
        "export",
        "nbd",
        "ro",
        "--listen",
        "127.0.0.1:0",
        "--read-only",
    ]);
    assert_eq!(d.export_of("ro")["read_only"], true);
    let mut c = NbdClient::connect(&d.addr_of("ro"), "ro");
    assert_eq!(c.write(0, &[9; 512], 0), 1, "NBD_EPERM");
    let h = c.send(common::nbd::CMD_TRIM, 0, 0, 4096, &[]);
    assert_eq!(c.reply(None).unwrap(), (h, 1));
    let h = c.send(common::nbd::CMD_WRITE_ZEROES, 0, 0, 4096, &[]);
    assert_eq!(c.reply(None).unwrap(), (h, 1));
    assert_eq!(c.read(0, 512).unwrap(), vec![0; 512], "nothing was written");
    assert_eq!(c.flush(), 0);
}

/// The man pages and completions in `doc/` are what the CLI generates
/// now: a changed option without `umbra generate-docs doc` fails here.
#[test]
fn checked_in_man_pages_and_completions_match_the_cli() {
    let out = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(common::UMBRA)
        .args(["generate-docs", out.path().to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .status()
        .unwrap();
    assert!(st.success());
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("doc");
    for sub in ["man", "completions"] {
        let list = |d: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(d.join(sub))
                .unwrap_or_else(|e| panic!("{}: {e}", d.join(sub).display()))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let (fresh, kept) = (list(out.path()), list(&repo));
        assert_eq!(
            fresh, kept,
            "doc/{sub} lists other files than the CLI generates; run `umbra generate-docs doc`"
        );
        for f in fresh {
            assert!(
                std::fs::read(out.path().join(sub).join(&f)).unwrap()
                    == std::fs::read(repo.join(sub).join(&f)).unwrap(),
                "doc/{sub}/{f} differs from what the CLI generates; run `umbra generate-docs doc`"
            );
        }
    }
}

/// Under systemd (`Type=notify`): READY=1 comes once the exports serve
/// (an NBD client connected the moment it arrives gets data), STOPPING=1
/// when SIGTERM starts the shutdown, and the log lines carry the journal's
/// `<N>` priority instead of a timestamp.
#[test]
fn under_systemd_ready_means_serving_and_stopping_is_said() {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let port = common::free_port();
    let child = Command::new(UMBRA)
        .arg("serve")
        .env("UMBRA_DATA_DIR", dir.path().join("data"))
        .env("UMBRA_DEFAULT_LISTEN", format!("127.0.0.1:{port}"))
        .env("NOTIFY_SOCKET", &notify)
        .env("JOURNAL_STREAM", "8:12345")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        msg.contains("READY=1") && msg.contains("STATUS=serving 1 volumes"),
        "{msg}"
    );
    // The moment READY arrives, the default export serves.
    let mut c = NbdClient::connect(&format!("127.0.0.1:{port}"), "default");
    assert_eq!(c.read(0, 4096).unwrap().len(), 4096);
    c.disconnect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("STOPPING=1"), "{msg}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    let first = log.lines().next().unwrap_or_default();
    assert!(first.starts_with("<6>"), "journal priority prefix: {log}");
    assert!(
        !first.contains("Z "),
        "no timestamp under the journal: {log}"
    );
    assert!(log.contains("<6>umbra::"), "{log}");
}

/// A client whose output pipe closes early ends quietly, as Unix tools
/// do: no panic, no "Broken pipe" message.
#[test]
fn a_closed_output_pipe_ends_the_cli_quietly() {
    let d = Daemon::start();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{UMBRA} stats --interval 50ms | head -n 2 >/dev/null"
        ))
        .env("UMBRA_SOCKET", d.socket())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "stderr: {err}");
}

/// Every file, directory and socket under `dir`, with its mode.
fn modes_under(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), m.permissions().mode() & 0o777, m.is_dir()));
        if m.is_dir() {
            modes_under(&p, out);
        }
    }
}

#[test]
fn everything_the_daemon_creates_is_private() {
    let key = "private-files-secret-0123456789";
    let [(a, _), (b, b_addr)] = common::repl::mesh(["a", "b"], key);
    // A volume, an image set with its shadow and bitmap, a write-back cache
    // with its safe store, a replication set (scoreboard on A, secondary
    // state on B), NBD on a unix socket.
    for d in [&a, &b] {
        d.ok(&["volume", "create", "v", "--size", "8M"]);
    }
    a.ok(&["volume", "create", "m", "--size", "8M"]);
    a.ok(&[
        "image",
        "enable",
        "snap",
        "--master",
        "m",
        "--shadow",
        "s",
        "--mode",
        "dependent",
    ]);
    a.ok(&["volume", "create", "c", "--size", "8M"]);
    let store = a.data_dir().join("c.safe");
    a.ok(&[
        "cache",
        "enable",
        "c",
        "--mode",
        "write-back",
        "--safe-store",
        store.to_str().unwrap(),
        "--safe-store-size",
        "16M",
    ]);
    a.ok(&common::repl::enable_args(
        "r",
        "v",
        &b_addr,
        "v",
        "sync",
        &["--no-sync", "--timeout", "2s"],
    ));
    common::repl::wait_for(&a, "r", "settled", common::repl::settled, 30);
    let sock = a.data_dir().join("m.nbd");
    a.ok(&[
        "export",
        "nbd",
        "m",
        "--listen",
        &format!("unix:{}", sock.display()),
    ]);
    for d in [&a, &b] {
        let data = d.data_dir();
        let dir_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "{}", data.display());
        let mut all = Vec::new();
        modes_under(&data, &mut all);
        assert!(all.len() >= 3, "{all:?}");
        for (p, mode, is_dir) in &all {
            let want = if *is_dir { 0o700 } else { 0o600 };
            assert_eq!(*mode, want, "{} is {mode:o}", p.display());
        }
    }
    // An export that should be shared says so, and only a socket may.
    let shared = a.dir.path().join("shared.nbd");
    a.ok(&[
        "export",
        "nbd",
        "v",
        "--listen",
        &format!("unix:{}", shared.display()),
        "--mode",
        "0660",
    ]);
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let out = a.cli(&[
        "export",
        "nbd",
        "c",
        "--listen",
        "127.0.0.1:0",
        "--mode",
        "0660",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unix:PATH"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.cli(&[
        "export",
        "nbd",
        "c",
        "--listen",
        "unix:/tmp/x.nbd",
        "--mode",
        "99",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a mode that is not octal is a usage error"
    );
}

/// A panic on a data-path thread stops the whole daemon (SIGABRT) rather
/// than leaving it running with half-updated state; the restart recovers
/// the volume with every flushed write.
#[test]
fn a_panic_on_a_data_path_thread_stops_the_daemon_and_a_restart_recovers() {
    use std::os::unix::process::ExitStatusExt;
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "v", "--size", "8M"]);
    d.export_nbd("v");
    let mut c = NbdClient::connect(&d.addr_of("v"), "v");
    assert_eq!(c.write(4096, &[0x5a; 4096], 0), 0);
    assert_eq!(c.flush(), 0);
    c.disconnect();
    assert_eq!(d.stop(), 0);
    // The same daemon with a panic injected into its NBD writes.
    d.env = vec![("UMBRA_INJECT_PANIC".into(), "nbd.write".into())];
    d.spawn();
    let addr = d.addr_of("v");
    let _ = std::panic::catch_unwind(move || {
        let mut c = NbdClient::connect(&addr, "v");
        c.write(8192, &[0xa5; 4096], 0)
    });
    let status = common::wait_timeout(
        d.child.as_mut().unwrap(),
        std::time::Duration::from_secs(10),
    )
    .expect("the daemon stopped after the panic");
    d.child = None;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    // Back without the fault: the volume and its flushed write are there.
    d.env.clear();
    d.spawn();
    let mut c = NbdClient::connect(&d.addr_of("v"), "v");
    let data = c.read(4096, 4096).expect("the read succeeds");
    assert!(data.iter().all(|b| *b == 0x5a));
    c.disconnect();
}

/// A user who may not manage the daemon is told so, every time: when the
/// socket itself is out of reach, and when the daemon refuses its uid
/// (never a "broken pipe" from a request the daemon did not read).
#[test]
fn a_user_who_may_not_manage_the_daemon_gets_a_permission_error() {
    use std::os::unix::process::CommandExt;
    common::require_root();
    let d = Daemon::start();
    let as_nobody = |args: &[&str]| {
        Command::new(UMBRA)
            .arg("--socket")
            .arg(d.socket())
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    // The data dir is 0700: the socket is out of reach.
    let out = as_nobody(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    // Reachable (an administrator opened it up), but the daemon checks
    // the caller's uid.
    for p in [d.dir.path(), &d.data_dir()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    for _ in 0..20 {
        let out = as_nobody(&["volume", "create", "x", "--size", "1M"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("uid 65534 may not manage this daemon"),
            "{err}"
        );
    }
    assert_eq!(d.json(&["volume", "list"]).as_array().unwrap().len(), 1);
}

/// `--latency` makes a slow device (tests and benchmarks): every request
/// waits that long first, it shows in `volume info`, and it survives a
/// restart.
#[test]
fn a_volume_with_added_latency_is_slow_and_says_so() {
    let mut d = Daemon::start();
    d.ok(&[
        "volume",
        "create",
        "slow",
        "--size",
        "4M",
        "--latency",
        "5ms",
    ]);
    let info = d.json(&["volume", "info", "slow"]);
    assert!(
        info.to_string().contains("5000 us added per request"),
        "{info}"
    );
    d.export_nbd("slow");
    let time_reads = |d: &Daemon| {
        let mut c = NbdClient::connect(&d.addr_of("slow"), "slow");
        let t0 = std::time::Instant::now();
        for i in 0..10 {
            c.read(i * 4096, 4096).expect("a read");
        }
        let took = t0.elapsed();
        c.disconnect();
        took
    };
    // A lower bound only: ten requests one after the other each waited.
    let took = time_reads(&d);
    assert!(took >= std::time::Duration::from_millis(50), "{took:?}");
    assert_eq!(d.stop(), 0);
    d.spawn();
    let took = time_reads(&d);
    assert!(
        took >= std::time::Duration::from_millis(50),
        "after a restart: {took:?}"
    );
    for bad in ["5", "-1ms", "20s", "fast"] {
        let out = d.cli(&["volume", "create", "x", "--size", "1M", "--latency", bad]);
        assert_eq!(out.status.code(), Some(2), "--latency {bad}");
    }
}

/// `volume resize` grows a volume (new NBD clients see the size, data
/// stays) and refuses what would cut what others use; `volume remove
/// --delete-data` deletes the backing file, only with --yes when no one
/// can be asked.
#[test]
fn resize_and_remove_with_its_data() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "g", "--size", "4M"]);
    d.export_nbd("g");
    let mut c = NbdClient::connect(&d.addr_of("g"), "g");
    assert_eq!(c.write(4096, &[0x77; 4096], 0), 0);
    assert_eq!(c.flush(), 0);
    c.disconnect();
    let v = d.json(&["volume", "resize", "g", "--size", "8M"]);
    assert_eq!(v["size_bytes"], 8 << 20, "{v}");
    let mut c = NbdClient::connect(&d.addr_of("g"), "g");
    let data = c.read(4096, 4096).expect("old data");
    assert!(data.iter().all(|b| *b == 0x77));
    // The new end is there and reads as zeroes.
    let end = c.read((8 << 20) - 4096, 4096).expect("the new end");
    assert!(end.iter().all(|b| *b == 0));
    c.disconnect();
    let out = d.cli(&["volume", "resize", "g", "--size", "2M"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is exported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.cli(&["volume", "resize", "g", "--size", "1000"]);
    assert_ne!(out.status.code(), Some(0), "not a multiple of 512");
    // Same size: nothing to do.
    d.ok(&["volume", "resize", "g", "--size", "8M"]);
    let path = std::path::PathBuf::from(d.json(&["volume", "info", "g"])["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
    // No terminal to ask: --delete-data needs --yes.
    let out = d.cli(&["volume", "remove", "g", "--force", "--delete-data"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(path.exists(), "nothing was deleted without --yes");
    d.ok(&["volume", "remove", "g", "--force", "--delete-data", "--yes"]);
    assert!(!path.exists(), "the backing file is gone");
    // Without --delete-data the file stays.
    d.ok(&["volume", "create", "k", "--size", "1M"]);
    let kept = d.data_dir().join("k.img");
    d.ok(&["volume", "remove", "k"]);
    assert!(kept.exists());
}
