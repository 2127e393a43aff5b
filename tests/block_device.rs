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
            let be = FileBackend::open(dev.0.as_ref(), FileOptions { engine, direct }).unwrap();
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
