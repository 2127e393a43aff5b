//! Online verify (`repl verify`) and the checksum pass of `repl sync
//! --checksum`: compare primary and secondary chunk by chunk by checksum
//! while the set replicates.
//!
//! A batch of chunks is held still ([`ReplSet::hold_chunks`]: new writes
//! to them wait, earlier ones are acknowledged first, so both sides hold
//! the same writes), the local chunks are read and checksummed, the peer
//! sends the checksums of its copies (`checksums` request), and the hold
//! ends. Writers to other chunks never wait.
//!
//! The checksum is CRC32C: the question is "did these bytes change by
//! accident" (a disk, a restore from backup, a write behind umbra's
//! back), not "did an adversary forge a collision" (the peer is
//! authenticated and the link is the threat model of the handshake).
//! CRC32C runs at memory speed with SSE4.2, so a verify is bound by the
//! disks; a random change goes unnoticed with probability 2^-32 per chunk.

use super::error::{RResult, ReplError};
use super::peer::Session;
use super::requests::PeerRequest;
use super::runtime::Replication;
use super::set::ReplSet;
use super::SetState;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Chunks compared per request: 64 chunks of 64 KiB is one 4 MiB read
/// and one round trip; a writer to a held chunk waits at most that long.
pub const VERIFY_BATCH_CHUNKS: u64 = 64;
/// Differing chunk numbers kept in the report (the count is exact).
const REPORT_CHUNKS_MAX: usize = 256;

/// What `repl info` shows of the last (or running) verify.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    pub running: bool,
    pub chunks_total: u64,
    pub chunks_done: u64,
    pub chunks_differing: u64,
    pub bytes_differing: u64,
    /// The first differing chunks (chunk numbers; `chunk_bytes` each).
    pub differing_chunks: Vec<u64>,
    pub chunk_bytes: u64,
    pub started_unix_ms: u64,
    pub elapsed_ms: u64,
    pub error: Option<String>,
}

impl Replication {
    /// Start an online verify of set `name` in the background.
    pub fn verify(&self, name: &str, secondary: Option<&str>) -> RResult<Value> {
        let set = self.leg(name, secondary)?;
        let node = set.peer_node.clone();
        if set.state() != SetState::Replicating {
            return Err(ReplError::Busy(format!(
                "replication set {name} is {}; verify compares a replicating set",
                set.state().as_str()
            )));
        }
        {
            let mut v = set.verify.lock();
            if v.as_ref().is_some_and(|r| r.running) {
                return self.info(name, Some(&node)); // already running: idempotent
            }
            *v = Some(VerifyReport {
                running: true,
                chunks_total: set.scoreboard.chunks(),
                chunk_bytes: set.scoreboard.chunk_bytes(),
                started_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                ..Default::default()
            });
        }
        let ctx = self.ctx.clone();
        let me = self.me();
        let s = set.clone();
        std::thread::Builder::new()
            .name(format!("repl-verify-{name}"))
            .spawn(move || {
                let start = Instant::now();
                let r = Session::open(&ctx, &s.link().peer_addr)
                    .and_then(|mut session| run_verify(&s, &mut session));
                let mut v = s.verify.lock();
                if let Some(rep) = v.as_mut() {
                    rep.running = false;
                    rep.elapsed_ms = start.elapsed().as_millis() as u64;
                    rep.error = r.err();
                    if let Some(r) = me.upgrade() {
                        let text = match &rep.error {
                            Some(e) => format!("verify stopped: {e}"),
                            None => format!(
                                "{} of {} chunks differ",
                                rep.chunks_differing, rep.chunks_done
                            ),
                        };
                        let mut note = crate::services::Note::new(text).field("peer", &s.peer_node);
                        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&*rep) {
                            note.fields.extend(m);
                        }
                        r.publish("repl.verified", &s.name, note);
                    }
                }
            })
            .map_err(|e| ReplError::Failed(e.to_string()))?;
        self.publish(
            "repl.verify_started",
            name,
            crate::services::Note::new(format!("secondary {node}")).field("peer", &node),
        );
        self.info(name, Some(&node))
    }
}

fn run_verify(set: &Arc<ReplSet>, session: &mut Session) -> Result<(), String> {
    let chunks = set.scoreboard.chunks();
    let mut first = 0;
    while first < chunks {
        let n = VERIFY_BATCH_CHUNKS.min(chunks - first);
        if set.state() != SetState::Replicating {
            return Err(format!(
                "set {} left replicating ({})",
                set.name,
                set.state().as_str()
            ));
        }
        let equal = compare_batch(set, session, first, n)?;
        for (i, eq) in equal.iter().enumerate() {
            if *eq {
                continue;
            }
            let c = first + i as u64;
            // Durable before it is reported: a resync then repairs it.
            set.scoreboard.set_oos(c);
            set.scoreboard
                .make_durable(c..c + 1)
                .map_err(|e| format!("set {}: scoreboard: {e}", set.name))?;
            let mut v = set.verify.lock();
            if let Some(r) = v.as_mut() {
                r.chunks_differing += 1;
                r.bytes_differing += chunk_len(set, c);
                if r.differing_chunks.len() < REPORT_CHUNKS_MAX {
                    r.differing_chunks.push(c);
                }
            }
        }
        if let Some(r) = set.verify.lock().as_mut() {
            r.chunks_done = first + n;
        }
        first += n;
    }
    Ok(())
}

fn chunk_len(set: &ReplSet, c: u64) -> u64 {
    let cb = set.scoreboard.chunk_bytes();
    cb.min(set.size_bytes - c * cb)
}

/// Compare chunks `first..first + n` with the peer's copies: `true` where
/// the checksums are equal.
pub(super) fn compare_batch(
    set: &ReplSet,
    session: &mut Session,
    first: u64,
    n: u64,
) -> Result<Vec<bool>, String> {
    let cb = set.scoreboard.chunk_bytes();
    let offset = first * cb;
    let len = (n * cb).min(set.size_bytes - offset);
    let _hold = set
        .hold_chunks(first..first + n)
        .ok_or_else(|| format!("set {}: the link dropped", set.name))?;
    let mut buf = vec![0u8; len as usize];
    set.with_lower(|d| d.read(&mut buf, offset))
        .map_err(|e| format!("set {}: reading [{offset}, +{len}): {e}", set.name))?;
    let (_, data) = session.call(&PeerRequest::Checksums {
        set: set.name.clone(),
        offset,
        len,
        chunk_bytes: cb,
    })?;
    let theirs = data.ok_or("the peer sent no checksums")?;
    let mine = checksums(&buf, cb);
    if theirs.len() != mine.len() * 4 {
        return Err(format!(
            "the peer sent {} bytes of checksums for {} chunks",
            theirs.len(),
            mine.len()
        ));
    }
    Ok(mine
        .iter()
        .zip(theirs.chunks_exact(4))
        .map(|(m, t)| m.to_le_bytes() == t)
        .collect())
}

/// CRC32C of each `chunk_bytes` piece of `buf` (the last may be short).
pub fn checksums(buf: &[u8], chunk_bytes: u64) -> Vec<u32> {
    buf.chunks(chunk_bytes as usize)
        .map(crc32c::crc32c)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksums_cover_every_piece_and_notice_one_flipped_bit() {
        let mut b = vec![7u8; 3 * 4096 + 100];
        let a = super::checksums(&b, 4096);
        assert_eq!(a.len(), 4);
        b[2 * 4096 + 5] ^= 1;
        let c = super::checksums(&b, 4096);
        assert_eq!(a[0], c[0]);
        assert_ne!(a[2], c[2]);
    }
}
