//! The replication service's admin operations. Each one validates, reserves
//! the sets it changes, talks to the peer with nothing locked, then commits
//! runtime and configuration together.

use super::config::{Member, PeerConfig, ReplConfig, ReplRole, ReplSetConfig};
use super::error::{RResult, ReplError};
use super::generation::Generations;
use super::peer;
use super::requests::PeerRequest;
use super::runtime::{trim_secret, Replication};
use super::set::MAX_SECONDARIES;
use super::{Mode, PeerLoss, QueueFull, SetState};
use crate::control::validate_name;
use crate::device::BlockDevice;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A peer that stops answering is declared lost after this long.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The async/hybrid queue: 64 MiB or 16k writes (about 1 s of a fast
/// NVMe's 4 KiB writes), whichever fills first.
pub const DEFAULT_QUEUE_BYTES: u64 = 64 << 20;
pub const DEFAULT_QUEUE_ITEMS: usize = 16_384;
/// Longest a single `repl.wait` request blocks; the CLI loops for longer.
const MAX_WAIT_MS: u64 = 60_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableOptions {
    pub name: String,
    pub local: String,
    pub peer: String,
    pub remote: String,
    pub mode: Mode,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub no_sync: bool,
    #[serde(default)]
    pub no_autosync: bool,
    #[serde(default)]
    pub on_peer_loss: Option<PeerLoss>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub queue_bytes: Option<u64>,
    #[serde(default)]
    pub queue_items: Option<usize>,
    #[serde(default)]
    pub on_queue_full: Option<QueueFull>,
    /// Writers wait while the peer lags more than this (async, hybrid).
    #[serde(default)]
    pub max_lag_bytes: Option<u64>,
    #[serde(default)]
    pub max_lag_ms: Option<u64>,
    /// Resync bandwidth limit, bytes per second.
    #[serde(default)]
    pub sync_rate: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncOptions {
    pub name: String,
    /// The secondary to sync (needed when the set has several).
    #[serde(default)]
    pub secondary: Option<String>,
    #[serde(default)]
    pub full: bool,
    #[serde(default)]
    pub reverse: bool,
    #[serde(default)]
    pub force: bool,
    /// Send only the chunks whose checksums differ from the peer's.
    #[serde(default)]
    pub checksum: bool,
}

/// `repl tune`: change a running set's resync rate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneOptions {
    pub name: String,
    #[serde(default)]
    pub secondary: Option<String>,
    /// Bytes per second; 0 removes the limit.
    pub sync_rate: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitOptions {
    pub name: String,
    #[serde(default)]
    pub secondary: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl Replication {
    pub fn setup(&self, node: &str, listen: Option<&str>) -> RResult<Value> {
        validate_name(node).map_err(|e| ReplError::Invalid(format!("node: {e}")))?;
        let host = self.host()?;
        let before = host.repl_config().unwrap_or_default();
        if !before.sets.is_empty() && before.node != node {
            return Err(ReplError::Busy(format!(
                "node {} has replication sets; its name cannot change to {node}",
                before.node
            )));
        }
        let mut bound = before.listen.clone();
        if let Some(l) = listen.filter(|l| Some(*l) != before.listen.as_deref()) {
            if let Some(mut old) = self.listener.lock().take() {
                old.stop();
            }
            match self.start_listener(l) {
                Ok(b) => bound = Some(b),
                Err(e) => {
                    if let Some(prev) = &before.listen {
                        let _ = self.start_listener(prev);
                    }
                    return Err(e);
                }
            }
        }
        let node_s = node.to_owned();
        let b2 = bound.clone();
        host.edit_repl_config(&mut |rc| {
            let rc = rc.get_or_insert_with(ReplConfig::default);
            rc.node = node_s.clone();
            rc.listen = b2.clone();
            Ok(())
        })?;
        self.ctx.set_name(node);
        Ok(json!({"node": node, "listen": bound}))
    }

    pub fn peer_add(&self, name: &str, secret_file: &std::path::Path) -> RResult<Value> {
        validate_name(name).map_err(|e| ReplError::Invalid(format!("peer: {e}")))?;
        let secret = std::fs::read(secret_file).map_err(|e| {
            ReplError::Invalid(format!(
                "peer {name}: secret file {}: {e}",
                secret_file.display()
            ))
        })?;
        let secret = trim_secret(secret);
        if secret.len() < 16 {
            return Err(ReplError::Invalid(format!(
                "peer {name}: the secret in {} is {} bytes; use at least 16 (e.g. `head -c 32 /dev/urandom | base64`)",
                secret_file.display(),
                secret.len()
            )));
        }
        let pc = PeerConfig {
            name: name.to_owned(),
            secret_file: secret_file.to_owned(),
        };
        self.commit(
            |rc| {
                rc.peers.retain(|p| p.name != pc.name);
                rc.peers.push(pc.clone());
                Ok(())
            },
            || {},
        )?;
        self.ctx.set_secret(name, Some(secret));
        Ok(json!({"name": name, "secret_file": secret_file}))
    }

    pub fn peer_remove(&self, name: &str) -> RResult<Value> {
        self.commit(
            |rc| {
                let before = rc.peers.len();
                rc.peers.retain(|p| p.name != name);
                if rc.peers.len() == before {
                    return Err(ReplError::NotFound(format!("no peer named {name}")));
                }
                Ok(())
            },
            || {},
        )?;
        self.ctx.set_secret(name, None);
        Ok(json!({"name": name}))
    }

    /// Create set `a.name` replicating `a.local` to the peer at `a.peer`,
    /// or, when this node is already its primary, add that peer as one
    /// more secondary (a leg of its own: mode, link, scoreboard, state).
    pub fn enable(&self, a: EnableOptions) -> RResult<Value> {
        validate_name(&a.name).map_err(|e| ReplError::Invalid(format!("replication set: {e}")))?;
        if let Some(g) = &a.group {
            validate_name(g).map_err(|e| ReplError::Invalid(format!("group: {e}")))?;
        }
        let host = self.host()?;
        let _r = self.reserve(&[a.name.clone(), format!("volume:{}", a.local)])?;
        let rc = self.config()?;
        let legs: Vec<&ReplSetConfig> = rc.sets.iter().filter(|s| s.name == a.name).collect();
        if let Some(first) = legs.first() {
            if first.role != ReplRole::Primary {
                return Err(ReplError::Exists(format!(
                    "replication set {} already exists here as a secondary",
                    a.name
                )));
            }
            if first.volume != a.local {
                return Err(ReplError::Invalid(format!(
                    "replication set {} replicates volume {}, not {}",
                    a.name, first.volume, a.local
                )));
            }
            if first.group != a.group {
                return Err(ReplError::Invalid(format!(
                    "replication set {} is in group {}; every secondary of a set shares its group",
                    a.name,
                    first.group.as_deref().unwrap_or("(none)")
                )));
            }
            if let Some(l) = legs.iter().find(|l| l.peer == a.peer) {
                return Err(ReplError::Exists(format!(
                    "replication set {} already replicates to {} (node {})",
                    a.name, a.peer, l.peer_node
                )));
            }
            if legs.len() >= MAX_SECONDARIES {
                return Err(ReplError::Invalid(format!(
                    "replication set {} has {} secondaries, the most a set can have",
                    a.name,
                    legs.len()
                )));
            }
        } else if let Some(o) = rc.sets.iter().find(|s| s.volume == a.local) {
            return Err(ReplError::Busy(format!(
                "volume {} is already in replication set {}",
                a.local, o.name
            )));
        }
        let volume = host.volume(&a.local)?;
        let listen = self.listen_addr().ok_or_else(|| {
            ReplError::Invalid(
                "this node has no replication listener; `umbra repl setup --listen HOST:PORT`"
                    .into(),
            )
        })?;
        let mut c = ReplSetConfig {
            name: a.name.clone(),
            role: ReplRole::Primary,
            volume: a.local.clone(),
            remote_volume: a.remote.clone(),
            peer: a.peer.clone(),
            peer_node: String::new(),
            mode: a.mode,
            group: a.group.clone(),
            on_peer_loss: a.on_peer_loss.unwrap_or_default(),
            autosync: !a.no_autosync,
            suspended: false,
            scoreboard: None,
            timeout_ms: a.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).max(500),
            queue_bytes: a.queue_bytes.unwrap_or(DEFAULT_QUEUE_BYTES).max(1 << 20),
            queue_items: a.queue_items.unwrap_or(DEFAULT_QUEUE_ITEMS).max(16),
            on_queue_full: a.on_queue_full.unwrap_or_default(),
            safety_snapshot: None,
            split_brain: false,
            members: Vec::new(),
            max_lag_bytes: a.max_lag_bytes,
            max_lag_ms: a.max_lag_ms,
            sync_rate: a.sync_rate,
        };
        if let Some(g) = &a.group {
            if let Some(o) = rc
                .sets
                .iter()
                .find(|s| s.group.as_deref() == Some(g) && s.peer == c.peer)
            {
                if o.mode != c.mode {
                    return Err(ReplError::Invalid(format!(
                        "group {g} replicates to {} in {} mode (set {}); a group shares one mode per secondary",
                        o.peer, o.mode.as_str(), o.name
                    )));
                }
            }
        }
        // A new leg of an existing set shares its volume's generation; a
        // new set starts one. Volumes declared identical share it with the
        // secondary from the start; otherwise the secondary has none until
        // its first sync.
        let mut gens = match self.primary(&a.name) {
            Some(p) => {
                let mut g = p.scoreboard.generations();
                g.agreed = 0;
                g
            }
            None => Generations::fresh(),
        };
        if a.no_sync {
            gens.agreed = gens.current;
        }
        // The secondary side first, through the peer link (nothing locked).
        let (reply, _) = peer::request(
            &self.ctx,
            &a.peer,
            &PeerRequest::Create {
                set: a.name.clone(),
                volume: a.remote.clone(),
                size_bytes: volume.size_bytes(),
                mode: a.mode,
                group: a.group.clone(),
                primary: listen,
                primary_volume: a.local.clone(),
                timeout_ms: Some(c.timeout_ms),
                generation: a.no_sync.then_some(gens.current),
            },
        )
        .map_err(|e| ReplError::Peer(format!("replication set {}: {e}", a.name)))?;
        c.peer_node = reply["node"].as_str().unwrap_or_default().to_owned();
        let undo_remote = |why: &str| {
            log::warn!(
                "replication set {}: undoing the secondary side: {why}",
                a.name
            );
            let _ = peer::request(
                &self.ctx,
                &a.peer,
                &PeerRequest::Disable {
                    set: a.name.clone(),
                },
            );
        };
        if legs.iter().any(|l| l.peer_node == c.peer_node) || c.peer_node == rc.node {
            // The same node under another address (or this node itself):
            // the secondary side we just created is a duplicate.
            return Err(ReplError::Exists(format!(
                "replication set {}: node {} is already a member of it",
                a.name, c.peer_node
            )));
        }
        c.scoreboard = Some(self.leg_scoreboard_path(&a.name, &c.peer_node)?);
        let initial = if a.no_sync {
            SetState::Replicating
        } else {
            SetState::Logging
        };
        let set = match self.open_primary(&c, Some((initial != SetState::Replicating, gens)), &[]) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(c.scoreboard.as_ref().expect("set"));
                undo_remote(&e.to_string());
                return Err(e);
            }
        };
        let cc = c.clone();
        if let Err(e) = self.commit(
            |rc| {
                rc.sets.push(cc.clone());
                Ok(())
            },
            || {
                self.drop_primary(&c);
                let _ = std::fs::remove_file(c.scoreboard.as_ref().expect("set"));
            },
        ) {
            undo_remote(&e.to_string());
            return Err(e);
        }
        if a.no_sync {
            if let Err(e) = set.link().connect() {
                set.set_peer_lost(true);
                *set.last_error.lock() = Some(e.clone());
                log::warn!("replication set {}: {e}; autosync will retry", a.name);
            } else {
                set.set_state(
                    SetState::Replicating,
                    "enabled with --no-sync (volumes declared identical)",
                );
            }
        }
        self.tell_members(&a.name);
        self.publish(
            "repl.enabled",
            &a.name,
            crate::services::Note::new(format!(
                "{} -> {}:{} ({}, node {})",
                a.local,
                a.peer,
                a.remote,
                a.mode.as_str(),
                c.peer_node
            ))
            .field("role", "primary")
            .field("volume", &a.local)
            .field("peer", &c.peer_node)
            .field("peer_addr", &a.peer)
            .field("remote_volume", &a.remote)
            .field("mode", a.mode.as_str()),
        );
        self.info(&a.name, Some(&c.peer_node))
    }

    /// The members of set `name` a secondary `except` should know of: every
    /// other secondary (a promotion there re-attaches them).
    pub(super) fn members_for(&self, name: &str, except: &str) -> Vec<Member> {
        self.leg_configs(name)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.role == ReplRole::Primary && c.peer_node != except)
            .map(|c| Member {
                node: c.peer_node,
                addr: c.peer,
                volume: c.remote_volume,
                mode: c.mode,
            })
            .collect()
    }

    /// Tell every secondary of set `name` who the others are (after a
    /// secondary was added or removed). Best effort: each sync repeats it.
    pub(super) fn tell_members(&self, name: &str) {
        for c in self.leg_configs(name).unwrap_or_default() {
            if c.role != ReplRole::Primary {
                continue;
            }
            let req = PeerRequest::Members {
                set: name.to_owned(),
                members: self.members_for(name, &c.peer_node),
            };
            if let Err(e) = peer::request(&self.ctx, &c.peer, &req) {
                log::warn!(
                    "replication set {name}: telling {} its fellow secondaries: {e} (the next sync does)",
                    c.peer_node
                );
            }
        }
    }

    /// Start a sync. On a set that is already replicating (and not asked
    /// for a full sync) this succeeds at once: there is nothing to do.
    /// Without `secondary` on a set with several, every leg syncs.
    pub fn sync(&self, a: SyncOptions) -> RResult<Value> {
        if a.secondary.is_none() && self.legs(&a.name).len() > 1 {
            for l in self.legs(&a.name) {
                self.sync_leg(SyncOptions {
                    secondary: Some(l.peer_node.clone()),
                    ..a.clone()
                })?;
            }
            return self.info(&a.name, None);
        }
        self.sync_leg(a)
    }

    fn sync_leg(&self, a: SyncOptions) -> RResult<Value> {
        let sets = self.group_of(&a.name, a.secondary.as_deref())?;
        let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
        let _r = self.reserve(&names)?;
        let link = sets[0].link().clone();
        let node = sets[0].peer_node.clone();
        let info = || self.info(&a.name, Some(&node));
        if a.checksum && a.reverse {
            return Err(ReplError::Invalid(
                "--checksum applies to a forward sync only".into(),
            ));
        }
        if a.reverse {
            if let Some(s) = sets.iter().find(|s| !s.siblings().is_empty()) {
                return Err(ReplError::Invalid(format!(
                    "replication set {} has several secondaries; a reverse sync would bypass the others \
                     (disable them first, or swap roles with `umbra repl swap {} --secondary {node}`)",
                    s.name, s.name
                )));
            }
        }
        // Replicating with nothing out of sync: nothing to do. Chunks a
        // verify found differing are resynced while the link stays up.
        if !a.full
            && !a.reverse
            && sets
                .iter()
                .all(|s| s.state() == SetState::Replicating && s.scoreboard.oos_chunks() == 0)
        {
            return info();
        }
        if link.syncing.load(Ordering::SeqCst) {
            if !a.full && !a.reverse {
                return info(); // the sync asked for runs already
            }
            return Err(ReplError::Busy(format!(
                "replication set {}: a sync is already running",
                a.name
            )));
        }
        for s in &sets {
            if s.state() == SetState::SplitBrain {
                return Err(ReplError::SplitBrain(format!(
                    "replication set {}: split brain: both sides wrote since they last agreed; \
                     pick the side to discard with `umbra repl resolve {} --discard here|peer`",
                    s.name, s.name
                )));
            }
            let repair = s.state() == SetState::Replicating && !a.reverse;
            if !s.state().may_sync() && !repair {
                return Err(ReplError::Busy(format!(
                    "replication set {} is {}; a sync starts from logging (`umbra repl log {}` first)",
                    s.name,
                    s.state().as_str(),
                    s.name
                )));
            }
        }
        if a.reverse && !a.force {
            let host = self.host()?;
            for s in &sets {
                if let Some(listen) = host.read_write_export(&s.volume) {
                    return Err(ReplError::Busy(format!(
                        "volume {} is exported read-write ({listen}); a reverse sync rewrites it under its users. Unmount and remove the export, or pass --force",
                        s.volume
                    )));
                }
            }
        }
        for s in &sets {
            s.suspended.store(false, Ordering::SeqCst);
        }
        self.persist_suspended(&names, &node, false);
        if a.full {
            for s in &sets {
                s.scoreboard
                    .mark_all()
                    .map_err(|e| ReplError::Failed(e.to_string()))?;
            }
        }
        for s in &sets {
            s.stats
                .sync_total_bytes
                .store(s.scoreboard.oos_bytes(), Ordering::SeqCst);
            s.stats.sync_done_bytes.store(0, Ordering::SeqCst);
        }
        if a.reverse {
            self.start_reverse_sync(&link);
        } else {
            self.start_sync(&link, a.full, a.checksum);
        }
        info()
    }

    /// Persist the suspended flag of the legs of `names` toward `node`.
    pub(super) fn persist_suspended(&self, names: &[String], node: &str, v: bool) {
        let r = self.commit(
            |rc| {
                for c in rc
                    .sets
                    .iter_mut()
                    .filter(|c| names.iter().any(|n| c.is(n, node)))
                {
                    c.suspended = v;
                }
                Ok(())
            },
            || {},
        );
        if let Err(e) = r {
            log::error!("persisting replication state: {e}");
        }
    }

    /// Suspend replication: the group goes to logging, no autosync until
    /// the next `repl sync`.
    pub fn log(&self, name: &str, secondary: Option<&str>) -> RResult<Value> {
        let sets = self.group_of(name, secondary)?;
        let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
        let node = sets[0].peer_node.clone();
        let _r = self.reserve(&names)?;
        for s in &sets {
            s.suspended.store(true, Ordering::SeqCst);
            s.set_peer_lost(false);
        }
        self.persist_suspended(&names, &node, true);
        sets[0].link().close("suspended by `repl log`");
        for s in &sets {
            // A set that needs a sync (or is in split brain) keeps saying so.
            if s.state().can_become(SetState::Logging) {
                s.set_state(SetState::Logging, "suspended by `repl log`");
            }
        }
        self.info(name, Some(&node))
    }

    /// Change the resync rate of the leg toward `a.secondary` (without it:
    /// every leg); a running sync follows at its next chunk.
    pub fn tune(&self, a: TuneOptions) -> RResult<Value> {
        let legs = match &a.secondary {
            Some(_) => vec![self.leg(&a.name, a.secondary.as_deref())?],
            None => {
                let l = self.legs(&a.name);
                if l.is_empty() {
                    vec![self.leg(&a.name, None)?] // the error naming why
                } else {
                    l
                }
            }
        };
        let rate = (a.sync_rate > 0).then_some(a.sync_rate);
        for l in &legs {
            self.edit_leg(&a.name, &l.peer_node, |c| c.sync_rate = rate)?;
            l.sync_rate.store(a.sync_rate, Ordering::SeqCst);
        }
        self.info(&a.name, a.secondary.as_deref())
    }

    /// Wait until the leg toward `a.secondary` (without it: every leg)
    /// reaches `a.state` (default replicating), or a state it cannot
    /// leave by itself, or the timeout.
    pub fn wait(&self, a: WaitOptions) -> RResult<Value> {
        let want = match &a.state {
            Some(s) => SetState::parse(s)
                .ok_or_else(|| ReplError::Invalid(format!("unknown state {s:?}")))?,
            None => SetState::Replicating,
        };
        let deadline = Instant::now()
            + Duration::from_millis(a.timeout_ms.unwrap_or(MAX_WAIT_MS).min(MAX_WAIT_MS));
        loop {
            let legs = match &a.secondary {
                Some(_) => vec![self.leg(&a.name, a.secondary.as_deref())?],
                None if self.primary(&a.name).is_some() => self.legs(&a.name),
                None => vec![self.leg(&a.name, None)?],
            };
            // A sync just asked for (`repl sync --wait` on a replicating
            // set: a repair or a full copy) has not left `replicating`
            // yet: it is reached when the sync is over.
            let reached = legs.iter().all(|set| {
                set.state() == want
                    && !(matches!(want, SetState::Logging | SetState::Replicating)
                        && set.link().syncing.load(Ordering::SeqCst))
            });
            let stuck = legs.iter().any(|set| {
                let st = set.state();
                matches!(st, SetState::Failed | SetState::SplitBrain) && st != want
            });
            if reached || Instant::now() >= deadline || stuck {
                let mut v = self.info(&a.name, a.secondary.as_deref())?;
                v["reached"] = json!(reached);
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Disable set `name`: on a primary every leg (or only the one toward
    /// `secondary`), each secondary's side first; on a secondary (with
    /// `force`) this side only.
    pub fn disable(&self, name: &str, secondary: Option<&str>, force: bool) -> RResult<Value> {
        let _r = self.reserve(&[name.to_owned()])?;
        let all = self.leg_configs(name)?;
        if all[0].role == ReplRole::Secondary && !force {
            return Err(ReplError::Invalid(format!(
                "replication set {name} is a secondary here; disable it from the primary (or --force to drop this side only)"
            )));
        }
        let legs = match secondary {
            Some(_) => vec![self.leg_config(name, secondary)?],
            None => all.clone(),
        };
        let mut notes = Vec::new();
        for c in &legs {
            if c.role == ReplRole::Primary {
                if let Err(e) = peer::request(
                    &self.ctx,
                    &c.peer,
                    &PeerRequest::Disable {
                        set: name.to_owned(),
                    },
                ) {
                    if !force {
                        return Err(ReplError::Peer(format!(
                            "replication set {name}: secondary {} did not disable its side: {e}; retry, or --force to disable this side only",
                            c.peer_node
                        )));
                    }
                    notes.push(format!(
                        "secondary {}'s side was not disabled: {e}",
                        c.peer_node
                    ));
                }
            }
            self.forget(c)?;
        }
        if legs.len() < all.len() {
            self.tell_members(name);
        }
        let note = notes.join("; ");
        self.publish(
            "repl.disabled",
            name,
            crate::services::Note::new(note.clone())
                .field("role", "primary")
                .field(
                    "peers",
                    legs.iter().map(|c| c.peer_node.clone()).collect::<Vec<_>>(),
                ),
        );
        Ok(json!({
            "name": name,
            "secondaries": legs.iter().map(|c| c.peer_node.clone()).collect::<Vec<_>>(),
            "note": note,
        }))
    }
}
