//! The bitmap volume's on-disk header (two 4 KiB checksummed slots) and
//! the overflow volume's header: decoding arbitrary bytes never panics,
//! and a header that decodes encodes back to the same bytes.
//!
//! Input: the device's size (8 bytes, little endian), then slot 0 and
//! slot 1 (zero-padded to 4 KiB each).
#![no_main]

use libfuzzer_sys::fuzz_target;
use umbra::services::image::format::{Header, OverflowHeader, HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let device_bytes = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 44);
    let slot = HEADER_BYTES as usize;
    let mut slots = vec![0u8; 2 * slot];
    let body = &data[8..];
    slots[..body.len().min(2 * slot)].copy_from_slice(&body[..body.len().min(2 * slot)]);
    let (s0, s1) = slots.split_at(slot);
    for s in [s0, s1] {
        if let Ok(h) = Header::decode(s, device_bytes) {
            let again =
                Header::decode(&h.encode(), device_bytes).expect("an encoded header decodes");
            assert_eq!(again.encode(), h.encode());
        }
        if let Ok(o) = OverflowHeader::decode(s, device_bytes) {
            let again = OverflowHeader::decode(&o.encode(), device_bytes).expect("re-decodes");
            assert_eq!(again.encode(), o.encode());
        }
    }
    let _ = Header::pick(s0, s1, device_bytes);
});
