//! The daemon's replication operations (`repl.*` on the admin socket) and
//! its answers to peers (control requests over the replication listener).
//!
//! Sets are managed from the primary's host only (seed 002): `repl enable`
//! creates the secondary side through the peer link, `repl sync` asks the
//! secondary for its safety snapshot before resyncing onto it, `repl swap`
//! and `repl disable` change both sides. The service mechanics live in
//! `services::repl`; this file owns configuration, volumes, snapshots and
//! the order of steps across the two hosts.

use super::{online_volume, parse, Daemon, State};
use crate::backend::{EngineKind, FileBackend, FileOptions};
use crate::control::admin::OpError;
use crate::control::config::{PeerConfig, ReplConfig, ReplRole, ReplSetConfig};
use crate::control::validate_name;
use crate::device::BlockDevice;
use crate::services::repl::link::{Link, QueueLimits};
use crate::services::repl::peer::{self, Listener, PeerHandler};
use crate::services::repl::scoreboard::{self, Scoreboard};
use crate::services::repl::secondary::{
    serve_link, LinkTable, SecondaryGuard, SecondarySet, SECONDARY_LAYER,
};
use crate::services::repl::set::{PrimaryLayer, ReplSet, PRIMARY_LAYER};
use crate::services::repl::{Mode, NodeCtx, PeerLoss, QueueFull, SetState};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_QUEUE_BYTES: u64 = 64 << 20;
pub const DEFAULT_QUEUE_ITEMS: usize = 16_384;
const MAX_WAIT_MS: u64 = 60_000;

/// Replication state the daemon holds at run time.
#[derive(Default)]
pub(super) struct ReplRuntime {
    pub ctx: Arc<NodeCtx>,
    listener: Mutex<Option<Listener>>,
    primaries: Mutex<HashMap<String, Arc<ReplSet>>>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    secondaries: Mutex<HashMap<String, Arc<SecondarySet>>>,
    table: LinkTable,
}

fn link_key(c: &ReplSetConfig) -> String {
    c.group.clone().unwrap_or_else(|| format!("set:{}", c.name))
}

fn sb_options() -> FileOptions {
    FileOptions {
        engine: EngineKind::Sync,
        direct: false,
    }
}

fn failed(m: impl Into<String>) -> OpError {
    OpError::failed(m.into())
}

fn no_set(name: &str) -> OpError {
    OpError::not_found(format!(
        "no replication set named {name}; see `umbra repl list`"
    ))
}

/// Answers peers' requests on behalf of the daemon.
struct Handler(Weak<Daemon>);

impl PeerHandler for Handler {
    fn control(&self, peer: &str, req: &Value) -> Result<(Value, Option<Vec<u8>>), String> {
        let d = self.0.upgrade().ok_or("the daemon is stopping")?;
        if d.is_stopping() {
            return Err("the daemon is stopping".into());
        }
        d.peer_request(peer, req)
    }

    fn link(&self, peer: &str, req: &Value, stream: TcpStream) {
        if let Some(d) = self.0.upgrade() {
            d.serve_peer_link(peer, req, stream);
        }
    }
}

impl Daemon {
    fn rt(&self) -> &ReplRuntime {
        &self.repl
    }

    /// At start: node, peers, listener, then every set.
    pub(super) fn restore_repl(&self, st: &mut State) {
        let Some(rc) = st.config.repl.clone() else {
            return;
        };
        let rt = self.rt();
        rt.ctx.set_name(&rc.node);
        rt.ctx.set_notifier(self.repl_notifier());
        for p in &rc.peers {
            match std::fs::read(&p.secret_file) {
                Ok(s) => rt.ctx.set_secret(&p.name, Some(trim_secret(s))),
                Err(e) => log::error!(
                    "replication peer {}: secret file {}: {e}",
                    p.name,
                    p.secret_file.display()
                ),
            }
        }
        if let Some(l) = &rc.listen {
            if let Err(e) = self.start_listener(l) {
                log::error!("{}", e.message);
            }
        }
        for sc in &rc.sets {
            let r = match sc.role {
                ReplRole::Primary => self.open_primary(st, sc, false, None).map(|_| ()),
                ReplRole::Secondary => self.open_secondary(st, sc).map(|_| ()),
            };
            if let Err(e) = r {
                log::error!("replication set {} not restored: {}", sc.name, e.message);
                st.image_errors
                    .insert(format!("repl:{}", sc.name), e.message.clone());
            }
        }
    }

    fn repl_notifier(&self) -> crate::services::repl::Notifier {
        let events = self.events.clone();
        Arc::new(move |kind: &str, obj: &str, detail: String| events.publish(kind, obj, detail))
    }

    fn start_listener(&self, addr: &str) -> Result<String, OpError> {
        let weak = self.weak.get().cloned().unwrap_or_default();
        let l = Listener::start(self.rt().ctx.clone(), addr, Arc::new(Handler(weak)))
            .map_err(failed)?;
        let bound = l.addr.clone();
        *self.rt().listener.lock() = Some(l);
        log::info!("replication listener on {bound}");
        Ok(bound)
    }

    /// Stop replication at shutdown: links close (sets resume in logging
    /// and autosync at the next start), scoreboards are cleaned.
    pub(super) fn shutdown_repl(&self) {
        let rt = self.rt();
        if let Some(mut l) = rt.listener.lock().take() {
            l.stop();
        }
        for (_, link) in rt.links.lock().drain() {
            link.stop.store(true, Ordering::SeqCst);
            let _ = link.drain_for(Duration::from_secs(5));
            link.close("daemon shutting down");
        }
        rt.table.stop_all();
        for (_, s) in rt.primaries.lock().iter() {
            if let Err(e) = s.scoreboard.clean() {
                log::error!("replication set {}: scoreboard at shutdown: {e}", s.name);
            }
        }
    }

