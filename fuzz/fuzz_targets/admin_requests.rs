//! The admin protocol as a client sees it: each input is what one client
//! sends over the real admin socket of a real daemon (its data dir in a
//! temporary directory). The daemon answers every line or hangs up, and
//! never crashes (a panic aborts the process: a finding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use umbra::control::admin;
use umbra::control::daemon::{Daemon, DaemonOptions};

fn daemon() -> &'static (tempfile::TempDir, PathBuf, Arc<Daemon>) {
    static D: OnceLock<(tempfile::TempDir, PathBuf, Arc<Daemon>)> = OnceLock::new();
    D.get_or_init(|| {
        // libFuzzer's C main keeps SIGPIPE's default action, which a Rust
        // program's runtime (the daemon's) sets to ignore: do the same, or
        // a write to a peer that hung up kills the fuzzer (see nbd_server).
        // SAFETY: no thread exists yet; SIG_IGN installs no handler.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = Daemon::start(DaemonOptions {
            data_dir: dir.path().join("data"),
            default_listen: Some("127.0.0.1:0".parse().unwrap()),
            nbd_max_clients: umbra::export::nbd::DEFAULT_MAX_CLIENTS,
        })
        .unwrap();
        let sock = d.socket_path();
        let l = admin::bind(&sock).unwrap();
        let d2 = d.clone();
        std::thread::spawn(move || admin::accept_loop(l, d2));
        (dir, sock, d)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, sock, _) = daemon();
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = c.write_all(data);
    let _ = c.write_all(b"\n");
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    // Every line the daemon writes is JSON (a reply or an event).
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        serde_json::from_slice::<serde_json::Value>(line).expect("the daemon writes JSON lines");
    }
});
