//! The link manager (autosync, lazy scoreboard cleaning) and the sync
//! engines: forward (primary to secondary, with the secondary's safety
//! snapshot) and reverse (secondary's chunks back over the primary).
//!
//! A forward sync of a group:
//! 1. **compare** generations with the peer (generation.rs). A peer that
//!    is still a primary and newer makes this side step down; split brain
//!    stops everything until `repl resolve`.
//! 2. **sync_begin**: the secondary takes its safety snapshot and hands
//!    over the chunks it changed itself (a demoted former primary).
//! 3. connect the link; new writes replicate from now on; copy every
//!    out-of-sync chunk, then wait for the last acknowledgement.
//! 4. **sync_end**: the secondary adopts this side's generation and drops
//!    its snapshot; both sides agree on the generation; `replicating`.

use super::config::ReplRole;
use super::generation::{relation, Relation};
use super::link::Link;
use super::peer;
use super::requests::{CompareReply, MarkReply, PeerRequest, PrimaryInfo, SetGenerations};
use super::runtime::Replication;
use super::set::ReplSet;
use super::SetState;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Replication {
    /// The volume started a new generation while this leg replicated (a
    /// sibling lost its secondary): this leg's secondary holds every write
    /// of it, so it adopts it and the leg agrees again. Until then a
    /// comparison with that secondary would take it for older data.
    pub(super) fn adopt_round(&self, link: &Link, s: &Arc<ReplSet>) {
        let g = s.scoreboard.generations();
        if g.agreed == g.current {
            return;
        }
        let req = PeerRequest::Adopt {
            set: s.name.clone(),
            generations: g.clone(),
        };
        match peer::request(&self.ctx, &link.peer_addr, &req) {
            Ok(_) if s.state() == SetState::Replicating => {
                let r = s.scoreboard.update_generations(|x| {
                    if x.current == g.current {
                        x.agreed = g.current;
                    }
                });
                if let Err(e) = r {
                    s.set_state(SetState::Failed, &format!("scoreboard: {e}"));
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!(
                "replication set {}: {} did not adopt generation {:x}: {e}",
                s.name,
                s.peer_node,
                g.current
            ),
        }
    }

    /// One release round with this leg's secondary: it closes an epoch
    /// and names the chunks it holds marked; those the same on every
    /// member right now (no leg has them out of sync, pending or in
    /// flight) are released, if written in that epoch or before. `true`:
    /// the secondary holds no marked chunk any more.
    pub(super) fn release_round(&self, link: &Link, s: &Arc<ReplSet>) -> Result<bool, String> {
        let mut session = peer::Session::open(&self.ctx, &link.peer_addr)?;
        let (_, lag_bytes, age) = link.lag();
        let (v, bits) = session.call(&PeerRequest::Mark {
            set: s.name.clone(),
            lag_bytes,
            lag_ms: (age * 1000.0) as u64,
        })?;
        let Some(bits) = bits else { return Ok(true) };
        let mark: MarkReply =
            serde_json::from_value(v).map_err(|e| format!("malformed mark reply: {e}"))?;
        let legs = s.legs().ok_or("the set is gone")?;
        let chunks = s.scoreboard.chunks();
        let mut runs: Vec<[u64; 2]> = Vec::new();
        let mut kept = false;
        for (w, word) in bits.chunks(8).enumerate() {
            let mut word = u64::from_le_bytes(word.try_into().map_err(|_| "short bitmap")?);
            while word != 0 {
                let b = word.trailing_zeros() as u64;
                word &= word - 1;
                let c = w as u64 * 64 + b;
                if c >= chunks {
                    continue;
                }
                if !legs.quiet(c) {
                    kept = true;
                    continue;
                }
                match runs.last_mut() {
                    Some([first, n]) if *first + *n == c => *n += 1,
                    _ => runs.push([c, 1]),
                }
            }
        }
        if runs.is_empty() {
            return Ok(!kept);
        }
        session.call(&PeerRequest::Release {
            set: s.name.clone(),
            session: mark.session,
            epoch: mark.epoch,
            runs,
        })?;
        Ok(!kept)
    }

    /// Start a forward sync of the link's group in the background.
    /// `checksum`: chunks whose checksums match the peer's are not sent.
    pub(super) fn start_sync(&self, link: &Arc<Link>, full: bool, checksum: bool) {
        if link.syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = self.me();
        let link = link.clone();
        let _ = std::thread::Builder::new()
            .name(format!("repl-sync-{}", link.group))
            .spawn(move || {
                if let Some(r) = weak.upgrade() {
                    r.run_sync(&link, full, checksum);
                }
                link.syncing.store(false, Ordering::SeqCst);
            });
    }

    fn run_sync(&self, link: &Arc<Link>, full: bool, checksum: bool) {
        let sets = link.sets();
        let fail = |why: String, state: SetState| {
            for s in &sets {
                *s.last_error.lock() = Some(why.clone());
                // Never downgrade: a set whose sync was interrupted stays
                // `need sync` until a sync completes (the state table).
                if s.state().can_become(state) {
                    s.set_state(state, &why);
                }
                if !s.suspended.load(Ordering::SeqCst) {
                    s.set_peer_lost(true);
                }
            }
            link.unreachable
                .store(why.starts_with("connecting to peer"), Ordering::SeqCst);
            log::warn!("replication group {}: sync stopped: {why}", link.group);
        };
        let ctx = &self.ctx;
        // 1. Which side is newer?
        match self.compare_with_peer(link, &sets) {
            Ok(true) => {}
            Ok(false) => return, // stepped down or split brain: nothing to sync
            Err(e) => return fail(e, SetState::Logging),
        }
        // A sync asked for while the link is up (a repair after `repl
        // verify`): the secondary first releases the marks of what every
        // member holds, so the bits it hands over below are only what may
        // differ, not everything it received in the last second.
        if link.is_up() {
            for s in sets.iter().filter(|s| s.state() == SetState::Replicating) {
                if let Err(e) = self.release_round(link, s) {
                    log::debug!("replication set {}: release before the sync: {e}", s.name);
                }
            }
        }
        // 2. The secondary protects itself (safety snapshot) and tells us
        //    which chunks it changed on its own (a demoted former primary).
        for s in &sets {
            let req = PeerRequest::SyncBegin {
                set: s.name.clone(),
                generations: s.scoreboard.generations(),
                primary: Some(PrimaryInfo {
                    node: ctx.name(),
                    addr: self.listen_addr().unwrap_or_default(),
                    volume: s.volume.clone(),
                    mode: link.mode,
                }),
                members: Some(self.members_for(&s.name, &s.peer_node)),
            };
            match peer::request(ctx, &link.peer_addr, &req) {
                Ok((_, bits)) => {
                    if let Some(bits) = bits {
                        if let Err(e) = s.scoreboard.merge(&bits) {
                            return fail(
                                format!("set {}: peer bitmap: {e}", s.name),
                                SetState::Logging,
                            );
                        }
                    }
                }
                Err(e) => return fail(e, SetState::Logging),
            }
            if full {
                if let Err(e) = s.scoreboard.mark_all() {
                    return fail(e.to_string(), SetState::Failed);
                }
            }
        }
        // 3. Connect; new writes replicate from now on.
        if let Err(e) = link.connect() {
            return fail(e, SetState::Logging);
        }
        for s in &sets {
            s.set_peer_lost(false);
            s.stats
                .sync_total_bytes
                .store(s.scoreboard.oos_bytes(), Ordering::SeqCst);
            s.stats.sync_done_bytes.store(0, Ordering::SeqCst);
            s.set_state(
                SetState::Syncing,
                if full { "full sync" } else { "update sync" },
            );
        }
        if checksum {
            for s in &sets {
                if let Err(e) = checksum_pass(self, link, s) {
                    return fail(e, SetState::NeedSync);
                }
            }
        }
        for s in &sets {
            if let Err(e) = s.resync() {
                return fail(e, SetState::NeedSync);
            }
        }
        if let Err(e) = link.drain() {
            return fail(e.0, SetState::NeedSync);
        }
        for s in &sets {
            if s.scoreboard.oos_chunks() > 0 {
                return fail(
                    "chunks went out of sync during the sync".into(),
                    SetState::NeedSync,
                );
            }
        }
        // 4. The secondary is consistent: it adopts our generation and
        //    drops its safety snapshot; then both sides agree.
        for s in &sets {
            let req = PeerRequest::SyncEnd {
                set: s.name.clone(),
                generations: s.scoreboard.generations(),
            };
            if let Err(e) = peer::request(ctx, &link.peer_addr, &req) {
                return fail(
                    format!("the peer did not complete the sync: {e}"),
                    SetState::NeedSync,
                );
            }
            agree(s);
            let _ = s.scoreboard.clean();
            // The secondary marked every chunk the sync wrote; release what
            // every member holds now rather than a second later (a
            // promotion meanwhile would compare all of it).
            if let Err(e) = self.release_round(link, s) {
                log::debug!("replication set {}: release after the sync: {e}", s.name);
            }
            if s.set_state(SetState::Replicating, "sync complete") {
                *s.last_error.lock() = None;
            }
        }
    }

    /// Compare generations with the peer for every set of the group.
    /// `Ok(true)`: go on with the sync. `Ok(false)`: this side stepped
    /// down, or the group is in split brain.
    fn compare_with_peer(&self, link: &Arc<Link>, sets: &[Arc<ReplSet>]) -> Result<bool, String> {
        let req = PeerRequest::Compare {
            sets: sets
                .iter()
                .map(|s| SetGenerations {
                    name: s.name.clone(),
                    generations: s.scoreboard.generations(),
                })
                .collect(),
        };
        let (v, _) = peer::request(&self.ctx, &link.peer_addr, &req)?;
        let reply: CompareReply =
            serde_json::from_value(v).map_err(|e| format!("malformed compare reply: {e}"))?;
        let mut rels = Vec::new();
        for s in sets {
            let theirs = reply
                .sets
                .iter()
                .find(|x| x.name == s.name)
                .ok_or_else(|| format!("the peer has no set {}", s.name))?;
            let mine = s.scoreboard.generations();
            rels.push((
                s.clone(),
                relation(&mine, &theirs.generations),
                theirs.clone(),
            ));
        }
        let peer_primary = reply.role == ReplRole::Primary;
        let all_newer = rels.iter().all(|(_, r, _)| *r == Relation::PeerOlder);
        if let Some(other) = reply.follows.as_ref().filter(|o| **o != self.ctx.name()) {
            // That secondary follows another primary. If this side's data
            // is strictly newer (it was promoted after that one), the sync
            // takes the secondary over; otherwise this side waits: it steps
            // down when it meets that primary (or stays apart, in split
            // brain, if it wrote meanwhile).
            if !peer_primary && all_newer {
                return Ok(true);
            }
            let why = format!(
                "secondary {} follows primary {other} now",
                sets[0].peer_node
            );
            for s in sets {
                *s.last_error.lock() = Some(why.clone());
            }
            return Ok(false);
        }
        let all_older = rels.iter().all(|(_, r, _)| *r == Relation::WeAreOlder);
        let ok = rels
            .iter()
            .all(|(_, r, _)| matches!(r, Relation::Same | Relation::PeerOlder));
        if peer_primary && all_older {
            // A failover happened while we were away and we wrote nothing
            // since: the peer is production; follow it.
            let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
            self.step_down(
                &names,
                false,
                "the peer took over while this node was away",
                Some(&sets[0].peer_node),
            )
            .map_err(|e| e.to_string())?;
            return Ok(false);
        }
        if !peer_primary && ok {
            return Ok(true);
        }
        self.enter_split_brain(sets, &reply.sets);
        Ok(false)
    }

    /// Mark the group's sets split brain (persisted) and say so, with both
    /// sides' generations (`peer`: the other side's, by set).
    pub(super) fn enter_split_brain(&self, sets: &[Arc<ReplSet>], peer: &[SetGenerations]) {
        let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
        let sides = serde_json::Value::Array(
            sets.iter()
                .map(|s| {
                    serde_json::json!({
                        "set": s.name,
                        "local": s.scoreboard.generations(),
                        "peer": peer.iter().find(|p| p.name == s.name).map(|p| &p.generations),
                        "local_out_of_sync_bytes": s.scoreboard.oos_bytes(),
                    })
                })
                .collect(),
        );
        let mut fresh = false;
        for s in sets {
            fresh |= s.state() != SetState::SplitBrain;
            *s.last_error.lock() = Some(
                "split brain: both sides wrote since they last agreed; `umbra repl resolve SET --discard here|peer`"
                    .into(),
            );
            s.set_state(SetState::SplitBrain, "generations disagree");
        }
        let r = self.commit(
            |rc| {
                for c in rc.sets.iter_mut().filter(|c| names.contains(&c.name)) {
                    c.split_brain = true;
                }
                Ok(())
            },
            || {},
        );
        if let Err(e) = r {
            log::error!("replication: persisting split brain of {names:?}: {e}");
        }
        if fresh {
            log::error!("replication sets {names:?}: split brain: {sides}");
            self.publish(
                "repl.split_brain",
                &names.join(","),
                crate::services::Note::new(
                    "both sides wrote since they last agreed; `umbra repl resolve`",
                )
                .field("sets", sides),
            );
        }
    }

    pub(super) fn start_reverse_sync(&self, link: &Arc<Link>) {
        if link.syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = self.me();
        let link = link.clone();
        let _ = std::thread::Builder::new()
            .name(format!("repl-rsync-{}", link.group))
            .spawn(move || {
                if let Some(r) = weak.upgrade() {
                    if let Err(e) = r.run_reverse_sync(&link) {
                        for s in link.sets() {
                            *s.last_error.lock() = Some(e.clone());
                            s.set_state(SetState::NeedReverseSync, &e);
                        }
                    }
                }
                link.syncing.store(false, Ordering::SeqCst);
            });
    }

    /// Copy the secondary's chunks back over the primary's (the peer's
    /// changes and ours), then resume replicating.
    fn run_reverse_sync(&self, link: &Arc<Link>) -> Result<(), String> {
        let sets = link.sets();
        let mut session = peer::Session::open(&self.ctx, &link.peer_addr)?;
        for s in &sets {
            s.set_state(SetState::ReverseSyncing, "reverse sync");
            let (_, bits) = session.call(&PeerRequest::Bitmap {
                set: s.name.clone(),
            })?;
            if let Some(bits) = bits {
                s.scoreboard.merge(&bits)?;
            }
            s.stats
                .sync_total_bytes
                .store(s.scoreboard.oos_bytes(), Ordering::SeqCst);
            s.stats.sync_done_bytes.store(0, Ordering::SeqCst);
            let chunk = s.scoreboard.chunk_bytes();
            let mut c = 0;
            while let Some(b) = s.scoreboard.next_oos(c) {
                c = b + 1;
                let off = b * chunk;
                let len = chunk.min(s.size_bytes - off);
                let (_, data) = session.call(&PeerRequest::Read {
                    set: s.name.clone(),
                    offset: off,
                    len,
                })?;
                let data = data.ok_or("peer sent no data")?;
                if data.len() as u64 != len {
                    return Err(format!(
                        "peer sent {} bytes for a {len}-byte chunk",
                        data.len()
                    ));
                }
                s.with_lower(|d| d.write(&data, off, false))
                    .map_err(|e| format!("set {}: writing chunk {b}: {e}", s.name))?;
                s.scoreboard.take(b);
                s.stats.sync_done_bytes.fetch_add(len, Ordering::Relaxed);
            }
            s.with_lower(|d| d.flush()).map_err(|e| e.to_string())?;
        }
        session.call(&PeerRequest::BitmapClear {
            sets: sets.iter().map(|s| s.name.clone()).collect(),
        })?;
        link.connect()?;
        for s in &sets {
            // Both sides now hold the secondary's data.
            let theirs = session
                .call(&PeerRequest::Compare {
                    sets: vec![SetGenerations {
                        name: s.name.clone(),
                        generations: s.scoreboard.generations(),
                    }],
                })
                .ok()
                .and_then(|(v, _)| serde_json::from_value::<CompareReply>(v).ok())
                .and_then(|r| r.sets.into_iter().next());
            if let Some(t) = theirs {
                let _ = s.scoreboard.update_generations(|g| g.adopt(&t.generations));
            }
            let _ = s.scoreboard.clean();
            s.set_peer_lost(false);
            s.set_state(SetState::Replicating, "reverse sync complete");
        }
        Ok(())
    }
}

/// Clear the out-of-sync chunks whose checksums equal the peer's, so the
/// resync after it sends only the chunks that really differ.
fn checksum_pass(r: &Replication, link: &Link, s: &Arc<ReplSet>) -> Result<(), String> {
    let mut session = peer::Session::open(&r.ctx, &link.peer_addr)?;
    let chunks = s.scoreboard.chunks();
    let mut from = 0;
    // Batches start at the next out-of-sync chunk, so sparse bits cost a
    // batch each and runs of them share one.
    while let Some(first) = s.scoreboard.next_oos(from) {
        let n = super::verify::VERIFY_BATCH_CHUNKS.min(chunks - first);
        let equal = super::verify::compare_batch(s, &mut session, first, n)?;
        for (i, eq) in equal.into_iter().enumerate() {
            if eq {
                s.scoreboard.take(first + i as u64);
            }
        }
        from = first + n;
    }
    s.stats
        .sync_total_bytes
        .store(s.scoreboard.oos_bytes(), Ordering::SeqCst);
    Ok(())
}

/// After the secondary adopted this side's generation: both agree. A
/// link that dropped meanwhile (the set left `syncing`) means writes may
/// have gone on without the peer, so a new generation starts at once.
fn agree(s: &ReplSet) {
    let r = s
        .scoreboard
        .update_generations(|g| g.agreed = g.current)
        .map_err(|e| e.to_string())
        .and_then(|_| {
            if s.state() == SetState::Syncing {
                Ok(())
            } else {
                s.diverge().map_err(|e| e.to_string())
            }
        });
    if let Err(e) = r {
        s.set_state(SetState::Failed, &format!("scoreboard: {e}"));
    }
}
