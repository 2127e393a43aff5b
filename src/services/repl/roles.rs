//! Role changes: the planned swap (both sides in sync), the forced
//! takeover of a secondary whose primary is gone, a primary stepping down
//! (demoted by force, or finding that its peer took over while it was
//! away), and split-brain resolution.

use super::config::{Member, ReplRole, ReplSetConfig};
use super::error::{RResult, ReplError};
use super::generation::Generations;
use super::peer;
use super::requests::PeerRequest;
use super::runtime::{link_key, open_scoreboard, Replication};
use super::secondary::{SecondaryGuard, SecondarySet, SECONDARY_LAYER};
use super::set::{primary_layer, ReplSet};
use super::SetState;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Which side's data `repl resolve` throws away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    Here,
    Peer,
}

impl Replication {
    /// Planned swap from the primary: quiesce the group's volumes, wait
    /// for the last acknowledgement on every leg, make the secondary
    /// `secondary` (or the only one) primary and this side its secondary.
    /// The other secondaries follow the new primary: it re-attaches them
    /// with an update sync (the chunks they may lack are in its bitmap).
    pub fn swap(&self, name: &str, secondary: Option<&str>) -> RResult<Value> {
        let target = self.leg(name, secondary)?;
        let node = target.peer_node.clone();
        let sets = target.link().sets();
        drop(target);
        let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
        let _r = self.reserve(&names)?;
        for s in &sets {
            if s.state() != SetState::Replicating {
                return Err(ReplError::Busy(format!(
                    "replication set {} is {} toward {node}; swap needs both sides in sync (replicating)",
                    s.name,
                    s.state().as_str()
                )));
            }
        }
        let link = sets[0].link().clone();
        let others: Vec<Arc<ReplSet>> = sets.iter().flat_map(|s| s.siblings()).collect();
        // Writes held by a `block` fence would hold the quiesce below:
        // they fail now (never acknowledged here; the peer takes over).
        for l in sets.iter().chain(others.iter()) {
            if l.fenced.load(Ordering::SeqCst) {
                l.fence_release();
            }
        }
        let listen = self.listen_addr().unwrap_or_default();
        let host = self.host()?;
        let vols: Vec<_> = sets
            .iter()
            .map(|s| host.volume(&s.volume))
            .collect::<RResult<_>>()?;
        let refs: Vec<&crate::interposer::Volume> = vols.iter().map(|v| v.as_ref()).collect();
        // Quiesce every volume of the group: no new writes; what was
        // acknowledged reaches the peer before the roles change.
        let mut guards = crate::interposer::quiesce_many(&refs, "repl swap")
            .map_err(|e| ReplError::Failed(e.to_string()))?;
        link.drain().map_err(|e| {
            ReplError::Peer(format!("the peer did not acknowledge everything: {}", e.0))
        })?;
        // The other secondaries get what they can (a leg that is down
        // keeps its chunks in the new primary's bitmap).
        for o in &others {
            let _ = o.link().drain_for(o.link().timeout);
        }
        for s in &sets {
            if s.scoreboard.oos_chunks() > 0 {
                return Err(ReplError::Busy(format!(
                    "set {} has out-of-sync chunks",
                    s.name
                )));
            }
        }
        link.stop.store(true, Ordering::SeqCst);
        for s in &sets {
            s.suspended.store(true, Ordering::SeqCst);
        }
        link.close("swapping roles");
        let resume = || {
            link.stop.store(false, Ordering::SeqCst);
            for s in &sets {
                s.suspended.store(false, Ordering::SeqCst);
                s.set_peer_lost(true);
            }
            self.manage(&link);
        };
        let reply = match peer::request(
            &self.ctx,
            &link.peer_addr,
            &PeerRequest::Swap {
                sets: names.clone(),
                primary: listen,
                members: self.members_for(name, &node),
            },
        ) {
            Ok((v, _)) => v,
            Err(e) => {
                resume();
                return Err(ReplError::Peer(format!(
                    "swap refused by the peer: {e}; this side stays primary (autosync reconnects)"
                )));
            }
        };
        // The new primary started a generation; this side holds every
        // write of it (drained above) and adopts it.
        let new_gens: std::collections::HashMap<String, Generations> =
            serde_json::from_value(reply["generations"].clone()).unwrap_or_default();
        // We are the secondary now: the guard replaces the primary layers
        // while the volumes are still quiesced.
        let mut changed = Vec::new();
        let mut gone = Vec::new();
        for (g, s) in guards.iter_mut().zip(sets.iter()) {
            let (keep, others) = self.fold_legs(&s.name, &node)?;
            gone.extend(others);
            let _ = keep.scoreboard.clean();
            if let Some(g) = new_gens.get(&s.name) {
                if let Err(e) = keep.scoreboard.update_generations(|x| x.adopt(g)) {
                    log::error!(
                        "replication set {}: adopting the new generation: {e}",
                        s.name
                    );
                }
            }
            for l in std::iter::once(&keep).chain(s.siblings().iter()) {
                let _ = g.remove(&primary_layer(&l.peer_node));
            }
            let guard = Arc::new(SecondaryGuard::new(&s.volume));
            let _ = g.push(guard.clone());
            let mut c = self.leg_config(&s.name, Some(&node))?;
            c.role = ReplRole::Secondary;
            c.suspended = false;
            c.members = self.members_for(&s.name, &node);
            changed.push((c, guard, s.size_bytes));
        }
        drop(guards);
        for s in &sets {
            for l in std::iter::once(s.clone()).chain(s.siblings()) {
                l.link().remove_set(&s.name);
                if l.link().sets().is_empty() {
                    l.link().stop.store(true, Ordering::SeqCst);
                    l.link()
                        .close("swapped roles: this node is a secondary now");
                    self.links
                        .lock()
                        .remove(&format!("{}@{}", l.link().group, l.peer_node));
                }
            }
            self.primaries.lock().remove(&s.name);
        }
        for c in &gone {
            if let Some(p) = &c.scoreboard {
                let _ = std::fs::remove_file(p);
            }
        }
        // The scoreboards move to the secondary side (generations kept).
        drop(sets);
        drop(others);
        for (c, guard, size) in &changed {
            let path = c.scoreboard.clone().expect("a primary has a scoreboard");
            match open_scoreboard(&path, &c.name, *size) {
                Ok(sb) => {
                    let sb = Arc::new(sb);
                    self.secondaries.lock().insert(
                        c.name.clone(),
                        super::runtime::SecondaryEntry {
                            set: Arc::new(SecondarySet::new(
                                &c.name,
                                &c.volume,
                                *size,
                                guard.clone(),
                                sb.clone(),
                            )),
                            scoreboard: sb,
                        },
                    );
                }
                Err(e) => log::error!("replication set {}: {e}", c.name),
            }
        }
        let cfgs: Vec<ReplSetConfig> = changed.into_iter().map(|(c, _, _)| c).collect();
        self.store_sets(&cfgs)?;
        self.publish(
            "repl.swapped",
            name,
            crate::services::Note::new(format!(
                "this node is now the secondary of {node} ({})",
                link.peer_addr
            ))
            .field("role", "secondary")
            .field("peer", &node),
        );
        self.info(name, None)
    }

