//! [`Replication`]: the replication service's facade. One per daemon (or
//! test). It owns the runtime registry (primary sets, their links, the
//! secondary sets, the listener) and runs every operation; the daemon's
//! admin adapter (`control/daemon/repl.rs`) only parses requests and maps
//! errors.
//!
//! What the service needs from its daemon (volumes, the persisted
//! configuration, imaging for safety snapshots, events) comes through the
//! [`Host`] trait. The service never holds a lock of its own or of the
//! host across a network call or a quiesce: an operation reserves the
//! names of the sets it changes ([`Reservation`]), talks to the peer with
//! nothing locked, then commits runtime and configuration together
//! ([`Replication::commit`]).
//!
//! * `ops.rs`: admin operations (setup, peers, enable, sync, log, wait,
//!   disable, resolve).
//! * `sync.rs`: the link manager (autosync, scoreboard cleaning) and the
//!   forward and reverse sync engines.
//! * `roles.rs`: swap, forced takeover and demotion, split-brain
//!   resolution.
//! * `handler.rs`: this node's answers to its peers.

use super::config::{ReplConfig, ReplRole, ReplSetConfig};
use super::error::{RResult, ReplError};
use super::generation::Generations;
use super::link::{Link, QueueLimits};
use super::peer::Listener;
use super::scoreboard::{self, Scoreboard};
use super::secondary::{LinkTable, SecondaryGuard, SecondarySet, SECONDARY_LAYER};
use super::set::{primary_layer, Legs, PrimaryLayer, ReplSet};
use super::{NodeCtx, Notifier, SetState};
use crate::backend::{EngineKind, FileBackend, FileOptions};
use crate::device::BlockDevice;
use crate::interposer::Volume;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// What the replication service needs from the daemon it runs in.
pub trait Host: Send + Sync {
    /// An online volume.
    fn volume(&self, name: &str) -> RResult<Arc<Volume>>;
    /// The replication configuration as persisted.
    fn repl_config(&self) -> Option<ReplConfig>;
    /// Change the replication configuration with `edit` and persist it.
    /// When `edit` or persisting fails, the configuration is as before.
    fn edit_repl_config(
        &self,
        edit: &mut dyn FnMut(&mut Option<ReplConfig>) -> RResult<()>,
    ) -> RResult<()>;
    /// The address of a read-write export of `volume`, if any.
    fn read_write_export(&self, volume: &str) -> Option<String>;
    /// `volume` is the shadow of an image set.
    fn is_image_shadow(&self, volume: &str) -> bool;
    /// Take a dependent snapshot `name` (an image set and a volume of the
    /// same name) of `volume`, copying `chunk_bytes` at a first touch.
    fn snapshot_take(&self, name: &str, volume: &str, chunk_bytes: u32) -> RResult<()>;
    /// Remove snapshot `name` (image set, volume and file), whichever of
    /// them exist; the file only once its volume is gone.
    fn snapshot_drop(&self, name: &str) -> RResult<()>;
    /// Bring `volume` (the master of image set `name`) back to the
    /// image's point in time and wait until the copy is done.
    fn snapshot_restore(&self, name: &str) -> RResult<()>;
    /// The listen addresses of `volume`'s NBD exports that are (not)
    /// read-only.
    fn nbd_exports(&self, volume: &str, read_only: bool) -> Vec<String>;
    /// Export `volume` over NBD on `listen`.
    fn export_nbd(&self, volume: &str, listen: &str, read_only: bool) -> RResult<()>;
    /// Stop `volume`'s NBD export.
    fn export_remove(&self, volume: &str) -> RResult<()>;
    /// Publish an event.
    fn publish(&self, kind: &str, object: &str, note: crate::services::Note);
    fn data_dir(&self) -> PathBuf;
    fn stopping(&self) -> bool;
}

/// A secondary set and its scoreboard (which holds the generations and,
/// on a demoted former primary, the chunks it wrote that the peer lacks).
#[derive(Clone)]
pub(super) struct SecondaryEntry {
    pub set: Arc<SecondarySet>,
    pub scoreboard: Arc<Scoreboard>,
}

