//! The bitmap volume's on-disk format. `docs/image-format.md` describes it
//! byte by byte; this module is the only code that reads or writes it.
//!
//! ```text
//!   0       4096      8192            8192 + B        8192 + 2B       + I
//!   ┌────────┬────────┬───────────────┬───────────────┬───────────────┐
//!   │ slot 0 │ slot 1 │ shadow bitmap │ copy bitmap   │ chunk index   │
//!   └────────┴────────┴───────────────┴───────────────┴───────────────┘
//! ```
//! Two header slots alternate by sequence number so a torn header write
//! never loses the set: a reader takes the valid slot with the higher
//! sequence. `B` is one bit per chunk rounded up to 4096 bytes. Only a
//! compact set has the chunk index (`I`: 8 bytes per chunk, rounded up to
//! 4096): where each saved master chunk lives in the small shadow or in
//! the shared overflow volume.

use std::fmt;

pub const MAGIC: &[u8; 8] = b"UMBRAIMG";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: u64 = 4096;
/// Bitmaps start after the two header slots.
pub const BITMAPS_OFFSET: u64 = 2 * HEADER_BYTES;
/// Bitmaps are written in blocks of this many bytes.
pub const BITMAP_BLOCK_BYTES: u64 = 4096;
pub const MIN_CHUNK_BYTES: u32 = 4096;
pub const MAX_CHUNK_BYTES: u32 = 1 << 20;
pub const DEFAULT_CHUNK_BYTES: u32 = 32 << 10;
/// Longest set or volume name the header stores.
pub const NAME_BYTES: usize = 64;
const CRC_OFFSET: usize = HEADER_BYTES as usize - 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A background copy fills the shadow; dependent until it completes.
    Independent,
    /// Copy-on-write only; unchanged shadow chunks are read from the master.
    Dependent,
    /// Dependent, with a shadow smaller than the master: saved chunks are
    /// packed into the shadow through a chunk index, then into an overflow
    /// volume several sets share.
    Compact,
}

/// Where a copy moves chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    None,
    /// Master to shadow: refresh the shadow.
    ToShadow,
    /// Shadow to master: restore the master.
    ToMaster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderState {
    /// Suspended cleanly: every bit on disk is exact.
    Clean,
    /// In use by a daemon.
    Dirty,
    /// The shadow is offline (failed I/O, or a memory bitmap lost in a crash).
    Failed,
}

/// A bitmap rewrite that was under way; a reader redoes it (each one is
/// idempotent), so a crash in the middle of `update` or `copy` ends with
/// the new point in time or the old one, never a mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// copy |= shadow bitmap; shadow bitmap = 0 (an update).
    Merge,
    /// copy = all ones; shadow bitmap = 0 (a full copy).
    Fill,
    /// copy = 0; shadow bitmap = 0 (a dependent shadow's refresh).
    Clear,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub kind: Kind,
    pub state: HeaderState,
    pub direction: Direction,
    /// The copy engine should run (false after an abort).
    pub copy_active: bool,
    /// On disk a copy bit of 1 means "copied" (set at enable of an
    /// independent set, so establishing writes no bitmap).
    pub copy_inverted: bool,
    /// Bits are kept in memory and written only at a clean suspend.
    pub memory_bitmap: bool,
    pub transition: Transition,
    pub chunk_bytes: u32,
    pub throttle_delay_ms: u32,
    pub throttle_unit: u32,
    pub master_bytes: u64,
    pub shadow_bytes: u64,
    pub chunks: u64,
    pub created_unix: u64,
    pub set: String,
    pub master: String,
    pub shadow: String,
    /// The overflow volume a compact set spills into ("" for none).
    pub overflow: String,
}

/// Why a bitmap volume was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError(msg.into()))
}

/// Sizes of the bitmap volume's regions for a set of `chunks` chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub bitmap_bytes: u64,
    pub diff_offset: u64,
    pub copy_offset: u64,
    /// 0 when the set has no chunk index.
    pub index_offset: u64,
    pub index_bytes: u64,
    pub total_bytes: u64,
}

/// Bytes of one chunk-index entry.
pub const INDEX_ENTRY_BYTES: u64 = 8;
/// Index entry bit: the chunk lives in the overflow volume.
pub const INDEX_OVERFLOW: u64 = 1 << 63;

