//! A primary replication set: its layer in the local volume's stack (the
//! write path of every mode), its state, and the resync engine.
//!
//! Life of a replicated write (hybrid mode):
//! 1. count the write pending on its chunks and make their scoreboard bits
//!    durable (free when they already are);
//! 2. queue it on the group's link: sequence and group numbers are taken
//!    here, in send order;
//! 3. write it to the local volume;
//! 4. clear the group-in-progress flag (the next write opens a new group)
//!    and acknowledge the application;
//! 5. later the peer acknowledges the group and the chunks' counts drop.
//!
//! Sync mode waits for the peer's acknowledgement before step 4; async
//! gives every write its own group, so the peer applies them one by one.

use super::link::{Link, Waiter};
use super::scoreboard::Scoreboard;
use super::wire;
use super::{Mode, Notifier, Outdater, PeerLoss, SetState};
use crate::device::{check_range, BlockDevice, DeviceError, Result};
use crate::interposer::Service;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Name of a primary layer in a volume's stack: one per secondary (leg).
pub fn primary_layer(peer_node: &str) -> String {
    format!("repl:{peer_node}")
}

/// Most secondaries one set replicates to. Each is a layer of its own in
/// the volume's stack (eight layers at most, with room for imaging and a
/// cache) and a link of its own.
pub const MAX_SECONDARIES: usize = 4;

/// The legs of one primary set, one per secondary, bottom of the stack
/// first. They share the volume's generation: `current` and `history` are
/// the same in every leg's scoreboard, `agreed` is what that leg's peer
/// holds.
#[derive(Default)]
pub struct Legs {
    list: RwLock<Vec<Arc<ReplSet>>>,
    /// Serialises starting a new generation across legs.
    gen_lock: Mutex<()>,
}

impl Legs {
    pub fn all(&self) -> Vec<Arc<ReplSet>> {
        self.list.read().clone()
    }

    pub fn push(&self, s: Arc<ReplSet>) {
        self.list.write().push(s);
    }

    pub fn remove(&self, peer_node: &str) -> Option<Arc<ReplSet>> {
        let mut l = self.list.write();
        let i = l.iter().position(|s| s.peer_node == peer_node)?;
        Some(l.remove(i))
    }

    pub fn get(&self, peer_node: &str) -> Option<Arc<ReplSet>> {
        self.list
            .read()
            .iter()
            .find(|s| s.peer_node == peer_node)
            .cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.list.read().is_empty()
    }

    /// Whether chunk `c` is the same on every secondary as here: no leg
    /// has it out of sync, none has a write to it unacknowledged or in
    /// progress. Legs are looked at from the top of the stack down, the
    /// order a write passes them, so a write in progress is always seen
    /// in one of them.
    pub fn quiet(&self, c: u64) -> bool {
        self.list.read().iter().rev().all(|s| {
            s.inflight[c as usize].load(Ordering::SeqCst) == 0
                && s.scoreboard.pending(c) == 0
                && !s.scoreboard.is_oos(c)
        })
    }
}
/// How long a write without its peer waits for etcd to record the peer's
/// copy as outdated (sync mode in a cluster) before it fails: a TTL of the
/// default lease; a node cut from etcd is fenced well before.
const OUTDATE_WAIT: Duration = Duration::from_secs(10);

/// Largest piece one WRITE frame carries.
const PIECE_BYTES: u64 = 1 << 20;

#[derive(Default)]
pub struct SetStats {
    pub writes: AtomicU64,
    pub bytes: AtomicU64,
    pub sync_total_bytes: AtomicU64,
    pub sync_done_bytes: AtomicU64,
    pub synced_chunks_total: AtomicU64,
}