/// The replication service of one node.
pub struct Replication {
    pub(super) ctx: Arc<NodeCtx>,
    pub(super) listener: Mutex<Option<Listener>>,
    /// Primary sets by name, each with one leg per secondary.
    pub(super) primaries: Mutex<HashMap<String, Arc<Legs>>>,
    /// Links by [`link_id`]: one per consistency group and secondary.
    pub(super) links: Mutex<HashMap<String, Arc<Link>>>,
    pub(super) secondaries: Mutex<HashMap<String, SecondaryEntry>>,
    pub(super) table: LinkTable,
    /// Set names an operation is changing right now.
    reserved: Mutex<HashSet<String>>,
    /// Whether this node reaches its cluster's etcd (the cluster agent
    /// answers; none: not in a cluster), for peers' `cluster_probe`.
    pub(super) cluster_probe: OnceLock<Box<dyn Fn() -> Option<bool> + Send + Sync>>,
    /// Set by the cluster agent; every sync-mode leg asks it before it
    /// acknowledges a write without its peer.
    pub(super) outdater: Arc<OnceLock<super::Outdater>>,
    host: OnceLock<Weak<dyn Host>>,
    me: Weak<Replication>,
    /// The link manager thread runs (manager.rs; started with the first
    /// link).
    pub(super) manager_started: std::sync::atomic::AtomicBool,
}

/// Names held by one operation; released on drop.
pub(super) struct Reservation<'a> {
    owner: &'a Replication,
    names: Vec<String>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut r = self.owner.reserved.lock();
        for n in &self.names {
            r.remove(n);
        }
    }
}

pub(super) fn sb_options() -> FileOptions {
    FileOptions {
        engine: EngineKind::Sync,
        direct: false,
        ..Default::default()
    }
}

/// The link key of a set: its consistency group, or the set alone (the
/// group name a link announces; a secondary has one link per key).
pub(super) fn link_key(c: &ReplSetConfig) -> String {
    c.group.clone().unwrap_or_else(|| format!("set:{}", c.name))
}

/// The group a set belongs to for `group` operations: its consistency
/// group, or the set itself.
pub(super) fn group_name(c: &ReplSetConfig) -> &str {
    c.group.as_deref().unwrap_or(&c.name)
}

/// Which link a primary leg uses: its group's toward its secondary.
pub(super) fn link_id(c: &ReplSetConfig) -> String {
    format!("{}@{}", link_key(c), c.peer_node)
}

