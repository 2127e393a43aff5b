//! The write-back cache through the real daemon: the CLI lifecycle across
//! a restart, `kill -9` under load (every acknowledged write is back after
//! replay, flushed or not), and damaged safe stores refused at start.

mod common;

use common::nbd::NbdClient;
use common::{
    block_data, decode_block, fio_load, require_tool, sh, sha, write_random_file, Daemon,
    TRACK_BLOCK,
};
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

const BLOCK: usize = TRACK_BLOCK;
const TRACKED_BLOCKS: u64 = 2048;

#[test]
fn write_back_lifecycle_coalesces_and_survives_restart_and_disable() {
    require_tool("nbdcopy");
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "v", "--size", "32M"]);
    let uri = d.export_nbd("v");
    let store = d.dir.path().join("v.safe");
    let out = d.cli(&["cache", "enable", "v", "--mode", "write-back"]);
    assert_eq!(out.status.code(), Some(2), "--safe-store is required");
    d.ok(&[
        "cache",
        "enable",
        "v",
        "--mode",
        "write-back",
        "--safe-store",
        store.to_str().unwrap(),
        "--safe-store-size",
        "16M",
    ]);
    assert!(store.exists());
    let src = d.dir.path().join("src.raw");
    write_random_file(&src, 32 << 20, 9);
    // Small sequential writes: 4 KiB requests.
    sh(&format!(
        "nbdcopy --request-size=4096 --connections=1 --requests=1 {} '{uri}'",
        src.display()
    ));
    let want = sh(&format!("sha256sum < {}", src.display()));
    assert_eq!(sha(&uri), want);
    let stats = d.json(&["cache", "stats", "v"]);
    assert_eq!(stats["mode"], "write-back", "{stats}");
    assert!(
        stats["writes_coalesced"].as_u64().unwrap() > 1000,
        "{stats}"
    );
    let table = d.ok(&["cache", "stats", "v"]);
    assert!(table.contains("COALESCED"), "{table}");
    // Clean restart: the cache comes back (replaying whatever is logged).
    assert_eq!(d.stop(), 0);
    d.spawn();
    assert_eq!(sha(&d.uri_of("v")), want);
    let info = d.json(&["volume", "info", "v"]);
    assert_eq!(info["cache"]["mode"], "write-back", "{info}");
    // Disable destages and deletes the store; the data stays.
    d.ok(&["cache", "disable", "v"]);
    assert!(!store.exists());
    assert_eq!(sha(&d.uri_of("v")), want);
    assert_eq!(d.stop(), 0);
}

#[test]
fn kill_9_in_write_back_mode_loses_no_acknowledged_write() {
    require_tool("fio");
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "k", "--size", "64M"]);
    let store = d.dir.path().join("k.safe");
    d.ok(&[
        "cache",
        "enable",
        "k",
        "--mode",
        "write-back",
        "--safe-store",
        store.to_str().unwrap(),
        "--safe-store-size",
        "16M",
    ]);
    let uri = d.export_nbd("k");
    let addr = d.addr_of("k");
    let mut fio = fio_load(&uri, "16M", "48M", &[]);
    // The tracker never flushes: in write-back mode an acknowledged write
    // is durable by itself.
    let (tx, rx) = mpsc::channel::<(u64, u64)>();
    let tracker = std::thread::spawn(move || {
        let mut c = NbdClient::connect(&addr, "k");
        let mut version = 0u64;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        loop {
            version += 1;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let block = rng % TRACKED_BLOCKS;
            let h = c.send(
                1,
                0,
                block * BLOCK as u64,
                BLOCK as u32,
                &block_data(block, version),
            );
            match c.reply(None) {
                Ok((rh, 0)) if rh == h => {
                    if tx.send((block, version)).is_err() {
                        return version;
                    }
                }
                _ => return version,
            }
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    d.kill9();
    let writes = tracker.join().unwrap();
    let _ = fio.kill();
    let _ = fio.wait();
    let mut acked: HashMap<u64, u64> = HashMap::new();
    for (b, v) in rx.try_iter() {
        acked.insert(b, v);
    }
    assert!(writes > 100, "the tracker made progress ({writes} writes)");
    d.spawn();
    let mut c = NbdClient::connect(&d.addr_of("k"), "k");
    for block in 0..TRACKED_BLOCKS {
        let data = c.read(block * BLOCK as u64, BLOCK).unwrap();
        let found = decode_block(block, &data)
            .unwrap_or_else(|| panic!("block {block} holds data nobody wrote"));
        if let Some(&want) = acked.get(&block) {
            assert!(
                found >= want,
                "block {block}: version {want} was acknowledged, found {found}"
            );
        }
    }
    c.disconnect();
    assert_eq!(d.stop(), 0);
}

#[test]
fn damaged_safe_stores_keep_the_volume_offline_with_a_clear_error() {
    let mut d = Daemon::start();
    for (i, damage) in ["magic", "truncated"].iter().enumerate() {
        let vol = format!("v{i}");
        d.ok(&["volume", "create", &vol, "--size", "8M"]);
        let store = d.dir.path().join(format!("{vol}.safe"));
        d.ok(&[
            "cache",
            "enable",
            &vol,
            "--mode",
            "write-back",
            "--safe-store",
            store.to_str().unwrap(),
            "--safe-store-size",
            "8M",
        ]);
        let mut c = {
            d.export_nbd(&vol);
            NbdClient::connect(&d.addr_of(&vol), &vol)
        };
        assert_eq!(c.write(0, &[7u8; 4096], 0), 0);
        c.disconnect();
        d.kill9();
        match *damage {
            "magic" => {
                let mut b = std::fs::read(&store).unwrap();
                b[0..8].copy_from_slice(b"XXXXXXXX");
                b[4096..4104].copy_from_slice(b"XXXXXXXX");
                std::fs::write(&store, b).unwrap();
            }
            _ => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&store)
                    .unwrap();
                f.set_len(1 << 20).unwrap();
            }
        }
        d.spawn();
        let info = d.json(&["volume", "info", &vol]);
        assert_eq!(info["state"], "offline", "{info}");
        let err = info["error"].as_str().unwrap();
        assert!(
            err.contains("safe store") && err.contains(damage) && err.contains("offline"),
            "{err}"
        );
        // The daemon serves on.
        d.ok(&["status"]);
        d.ok(&["volume", "remove", &vol, "--force"]);
    }
    assert_eq!(d.stop(), 0);
}
