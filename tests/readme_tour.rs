//! The README's tour, run as written: every ```sh block of README.md, in
//! order, as one bash script (as a user pastes them into one terminal),
//! with `set -euo pipefail`, so any command that fails fails the test.
//!
//! It runs in a network namespace of its own (the tour's fixed ports are
//! then free whatever else runs), from a directory where
//! `target/release/umbra` is this build's binary and `umbra serve` (the
//! README's first command) already runs, as the tour assumes.

mod common;

use common::{require_root, require_tool, wait_timeout};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The ```sh blocks of a markdown text, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unterminated ```sh block");
    blocks
}

/// Undo what the tour leaves behind if it stopped half-way (mounts, loop
/// device, FUSE), then the namespace and everything still running in it.
struct Cleanup {
    ns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umount /mnt/db 2>/dev/null; \
                 losetup -j /tmp/fuse/nbd -O NAME -n 2>/dev/null | xargs -r losetup -d; \
                 fusermount3 -u /tmp/fuse 2>/dev/null; rm -f /tmp/fuse.pid; \
                 ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}",
                ns = self.ns
            ))
            .status();
    }
}

#[test]
fn readme_tour_runs_as_written() {
    require_root();
    for tool in ["nbdinfo", "nbdfuse", "mkfs.ext4", "losetup", "fusermount3"] {
        require_tool(tool);
    }
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 2, "the tour's sh blocks are gone");
    let script = blocks.concat();

    let ns = format!("umbra-tour-{}", std::process::id());
    let _cleanup = Cleanup { ns: ns.clone() };
    let ok = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    ok(Command::new("ip").args(["netns", "add", &ns]));
    ok(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));

    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_umbra"), release.join("umbra")).unwrap();

    // The README's first command, in its own terminal.
    let mut serve = Command::new("ip")
        .args(["netns", "exec", &ns, "target/release/umbra", "serve"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.path().join("umbra-data/umbra.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "umbra serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut tour = Command::new("ip")
        .args([
            "netns", "exec", &ns, "bash", "-euo", "pipefail", "-c", &script,
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the output on threads so a full pipe cannot stall the tour.
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(tour.stdout.take().map(|o| Box::new(o) as _));
    let err = read(tour.stderr.take().map(|e| Box::new(e) as _));
    let status = wait_timeout(&mut tour, Duration::from_secs(300));
    if status.is_none() {
        let _ = tour.kill();
        let _ = tour.wait();
    }
    let _ = serve.kill();
    let _ = serve.wait();
    // The tour's site-B daemon and nbdfuse hold the pipes open: the
    // cleanup kills what is left in the namespace before they end.
    drop(_cleanup);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.is_some_and(|s| s.success()),
        "the README tour failed ({status:?}):\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    eprintln!("{out}");
    // What the tour shows on the way: the disk, the statistics, the copy
    // and the mirror after the swap.
    for want in [
        "export-size: 1073741824",
        "nightly",
        "full",
        "\"set.state\"",
    ] {
        assert!(
            out.contains(want),
            "the tour's output lacks {want:?}:\n{out}"
        );
    }
}
