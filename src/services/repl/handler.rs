//! This node's answers to its peers: the control requests of
//! `requests.rs`, and data links handed to the ordered applier.

use super::config::{Member, ReplRole, ReplSetConfig};
use super::error::{RResult, ReplError};
use super::generation::{relation, Generations, Relation};
use super::peer::{self, PeerHandler};
use super::requests::{
    CompareReply, LinkSet, MarkReply, PeerRequest, PrimaryInfo, SetGenerations, MAX_CHECKSUM_BYTES,
    MAX_READ_BYTES, MAX_SET_ID,
};
use super::runtime::{link_key, Replication, SecondaryEntry};
use super::secondary::{serve_link_parking, SecondarySet, SECONDARY_LAYER};
use super::{
    Mode, PeerLoss, QueueFull, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_ITEMS, DEFAULT_TIMEOUT_MS,
};
use crate::control::validate_name;
use crate::device::BlockDevice;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The safety snapshot's bitmap bound: at most this many chunks (4 Mi
/// chunks, a 512 KiB dependent bitmap, loaded and scanned whole).
const SAFETY_MAX_CHUNKS: u64 = 4 << 20;

/// The safety snapshot's chunk. A resync writes the blocks that differ,
/// typically scattered 4 KiB runs; each first touch copies a whole chunk,
/// so the imaging default (32 KiB, sized for backups of a busy master)
/// made the secondary copy 8 bytes per byte it received. So: the 4 KiB
/// block up to 16 GiB, then the smallest power of two that keeps the
/// bitmap within [`SAFETY_MAX_CHUNKS`], within the imaging limits.
fn safety_chunk_bytes(volume_bytes: u64) -> u32 {
    use crate::services::image::{MAX_CHUNK_BYTES, MIN_CHUNK_BYTES};
    let need = volume_bytes.div_ceil(SAFETY_MAX_CHUNKS).next_power_of_two();
    need.clamp(MIN_CHUNK_BYTES as u64, MAX_CHUNK_BYTES as u64) as u32
}

/// Answers peers on behalf of the service.
pub(super) struct Handler(pub Weak<Replication>);

impl PeerHandler for Handler {
    fn control(&self, peer: &str, req: PeerRequest) -> Result<(Value, Option<Vec<u8>>), String> {
        let r = self.0.upgrade().ok_or("the daemon is stopping")?;
        if r.stopping() {
            return Err("the daemon is stopping".into());
        }
        r.answer(peer, req).map_err(|e| e.to_string())
    }

    fn link(&self, peer: &str, group: String, mode: Mode, sets: Vec<LinkSet>, stream: TcpStream) {
        if let Some(r) = self.0.upgrade() {
            r.serve_peer_link(peer, group, mode, sets, stream);
        }
    }
}

type Answer = RResult<(Value, Option<Vec<u8>>)>;

fn empty() -> Answer {
    Ok((json!({}), None))
}