    /// Before set `name` steps down to follow `node`: the leg toward
    /// `node` stays (its scoreboard becomes the secondary's) and takes the
    /// bits of every other leg (chunks those secondaries may lack, which
    /// the new primary must know of). Returns the kept leg and the other
    /// legs' configurations, for the caller to remove.
    fn fold_legs(&self, name: &str, node: &str) -> RResult<(Arc<ReplSet>, Vec<ReplSetConfig>)> {
        let legs = self.legs(name);
        let keep = legs
            .iter()
            .find(|l| l.peer_node == node)
            .or(legs.first())
            .cloned()
            .ok_or_else(|| ReplError::no_set(name))?;
        let mut others = Vec::new();
        for l in legs.iter().filter(|l| l.peer_node != keep.peer_node) {
            // Out of sync there, or pending (durable in that leg's file):
            // that secondary may lack the chunk.
            let mut c = 0;
            while let Some(b) = l.scoreboard.next_disk(c) {
                c = b + 1;
                keep.scoreboard.set_oos(b);
            }
            keep.scoreboard
                .merge(&l.scoreboard.oos_words())
                .map_err(ReplError::Failed)?;
            others.push(self.leg_config(name, Some(&l.peer_node))?);
        }
        Ok((keep, others))
    }

    /// `repl swap --force`, for when the peer cannot take part. On a
    /// secondary (failover, the primary is gone): become the primary of
    /// the whole group, starting a new generation. On a primary (the old
    /// one, back after a failover): step down and become the secondary of
    /// the peer, its data discarded (the administrator said so): the new
    /// primary's next sync rewrites every chunk either side changed.
    pub fn takeover(&self, name: &str, secondary: Option<&str>) -> RResult<Value> {
        let c = self.leg_config(name, secondary)?;
        let group = self.config_group(&c)?;
        let names: Vec<String> = group.iter().map(|c| c.name.clone()).collect();
        match c.role {
            ReplRole::Secondary => {
                let _r = self.reserve(&names)?;
                for c in &group {
                    if let Some(snap) = &c.safety_snapshot {
                        return Err(ReplError::Busy(format!(
                            "replication set {}: this volume is in the middle of a resync and inconsistent; \
                             its last consistent image is the image set {snap} \
                             (`umbra image update {snap} --to master`, then `umbra image disable {snap}`) before taking over",
                            c.name
                        )));
                    }
                }
                self.table.replace(&link_key(&c), None);
                let mut done = Vec::new();
                for c in &group {
                    let mut nc = c.clone();
                    let members = nc.members.clone();
                    done.extend(self.promote(&mut nc, &members, true)?);
                }
                self.store_sets(&done)?;
                self.publish(
                    "repl.takeover",
                    &names.join(","),
                    crate::services::Note::new(format!(
                        "this node is now the primary; {} is to be demoted{}",
                        c.peer_node,
                        if done.len() > group.len() {
                            format!("; {} other secondaries follow", done.len() - group.len())
                        } else {
                            String::new()
                        }
                    ))
                    .field("role", "primary")
                    .field("from", &c.peer_node)
                    .field("followers", done.len().saturating_sub(group.len())),
                );
            }
            ReplRole::Primary => {
                let _r = self.reserve(&names)?;
                self.step_down_reserved(
                    &names,
                    true,
                    "demoted by `repl swap --force`",
                    Some(&c.peer_node),
                )?;
            }
        }
        self.info(name, None)
    }

