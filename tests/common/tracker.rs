//! A tracking writer for crash tests: versioned 4 KiB blocks over the
//! first [`TRACKED`] blocks of a volume, each 512-byte sector naming its
//! block, version and sector, and a record of which version of each block
//! was made durable; [`check_tracked`] then proves BRIEF invariant 1 at the
//! disk's unit of atomicity.

use super::nbd::NbdClient;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const BLOCK: u64 = 4096;
pub const SECTOR: usize = 512;
/// The tracker's blocks: the first 8 MiB.
pub const TRACKED: u64 = 2048;

/// A tracked block: every 512-byte sector says which block, which version
/// and which sector it is, so a torn or misplaced write is recognisable at
/// the disk's unit of atomicity.
pub fn sector_data(block: u64, version: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK as usize);
    for s in 0..(BLOCK as usize / SECTOR) as u64 {
        while v.len() < (s as usize + 1) * SECTOR {
            for x in [block, version, s] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v.truncate((s as usize + 1) * SECTOR);
    }
    v
}

/// The version sector `s` of `block` holds (0: never written), or None.
pub fn decode_sector(block: u64, s: usize, data: &[u8]) -> Option<u64> {
    if data.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let version = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let want = sector_data(block, version);
    (data == &want[s * SECTOR..(s + 1) * SECTOR]).then_some(version)
}

/// What the tracker has been told: versions written to each block, and
/// the newest version of each that was made durable (covered by a
/// completed flush, written FUA, or acknowledged when every acknowledged
/// write is durable).
#[derive(Default)]
pub struct Track {
    pub written: HashMap<u64, Vec<u64>>,
    pub durable: HashMap<u64, u64>,
    pub writes: u64,
    pub flushes: u64,
}

/// Writes versioned blocks at random over the tracked region until `stop`
/// or until the daemon stops answering: every 37th write FUA, a flush
/// every 16 writes (a FUA write may sync the whole file, so a rare one
/// leaves flushes to prove).
pub fn tracker(
    addr: String,
    seed: u64,
    acked_is_durable: bool,
    track: Arc<Mutex<Track>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = NbdClient::connect(&addr, "v");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut acked: HashMap<u64, u64> = HashMap::new();
        let base = track
            .lock()
            .written
            .values()
            .flatten()
            .max()
            .copied()
            .unwrap_or(1);
        for version in base + 1.. {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let block = rng.gen_range(0..TRACKED);
            let fua = version % 37 == 0;
            track.lock().written.entry(block).or_default().push(version);
            let h = c.send(
                1,
                u16::from(fua),
                block * BLOCK,
                BLOCK as u32,
                &sector_data(block, version),
            );
            match c.reply(None) {
                Ok((rh, 0)) if rh == h => {}
                _ => return,
            }
            acked.insert(block, version);
            let mut t = track.lock();
            t.writes += 1;
            if fua || acked_is_durable {
                t.durable.insert(block, version);
            }
            drop(t);
            if version % 16 == 0 {
                let snapshot = acked.clone();
                let h = c.send(3, 0, 0, 0, &[]);
                match c.reply(None) {
                    Ok((rh, 0)) if rh == h => {}
                    _ => return,
                }
                let mut t = track.lock();
                t.flushes += 1;
                for (b, v) in snapshot {
                    let d = t.durable.entry(b).or_default();
                    *d = (*d).max(v);
                }
            }
        }
    })
}

/// BRIEF invariant 1 over the tracked region: every sector holds a version
/// that was written to its block, no older than the block's durable one.
/// Returns what is wrong (at most 10 findings), empty when nothing is.
pub fn check_tracked(addr: &str, track: &Track) -> Vec<String> {
    let mut c = NbdClient::connect(addr, "v");
    let mut problems = Vec::new();
    for block in 0..TRACKED {
        let data = match c.read(block * BLOCK, BLOCK as usize) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("block {block}: read failed with NBD error {e}"));
                break;
            }
        };
        let durable = track.durable.get(&block).copied().unwrap_or(0);
        for (s, sector) in data.chunks(SECTOR).enumerate() {
            let found = decode_sector(block, s, sector);
            let problem = match found {
                None => Some("holds data nobody wrote".to_owned()),
                Some(v) if v > 1 && !track.written.get(&block).is_some_and(|w| w.contains(&v)) => {
                    Some(format!("holds version {v}, never written there"))
                }
                Some(v) if v < durable => Some(format!(
                    "version {durable} was durable (flushed or FUA), found {v}"
                )),
                _ => None,
            };
            if let Some(p) = problem {
                problems.push(format!("block {block} sector {s}: {p}"));
                if problems.len() >= 10 {
                    return problems;
                }
                break;
            }
        }
    }
    c.disconnect();
    problems
}

/// The record rebuilt from what the volume holds now (after a restore put
/// an older point in time back, and a flush made it durable): each block's
/// oldest sector version is durable.
pub fn reload(addr: &str, track: &mut Track) {
    let mut c = NbdClient::connect(addr, "v");
    for block in 0..TRACKED {
        let data = c.read(block * BLOCK, BLOCK as usize).unwrap();
        let versions: Vec<u64> = data
            .chunks(SECTOR)
            .enumerate()
            .filter_map(|(s, d)| decode_sector(block, s, d))
            .collect();
        let oldest = versions.iter().copied().min().unwrap_or(0);
        track.durable.insert(block, oldest);
    }
    c.disconnect();
}

/// Fill the whole volume with version 1 of every block (the point in time
/// an imaging test's shadow must keep), and flush.
pub fn fill_v1(addr: &str, volume: &str, blocks: u64) {
    let mut c = NbdClient::connect(addr, volume);
    for block in 0..blocks {
        assert_eq!(c.write(block * BLOCK, &sector_data(block, 1), 0), 0);
    }
    assert_eq!(c.flush(), 0);
    c.disconnect();
}