impl Replication {
    fn answer(&self, peer: &str, req: PeerRequest) -> Answer {
        match req {
            PeerRequest::Create {
                set,
                volume,
                size_bytes,
                mode,
                group,
                primary,
                primary_volume,
                timeout_ms,
                generation,
            } => {
                let c = ReplSetConfig {
                    name: set,
                    role: ReplRole::Secondary,
                    volume,
                    remote_volume: primary_volume,
                    peer: primary,
                    peer_node: peer.to_owned(),
                    mode,
                    group,
                    on_peer_loss: PeerLoss::Log,
                    autosync: true,
                    suspended: false,
                    scoreboard: None,
                    timeout_ms: timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
                    queue_bytes: DEFAULT_QUEUE_BYTES,
                    queue_items: DEFAULT_QUEUE_ITEMS,
                    on_queue_full: QueueFull::Block,
                    safety_snapshot: None,
                    split_brain: false,
                    members: Vec::new(),
                    max_lag_bytes: None,
                    max_lag_ms: None,
                    sync_rate: None,
                };
                self.create_secondary(peer, c, size_bytes, generation)
                    .map(|v| (v, None))
            }
            PeerRequest::Disable { set } => {
                let _r = self.reserve(std::slice::from_ref(&set))?;
                let c = self.set_config(&set)?;
                if c.role != ReplRole::Secondary {
                    return Err(ReplError::Invalid(format!(
                        "set {set} is not a secondary on node {}",
                        self.ctx.name()
                    )));
                }
                self.forget(&c)?;
                self.publish(
                    "repl.disabled",
                    &set,
                    crate::services::Note::new(format!("by primary {peer}"))
                        .field("role", "secondary")
                        .field("peers", [&peer]),
                );
                empty()
            }
            PeerRequest::Compare { sets } => self.compare(peer, sets),
            PeerRequest::SyncBegin {
                set,
                generations,
                primary,
                members,
            } => {
                let _r = self.reserve(std::slice::from_ref(&set))?;
                let e = self.secondary(&set)?;
                let mine = e.scoreboard.generations();
                let rel = relation(&mine, &generations);
                match rel {
                    Relation::Same | Relation::WeAreOlder => {}
                    r => {
                        return Err(ReplError::SplitBrain(format!(
                            "set {set}: this secondary's data is not an ancestor of the primary's ({r:?}); not syncing onto it"
                        )))
                    }
                }
                self.follow(peer, &set, primary, members, rel == Relation::WeAreOlder)?;
                let snap = self.take_safety(&e)?;
                // What this side holds that the primary may not: its own
                // writes as a former primary, and what it received that
                // another member may lack.
                let bits = (e.scoreboard.oos_chunks() > 0).then(|| e.scoreboard.oos_words());
                Ok((json!({"safety_snapshot": snap}), bits))
            }
            PeerRequest::SyncEnd { set, generations } => {
                let e = self.secondary(&set)?;
                self.check_from_primary(peer, &set)?;
                // The bits stay: they are cleared by release rounds, once
                // every member holds those chunks.
                e.scoreboard
                    .update_generations(|g| g.adopt(&generations))
                    .map_err(ReplError::Failed)?;
                let mut snap = None;
                self.commit(
                    |rc| {
                        if let Some(c) = rc.sets.iter_mut().find(|c| c.name == set) {
                            snap = c.safety_snapshot.take();
                        }
                        Ok(())
                    },
                    || {},
                )?;
                if let Some(snap) = snap {
                    // Kept when this fails; the next sync's snapshot
                    // replaces it.
                    if let Err(e) = self.host()?.snapshot_drop(&snap) {
                        log::warn!("replication set {set}: dropping {snap}: {e}");
                    }
                    self.publish(
                        "repl.safety_dropped",
                        &set,
                        crate::services::Note::new(snap.clone()).field("snapshot", snap),
                    );
                }
                empty()
            }
            // A secondary changes nothing on its own; a former primary
            // that stepped down hands over the chunks it wrote that its
            // peer may lack.
            PeerRequest::Bitmap { set } => {
                let e = self.secondary(&set)?;
                let bits = (e.scoreboard.oos_chunks() > 0).then(|| e.scoreboard.oos_words());
                Ok((json!({}), bits))
            }
            PeerRequest::BitmapClear { sets } => {
                for set in sets {
                    self.secondary(&set)?
                        .scoreboard
                        .clear_all()
                        .map_err(ReplError::Failed)?;
                }
                empty()
            }
            PeerRequest::Read { set, offset, len } => {
                let buf = self.read_secondary(&set, offset, len, MAX_READ_BYTES)?;
                Ok((json!({}), Some(buf)))
            }
            PeerRequest::Checksums {
                set,
                offset,
                len,
                chunk_bytes,
            } => {
                if !(4096..=(1 << 20)).contains(&chunk_bytes) {
                    return Err(ReplError::Invalid(format!(
                        "checksums of set {set} in pieces of {chunk_bytes} bytes: use 4 KiB to 1 MiB"
                    )));
                }
                let buf = self.read_secondary(&set, offset, len, MAX_CHECKSUM_BYTES)?;
                let sums: Vec<u8> = super::verify::checksums(&buf, chunk_bytes)
                    .into_iter()
                    .flat_map(|c| c.to_le_bytes())
                    .collect();
                Ok((json!({}), Some(sums)))
            }
            PeerRequest::Swap {
                sets,
                primary,
                members,
            } => {
                let gens = self.accept_swap(peer, &sets, &primary, &members)?;
                Ok((json!({ "generations": gens }), None))
            }
            PeerRequest::Members { set, members } => {
                self.check_from_primary(peer, &set)?;
                self.edit_leg(&set, peer, |c| c.members = members.clone())?;
                empty()
            }
            PeerRequest::Adopt { set, generations } => {
                let e = self.secondary(&set)?;
                self.check_from_primary(peer, &set)?;
                match relation(&e.scoreboard.generations(), &generations) {
                    Relation::Same | Relation::WeAreOlder => e
                        .scoreboard
                        .update_generations(|g| g.adopt(&generations))
                        .map_err(ReplError::Failed)?,
                    r => {
                        return Err(ReplError::SplitBrain(format!(
                            "set {set}: not adopting generation {:x}: this side's data is not its ancestor ({r:?})",
                            generations.current
                        )))
                    }
                }
                empty()
            }
            PeerRequest::Mark {
                set,
                lag_bytes,
                lag_ms,
            } => {
                let e = self.secondary(&set)?;
                self.check_from_primary(peer, &set)?;
                e.set.primary_lag_bytes.store(lag_bytes, Ordering::Relaxed);
                e.set.primary_lag_ms.store(lag_ms, Ordering::Relaxed);
                e.set.contact();
                let reply = MarkReply {
                    session: e.set.session,
                    epoch: e.set.mark(),
                };
                let bits = (e.scoreboard.oos_chunks() > 0).then(|| e.scoreboard.oos_words());
                Ok((serde_json::to_value(reply).expect("serialisable"), bits))
            }
            PeerRequest::Release {
                set,
                session,
                epoch,
                runs,
            } => {
                let e = self.secondary(&set)?;
                self.check_from_primary(peer, &set)?;
                if runs.len() > e.scoreboard.chunks() as usize {
                    return Err(ReplError::Invalid(format!(
                        "release of set {set}: {} runs for {} chunks",
                        runs.len(),
                        e.scoreboard.chunks()
                    )));
                }
                let n = e
                    .set
                    .release(session, epoch, &runs)
                    .map_err(|e| ReplError::Failed(e.to_string()))?;
                Ok((json!({"released": n}), None))
            }
            PeerRequest::Discard { set } => {
                let c = self.set_config(&set)?;
                let names: Vec<String> = self
                    .config()?
                    .sets
                    .into_iter()
                    .filter(|x| link_key(x) == link_key(&c))
                    .map(|x| x.name)
                    .collect();
                self.discard_here(&names, peer)?;
                self.publish(
                    "repl.resolved",
                    &set,
                    crate::services::Note::new(format!(
                        "this side's data was discarded (asked by {peer})"
                    ))
                    .field("discarded", "here")
                    .field("by", peer),
                );
                empty()
            }
            PeerRequest::Resume { set } => {
                self.resume(&[set], peer)?;
                empty()
            }
            PeerRequest::GroupStatus { group } => {
                let v = self.node_view(&group)?;
                Ok((serde_json::to_value(v).expect("serialisable"), None))
            }
            PeerRequest::GroupOnline {
                group,
                accept_data_loss,
                use_inconsistent,
            } => {
                let v = self.group_online(super::groups::OnlineOptions {
                    group,
                    accept_data_loss,
                    use_inconsistent,
                    timeout_ms: None,
                })?;
                Ok((v, None))
            }
            PeerRequest::Handover { group, to } => {
                if to != peer {
                    return Err(ReplError::Invalid(format!(
                        "handover of group {group}: node {peer} asked on behalf of {to}"
                    )));
                }
                self.handover(&group, &to)?;
                empty()
            }
            PeerRequest::GroupPolicy { policy } => {
                let mut p = policy;
                // This node's own fenced exports stay.
                p.fenced_exports = self.group_policy(&p.name).fenced_exports;
                self.store_policy(&p)?;
                empty()
            }
            PeerRequest::GroupDefinition { group } => Ok((self.group_definition(&group)?, None)),
            PeerRequest::ClusterProbe {} => Ok((json!({ "etcd_ok": self.etcd_ok() }), None)),
            PeerRequest::Link { .. } => Err(ReplError::Invalid(
                "a link request is only valid as the first request of a connection".into(),
            )),
        }
    }

