//! The replication wire protocol: frames and peer authentication.
//! docs/replication-protocol.md describes both byte by byte.
//!
//! Every frame is a 16-byte header (magic, version, type, flags, payload
//! length, CRC32C over header and payload) and a payload. A reader checks
//! everything before it hands a frame on: a bad magic, version, type,
//! flag, length or checksum is an error, and the caller drops the
//! connection (nothing of a bad frame is ever applied).
//!
//! Authentication is mutual HMAC-SHA256 challenge-response over a secret
//! both peers share: each side sends a fresh 32-byte nonce in HELLO, then
//! proves it knows the secret by MACing both nonces, its role and its
//! name. A peer that cannot is refused before any data frame is read.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 4] = b"UMRP";
pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 16;
/// Largest payload: a 4 MiB write plus its fixed fields.
pub const MAX_PAYLOAD_BYTES: u32 = (4 << 20) + 64;
pub const NONCE_BYTES: usize = 32;
pub const MAC_BYTES: usize = 32;
/// Longest peer or set name carried in a frame.
pub const MAX_NAME_BYTES: usize = 64;

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    Auth = 2,
    AuthOk = 3,
    Write = 10,
    Ack = 11,
    Flush = 12,
    Bitmap = 13,
    Heartbeat = 14,
    Error = 15,
    Control = 16,
    Reply = 17,
    Data = 18,
}

