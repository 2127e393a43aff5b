//! Imaging through the real daemon and real clients: the CLI lifecycle
//! across restarts, `kill -9` during an independent copy under master
//! writes, ext4 on a master with a dependent shadow mounted read-only, and
//! bitmap volumes damaged on disk.

mod common;

use common::nbd::NbdClient;
use common::{
    fill, require_root, require_tool, scribble, sh, sha, write_random_file, Daemon, NbdLoop,
};
use std::time::Duration;

#[test]
fn image_cli_lifecycle_update_restore_group_and_restart() {
    require_tool("nbdcopy");
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "m", "--size", "32M"]);
    d.export_nbd("m");
    fill(&d, "m", 32 << 20, 1);
    let t0 = sha(&d.uri_of("m"));

    let v = d.json(&[
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
    assert_eq!(v["state"], "idle", "{v}");
    assert_eq!(v["shadow_created"], true);
    assert!(v["establish_us"].as_u64().unwrap() < 5_000_000);
    d.export_nbd("s");
    scribble(&d.addr_of("m"), "m", 200, 7);
    assert_eq!(sha(&d.uri_of("s")), t0, "shadow holds T0");
    let info = d.json(&["image", "info", "snap"]);
    assert!(info["chunks_differing"].as_u64().unwrap() > 0, "{info}");
    let listed = d.ok(&["image", "list"]);
    assert!(
        listed.contains("snap") && listed.contains("dependent"),
        "{listed}"
    );

    // Refusals with clear errors.
    let out = d.cli(&["volume", "remove", "s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("image set snap"));
    let out = d.cli(&[
        "image",
        "enable",
        "x",
        "--master",
        "s",
        "--shadow",
        "y",
        "--mode",
        "dependent",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already the shadow of image set snap"));
    d.ok(&["volume", "create", "tiny", "--size", "1M"]);
    let out = d.cli(&[
        "image",
        "enable",
        "x",
        "--master",
        "m",
        "--shadow",
        "tiny",
        "--mode",
        "independent",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("smaller than master"));

    // A clean restart keeps the set and the point in time.
    assert_eq!(d.stop(), 0);
    d.spawn();
    assert_eq!(sha(&d.uri_of("s")), t0, "after restart");
    let m_now = sha(&d.uri_of("m"));

    // A group update takes a new point in time.
    d.ok(&["image", "group", "create", "g", "snap"]);
    d.ok(&["image", "update", "--group", "g", "--to", "shadow"]);
    assert_eq!(sha(&d.uri_of("s")), m_now);

    // Restore: asks for --yes, refuses an exported read-write master.
    scribble(&d.addr_of("m"), "m", 50, 9);
    let out = d.cli(&["image", "update", "snap", "--to", "master"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let out = d.cli(&["image", "update", "snap", "--to", "master", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported read-write"));
    d.ok(&[
        "image", "update", "snap", "--to", "master", "--yes", "--force", "--wait",
    ]);
    assert_eq!(sha(&d.uri_of("m")), m_now, "master restored");

    let bitmap = d.data_dir().join("snap.bitmap");
    assert!(bitmap.exists());
    d.ok(&["image", "disable", "snap"]);
    assert!(!bitmap.exists());
    assert!(d
        .json(&["image", "group", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(d.stop(), 0);
}

#[test]
fn kill_9_during_an_independent_copy_keeps_t0_and_the_copy_finishes() {
    require_tool("nbdcopy");
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "m", "--size", "64M"]);
    d.export_nbd("m");
    fill(&d, "m", 64 << 20, 3);
    let t0 = sha(&d.uri_of("m"));
    d.ok(&[
        "image",
        "enable",
        "full",
        "--master",
        "m",
        "--shadow",
        "s",
        "--mode",
        "independent",
        "--chunk-size",
        "16K",
        "--throttle-delay-ms",
        "10",
        "--throttle-unit",
        "4",
    ]);
    d.export_nbd("s");
    // Concurrent master writes while the copy runs, then kill -9.
    let addr = d.addr_of("m");
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = written.clone();
    let writer = std::thread::spawn(move || {
        let mut c = NbdClient::connect(&addr, "m");
        for i in 0..4000u64 {
            let off = ((i * 104_729) % 16_384) * 4096;
            if c.write(off, &[(i % 250) as u8 + 1; 4096], 0) != 0 {
                break;
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if i % 64 == 63 && c.flush() != 0 {
                break;
            }
        }
    });
    // The kill comes once writes have raced the (throttled) copy for a
    // while: a few flush intervals of them, however slow the machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while written.load(std::sync::atomic::Ordering::SeqCst) < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer made no progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = d.json(&["image", "info", "full"]);
    assert_eq!(
        before["state"], "copying",
        "the copy must still run at the kill: {before}"
    );
    d.kill9();
    let _ = writer.join();
    d.spawn();
    let after = d.json(&["image", "info", "full"]);
    assert_ne!(after["state"], "failed", "{after}");
    d.ok(&[
        "image",
        "throttle",
        "full",
        "--delay-ms",
        "0",
        "--unit",
        "0",
    ]);
    d.ok(&["image", "wait", "full", "--timeout", "120"]);
    let done = d.json(&["image", "info", "full"]);
    assert_eq!(
        (done["state"].as_str(), done["chunks_to_copy"].as_u64()),
        (Some("idle"), Some(0))
    );
    assert_eq!(
        sha(&d.uri_of("s")),
        t0,
        "the shadow equals T0 after the crash"
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn ext4_dependent_shadow_mounts_with_exactly_the_files_of_t0() {
    require_root();
    for t in [
        "nbdfuse",
        "losetup",
        "mkfs.ext4",
        "mount",
        "fusermount3",
        "fsfreeze",
    ] {
        require_tool(t);
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "fs", "--size", "128M"]);
    let uri = d.export_nbd("fs");
    let mnt = d.dir.path().join("mnt");
    let mut master = NbdLoop::attach(&uri, &d.dir.path().join("fuse-m"), false);
    sh(&format!("mkfs.ext4 -q -F {}", master.dev));
    master.mount(&mnt, "rw");
    for i in 0..12 {
        write_random_file(&mnt.join(format!("file{i}")), 50_000 + i * 7001, i as u64);
    }
    let t0 = sh(&format!("cd {} && sha256sum file* | sort", mnt.display()));
    // The user's procedure for a consistent image: freeze, establish, thaw.
    sh(&format!("sync && fsfreeze -f {}", mnt.display()));
    let out = d.cli(&[
        "image",
        "enable",
        "snap",
        "--master",
        "fs",
        "--shadow",
        "fs-snap",
        "--mode",
        "dependent",
    ]);
    sh(&format!("fsfreeze -u {}", mnt.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Keep writing: new files, changed files, deleted files.
    for i in 0..12 {
        write_random_file(&mnt.join(format!("file{i}")), 60_000, 1000 + i as u64);
    }
    std::fs::remove_file(mnt.join("file3")).unwrap();
    write_random_file(&mnt.join("later"), 300_000, 77);
    sh("sync");
    let snap_uri = d.export_nbd("fs-snap");
    let mut shadow = NbdLoop::attach(&snap_uri, &d.dir.path().join("fuse-s"), true);
    sh(&format!("fsck.ext4 -n -f {}", shadow.dev));
    let smnt = d.dir.path().join("snap");
    shadow.mount(&smnt, "ro,noload");
    let seen = sh(&format!("cd {} && sha256sum file* | sort", smnt.display()));
    assert_eq!(seen, t0, "the shadow shows exactly the files of T0");
    assert!(!smnt.join("later").exists());
    shadow.umount(&smnt);
    master.umount(&mnt);
}

#[test]
fn damaged_bitmap_volumes_are_refused_and_the_daemon_stays_up() {
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "m", "--size", "8M"]);
    type Damage = Box<dyn Fn(&std::path::Path)>;
    let mut damage: Vec<(&str, Damage)> = vec![
        (
            "wrong magic",
            Box::new(|p| {
                let mut b = std::fs::read(p).unwrap();
                b[0..8].copy_from_slice(b"NOTUMBRA");
                b[4096..4104].copy_from_slice(b"NOTUMBRA");
                std::fs::write(p, b).unwrap();
            }),
        ),
        (
            "checksum mismatch",
            Box::new(|p| {
                let mut b = std::fs::read(p).unwrap();
                b[50] ^= 0x40;
                b[4096 + 50] ^= 0x40;
                std::fs::write(p, b).unwrap();
            }),
        ),
        (
            "truncated",
            Box::new(|p| {
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(8192 + 100).unwrap();
            }),
        ),
    ];
    for (i, (want, f)) in damage.drain(..).enumerate() {
        let set = format!("set{i}");
        let shadow = format!("s{i}");
        d.ok(&[
            "image",
            "enable",
            &set,
            "--master",
            "m",
            "--shadow",
            &shadow,
            "--mode",
            "dependent",
        ]);
        assert_eq!(d.stop(), 0);
        f(&d.data_dir().join(format!("{set}.bitmap")));
        d.spawn();
        let info = d.json(&["image", "info", &set]);
        assert_eq!(info["state"], "offline", "{info}");
        let err = info["error"].as_str().unwrap_or_default().to_owned();
        assert!(err.contains(want) && err.contains(&set), "{want}: {err}");
        // The daemon serves on, and the broken set can be removed.
        d.ok(&["status"]);
        d.ok(&["image", "disable", &set]);
    }
    assert_eq!(d.stop(), 0);
}

#[test]
fn compact_shadow_with_an_overflow_volume_through_the_cli() {
    require_tool("nbdcopy");
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "m", "--size", "16M"]);
    d.export_nbd("m");
    fill(&d, "m", 16 << 20, 5);
    let t0 = sha(&d.uri_of("m"));
    d.ok(&["image", "overflow", "create", "spill", "--size", "1M"]);
    let out = d.cli(&[
        "image", "enable", "c", "--master", "m", "--shadow", "m-c", "--mode", "compact",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shadow-size"));
    d.ok(&[
        "image",
        "enable",
        "c",
        "--master",
        "m",
        "--shadow",
        "m-c",
        "--mode",
        "compact",
        "--shadow-size",
        "1M",
        "--overflow",
        "spill",
    ]);
    d.export_nbd("m-c");
    // The compact shadow shows the master's size and its T0 contents.
    assert_eq!(sha(&d.uri_of("m-c")), t0);
    // 32 KiB chunks: 32 fit the shadow, 32 the overflow. Touch 48.
    let mut c = NbdClient::connect(&d.addr_of("m"), "m");
    for i in 0..48u64 {
        assert_eq!(c.write(i * 5 * 32768, &[7; 512], 0), 0);
    }
    assert_eq!(c.flush(), 0);
    let info = d.json(&["image", "info", "c"]);
    assert_eq!(
        (info["state"].as_str(), info["overflow_chunks"].as_u64()),
        (Some("idle"), Some(16)),
        "{info}"
    );
    assert_eq!(sha(&d.uri_of("m-c")), t0);
    let ovf = d.json(&["image", "overflow", "info", "spill"]);
    assert_eq!(ovf["used_chunks"], 16, "{ovf}");
    // The set comes back after a crash with its chunk index.
    d.kill9();
    d.spawn();
    assert_eq!(sha(&d.uri_of("m-c")), t0, "after kill -9");
    // Out of room: the set fails visibly, the master keeps working.
    let mut c = NbdClient::connect(&d.addr_of("m"), "m");
    for i in 48..80u64 {
        assert_eq!(c.write(i * 5 * 32768 % (16 << 20), &[8; 512], 0), 0);
    }
    assert_eq!(c.flush(), 0);
    let info = d.json(&["image", "info", "c"]);
    assert_eq!(info["state"], "failed", "{info}");
    assert!(info["error"].as_str().unwrap().contains("full"), "{info}");
    let out = d.cli(&["image", "overflow", "detach", "c"]);
    assert_eq!(out.status.code(), Some(1));
    d.ok(&["image", "disable", "c"]);
    let ovf = d.json(&["image", "overflow", "info", "spill"]);
    assert_eq!(ovf["used_chunks"], 0, "space is free again: {ovf}");
    d.ok(&["image", "overflow", "remove", "spill"]);
    assert_eq!(d.stop(), 0);
}

/// `image enable` onto an existing shadow volume that holds data asks
/// first: with nobody to ask it refuses (naming the volume and `--yes`)
/// and leaves the data alone; `--yes` overwrites. An empty (sparse) one is
/// taken without a question.
#[test]
fn enabling_over_a_shadow_that_holds_data_needs_yes() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "m", "--size", "4M"]);
    d.ok(&["volume", "create", "s", "--size", "4M"]);
    d.ok(&["volume", "create", "empty", "--size", "4M"]);
    d.export_nbd("s");
    let mut c = common::nbd::NbdClient::connect(&d.addr_of("s"), "s");
    assert_eq!(c.write(0, &[0x42; 4096], 0), 0);
    assert_eq!(c.flush(), 0);
    c.disconnect();
    let args = |shadow: &str| {
        vec![
            "image".to_owned(),
            "enable".into(),
            format!("set-{shadow}"),
            "--master".into(),
            "m".into(),
            "--shadow".into(),
            shadow.into(),
            "--mode".into(),
            "dependent".into(),
        ]
    };
    let a: Vec<String> = args("s");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = d.cli(&a);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("volume s holds data") && err.contains("--yes"),
        "{err}"
    );
    assert!(d.json(&["image", "list"]).as_array().unwrap().is_empty());
    let mut c = common::nbd::NbdClient::connect(&d.addr_of("s"), "s");
    assert!(
        c.read(0, 4096).unwrap().iter().all(|b| *b == 0x42),
        "untouched"
    );
    c.disconnect();
    let mut yes = a.clone();
    yes.push("--yes");
    d.ok(&yes);
    let e: Vec<String> = args("empty");
    let e: Vec<&str> = e.iter().map(String::as_str).collect();
    d.ok(&e);
}

/// Bytes the file at `p` has allocated on disk.
fn allocated(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Sparse data stays sparse through imaging: an independent copy of a
/// 256 MiB master holding 8 MiB allocates about 8 MiB, and a restore that
/// brings back holes punches them in the master. The copy-on-write and
/// background-copy counters say what moved.
#[test]
fn copies_and_restores_stay_sparse_and_are_counted() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "m", "--size", "256M"]);
    let uri = d.export_nbd("m");
    let addr = d.addr_of("m");
    // 8 MiB of data in four runs; the rest never written (holes), plus
    // 1 MiB written as zeroes (allocated, reads as zeroes).
    let mut c = NbdClient::connect(&addr, "m");
    for (i, at) in [0u64, 64 << 20, 130 << 20, 250 << 20].iter().enumerate() {
        let data: Vec<u8> = (0..2 << 20)
            .map(|j| (j as u8) ^ (i as u8 + 1) | 1)
            .collect();
        assert_eq!(c.write(*at, &data, 0), 0);
    }
    assert_eq!(c.write(200 << 20, &vec![0u8; 1 << 20], 0), 0);
    assert_eq!(c.flush(), 0);
    let t0 = sha(&uri);

    let v = d.json(&[
        "image",
        "enable",
        "full",
        "--master",
        "m",
        "--shadow",
        "copy",
        "--mode",
        "independent",
        "--wait",
    ]);
    assert_eq!(v["chunks_to_copy"], 0, "{v}");
    let copy_file = d.data_dir().join("copy.img");
    let used = allocated(&copy_file);
    assert!(
        used < 12 << 20,
        "the copy of 8 MiB of data allocates {used} bytes"
    );
    d.export_nbd("copy");
    assert_eq!(sha(&d.uri_of("copy")), t0);
    let stats = d.json(&["stats", "m"]);
    let img = &stats["volumes"][0]["image"][0];
    assert_eq!(img["set"], "full", "{stats}");
    assert_eq!(img["copied_bytes"], 256u64 << 20, "{img}");
    assert_eq!(img["cow_bytes"], 0, "{img}");

    // Overwrite 32 MiB of what were holes: copy-on-write is not needed (an
    // independent shadow holds everything), the master grows.
    let junk = vec![0xa5u8; 1 << 20];
    for i in 0..32u64 {
        assert_eq!(c.write((160 << 20) + i * (1 << 20), &junk, 0), 0);
    }
    assert_eq!(c.flush(), 0);
    c.disconnect();
    let master_file = d.data_dir().join("m.img");
    assert!(allocated(&master_file) > 36 << 20);
    d.ok(&[
        "image", "update", "full", "--to", "master", "--yes", "--force", "--wait",
    ]);
    assert_eq!(sha(&uri), t0);
    let used = allocated(&master_file);
    assert!(
        used < 12 << 20,
        "the restore punched the holes back: the master allocates {used} bytes"
    );

    // A dependent shadow counts its copies on write: 3 distinct chunks.
    d.ok(&["volume", "create", "snap", "--size", "256M"]);
    d.ok(&[
        "image",
        "enable",
        "pit",
        "--master",
        "m",
        "--shadow",
        "snap",
        "--mode",
        "dependent",
        "--yes",
    ]);
    let mut c = NbdClient::connect(&addr, "m");
    for at in [1u64 << 20, 100 << 20, 100 << 20, 200 << 20] {
        assert_eq!(c.write(at, &[7u8; 4096], 0), 0);
    }
    assert_eq!(c.flush(), 0);
    c.disconnect();
    let stats = d.json(&["stats", "m"]);
    let pit = stats["volumes"][0]["image"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["set"] == "pit")
        .unwrap()
        .clone();
    assert_eq!(pit["cow_chunks"], 3, "{pit}");
    assert_eq!(pit["cow_bytes"], 3 * 32768, "{pit}");
    let human = d.ok(&["stats", "m"]);
    assert!(
        human.contains("image set pit copied 96.0 KiB on write (3 chunks)"),
        "{human}"
    );
}

/// A filesystem image loop-mounted for one test, unmounted (and its
/// loop device freed) however the test ends.
struct LoopFs {
    mnt: tempfile::TempDir,
    _img: tempfile::TempDir,
}

impl LoopFs {
    fn xfs(size: &str) -> LoopFs {
        let img = tempfile::tempdir().unwrap();
        let file = img.path().join("fs.img");
        sh(&format!(
            "truncate -s {size} {0} && mkfs.xfs -q -m reflink=1 {0}",
            file.display()
        ));
        let mnt = tempfile::tempdir().unwrap();
        sh(&format!(
            "mount -o loop {} {}",
            file.display(),
            mnt.path().display()
        ));
        LoopFs { mnt, _img: img }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.mnt.path())
            .status();
    }
}

/// On XFS (reflink) the background copy shares the master's extents
/// instead of copying data (every chunk it moved is counted as cloned),
/// while first-touch copy-on-write reads and writes (cloning there would
/// write the master's dirty pages back under its locks: 0.01x measured);
/// the shadows hold exactly their points in time while the master changes.
#[test]
fn on_xfs_copies_share_extents_and_keep_the_point_in_time() {
    require_root();
    require_tool("mkfs.xfs");
    let fs = LoopFs::xfs("1G");
    let d = Daemon::start_in(fs.mnt.path());
    d.ok(&["volume", "create", "m", "--size", "64M"]);
    let uri = d.export_nbd("m");
    fill(&d, "m", 64 << 20, 11);
    let t0 = sha(&uri);
    d.ok(&["volume", "create", "snap", "--size", "64M"]);
    d.ok(&[
        "image",
        "enable",
        "pit",
        "--master",
        "m",
        "--shadow",
        "snap",
        "--mode",
        "dependent",
    ]);
    // 16 first touches of distinct 32 KiB chunks, then more writes to them.
    let mut c = NbdClient::connect(&d.addr_of("m"), "m");
    for round in 0..2u8 {
        for i in 0..16u64 {
            assert_eq!(c.write(i * (4 << 20), &[round + 1; 4096], 0), 0);
        }
    }
    assert_eq!(c.flush(), 0);
    c.disconnect();
    let img = &d.json(&["stats", "m"])["volumes"][0]["image"][0];
    assert_eq!(img["cow_chunks"], 16, "{img}");
    assert_eq!(img["cloned_chunks"], 0, "{img}");
    d.export_nbd("snap");
    assert_eq!(
        sha(&d.uri_of("snap")),
        t0,
        "the shadow left its point in time"
    );

    // A full independent copy: every chunk by reflink, equal to the master.
    let t1 = sha(&uri);
    d.ok(&[
        "image",
        "enable",
        "full",
        "--master",
        "m",
        "--shadow",
        "copy",
        "--mode",
        "independent",
        "--wait",
    ]);
    let sets = d.json(&["stats", "m"])["volumes"][0]["image"].clone();
    let full = sets
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["set"] == "full")
        .unwrap();
    assert_eq!(full["copied_chunks"], 2048, "{full}");
    assert_eq!(full["cloned_chunks"], 2048, "{full}");
    d.export_nbd("copy");
    assert_eq!(sha(&d.uri_of("copy")), t1);
    // Writes to the master after the copy leave the copy alone (XFS
    // unshares the master's extents on write).
    scribble(&d.addr_of("m"), "m", 64, 9);
    assert_eq!(sha(&d.uri_of("copy")), t1);
    assert_eq!(sha(&d.uri_of("snap")), t0);
    drop(d);
}
