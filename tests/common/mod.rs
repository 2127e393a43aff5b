//! Test harness shared by the integration tests: the real `umbra` binary
//! started in a temp data dir, driven through its CLI; a minimal raw NBD
//! client for protocol-level checks; and a check that a required external
//! tool exists (a missing tool fails the test with the reason: CI installs
//! every one of them).

#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod nbd;
pub mod netns;
pub mod powerfs;
pub mod repl;
pub mod tracker;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const UMBRA: &str = env!("CARGO_BIN_EXE_umbra");

/// Fail (not skip) when a tool the test needs is missing.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}`, which is not installed; `.ci/run` installs it (apt-get install ...)"
    );
}

/// A loopback TCP port free right now (for a listener that must keep its
/// port across restarts, or a server told its ports up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (loop devices, mount); CI runs as root"
    );
}

/// A running (or stopped) `umbra serve` with its own data dir.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub stdout: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// More environment for `umbra serve` (`UMBRA_METRICS`, ...).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    fn new(dir: tempfile::TempDir, netns: Option<String>, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon {
            dir,
            child: None,
            stdout: Vec::new(),
            netns,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.spawn();
        d
    }

    /// Start a daemon on a fresh data dir. The first-start default export
    /// listens on an ephemeral port so tests can run in parallel.
    pub fn start() -> Daemon {
        Daemon::new(tempfile::tempdir().expect("temp dir"), None, &[])
    }

    /// [`Daemon::start`] with more environment for `umbra serve`.
    pub fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        Daemon::new(tempfile::tempdir().expect("temp dir"), None, env)
    }

    /// [`Daemon::start`] inside network namespace `ns`.
    pub fn start_in_netns(ns: &str) -> Daemon {
        Daemon::new(
            tempfile::tempdir().expect("temp dir"),
            Some(ns.to_owned()),
            &[],
        )
    }

    /// [`Daemon::start`] with its data dir under `parent` (a powerfs mount).
    pub fn start_in(parent: &Path) -> Daemon {
        Daemon::new(tempfile::tempdir_in(parent).expect("temp dir"), None, &[])
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket(&self) -> PathBuf {
        self.data_dir().join("umbra.sock")
    }

    /// Start `umbra serve` and wait until its banner is printed (the admin
    /// socket is bound by then).
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, UMBRA]);
                c
            }
            None => Command::new(UMBRA),
        };
        let mut child = cmd
            .arg("serve")
            .env("UMBRA_DATA_DIR", self.data_dir())
            .env("UMBRA_DEFAULT_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn umbra serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "daemon did not start in 30 s");
            match lines.next() {
                Some(Ok(l)) => {
                    let done = l.starts_with("manage it with");
                    banner.push(l);
                    if done {
                        break;
                    }
                }
                _ => panic!(
                    "umbra serve exited during start-up: {:?}\n{}",
                    child.try_wait(),
                    banner.join("\n")
                ),
            }
        }
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.stdout = banner;
        self.child = Some(child);
    }

    /// Run a second `umbra serve` on this data dir to completion (tests of
    /// start-up refusals) and return its output.
    pub fn serve_again(&self) -> Output {
        Command::new(UMBRA)
            .arg("serve")
            .env("UMBRA_DATA_DIR", self.data_dir())
            .env("UMBRA_DEFAULT_LISTEN", "127.0.0.1:0")
            .output()
            .expect("run umbra serve")
    }

    /// Run the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(UMBRA)
            .args(args)
            .env("UMBRA_SOCKET", self.socket())
            .output()
            .expect("run umbra CLI")
    }

    /// Run the CLI and insist it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "umbra {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Run the CLI and insist it fails; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "umbra {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Run a `--json` read command and parse its output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("CLI printed valid JSON")
    }

    /// Export `volume` over NBD on an ephemeral port; returns its URI.
    pub fn export_nbd(&self, volume: &str) -> String {
        self.ok(&["export", "nbd", volume, "--listen", "127.0.0.1:0"]);
        self.uri_of(volume)
    }

    /// `volume`'s entry in `export list --json`.
    pub fn export_of(&self, volume: &str) -> serde_json::Value {
        let list = self.json(&["export", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["volume"] == volume)
            .unwrap_or_else(|| panic!("{volume} is not exported: {list}"))
            .clone()
    }

    pub fn uri_of(&self, volume: &str) -> String {
        self.export_of(volume)["uri"].as_str().unwrap().to_owned()
    }

    /// Run `f` on a thread inside this daemon's network namespace, where
    /// its exports on 127.0.0.1 are reachable (here when it has none).
    pub fn in_net<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.netns.clone() {
            None => f(),
            Some(ns) => std::thread::spawn(move || {
                netns::enter(&ns);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        }
    }

    /// SHA-256 of `volume` read through its NBD export.
    pub fn sha_of(&self, volume: &str) -> String {
        let uri = self.uri_of(volume);
        self.in_net(move || sha(&uri))
    }

    /// `host:port` of a TCP export.
    pub fn addr_of(&self, volume: &str) -> String {
        let uri = self.uri_of(volume);
        uri.trim_start_matches("nbds://")
            .trim_start_matches("nbd://")
            .rsplit_once('/')
            .unwrap()
            .0
            .to_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut child = self.child.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(30))
            .expect("daemon did not stop within 30 s of SIGTERM");
        status.code().unwrap_or(-1)
    }

    /// SIGKILL, no chance to flush or persist anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Is the daemon process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

/// `umbra events --follow --json` against one daemon, collected in the
/// background (it ends when the daemon stops).
pub struct EventLog {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl EventLog {
    pub fn follow(d: &Daemon) -> EventLog {
        let mut child = Command::new(UMBRA)
            .args(["events", "--follow", "--json"])
            .env("UMBRA_SOCKET", d.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn umbra events");
        let out = child.stdout.take().expect("piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    l2.lock().unwrap().push(v);
                }
            }
        });
        EventLog { child, lines }
    }

    /// Events of this kind seen so far.
    pub fn of_kind(&self, kind: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    }

    /// Wait until an event of this kind arrives.
    pub fn wait_for(&self, kind: &str, t: Duration) -> serde_json::Value {
        let deadline = Instant::now() + t;
        loop {
            if let Some(e) = self.of_kind(kind).into_iter().next() {
                return e;
            }
            assert!(Instant::now() < deadline, "no {kind} event within {t:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Run a shell command; panic with its output on failure.
/// sha256sum of an NBD export's whole contents (nbdcopy).
pub fn sha(uri: &str) -> String {
    sh(&format!("nbdcopy '{uri}' - | sha256sum"))
}

/// Fill `volume` (exported over NBD) with `bytes` of seeded random data.
pub fn fill(d: &Daemon, volume: &str, bytes: usize, seed: u64) {
    let src = d.dir.path().join(format!("fill-{volume}-{seed}.raw"));
    write_random_file(&src, bytes, seed);
    sh(&format!("nbdcopy {} '{}'", src.display(), d.uri_of(volume)));
    std::fs::remove_file(src).unwrap();
}

/// Overwrite `n` scattered 4 KiB blocks of `volume` through the NBD
/// server at `addr`, flushed.
pub fn scribble(addr: &str, volume: &str, n: u64, seed: u8) {
    let mut c = nbd::NbdClient::connect(addr, volume);
    for i in 0..n {
        let off = ((i * 7919 + seed as u64 * 31) % 8192) * 4096;
        assert_eq!(c.write(off, &[seed; 4096], 0), 0);
    }
    assert_eq!(c.flush(), 0);
    c.disconnect();
}

/// Whether the NBD server at `uri` offers its export read-only, as
/// nbdinfo (libnbd) sees it.
pub fn nbd_read_only(uri: &str) -> bool {
    let out = Command::new("nbdinfo")
        .args(["--json", uri])
        .output()
        .expect("run nbdinfo");
    assert!(
        out.status.success(),
        "nbdinfo {uri}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nbdinfo JSON");
    v["exports"][0]["is_read_only"] == true
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write_random_file(path: &Path, bytes: usize, seed: u64) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; bytes];
    rng.fill_bytes(&mut data);
    std::fs::write(path, data).unwrap();
}

/// An NBD export seen by the Linux block layer: nbdfuse exposes it as a
/// file, losetup turns the file into a loop device. Everything (mounts,
/// loop device, nbdfuse) is torn down however the test ends.
pub struct NbdLoop {
    pub dev: String,
    fuse_dir: PathBuf,
    nbdfuse: Option<Child>,
    mounts: Vec<PathBuf>,
}

impl NbdLoop {
    pub fn attach(uri: &str, fuse_dir: &Path, read_only: bool) -> NbdLoop {
        std::fs::create_dir_all(fuse_dir).unwrap();
        let mut cmd = Command::new("nbdfuse");
        if read_only {
            cmd.arg("--readonly");
        }
        let child = cmd.arg(fuse_dir).arg(uri).spawn().expect("start nbdfuse");
        let mut l = NbdLoop {
            dev: String::new(),
            fuse_dir: fuse_dir.to_owned(),
            nbdfuse: Some(child),
            mounts: Vec::new(),
        };
        let disk = fuse_dir.join("nbd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !disk.exists() {
            assert!(Instant::now() < deadline, "nbdfuse did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        let ro = if read_only { "-r " } else { "" };
        l.dev = sh(&format!("losetup -f --show {ro}{}", disk.display()))
            .trim()
            .to_owned();
        l
    }

    pub fn mount(&mut self, mnt: &Path, options: &str) {
        std::fs::create_dir_all(mnt).unwrap();
        sh(&format!(
            "mount -o {options} {} {}",
            self.dev,
            mnt.display()
        ));
        self.mounts.push(mnt.to_owned());
    }

    pub fn umount(&mut self, mnt: &Path) {
        sh(&format!("umount {}", mnt.display()));
        self.mounts.retain(|m| m != mnt);
    }
}

impl Drop for NbdLoop {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = Command::new("umount").arg(&m).status();
        }
        if !self.dev.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.fuse_dir)
            .status();
        let _ = Command::new("umount").arg(&self.fuse_dir).status();
        if let Some(mut c) = self.nbdfuse.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Versioned 4 KiB blocks for kill -9 tests: `(block, version)` repeated,
/// so a torn, misplaced or invented block is recognisable.
pub const TRACK_BLOCK: usize = 4096;

pub fn block_data(block: u64, version: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(TRACK_BLOCK);
    while v.len() < TRACK_BLOCK {
        v.extend_from_slice(&block.to_le_bytes());
        v.extend_from_slice(&version.to_le_bytes());
    }
    v
}

/// The version a block holds (0 for never written), or None if it holds
/// anything nobody wrote.
pub fn decode_block(block: u64, data: &[u8]) -> Option<u64> {
    if data.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let version = u64::from_le_bytes(data[8..16].try_into().unwrap());
    (data == block_data(block, version).as_slice()).then_some(version)
}

/// Start fio writing randomly over `[offset, offset + size)` of an NBD
/// export for up to a minute (the test kills it sooner), with `extra` args.
/// Its job runs as a thread of the one process (`--thread`): a forked job
/// would go on writing for the whole minute after the kill.
pub fn fio_load(uri: &str, offset: &str, size: &str, extra: &[&str]) -> Child {
    let mut args = vec![
        "--name=load".to_owned(),
        "--ioengine=nbd".to_owned(),
        format!("--uri={uri}"),
        "--rw=randwrite".to_owned(),
        "--bs=4k".to_owned(),
        format!("--offset={offset}"),
        format!("--size={size}"),
        "--iodepth=16".to_owned(),
        "--thread".to_owned(),
        "--time_based".to_owned(),
        "--runtime=60".to_owned(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Command::new("fio")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fio")
}