impl Layout {
    pub fn for_chunks(chunks: u64, compact: bool) -> Layout {
        let round = |b: u64| b.div_ceil(BITMAP_BLOCK_BYTES).max(1) * BITMAP_BLOCK_BYTES;
        let bitmap_bytes = round(chunks.div_ceil(8));
        let index_offset = BITMAPS_OFFSET + 2 * bitmap_bytes;
        let index_bytes = if compact {
            round(chunks * INDEX_ENTRY_BYTES)
        } else {
            0
        };
        Layout {
            bitmap_bytes,
            diff_offset: BITMAPS_OFFSET,
            copy_offset: BITMAPS_OFFSET + bitmap_bytes,
            index_offset: if compact { index_offset } else { 0 },
            index_bytes,
            total_bytes: index_offset + index_bytes,
        }
    }
}

pub fn chunks_for(master_bytes: u64, chunk_bytes: u32) -> u64 {
    master_bytes.div_ceil(chunk_bytes as u64)
}

pub fn validate_chunk_bytes(chunk_bytes: u32) -> Result<(), FormatError> {
    if !chunk_bytes.is_power_of_two() || !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_bytes)
    {
        return bad(format!(
            "chunk size {chunk_bytes} must be a power of two from {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES} bytes"
        ));
    }
    Ok(())
}

fn put_name(b: &mut [u8], at: usize, name: &str) {
    let n = name.as_bytes();
    b[at..at + n.len().min(NAME_BYTES)].copy_from_slice(&n[..n.len().min(NAME_BYTES)]);
}