    /// The configured sets of `c`'s group (or `c` alone), one entry per
    /// set (on a primary its leg toward `c`'s secondary, or its first).
    fn config_group(&self, c: &ReplSetConfig) -> RResult<Vec<ReplSetConfig>> {
        let key = link_key(c);
        let mut out: Vec<ReplSetConfig> = Vec::new();
        for x in self.config()?.sets {
            if link_key(&x) != key || x.role != c.role {
                continue;
            }
            match out.iter_mut().find(|o| o.name == x.name) {
                Some(o) if x.peer_node == c.peer_node => *o = x,
                Some(_) => {}
                None => out.push(x),
            }
        }
        Ok(out)
    }

    /// Turn secondary set `c` into a primary: the guard leaves the
    /// volume; its scoreboard (generations, and the chunks it holds that
    /// others may lack) becomes the leg toward its old primary, `c.peer`,
    /// and every other secondary of the set (`members`) gets a leg of its
    /// own starting from the same bits, so each is re-attached with an
    /// update sync. `new_generation`: a forced takeover (writing without
    /// the old primary). Returns the configuration of every leg; `c` is
    /// the first; the caller stores them.
    pub(super) fn promote(
        &self,
        c: &mut ReplSetConfig,
        members: &[Member],
        new_generation: bool,
    ) -> RResult<Vec<ReplSetConfig>> {
        // Released marks are cleared on disk lazily: write them out, the
        // primary side opens the file afresh.
        if let Ok(e) = self.secondary(&c.name) {
            e.scoreboard
                .clean()
                .map_err(|e| ReplError::Failed(format!("set {}: scoreboard: {e}", c.name)))?;
        }
        self.secondaries.lock().remove(&c.name);
        c.role = ReplRole::Primary;
        c.suspended = false;
        c.split_brain = false;
        c.members = Vec::new();
        if c.scoreboard.is_none() {
            c.scoreboard = Some(self.scoreboard_path(&c.name)?);
        }
        // The primary layer takes the guard's place in one quiesce.
        let set = self.open_primary(c, None, &[SECONDARY_LAYER])?;
        set.set_peer_lost(new_generation);
        if new_generation {
            set.scoreboard
                .update_generations(|g| g.begin_new())
                .map_err(ReplError::Failed)?;
        }
        let gens = set.scoreboard.generations();
        let bits = set.scoreboard.oos_words();
        let me = self.ctx.name();
        let mut out = vec![c.clone()];
        for m in members
            .iter()
            .filter(|m| m.node != me && m.node != c.peer_node)
        {
            let mut mc = c.clone();
            mc.peer = m.addr.clone();
            mc.peer_node = m.node.clone();
            mc.remote_volume = m.volume.clone();
            mc.mode = m.mode;
            mc.scoreboard = Some(self.leg_scoreboard_path(&c.name, &m.node)?);
            let leg = match self.open_primary(&mc, Some((false, gens.clone())), &[]) {
                Ok(l) => l,
                Err(e) => {
                    log::error!(
                        "replication set {}: re-attaching secondary {}: {e}",
                        c.name,
                        m.node
                    );
                    continue;
                }
            };
            leg.scoreboard.merge(&bits).map_err(ReplError::Failed)?;
            leg.set_peer_lost(true);
            log::info!(
                "replication set {}: secondary {} follows this node ({} chunks to compare first)",
                c.name,
                m.node,
                leg.scoreboard.oos_chunks()
            );
            out.push(mc);
        }
        Ok(out)
    }