    pub(super) fn handle_repl(&self, op: &str, args: &Value) -> Result<Value, OpError> {
        match op {
            "repl.setup" => self.repl_setup(parse(op, args)?),
            "repl.peer.add" => self.repl_peer_add(parse(op, args)?),
            "repl.peer.remove" => {
                let a: NameArg = parse(op, args)?;
                let mut st = self.state.lock();
                let rc = repl_config(&mut st)?;
                let before = rc.peers.len();
                rc.peers.retain(|p| p.name != a.name);
                if rc.peers.len() == before {
                    return Err(OpError::not_found(format!("no peer named {}", a.name)));
                }
                self.persist(&st)?;
                self.rt().ctx.set_secret(&a.name, None);
                Ok(json!({"name": a.name}))
            }
            "repl.enable" => self.repl_enable(parse(op, args)?),
            "repl.sync" => self.repl_sync(parse(op, args)?),
            "repl.log" => self.repl_log(parse(op, args)?),
            "repl.wait" => self.repl_wait(parse(op, args)?),
            "repl.swap" => {
                let a: SwapArgs = parse(op, args)?;
                if a.force {
                    self.repl_takeover(&a.name)
                } else {
                    self.repl_swap(NameArg { name: a.name })
                }
            }
            "repl.disable" => self.repl_disable(parse(op, args)?),
            "repl.list" => {
                let st = self.state.lock();
                let sets = st
                    .config
                    .repl
                    .as_ref()
                    .map(|r| r.sets.clone())
                    .unwrap_or_default();
                Ok(Value::Array(
                    sets.iter().map(|c| self.set_json(c)).collect(),
                ))
            }
            "repl.info" => {
                let a: NameArg = parse(op, args)?;
                self.set_info(&a.name)
            }
            "repl.status" => {
                let st = self.state.lock();
                let rc = st.config.repl.clone().unwrap_or_default();
                Ok(json!({
                    "node": rc.node,
                    "listen": self.rt().listener.lock().as_ref().map(|l| l.addr.clone()),
                    "peers": rc.peers.iter().map(|p| json!({
                        "name": p.name,
                        "secret_file": p.secret_file,
                        "secret_loaded": self.rt().ctx.secret(&p.name).is_some(),
                    })).collect::<Vec<_>>(),
                    "sets": rc.sets.len(),
                }))
            }
            _ => Err(OpError::new(
                "unknown_op",
                format!("unknown operation {op:?}; see docs/admin-protocol.md"),
            )),
        }
    }

    fn set_info(&self, name: &str) -> Result<Value, OpError> {
        let st = self.state.lock();
        let c = set_config(&st, name)?.clone();
        drop(st);
        Ok(self.set_json(&c))
    }

    fn repl_setup(&self, a: SetupArgs) -> Result<Value, OpError> {
        validate_name(&a.node).map_err(|e| OpError::invalid(format!("node: {e}")))?;
        let mut st = self.state.lock();
        let before = st.config.repl.clone();
        let rc = st.config.repl.get_or_insert_with(ReplConfig::default);
        if !rc.sets.is_empty() && rc.node != a.node {
            return Err(OpError::new(
                "busy",
                format!(
                    "node {} has replication sets; its name cannot change to {}",
                    rc.node, a.node
                ),
            ));
        }
        rc.node = a.node.clone();
        let old_listen = rc.listen.clone();
        self.rt().ctx.set_name(&a.node);
        self.rt().ctx.set_notifier(self.repl_notifier());
        let mut bound = old_listen.clone();
        if a.listen.is_some() && a.listen != old_listen {
            if let Some(mut l) = self.rt().listener.lock().take() {
                l.stop();
            }
            let listen = a.listen.clone().expect("checked");
            match self.start_listener(&listen) {
                Ok(b) => bound = Some(b),
                Err(e) => {
                    st.config.repl = before;
                    return Err(e);
                }
            }
        }
        repl_config(&mut st)?.listen = bound.clone();
        if let Err(e) = self.persist(&st) {
            st.config.repl = before;
            return Err(e);
        }
        Ok(json!({"node": a.node, "listen": bound}))
    }

    fn repl_peer_add(&self, a: PeerAddArgs) -> Result<Value, OpError> {
        validate_name(&a.name).map_err(|e| OpError::invalid(format!("peer: {e}")))?;
        let secret = std::fs::read(&a.secret_file).map_err(|e| {
            OpError::invalid(format!(
                "peer {}: secret file {}: {e}",
                a.name,
                a.secret_file.display()
            ))
        })?;
        let secret = trim_secret(secret);
        if secret.len() < 16 {
            return Err(OpError::invalid(format!(
                "peer {}: the secret in {} is {} bytes; use at least 16 (e.g. `head -c 32 /dev/urandom | base64`)",
                a.name,
                a.secret_file.display(),
                secret.len()
            )));
        }
        let mut st = self.state.lock();
        let rc = repl_config(&mut st)?;
        rc.peers.retain(|p| p.name != a.name);
        rc.peers.push(PeerConfig {
            name: a.name.clone(),
            secret_file: a.secret_file.clone(),
        });
        self.persist(&st)?;
        self.rt().ctx.set_secret(&a.name, Some(secret));
        Ok(json!({"name": a.name, "secret_file": a.secret_file}))
    }

    // ----- primary side -------------------------------------------------

    /// Open (or create) a primary set: scoreboard, link, layer.
    fn open_primary(
        &self,
        st: &mut State,
        c: &ReplSetConfig,
        create: bool,
        initial: Option<SetState>,
    ) -> Result<Arc<ReplSet>, OpError> {
        let volume = online_volume(st, &c.volume)?;
        let size = volume.size_bytes();
        let path = c
            .scoreboard
            .clone()
            .ok_or_else(|| failed("no scoreboard path"))?;
        let sb = if create {
            let chunk = scoreboard::chunk_bytes_for(size);
            let dev =
                FileBackend::create(&path, scoreboard::file_bytes_for(size, chunk), sb_options())
                    .map_err(|e| failed(format!("replication set {}: scoreboard: {e}", c.name)))?;
            Scoreboard::create(
                Arc::new(dev),
                &c.name,
                size,
                chunk,
                initial != Some(SetState::Replicating),
            )
            .map_err(failed)?
        } else {
            let dev = FileBackend::open(&path, sb_options())
                .map_err(|e| failed(format!("replication set {}: scoreboard: {e}", c.name)))?;
            Scoreboard::open(Arc::new(dev), &c.name, size).map_err(failed)?
        };
        let key = link_key(c);
        let link = {
            let mut links = self.rt().links.lock();
            links
                .entry(key.clone())
                .or_insert_with(|| {
                    let l = Arc::new(Link::new(
                        self.rt().ctx.clone(),
                        &key,
                        &c.peer,
                        c.mode,
                        Duration::from_millis(c.timeout_ms),
                        QueueLimits {
                            bytes: c.queue_bytes,
                            items: c.queue_items,
                            on_full: c.on_queue_full,
                        },
                    ));
                    self.spawn_link_manager(l.clone());
                    l
                })
                .clone()
        };
        if link.peer_addr != c.peer || link.mode != c.mode {
            return Err(OpError::invalid(format!(
                "replication set {}: group {} replicates to {} in {} mode; all sets of a group share peer and mode",
                c.name,
                key,
                link.peer_addr,
                link.mode.as_str()
            )));
        }
        let id = link.sets().iter().map(|s| s.id + 1).max().unwrap_or(0);
        let set = Arc::new(ReplSet::new(
            &c.name,
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
            Some(self.repl_notifier()),
        ));
        set.suspended.store(c.suspended, Ordering::SeqCst);
        // After a restart an unsuspended set wants its peer back: autosync.
        if !create && !c.suspended && c.autosync {
            set.set_peer_lost(true);
        }
        volume
            .attach(Arc::new(PrimaryLayer::new(set.clone())))
            .map_err(|e| failed(e.to_string()))?;
        link.add_set(set.clone());
        self.rt()
            .primaries
            .lock()
            .insert(c.name.clone(), set.clone());
        Ok(set)
    }

