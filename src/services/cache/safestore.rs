//! The write-back cache's safe store: an append-only circular log of
//! acknowledged writes on its own device, replayed after a crash.
//! `docs/safe-store.md` describes the format byte by byte.
//!
//! ```text
//!   0        4096      8192                                  8192 + capacity
//!   ┌────────┬────────┬──────────────────────────────────────┐
//!   │ hdr 0  │ hdr 1  │ batches …  (circular, by position)    │
//!   └────────┴────────┴──────────────────────────────────────┘
//! ```
//! A **batch** is what one group commit writes: a 4096-byte batch header
//! listing its entries (block number, kind, CRC32C of the data), then the
//! data blocks of its data entries, in one write followed by one flush.
//! Positions are logical and only grow; a batch sits at `8192 + pos %
//! capacity` and never wraps: when it does not fit before the end, it
//! starts at the next multiple of the capacity. The header records the
//! tail: the position and sequence number of the oldest batch whose data is
//! not yet all on the volume. Replay walks from the tail while each batch
//! has the next sequence number and a valid checksum.

use crate::device::{BlockDevice, DeviceError, Result};

pub const BLOCK_BYTES: u64 = 4096;
const HEADER_BYTES: u64 = 4096;
/// The log area starts after two alternating header slots.
pub const LOG_OFFSET: u64 = 2 * HEADER_BYTES;
const STORE_MAGIC: &[u8; 8] = b"UMBRASAF";
const BATCH_MAGIC: &[u8; 8] = b"UMBRABAT";
const VERSION: u32 = 1;
const CRC_OFFSET: usize = HEADER_BYTES as usize - 4;
/// Batch header: 40 bytes of fields, then 16 bytes per entry.
const BATCH_FIXED_BYTES: usize = 40;
const ENTRY_BYTES: usize = 16;
/// Most entries one batch carries.
pub const MAX_BATCH_ENTRIES: usize = (CRC_OFFSET - BATCH_FIXED_BYTES) / ENTRY_BYTES;
/// Smallest log accepted: room for a few full batches.
pub const MIN_LOG_BYTES: u64 = 4 * (MAX_BATCH_ENTRIES as u64 + 1) * BLOCK_BYTES;

/// One logged block: its data, or zeroes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub block: u64,
    /// `None`: the block reads as zeroes.
    pub data: Option<Vec<u8>>,
}

/// The store header (one of two slots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHeader {
    pub seq: u64,
    /// Bytes of the log area.
    pub capacity: u64,
    /// Size of the volume the store belongs to (checked at open).
    pub volume_bytes: u64,
    /// Position and sequence number of the oldest live batch (or of the
    /// next batch, when the log is empty).
    pub tail_pos: u64,
    pub tail_seq: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl StoreHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES as usize];
        b[0..8].copy_from_slice(STORE_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.capacity.to_le_bytes());
        b[32..40].copy_from_slice(&self.volume_bytes.to_le_bytes());
        b[40..48].copy_from_slice(&self.tail_pos.to_le_bytes());
        b[48..56].copy_from_slice(&self.tail_seq.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8], device_bytes: u64) -> std::result::Result<StoreHeader, String> {
        if &b[0..8] != STORE_MAGIC {
            return Err("wrong magic: not an umbra safe store".into());
        }
        if u32_at(b, CRC_OFFSET) != crc32c::crc32c(&b[..CRC_OFFSET]) {
            return Err("header checksum mismatch".into());
        }
        if u32_at(b, 8) != VERSION {
            return Err(format!("unsupported version {}", u32_at(b, 8)));
        }
        if u32_at(b, 12) as u64 != BLOCK_BYTES {
            return Err(format!("block size {} is not {BLOCK_BYTES}", u32_at(b, 12)));
        }
        if b[56..CRC_OFFSET].iter().any(|&c| c != 0) {
            return Err("reserved header bytes are not zero".into());
        }
        let h = StoreHeader {
            seq: u64_at(b, 16),
            capacity: u64_at(b, 24),
            volume_bytes: u64_at(b, 32),
            tail_pos: u64_at(b, 40),
            tail_seq: u64_at(b, 48),
        };
        if h.capacity < MIN_LOG_BYTES || h.capacity % BLOCK_BYTES != 0 {
            return Err(format!("log capacity {} is invalid", h.capacity));
        }
        if h.tail_pos % BLOCK_BYTES != 0 {
            return Err(format!("tail position {} is not block-aligned", h.tail_pos));
        }
        if device_bytes < LOG_OFFSET + h.capacity {
            return Err(format!(
                "truncated: {device_bytes} bytes, the header needs {}",
                LOG_OFFSET + h.capacity
            ));
        }
        Ok(h)
    }
}