    /// Step down: these primary sets become secondaries of `new_primary`
    /// (one of their secondaries; without it, the first). `discard`: this
    /// side's data is to be replaced (generation 0).
    pub(super) fn step_down(
        &self,
        names: &[String],
        discard: bool,
        why: &str,
        new_primary: Option<&str>,
    ) -> RResult<()> {
        let _r = self.reserve(names)?;
        self.step_down_reserved(names, discard, why, new_primary)
    }

    fn step_down_reserved(
        &self,
        names: &[String],
        discard: bool,
        why: &str,
        new_primary: Option<&str>,
    ) -> RResult<()> {
        let mut done = Vec::new();
        for n in names {
            let first = self.set_config(n)?;
            if first.role != ReplRole::Primary {
                continue;
            }
            let node = new_primary.unwrap_or(&first.peer_node).to_owned();
            // No write is served from here on: fence every leg, then one
            // quiesce drains what passed the fence before it was set (their
            // bits are durable before the layer below is touched).
            for l in self.legs(n) {
                l.fence_release();
            }
            if self.primary(n).is_some() {
                drop(
                    self.host()?
                        .volume(&first.volume)?
                        .quiesce("repl step down")
                        .map_err(|e| ReplError::Failed(e.to_string()))?,
                );
            }
            let mut members = Vec::new();
            let keep_node = if self.primary(n).is_some() {
                let (set, others) = self.fold_legs(n, &node)?;
                for o in &others {
                    self.drop_primary(o);
                    if let Some(p) = &o.scoreboard {
                        let _ = std::fs::remove_file(p);
                    }
                    members.push(Member {
                        node: o.peer_node.clone(),
                        addr: o.peer.clone(),
                        volume: o.remote_volume.clone(),
                        mode: o.mode,
                    });
                }
                let link = set.link().clone();
                set.suspended.store(true, Ordering::SeqCst);
                link.remove_set(n);
                if link.sets().is_empty() {
                    link.stop.store(true, Ordering::SeqCst);
                    link.close(why);
                }
                let _ = set.scoreboard.clean();
                if discard {
                    set.scoreboard
                        .update_generations(|g| g.discard())
                        .map_err(ReplError::Failed)?;
                }
                set.peer_node.clone()
            } else {
                first.peer_node.clone()
            };
            let c = self.leg_config(n, Some(&keep_node))?;
            let mut nc = c.clone();
            nc.role = ReplRole::Secondary;
            nc.suspended = false;
            nc.split_brain = false;
            nc.members = members;
            // The guard takes the (fenced) primary layer's place in one
            // quiesce; then the primary's runtime goes.
            self.open_secondary(&nc, None, &[&primary_layer(&keep_node)])?;
            self.drop_primary(&c);
            done.push(nc);
        }
        self.store_sets(&done)?;
        if !done.is_empty() {
            self.publish(
                "repl.demoted",
                &names.join(","),
                crate::services::Note::new(format!("this node is now a secondary: {why}"))
                    .field("role", "secondary")
                    .field("why", why.to_string()),
            );
        }
        Ok(())
    }