    fn spawn_link_manager(&self, link: Arc<Link>) {
        let weak = self.weak.get().cloned().unwrap_or_default();
        let _ = std::thread::Builder::new()
            .name(format!("repl-mgr-{}", link.group))
            .spawn(move || {
                let mut last_clean = Instant::now();
                // Autosync retries back off from 250 ms to 5 s.
                let mut backoff = Duration::from_millis(250);
                let mut next_try = Instant::now();
                while !link.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(250));
                    let Some(d) = weak.upgrade() else { return };
                    if d.is_stopping() {
                        return;
                    }
                    let sets = link.sets();
                    let want = !link.is_up()
                        && !link.syncing.load(Ordering::SeqCst)
                        && sets.iter().any(|s| {
                            s.peer_lost()
                                && s.autosync
                                && !s.suspended.load(Ordering::SeqCst)
                                && matches!(s.state(), SetState::Logging | SetState::NeedSync)
                        });
                    if link.is_up() {
                        backoff = Duration::from_millis(250);
                    }
                    if want && Instant::now() >= next_try {
                        next_try = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        d.start_sync(&link, false);
                    }
                    if last_clean.elapsed() > Duration::from_secs(1) {
                        last_clean = Instant::now();
                        for s in &sets {
                            if let Err(e) = s.scoreboard.clean() {
                                log::error!("replication set {}: scoreboard: {e}", s.name);
                                s.set_state(SetState::Failed, &format!("scoreboard: {e}"));
                            }
                        }
                    }
                }
            });
    }

    fn repl_enable(&self, a: EnableArgs) -> Result<Value, OpError> {
        validate_name(&a.name).map_err(|e| OpError::invalid(format!("replication set: {e}")))?;
        if let Some(g) = &a.group {
            validate_name(g).map_err(|e| OpError::invalid(format!("group: {e}")))?;
        }
        let mut st = self.state.lock();
        let rc = st.config.repl.clone().ok_or_else(|| {
            OpError::invalid("this node has no replication identity; run `umbra repl setup --node NAME --listen HOST:PORT` first")
        })?;
        if rc.sets.iter().any(|s| s.name == a.name) {
            return Err(OpError::new(
                "exists",
                format!("replication set {} already exists", a.name),
            ));
        }
        if let Some(o) = rc.sets.iter().find(|s| s.volume == a.local) {
            return Err(OpError::new(
                "busy",
                format!(
                    "volume {} is already in replication set {}",
                    a.local, o.name
                ),
            ));
        }
        let volume = online_volume(&st, &a.local)?;
        let listen = self
            .rt()
            .listener
            .lock()
            .as_ref()
            .map(|l| l.addr.clone())
            .ok_or_else(|| {
                OpError::invalid(
                    "this node has no replication listener; `umbra repl setup --listen HOST:PORT`",
                )
            })?;
        let c = ReplSetConfig {
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
            scoreboard: Some(self.data_dir.join(format!("{}.scoreboard", a.name))),
            timeout_ms: a.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).max(500),
            queue_bytes: a.queue_bytes.unwrap_or(DEFAULT_QUEUE_BYTES).max(1 << 20),
            queue_items: a.queue_items.unwrap_or(DEFAULT_QUEUE_ITEMS).max(16),
            on_queue_full: a.on_queue_full.unwrap_or_default(),
            safety_snapshot: None,
        };
        if let Some(g) = &a.group {
            if let Some(o) = rc.sets.iter().find(|s| s.group.as_deref() == Some(g)) {
                if o.peer != c.peer || o.mode != c.mode {
                    return Err(OpError::invalid(format!(
                        "group {g} replicates to {} in {} mode (set {}); a group shares one peer and one mode",
                        o.peer, o.mode.as_str(), o.name
                    )));
                }
            }
        }
        // The secondary side first, through the peer link.
        let (reply, _) = peer::request(
            &self.rt().ctx,
            &a.peer,
            &json!({
                "op": "create", "set": a.name, "volume": a.remote, "size_bytes": volume.size_bytes(),
                "mode": a.mode, "group": a.group, "primary": listen, "primary_volume": a.local,
                "timeout_ms": c.timeout_ms,
            }),
        )
        .map_err(|e| failed(format!("replication set {}: {e}", a.name)))?;
        let mut c = c;
        c.peer_node = reply["node"].as_str().unwrap_or_default().to_owned();
        let initial = if a.no_sync {
            SetState::Replicating
        } else {
            SetState::Logging
        };
        let undo_remote = |why: &str| {
            log::warn!(
                "replication set {}: undoing the secondary side: {why}",
                a.name
            );
            let _ = peer::request(
                &self.rt().ctx,
                &a.peer,
                &json!({"op": "disable", "set": a.name}),
            );
        };
        let set = match self.open_primary(&mut st, &c, true, Some(initial)) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(c.scoreboard.as_ref().expect("set"));
                undo_remote(&e.message);
                return Err(e);
            }
        };
        repl_config(&mut st)?.sets.push(c.clone());
        if let Err(e) = self.persist(&st) {
            repl_config(&mut st)?.sets.retain(|s| s.name != a.name);
            self.drop_primary(&st, &c);
            undo_remote(&e.message);
            return Err(e);
        }
        drop(st);
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
        self.events.publish(
            "repl.enabled",
            &a.name,
            format!(
                "{} -> {}:{} ({})",
                a.local,
                a.peer,
                a.remote,
                a.mode.as_str()
            ),
        );
        self.set_info(&a.name)
    }

    /// Remove a primary set's layer and runtime state (not the config).
    fn drop_primary(&self, st: &State, c: &ReplSetConfig) {
        let set = self.rt().primaries.lock().remove(&c.name);
        let key = link_key(c);
        if let Some(set) = &set {
            let link = set.link().clone();
            link.remove_set(&c.name);
            if link.sets().is_empty() {
                link.stop.store(true, Ordering::SeqCst);
                link.close("set disabled");
                self.rt().links.lock().remove(&key);
            }
        }
        if let Ok(v) = online_volume(st, &c.volume) {
            let _ = v.detach(PRIMARY_LAYER);
        }
    }

    /// The sets that move together with `name` (its consistency group).
    fn group_of(&self, name: &str) -> Result<Vec<Arc<ReplSet>>, OpError> {
        let p = self.rt().primaries.lock();
        let set = p.get(name).cloned().ok_or_else(|| {
            OpError::invalid(format!(
                "replication set {name} is not a primary on this node (manage sets from the primary)"
            ))
        })?;
        Ok(set.link().sets())
    }

    fn repl_sync(&self, a: SyncArgs) -> Result<Value, OpError> {
        let sets = self.group_of(&a.name)?;
        let link = sets[0].link().clone();
        if link.syncing.load(Ordering::SeqCst) {
            return Err(OpError::new(
                "busy",
                format!("replication set {}: a sync is already running", a.name),
            ));
        }
        for s in &sets {
            if !matches!(
                s.state(),
                SetState::Logging | SetState::NeedSync | SetState::NeedReverseSync
            ) {
                return Err(OpError::new(
                    "busy",
                    format!(
                        "replication set {} is {}; a sync starts from logging (`umbra repl log {}` first)",
                        s.name,
                        s.state().as_str(),
                        s.name
                    ),
                ));
            }
        }
        if a.reverse {
            let st = self.state.lock();
            for s in &sets {
                if let Some(e) = st
                    .config
                    .exports
                    .iter()
                    .find(|e| e.volume == s.volume && !e.read_only)
                {
                    if !a.force {
                        return Err(OpError::new(
                            "busy",
                            format!(
                                "volume {} is exported read-write ({}); a reverse sync rewrites it under its users. Unmount and remove the export, or pass --force",
                                s.volume, e.listen
                            ),
                        ));
                    }
                }
            }
        }
        for s in &sets {
            s.suspended.store(false, Ordering::SeqCst);
        }
        self.set_suspended(&sets, false);
        if a.full {
            for s in &sets {
                s.scoreboard.mark_all().map_err(|e| failed(e.to_string()))?;
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
            self.start_sync(&link, a.full);
        }
        self.set_info(&a.name)
    }

    fn set_suspended(&self, sets: &[Arc<ReplSet>], v: bool) {
        let mut st = self.state.lock();
        if let Some(rc) = st.config.repl.as_mut() {
            for c in rc.sets.iter_mut() {
                if sets.iter().any(|s| s.name == c.name) {
                    c.suspended = v;
                }
            }
        }
        if let Err(e) = self.persist(&st) {
            log::error!("persisting replication state: {}", e.message);
        }
    }

    /// Start a forward sync of the link's group in the background.
    fn start_sync(&self, link: &Arc<Link>, full: bool) {
        if link.syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = self.weak.get().cloned().unwrap_or_default();
        let link = link.clone();
        let _ = std::thread::Builder::new()
            .name(format!("repl-sync-{}", link.group))
            .spawn(move || {
                if let Some(d) = weak.upgrade() {
                    d.run_sync(&link, full);
                }
                link.syncing.store(false, Ordering::SeqCst);
            });
    }

    fn run_sync(&self, link: &Arc<Link>, full: bool) {
        let sets = link.sets();
        let fail = |why: String, state: SetState| {
            for s in &sets {
                *s.last_error.lock() = Some(why.clone());
                // Never downgrade: a set whose sync was interrupted stays
                // `need sync` until a sync completes.
                if !(state == SetState::Logging && s.state() == SetState::NeedSync) {
                    s.set_state(state, &why);
                }
                if !s.suspended.load(Ordering::SeqCst) {
                    s.set_peer_lost(true);
                }
            }
            log::warn!("replication group {}: sync stopped: {why}", link.group);
        };
        let ctx = &self.rt().ctx;
        // 1. The secondary protects itself (safety snapshot) and tells us
        //    which chunks it changed on its own (after a swap).
        for s in &sets {
            match peer::request(
                ctx,
                &link.peer_addr,
                &json!({"op": "sync_begin", "set": s.name}),
            ) {
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
        // 2. Connect; new writes replicate from now on.
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
        // 3. Copy the out-of-sync chunks, then wait for the last acks.
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
            let _ = s.scoreboard.clean();
            s.set_state(SetState::Replicating, "sync complete");
            *s.last_error.lock() = None;
        }
        // 4. The secondary is consistent again: drop its safety snapshot.
        for s in &sets {
            if let Err(e) = peer::request(
                ctx,
                &link.peer_addr,
                &json!({"op": "sync_end", "set": s.name}),
            ) {
                log::warn!(
                    "replication set {}: dropping the safety snapshot: {e}",
                    s.name
                );
            }
        }
    }

    fn start_reverse_sync(&self, link: &Arc<Link>) {
        if link.syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = self.weak.get().cloned().unwrap_or_default();
        let link = link.clone();
        let _ = std::thread::Builder::new()
            .name(format!("repl-rsync-{}", link.group))
            .spawn(move || {
                if let Some(d) = weak.upgrade() {
                    if let Err(e) = d.run_reverse_sync(&link) {
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
        let ctx = &self.rt().ctx;
        let mut session = peer::Session::open(ctx, &link.peer_addr)?;
        for s in &sets {
            s.set_state(SetState::ReverseSyncing, "reverse sync");
            let (_, bits) = session.call(&json!({"op": "bitmap", "set": s.name}))?;
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
                let (_, data) = session
                    .call(&json!({"op": "read", "set": s.name, "offset": off, "len": len}))?;
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
        session.call(&json!({"op": "bitmap_clear", "sets": sets.iter().map(|s| s.name.clone()).collect::<Vec<_>>()}))?;
        link.connect()?;
        for s in &sets {
            let _ = s.scoreboard.clean();
            s.set_peer_lost(false);
            s.set_state(SetState::Replicating, "reverse sync complete");
        }
        Ok(())
    }

    fn repl_log(&self, a: NameArg) -> Result<Value, OpError> {
        let sets = self.group_of(&a.name)?;
        for s in &sets {
            s.suspended.store(true, Ordering::SeqCst);
            s.set_peer_lost(false);
        }
        self.set_suspended(&sets, true);
        sets[0].link().close("suspended by `repl log`");
        for s in &sets {
            if s.state() != SetState::Logging {
                s.set_state(SetState::Logging, "suspended by `repl log`");
            }
        }
        self.set_info(&a.name)
    }

    fn repl_wait(&self, a: WaitArgs) -> Result<Value, OpError> {
        let want = match &a.state {
            Some(s) => SetState::parse(s)
                .ok_or_else(|| OpError::invalid(format!("unknown state {s:?}")))?,
            None => SetState::Replicating,
        };
        let deadline = Instant::now()
            + Duration::from_millis(a.timeout_ms.unwrap_or(MAX_WAIT_MS).min(MAX_WAIT_MS));
        loop {
            let set = self
                .rt()
                .primaries
                .lock()
                .get(&a.name)
                .cloned()
                .ok_or_else(|| no_set(&a.name))?;
            let st = set.state();
            let reached = st == want
                && !(want == SetState::Logging && set.link().syncing.load(Ordering::SeqCst));
            if reached || Instant::now() >= deadline || st == SetState::Failed {
                let mut v = self.set_info(&a.name)?;
                v["reached"] = json!(reached);
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn repl_swap(&self, a: NameArg) -> Result<Value, OpError> {
        let sets = self.group_of(&a.name)?;
        for s in &sets {
            if s.state() != SetState::Replicating {
                return Err(OpError::new(
                    "busy",
                    format!(
                        "replication set {} is {}; swap needs both sides in sync (replicating)",
                        s.name,
                        s.state().as_str()
                    ),
                ));
            }
        }
        let link = sets[0].link().clone();
        let listen = self
            .rt()
            .listener
            .lock()
            .as_ref()
            .map(|l| l.addr.clone())
            .unwrap_or_default();
        let mut st = self.state.lock();
        let vols: Vec<_> = sets
            .iter()
            .map(|s| online_volume(&st, &s.volume))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&crate::interposer::Volume> = vols.iter().map(|v| v.as_ref()).collect();
        // Quiesce every volume of the group: no new writes; what was
        // acknowledged reaches the peer before the roles change.
        let mut guards = crate::interposer::quiesce_many(&refs, "repl swap")
            .map_err(|e| failed(e.to_string()))?;
        link.drain()
            .map_err(|e| failed(format!("the peer did not acknowledge everything: {}", e.0)))?;
        for s in &sets {
            if s.scoreboard.oos_chunks() > 0 {
                return Err(failed(format!("set {} has out-of-sync chunks", s.name)));
            }
        }
        link.stop.store(true, Ordering::SeqCst);
        for s in &sets {
            s.suspended.store(true, Ordering::SeqCst);
        }
        link.close("swapping roles");
        let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
        if let Err(e) = peer::request(
            &self.rt().ctx,
            &link.peer_addr,
            &json!({"op": "swap", "sets": names, "primary": listen}),
        ) {
            link.stop.store(false, Ordering::SeqCst);
            for s in &sets {
                s.suspended.store(false, Ordering::SeqCst);
                s.set_peer_lost(true);
            }
            self.spawn_link_manager(link.clone());
            return Err(failed(format!(
                "swap refused by the peer: {e}; this side stays primary (autosync reconnects)"
            )));
        }
        // We are the secondary now.
        let before = st.config.clone();
        for (g, s) in guards.iter_mut().zip(sets.iter()) {
            let _ = g.remove(PRIMARY_LAYER);
            let guard = Arc::new(SecondaryGuard::new(&s.volume));
            let _ = g.push(guard.clone());
            self.rt().secondaries.lock().insert(
                s.name.clone(),
                Arc::new(SecondarySet::new(&s.name, &s.volume, s.size_bytes, guard)),
            );
            self.rt().primaries.lock().remove(&s.name);
        }
        drop(guards);
        self.rt().links.lock().remove(&link.group);
        let rc = repl_config(&mut st)?;
        for c in rc.sets.iter_mut().filter(|c| names.contains(&c.name)) {
            c.role = ReplRole::Secondary;
            c.suspended = false;
            if let Some(p) = c.scoreboard.take() {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Err(e) = self.persist(&st) {
            st.config = before;
            return Err(e);
        }
        drop(st);
        self.events.publish(
            "repl.swapped",
            &a.name,
            format!("this node is now the secondary of {}", link.peer_addr),
        );
        self.set_info(&a.name)
    }

    /// Turn secondary set `c` into a primary replicating to `c.peer`: the
    /// guard leaves the volume, a fresh (clean) scoreboard records every
    /// write from now on. `c` is updated; the caller stores it.
    fn promote(&self, st: &mut State, c: &mut ReplSetConfig) -> Result<Arc<ReplSet>, OpError> {
        online_volume(st, &c.volume)?
            .detach(SECONDARY_LAYER)
            .map_err(|e| failed(e.to_string()))?;
        self.rt().secondaries.lock().remove(&c.name);
        c.role = ReplRole::Primary;
        c.suspended = false;
        let path = self.data_dir.join(format!("{}.scoreboard", c.name));
        let _ = std::fs::remove_file(&path);
        c.scoreboard = Some(path);
        self.open_primary(st, c, true, Some(SetState::Replicating))
    }

    /// Put `changed` in place of the sets of the same names and persist;
    /// when persisting fails the configuration goes back to `before`.
    fn store_sets(
        &self,
        st: &mut State,
        changed: &[ReplSetConfig],
        before: crate::control::config::Config,
    ) -> Result<(), OpError> {
        let rc = repl_config(st)?;
        for c in changed {
            if let Some(x) = rc.sets.iter_mut().find(|x| x.name == c.name) {
                *x = c.clone();
            }
        }
        let r = self.persist(st);
        if r.is_err() {
            st.config = before;
        }
        r
    }

    /// `repl swap --force`, for when the peer cannot take part. On a
    /// secondary (failover, the primary is gone): become the primary,
    /// recording every write from now on; autosync reaches the old primary
    /// once it is demoted. On a primary (the old one, back after a
    /// failover): become the secondary of the peer, keeping the
    /// scoreboard's bits so the new primary's next sync also rewrites the
    /// chunks only this side had.
    fn repl_takeover(&self, name: &str) -> Result<Value, OpError> {
        let c = {
            let st = self.state.lock();
            set_config(&st, name)?.clone()
        };
        match c.role {
            ReplRole::Secondary => {
                if let Some(snap) = &c.safety_snapshot {
                    return Err(OpError::new(
                        "busy",
                        format!(
                            "replication set {name}: this volume is in the middle of a resync and inconsistent; \
                             its last consistent image is the image set {snap} \
                             (`umbra image update {snap} --to master`, then `umbra image disable {snap}`) before taking over"
                        ),
                    ));
                }
                self.rt().table.replace(&link_key(&c), None);
                let mut st = self.state.lock();
                let before = st.config.clone();
                let mut nc = c.clone();
                let set = self.promote(&mut st, &mut nc)?;
                set.set_peer_lost(true);
                self.store_sets(&mut st, &[nc], before)?;
                drop(st);
                self.events.publish(
                    "repl.takeover",
                    name,
                    format!("this node is now the primary; {} is to be demoted", c.peer),
                );
            }
            ReplRole::Primary => {
                let set = self.rt().primaries.lock().get(name).cloned();
                if let Some(set) = &set {
                    let link = set.link().clone();
                    link.stop.store(true, Ordering::SeqCst);
                    set.suspended.store(true, Ordering::SeqCst);
                    link.close("demoted by `repl swap --force`");
                    let _ = set.scoreboard.clean();
                }
                let mut st = self.state.lock();
                let before = st.config.clone();
                self.drop_primary(&st, &c);
                let mut nc = c.clone();
                nc.role = ReplRole::Secondary;
                nc.suspended = false;
                self.open_secondary(&mut st, &nc)?;
                self.store_sets(&mut st, &[nc], before)?;
                drop(st);
                self.events.publish(
                    "repl.demoted",
                    name,
                    format!("this node is now the secondary of {}", c.peer),
                );
            }
        }
        self.set_info(name)
    }

    /// The out-of-sync bits a demoted former primary kept, if any.
    fn leftover_bits(&self, set: &str) -> Result<Option<Vec<u8>>, String> {
        let path = {
            let st = self.state.lock();
            let c = set_config(&st, set).map_err(|e| e.message)?;
            match (&c.scoreboard, c.role) {
                (Some(p), ReplRole::Secondary) => p.clone(),
                _ => return Ok(None),
            }
        };
        let size = self.secondary(set)?.size_bytes;
        let dev = FileBackend::open(&path, sb_options())
            .map_err(|e| format!("set {set}: leftover scoreboard: {e}"))?;
        let sb = Scoreboard::open(Arc::new(dev), set, size)?;
        Ok(Some(sb.oos_words()))
    }

    fn repl_disable(&self, a: DisableArgs) -> Result<Value, OpError> {
        let c = {
            let st = self.state.lock();
            set_config(&st, &a.name)?.clone()
        };
        if c.role == ReplRole::Secondary && !a.force {
            return Err(OpError::invalid(format!(
                "replication set {} is a secondary here; disable it from the primary (or --force to drop this side only)",
                a.name
            )));
        }
        let mut note = String::new();
        if c.role == ReplRole::Primary {
            if let Err(e) = peer::request(
                &self.rt().ctx,
                &c.peer,
                &json!({"op": "disable", "set": a.name}),
            ) {
                if !a.force {
                    return Err(failed(format!(
                        "replication set {}: the peer did not disable its side: {e}; retry, or --force to disable this side only",
                        a.name
                    )));
                }
                note = format!("the peer's side was not disabled: {e}");
            }
            self.drop_primary(&self.state.lock(), &c);
            if let Some(p) = &c.scoreboard {
                let _ = std::fs::remove_file(p);
            }
        } else {
            self.drop_secondary(&c);
        }
        let mut st = self.state.lock();
        repl_config(&mut st)?.sets.retain(|s| s.name != a.name);
        self.persist(&st)?;
        self.events.publish("repl.disabled", &a.name, note.clone());
        Ok(json!({"name": a.name, "note": note}))
    }

    // ----- secondary side -----------------------------------------------

    fn open_secondary(
        &self,
        st: &mut State,
        c: &ReplSetConfig,
    ) -> Result<Arc<SecondarySet>, OpError> {
        let volume = online_volume(st, &c.volume)?;
        let guard = Arc::new(SecondaryGuard::new(&c.volume));
        if !volume.service_names().iter().any(|n| n == SECONDARY_LAYER) {
            volume
                .attach(guard.clone())
                .map_err(|e| failed(e.to_string()))?;
        }
        let set = Arc::new(SecondarySet::new(
            &c.name,
            &c.volume,
            volume.size_bytes(),
            guard,
        ));
        self.rt()
            .secondaries
            .lock()
            .insert(c.name.clone(), set.clone());
        Ok(set)
    }

    fn drop_secondary(&self, c: &ReplSetConfig) {
        self.rt().table.replace(&link_key(c), None);
        self.rt().secondaries.lock().remove(&c.name);
        if let Some(snap) = &c.safety_snapshot {
            self.drop_safety(snap);
        }
        let st = self.state.lock();
        if let Ok(v) = online_volume(&st, &c.volume) {
            let _ = v.detach(SECONDARY_LAYER);
        }
    }

    fn drop_safety(&self, snap: &str) {
        let _ = self.handle("image.disable", &json!({"name": snap, "force": true}));
        let path = {
            let st = self.state.lock();
            st.config
                .volumes
                .iter()
                .find(|v| v.name == snap)
                .map(|v| v.path.clone())
        };
        let _ = self.handle("volume.remove", &json!({"name": snap, "force": true}));
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
        }
    }

    fn secondary(&self, name: &str) -> Result<Arc<SecondarySet>, String> {
        self.rt()
            .secondaries
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no secondary set named {name} on node {}",
                    self.rt().ctx.name()
                )
            })
    }

    /// A control request from an authenticated peer.
    fn peer_request(&self, peer: &str, req: &Value) -> Result<(Value, Option<Vec<u8>>), String> {
        let op = req["op"].as_str().unwrap_or_default();
        let set = req["set"].as_str().unwrap_or_default().to_owned();
        match op {
            "create" => {
                let r: CreateReq = serde_json::from_value(req.clone())
                    .map_err(|e| format!("malformed create request: {e}"))?;
                self.peer_create(peer, r)
                    .map(|v| (v, None))
                    .map_err(|e| e.message)
            }
            "disable" => {
                let c = {
                    let st = self.state.lock();
                    set_config(&st, &set).map_err(|e| e.message)?.clone()
                };
                if c.role != ReplRole::Secondary {
                    return Err(format!(
                        "set {set} is not a secondary on node {}",
                        self.rt().ctx.name()
                    ));
                }
                self.drop_secondary(&c);
                let mut st = self.state.lock();
                repl_config(&mut st)
                    .map_err(|e| e.message)?
                    .sets
                    .retain(|s| s.name != set);
                self.persist(&st).map_err(|e| e.message)?;
                self.events
                    .publish("repl.disabled", &set, format!("by primary {peer}"));
                Ok((json!({}), None))
            }
            "sync_begin" => {
                let s = self.secondary(&set)?;
                let snap = self.take_safety(&s).map_err(|e| e.message)?;
                Ok((json!({"safety_snapshot": snap}), self.leftover_bits(&set)?))
            }
            "sync_end" => {
                let (snap, leftover) = {
                    let mut st = self.state.lock();
                    let rc = repl_config(&mut st).map_err(|e| e.message)?;
                    let c = rc
                        .sets
                        .iter_mut()
                        .find(|c| c.name == set)
                        .ok_or("no such set")?;
                    let snap = c.safety_snapshot.take();
                    // The peer merged our leftover bits and synced them.
                    let leftover = if c.role == ReplRole::Secondary {
                        c.scoreboard.take()
                    } else {
                        None
                    };
                    self.persist(&st).map_err(|e| e.message)?;
                    (snap, leftover)
                };
                if let Some(p) = leftover {
                    let _ = std::fs::remove_file(p);
                }
                if let Some(snap) = snap {
                    self.drop_safety(&snap);
                    self.events.publish("repl.safety_dropped", &set, snap);
                }
                Ok((json!({}), None))
            }
            // A secondary changes nothing on its own; a former primary
            // demoted by `repl swap --force` hands over the chunks it wrote
            // that its peer may lack.
            "bitmap" => Ok((json!({}), self.leftover_bits(&set)?)),
            "bitmap_clear" => Ok((json!({}), None)),
            "read" => {
                let s = self.secondary(&set)?;
                let off = req["offset"].as_u64().ok_or("read: no offset")?;
                let len = req["len"].as_u64().ok_or("read: no len")?;
                if len == 0
                    || len > 4 << 20
                    || off.checked_add(len).is_none_or(|e| e > s.size_bytes)
                {
                    return Err(format!("read [{off}, +{len}) outside set {set}"));
                }
                let mut buf = vec![0u8; len as usize];
                s.guard
                    .with_lower(|d| d.read(&mut buf, off))
                    .map_err(|e| e.to_string())?;
                Ok((json!({}), Some(buf)))
            }
            "swap" => self
                .peer_swap(peer, req)
                .map(|v| (v, None))
                .map_err(|e| e.message),
            other => Err(format!("unknown peer request {other:?}")),
        }
    }

    fn peer_create(&self, peer: &str, r: CreateReq) -> Result<Value, OpError> {
        validate_name(&r.set).map_err(|e| OpError::invalid(format!("replication set: {e}")))?;
        let mut st = self.state.lock();
        let rc = repl_config(&mut st)?.clone();
        if rc.sets.iter().any(|s| s.name == r.set) {
            return Err(OpError::new(
                "exists",
                format!("node {}: replication set {} already exists", rc.node, r.set),
            ));
        }
        if let Some(o) = rc.sets.iter().find(|s| s.volume == r.volume) {
            return Err(OpError::new(
                "busy",
                format!(
                    "node {}: volume {} is already in replication set {}",
                    rc.node, r.volume, o.name
                ),
            ));
        }
        let volume = online_volume(&st, &r.volume)
            .map_err(|e| OpError::invalid(format!("node {}: {}", rc.node, e.message)))?;
        if volume.size_bytes() < r.size_bytes {
            return Err(OpError::invalid(format!(
                "node {}: volume {} has {} bytes, smaller than the primary's {}",
                rc.node,
                r.volume,
                volume.size_bytes(),
                r.size_bytes
            )));
        }
        if st.config.images.iter().any(|i| i.shadow == r.volume) {
            return Err(OpError::new(
                "busy",
                format!("node {}: volume {} is an image shadow", rc.node, r.volume),
            ));
        }
        let c = ReplSetConfig {
            name: r.set.clone(),
            role: ReplRole::Secondary,
            volume: r.volume.clone(),
            remote_volume: r.primary_volume.clone(),
            peer: r.primary.clone(),
            peer_node: peer.to_owned(),
            mode: r.mode,
            group: r.group.clone(),
            on_peer_loss: PeerLoss::Log,
            autosync: true,
            suspended: false,
            scoreboard: None,
            timeout_ms: r.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            queue_bytes: DEFAULT_QUEUE_BYTES,
            queue_items: DEFAULT_QUEUE_ITEMS,
            on_queue_full: QueueFull::Block,
            safety_snapshot: None,
        };
        self.open_secondary(&mut st, &c)?;
        repl_config(&mut st)?.sets.push(c.clone());
        if let Err(e) = self.persist(&st) {
            repl_config(&mut st)?.sets.retain(|s| s.name != r.set);
            drop(st);
            self.drop_secondary(&c);
            return Err(e);
        }
        self.events.publish(
            "repl.enabled",
            &r.set,
            format!("secondary of {peer} ({})", r.mode.as_str()),
        );
        Ok(json!({"node": rc.node}))
    }

    /// Before a resync makes the secondary inconsistent, keep a dependent
    /// snapshot of it. An existing one (an interrupted sync) is kept: it
    /// is the last consistent image.
    fn take_safety(&self, s: &Arc<SecondarySet>) -> Result<String, OpError> {
        let snap = format!("{}-safety", s.name);
        {
            let st = self.state.lock();
            if set_config(&st, &s.name)?.safety_snapshot.is_some() {
                return Ok(snap);
            }
        }
        let _pause = s.gate.write();
        // A leftover from a crash between enable and persist.
        if self
            .state
            .lock()
            .config
            .images
            .iter()
            .any(|i| i.name == snap)
        {
            self.drop_safety(&snap);
        }
        self.handle(
            "image.enable",
            &json!({"name": snap, "master": s.volume, "shadow": snap, "mode": "dependent"}),
        )?;
        // Keep the guard on top, so the applier's writes go through the
        // imaging layer (copy-on-write into the snapshot).
        {
            let st = self.state.lock();
            let vol = online_volume(&st, &s.volume)?;
            let mut g = vol
                .quiesce("repl safety snapshot")
                .map_err(|e| failed(e.to_string()))?;
            g.remove(SECONDARY_LAYER)
                .map_err(|e| failed(e.to_string()))?;
            g.push(s.guard.clone()).map_err(|e| failed(e.to_string()))?;
        }
        let mut st = self.state.lock();
        if let Some(c) = repl_config(&mut st)?
            .sets
            .iter_mut()
            .find(|c| c.name == s.name)
        {
            c.safety_snapshot = Some(snap.clone());
        }
        self.persist(&st)?;
        self.events
            .publish("repl.safety_taken", &s.name, snap.clone());
        Ok(snap)
    }

    fn peer_swap(&self, peer: &str, req: &Value) -> Result<Value, OpError> {
        let names: Vec<String> = serde_json::from_value(req["sets"].clone())
            .map_err(|e| OpError::invalid(format!("malformed swap request: {e}")))?;
        let primary_addr = req["primary"].as_str().unwrap_or_default().to_owned();
        let mut st = self.state.lock();
        let mut cfgs = Vec::new();
        for n in &names {
            let c = set_config(&st, n)?.clone();
            if c.role != ReplRole::Secondary {
                return Err(OpError::invalid(format!("set {n} is not a secondary here")));
            }
            if c.safety_snapshot.is_some() {
                return Err(OpError::new(
                    "busy",
                    format!("set {n} is in the middle of a sync"),
                ));
            }
            cfgs.push(c);
        }
        if let Some(c) = cfgs.first() {
            self.rt().table.replace(&link_key(c), None);
        }
        let before = st.config.clone();
        let mut opened = Vec::new();
        for c in &mut cfgs {
            c.peer = primary_addr.clone();
            c.peer_node = peer.to_owned();
            opened.push(self.promote(&mut st, c)?);
        }
        self.store_sets(&mut st, &cfgs, before)?;
        drop(st);
        // Connect back to the old primary (now our secondary) once it has
        // switched; until then autosync retries.
        for s in &opened {
            s.set_peer_lost(true);
        }
        self.events.publish(
            "repl.swapped",
            &names.join(","),
            format!("this node is now the primary; secondary {peer}"),
        );
        Ok(json!({}))
    }

    fn serve_peer_link(&self, peer: &str, req: &Value, mut stream: TcpStream) {
        let r: Result<LinkRequest, String> = (|| {
            let group = req["group"].as_str().ok_or("link: no group")?.to_owned();
            let mode: Mode = serde_json::from_value(req["mode"].clone())
                .map_err(|e| format!("link: mode: {e}"))?;
            let list = req["sets"].as_array().ok_or("link: no sets")?;
            let mut sets: Vec<Option<Arc<SecondarySet>>> = Vec::new();
            let st = self.state.lock();
            let mut timeout = DEFAULT_TIMEOUT_MS;
            for e in list {
                let id = e["id"].as_u64().ok_or("link: set without id")? as usize;
                let name = e["name"].as_str().ok_or("link: set without name")?;
                if id > 1024 {
                    return Err(format!("link: set id {id} out of range"));
                }
                let c = set_config(&st, name).map_err(|e| e.message)?;
                if c.role != ReplRole::Secondary || c.mode != mode {
                    return Err(format!(
                        "set {name} is not a {} secondary here",
                        mode.as_str()
                    ));
                }
                timeout = c.timeout_ms;
                let s = self.secondary(name)?;
                if e["size_bytes"].as_u64().is_some_and(|sz| sz > s.size_bytes) {
                    return Err(format!(
                        "set {name}: the primary is larger than volume {}",
                        s.volume
                    ));
                }
                if sets.len() <= id {
                    sets.resize(id + 1, None);
                }
                sets[id] = Some(s);
            }
            Ok((group, mode, sets, Duration::from_millis(timeout)))
        })();
        let (group, mode, sets, timeout) = match r {
            Ok(x) => x,
            Err(e) => {
                log::warn!("replication: link from {peer} refused: {e}");
                let _ = peer::reply(&mut stream, Err(e));
                return;
            }
        };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let Ok(handle) = stream.try_clone() else {
            return;
        };
        // A reconnect replaces the group's old link after its applier stops.
        self.rt().table.replace(&group, Some((handle, done_rx)));
        if peer::reply(&mut stream, Ok((json!({}), None))).is_err() {
            return;
        }
        log::info!(
            "replication: link {group} from {peer} up ({})",
            mode.as_str()
        );
        self.events
            .publish("repl.link_up", &group, format!("from {peer}"));
        let why = serve_link(stream, sets, mode, timeout);
        log::info!("replication: link {group} from {peer} ended: {why}");
        self.events.publish("repl.link_down", &group, why);
        let _ = done_tx.send(());
    }

    fn set_json(&self, c: &ReplSetConfig) -> Value {
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
        });
        match c.role {
            ReplRole::Primary => {
                let Some(s) = self.rt().primaries.lock().get(&c.name).cloned() else {
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
                v["last_error"] = json!(*s.last_error.lock());
            }
            ReplRole::Secondary => {
                let s = self.rt().secondaries.lock().get(&c.name).cloned();
                match s {
                    Some(s) => {
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
                    }
                    None => v["state"] = json!("offline"),
                }
            }
        }
        v
    }
}

fn trim_secret(mut s: Vec<u8>) -> Vec<u8> {
    while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
        s.pop();
    }
    s
}

fn repl_config(st: &mut State) -> Result<&mut ReplConfig, OpError> {
    st.config.repl.as_mut().ok_or_else(|| {
        OpError::invalid("this node has no replication identity; run `umbra repl setup --node NAME --listen HOST:PORT` first")
    })
}

fn set_config<'a>(st: &'a State, name: &str) -> Result<&'a ReplSetConfig, OpError> {
    st.config
        .repl
        .as_ref()
        .and_then(|r| r.sets.iter().find(|s| s.name == name))
        .ok_or_else(|| no_set(name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameArg {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapArgs {
    name: String,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupArgs {
    node: String,
    #[serde(default)]
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerAddArgs {
    name: String,
    secret_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableArgs {
    name: String,
    local: String,
    peer: String,
    remote: String,
    mode: Mode,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    no_sync: bool,
    #[serde(default)]
    no_autosync: bool,
    #[serde(default)]
    on_peer_loss: Option<PeerLoss>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    queue_bytes: Option<u64>,
    #[serde(default)]
    queue_items: Option<usize>,
    #[serde(default)]
    on_queue_full: Option<QueueFull>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncArgs {
    name: String,
    #[serde(default)]
    full: bool,
    #[serde(default)]
    reverse: bool,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitArgs {
    name: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableArgs {
    name: String,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
struct CreateReq {
    set: String,
    volume: String,
    size_bytes: u64,
    mode: Mode,
    #[serde(default)]
    group: Option<String>,
    primary: String,
    primary_volume: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A validated `link` request: group, mode, sets by id, peer timeout.
type LinkRequest = (String, Mode, Vec<Option<Arc<SecondarySet>>>, Duration);