impl FrameType {
    fn from_u8(t: u8) -> Option<FrameType> {
        Some(match t {
            1 => FrameType::Hello,
            2 => FrameType::Auth,
            3 => FrameType::AuthOk,
            10 => FrameType::Write,
            11 => FrameType::Ack,
            12 => FrameType::Flush,
            13 => FrameType::Bitmap,
            14 => FrameType::Heartbeat,
            15 => FrameType::Error,
            16 => FrameType::Control,
            17 => FrameType::Reply,
            18 => FrameType::Data,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("peer authentication failed: {0}")]
    Auth(String),
}

impl WireError {
    /// A read that ran into the socket's timeout: the peer fell silent.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e)
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

fn malformed<T>(why: impl Into<String>) -> Result<T, WireError> {
    Err(WireError::Malformed(why.into()))
}

/// A checked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameType,
    pub payload: Vec<u8>,
}

/// Write one frame.
pub fn write_frame(w: &mut impl Write, kind: FrameType, payload: &[u8]) -> Result<(), WireError> {
    write_frame_parts(w, kind, &[payload])
}

/// Write one frame whose payload is the concatenation of `parts` (a WRITE's
/// fields and its data, without copying the data).
pub fn write_frame_parts(
    w: &mut impl Write,
    kind: FrameType,
    parts: &[&[u8]],
) -> Result<(), WireError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_PAYLOAD_BYTES as usize {
        return malformed(format!("payload of {len} bytes is too large"));
    }
    let mut hdr = [0u8; HEADER_BYTES];
    hdr[0..4].copy_from_slice(MAGIC);
    hdr[4] = VERSION;
    hdr[5] = kind as u8;
    hdr[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&hdr[..12]);
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    hdr[12..16].copy_from_slice(&crc.to_le_bytes());
    w.write_all(&hdr)?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

/// Read and check one frame.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, WireError> {
    let mut hdr = [0u8; HEADER_BYTES];
    r.read_exact(&mut hdr)?;
    if &hdr[0..4] != MAGIC {
        return malformed("bad magic");
    }
    if hdr[4] != VERSION {
        return malformed(format!("unsupported version {}", hdr[4]));
    }
    let Some(kind) = FrameType::from_u8(hdr[5]) else {
        return malformed(format!("unknown frame type {}", hdr[5]));
    };
    if hdr[6] != 0 || hdr[7] != 0 {
        return malformed("reserved flag bits set");
    }
    let len = u32::from_le_bytes(hdr[8..12].try_into().expect("4"));
    if len > MAX_PAYLOAD_BYTES {
        return malformed(format!("payload length {len} exceeds {MAX_PAYLOAD_BYTES}"));
    }
    // Read into spare capacity: no zeroing of a buffer about to be
    // overwritten (a resync frame is 64 KiB).
    let mut payload = Vec::with_capacity(len as usize);
    r.take(len as u64).read_to_end(&mut payload)?;
    if payload.len() != len as usize {
        return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let stored = u32::from_le_bytes(hdr[12..16].try_into().expect("4"));
    let crc = crc32c::crc32c_append(crc32c::crc32c(&hdr[..12]), &payload);
    if stored != crc {
        return malformed(format!("checksum mismatch ({stored:#010x} != {crc:#010x})"));
    }
    Ok(Frame { kind, payload })
}

/// WRITE flag: the data is durable on the peer before it acknowledges.
pub const WRITE_FUA: u32 = 1;
/// WRITE flag: the range reads as zeroes (no data bytes follow; a
/// replicated discard or write-zeroes).
pub const WRITE_ZEROES: u32 = 2;
/// WRITE flag: a FLUSH, no data: everything applied before it is made
/// durable (offset and length are 0).
pub const WRITE_FLUSH: u32 = 4;

/// A replicated write: `WRITE` frame payload (the data follows the fields).
#[derive(Debug, Clone)]
pub struct WriteFrame {
    pub set_id: u32,
    pub seq: u64,
    pub group: u64,
    pub offset: u64,
    pub len: u32,
    pub flags: u32,
    /// The data is `buf[data_at..]`: a decoded frame keeps the payload it
    /// came in, fields and all, instead of moving the data down over them
    /// (one copy of every replicated write less on the secondary).
    buf: Vec<u8>,
    data_at: usize,
}

impl PartialEq for WriteFrame {
    fn eq(&self, o: &Self) -> bool {
        (
            self.set_id,
            self.seq,
            self.group,
            self.offset,
            self.len,
            self.flags,
        ) == (o.set_id, o.seq, o.group, o.offset, o.len, o.flags)
            && self.data() == o.data()
    }
}

impl Eq for WriteFrame {}

pub const WRITE_FIXED: usize = 36;

/// The fixed fields of a WRITE (the data is sent after them).
pub fn write_fields(
    set_id: u32,
    seq: u64,
    group: u64,
    offset: u64,
    len: u32,
    flags: u32,
) -> [u8; WRITE_FIXED] {
    let mut p = [0u8; WRITE_FIXED];
    p[0..4].copy_from_slice(&set_id.to_le_bytes());
    p[4..12].copy_from_slice(&seq.to_le_bytes());
    p[12..20].copy_from_slice(&group.to_le_bytes());
    p[20..28].copy_from_slice(&offset.to_le_bytes());
    p[28..32].copy_from_slice(&len.to_le_bytes());
    p[32..36].copy_from_slice(&flags.to_le_bytes());
    p
}

impl WriteFrame {
    /// The bytes to write.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.data_at..]
    }

    pub fn fua(&self) -> bool {
        self.flags & WRITE_FUA != 0
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut p = write_fields(
            self.set_id,
            self.seq,
            self.group,
            self.offset,
            self.len,
            self.flags,
        )
        .to_vec();
        p.extend_from_slice(self.data());
        p
    }

    pub fn decode(p: Vec<u8>) -> Result<WriteFrame, WireError> {
        if p.len() < WRITE_FIXED {
            return malformed(format!("write frame of {} bytes is too short", p.len()));
        }
        let u32_at = |p: &[u8], i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4"));
        let u64_at = |p: &[u8], i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8"));
        let len = u32_at(&p, 28);
        let flags = u32_at(&p, 32);
        let offset = u64_at(&p, 20);
        if flags & !(WRITE_FUA | WRITE_ZEROES | WRITE_FLUSH) != 0 {
            return malformed(format!("unknown write flags {flags:#x}"));
        }
        let carried = p.len() - WRITE_FIXED;
        if flags & WRITE_FLUSH != 0 {
            if flags != WRITE_FLUSH || len != 0 || offset != 0 || carried != 0 {
                return malformed("a flush carries no range, data or other flags");
            }
        } else {
            let expect = if flags & WRITE_ZEROES != 0 {
                0
            } else {
                len as usize
            };
            if carried != expect {
                return malformed(format!(
                    "write frame says {expect} data bytes but carries {carried}"
                ));
            }
            if len == 0 || len % 512 != 0 || offset % 512 != 0 {
                return malformed("write offset and length must be whole, non-empty sectors");
            }
        }
        Ok(WriteFrame {
            set_id: u32_at(&p, 0),
            seq: u64_at(&p, 4),
            group: u64_at(&p, 12),
            offset,
            len,
            flags,
            buf: p,
            data_at: WRITE_FIXED,
        })
    }
}

/// The group number of the WRITE frame at the start of `buf`, if a whole
/// header and the WRITE fields are there (the applier peeks at what it
/// has buffered; the frame is still fully checked when it is read).
pub fn peek_write_group(buf: &[u8]) -> Option<u64> {
    if buf.len() < HEADER_BYTES + 20 || &buf[0..4] != MAGIC || buf[5] != FrameType::Write as u8 {
        return None;
    }
    let at = HEADER_BYTES + 12;
    Some(u64::from_le_bytes(buf[at..at + 8].try_into().expect("8")))
}

/// The (set id, offset, length) of every whole WRITE frame (flushes left
/// out) at the start of `buf`, in order: what the applier will apply next,
/// so it can mark their chunks in one commit. Hints only: each frame is
/// still fully checked when it is read.
pub fn peek_writes(buf: &[u8]) -> Vec<(u32, u64, u32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= HEADER_BYTES + WRITE_FIXED {
        let h = &buf[at..];
        if &h[0..4] != MAGIC || h[5] != FrameType::Write as u8 {
            break;
        }
        let len = u32::from_le_bytes(h[8..12].try_into().expect("4")) as usize;
        if len < WRITE_FIXED || buf.len() - at < HEADER_BYTES + len {
            break;
        }
        let p = &h[HEADER_BYTES..];
        let flags = u32::from_le_bytes(p[32..36].try_into().expect("4"));
        if flags & WRITE_FLUSH == 0 {
            out.push((
                u32::from_le_bytes(p[0..4].try_into().expect("4")),
                u64::from_le_bytes(p[20..28].try_into().expect("8")),
                u32::from_le_bytes(p[28..32].try_into().expect("4")),
            ));
        }
        at += HEADER_BYTES + len;
    }
    out
}

/// ACK flag: every write up to and including `seq` is applied (otherwise
/// just the one write `seq`).
pub const ACK_CUMULATIVE: u32 = 1;

/// `ACK` payload: `seq (u64) | flags (u32)`.
pub fn encode_ack(seq: u64, flags: u32) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..8].copy_from_slice(&seq.to_le_bytes());
    p[8..12].copy_from_slice(&flags.to_le_bytes());
    p
}

