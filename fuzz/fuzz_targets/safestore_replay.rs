//! The write-back cache's safe store after a crash: replaying a store
//! device holding arbitrary bytes (headers, batches, torn tails) returns
//! batches of whole blocks inside the volume, or an error; never a panic.
//!
//! Input: the volume's size and the store device's size (8 bytes each,
//! little endian), then the device's first bytes (the rest reads as
//! zeroes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use umbra::backend::memory::MemoryBackend;
use umbra::device::BlockDevice;
use umbra::services::cache::safestore;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let volume_bytes = (u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 40)) & !4095;
    let body = &data[16..];
    let size = (u64::from_le_bytes(data[8..16].try_into().unwrap()) % (8 << 20))
        .max(body.len() as u64)
        .div_ceil(4096)
        .max(2)
        * 4096;
    let dev = MemoryBackend::new(size);
    dev.write(&pad(body), 0, false).unwrap();
    if let Ok(r) = safestore::replay(&dev, volume_bytes) {
        for (_, _, entries) in &r.batches {
            for e in entries {
                assert!(
                    (e.block + 1) * 4096 <= volume_bytes,
                    "a replayed entry lies outside the volume"
                );
                assert!(e.data.as_ref().is_none_or(|d| d.len() == 4096));
            }
        }
    }
});

/// `b` zero-padded to whole 4 KiB blocks.
fn pad(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v.resize(b.len().div_ceil(4096).max(1) * 4096, 0);
    v
}