    /// `repl resolve SET --discard here|peer`: end a split brain. The
    /// discarded side becomes (or stays) the secondary with generation 0;
    /// the other side leaves `split brain` and its autosync runs an update
    /// sync from the union of both sides' bitmaps.
    pub fn resolve(&self, name: &str, discard: Discard, secondary: Option<&str>) -> RResult<Value> {
        let c = self.leg_config(name, secondary)?;
        let group = self.config_group(&c)?;
        let names: Vec<String> = group.iter().map(|c| c.name.clone()).collect();
        let mut note = String::new();
        match discard {
            Discard::Here => {
                self.discard_here(&names, &c.peer_node)?;
                for n in &names {
                    if let Err(e) =
                        peer::request(&self.ctx, &c.peer, &PeerRequest::Resume { set: n.clone() })
                    {
                        note = format!(
                            "the peer was not told to resume ({e}); run `umbra repl resolve {name} --discard peer` there"
                        );
                    }
                }
            }
            Discard::Peer => {
                if c.role != ReplRole::Primary {
                    return Err(ReplError::Invalid(format!(
                        "replication set {name} is a secondary here; to keep this side, make it primary first (`umbra repl swap {name} --force`)"
                    )));
                }
                for n in &names {
                    peer::request(&self.ctx, &c.peer, &PeerRequest::Discard { set: n.clone() })
                        .map_err(|e| {
                            ReplError::Peer(format!(
                                "replication set {n}: the peer did not discard its side: {e}"
                            ))
                        })?;
                }
                self.resume(&names, &c.peer_node)?;
            }
        }
        self.publish(
            "repl.resolved",
            &names.join(","),
            match discard {
                Discard::Here => crate::services::Note::new("this side's data was discarded")
                    .field("discarded", "here"),
                Discard::Peer => crate::services::Note::new("the peer's data was discarded")
                    .field("discarded", "peer"),
            },
        );
        let mut v = self.info(name, None)?;
        v["note"] = json!(note);
        Ok(v)
    }

    /// This side's data goes: step down (a primary) or mark generation 0
    /// (a secondary).
    pub(super) fn discard_here(&self, names: &[String], peer: &str) -> RResult<()> {
        let _r = self.reserve(names)?;
        let primaries: Vec<String> = names
            .iter()
            .filter(|n| self.primary(n).is_some())
            .cloned()
            .collect();
        self.step_down_reserved(
            &primaries,
            true,
            "its data was discarded to resolve a split brain",
            Some(peer),
        )?;
        for n in names {
            if let Ok(e) = self.secondary(n) {
                e.scoreboard
                    .update_generations(|g| g.discard())
                    .map_err(ReplError::Failed)?;
            }
        }
        Ok(())
    }

    /// This side keeps its data: leave split brain; autosync syncs.
    pub(super) fn resume(&self, names: &[String], peer: &str) -> RResult<()> {
        let _r = self.reserve(names)?;
        for n in names {
            for s in self.legs(n).iter().filter(|s| s.peer_node == peer) {
                s.set_state(SetState::Logging, "split brain resolved");
                s.suspended.store(false, Ordering::SeqCst);
                *s.last_error.lock() = None;
                s.set_peer_lost(true);
            }
        }
        self.commit(
            |rc| {
                for c in rc
                    .sets
                    .iter_mut()
                    .filter(|c| names.iter().any(|n| c.is(n, peer)))
                {
                    c.split_brain = false;
                    c.suspended = false;
                }
                Ok(())
            },
            || {},
        )
    }
}