pub fn decode_ack(p: &[u8]) -> Result<(u64, u32), WireError> {
    if p.len() != 12 {
        return malformed(format!("ack of {} bytes, expected 12", p.len()));
    }
    let flags = u32::from_le_bytes(p[8..12].try_into().expect("4"));
    if flags & !ACK_CUMULATIVE != 0 {
        return malformed(format!("unknown ack flags {flags:#x}"));
    }
    Ok((u64::from_le_bytes(p[0..8].try_into().expect("8")), flags))
}

// ----- authentication -----------------------------------------------------

/// Which side of the connection: the one that dialled, or the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Listener,
}

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Dialer => b'D',
        Role::Listener => b'L',
    }
}

fn hello_payload(name: &str, nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
    let mut p = vec![VERSION, VERSION, name.len() as u8];
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(nonce);
    p
}

/// (min version, max version, name, nonce) of a HELLO.
fn parse_hello(p: &[u8]) -> Result<(u8, u8, String, [u8; NONCE_BYTES]), WireError> {
    if p.len() < 3 {
        return malformed("short hello");
    }
    let n = p[2] as usize;
    if n == 0 || n > MAX_NAME_BYTES || p.len() != 3 + n + NONCE_BYTES {
        return malformed("hello has a bad name length");
    }
    let name = std::str::from_utf8(&p[3..3 + n])
        .map_err(|_| WireError::Malformed("hello name is not UTF-8".into()))?
        .to_owned();
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&p[3 + n..]);
    Ok((p[0], p[1], name, nonce))
}