pub struct ReplSet {
    pub name: String,
    /// The secondary this leg replicates to.
    pub peer_node: String,
    pub id: u32,
    pub volume: String,
    pub remote_volume: String,
    pub size_bytes: u64,
    pub mode: Mode,
    pub policy: PeerLoss,
    pub autosync: bool,
    pub scoreboard: Scoreboard,
    state: AtomicU8,
    /// The link dropped (not a suspend): under `fail`, writes fail.
    peer_lost: AtomicBool,
    /// Suspended by `repl log`: no autosync until the next `repl sync`.
    pub suspended: AtomicBool,
    /// Writes fail with EIO: this node may no longer be production (its
    /// cluster lease could not be renewed, or another node holds the
    /// group's lock).
    pub fenced: AtomicBool,
    /// While fenced, writes wait for the fence to lift instead of failing
    /// (the group's `fence` policy); cleared to release them with EIO.
    pub fence_blocks: AtomicBool,
    link: Arc<Link>,
    lower: RwLock<Option<Arc<dyn BlockDevice>>>,
    /// Local writes in progress per chunk (a resync reads a chunk only
    /// when none is).
    inflight: Box<[std::sync::atomic::AtomicU32]>,
    /// Chunks a resync is reading right now; writers to them wait.
    busy: Mutex<HashSet<u64>>,
    busy_cv: Condvar,
    busy_any: AtomicUsize,
    pub stats: SetStats,
    pub last_error: Mutex<Option<String>>,
    /// The last (or running) online verify.
    pub verify: Mutex<Option<super::verify::VerifyReport>>,
    /// Resync bandwidth limit, bytes per second (0: none); changes apply
    /// to a running sync.
    pub sync_rate: AtomicU64,
    legs: std::sync::Weak<Legs>,
    notify: Option<Notifier>,
    /// The group this leg belongs to and the cluster's outdater (sync
    /// mode: see [`ReplSet::may_ack_without_peer`]).
    outdate: OnceLock<(String, Arc<OnceLock<Outdater>>)>,
    /// etcd knows this leg's peer is outdated (until the leg replicates
    /// again); one writer asks at a time.
    peer_outdated: AtomicBool,
    outdating: Mutex<()>,
}

/// Chunks held by [`ReplSet::hold_chunks`]: writers to them wait until
/// it is dropped.
pub struct ChunkHold<'a> {
    set: &'a ReplSet,
    chunks: std::ops::Range<u64>,
}

impl Drop for ChunkHold<'_> {
    fn drop(&mut self) {
        {
            let mut b = self.set.busy.lock();
            for c in self.chunks.clone() {
                b.remove(&c);
            }
        }
        self.set.busy_any.fetch_sub(1, Ordering::SeqCst);
        self.set.busy_cv.notify_all();
    }
}

