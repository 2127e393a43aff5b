//! A replication set's scoreboard file as found at start: opening a file
//! of arbitrary bytes gives a scoreboard or an error naming the set;
//! never a panic, whatever the header claims.
//!
//! Input: the volume's size and the file's size (8 bytes each, little
//! endian), then the file's first bytes (the rest reads as zeroes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use umbra::backend::memory::MemoryBackend;
use umbra::device::BlockDevice;
use umbra::services::repl::scoreboard::Scoreboard;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let volume_bytes = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 40);
    let body = &data[16..];
    let size = (u64::from_le_bytes(data[8..16].try_into().unwrap()) % (4 << 20))
        .max(body.len() as u64)
        .div_ceil(4096)
        .max(1)
        * 4096;
    let dev = MemoryBackend::new(size);
    let mut buf = body.to_vec();
    buf.resize(size as usize, 0);
    dev.write(&buf, 0, false).unwrap();
    if let Ok(sb) = Scoreboard::open(Arc::new(dev), "s", volume_bytes) {
        // What opened is usable: its ranges stay inside the volume.
        let _ = sb.chunk_range(0, volume_bytes.min(1 << 20));
        let _ = sb.oos_bytes();
    }
});