/// The proof of `role`: HMAC-SHA256 under the shared secret over the
/// role, the prover's name, both nonces and the TLS session's binding
/// (empty without TLS), so a proof is good for one connection only.
fn mac(
    secret: &[u8],
    role: Role,
    own_name: &str,
    own: &[u8],
    peer: &[u8],
    binding: &[u8],
) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"umbra-repl-v1");
    m.update(&[role_byte(role)]);
    m.update(&[own_name.len() as u8]);
    m.update(own_name.as_bytes());
    m.update(own);
    m.update(peer);
    m.update(binding);
    m
}

/// A fresh nonce from the kernel's random source.
pub fn nonce() -> io::Result<[u8; NONCE_BYTES]> {
    let mut n = [0u8; NONCE_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

/// Run the handshake on a connected stream: exchange HELLOs, prove the
/// shared secret both ways. Returns the peer's name. Any failure is an
/// error and the caller closes the connection.
pub fn handshake(
    s: &mut (impl Read + Write),
    role: Role,
    own_name: &str,
    secret: &[u8],
) -> Result<String, WireError> {
    handshake_with(s, role, own_name, &|_: &str| Some(secret.to_vec()), &[])
}

/// [`handshake`] with the secret looked up by the peer's announced name
/// (a secret per peer; an unknown peer is refused), and the TLS session's
/// binding (`tls.rs`; empty on a plaintext connection) in both proofs.
pub fn handshake_with(
    s: &mut (impl Read + Write),
    role: Role,
    own_name: &str,
    secret_of: &dyn Fn(&str) -> Option<Vec<u8>>,
    binding: &[u8],
) -> Result<String, WireError> {
    if own_name.is_empty() || own_name.len() > MAX_NAME_BYTES {
        return Err(WireError::Auth(format!("bad node name {own_name:?}")));
    }
    let own_nonce = nonce()?;
    write_frame(s, FrameType::Hello, &hello_payload(own_name, &own_nonce))?;
    // A listener that refuses us before the proofs says why in an ERROR.
    let refused = |f: &Frame| {
        (f.kind == FrameType::Error)
            .then(|| WireError::Auth(format!("refused: {}", String::from_utf8_lossy(&f.payload))))
    };
    let f = read_frame(s)?;
    if let Some(e) = refused(&f) {
        return Err(e);
    }
    if f.kind != FrameType::Hello {
        return malformed(format!("expected HELLO, got {:?}", f.kind));
    }
    let (min, max, peer_name, peer_nonce) = parse_hello(&f.payload)?;
    if !(min..=max).contains(&VERSION) {
        return Err(WireError::Auth(format!(
            "peer {peer_name} speaks versions {min}..={max}, this node {VERSION}"
        )));
    }
    if peer_nonce == own_nonce {
        return Err(WireError::Auth("peer echoed our nonce (reflection)".into()));
    }
    let Some(secret) = secret_of(&peer_name) else {
        return Err(WireError::Auth(format!(
            "peer {peer_name} is not a configured peer of this node (`umbra repl peer add`)"
        )));
    };
    let secret = secret.as_slice();
    let proof = mac(secret, role, own_name, &own_nonce, &peer_nonce, binding)
        .finalize()
        .into_bytes();
    write_frame(s, FrameType::Auth, &proof)?;
    let f = read_frame(s)?;
    if let Some(e) = refused(&f) {
        return Err(e);
    }
    if f.kind != FrameType::Auth || f.payload.len() != MAC_BYTES {
        return malformed("expected a 32-byte AUTH");
    }
    let peer_role = match role {
        Role::Dialer => Role::Listener,
        Role::Listener => Role::Dialer,
    };
    mac(
        secret,
        peer_role,
        &peer_name,
        &peer_nonce,
        &own_nonce,
        binding,
    )
    .verify_slice(&f.payload)
    .map_err(|_| WireError::Auth(format!("peer {peer_name} does not know the shared secret")))?;
    write_frame(s, FrameType::AuthOk, &[])?;
    let f = read_frame(s)?;
    if f.kind != FrameType::AuthOk {
        return Err(WireError::Auth(format!("peer {peer_name} refused us")));
    }
    Ok(peer_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn frames_round_trip_and_every_corruption_is_refused() {
        let w = WriteFrame {
            set_id: 7,
            seq: 42,
            group: 3,
            offset: 4096,
            len: 4096,
            flags: WRITE_FUA,
            buf: vec![0xab; 4096],
            data_at: 0,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameType::Write, &w.encode()).unwrap();
        let f = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(f.kind, FrameType::Write);
        assert_eq!(WriteFrame::decode(f.payload).unwrap(), w);
        // Flip every byte of the frame in turn: each is refused (or, for
        // the length field, runs out of input), never accepted.
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(read_frame(&mut bad.as_slice()).is_err(), "byte {i}");
        }
        // A truncated frame.
        assert!(read_frame(&mut &buf[..buf.len() - 1]).is_err());
        // Semantically bad writes inside a well-formed frame.
        let mut p = w.encode();
        p.truncate(p.len() - 1);
        assert!(WriteFrame::decode(p).is_err());
        let odd = WriteFrame {
            offset: 100,
            ..w.clone()
        };
        assert!(WriteFrame::decode(odd.encode()).is_err());
        let zero_with_data = WriteFrame {
            flags: WRITE_ZEROES,
            ..w.clone()
        };
        assert!(WriteFrame::decode(zero_with_data.encode()).is_err());
        let flush_with_range = WriteFrame {
            flags: WRITE_FLUSH,
            buf: vec![],
            data_at: 0,
            ..w.clone()
        };
        assert!(WriteFrame::decode(flush_with_range.encode()).is_err());
        assert!(decode_ack(&encode_ack(5, 2)).is_err());
        assert_eq!(decode_ack(&encode_ack(5, 1)).unwrap(), (5, 1));
    }

    fn pair(
        secret_a: &'static [u8],
        secret_b: &'static [u8],
    ) -> (Result<String, WireError>, Result<String, WireError>) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || handshake(&mut b, Role::Listener, "site-b", secret_b));
        let ra = handshake(&mut a, Role::Dialer, "site-a", secret_a);
        drop(a);
        (ra, t.join().unwrap())
    }

    #[test]
    fn peers_with_the_secret_authenticate_and_others_are_refused() {
        let (a, b) = pair(b"s3cret", b"s3cret");
        assert_eq!(a.unwrap(), "site-b");
        assert_eq!(b.unwrap(), "site-a");
        let (a, b) = pair(b"s3cret", b"wrong");
        assert!(matches!(a, Err(WireError::Auth(_))) || matches!(a, Err(WireError::Io(_))));
        let e = b.unwrap_err().to_string();
        assert!(e.contains("does not know the shared secret"), "{e}");
    }
}

#[cfg(test)]
mod binding_tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// The same secret on two different TLS sessions (a man in the middle
    /// who terminates each side's TLS): the proofs do not carry over.
    #[test]
    fn proofs_are_bound_to_the_tls_session() {
        let run = |ba: &'static [u8], bb: &'static [u8]| {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let secret = |_: &str| Some(b"s3cret".to_vec());
            let t = std::thread::spawn(move || {
                handshake_with(&mut b, Role::Listener, "site-b", &secret, bb)
            });
            let ra = handshake_with(&mut a, Role::Dialer, "site-a", &secret, ba);
            drop(a);
            (ra, t.join().unwrap())
        };
        let (a, b) = run(&[7; 32], &[7; 32]);
        assert_eq!((a.unwrap(), b.unwrap()), ("site-b".into(), "site-a".into()));
        let (_, b) = run(&[7; 32], &[8; 32]);
        let e = b.unwrap_err().to_string();
        assert!(e.contains("does not know the shared secret"), "{e}");
    }
}
