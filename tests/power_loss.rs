//! Power loss under the real daemon: its data dir lives on powerfs
//! (tests/common/powerfs.rs), which keeps every write since a file's last
//! fsync in memory and, at a simulated power cut, drops them or keeps a
//! random subset torn at 512-byte sectors.

mod common;

use common::powerfs::PowerFs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The filesystem itself: synced data survives a cut, unsynced data does
/// not (or only in sectors), namespace operations are durable.
#[test]
fn powerfs_keeps_synced_data_and_drops_the_rest() {
    let mut fs = PowerFs::mount();
    let p = fs.path().join("f");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&[1u8; 8192]).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(&[2u8; 4096], 0).unwrap();
    drop(f);
    assert_eq!(fs.pending_bytes(), 4096);
    let cut = fs.cut(1, false);
    assert_eq!(cut.lost_bytes, 4096);
    let mut back = Vec::new();
    std::fs::File::open(&p)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, vec![1u8; 8192], "the unsynced overwrite is gone");

    // Keeping a subset: every sector is old or new, never anything else.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    for i in 0..64u64 {
        f.write_all_at(&[3u8; 4096], (i % 2) * 4096).unwrap();
    }
    drop(f);
    fs.cut(7, true);
    let mut back = Vec::new();
    std::fs::File::open(&p)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back.len(), 8192);
    for s in back.chunks(512) {
        assert!(s == [1u8; 512] || s == [3u8; 512], "a sector holds a mix");
    }
    // Sparse files and SEEK_DATA.
    let q = fs.path().join("sparse");
    let g = std::fs::File::create(&q).unwrap();
    g.set_len(1 << 30).unwrap();
    g.write_all_at(&[9u8; 4096], 1 << 20).unwrap();
    let at = nix::unistd::lseek(g.as_raw_fd(), 0, nix::unistd::Whence::SeekData).unwrap();
    assert_eq!(at, 1 << 20);
    drop(g);
    std::fs::rename(&q, fs.path().join("renamed")).unwrap();
    fs.cut(3, false);
    let meta = std::fs::metadata(fs.path().join("renamed")).unwrap();
    assert_eq!(meta.len(), 1 << 30, "the size (metadata) is durable");
    let mut buf = vec![0u8; 4096];
    std::fs::File::open(fs.path().join("renamed"))
        .unwrap()
        .read_exact_at(&mut buf, 1 << 20)
        .unwrap();
    assert_eq!(buf, vec![0u8; 4096], "its unsynced data is not");
}