    /// Read `[offset, offset + len)` of secondary set `set`'s volume, below
    /// its guard; at most `max` bytes.
    fn read_secondary(&self, set: &str, offset: u64, len: u64, max: u64) -> RResult<Vec<u8>> {
        let e = self.secondary(set)?;
        if len == 0
            || len > max
            || offset
                .checked_add(len)
                .is_none_or(|end| end > e.set.size_bytes)
        {
            return Err(ReplError::Invalid(format!(
                "read [{offset}, +{len}) outside set {set} (at most {max} bytes at a time)"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        e.set
            .guard
            .with_lower(|d| d.read(&mut buf, offset))
            .map_err(|e| ReplError::Failed(e.to_string()))?;
        Ok(buf)
    }

    fn create_secondary(
        &self,
        peer: &str,
        mut c: ReplSetConfig,
        size_bytes: u64,
        generation: Option<u64>,
    ) -> RResult<Value> {
        validate_name(&c.name).map_err(|e| ReplError::Invalid(format!("replication set: {e}")))?;
        let _r = self.reserve(&[c.name.clone(), format!("volume:{}", c.volume)])?;
        let host = self.host()?;
        let rc = self.config()?;
        if rc.sets.iter().any(|s| s.name == c.name) {
            return Err(ReplError::Exists(format!(
                "node {}: replication set {} already exists",
                rc.node, c.name
            )));
        }
        if let Some(o) = rc.sets.iter().find(|s| s.volume == c.volume) {
            return Err(ReplError::Busy(format!(
                "node {}: volume {} is already in replication set {}",
                rc.node, c.volume, o.name
            )));
        }
        let volume = host
            .volume(&c.volume)
            .map_err(|e| ReplError::Invalid(format!("node {}: {e}", rc.node)))?;
        if volume.size_bytes() < size_bytes {
            return Err(ReplError::Invalid(format!(
                "node {}: volume {} has {} bytes, smaller than the primary's {size_bytes}",
                rc.node,
                c.volume,
                volume.size_bytes(),
            )));
        }
        if host.is_image_shadow(&c.volume) {
            return Err(ReplError::Busy(format!(
                "node {}: volume {} is an image shadow",
                rc.node, c.volume
            )));
        }
        let path = self.scoreboard_path(&c.name)?;
        c.scoreboard = Some(path.clone());
        let gens = match generation {
            Some(g) => Generations {
                current: g,
                agreed: g,
                history: Vec::new(),
            },
            None => Generations::default(),
        };
        self.open_secondary(&c, Some(gens), &[])?;
        let cc = c.clone();
        self.commit(
            |rc| {
                rc.sets.push(cc.clone());
                Ok(())
            },
            || {
                self.drop_secondary(&c);
                let _ = std::fs::remove_file(&path);
            },
        )?;
        self.publish(
            "repl.enabled",
            &c.name,
            crate::services::Note::new(format!("secondary of {peer} ({})", c.mode.as_str()))
                .field("role", "secondary")
                .field("volume", &c.volume)
                .field("peer", peer)
                .field("mode", c.mode.as_str()),
        );
        Ok(json!({"node": rc.node}))
    }

    /// A peer compares generations before it syncs. As a primary here,
    /// this side steps down when the peer's data is newer and enters split
    /// brain when both wrote.
    fn compare(&self, peer: &str, sets: Vec<SetGenerations>) -> Answer {
        let mut role = ReplRole::Secondary;
        let mut older = 0;
        let mut conflict = false;
        let mut primaries = Vec::new();
        let mut follows = None;
        for sg in &sets {
            let legs = self.legs(&sg.name);
            let leg = legs
                .iter()
                .find(|l| l.peer_node == peer)
                .or(legs.first())
                .cloned();
            if let Some(p) = leg {
                role = ReplRole::Primary;
                match relation(&p.scoreboard.generations(), &sg.generations) {
                    Relation::WeAreOlder => older += 1,
                    Relation::PeerOlder => {}
                    Relation::Same | Relation::SplitBrain => conflict = true,
                }
                primaries.push(p);
            } else {
                self.secondary(&sg.name)?;
                let c = self.set_config(&sg.name)?;
                if !c.peer_node.is_empty() && c.peer_node != peer {
                    follows = Some(c.peer_node);
                }
            }
        }
        if role == ReplRole::Primary {
            let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
            if older == sets.len() {
                self.step_down(
                    &names,
                    false,
                    &format!("{peer} took over while this node was away"),
                    Some(peer),
                )?;
                role = ReplRole::Secondary;
            } else if conflict || older > 0 {
                self.enter_split_brain(&primaries, &sets);
            }
        }
        let reply = CompareReply {
            role,
            sets: sets
                .iter()
                .map(|s| SetGenerations {
                    name: s.name.clone(),
                    generations: self.generations_of(&s.name).unwrap_or_default(),
                })
                .collect(),
            follows,
        };
        Ok((serde_json::to_value(reply).expect("serialisable"), None))
    }

    /// Refuse a request only this secondary's primary may send.
    fn check_from_primary(&self, peer: &str, set: &str) -> RResult<()> {
        let c = self.set_config(set)?;
        if c.role == ReplRole::Secondary && !c.peer_node.is_empty() && c.peer_node != peer {
            return Err(ReplError::Busy(format!(
                "set {set} on node {} follows primary {}, not {peer}",
                self.ctx.name(),
                c.peer_node
            )));
        }
        Ok(())
    }

    /// A sync from `peer` is about to start (its data is newer or the
    /// same): when `peer` is not this secondary's primary (it was promoted
    /// elsewhere), follow it from now on; the old primary's link, if any,
    /// stops (only for a primary whose data is strictly newer, `newer`).
    /// Record the set's other members either way.
    fn follow(
        &self,
        peer: &str,
        set: &str,
        primary: Option<PrimaryInfo>,
        members: Option<Vec<Member>>,
        newer: bool,
    ) -> RResult<()> {
        let c = self.set_config(set)?;
        if c.role != ReplRole::Secondary {
            return Err(ReplError::Invalid(format!(
                "set {set} is not a secondary on node {}",
                self.ctx.name()
            )));
        }
        let switch = c.peer_node != peer;
        if switch && !newer {
            // Only a strictly newer primary takes a secondary over: an old
            // primary coming back with the same data must not pull it back.
            return Err(ReplError::Busy(format!(
                "set {set} on node {} follows primary {}; {peer}'s data is not newer",
                self.ctx.name(),
                c.peer_node
            )));
        }
        if switch {
            let p = primary.as_ref().ok_or_else(|| {
                ReplError::Busy(format!(
                    "set {set} on node {} follows primary {}, not {peer}",
                    self.ctx.name(),
                    c.peer_node
                ))
            })?;
            if p.node != peer {
                return Err(ReplError::Invalid(format!(
                    "sync of set {set}: node {peer} speaks for primary {}",
                    p.node
                )));
            }
            self.table.replace(&link_key(&c), None);
            log::info!(
                "replication set {set}: now follows primary {peer} (was {})",
                c.peer_node
            );
            self.publish(
                "repl.follows",
                set,
                crate::services::Note::new(format!("new primary {peer} (was {})", c.peer_node))
                    .field("peer", peer)
                    .field("was", &c.peer_node),
            );
        }
        let old = c.peer_node.clone();
        self.edit_leg(set, &old, |c| {
            if let Some(p) = &primary {
                c.peer = p.addr.clone();
                c.peer_node = p.node.clone();
                c.remote_volume = p.volume.clone();
                c.mode = p.mode;
            }
            if let Some(m) = &members {
                c.members = m.clone();
            }
        })
    }

    /// Before a resync makes the secondary inconsistent, keep a dependent
    /// snapshot of it. An existing one (an interrupted sync) is kept: it
    /// is the last consistent image.
    fn take_safety(&self, e: &SecondaryEntry) -> RResult<String> {
        let s = &e.set;
        let snap = format!("{}-safety", s.name);
        if self.set_config(&s.name)?.safety_snapshot.is_some() {
            return Ok(snap);
        }
        let host = self.host()?;
        let _pause = s.gate.write();
        // A leftover (a crash between enable and persist, a drop that did
        // not finish): its image set, its volume, or both.
        host.snapshot_drop(&snap)?;
        let bytes = host.volume(&s.volume)?.size_bytes();
        host.snapshot_take(&snap, &s.volume, safety_chunk_bytes(bytes))?;
        // Keep the guard on top, so the applier's writes go through the
        // imaging layer (copy-on-write into the snapshot).
        {
            let vol = host.volume(&s.volume)?;
            let mut g = vol
                .quiesce("repl safety snapshot")
                .map_err(|e| ReplError::Failed(e.to_string()))?;
            g.remove(SECONDARY_LAYER)
                .map_err(|e| ReplError::Failed(e.to_string()))?;
            g.push(s.guard.clone())
                .map_err(|e| ReplError::Failed(e.to_string()))?;
        }
        let name = s.name.clone();
        let sn = snap.clone();
        self.commit(
            |rc| {
                if let Some(c) = rc.sets.iter_mut().find(|c| c.name == name) {
                    c.safety_snapshot = Some(sn.clone());
                }
                Ok(())
            },
            || {},
        )?;
        self.publish(
            "repl.safety_taken",
            &s.name,
            crate::services::Note::new(snap.clone()).field("snapshot", &snap),
        );
        Ok(snap)
    }

    /// The peer swaps roles with us: these sets become primaries
    /// replicating to it.
    fn accept_swap(
        &self,
        peer: &str,
        names: &[String],
        primary_addr: &str,
        members: &[Member],
    ) -> RResult<std::collections::HashMap<String, Generations>> {
        let _r = self.reserve(names)?;
        let mut cfgs = Vec::new();
        for n in names {
            let c = self.set_config(n)?;
            if c.role != ReplRole::Secondary {
                return Err(ReplError::Invalid(format!(
                    "set {n} is not a secondary here"
                )));
            }
            if c.safety_snapshot.is_some() {
                return Err(ReplError::Busy(format!(
                    "set {n} is in the middle of a sync"
                )));
            }
            cfgs.push(c);
        }
        if let Some(c) = cfgs.first() {
            self.table.replace(&link_key(c), None);
        }
        let mut all = Vec::new();
        for c in &mut cfgs {
            c.peer = primary_addr.to_owned();
            c.peer_node = peer.to_owned();
            // A new generation: the old primary adopts it in the same
            // exchange (it holds every write), the other secondaries are
            // its ancestors and follow this node.
            all.extend(self.promote(c, members, true)?);
        }
        self.store_sets(&all)?;
        let mut gens = std::collections::HashMap::new();
        for c in &cfgs {
            for s in self.legs(&c.name) {
                if s.peer_node == peer {
                    s.scoreboard
                        .update_generations(|g| g.agreed = g.current)
                        .map_err(ReplError::Failed)?;
                    gens.insert(c.name.clone(), s.scoreboard.generations());
                }
                // Connect back to the old primary (now our secondary) once
                // it has switched; until then autosync retries.
                s.set_peer_lost(true);
            }
        }
        self.publish(
            "repl.swapped",
            &names.join(","),
            crate::services::Note::new(format!("this node is now the primary; secondary {peer}"))
                .field("role", "primary")
                .field("peer", peer),
        );
        Ok(gens)
    }

    fn serve_peer_link(
        &self,
        peer: &str,
        group: String,
        mode: Mode,
        list: Vec<LinkSet>,
        mut stream: TcpStream,
    ) {
        let r = (|| -> RResult<(Vec<Option<Arc<SecondarySet>>>, Duration)> {
            let mut sets: Vec<Option<Arc<SecondarySet>>> = Vec::new();
            let mut timeout = DEFAULT_TIMEOUT_MS;
            for e in &list {
                if e.id > MAX_SET_ID {
                    return Err(ReplError::Invalid(format!(
                        "link: set id {} out of range",
                        e.id
                    )));
                }
                let c = self.set_config(&e.name)?;
                self.check_from_primary(peer, &e.name)?;
                if c.role != ReplRole::Secondary || c.mode != mode {
                    return Err(ReplError::Invalid(format!(
                        "set {} is not a {} secondary here",
                        e.name,
                        mode.as_str()
                    )));
                }
                timeout = c.timeout_ms;
                let s = self.secondary(&e.name)?.set;
                if e.size_bytes > s.size_bytes {
                    return Err(ReplError::Invalid(format!(
                        "set {}: the primary is larger than volume {}",
                        e.name, s.volume
                    )));
                }
                let id = e.id as usize;
                if sets.len() <= id {
                    sets.resize(id + 1, None);
                }
                sets[id] = Some(s);
            }
            Ok((sets, Duration::from_millis(timeout)))
        })();
        let (sets, timeout) = match r {
            Ok(x) => x,
            Err(e) => {
                log::warn!("replication: link from {peer} refused: {e}");
                let _ = peer::reply(&mut stream, Err(e.to_string()));
                return;
            }
        };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let Ok(handle) = stream.try_clone() else {
            return;
        };
        // A reconnect replaces the group's old link after its applier stops.
        self.table.replace(&group, Some((handle, done_rx)));
        if peer::reply(&mut stream, Ok((json!({}), None))).is_err() {
            return;
        }
        log::info!(
            "replication: link {group} from {peer} up ({})",
            mode.as_str()
        );
        self.publish(
            "repl.link_up",
            &group,
            crate::services::Note::new(format!("from {peer}"))
                .field("peer", peer)
                .field("mode", mode.as_str()),
        );
        // Served on this thread while busy; a quiet link waits in the idle
        // poller, and its end runs on whichever thread serves it then.
        let me = self.me();
        let peer = peer.to_owned();
        serve_link_parking(stream, sets, mode, timeout, move |why| {
            log::info!("replication: link {group} from {peer} ended: {why}");
            if let Some(r) = me.upgrade() {
                r.publish(
                    "repl.link_down",
                    &group,
                    crate::services::Note::new(why.clone())
                        .field("peer", &peer)
                        .field("why", why),
                );
            }
            let _ = done_tx.send(());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_chunks_are_the_block_until_the_bitmap_bound() {
        assert_eq!(safety_chunk_bytes(0), 4096);
        assert_eq!(safety_chunk_bytes(32 << 20), 4096);
        assert_eq!(safety_chunk_bytes(16 << 30), 4096);
        assert_eq!(safety_chunk_bytes((16 << 30) + 1), 8192);
        assert_eq!(safety_chunk_bytes(1 << 40), 256 << 10);
        assert_eq!(
            safety_chunk_bytes(1 << 50),
            1 << 20,
            "clamped to the largest chunk"
        );
        for bytes in [1u64 << 30, 100 << 30, 3 << 40] {
            let c = safety_chunk_bytes(bytes) as u64;
            assert!(c.is_power_of_two());
            assert!(bytes.div_ceil(c) <= SAFETY_MAX_CHUNKS, "{bytes}");
        }
    }
}
