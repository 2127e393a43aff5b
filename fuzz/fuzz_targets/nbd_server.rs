//! The NBD server, handshake and transmission phase, as a client sees it:
//! each input is the byte stream one client sends over a real connection
//! (a unix socket) to a real server exporting a 1 MiB memory volume. The
//! server must answer or hang up, never crash, and never let a request
//! touch memory outside the volume.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use umbra::backend::memory::MemoryBackend;
use umbra::export::nbd::{ListenAddr, NbdServer};
use umbra::interposer::Volume;

fn server() -> &'static (tempfile::TempDir, PathBuf, Arc<NbdServer>) {
    static S: OnceLock<(tempfile::TempDir, PathBuf, Arc<NbdServer>)> = OnceLock::new();
    S.get_or_init(|| {
        // A Rust program's runtime ignores SIGPIPE before main, and the
        // daemon relies on that: a client that hangs up mid-reply is an
        // EPIPE for its connection thread. libFuzzer's main is C and keeps
        // the default action, so a write to a closed peer (ours or the
        // server's) would kill the fuzzer; do what the daemon's runtime does.
        // SAFETY: setting a signal's disposition to SIG_IGN before any
        // server thread exists has no handler or memory to race with.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd.sock");
        let s = NbdServer::start(
            &ListenAddr::Unix(path.clone()),
            None,
            umbra::export::nbd::DEFAULT_MAX_CLIENTS,
        )
        .unwrap();
        let vol = Volume::new("v", Arc::new(MemoryBackend::new(1 << 20)), "memory".into());
        s.add_export("v", Arc::new(vol), false);
        let ro = Volume::new("ro", Arc::new(MemoryBackend::new(1 << 20)), "memory".into());
        s.add_export("ro", Arc::new(ro), true);
        (dir, path, s)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, path, _) = server();
    let mut c = UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server writes its greeting first; both sides may stop at any
    // time (a refused option, a bad magic): errors are part of the game.
    let _ = c.write_all(data);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 65536];
    while let Ok(n) = c.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
});