impl Replication {
    pub fn new() -> Arc<Replication> {
        Arc::new_cyclic(|me| Replication {
            ctx: Arc::new(NodeCtx::default()),
            listener: Mutex::new(None),
            primaries: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            secondaries: Mutex::new(HashMap::new()),
            table: LinkTable::default(),
            reserved: Mutex::new(HashSet::new()),
            cluster_probe: OnceLock::new(),
            outdater: Arc::new(OnceLock::new()),
            host: OnceLock::new(),
            me: me.clone(),
            manager_started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Give the service its host (once, right after the daemon exists).
    pub fn bind_host(&self, host: Weak<dyn Host>) {
        let _ = self.host.set(host);
        self.ctx.set_notifier(self.notifier());
    }

    pub(super) fn host(&self) -> RResult<Arc<dyn Host>> {
        self.host
            .get()
            .and_then(|w| w.upgrade())
            .ok_or_else(|| ReplError::Failed("the daemon is stopping".into()))
    }

    pub(super) fn me(&self) -> Weak<Replication> {
        self.me.clone()
    }

    pub(super) fn stopping(&self) -> bool {
        self.host().map(|h| h.stopping()).unwrap_or(true)
    }

    pub(super) fn notifier(&self) -> Notifier {
        let host = self.host.get().cloned();
        Arc::new(move |kind: &str, obj: &str, note: crate::services::Note| {
            if let Some(h) = host.as_ref().and_then(|w| w.upgrade()) {
                h.publish(kind, obj, note);
            }
        })
    }

    pub fn publish(&self, kind: &str, obj: &str, note: impl Into<crate::services::Note>) {
        if let Ok(h) = self.host() {
            h.publish(kind, obj, note.into());
        }
    }

    pub fn node_name(&self) -> String {
        self.ctx.name()
    }

    pub fn listen_addr(&self) -> Option<String> {
        self.listener.lock().as_ref().map(|l| l.addr.clone())
    }

    /// Reserve `names` for one operation, or say which is busy.
    pub(super) fn reserve(&self, names: &[String]) -> RResult<Reservation<'_>> {
        let mut r = self.reserved.lock();
        if let Some(n) = names.iter().find(|n| r.contains(*n)) {
            return Err(ReplError::Busy(format!(
                "replication set {n}: another operation on it is running; retry when it ends"
            )));
        }
        r.extend(names.iter().cloned());
        Ok(Reservation {
            owner: self,
            names: names.to_vec(),
        })
    }

    // ----- configuration ------------------------------------------------

    pub(super) fn config(&self) -> RResult<ReplConfig> {
        self.host()?
            .repl_config()
            .ok_or_else(ReplError::no_identity)
    }

    /// Set `name`'s configuration (on a primary: its first leg's).
    pub(super) fn set_config(&self, name: &str) -> RResult<ReplSetConfig> {
        self.config()?
            .sets
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ReplError::no_set(name))
    }

    /// Every configuration entry of set `name`: one per leg on a primary.
    pub(super) fn leg_configs(&self, name: &str) -> RResult<Vec<ReplSetConfig>> {
        let v: Vec<_> = self
            .config()?
            .sets
            .into_iter()
            .filter(|s| s.name == name)
            .collect();
        if v.is_empty() {
            return Err(ReplError::no_set(name));
        }
        Ok(v)
    }

    /// The configuration of set `name`'s leg toward `secondary`, or its
    /// only leg when `secondary` is not given.
    pub(super) fn leg_config(&self, name: &str, secondary: Option<&str>) -> RResult<ReplSetConfig> {
        let legs = self.leg_configs(name)?;
        pick_leg(name, legs, secondary, |c| c.peer_node.clone())
    }

    /// The one way runtime and configuration change together: `edit` the
    /// configuration and persist it; when that fails, `undo` reverts the
    /// runtime change the caller already made, and the error is returned.
    pub(super) fn commit(
        &self,
        mut edit: impl FnMut(&mut ReplConfig) -> RResult<()>,
        undo: impl FnOnce(),
    ) -> RResult<()> {
        let r = self.host().and_then(|h| {
            h.edit_repl_config(&mut |rc| match rc.as_mut() {
                Some(rc) => edit(rc),
                None => Err(ReplError::no_identity()),
            })
        });
        if r.is_err() {
            undo();
        }
        r
    }

    /// Put `changed` in place of every entry of the sets of the same
    /// names (role changes, whose runtime side cannot be undone once the
    /// peer took part; a promotion turns one entry into one per leg, a
    /// demotion the legs into one).
    pub(super) fn store_sets(&self, changed: &[ReplSetConfig]) -> RResult<()> {
        self.commit(
            |rc| {
                rc.sets
                    .retain(|x| !changed.iter().any(|c| c.name == x.name));
                rc.sets.extend(changed.iter().cloned());
                Ok(())
            },
            || {},
        )
    }

    /// Change the entries of leg (or secondary set) `name`/`peer_node`.
    pub(super) fn edit_leg(
        &self,
        name: &str,
        peer_node: &str,
        mut f: impl FnMut(&mut ReplSetConfig),
    ) -> RResult<()> {
        self.commit(
            |rc| {
                for c in rc.sets.iter_mut().filter(|c| c.is(name, peer_node)) {
                    f(c);
                }
                Ok(())
            },
            || {},
        )
    }

    /// Where set `name`'s scoreboard lives (either role; on a primary the
    /// first leg's).
    pub(super) fn scoreboard_path(&self, name: &str) -> RResult<PathBuf> {
        Ok(self.host()?.data_dir().join(format!("{name}.scoreboard")))
    }

    /// A scoreboard path for a new leg of set `name` toward `node`: the
    /// set's own when no leg uses it, else one named after the node.
    pub(super) fn leg_scoreboard_path(&self, name: &str, node: &str) -> RResult<PathBuf> {
        let first = self.scoreboard_path(name)?;
        let used = self
            .config()
            .map(|rc| {
                rc.sets
                    .iter()
                    .any(|c| c.name == name && c.scoreboard.as_ref() == Some(&first))
            })
            .unwrap_or(false);
        if used || first.exists() {
            Ok(self
                .host()?
                .data_dir()
                .join(format!("{name}.{node}.scoreboard")))
        } else {
            Ok(first)
        }
    }

    /// Forget set `c` on this side: its layer and runtime state, its
    /// scoreboard file and its configuration entry.
    pub(super) fn forget(&self, c: &ReplSetConfig) -> RResult<()> {
        match c.role {
            ReplRole::Primary => self.drop_primary(c),
            ReplRole::Secondary => self.drop_secondary(c),
        }
        if let Some(p) = &c.scoreboard {
            let _ = std::fs::remove_file(p);
        }
        self.commit(
            |rc| {
                rc.sets.retain(|s| !s.is(&c.name, &c.peer_node));
                Ok(())
            },
            || {},
        )
    }

    // ----- start and stop -----------------------------------------------

    /// At start: node, peers, listener, then every set. Failures are
    /// logged and returned per set (the daemon shows them).
    pub fn restore(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let Ok(rc) = self.config() else {
            return errors;
        };
        self.ctx.set_name(&rc.node);
        for p in &rc.peers {
            match std::fs::read(&p.secret_file) {
                Ok(s) => self.ctx.set_secret(&p.name, Some(trim_secret(s))),
                Err(e) => log::error!(
                    "replication peer {}: secret file {}: {e}",
                    p.name,
                    p.secret_file.display()
                ),
            }
        }
        if let Some(l) = &rc.listen {
            if let Err(e) = self.start_listener(l) {
                log::error!("{e}");
            }
        }
        for sc in &rc.sets {
            let r = match sc.role {
                ReplRole::Primary => self.open_primary(sc, None, &[]).map(|_| ()),
                // Secondaries of configurations before generations had no
                // scoreboard: give them one (generation 0: any primary).
                ReplRole::Secondary if sc.scoreboard.is_none() => {
                    let mut c = sc.clone();
                    self.scoreboard_path(&c.name).and_then(|p| {
                        c.scoreboard = Some(p);
                        self.open_secondary(&c, Some(Generations::default()), &[])?;
                        self.store_sets(&[c.clone()])
                    })
                }
                ReplRole::Secondary => self.open_secondary(sc, None, &[]).map(|_| ()),
            };
            if let Err(e) = r {
                log::error!("replication set {} not restored: {e}", sc.name);
                errors.push((sc.name.clone(), e.to_string()));
            }
        }
        errors
    }

    pub(super) fn start_listener(&self, addr: &str) -> RResult<String> {
        let handler = Arc::new(super::handler::Handler(self.me()));
        let l = Listener::start(self.ctx.clone(), addr, handler).map_err(ReplError::Failed)?;
        let bound = l.addr.clone();
        *self.listener.lock() = Some(l);
        log::info!("replication listener on {bound}");
        Ok(bound)
    }

    /// Stop replication at shutdown: links close (sets resume in logging
    /// and autosync at the next start), scoreboards are cleaned.
    pub fn shutdown(&self) {
        if let Some(mut l) = self.listener.lock().take() {
            l.stop();
        }
        let links: Vec<_> = self.links.lock().drain().map(|(_, l)| l).collect();
        for link in links {
            link.stop.store(true, Ordering::SeqCst);
            let _ = link.drain_for(Duration::from_secs(5));
            link.close("daemon shutting down");
        }
        self.table.stop_all();
        let sets: Vec<_> = self
            .primaries
            .lock()
            .values()
            .flat_map(|l| l.all())
            .collect();
        for s in sets {
            if let Err(e) = s.scoreboard.clean() {
                log::error!("replication set {}: scoreboard at shutdown: {e}", s.name);
            }
        }
    }

    // ----- primary sets -------------------------------------------------

    /// Open a primary leg: scoreboard, link, layer. `create`: a new
    /// scoreboard with these generations, every chunk out of sync or none.
    ///
    /// `replacing`: layers this one takes the place of, in the same
    /// quiesce (a promoted secondary's guard): the volume never serves a
    /// write with neither layer in its stack.
    pub(super) fn open_primary(
        &self,
        c: &ReplSetConfig,
        create: Option<(bool, Generations)>,
        replacing: &[&str],
    ) -> RResult<Arc<ReplSet>> {
        let host = self.host()?;
        let volume = host.volume(&c.volume)?;
        let size = volume.size_bytes();
        let path = c.scoreboard.clone().ok_or_else(|| {
            ReplError::Failed(format!("replication set {}: no scoreboard path", c.name))
        })?;
        let sb = match &create {
            Some((all_out_of_sync, gens)) => {
                create_scoreboard(&path, &c.name, size, *all_out_of_sync, gens.clone())?
            }
            None => open_scoreboard(&path, &c.name, size)?,
        };
        let key = link_key(c);
        let id = link_id(c);
        let legs = self.primaries.lock().get(&c.name).cloned();
        if let Some(l) = &legs {
            if l.get(&c.peer_node).is_some() {
                return Err(ReplError::Exists(format!(
                    "replication set {} already replicates to node {}",
                    c.name, c.peer_node
                )));
            }
        }
        let link = {
            let mut links = self.links.lock();
            let mut fresh = None;
            let l = links
                .entry(id.clone())
                .or_insert_with(|| {
                    let l = Link::new(
                        self.ctx.clone(),
                        &key,
                        &c.peer,
                        c.mode,
                        Duration::from_millis(c.timeout_ms),
                        QueueLimits {
                            bytes: c.queue_bytes,
                            items: c.queue_items,
                            on_full: c.on_queue_full,
                            max_lag_bytes: c.max_lag_bytes,
                            max_lag: c.max_lag_ms.map(Duration::from_millis),
                        },
                    );
                    fresh = Some(l.clone());
                    l
                })
                .clone();
            drop(links);
            if let Some(l) = fresh {
                self.manage(&l);
            }
            l
        };
        if link.peer_addr != c.peer || link.mode != c.mode {
            return Err(ReplError::Invalid(format!(
                "replication set {}: group {} replicates to {} in {} mode; all sets of a group share peer and mode",
                c.name,
                key,
                link.peer_addr,
                link.mode.as_str()
            )));
        }
        let legs = legs.unwrap_or_default();
        let id = link.sets().iter().map(|s| s.id + 1).max().unwrap_or(0);
        let set = Arc::new(ReplSet::new(
            &c.name,
            &c.peer_node,
            &legs,
            id,
            &c.volume,
            &c.remote_volume,
            size,
            c.mode,
            c.on_peer_loss,
            c.autosync,
            sb,
            link.clone(),
            SetState::Logging,
            Some(self.notifier()),
        ));
        set.suspended.store(c.suspended, Ordering::SeqCst);
        set.set_outdater(group_name(c), self.outdater.clone());
        set.sync_rate
            .store(c.sync_rate.unwrap_or(0), Ordering::SeqCst);
        if c.split_brain {
            set.set_state(SetState::SplitBrain, "split brain (before the restart)");
        }
        // After a restart an unsuspended set wants its peer back: autosync.
        if create.is_none() && !c.suspended && c.autosync {
            set.set_peer_lost(true);
        }
        exchange_layers(&volume, replacing, Arc::new(PrimaryLayer::new(set.clone())))?;
        link.add_set(set.clone());
        legs.push(set.clone());
        self.primaries.lock().insert(c.name.clone(), legs);
        Ok(set)
    }

    /// Remove a primary leg's layer and runtime state (not the config).
    pub(super) fn drop_primary(&self, c: &ReplSetConfig) {
        let set = {
            let mut p = self.primaries.lock();
            let set = p.get(&c.name).and_then(|l| l.remove(&c.peer_node));
            if p.get(&c.name).is_some_and(|l| l.is_empty()) {
                p.remove(&c.name);
            }
            set
        };
        if let Some(set) = &set {
            let link = set.link().clone();
            link.remove_set(&c.name);
            if link.sets().is_empty() {
                link.stop.store(true, Ordering::SeqCst);
                link.close("set disabled");
                self.links.lock().remove(&link_id(c));
            }
        }
        if let Ok(v) = self.host().and_then(|h| h.volume(&c.volume)) {
            let layer = primary_layer(&c.peer_node);
            // A step-down exchanged it for the guard already.
            if !v.service_names().contains(&layer) {
                return;
            }
            if let Err(e) = v.detach(&layer) {
                log::error!(
                    "replication set {}: removing the layer toward {}: {e}",
                    c.name,
                    c.peer_node
                );
            }
        }
    }

    /// Set `name`'s first leg, when this node is its primary.
    pub(super) fn primary(&self, name: &str) -> Option<Arc<ReplSet>> {
        self.legs(name).into_iter().next()
    }

    /// Every leg of primary set `name` (bottom of the stack first).
    pub(super) fn legs(&self, name: &str) -> Vec<Arc<ReplSet>> {
        self.primaries
            .lock()
            .get(name)
            .map(|l| l.all())
            .unwrap_or_default()
    }

    /// Primary set `name`'s leg toward `secondary`, or its only leg.
    pub(super) fn leg(&self, name: &str, secondary: Option<&str>) -> RResult<Arc<ReplSet>> {
        let legs = self.legs(name);
        if legs.is_empty() {
            return Err(if self.set_config(name).is_ok() {
                ReplError::Invalid(format!(
                    "replication set {name} is not a primary on this node (manage sets from the primary)"
                ))
            } else {
                ReplError::no_set(name)
            });
        }
        pick_leg(name, legs, secondary, |s| s.peer_node.clone())
    }

    /// The sets that move together with `name`'s leg toward `secondary`
    /// (its consistency group on that link).
    pub(super) fn group_of(
        &self,
        name: &str,
        secondary: Option<&str>,
    ) -> RResult<Vec<Arc<ReplSet>>> {
        Ok(self.leg(name, secondary)?.link().sets())
    }

    // ----- secondary sets -----------------------------------------------

    /// Open a secondary set: guard layer and scoreboard. `create`: a new
    /// scoreboard with these generations.
    ///
    /// `replacing`: the primary layers the guard takes the place of, in
    /// the same quiesce (a step-down): no write reaches the volume
    /// untracked between the two.
    pub(super) fn open_secondary(
        &self,
        c: &ReplSetConfig,
        create: Option<Generations>,
        replacing: &[&str],
    ) -> RResult<SecondaryEntry> {
        let volume = self.host()?.volume(&c.volume)?;
        let size = volume.size_bytes();
        let path = c.scoreboard.clone().ok_or_else(|| {
            ReplError::Failed(format!("replication set {}: no scoreboard path", c.name))
        })?;
        let sb = match create {
            Some(g) => create_scoreboard(&path, &c.name, size, false, g)?,
            None => open_scoreboard(&path, &c.name, size)?,
        };
        let guard = Arc::new(SecondaryGuard::new(&c.volume));
        if !volume.service_names().iter().any(|n| n == SECONDARY_LAYER) {
            exchange_layers(&volume, replacing, guard.clone())?;
        }
        let sb = Arc::new(sb);
        let entry = SecondaryEntry {
            set: Arc::new(SecondarySet::new(
                &c.name,
                &c.volume,
                size,
                guard,
                sb.clone(),
            )),
            scoreboard: sb,
        };
        self.secondaries
            .lock()
            .insert(c.name.clone(), entry.clone());
        Ok(entry)
    }

    pub(super) fn drop_secondary(&self, c: &ReplSetConfig) {
        self.table.replace(&link_key(c), None);
        self.secondaries.lock().remove(&c.name);
        if let (Some(snap), Ok(h)) = (&c.safety_snapshot, self.host()) {
            if let Err(e) = h.snapshot_drop(snap) {
                log::warn!("replication set {}: safety snapshot {snap}: {e}", c.name);
            }
        }
        if let Ok(v) = self.host().and_then(|h| h.volume(&c.volume)) {
            let _ = v.detach(SECONDARY_LAYER);
        }
    }

    pub(super) fn secondary(&self, name: &str) -> RResult<SecondaryEntry> {
        self.secondaries.lock().get(name).cloned().ok_or_else(|| {
            ReplError::NotFound(format!(
                "no secondary set named {name} on node {}",
                self.ctx.name()
            ))
        })
    }

    /// This side's generations for set `c`, whatever its role.
    pub(super) fn generations_of(&self, name: &str) -> Option<Generations> {
        if let Some(p) = self.primary(name) {
            return Some(p.scoreboard.generations());
        }
        self.secondaries
            .lock()
            .get(name)
            .map(|e| e.scoreboard.generations())
    }

    // ----- what `repl list`, `repl info` and `repl status` show -----------

    pub fn list(&self) -> Vec<Value> {
        self.config()
            .map(|rc| rc.sets.iter().map(|c| self.set_json(c)).collect())
            .unwrap_or_default()
    }

    /// Set `name` as `repl info` shows it: on a primary the leg toward
    /// `secondary` (the first when not given) at the top level, and every
    /// leg under `peers`.
    pub fn info(&self, name: &str, secondary: Option<&str>) -> RResult<Value> {
        let legs = self.leg_configs(name)?;
        let chosen = match secondary {
            Some(_) => self.leg_config(name, secondary)?,
            None => legs[0].clone(),
        };
        let mut v = self.set_json(&chosen);
        if chosen.role == ReplRole::Primary {
            v["peers"] = Value::Array(legs.iter().map(|c| self.set_json(c)).collect());
        } else {
            v["peers"] = Value::Null;
        }
        Ok(v)
    }

    pub fn status(&self) -> Value {
        let rc = self
            .host()
            .ok()
            .and_then(|h| h.repl_config())
            .unwrap_or_default();
        json!({
            "node": rc.node,
            "listen": self.listen_addr(),
            "tls": format!("{:?}", super::tls::policy()).to_lowercase(),
            "peers": rc.peers.iter().map(|p| json!({
                "name": p.name,
                "secret_file": p.secret_file,
                "secret_loaded": self.ctx.secret(&p.name).is_some(),
            })).collect::<Vec<_>>(),
            "sets": rc.sets.len(),
        })
    }

    /// A set's leg as `repl info`/`list` show it: one shape whatever the
    /// role or state, every key of [`SET_KEYS`] present, null where it
    /// does not apply (a secondary has no lag, a primary applies nothing).
    fn set_json(&self, c: &ReplSetConfig) -> Value {
        let mut v = self.set_json_known(c);
        if let Value::Object(m) = &mut v {
            for k in SET_KEYS {
                m.entry(*k).or_insert(Value::Null);
            }
        }
        v
    }

    fn set_json_known(&self, c: &ReplSetConfig) -> Value {
        let mut v = json!({
            "name": c.name,
            "role": c.role,
            "volume": c.volume,
            "remote_volume": c.remote_volume,
            "peer": c.peer,
            "peer_node": c.peer_node,
            "mode": c.mode,
            "group": c.group,
            "on_peer_loss": c.on_peer_loss,
            "autosync": c.autosync,
            "suspended": c.suspended,
            "safety_snapshot": c.safety_snapshot,
            "generations": self.generations_of(&c.name),
        });
        match c.role {
            ReplRole::Primary => {
                let leg = self.primaries.lock().get(&c.name).cloned();
                let Some(s) = leg.and_then(|l| l.get(&c.peer_node)) else {
                    v["state"] = json!("offline");
                    return v;
                };
                let link = s.link();
                let (items, bytes, age) = link.lag();
                let chunks = s.scoreboard.chunks().max(1);
                let oos = s.scoreboard.oos_chunks();
                v["state"] = json!(s.state().as_str());
                v["link"] = json!(if link.is_up() { "up" } else { "down" });
                v["link_error"] = json!(link.down_reason());
                v["syncing"] = json!(link.syncing.load(Ordering::SeqCst));
                v["lag_bytes"] = json!(bytes);
                v["lag_writes"] = json!(items);
                v["lag_groups"] = json!(link.groups_outstanding());
                v["lag_seconds"] = json!(age);
                v["queue_depth"] = json!(items);
                v["out_of_sync_bytes"] = json!(s.scoreboard.oos_bytes());
                v["percent_synced"] = json!(
                    ((chunks - oos.min(chunks)) as f64 * 100.0 / chunks as f64 * 100.0).round()
                        / 100.0
                );
                v["chunk_bytes"] = json!(s.scoreboard.chunk_bytes());
                v["writes"] = json!(s.stats.writes.load(Ordering::Relaxed));
                v["bytes"] = json!(s.stats.bytes.load(Ordering::Relaxed));
                v["sync_total_bytes"] = json!(s.stats.sync_total_bytes.load(Ordering::Relaxed));
                v["sync_done_bytes"] = json!(s.stats.sync_done_bytes.load(Ordering::Relaxed));
                v["synced_chunks_total"] =
                    json!(s.stats.synced_chunks_total.load(Ordering::Relaxed));
                v["groups_sent"] = json!(link.stats.groups.load(Ordering::Relaxed));
                v["acked_writes"] = json!(link.stats.acked_writes.load(Ordering::Relaxed));
                v["connects"] = json!(link.stats.reconnects.load(Ordering::Relaxed));
                v["blocked_writers"] = json!(link.stats.blocked_writers.load(Ordering::Relaxed));
                v["throttled_writers"] =
                    json!(link.stats.throttled_writers.load(Ordering::Relaxed));
                v["max_lag_bytes"] = json!(c.max_lag_bytes);
                v["max_lag_ms"] = json!(c.max_lag_ms);
                v["sync_rate"] = json!(match s.sync_rate.load(Ordering::Relaxed) {
                    0 => None,
                    r => Some(r),
                });
                v["last_error"] = json!(*s.last_error.lock());
                v["verify"] = json!(*s.verify.lock());
            }
            ReplRole::Secondary => match self.secondaries.lock().get(&c.name).cloned() {
                Some(e) => {
                    let s = &e.set;
                    v["state"] = json!(if c.safety_snapshot.is_some() {
                        "sync target"
                    } else {
                        "target"
                    });
                    v["link"] = json!(if s.connected.load(Ordering::SeqCst) {
                        "up"
                    } else {
                        "down"
                    });
                    v["applied_writes"] = json!(s.applied_writes.load(Ordering::Relaxed));
                    v["applied_bytes"] = json!(s.applied_bytes.load(Ordering::Relaxed));
                    v["last_seq"] = json!(s.last_seq.load(Ordering::Relaxed));
                    v["out_of_sync_bytes"] = json!(e.scoreboard.oos_bytes());
                    v["members"] = json!(c.members);
                }
                None => v["state"] = json!("offline"),
            },
        }
        v
    }
}

/// Every key of a set's JSON, primary or secondary (`set_json`).
const SET_KEYS: &[&str] = &[
    "name",
    "role",
    "volume",
    "remote_volume",
    "peer",
    "peer_node",
    "mode",
    "group",
    "on_peer_loss",
    "autosync",
    "suspended",
    "safety_snapshot",
    "generations",
    "state",
    "link",
    "link_error",
    "syncing",
    "lag_bytes",
    "lag_writes",
    "lag_groups",
    "lag_seconds",
    "queue_depth",
    "out_of_sync_bytes",
    "percent_synced",
    "chunk_bytes",
    "writes",
    "bytes",
    "sync_total_bytes",
    "sync_done_bytes",
    "synced_chunks_total",
    "groups_sent",
    "acked_writes",
    "connects",
    "blocked_writers",
    "throttled_writers",
    "max_lag_bytes",
    "max_lag_ms",
    "sync_rate",
    "last_error",
    "verify",
    "applied_writes",
    "applied_bytes",
    "last_seq",
    "members",
];

/// Pick the leg toward `secondary` out of `legs` (all of set `name`), or
/// the only one; several legs and no choice is an error naming them.
fn pick_leg<T>(
    name: &str,
    mut legs: Vec<T>,
    secondary: Option<&str>,
    node: impl Fn(&T) -> String,
) -> RResult<T> {
    match secondary {
        Some(n) => {
            let i = legs.iter().position(|l| node(l) == n).ok_or_else(|| {
                ReplError::NotFound(format!(
                    "replication set {name} has no secondary {n} (it has {})",
                    legs.iter().map(&node).collect::<Vec<_>>().join(", ")
                ))
            })?;
            Ok(legs.swap_remove(i))
        }
        None if legs.len() == 1 => Ok(legs.remove(0)),
        None => Err(ReplError::Invalid(format!(
            "replication set {name} has {} secondaries ({}); say which with --secondary NODE",
            legs.len(),
            legs.iter().map(&node).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn create_scoreboard(
    path: &Path,
    set: &str,
    size: u64,
    all_out_of_sync: bool,
    gens: Generations,
) -> RResult<Scoreboard> {
    let chunk = scoreboard::chunk_bytes_for(size);
    let dev = FileBackend::create(path, scoreboard::file_bytes_for(size, chunk), sb_options())
        .map_err(|e| ReplError::Failed(format!("replication set {set}: scoreboard: {e}")))?;
    Scoreboard::create(Arc::new(dev), set, size, chunk, all_out_of_sync, gens)
        .map_err(ReplError::Failed)
}

pub(super) fn open_scoreboard(path: &Path, set: &str, size: u64) -> RResult<Scoreboard> {
    let dev = FileBackend::open(path, sb_options())
        .map_err(|e| ReplError::Failed(format!("replication set {set}: scoreboard: {e}")))?;
    Scoreboard::open(Arc::new(dev), set, size).map_err(ReplError::Failed)
}

pub(super) fn trim_secret(mut s: Vec<u8>) -> Vec<u8> {
    while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
        s.pop();
    }
    s
}

/// Put `add` on top of `volume`'s stack and take out the layers named in
/// `remove` (those present) in one quiesce, so no request sees the stack
/// without both (a role change never leaves a window where writes pass
/// untracked and unrefused).
fn exchange_layers(
    volume: &crate::interposer::Volume,
    remove: &[&str],
    add: Arc<dyn crate::interposer::Service>,
) -> RResult<()> {
    let mut g = volume
        .quiesce(&format!("attach {}", add.name()))
        .map_err(|e| ReplError::Failed(e.to_string()))?;
    let present: Vec<String> = g.services().iter().map(|s| s.name().to_owned()).collect();
    for r in remove.iter().filter(|r| present.iter().any(|p| p == *r)) {
        g.remove(r).map_err(|e| ReplError::Failed(e.to_string()))?;
    }
    g.push(add).map_err(|e| ReplError::Failed(e.to_string()))
}