impl ReplSet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        peer_node: &str,
        legs: &Arc<Legs>,
        id: u32,
        volume: &str,
        remote_volume: &str,
        size_bytes: u64,
        mode: Mode,
        policy: PeerLoss,
        autosync: bool,
        scoreboard: Scoreboard,
        link: Arc<Link>,
        state: SetState,
        notify: Option<Notifier>,
    ) -> ReplSet {
        let chunks = scoreboard.chunks();
        ReplSet {
            name: name.to_owned(),
            peer_node: peer_node.to_owned(),
            id,
            volume: volume.to_owned(),
            remote_volume: remote_volume.to_owned(),
            size_bytes,
            mode,
            policy,
            autosync,
            scoreboard,
            state: AtomicU8::new(state as u8),
            peer_lost: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            fence_blocks: AtomicBool::new(false),
            link,
            lower: RwLock::new(None),
            inflight: (0..chunks)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            busy: Mutex::new(HashSet::new()),
            busy_cv: Condvar::new(),
            busy_any: AtomicUsize::new(0),
            stats: SetStats::default(),
            last_error: Mutex::new(None),
            verify: Mutex::new(None),
            sync_rate: AtomicU64::new(0),
            legs: Arc::downgrade(legs),
            notify,
            outdate: OnceLock::new(),
            peer_outdated: AtomicBool::new(false),
            outdating: Mutex::new(()),
        }
    }

    /// Which group this leg is part of and whom to ask before a write is
    /// acknowledged without the peer (set once, after construction).
    pub fn set_outdater(&self, group: &str, o: Arc<OnceLock<Outdater>>) {
        let _ = self.outdate.set((group.to_owned(), o));
    }

    /// Sync mode in a cluster: before a write is acknowledged without this
    /// leg's peer, etcd records the peer's copy as outdated, in one
    /// transaction that holds only while this node still holds the
    /// group's lock (DRBD's fence-peer). So a secondary that lacks
    /// acknowledged writes never takes the group over, and a node that
    /// lost the lock never acknowledges alone. The first such write asks;
    /// the answer holds until the leg replicates again. False (the write
    /// fails with EIO, never acknowledged): etcd did not confirm before
    /// this node was fenced, or within [`OUTDATE_WAIT`].
    fn may_ack_without_peer(&self) -> bool {
        if self.mode != Mode::Sync || self.peer_outdated.load(Ordering::SeqCst) {
            return true;
        }
        let Some(ask) = self.outdate.get().and_then(|(g, o)| Some((g, o.get()?))) else {
            return true; // no cluster agent on this node
        };
        let _one = self.outdating.lock();
        let deadline = std::time::Instant::now() + OUTDATE_WAIT;
        loop {
            if self.peer_outdated.load(Ordering::SeqCst) {
                return true;
            }
            match (ask.1)(ask.0, &self.peer_node) {
                None => return true, // not in a cluster
                Some(Ok(())) => {
                    self.peer_outdated.store(true, Ordering::SeqCst);
                    self.notify(
                        "repl.peer_outdated",
                        crate::services::Note::new(format!(
                            "etcd records {}'s copy as outdated: it is no candidate until it is in sync again",
                            self.peer_node
                        ))
                        .field("peer", &self.peer_node),
                    );
                    return true;
                }
                Some(Err(e)) => {
                    let fenced = self.fenced.load(Ordering::SeqCst)
                        && !self.fence_blocks.load(Ordering::SeqCst);
                    if fenced || std::time::Instant::now() >= deadline {
                        *self.last_error.lock() = Some(format!(
                            "a write without {} was refused: etcd did not record its copy as outdated ({e})",
                            self.peer_node
                        ));
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// An event about this set, on the daemon's bus.
    fn notify(&self, kind: &str, note: impl Into<crate::services::Note>) {
        if let Some(n) = &self.notify {
            n(kind, &self.name, note.into());
        }
    }

    fn unconfirmed_error(&self) -> DeviceError {
        DeviceError::io(
            0,
            std::io::Error::other(format!(
                "replication set {}: peer {} lost and etcd could not record its copy as outdated",
                self.name, self.peer_node
            )),
        )
    }

    /// The other legs of this set (every secondary but this one's).
    pub fn siblings(&self) -> Vec<Arc<ReplSet>> {
        self.legs
            .upgrade()
            .map(|l| l.all())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.peer_node != self.peer_node)
            .collect()
    }

    /// All legs of this set, this one included.
    pub fn legs(&self) -> Option<Arc<Legs>> {
        self.legs.upgrade()
    }

    /// Writing without this leg's peer: the first such write starts a new
    /// generation for the volume, durable in every leg's scoreboard before
    /// the data changes (the other legs keep what their peers agreed).
    pub(super) fn diverge(&self) -> Result<()> {
        if self.scoreboard.is_diverged() {
            return Ok(());
        }
        let legs = self.legs.upgrade();
        let _g = legs.as_ref().map(|l| l.gen_lock.lock());
        if let Some(new) = self.scoreboard.ensure_diverged()? {
            for s in self.siblings() {
                s.scoreboard
                    .update_generations(|g| {
                        g.current = new.current;
                        g.history = new.history.clone();
                    })
                    .map_err(|reason| DeviceError::Failed { reason })?;
            }
        }
        Ok(())
    }

    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    pub fn state(&self) -> SetState {
        SetState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Move to state `s` if the transition table allows it (see
    /// `state.rs`); publishes `repl.<state>` on a change. Returns whether
    /// the set is in `s` now.
    pub fn set_state(&self, s: SetState, why: &str) -> bool {
        let mut cur = self.state.load(Ordering::SeqCst);
        loop {
            let from = SetState::from_u8(cur);
            if from == s {
                return true;
            }
            if !from.can_become(s) {
                log::warn!(
                    "replication set {}: {} -> {} refused by the state table ({why})",
                    self.name,
                    from.as_str(),
                    s.as_str()
                );
                return false;
            }
            match self
                .state
                .compare_exchange(cur, s as u8, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(v) => cur = v,
            }
        }
        if s == SetState::Replicating {
            // In sync again: the next loss asks etcd again.
            self.peer_outdated.store(false, Ordering::SeqCst);
        }
        log::info!(
            "replication set {}: {} -> {} ({why})",
            self.name,
            SetState::from_u8(cur).as_str(),
            s.as_str()
        );
        if let Some(n) = &self.notify {
            n(
                &format!("repl.{}", s.as_str().replace(' ', "_")),
                &self.name,
                crate::services::Note::new(why)
                    .field("from", SetState::from_u8(cur).as_str())
                    .field("state", s.as_str()),
            );
        }
        true
    }

    pub fn peer_lost(&self) -> bool {
        self.peer_lost.load(Ordering::SeqCst)
    }

    pub fn set_peer_lost(&self, v: bool) {
        self.peer_lost.store(v, Ordering::SeqCst);
    }

    /// The group's link dropped.
    pub fn link_lost(&self, reason: &str) {
        *self.last_error.lock() = Some(reason.to_owned());
        let next = match self.state() {
            SetState::Replicating => SetState::Logging,
            // A sync that stops halfway leaves the peer inconsistent.
            SetState::Syncing => SetState::NeedSync,
            _ => return,
        };
        if !self.suspended.load(Ordering::SeqCst) {
            self.peer_lost.store(true, Ordering::SeqCst);
        }
        self.set_state(next, reason);
    }

    fn replicating(&self) -> bool {
        matches!(self.state(), SetState::Replicating | SetState::Syncing)
    }

    pub fn with_lower<T>(&self, f: impl FnOnce(&dyn BlockDevice) -> Result<T>) -> Result<T> {
        let g = self.lower.read_recursive();
        match g.as_ref() {
            Some(d) => f(d.as_ref()),
            None => Err(DeviceError::Failed {
                reason: format!("replication set {} has no layer", self.name),
            }),
        }
    }

    /// Count a write pending on its chunks, waiting while a resync holds
    /// any of them, then make the scoreboard bits durable.
    fn enter(&self, offset: u64, len: u64) -> Result<()> {
        let chunks = self.scoreboard.chunk_range(offset, len);
        loop {
            self.scoreboard.count(chunks.clone());
            self.count_inflight(chunks.clone(), true);
            if self.busy_any.load(Ordering::SeqCst) == 0 {
                break;
            }
            let mut b = self.busy.lock();
            if !chunks.clone().any(|c| b.contains(&c)) {
                break;
            }
            self.scoreboard.uncount(chunks.clone());
            self.count_inflight(chunks.clone(), false);
            self.busy_cv.wait_for(&mut b, Duration::from_millis(50));
        }
        self.scoreboard
            .make_durable(chunks.clone())
            .inspect_err(|_| {
                self.scoreboard.uncount(chunks.clone());
                self.count_inflight(chunks, false);
            })
    }

    fn count_inflight(&self, chunks: std::ops::Range<u64>, up: bool) {
        for c in chunks {
            if up {
                self.inflight[c as usize].fetch_add(1, Ordering::SeqCst);
            } else {
                self.inflight[c as usize].fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn peer_lost_error(&self) -> DeviceError {
        DeviceError::io(
            0,
            std::io::Error::other(format!(
                "replication set {}: peer lost and the policy is fail",
                self.name
            )),
        )
    }

    /// The common write path. `data` is `None` for zeroes (discard and
    /// write-zeroes are replicated as zeroes, so both sides read alike).
    fn replicated(
        self: &Arc<Self>,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        fua: bool,
        local: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        if self.state() == SetState::Failed {
            return Err(DeviceError::Failed {
                reason: format!("replication set {} failed", self.name),
            });
        }
        if self.fenced.load(Ordering::Relaxed) && !self.wait_unfenced() {
            return Err(self.fenced_error());
        }
        self.enter(offset, len)?;
        let chunks = self.scoreboard.chunk_range(offset, len);
        if !self.replicating() {
            if self.peer_lost() && self.policy == PeerLoss::Fail {
                self.scoreboard.end(offset, len, true);
                self.count_inflight(chunks, false);
                return Err(self.peer_lost_error());
            }
            if !self.may_ack_without_peer() {
                self.scoreboard.end(offset, len, true);
                self.count_inflight(chunks, false);
                return Err(self.unconfirmed_error());
            }
            // Writing without the peer: the first such write starts a new
            // generation (generation.rs), durable before the data changes.
            if let Err(e) = self.diverge() {
                self.scoreboard.end(offset, len, true);
                self.count_inflight(chunks, false);
                return Err(e);
            }
            // Out of sync before the data changes: a resync that starts
            // meanwhile waits for this write and then copies what it
            // wrote (the scoreboard's map knows which 4 KiB parts).
            self.scoreboard.mark_written(offset, len);
            let r = local();
            self.scoreboard.end(offset, len, true);
            self.count_inflight(chunks, false);
            return r;
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(len, Ordering::Relaxed);
        let mut flags = if fua { wire::WRITE_FUA } else { 0 };
        if data.is_none() {
            flags |= wire::WRITE_ZEROES;
        }
        // Queue every piece; the scoreboard counts end per piece.
        let mut waiters = Vec::new();
        let mut queued = 0u64;
        let mut failed = false;
        while queued < len {
            let n = (len - queued).min(PIECE_BYTES);
            let piece = data.map(|d| Arc::new(d[queued as usize..(queued + n) as usize].to_vec()));
            let w = (self.mode == Mode::Sync).then(|| Arc::new(Waiter::default()));
            if queued > 0 {
                self.scoreboard
                    .count(self.scoreboard.chunk_range(offset + queued, n));
            }
            match self.link.enqueue(
                self,
                offset + queued,
                n as u32,
                flags,
                piece,
                w.clone(),
                false,
            ) {
                Ok(_) => waiters.extend(w),
                Err(_) => {
                    self.scoreboard.end(offset + queued, n, false);
                    failed = true;
                }
            }
            queued += n;
        }
        // The first piece counted the whole range in `enter`; balance the
        // chunks the pieces after it re-counted... each piece ends its own
        // range, so undo the part of the first count beyond piece one.
        if len > PIECE_BYTES {
            let first = self.scoreboard.chunk_range(offset, PIECE_BYTES);
            let all = self.scoreboard.chunk_range(offset, len);
            self.scoreboard.uncount(first.end.min(all.end)..all.end);
        }
        if failed && self.policy == PeerLoss::Fail && self.mode == Mode::Sync {
            self.count_inflight(chunks, false);
            return Err(self.peer_lost_error());
        }
        let r = local();
        self.count_inflight(chunks.clone(), false);
        if r.is_err() {
            for c in self.scoreboard.chunk_range(offset, len) {
                self.scoreboard.set_oos(c);
            }
        }
        self.link.local_complete();
        let mut all_acked = true;
        for w in &waiters {
            all_acked &= self.link.wait(w);
        }
        if !all_acked && self.policy == PeerLoss::Fail {
            return Err(self.peer_lost_error());
        }
        if (!all_acked || failed) && r.is_ok() && !self.may_ack_without_peer() {
            return Err(self.unconfirmed_error());
        }
        r
    }

    /// A fenced write under the `block` policy waits here until the fence
    /// lifts (true: go on) or is turned into EIO (false: a step-down or a
    /// swap releases the waiters so its quiesce can drain).
    fn wait_unfenced(&self) -> bool {
        while self.fence_blocks.load(Ordering::SeqCst) {
            if !self.fenced.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        !self.fenced.load(Ordering::SeqCst)
    }

    /// Fence the leg for good (a role change): waiting writes fail now.
    pub fn fence_release(&self) {
        self.fence_blocks.store(false, Ordering::SeqCst);
        self.fenced.store(true, Ordering::SeqCst);
    }

    fn fenced_error(&self) -> DeviceError {
        DeviceError::io(
            0,
            std::io::Error::other(format!(
                "replication set {}: fenced: this node may no longer be production (cluster lease lost or another node holds the group)",
                self.name
            )),
        )
    }

    /// A fenced set still flushes: a flush acknowledges no new data, and
    /// the stack's own changes (a layer leaving) flush through it.
    fn replicated_flush(self: &Arc<Self>, local: impl FnOnce() -> Result<()>) -> Result<()> {
        local()?;
        if !self.replicating() {
            if self.peer_lost() && self.policy == PeerLoss::Fail {
                return Err(self.peer_lost_error());
            }
            return Ok(());
        }
        let w = (self.mode == Mode::Sync).then(|| Arc::new(Waiter::default()));
        let ok = match self
            .link
            .enqueue(self, 0, 0, wire::WRITE_FLUSH, None, w.clone(), false)
        {
            Ok(_) => w.map(|w| self.link.wait(&w)).unwrap_or(true),
            Err(_) => false,
        };
        if !ok && self.policy == PeerLoss::Fail {
            return Err(self.peer_lost_error());
        }
        if !ok && !self.may_ack_without_peer() {
            return Err(self.unconfirmed_error());
        }
        Ok(())
    }

    /// Hold `chunks` still for a comparison with the peer: new writes to
    /// them wait, and this returns once every earlier write to them is
    /// both done locally and acknowledged by the peer (so both sides hold
    /// the same writes; an acknowledgement can arrive before the local
    /// write completes, and a local write before its acknowledgement), or
    /// `None` when the link is not up.
    pub fn hold_chunks(&self, chunks: std::ops::Range<u64>) -> Option<ChunkHold<'_>> {
        self.busy_any.fetch_add(1, Ordering::SeqCst);
        {
            let mut b = self.busy.lock();
            b.extend(chunks.clone());
        }
        let hold = ChunkHold { set: self, chunks };
        while hold.chunks.clone().any(|c| {
            self.scoreboard.pending(c) > 0 || self.inflight[c as usize].load(Ordering::SeqCst) > 0
        }) {
            if !self.link.is_up() {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Some(hold)
    }

    // ----- resync ---------------------------------------------------------

    /// Copy every out-of-sync chunk to the peer over the link, while new
    /// writes keep replicating. Returns the bytes sent. Stops (with an
    /// error) when the set leaves `Syncing` or the link drops.
    pub fn resync(self: &Arc<Self>) -> std::result::Result<u64, String> {
        self.busy_any.fetch_add(1, Ordering::SeqCst);
        let r = self.resync_passes();
        self.busy_any.fetch_sub(1, Ordering::SeqCst);
        self.busy_cv.notify_all();
        r
    }

    fn resync_passes(self: &Arc<Self>) -> std::result::Result<u64, String> {
        let chunk = self.scoreboard.chunk_bytes();
        let mut sent = 0u64;
        let mut pace = Pacer::default();
        loop {
            let mut any = false;
            let mut c = 0;
            while let Some(b) = self.scoreboard.next_oos(c) {
                c = b + 1;
                any = true;
                if self.state() != SetState::Syncing {
                    return Err(format!("set {} left syncing", self.name));
                }
                let off = b * chunk;
                let len = chunk.min(self.size_bytes - off);
                self.busy.lock().insert(b);
                let r = self.sync_chunk(b, len);
                self.busy.lock().remove(&b);
                self.busy_cv.notify_all();
                let n = r?;
                sent += n;
                pace.after(n, self.sync_rate.load(Ordering::Relaxed));
            }
            if !any {
                return Ok(sent);
            }
        }
    }

    /// Resync chunk `c` (`len` bytes long): send what changed in it.
    fn sync_chunk(self: &Arc<Self>, c: u64, len: u64) -> std::result::Result<u64, String> {
        // Wait until no local write to this chunk is in progress (new ones
        // wait for us): what we read is then at least as new as every
        // write queued before us. The peer applies our copy after them:
        // in async mode writes apply one by one, in hybrid mode our copy
        // gets a group of its own. In sync mode the peer applies writes
        // concurrently, so there we wait until they are acknowledged.
        let busy = |s: &Self| {
            if s.mode == Mode::Sync {
                s.scoreboard.pending(c) > 0
            } else {
                s.inflight[c as usize].load(Ordering::SeqCst) > 0
            }
        };
        while busy(self) {
            if !self.link.is_up() || self.state() != SetState::Syncing {
                return Err(format!("set {}: link dropped during the sync", self.name));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let Some(parts) = self.scoreboard.take_parts(c) else {
            return Ok(0);
        };
        // Only the parts written while out of sync (all of it when the
        // scoreboard cannot say, e.g. after a restart).
        let mut sent = 0;
        for (run_off, run_len) in self.scoreboard.runs_of(c, parts) {
            match self.sync_run(run_off, run_len) {
                Ok(n) => sent += n,
                Err(e) => {
                    self.scoreboard.set_oos(c);
                    return Err(format!("set {}: chunk {c}: {e}", self.name));
                }
            }
        }
        self.stats.sync_done_bytes.fetch_add(len, Ordering::Relaxed);
        self.stats
            .synced_chunks_total
            .fetch_add(1, Ordering::Relaxed);
        Ok(sent)
    }

    /// Send `[off, off + len)` of the local copy to the peer; returns the
    /// data bytes sent. Sparse data stays sparse: a hole here, or a run
    /// that reads as zeroes, goes as a zeroing (no data bytes; the peer's
    /// file backend punches it).
    fn sync_run(self: &Arc<Self>, off: u64, len: u64) -> std::result::Result<u64, String> {
        // A short run is read rather than asked about; one that reads as
        // zeroes still goes as a zeroing.
        let hole = len >= crate::device::HOLE_QUERY_MIN_BYTES
            && self
                .with_lower(|d| d.allocation(off, len))
                .is_ok_and(|runs| runs.len() == 1 && runs[0].hole && runs[0].len == len);
        let data = if hole {
            None
        } else {
            let mut buf = vec![0u8; len as usize];
            self.with_lower(|d| d.read(&mut buf, off))
                .map_err(|e| format!("reading: {e}"))?;
            (!buf.iter().all(|&b| b == 0)).then(|| Arc::new(buf))
        };
        let (flags, sent) = match &data {
            Some(_) => (0, len),
            None => (wire::WRITE_ZEROES, 0),
        };
        self.scoreboard.count(self.scoreboard.chunk_range(off, len));
        if let Err(e) = self
            .link
            .enqueue(self, off, len as u32, flags, data, None, true)
        {
            self.scoreboard.end(off, len, false);
            return Err(e.0);
        }
        Ok(sent)
    }
}

/// Keeps a resync at its rate limit (`--sync-rate`): after each chunk it
/// sleeps for as long as the bytes sent since the rate was last set are
/// ahead of it. A changed rate starts a new window, so `repl tune` takes
/// effect at the next chunk.
#[derive(Default)]
pub(super) struct Pacer {
    since: Option<std::time::Instant>,
    rate: u64,
    bytes: u64,
}

impl Pacer {
    pub(super) fn after(&mut self, bytes: u64, rate: u64) {
        if rate != self.rate || self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            self.rate = rate;
            self.bytes = 0;
        }
        self.bytes += bytes;
        if rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.since.expect("set above").elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// The primary layer: one per secondary of a replicated volume.
pub struct PrimaryLayer {
    set: Arc<ReplSet>,
    name: String,
    /// Serialises the read-modify-writes of partial sectors (rare: the
    /// exports speak whole sectors) across rebuilds of the stack.
    rmw: Arc<Mutex<()>>,
}

impl PrimaryLayer {
    pub fn new(set: Arc<ReplSet>) -> Self {
        let name = primary_layer(&set.peer_node);
        PrimaryLayer {
            set,
            name,
            rmw: Arc::default(),
        }
    }
}

impl Service for PrimaryLayer {
    fn name(&self) -> &str {
        &self.name
    }

    fn tier(&self) -> crate::interposer::Tier {
        crate::interposer::Tier::Replication
    }

    fn stack_on(
        &self,
        lower: Arc<dyn BlockDevice>,
    ) -> std::result::Result<Arc<dyn BlockDevice>, String> {
        *self.set.lower.write() = Some(lower.clone());
        Ok(Arc::new(PrimaryDevice {
            lower,
            set: self.set.clone(),
            rmw: self.rmw.clone(),
        }))
    }

    fn sync_metadata(&self) -> Result<()> {
        self.set.scoreboard.clean()
    }
}

struct PrimaryDevice {
    lower: Arc<dyn BlockDevice>,
    set: Arc<ReplSet>,
    rmw: Arc<Mutex<()>>,
}

/// The replication wire carries whole sectors (a secondary refuses less).
const SECTOR: u64 = 512;

impl PrimaryDevice {
    /// Write `buf` at `offset` as the whole sectors it touches: read the
    /// partial first and last sectors, lay `buf` over them, and replicate
    /// that, locally and to the peers alike. A concurrent write into the
    /// same partial sector that is not itself partial is not serialised
    /// with it (as with any read-modify-write; block devices promise no
    /// order between overlapping writes in flight).
    fn write_whole_sectors(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        let end = offset + buf.len() as u64;
        let (start, whole_end) = (offset / SECTOR * SECTOR, end.div_ceil(SECTOR) * SECTOR);
        let _g = self.rmw.lock();
        let mut whole = vec![0u8; (whole_end - start) as usize];
        let sector = SECTOR as usize;
        if offset != start {
            self.lower.read(&mut whole[..sector], start)?;
        }
        if end != whole_end {
            let at = whole.len() - sector;
            self.lower.read(&mut whole[at..], whole_end - SECTOR)?;
        }
        whole[(offset - start) as usize..][..buf.len()].copy_from_slice(buf);
        self.set
            .replicated(start, whole.len() as u64, Some(&whole), fua, || {
                self.lower.write(&whole, start, fua)
            })
    }

    /// Zero (discard or write-zeroes) `[offset, offset + len)`: the whole
    /// sectors inside by `whole`, the partial ones at either end as writes
    /// of zeroes.
    fn zero_whole_sectors(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        whole: impl Fn(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let end = offset + len;
        let (a, b) = (offset.div_ceil(SECTOR) * SECTOR, end / SECTOR * SECTOR);
        if a >= b {
            return self.write_whole_sectors(&vec![0; len as usize], offset, fua);
        }
        if offset < a {
            self.write_whole_sectors(&vec![0; (a - offset) as usize], offset, fua)?;
        }
        whole(a, b - a)?;
        if b < end {
            self.write_whole_sectors(&vec![0; (end - b) as usize], b, fua)?;
        }
        Ok(())
    }
}

fn sector_aligned(offset: u64, len: u64) -> bool {
    offset % SECTOR == 0 && len % SECTOR == 0
}

impl BlockDevice for PrimaryDevice {
    fn size_bytes(&self) -> u64 {
        self.lower.size_bytes()
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.lower.read(buf, offset)
    }

    /// Reads are the lower device's, and so is its allocation.
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<crate::device::Extent>> {
        self.lower.allocation(offset, len)
    }

    /// Reads are the lower's, so a copy may share its extents; writes
    /// never clone through here (the peers must get the data).
    fn clone_source(&self) -> Option<&std::fs::File> {
        self.lower.clone_source()
    }

    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size_bytes())?;
        if buf.is_empty() {
            return Ok(());
        }
        if !sector_aligned(offset, buf.len() as u64) {
            return self.write_whole_sectors(buf, offset, fua);
        }
        self.set
            .replicated(offset, buf.len() as u64, Some(buf), fua, || {
                self.lower.write(buf, offset, fua)
            })
    }

    fn flush(&self) -> Result<()> {
        self.set.replicated_flush(|| self.lower.flush())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size_bytes())?;
        if len == 0 {
            return Ok(());
        }
        let whole = |offset, len| {
            self.set
                .replicated(offset, len, None, false, || self.lower.discard(offset, len))
        };
        if !sector_aligned(offset, len) {
            return self.zero_whole_sectors(offset, len, false, whole);
        }
        whole(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        check_range(offset, len, self.size_bytes())?;
        if len == 0 {
            return Ok(());
        }
        let whole = |offset, len| {
            self.set.replicated(offset, len, None, fua, || {
                self.lower.write_zeroes(offset, len, fua)
            })
        };
        if !sector_aligned(offset, len) {
            return self.zero_whole_sectors(offset, len, fua, whole);
        }
        whole(offset, len)
    }

    fn block_size_bytes(&self) -> u32 {
        self.lower.block_size_bytes()
    }

    /// Sync mode waits for the peer, and a cold chunk for a scoreboard
    /// commit; an async or hybrid write to a hot chunk only queues (a full
    /// queue blocks the caller, which is the back-pressure we want).
    fn write_may_block(&self, offset: u64, len: u64) -> bool {
        if check_range(offset, len, self.size_bytes()).is_err() {
            return false; // refused at once with EINVAL
        }
        self.set.mode == Mode::Sync
            || !self.set.scoreboard.is_durable(offset, len.max(1))
            || self.lower.write_may_block(offset, len)
    }

    fn latency_class(&self) -> crate::device::LatencyClass {
        if self.set.mode == Mode::Sync {
            crate::device::LatencyClass::Blocking
        } else {
            self.lower.latency_class()
        }
    }
}