fn get_name(b: &[u8], at: usize, what: &str) -> Result<String, FormatError> {
    let field = &b[at..at + NAME_BYTES];
    let len = field.iter().position(|&c| c == 0).unwrap_or(NAME_BYTES);
    if field[len..].iter().any(|&c| c != 0) {
        return bad(format!("{what} name field has bytes after its terminator"));
    }
    match std::str::from_utf8(&field[..len]) {
        Ok(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => bad(format!("{what} name field is empty or not UTF-8")),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    pub fn layout(&self) -> Layout {
        Layout::for_chunks(self.chunks, self.kind == Kind::Compact)
    }

    /// The slot this header is written to.
    pub fn slot_offset(&self) -> u64 {
        (self.seq % 2) * HEADER_BYTES
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES as usize];
        let layout = self.layout();
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24] = match self.kind {
            Kind::Independent => 1,
            Kind::Dependent => 2,
            Kind::Compact => 3,
        };
        b[25] = match self.state {
            HeaderState::Clean => 1,
            HeaderState::Dirty => 2,
            HeaderState::Failed => 3,
        };
        b[26] = match self.direction {
            Direction::None => 0,
            Direction::ToShadow => 1,
            Direction::ToMaster => 2,
        };
        b[27] = (self.copy_active as u8)
            | (self.copy_inverted as u8) << 1
            | (self.memory_bitmap as u8) << 2;
        b[28] = match self.transition {
            Transition::None => 0,
            Transition::Merge => 1,
            Transition::Fill => 2,
            Transition::Clear => 3,
        };
        b[32..36].copy_from_slice(&self.chunk_bytes.to_le_bytes());
        b[36..40].copy_from_slice(&self.throttle_delay_ms.to_le_bytes());
        b[40..44].copy_from_slice(&self.throttle_unit.to_le_bytes());
        b[48..56].copy_from_slice(&self.master_bytes.to_le_bytes());
        b[56..64].copy_from_slice(&self.shadow_bytes.to_le_bytes());
        b[64..72].copy_from_slice(&self.chunks.to_le_bytes());
        b[72..80].copy_from_slice(&layout.diff_offset.to_le_bytes());
        b[80..88].copy_from_slice(&layout.copy_offset.to_le_bytes());
        b[88..96].copy_from_slice(&layout.bitmap_bytes.to_le_bytes());
        b[96..104].copy_from_slice(&self.created_unix.to_le_bytes());
        put_name(&mut b, 104, &self.set);
        put_name(&mut b, 168, &self.master);
        put_name(&mut b, 232, &self.shadow);
        b[296..304].copy_from_slice(&layout.index_offset.to_le_bytes());
        b[304..312].copy_from_slice(&layout.index_bytes.to_le_bytes());
        put_name(&mut b, 312, &self.overflow);
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and validate one header slot. `device_bytes` is the bitmap
    /// volume's size, checked against the layout the header claims.
    pub fn decode(b: &[u8], device_bytes: u64) -> Result<Header, FormatError> {
        if b.len() != HEADER_BYTES as usize {
            return bad(format!(
                "header slot is {} bytes, not {HEADER_BYTES}",
                b.len()
            ));
        }
        if &b[0..8] != MAGIC {
            return bad("wrong magic: not an umbra bitmap volume");
        }
        let stored = u32_at(b, CRC_OFFSET);
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        if stored != crc {
            return bad(format!(
                "header checksum mismatch (stored {stored:#010x}, computed {crc:#010x})"
            ));
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return bad(format!(
                "unsupported version {version} (this umbra reads {VERSION})"
            ));
        }
        if u32_at(b, 12) as u64 != HEADER_BYTES {
            return bad(format!(
                "header size {} is not {HEADER_BYTES}",
                u32_at(b, 12)
            ));
        }
        let kind = match b[24] {
            1 => Kind::Independent,
            2 => Kind::Dependent,
            3 => Kind::Compact,
            k => return bad(format!("unknown set type {k}")),
        };
        let state = match b[25] {
            1 => HeaderState::Clean,
            2 => HeaderState::Dirty,
            3 => HeaderState::Failed,
            s => return bad(format!("unknown state {s}")),
        };
        let direction = match b[26] {
            0 => Direction::None,
            1 => Direction::ToShadow,
            2 => Direction::ToMaster,
            d => return bad(format!("unknown copy direction {d}")),
        };
        if b[27] & !0b111 != 0 {
            return bad(format!("unknown flag bits {:#04x}", b[27]));
        }
        let transition = match b[28] {
            0 => Transition::None,
            1 => Transition::Merge,
            2 => Transition::Fill,
            3 => Transition::Clear,
            t => return bad(format!("unknown transition {t}")),
        };
        if b[29..32]
            .iter()
            .chain(&b[44..48])
            .chain(&b[376..CRC_OFFSET])
            .any(|&c| c != 0)
        {
            return bad("reserved header bytes are not zero");
        }
        let h = Header {
            seq: u64_at(b, 16),
            kind,
            state,
            direction,
            copy_active: b[27] & 1 != 0,
            copy_inverted: b[27] & 2 != 0,
            memory_bitmap: b[27] & 4 != 0,
            transition,
            chunk_bytes: u32_at(b, 32),
            throttle_delay_ms: u32_at(b, 36),
            throttle_unit: u32_at(b, 40),
            master_bytes: u64_at(b, 48),
            shadow_bytes: u64_at(b, 56),
            chunks: u64_at(b, 64),
            created_unix: u64_at(b, 96),
            set: get_name(b, 104, "set")?,
            master: get_name(b, 168, "master")?,
            shadow: get_name(b, 232, "shadow")?,
            overflow: if b[312..376].iter().all(|&c| c == 0) {
                String::new()
            } else {
                get_name(b, 312, "overflow")?
            },
        };
        validate_chunk_bytes(h.chunk_bytes)?;
        if h.master_bytes == 0 {
            return bad("master size is zero");
        }
        if h.chunks != chunks_for(h.master_bytes, h.chunk_bytes) {
            return bad(format!(
                "chunk count {} does not match a {}-byte master in {}-byte chunks",
                h.chunks, h.master_bytes, h.chunk_bytes
            ));
        }
        if h.kind == Kind::Compact {
            if h.shadow_bytes < h.chunk_bytes as u64 {
                return bad(format!(
                    "compact shadow size {} is smaller than one chunk",
                    h.shadow_bytes
                ));
            }
        } else if h.shadow_bytes < h.master_bytes {
            return bad(format!(
                "shadow size {} is smaller than the master's {}",
                h.shadow_bytes, h.master_bytes
            ));
        }
        if h.kind != Kind::Compact && !h.overflow.is_empty() {
            return bad("only a compact set has an overflow volume");
        }
        let layout = h.layout();
        if (
            u64_at(b, 72),
            u64_at(b, 80),
            u64_at(b, 88),
            u64_at(b, 296),
            u64_at(b, 304),
        ) != (
            layout.diff_offset,
            layout.copy_offset,
            layout.bitmap_bytes,
            layout.index_offset,
            layout.index_bytes,
        ) {
            return bad("bitmap offsets or sizes do not match the chunk count");
        }
        if device_bytes < layout.total_bytes {
            return bad(format!(
                "bitmap volume is truncated: {device_bytes} bytes, the header needs {}",
                layout.total_bytes
            ));
        }
        Ok(h)
    }

    /// Pick the newer valid header of the two slots. Both slots bad is an
    /// error naming both causes.
    pub fn pick(slot0: &[u8], slot1: &[u8], device_bytes: u64) -> Result<Header, FormatError> {
        match (
            Header::decode(slot0, device_bytes),
            Header::decode(slot1, device_bytes),
        ) {
            (Ok(a), Ok(b)) => Ok(if b.seq > a.seq { b } else { a }),
            (Ok(a), Err(_)) => Ok(a),
            (Err(_), Ok(b)) => Ok(b),
            (Err(a), Err(b)) if a == b => Err(a),
            (Err(a), Err(b)) => bad(format!("slot 0: {a}; slot 1: {b}")),
        }
    }
}

/// Magic of an overflow volume.
pub const OVERFLOW_MAGIC: &[u8; 8] = b"UMBRAOVF";
/// Chunks of an overflow volume start after its 4096-byte header.
pub const OVERFLOW_DATA_OFFSET: u64 = HEADER_BYTES;

/// The header of an overflow volume: the space compact sets spill into.
/// ```text
///   0  magic "UMBRAOVF"   8  version u32   12 chunk_bytes u32
///   16 capacity_chunks u64  24 next_chunk u64  28.. name [64] at 32
///   96..4092 zero         4092 crc32c of bytes 0..4092
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverflowHeader {
    pub chunk_bytes: u32,
    pub capacity_chunks: u64,
    /// Chunks handed out so far; they are never reused while a set uses
    /// the volume (the last set leaving resets it).
    pub next_chunk: u64,
    pub name: String,
}

/// Version 2 of the overflow header keeps all of it, checksum included,
/// in its first 512-byte sector: the header is rewritten in place (each
/// chunk handed out), and a device writes one sector whole or not at all,
/// while a 4 KiB write can tear between sectors. Version 1 (checksum at
/// byte 4092) is still read.
const OVERFLOW_VERSION: u32 = 2;
const OVERFLOW_CRC_OFFSET: usize = 508;

impl OverflowHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES as usize];
        b[0..8].copy_from_slice(OVERFLOW_MAGIC);
        b[8..12].copy_from_slice(&OVERFLOW_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.chunk_bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.capacity_chunks.to_le_bytes());
        b[24..32].copy_from_slice(&self.next_chunk.to_le_bytes());
        put_name(&mut b, 32, &self.name);
        let crc = crc32c::crc32c(&b[..OVERFLOW_CRC_OFFSET]);
        b[OVERFLOW_CRC_OFFSET..OVERFLOW_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8], device_bytes: u64) -> Result<OverflowHeader, FormatError> {
        if b.len() != HEADER_BYTES as usize || &b[0..8] != OVERFLOW_MAGIC {
            return bad("wrong magic: not an umbra overflow volume");
        }
        // Where the checksum is and what it covers; what lies between the
        // fields and it must be zero.
        let (crc_at, reserved) = match u32_at(b, 8) {
            1 => (CRC_OFFSET, 96..CRC_OFFSET),
            // Bytes 512.. may still hold a version 1 checksum (an upgrade
            // torn between sectors): unused, not checked.
            OVERFLOW_VERSION => (OVERFLOW_CRC_OFFSET, 96..OVERFLOW_CRC_OFFSET),
            v => return bad(format!("unsupported overflow version {v}")),
        };
        if u32_at(b, crc_at) != crc32c::crc32c(&b[..crc_at]) {
            return bad("overflow header checksum mismatch");
        }
        if b[reserved].iter().any(|&c| c != 0) {
            return bad("reserved overflow header bytes are not zero");
        }
        let h = OverflowHeader {
            chunk_bytes: u32_at(b, 12),
            capacity_chunks: u64_at(b, 16),
            next_chunk: u64_at(b, 24),
            name: get_name(b, 32, "overflow")?,
        };
        validate_chunk_bytes(h.chunk_bytes)?;
        if h.next_chunk > h.capacity_chunks {
            return bad(format!(
                "overflow next chunk {} is past its capacity {}",
                h.next_chunk, h.capacity_chunks
            ));
        }
        let need = OVERFLOW_DATA_OFFSET + h.capacity_chunks * h.chunk_bytes as u64;
        if device_bytes < need {
            return bad(format!(
                "overflow volume is truncated: {device_bytes} bytes, the header needs {need}"
            ));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_headers_of_version_1_still_read_and_version_2_survives_a_torn_write() {
        let h = OverflowHeader {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            capacity_chunks: 8,
            next_chunk: 3,
            name: "spill".into(),
        };
        let dev = OVERFLOW_DATA_OFFSET + 8 * DEFAULT_CHUNK_BYTES as u64;
        let v2 = h.encode();
        assert_eq!(OverflowHeader::decode(&v2, dev).unwrap(), h);
        // Version 1: checksum of bytes 0..4092 at 4092.
        let mut v1 = v2.clone();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1[OVERFLOW_CRC_OFFSET..OVERFLOW_CRC_OFFSET + 4].fill(0);
        let crc = crc32c::crc32c(&v1[..CRC_OFFSET]);
        v1[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(OverflowHeader::decode(&v1, dev).unwrap(), h);
        // Rewriting a version 1 header torn after its first sector (the
        // old checksum left at 4092) reads as the new one.
        let next = OverflowHeader {
            next_chunk: 4,
            ..h.clone()
        };
        let mut torn = v1.clone();
        torn[..512].copy_from_slice(&next.encode()[..512]);
        assert_eq!(OverflowHeader::decode(&torn, dev).unwrap(), next);
    }

    pub fn sample() -> Header {
        Header {
            seq: 7,
            kind: Kind::Independent,
            state: HeaderState::Dirty,
            direction: Direction::ToShadow,
            copy_active: true,
            copy_inverted: true,
            memory_bitmap: false,
            transition: Transition::None,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            throttle_delay_ms: 0,
            throttle_unit: 0,
            master_bytes: 1 << 30,
            shadow_bytes: 1 << 30,
            chunks: chunks_for(1 << 30, DEFAULT_CHUNK_BYTES),
            created_unix: 1_700_000_000,
            set: "nightly".into(),
            master: "db".into(),
            shadow: "db-snap".into(),
            overflow: String::new(),
        }
    }

    #[test]
    fn header_round_trips_and_alternates_slots() {
        let h = sample();
        let total = h.layout().total_bytes;
        assert_eq!(Header::decode(&h.encode(), total).unwrap(), h);
        assert_eq!(h.slot_offset(), HEADER_BYTES);
        let mut newer = h.clone();
        newer.seq = 8;
        assert_eq!(
            Header::pick(&newer.encode(), &h.encode(), total)
                .unwrap()
                .seq,
            8
        );
        // A torn newer slot falls back to the older one.
        let mut torn = newer.encode();
        torn[100] ^= 1;
        assert_eq!(Header::pick(&torn, &h.encode(), total).unwrap().seq, 7);
    }

    #[test]
    fn compact_header_and_overflow_header_round_trip() {
        let mut h = sample();
        h.kind = Kind::Compact;
        h.shadow_bytes = 1 << 20;
        h.overflow = "spill".into();
        let total = h.layout().total_bytes;
        assert!(h.layout().index_bytes >= h.chunks * 8);
        assert_eq!(Header::decode(&h.encode(), total).unwrap(), h);
        let o = OverflowHeader {
            chunk_bytes: 32768,
            capacity_chunks: 10,
            next_chunk: 3,
            name: "spill".into(),
        };
        let size = OVERFLOW_DATA_OFFSET + 10 * 32768;
        assert_eq!(OverflowHeader::decode(&o.encode(), size).unwrap(), o);
        assert!(OverflowHeader::decode(&o.encode(), size - 1)
            .unwrap_err()
            .0
            .contains("truncated"));
        let mut b = o.encode();
        b[20] ^= 1;
        assert!(OverflowHeader::decode(&b, size)
            .unwrap_err()
            .0
            .contains("checksum"));
    }

    #[test]
    fn every_bad_field_is_refused_with_a_reason() {
        let h = sample();
        let total = h.layout().total_bytes;
        let reencode = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = h.encode();
            f(&mut b);
            let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
            b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
            Header::decode(&b, total).unwrap_err().0
        };
        let mut b = h.encode();
        b[0] = b'X';
        assert!(Header::decode(&b, total).unwrap_err().0.contains("magic"));
        let mut b = h.encode();
        b[50] ^= 0xff;
        assert!(Header::decode(&b, total)
            .unwrap_err()
            .0
            .contains("checksum"));
        assert!(reencode(&|b| b[8] = 9).contains("version"));
        assert!(reencode(&|b| b[24] = 7).contains("set type"));
        assert!(reencode(&|b| b[25] = 0).contains("state"));
        assert!(reencode(&|b| b[27] = 0x80).contains("flag"));
        assert!(
            reencode(&|b| b[32..36].copy_from_slice(&3000u32.to_le_bytes())).contains("chunk size")
        );
        assert!(reencode(&|b| b[64] ^= 1).contains("chunk count"));
        assert!(reencode(&|b| b[56..64].copy_from_slice(&1u64.to_le_bytes())).contains("smaller"));
        assert!(reencode(&|b| b[400] = 1).contains("reserved"));
        assert!(reencode(&|b| b[300] = 1).contains("offsets"));
        assert!(reencode(&|b| b[312] = b'o').contains("only a compact set"));
        assert!(reencode(&|b| b[104..168].fill(0)).contains("set name"));
        assert!(Header::decode(&h.encode(), total - 1)
            .unwrap_err()
            .0
            .contains("truncated"));
    }
}
