//! Role changes: the planned swap (both sides in sync), the forced
//! takeover of a secondary whose primary is gone, a primary stepping down
//! (demoted by force, or finding that its peer took over while it was
//! away), and split-brain resolution.

use super::config::{ReplRole, ReplSetConfig};
use super::error::{RResult, ReplError};
use super::peer;
use super::requests::PeerRequest;
use super::runtime::{link_key, open_scoreboard, Replication};
use super::secondary::{SecondaryGuard, SecondarySet, SECONDARY_LAYER};
use super::set::{ReplSet, PRIMARY_LAYER};
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
    /// for the last acknowledgement, make the peer primary and this side
    /// its secondary.
    pub fn swap(&self, name: &str) -> RResult<Value> {
        let sets = self.group_of(name)?;
        let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
        let _r = self.reserve(&names)?;
        for s in &sets {
            if s.state() != SetState::Replicating {
                return Err(ReplError::Busy(format!(
                    "replication set {} is {}; swap needs both sides in sync (replicating)",
                    s.name,
                    s.state().as_str()
                )));
            }
        }
        let link = sets[0].link().clone();
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
            self.spawn_link_manager(link.clone());
        };
        if let Err(e) = peer::request(
            &self.ctx,
            &link.peer_addr,
            &PeerRequest::Swap {
                sets: names.clone(),
                primary: listen,
            },
        ) {
            resume();
            return Err(ReplError::Peer(format!(
                "swap refused by the peer: {e}; this side stays primary (autosync reconnects)"
            )));
        }
        // We are the secondary now: the guard replaces the primary layer
        // while the volumes are still quiesced.
        let mut changed = Vec::new();
        for (g, s) in guards.iter_mut().zip(sets.iter()) {
            let _ = s.scoreboard.clean();
            let _ = g.remove(PRIMARY_LAYER);
            let guard = Arc::new(SecondaryGuard::new(&s.volume));
            let _ = g.push(guard.clone());
            self.primaries.lock().remove(&s.name);
            let mut c = self.set_config(&s.name)?;
            c.role = ReplRole::Secondary;
            c.suspended = false;
            changed.push((c, guard, s.size_bytes));
        }
        drop(guards);
        for s in &sets {
            link.remove_set(&s.name);
        }
        self.links.lock().remove(&link.group);
        // The scoreboards move to the secondary side (generations kept).
        drop(sets);
        for (c, guard, size) in &changed {
            let path = c.scoreboard.clone().expect("a primary has a scoreboard");
            match open_scoreboard(&path, &c.name, *size) {
                Ok(sb) => {
                    self.secondaries.lock().insert(
                        c.name.clone(),
                        super::runtime::SecondaryEntry {
                            set: Arc::new(SecondarySet::new(
                                &c.name,
                                &c.volume,
                                *size,
                                guard.clone(),
                            )),
                            scoreboard: Arc::new(sb),
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
            format!("this node is now the secondary of {}", link.peer_addr),
        );
        self.info(name)
    }

    /// `repl swap --force`, for when the peer cannot take part. On a
    /// secondary (failover, the primary is gone): become the primary of
    /// the whole group, starting a new generation. On a primary (the old
    /// one, back after a failover): step down and become the secondary of
    /// the peer, its data discarded (the administrator said so): the new
    /// primary's next sync rewrites every chunk either side changed.
    pub fn takeover(&self, name: &str) -> RResult<Value> {
        let c = self.set_config(name)?;
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
                    let set = self.promote(&mut nc)?;
                    set.scoreboard
                        .update_generations(|g| g.begin_new())
                        .map_err(ReplError::Failed)?;
                    set.set_peer_lost(true);
                    done.push(nc);
                }
                self.store_sets(&done)?;
                self.publish(
                    "repl.takeover",
                    &names.join(","),
                    format!("this node is now the primary; {} is to be demoted", c.peer),
                );
            }
            ReplRole::Primary => {
                let _r = self.reserve(&names)?;
                self.step_down_reserved(&names, true, "demoted by `repl swap --force`")?;
            }
        }
        self.info(name)
    }

    /// The configured sets of `c`'s group (or `c` alone).
    fn config_group(&self, c: &ReplSetConfig) -> RResult<Vec<ReplSetConfig>> {
        let key = link_key(c);
        Ok(self
            .config()?
            .sets
            .into_iter()
            .filter(|x| link_key(x) == key && x.role == c.role)
            .collect())
    }

    /// Turn secondary set `c` into a primary replicating to `c.peer`: the
    /// guard leaves the volume; its scoreboard (generations, and any bits
    /// it kept) records every write from now on. `c` is updated; the
    /// caller stores it.
    pub(super) fn promote(&self, c: &mut ReplSetConfig) -> RResult<Arc<ReplSet>> {
        self.host()?
            .volume(&c.volume)?
            .detach(SECONDARY_LAYER)
            .map_err(|e| ReplError::Failed(e.to_string()))?;
        self.secondaries.lock().remove(&c.name);
        c.role = ReplRole::Primary;
        c.suspended = false;
        c.split_brain = false;
        if c.scoreboard.is_none() {
            c.scoreboard = Some(self.scoreboard_path(&c.name)?);
        }
        let set = self.open_primary(c, None)?;
        set.set_peer_lost(false);
        Ok(set)
    }

    /// Step down: these primary sets become secondaries of their peer.
    /// `discard`: this side's data is to be replaced (generation 0).
    pub(super) fn step_down(&self, names: &[String], discard: bool, why: &str) -> RResult<()> {
        let _r = self.reserve(names)?;
        self.step_down_reserved(names, discard, why)
    }

    fn step_down_reserved(&self, names: &[String], discard: bool, why: &str) -> RResult<()> {
        let mut done = Vec::new();
        for n in names {
            let c = self.set_config(n)?;
            if c.role != ReplRole::Primary {
                continue;
            }
            if let Some(set) = self.primary(n) {
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
            }
            self.drop_primary(&c);
            let mut nc = c.clone();
            nc.role = ReplRole::Secondary;
            nc.suspended = false;
            nc.split_brain = false;
            self.open_secondary(&nc, None)?;
            done.push(nc);
        }
        self.store_sets(&done)?;
        if !done.is_empty() {
            self.publish(
                "repl.demoted",
                &names.join(","),
                format!("this node is now a secondary: {why}"),
            );
        }
        Ok(())
    }

    /// `repl resolve SET --discard here|peer`: end a split brain. The
    /// discarded side becomes (or stays) the secondary with generation 0;
    /// the other side leaves `split brain` and its autosync runs an update
    /// sync from the union of both sides' bitmaps.
    pub fn resolve(&self, name: &str, discard: Discard) -> RResult<Value> {
        let c = self.set_config(name)?;
        let group = self.config_group(&c)?;
        let names: Vec<String> = group.iter().map(|c| c.name.clone()).collect();
        let mut note = String::new();
        match discard {
            Discard::Here => {
                self.discard_here(&names)?;
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
                self.resume(&names)?;
            }
        }
        self.publish(
            "repl.resolved",
            &names.join(","),
            match discard {
                Discard::Here => "this side's data was discarded".to_owned(),
                Discard::Peer => "the peer's data was discarded".to_owned(),
            },
        );
        let mut v = self.info(name)?;
        v["note"] = json!(note);
        Ok(v)
    }

    /// This side's data goes: step down (a primary) or mark generation 0
    /// (a secondary).
    pub(super) fn discard_here(&self, names: &[String]) -> RResult<()> {
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
    pub(super) fn resume(&self, names: &[String]) -> RResult<()> {
        let _r = self.reserve(names)?;
        for n in names {
            if let Some(s) = self.primary(n) {
                s.set_state(SetState::Logging, "split brain resolved");
                s.suspended.store(false, Ordering::SeqCst);
                *s.last_error.lock() = None;
                s.set_peer_lost(true);
            }
        }
        self.commit(
            |rc| {
                for c in rc.sets.iter_mut().filter(|c| names.contains(&c.name)) {
                    c.split_brain = false;
                    c.suspended = false;
                }
                Ok(())
            },
            || {},
        )
    }
}
