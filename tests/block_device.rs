//! The file backend on a real raw block device (a loop device over a temp
//! file): size from the device, discard through BLKDISCARD, write-zeroes
//! through BLKZEROOUT, each engine, buffered and O_DIRECT. Needs root for
//! losetup; CI runs as root.

mod common;

use common::{require_root, require_tool, sh};
use std::sync::Arc;
use umbra::backend::{EngineKind, FileBackend, FileOptions};
use umbra::device::{testing, BlockDevice, Describe};

/// Detaches the loop device however the test ends.
struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn conformance_on_a_loop_block_device_for_every_engine() {
    require_root();
    require_tool("losetup");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let dev = Loop(
        sh(&format!("losetup -f --show {}", img.display()))
            .trim()
            .to_owned(),
    );
    for engine in [EngineKind::Auto, EngineKind::Uring, EngineKind::Sync] {
        for direct in [false, true] {
            let be = FileBackend::open(
                dev.0.as_ref(),
                FileOptions {
                    engine,
                    direct,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(be.size_bytes(), 16 << 20, "size read from the device");
            assert!(
                be.describe().starts_with("block device"),
                "{}",
                be.describe()
            );
            if engine == EngineKind::Auto {
                assert_eq!(be.engine_in_use(), EngineKind::Uring, "auto on a device");
            }
            testing::run_all(
                &format!("{}/{engine:?}/direct={direct}", dev.0),
                Arc::new(be),
            );
        }
    }
}

/// Unmounts the tmpfs however the test ends (after the loop device).
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A real storage failure: a loop device over a sparse file on a 4 MiB
/// tmpfs, written past what the tmpfs holds, so the kernel's writeback
/// fails and the flush returns EIO. The daemon must say so everywhere a
/// user looks (volume info, status, export list, an event), refuse I/O
/// (fail-stop), and after the space is there again `volume reopen` serves
/// from a fresh backend.
#[test]
fn a_failed_flush_is_visible_and_volume_reopen_recovers() {
    require_root();
    require_tool("losetup");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=4m tmpfs {}",
        mnt.display()
    ));
    let mount = Mount(mnt.clone());
    let img = mnt.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let dev = Loop(
        sh(&format!("losetup -f --show {}", img.display()))
            .trim()
            .to_owned(),
    );
    let d = common::Daemon::start();
    d.ok(&["volume", "add", "v", "--path", &dev.0]);
    d.export_nbd("v");
    let events = common::EventLog::follow(&d);
    let mut c = common::nbd::NbdClient::connect(&d.addr_of("v"), "v");
    // 8 MiB into 4 MiB of tmpfs: the writes land in the page cache, the
    // flush makes the kernel write them back, and that fails.
    let mut failed = false;
    for i in 0..2048u64 {
        if c.write(i * 4096, &[0xab; 4096], 0) != 0 {
            failed = true;
            break;
        }
    }
    if !failed {
        failed = c.flush() != 0;
    }
    assert!(failed, "writing 8 MiB into a 4 MiB tmpfs failed nowhere");
    let info = d.json(&["volume", "info", "v"]);
    assert_eq!(info["state"], "failed", "{info}");
    assert!(
        info["error"].as_str().unwrap().contains("volume reopen v"),
        "{info}"
    );
    assert_eq!(d.json(&["status"])["volumes_failed"], 1);
    let exports = d.json(&["export", "list"]);
    let e = exports
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["volume"] == "v")
        .unwrap();
    assert_eq!(e["state"], "failed", "{e}");
    let ev = events.wait_for("volume.failed", std::time::Duration::from_secs(10));
    assert_eq!(ev["object"], "v");
    // Fail-stop: no more writes or flushes (a later flush could report
    // success for data the kernel dropped); reads of what the device
    // holds go on.
    assert_ne!(c.write(1 << 20, &[1; 4096], 0), 0);
    assert_ne!(c.flush(), 0);
    assert_eq!(c.read(0, 4096).unwrap().len(), 4096);
    drop(c);

    // The space comes back: reopen serves again, from what the file holds.
    sh(&format!("mount -o remount,size=128m {}", mnt.display()));
    let v = d.json(&["volume", "reset", "v"]);
    assert_eq!(v["state"], "online", "{v}");
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(d.json(&["status"])["volumes_failed"], 0);
    let mut c = common::nbd::NbdClient::connect(&d.addr_of("v"), "v");
    assert_eq!(c.write(1 << 20, &[0x5c; 4096], 0), 0);
    assert_eq!(c.flush(), 0);
    assert_eq!(c.read(1 << 20, 4096).unwrap(), vec![0x5c; 4096]);
    c.disconnect();
    events.wait_for("volume.reopened", std::time::Duration::from_secs(10));
    // Reopening a healthy volume changes nothing.
    assert_eq!(d.json(&["volume", "reopen", "v"])["state"], "online");
    drop(d);
    drop(dev);
    drop(mount);
}
