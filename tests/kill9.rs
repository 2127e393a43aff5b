//! `kill -9` of the daemon under load: fio writes with periodic flushes
//! while a tracking client writes versioned blocks and flushes; after the
//! restart every write acknowledged before the last completed flush is
//! present (or superseded by a later write of the same block), and no block
//! holds anything but a version that was written.

mod common;

use common::nbd::NbdClient;
use common::{block_data, decode_block, fio_load, require_tool, Daemon, TRACK_BLOCK};
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

const BLOCK: usize = TRACK_BLOCK;
const TRACKED_BLOCKS: u64 = 2048; // the first 8 MiB; fio uses the rest

#[test]
fn kill_9_under_load_loses_no_flushed_write() {
    require_tool("fio");
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "k", "--size", "64M"]);
    let uri = d.export_nbd("k");
    let addr = d.addr_of("k");

    let mut fio = fio_load(&uri, "16M", "48M", &["--fsync=32"]);

    // The tracker: sequential writes to a rotating set of blocks, a flush
    // every 16 writes. After each completed flush it reports the versions
    // that flush made durable.
    let (tx, rx) = mpsc::channel::<HashMap<u64, u64>>();
    let tracker = std::thread::spawn(move || {
        let mut c = NbdClient::connect(&addr, "k");
        let mut acked: HashMap<u64, u64> = HashMap::new();
        let mut version = 0u64;
        let mut rng = 0x1234_5678_9abc_def0u64;
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
                    acked.insert(block, version);
                }
                _ => return version,
            }
            if version % 16 == 0 {
                let snapshot = acked.clone();
                let h = c.send(3, 0, 0, 0, &[]);
                match c.reply(None) {
                    Ok((rh, 0)) if rh == h => {
                        if tx.send(snapshot).is_err() {
                            return version;
                        }
                    }
                    _ => return version,
                }
            }
        }
    });

    std::thread::sleep(Duration::from_secs(3));
    d.kill9();
    let writes = tracker.join().unwrap();
    let _ = fio.kill();
    let _ = fio.wait();
    let durable = rx.try_iter().last().expect("at least one flush completed");
    assert!(writes > 100, "the tracker made progress ({writes} writes)");

    d.spawn();
    let mut c = NbdClient::connect(&d.addr_of("k"), "k");
    for block in 0..TRACKED_BLOCKS {
        let data = c.read(block * BLOCK as u64, BLOCK).unwrap();
        let found = decode_block(block, &data)
            .unwrap_or_else(|| panic!("block {block} holds data nobody wrote"));
        if let Some(&want) = durable.get(&block) {
            assert!(
                found >= want,
                "block {block}: version {want} was flushed, found {found}"
            );
        }
    }
}