/// Bytes a batch of these entries occupies in the log.
pub fn batch_bytes(entries: &[Entry]) -> u64 {
    (1 + entries.iter().filter(|e| e.data.is_some()).count() as u64) * BLOCK_BYTES
}

/// Where a batch of `len` bytes goes when the log's next free position is
/// `pos`: there, or at the start of the next lap if it would wrap.
pub fn place(pos: u64, len: u64, capacity: u64) -> u64 {
    if pos % capacity + len > capacity {
        pos.next_multiple_of(capacity)
    } else {
        pos
    }
}

/// Encode a batch (header block then data blocks).
pub fn encode_batch(seq: u64, pos: u64, entries: &[Entry]) -> Vec<u8> {
    assert!(entries.len() <= MAX_BATCH_ENTRIES, "batch too large");
    let mut out = vec![0u8; batch_bytes(entries) as usize];
    let (hdr, data) = out.split_at_mut(BLOCK_BYTES as usize);
    hdr[0..8].copy_from_slice(BATCH_MAGIC);
    hdr[8..16].copy_from_slice(&seq.to_le_bytes());
    hdr[16..24].copy_from_slice(&pos.to_le_bytes());
    hdr[24..28].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    let mut d = 0;
    for (i, e) in entries.iter().enumerate() {
        let at = BATCH_FIXED_BYTES + i * ENTRY_BYTES;
        // Entry: block (u64), kind (u32: 1 data, 2 zeroes), crc (u32).
        hdr[at..at + 8].copy_from_slice(&e.block.to_le_bytes());
        let (kind, crc) = match &e.data {
            Some(bytes) => {
                data[d..d + BLOCK_BYTES as usize].copy_from_slice(bytes);
                d += BLOCK_BYTES as usize;
                (1u32, crc32c::crc32c(bytes))
            }
            None => (2u32, 0),
        };
        hdr[at + 8..at + 12].copy_from_slice(&kind.to_le_bytes());
        hdr[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&hdr[..CRC_OFFSET]);
    hdr[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A decoded batch header.
struct BatchHeader {
    /// (block, is data, data crc)
    entries: Vec<(u64, bool, u32)>,
}

fn decode_batch_header(
    b: &[u8],
    seq: u64,
    pos: u64,
    volume_blocks: u64,
) -> std::result::Result<BatchHeader, String> {
    if &b[0..8] != BATCH_MAGIC {
        return Err("no batch here".into());
    }
    if u32_at(b, CRC_OFFSET) != crc32c::crc32c(&b[..CRC_OFFSET]) {
        return Err("batch header checksum mismatch".into());
    }
    if u64_at(b, 8) != seq || u64_at(b, 16) != pos {
        return Err(format!(
            "batch is seq {} at {}, expected seq {seq} at {pos}",
            u64_at(b, 8),
            u64_at(b, 16)
        ));
    }
    let n = u32_at(b, 24) as usize;
    if n == 0 || n > MAX_BATCH_ENTRIES || b[28..BATCH_FIXED_BYTES].iter().any(|&c| c != 0) {
        return Err(format!(
            "batch seq {seq}: bad entry count {n} or reserved bytes"
        ));
    }
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let at = BATCH_FIXED_BYTES + i * ENTRY_BYTES;
        let block = u64_at(b, at);
        let kind = u32_at(b, at + 8);
        if block >= volume_blocks || !(kind == 1 || kind == 2) {
            return Err(format!(
                "batch seq {seq}: entry {i} (block {block}, kind {kind}) is invalid"
            ));
        }
        entries.push((block, kind == 1, u32_at(b, at + 12)));
    }
    Ok(BatchHeader { entries })
}

/// What replay found: the live batches in order, and where the log ends.
pub struct Replayed {
    pub header: StoreHeader,
    /// (position, seq, entries) of each live batch, oldest first.
    pub batches: Vec<(u64, u64, Vec<Entry>)>,
    pub head_pos: u64,
    pub next_seq: u64,
}

/// Format `dev` as an empty store for a volume of `volume_bytes`.
pub fn format(
    dev: &dyn BlockDevice,
    volume_bytes: u64,
) -> std::result::Result<StoreHeader, String> {
    let size = dev.size_bytes();
    let capacity = size.saturating_sub(LOG_OFFSET) / BLOCK_BYTES * BLOCK_BYTES;
    if capacity < MIN_LOG_BYTES {
        return Err(format!(
            "{size} bytes is too small for a safe store (at least {} bytes)",
            LOG_OFFSET + MIN_LOG_BYTES
        ));
    }
    let h = StoreHeader {
        seq: 1,
        capacity,
        volume_bytes,
        tail_pos: 0,
        tail_seq: 1,
    };
    let res: Result<()> = (|| {
        dev.write(&vec![0u8; HEADER_BYTES as usize], 0, false)?;
        dev.write(&h.encode(), HEADER_BYTES, false)?;
        // A stale batch at position 0 from an earlier use must not replay.
        dev.write(&vec![0u8; BLOCK_BYTES as usize], LOG_OFFSET, false)?;
        dev.flush()
    })();
    res.map_err(|e| format!("formatting: {e}"))?;
    Ok(h)
}

/// Write header `h` to its slot (by sequence number) and flush.
pub fn write_header(dev: &dyn BlockDevice, h: &StoreHeader) -> Result<()> {
    dev.write(&h.encode(), (h.seq % 2) * HEADER_BYTES, false)?;
    dev.flush()
}

/// Read the header and every live batch. A torn last batch (a crash in the
/// middle of its write: it was never acknowledged) ends the log; a bad
/// batch followed by a good one is corruption and refuses the store.
pub fn replay(dev: &dyn BlockDevice, volume_bytes: u64) -> std::result::Result<Replayed, String> {
    let size = dev.size_bytes();
    if size < LOG_OFFSET {
        return Err(format!("truncated: {size} bytes, smaller than its headers"));
    }
    let mut slots = vec![0u8; LOG_OFFSET as usize];
    dev.read(&mut slots, 0)
        .map_err(|e| format!("reading the header: {e}"))?;
    let (a, b) = slots.split_at(HEADER_BYTES as usize);
    let header = match (StoreHeader::decode(a, size), StoreHeader::decode(b, size)) {
        (Ok(x), Ok(y)) => {
            if y.seq > x.seq {
                y
            } else {
                x
            }
        }
        (Ok(x), Err(_)) | (Err(_), Ok(x)) => x,
        (Err(x), Err(y)) if x == y => return Err(x),
        (Err(x), Err(y)) => return Err(format!("slot 0: {x}; slot 1: {y}")),
    };
    if header.volume_bytes != volume_bytes {
        return Err(format!(
            "belongs to a volume of {} bytes, not {volume_bytes}",
            header.volume_bytes
        ));
    }
    let cap = header.capacity;
    let volume_blocks = volume_bytes / BLOCK_BYTES;
    let mut batches = Vec::new();
    let mut pos = header.tail_pos;
    let mut seq = header.tail_seq;
    let read_at = |pos: u64, buf: &mut [u8]| -> std::result::Result<(), String> {
        dev.read(buf, LOG_OFFSET + pos % cap)
            .map_err(|e| format!("reading the log at {pos}: {e}"))
    };
    // The next batch is at `pos`, or at the next lap when it did not fit.
    let find = |pos: u64, seq: u64| -> std::result::Result<Option<(u64, BatchHeader)>, String> {
        let mut hdr = vec![0u8; BLOCK_BYTES as usize];
        for candidate in [pos, pos.next_multiple_of(cap)] {
            if candidate % cap + BLOCK_BYTES > cap {
                continue;
            }
            read_at(candidate, &mut hdr)?;
            if let Ok(h) = decode_batch_header(&hdr, seq, candidate, volume_blocks) {
                return Ok(Some((candidate, h)));
            }
        }
        Ok(None)
    };
    while pos - header.tail_pos < cap {
        let Some((at, bh)) = find(pos, seq)? else {
            break;
        };
        let n_data = bh.entries.iter().filter(|e| e.1).count() as u64;
        let len = (1 + n_data) * BLOCK_BYTES;
        if at % cap + len > cap || at + len - header.tail_pos > cap {
            return Err(format!(
                "batch seq {seq} at {at} runs past the end of the log"
            ));
        }
        let mut data = vec![0u8; (n_data * BLOCK_BYTES) as usize];
        read_at(at + BLOCK_BYTES, &mut data)?;
        let mut entries = Vec::with_capacity(bh.entries.len());
        let mut d = 0usize;
        let mut bad = None;
        for (block, is_data, crc) in &bh.entries {
            if *is_data {
                let bytes = &data[d..d + BLOCK_BYTES as usize];
                d += BLOCK_BYTES as usize;
                if crc32c::crc32c(bytes) != *crc {
                    bad = Some(*block);
                    break;
                }
                entries.push(Entry {
                    block: *block,
                    data: Some(bytes.to_vec()),
                });
            } else {
                entries.push(Entry {
                    block: *block,
                    data: None,
                });
            }
        }
        if let Some(block) = bad {
            // Torn last batch, or corruption with good batches after it?
            if find(at + len, seq + 1)?.is_some() {
                return Err(format!(
                    "batch seq {seq} at {at}: data checksum mismatch for block {block}, \
                     and later batches follow: refusing to replay a corrupt log"
                ));
            }
            log::warn!(
                "safe store: torn batch seq {seq} at {at} ends the log (never acknowledged)"
            );
            break;
        }
        batches.push((at, seq, entries));
        pos = at + len;
        seq += 1;
    }
    Ok(Replayed {
        header,
        batches,
        head_pos: pos,
        next_seq: seq,
    })
}

/// An I/O error of the store as a device error naming it.
pub fn store_error(what: &str, e: DeviceError) -> DeviceError {
    DeviceError::Failed {
        reason: format!("safe store {what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    fn entry(block: u64, fill: u8) -> Entry {
        Entry {
            block,
            data: Some(vec![fill; BLOCK_BYTES as usize]),
        }
    }

    #[test]
    fn batches_replay_in_order_and_wrap() {
        let dev = MemoryBackend::new(LOG_OFFSET + MIN_LOG_BYTES);
        let h = format(&dev, 1 << 20).unwrap();
        let cap = h.capacity;
        let mut pos = 0;
        let mut written = Vec::new();
        // Enough batches to wrap the log once (with the tail following).
        let mut tail = (0u64, 1u64);
        for seq in 1..=40u64 {
            let entries: Vec<Entry> = (0..60).map(|i| entry(i, seq as u8)).collect();
            let len = batch_bytes(&entries);
            let at = place(pos, len, cap);
            dev.write(
                &encode_batch(seq, at, &entries),
                LOG_OFFSET + at % cap,
                false,
            )
            .unwrap();
            written.push((at, seq));
            pos = at + len;
            // Keep at most 2 batches live.
            if written.len() > 2 {
                let (p, s) = written[written.len() - 2];
                tail = (p, s);
            }
        }
        let hh = StoreHeader {
            seq: 2,
            tail_pos: tail.0,
            tail_seq: tail.1,
            ..h
        };
        write_header(&dev, &hh).unwrap();
        let r = replay(&dev, 1 << 20).unwrap();
        assert_eq!(r.batches.len(), 2);
        assert_eq!(r.batches[1].1, 40);
        assert_eq!(r.head_pos, pos);
        assert_eq!(r.next_seq, 41);
    }

    #[test]
    fn torn_tail_is_dropped_and_corruption_is_refused() {
        let dev = MemoryBackend::new(LOG_OFFSET + MIN_LOG_BYTES);
        let h = format(&dev, 1 << 20).unwrap();
        let mut pos = 0;
        for seq in 1..=3u64 {
            let entries = vec![
                entry(seq, 7),
                Entry {
                    block: 9,
                    data: None,
                },
            ];
            dev.write(&encode_batch(seq, pos, &entries), LOG_OFFSET + pos, false)
                .unwrap();
            pos += batch_bytes(&entries);
        }
        assert_eq!(replay(&dev, 1 << 20).unwrap().batches.len(), 3);
        // Tear the last batch's data: dropped, the first two replay.
        let last_data = LOG_OFFSET + 2 * 2 * BLOCK_BYTES + BLOCK_BYTES;
        dev.write(&[0xff; 100], last_data, false).unwrap();
        assert_eq!(replay(&dev, 1 << 20).unwrap().batches.len(), 2);
        // Corrupt the first batch's data: later batches exist, refused.
        dev.write(&[0xff; 100], LOG_OFFSET + BLOCK_BYTES, false)
            .unwrap();
        let e = replay(&dev, 1 << 20).err().unwrap();
        assert!(e.contains("corrupt"), "{e}");
        // Wrong magic, truncation, a foreign volume size.
        let e = replay(&MemoryBackend::new(LOG_OFFSET + MIN_LOG_BYTES), 1 << 20)
            .err()
            .unwrap();
        assert!(e.contains("magic"), "{e}");
        let mut img = dev.snapshot();
        img.truncate(img.len() - 4096);
        let e = replay(&MemoryBackend::from_bytes(img), 1 << 20)
            .err()
            .unwrap();
        assert!(e.contains("truncated"), "{e}");
        let e = replay(&dev, 2 << 20).err().unwrap();
        assert!(e.contains("belongs to a volume"), "{e}");
        let _ = h;
    }
}
