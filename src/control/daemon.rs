//! The daemon's state and its operations: what `umbra serve` runs.
//!
//! One control-plane lock (`state`) serialises admin operations; it is never
//! taken on the I/O path. Every operation changes the runtime state, then
//! persists the configuration; when persisting fails the runtime change is
//! undone so what runs always matches what a restart would restore.

mod image;
mod repl;

use super::admin::{ErrorCode, OpError};
use super::config::{CacheConfig, Config, ConfigError, ExportConfig, ExportKind, VolumeConfig};
use super::events::EventBus;
use super::{validate_name, SOCKET_FILE};
use crate::backend::{EngineKind, FileBackend, FileOptions};
use crate::device::{BlockDevice, Describe, SECTOR_SIZE_BYTES};
use crate::export::nbd::{ListenAddr, NbdServer};
use crate::export::ublk::{UblkExport, DEFAULT_DEPTH, DEFAULT_QUEUES};
use crate::interposer::Volume;
use crate::services::cache::writeback::WriteBack;
use crate::services::cache::{CacheService, DEFAULT_CACHE_BYTES, MIN_CACHE_BYTES};
use crate::services::image::Imaging;
use crate::services::Note;
use nix::fcntl::{Flock, FlockArg};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::ToSocketAddrs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Name and size of the volume created when the daemon starts with no
/// configuration at all.
pub const DEFAULT_VOLUME: &str = "default";
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;

/// Progress events (`image.copy_progress`, `repl.sync_progress`,
/// `repl.verify_progress`) go out at most this often per object: often
/// enough for a progress bar, rare enough for any subscriber's queue.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the last progress event of each running copy, sync or verify said.
#[derive(Default)]
struct Progress {
    last: HashMap<String, (u64, std::time::Instant)>,
}

impl Progress {
    /// Note that `key` has done `done` bytes. An event is due (returned:
    /// the rate since the last one, bytes per second) the first time, and
    /// then when `done` moved and [`PROGRESS_EVERY`] passed.
    fn advance(&mut self, key: &str, done: u64, now: std::time::Instant) -> Option<u64> {
        let rate = match self.last.get(key) {
            Some(&(d, t)) if d == done || now.duration_since(t) < PROGRESS_EVERY => return None,
            Some(&(d, t)) => {
                (done.saturating_sub(d) as f64 / now.duration_since(t).as_secs_f64()) as u64
            }
            None => 0,
        };
        self.last.insert(key.to_owned(), (done, now));
        Some(rate)
    }
}

pub struct DaemonOptions {
    pub data_dir: PathBuf,
    /// Where the default volume is exported when there is no configuration
    /// (`None`: a first start creates nothing).
    pub default_listen: Option<ListenAddr>,
    /// Clients each NBD listener accepts at once.
    pub nbd_max_clients: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another umbra daemon")]
    Locked(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot set up the default volume: {0}")]
    Default(String),
}

struct VolumeEntry {
    volume: Option<Arc<Volume>>,
    /// The cache service attached at the bottom of the stack, if enabled.
    cache: Option<Arc<CacheService>>,
    /// Why the volume is not online (backing file missing, unreadable...).
    error: Option<String>,
}

struct State {
    config: Config,
    volumes: BTreeMap<String, VolumeEntry>,
    /// NBD servers by bound address (`127.0.0.1:10809`, `unix:/path`).
    servers: HashMap<String, Arc<NbdServer>>,
    /// Exports that could not be restored, by volume name.
    export_errors: HashMap<String, String>,
    /// Image sets that could not be restored, by set name.
    image_errors: HashMap<String, String>,
    /// Running ublk exports, by volume name.
    ublk: HashMap<String, UblkExport>,
    /// The ublk control device, opened at the first ublk export.
    ublk_control: Option<Arc<umbra_ublk::Control>>,
    /// `DaemonOptions::nbd_max_clients`, for listeners started later.
    nbd_max_clients: usize,
}

pub struct Daemon {
    data_dir: PathBuf,
    state: Mutex<State>,
    events: Arc<EventBus>,
    imaging: Imaging,
    repl: Arc<crate::services::repl::Replication>,
    /// The cluster agent (etcd), running once the node joined a cluster.
    cluster: Arc<crate::cluster::Cluster>,
    /// This daemon, for threads it starts (replication sync and links).
    weak: std::sync::OnceLock<std::sync::Weak<Daemon>>,
    stopping: AtomicBool,
    /// Notification hooks: their threads read the event bus.
    hooks: crate::control::hooks::Hooks,
    /// Where `serve --metrics` listens, once it does.
    metrics_addr: std::sync::OnceLock<std::net::SocketAddr>,
    started: Instant,
    _lock: Flock<File>,
}

/// What the daemon did at start, for the banner `umbra serve` prints.
pub struct StartReport {
    pub created_default: bool,
    pub exports: Vec<Value>,
}

impl Daemon {
    /// Take the data dir, restore the configuration (or create the default
    /// one), start every export.
    pub fn start(opts: DaemonOptions) -> Result<(Arc<Daemon>, StartReport), StartError> {
        // Private by default: every file and directory the daemon creates
        // (volumes, bitmaps, safe stores, scoreboards, the configuration,
        // sockets) is for its own user only, whatever umask it was given.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.data_dir)
            .map_err(|source| StartError::DataDir {
                path: opts.data_dir.clone(),
                source,
            })?;
        if let Ok(m) = std::fs::metadata(&opts.data_dir) {
            use std::os::unix::fs::MetadataExt;
            if m.mode() & 0o077 != 0 {
                log::warn!(
                    "data dir {} is open to other users (mode {:o}): `chmod 700` it to keep the volumes private",
                    opts.data_dir.display(),
                    m.mode() & 0o777
                );
            }
        }
        let data_dir = opts
            .data_dir
            .canonicalize()
            .map_err(|source| StartError::DataDir {
                path: opts.data_dir.clone(),
                source,
            })?;
        let lock_file =
            File::create(data_dir.join("umbra.lock")).map_err(|source| StartError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StartError::Locked(data_dir.clone()))?;

        let loaded = Config::load(&data_dir)?;
        let created_default = loaded.is_none() && opts.default_listen.is_some();
        let repl = crate::services::repl::Replication::new();
        let events = Arc::new(EventBus::default());
        let daemon = Arc::new(Daemon {
            data_dir: data_dir.clone(),
            state: Mutex::new(State {
                config: Config::default(),
                volumes: BTreeMap::new(),
                servers: HashMap::new(),
                export_errors: HashMap::new(),
                image_errors: HashMap::new(),
                ublk: HashMap::new(),
                ublk_control: None,
                nbd_max_clients: opts.nbd_max_clients,
            }),
            hooks: crate::control::hooks::Hooks::start(events.clone()),
            events,
            imaging: Imaging::default(),
            cluster: crate::cluster::Cluster::new(repl.clone()),
            repl,
            weak: std::sync::OnceLock::new(),
            stopping: AtomicBool::new(false),
            metrics_addr: std::sync::OnceLock::new(),
            started: Instant::now(),
            _lock: lock,
        });
        let _ = daemon.weak.set(Arc::downgrade(&daemon));
        let host: std::sync::Weak<dyn crate::services::repl::Host> =
            Arc::downgrade(&(daemon.clone() as Arc<dyn crate::services::repl::Host>));
        daemon.repl.bind_host(host);
        {
            let cluster = Arc::downgrade(&daemon.cluster);
            daemon
                .repl
                .set_cluster_probe(Box::new(move || cluster.upgrade().and_then(|c| c.probe())));
            let cluster = Arc::downgrade(&daemon.cluster);
            daemon
                .repl
                .set_outdater(Arc::new(move |g: &str, peer: &str| {
                    cluster.upgrade().and_then(|c| c.outdate(g, peer))
                }));
        }
        match (loaded, &opts.default_listen) {
            (Some(cfg), _) => daemon.restore(cfg),
            (None, Some(listen)) => daemon
                .create_default(listen)
                .map_err(|e| StartError::Default(e.message))?,
            (None, None) => {}
        }
        daemon.watch_health();
        // The cluster agent last: every set and export is up, so the groups
        // it finds are the node's real state.
        if let Some(c) = daemon.repl.cluster_config() {
            daemon.cluster.start(c);
        }
        let exports = daemon.export_list();
        daemon
            .events
            .publish("daemon.started", &data_dir.display().to_string(), {
                let volumes = daemon.state.lock().volumes.len();
                Note::new(format!("{volumes} volumes"))
                    .field("volumes", volumes)
                    .field("version", env!("CARGO_PKG_VERSION"))
            });
        Ok((
            daemon,
            StartReport {
                created_default,
                exports,
            },
        ))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn socket_path(&self) -> PathBuf {
        self.data_dir.join(SOCKET_FILE)
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn restore(&self, cfg: Config) {
        let mut st = self.state.lock();
        for vc in &cfg.volumes {
            let entry = match FileBackend::open(&vc.path, vc.options) {
                Ok(be) => {
                    let description = be.describe();
                    let size = vc.virtual_size_bytes.unwrap_or(be.size_bytes());
                    let volume =
                        Arc::new(Volume::with_size(&vc.name, Arc::new(be), description, size));
                    match restore_cache(&volume, vc.cache.as_ref()) {
                        Ok(cache) => VolumeEntry {
                            volume: Some(volume),
                            cache,
                            error: None,
                        },
                        // A write-back store that cannot be replayed holds
                        // acknowledged writes the backing file lacks:
                        // serving the volume without them would serve stale
                        // data, so it stays offline.
                        Err(e) => {
                            log::error!("volume {} is offline: {}", vc.name, e.message);
                            VolumeEntry {
                                volume: None,
                                cache: None,
                                error: Some(e.message),
                            }
                        }
                    }
                }
                Err(e) => {
                    log::error!("volume {} is offline: {e}", vc.name);
                    VolumeEntry {
                        volume: None,
                        cache: None,
                        error: Some(e.to_string()),
                    }
                }
            };
            if let Some(c) = &entry.cache {
                self.watch_cache(&vc.name, c);
            }
            st.volumes.insert(vc.name.clone(), entry);
        }
        st.config = cfg.clone();
        for h in &cfg.hooks {
            self.hooks.add(h.clone());
        }
        self.restore_images(&mut st);
        // Replication looks volumes up and persists through the daemon:
        // it runs with the state unlocked, before any export serves.
        drop(st);
        for (set, e) in self.repl.restore() {
            self.state
                .lock()
                .image_errors
                .insert(format!("repl:{set}"), e);
        }
        let mut st = self.state.lock();
        for (i, ec) in cfg.exports.iter().enumerate() {
            if ec.kind == ExportKind::Ublk {
                match start_ublk(&mut st, ec) {
                    Ok((path, id)) => {
                        st.config.exports[i].listen = path;
                        st.config.exports[i].dev_id = Some(id);
                    }
                    Err(e) => {
                        log::error!("ublk export of {} not restored: {}", ec.volume, e.message);
                        st.export_errors.insert(ec.volume.clone(), e.message);
                    }
                }
                continue;
            }
            if let Err(e) = start_export(&mut st, ec) {
                log::error!("export of {} not restored: {}", ec.volume, e.message);
                st.export_errors.insert(ec.volume.clone(), e.message);
            }
        }
        // ublk exports may have new device ids.
        if st.config.exports != cfg.exports {
            if let Err(e) = st.config.save(&self.data_dir) {
                log::error!("persisting restored ublk exports: {e}");
            }
        }
    }

    fn create_default(&self, listen: &ListenAddr) -> Result<(), OpError> {
        self.handle(
            "volume.create",
            &json!({"name": DEFAULT_VOLUME, "size_bytes": DEFAULT_VOLUME_BYTES}),
        )?;
        self.handle(
            "export.nbd",
            &json!({"volume": DEFAULT_VOLUME, "listen": listen.to_string()}),
        )?;
        Ok(())
    }

    /// Run one admin operation. Never panics on bad input: arguments are
    /// parsed into typed structs and every failure is an `OpError`.
    pub fn handle(&self, op: &str, args: &Value) -> Result<Value, OpError> {
        if self.is_stopping() {
            return Err(OpError::new(
                ErrorCode::ShuttingDown,
                "the daemon is shutting down",
            ));
        }
        match op {
            "status" => {
                parse::<NoArgs>(op, args)?;
                Ok(self.status())
            }
            "volume.create" => self.volume_create(parse(op, args)?),
            "volume.add" => self.volume_add(parse(op, args)?),
            "volume.remove" => self.volume_remove(parse(op, args)?),
            "volume.reopen" | "volume.reset" => self.volume_reopen(parse(op, args)?),
            "volume.resize" => self.volume_resize(parse(op, args)?),
            "volume.list" => {
                parse::<NoArgs>(op, args)?;
                Ok(Value::Array(self.volume_list()))
            }
            "volume.info" => {
                let a: NameArgs = parse(op, args)?;
                let st = self.state.lock();
                if !st.volumes.contains_key(&a.name) {
                    return Err(no_volume(&a.name));
                }
                Ok(volume_json(&st, &a.name))
            }
            "export.nbd" => self.export_nbd(parse(op, args)?),
            "export.ublk" => self.export_ublk(parse(op, args)?),
            "export.list" => {
                parse::<NoArgs>(op, args)?;
                Ok(Value::Array(self.export_list()))
            }
            "export.remove" => self.export_remove(parse(op, args)?),
            "cache.enable" => self.cache_enable(parse(op, args)?),
            "cache.disable" => self.cache_disable(parse(op, args)?),
            "cache.stats" => self.cache_stats(parse(op, args)?),
            "hook.add" => self.hook_add(parse(op, args)?),
            "hook.list" => {
                let _: NoArgs = parse(op, args)?;
                Ok(Value::Array(self.hooks.list()))
            }
            "hook.remove" => self.hook_remove(parse(op, args)?),
            "stats" => {
                let a: StatsArgs = parse(op, args)?;
                let vols = self.volume_stats(&a.volumes)?;
                Ok(json!({
                    "unix_ms": crate::control::events::now_ms(),
                    "volumes": vols.iter().map(VolumeStats::to_json).collect::<Vec<_>>(),
                }))
            }
            _ if op.starts_with("image.") => self.handle_image(op, args),
            _ if op.starts_with("repl.")
                || op.starts_with("group.")
                || op.starts_with("cluster.") =>
            {
                self.handle_repl(op, args)
            }
            _ => Err(OpError::new(
                ErrorCode::UnknownOp,
                format!("unknown operation {op:?}; see docs/admin-protocol.md"),
            )),
        }
    }

    fn status(&self) -> Value {
        let st = self.state.lock();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "data_dir": self.data_dir,
            "socket": self.socket_path(),
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs(),
            "volumes": st.volumes.len(),
            "volumes_offline": st.volumes.values().filter(|v| v.volume.is_none()).count(),
            "volumes_failed": st.volumes.values().filter(|v| v.volume.as_ref().is_some_and(|v| v.failure().is_some())).count(),
            "exports": st.config.exports.len(),
            "image_sets": st.config.images.len(),
            "metrics": self.metrics_addr.get().map(|a| format!("http://{a}/metrics")),
        })
    }

    /// `serve --metrics` tells the daemon where its metrics are served.
    pub fn set_metrics_addr(&self, a: std::net::SocketAddr) {
        let _ = self.metrics_addr.set(a);
    }

    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr.get().copied()
    }

    fn persist(&self, st: &State) -> Result<(), OpError> {
        st.config
            .save(&self.data_dir)
            .map_err(|e| OpError::failed(format!("{e}; the change was undone")))
    }

    fn volume_create(&self, a: VolumeCreateArgs) -> Result<Value, OpError> {
        validate_name(&a.name).map_err(|e| OpError::invalid(format!("volume: {e}")))?;
        check_size(&a.name, a.size_bytes)?;
        let path = match a.path {
            Some(p) => absolute(&p)?,
            None => self.data_dir.join(format!("{}.img", a.name)),
        };
        let options = FileOptions {
            engine: a.engine.unwrap_or_default(),
            direct: a.direct,
            latency_us: latency_us(a.latency_ms)?,
        };
        let mut st = self.state.lock();
        ensure_no_volume(&st, &a.name)?;
        let backend = FileBackend::create(&path, a.size_bytes, options)
            .map_err(|e| OpError::failed(format!("volume {}: {e}", a.name)))?;
        self.add_volume_locked(&mut st, &a.name, path.clone(), backend)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            })
    }

    fn volume_add(&self, a: VolumeAddArgs) -> Result<Value, OpError> {
        validate_name(&a.name).map_err(|e| OpError::invalid(format!("volume: {e}")))?;
        let path = absolute(&a.path)?;
        let options = FileOptions {
            engine: a.engine.unwrap_or_default(),
            direct: a.direct,
            latency_us: latency_us(a.latency_ms)?,
        };
        let mut st = self.state.lock();
        ensure_no_volume(&st, &a.name)?;
        if let Some(other) = st.config.volumes.iter().find(|v| v.path == path) {
            return Err(OpError::new(
                ErrorCode::Exists,
                format!("{} already backs volume {}", path.display(), other.name),
            ));
        }
        let backend = FileBackend::open(&path, options)
            .map_err(|e| OpError::failed(format!("volume {}: {e}", a.name)))?;
        self.add_volume_locked(&mut st, &a.name, path, backend)
    }

    fn add_volume_locked(
        &self,
        st: &mut State,
        name: &str,
        path: PathBuf,
        backend: FileBackend,
    ) -> Result<Value, OpError> {
        self.add_volume_sized(st, name, path, backend, None)
    }

    /// [`Self::add_volume_locked`] with a presented size other than the
    /// backend's (a compact shadow).
    fn add_volume_sized(
        &self,
        st: &mut State,
        name: &str,
        path: PathBuf,
        backend: FileBackend,
        virtual_size_bytes: Option<u64>,
    ) -> Result<Value, OpError> {
        let options = backend.options();
        let description = backend.describe();
        let size = virtual_size_bytes.unwrap_or(backend.size_bytes());
        let volume = Arc::new(Volume::with_size(
            name,
            Arc::new(backend),
            description,
            size,
        ));
        st.config.volumes.push(VolumeConfig {
            name: name.to_owned(),
            path: path.clone(),
            options,
            cache: None,
            virtual_size_bytes,
        });
        if let Err(e) = self.persist(st) {
            st.config.volumes.pop();
            return Err(e);
        }
        let size = volume.size_bytes();
        st.volumes.insert(
            name.to_owned(),
            VolumeEntry {
                volume: Some(volume),
                cache: None,
                error: None,
            },
        );
        self.events.publish(
            "volume.created",
            name,
            Note::new(format!("{size} bytes on {}", path.display()))
                .field("size_bytes", size)
                .field("path", path),
        );
        Ok(volume_json(st, name))
    }

    fn volume_remove(&self, a: VolumeRemoveArgs) -> Result<Value, OpError> {
        let mut st = self.state.lock();
        if !st.volumes.contains_key(&a.name) {
            return Err(no_volume(&a.name));
        }
        if let Some(rs) = st
            .config
            .repl
            .as_ref()
            .and_then(|r| r.sets.iter().find(|s| s.volume == a.name))
        {
            return Err(OpError::new(
                ErrorCode::Busy,
                format!(
                    "volume {} is in replication set {}; `umbra repl disable {}` first",
                    a.name, rs.name, rs.name
                ),
            ));
        }
        if let Some(ic) = st
            .config
            .images
            .iter()
            .find(|i| i.master == a.name || i.shadow == a.name)
        {
            return Err(OpError::new(
                ErrorCode::Busy,
                format!(
                    "volume {} is in image set {}; `umbra image disable {}` first",
                    a.name, ic.name, ic.name
                ),
            ));
        }
        let exported: Vec<_> = exports_of(&st, &a.name);
        if !exported.is_empty() && !a.force {
            return Err(OpError::new(
                ErrorCode::Busy,
                format!(
                    "volume {} is exported ({}); remove the export first or pass --force",
                    a.name,
                    exported
                        .iter()
                        .map(|e| e.listen.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let before = st.config.clone();
        st.config.exports.retain(|e| e.volume != a.name);
        st.config.volumes.retain(|v| v.name != a.name);
        if let Err(e) = self.persist(&st) {
            st.config = before;
            return Err(e);
        }
        for e in &exported {
            stop_export(&mut st, e);
            self.events.publish(
                "export.removed",
                &a.name,
                Note::new(format!("nbd {}", e.listen))
                    .field("kind", "nbd")
                    .field("listen", &e.listen)
                    .field("why", "its volume was removed"),
            );
        }
        st.export_errors.remove(&a.name);
        let entry = st.volumes.remove(&a.name).expect("checked above");
        if let Some(v) = entry.volume {
            if let Err(e) = v.close() {
                log::warn!("volume {}: close: {e}", a.name);
            }
        }
        let path = before
            .volumes
            .iter()
            .find(|v| v.name == a.name)
            .map(|v| v.path.clone())
            .unwrap_or_default();
        let shown = path.display().to_string();
        if a.delete_data {
            // Only a regular file: a block device is someone's disk.
            let deleted = std::fs::symlink_metadata(&path)
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    if m.file_type().is_file() {
                        std::fs::remove_file(&path).map_err(|e| e.to_string())
                    } else {
                        Err("not a regular file; left as it is".into())
                    }
                });
            return match deleted {
                Ok(()) => {
                    self.events.publish(
                        "volume.removed",
                        &a.name,
                        Note::new(format!("backing file {shown} deleted"))
                            .field("path", &shown)
                            .field("backing_kept", false),
                    );
                    Ok(json!({"name": a.name, "backing_kept": null, "deleted": shown}))
                }
                Err(e) => {
                    self.events.publish(
                        "volume.removed",
                        &a.name,
                        Note::new(format!(
                            "backing file kept at {shown}: deleting it failed: {e}"
                        ))
                        .field("path", &shown)
                        .field("backing_kept", true)
                        .field("delete_error", e.to_string()),
                    );
                    Err(OpError::failed(format!(
                        "volume {} removed, but its backing file {shown} was not deleted: {e}",
                        a.name
                    )))
                }
            };
        }
        self.events.publish(
            "volume.removed",
            &a.name,
            Note::new(format!("backing file kept at {shown}"))
                .field("path", &shown)
                .field("backing_kept", true),
        );
        Ok(json!({"name": a.name, "backing_kept": shown}))
    }

    /// `volume resize`: the backing file grows (sparse) or shrinks, and
    /// the volume gets a backend of the new size; its NBD exports serve
    /// it to clients that connect from now on.
    fn volume_resize(&self, a: VolumeResizeArgs) -> Result<Value, OpError> {
        let mut st = self.state.lock();
        let entry = st.volumes.get(&a.name).ok_or_else(|| no_volume(&a.name))?;
        let Some(old) = entry.volume.clone() else {
            return Err(OpError::failed(format!(
                "volume {} is offline; `umbra volume reopen {}` first",
                a.name, a.name
            )));
        };
        check_size(&a.name, a.size_bytes)?;
        let from = old.size_bytes();
        if a.size_bytes == from {
            return Ok(volume_json(&st, &a.name));
        }
        let busy = |why: String| Err(OpError::new(ErrorCode::Busy, why));
        let services = old.service_names();
        if !services.is_empty() {
            return busy(format!(
                "volume {} has services on it ({}); they need its size: disable them first",
                a.name,
                services.join(", ")
            ));
        }
        let Some(vc) = st.config.volumes.iter().find(|v| v.name == a.name).cloned() else {
            return Err(no_volume(&a.name));
        };
        if vc.cache.is_some() || vc.virtual_size_bytes.is_some() {
            return busy(format!(
                "volume {} has a cache or a compact shadow's size: disable it first",
                a.name
            ));
        }
        let exports: Vec<ExportConfig> = exports_of(&st, &a.name);
        if exports.iter().any(|e| e.kind == ExportKind::Ublk) {
            return busy(format!(
                "volume {} has a ublk export; remove it first (`umbra export remove {} --kind ublk`)",
                a.name, a.name
            ));
        }
        if a.size_bytes < from && !exports.is_empty() {
            return busy(format!(
                "volume {} is exported: its clients may use the end that shrinking would cut; remove the export first",
                a.name
            ));
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&vc.path)
            .map_err(|e| {
                OpError::failed(format!("volume {}: {}: {e}", a.name, vc.path.display()))
            })?;
        let meta = file
            .metadata()
            .map_err(|e| OpError::failed(format!("volume {}: {e}", a.name)))?;
        if !meta.file_type().is_file() {
            return Err(OpError::invalid(format!(
                "volume {}: {} is a block device; resize the device, then remove and add the volume",
                a.name,
                vc.path.display()
            )));
        }
        // Everything written so far is on disk before the file changes.
        old.flush()
            .map_err(|e| OpError::failed(format!("volume {}: flush: {e}", a.name)))?;
        file.set_len(a.size_bytes)
            .and_then(|_| file.sync_all())
            .map_err(|e| OpError::failed(format!("volume {}: resizing: {e}", a.name)))?;
        let be = FileBackend::open(&vc.path, vc.options).map_err(|e| {
            OpError::failed(format!("volume {}: reopening at the new size: {e}", a.name))
        })?;
        let description = be.describe();
        let size = be.size_bytes();
        let volume = Arc::new(Volume::with_size(&a.name, Arc::new(be), description, size));
        st.volumes.get_mut(&a.name).expect("looked up above").volume = Some(volume);
        for ec in &exports {
            if let Err(e) = start_export(&mut st, ec) {
                st.export_errors.insert(ec.volume.clone(), e.message);
            }
        }
        self.events.publish(
            "volume.resized",
            &a.name,
            Note::new(format!("from {from} to {} bytes", a.size_bytes))
                .field("from_bytes", from)
                .field("size_bytes", a.size_bytes),
        );
        Ok(volume_json(&st, &a.name))
    }

    fn volume_list(&self) -> Vec<Value> {
        let st = self.state.lock();
        st.volumes.keys().map(|n| volume_json(&st, n)).collect()
    }

    fn export_nbd(&self, a: ExportNbdArgs) -> Result<Value, OpError> {
        let listen = a
            .listen
            .unwrap_or_else(|| crate::export::nbd::DEFAULT_LISTEN.into());
        let mut st = self.state.lock();
        ensure_exportable(&st, &a.volume, ExportKind::Nbd)?;
        let mut ec = ExportConfig {
            volume: a.volume.clone(),
            kind: ExportKind::Nbd,
            listen,
            read_only: a.read_only,
            queues: None,
            depth: None,
            dev_id: None,
            mode: a.mode,
            tls_certificates: a.tls_certificates,
        };
        if let Some(m) = a.mode {
            if !ec.listen.starts_with("unix:") {
                return Err(OpError::invalid(format!(
                    "export of {}: --mode applies to a unix:PATH socket, not {}",
                    a.volume, ec.listen
                )));
            }
            if m > 0o777 {
                return Err(OpError::invalid(format!(
                    "export of {}: mode {m:o} has more than permission bits",
                    a.volume
                )));
            }
        }
        // Record the bound address so a port-0 request keeps its port.
        ec.listen = start_export(&mut st, &ec)?;
        self.commit_export(&mut st, ec)
    }

    /// Record a started export in the configuration (stopping it again if
    /// that cannot be persisted), announce it, and describe it.
    fn commit_export(&self, st: &mut State, ec: ExportConfig) -> Result<Value, OpError> {
        st.config.exports.push(ec.clone());
        if let Err(e) = self.persist(st) {
            st.config.exports.pop();
            stop_export(st, &ec);
            return Err(e);
        }
        st.export_errors.remove(&ec.volume);
        self.events.publish(
            "export.added",
            &ec.volume,
            Note::new(format!("{} {}", kind_name(ec.kind), ec.listen))
                .field("kind", kind_name(ec.kind))
                .field("listen", &ec.listen)
                .field("read_only", ec.read_only),
        );
        Ok(export_json(st, &ec))
    }

    fn export_ublk(&self, a: ExportUblkArgs) -> Result<Value, OpError> {
        let mut st = self.state.lock();
        ensure_exportable(&st, &a.volume, ExportKind::Ublk)?;
        let mut ec = ExportConfig {
            volume: a.volume.clone(),
            kind: ExportKind::Ublk,
            listen: String::new(),
            read_only: a.read_only,
            queues: Some(a.queues.unwrap_or(DEFAULT_QUEUES)),
            depth: Some(a.depth.unwrap_or(DEFAULT_DEPTH)),
            dev_id: None,
            mode: None,
            tls_certificates: None,
        };
        let (path, id) = start_ublk(&mut st, &ec)?;
        ec.listen = path;
        ec.dev_id = Some(id);
        self.commit_export(&mut st, ec)
    }

    fn export_remove(&self, a: ExportRemoveArgs) -> Result<Value, OpError> {
        let name = a.volume;
        let mut st = self.state.lock();
        let kind = match a.kind.as_deref() {
            None => None,
            Some("nbd") => Some(ExportKind::Nbd),
            Some("ublk") => Some(ExportKind::Ublk),
            Some(k) => {
                return Err(OpError::invalid(format!(
                    "export kind must be nbd or ublk, not {k:?}"
                )))
            }
        };
        let matching: Vec<usize> = st
            .config
            .exports
            .iter()
            .enumerate()
            .filter(|(_, e)| e.volume == name && kind.is_none_or(|k| e.kind == k))
            .map(|(i, _)| i)
            .collect();
        if matching.len() > 1 {
            return Err(OpError::invalid(format!(
                "volume {name} is exported over NBD and ublk; say which with --kind"
            )));
        }
        let Some(&pos) = matching.first() else {
            return Err(OpError::not_found(format!("volume {name} is not exported")));
        };
        let ec = st.config.exports.remove(pos);
        if let Err(e) = self.persist(&st) {
            st.config.exports.insert(pos, ec);
            return Err(e);
        }
        stop_export(&mut st, &ec);
        st.export_errors.remove(&name);
        let kind = kind_name(ec.kind);
        self.events.publish(
            "export.removed",
            &name,
            Note::new(format!("{kind} {}", ec.listen))
                .field("kind", kind)
                .field("listen", &ec.listen)
                .field("why", "export remove"),
        );
        Ok(json!({"volume": name, "kind": kind, "listen": ec.listen}))
    }

    fn cache_enable(&self, a: CacheEnableArgs) -> Result<Value, OpError> {
        let size_bytes = a.size_bytes.unwrap_or(DEFAULT_CACHE_BYTES);
        if size_bytes < MIN_CACHE_BYTES {
            return Err(OpError::invalid(format!(
                "cache of volume {}: size {size_bytes} is below the minimum of {MIN_CACHE_BYTES} bytes",
                a.volume
            )));
        }
        let mut st = self.state.lock();
        let volume = online_volume(&st, &a.volume)?;
        if st.volumes[&a.volume].cache.is_some() {
            return Err(OpError::new(
                ErrorCode::Exists,
                format!(
                    "volume {} already has a cache; `umbra cache disable` it first",
                    a.volume
                ),
            ));
        }
        let write_back = match a.mode.as_deref().unwrap_or("write-through") {
            "write-through" => {
                if a.safe_store.is_some() {
                    return Err(OpError::invalid(format!(
                        "cache of volume {}: a safe store is for --mode write-back",
                        a.volume
                    )));
                }
                None
            }
            "write-back" => {
                let Some(path) = a.safe_store.clone() else {
                    return Err(OpError::invalid(format!(
                        "cache of volume {}: write-back needs --safe-store FILE (a new file \
                         that holds acknowledged writes until they are destaged)",
                        a.volume
                    )));
                };
                let path = absolute(&path)?;
                let bytes = a.safe_store_bytes.unwrap_or(DEFAULT_SAFE_STORE_BYTES);
                let dev = FileBackend::create_preallocated(&path, bytes, FileOptions::default())
                    .map_err(|e| {
                        OpError::failed(format!("cache of volume {}: safe store: {e}", a.volume))
                    })?;
                match WriteBack::create(Arc::new(dev), volume.size_bytes()) {
                    Ok(wb) => Some((wb, path)),
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        return Err(OpError::invalid(format!(
                            "cache of volume {}: safe store {}: {e}",
                            a.volume,
                            path.display()
                        )));
                    }
                }
            }
            other => {
                return Err(OpError::invalid(format!(
                    "cache of volume {}: mode must be write-through or write-back, not {other:?}",
                    a.volume
                )))
            }
        };
        let safe_store = write_back.as_ref().map(|(_, p)| p.clone());
        let cache = match attach_cache(&volume, size_bytes, write_back.map(|(wb, _)| wb)) {
            Ok(c) => c,
            Err(e) => {
                if let Some(p) = &safe_store {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        let cfg = CacheConfig {
            size_bytes,
            safe_store: safe_store.clone(),
        };
        set_cache_config(&mut st, &a.volume, Some(cfg));
        if let Err(e) = self.persist(&st) {
            set_cache_config(&mut st, &a.volume, None);
            let _ = volume.detach("cache");
            let _ = cache.shutdown(false);
            if let Some(p) = &safe_store {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        self.watch_cache(&a.volume, &cache);
        st.volumes.get_mut(&a.volume).expect("online").cache = Some(cache);
        let note = match &safe_store {
            Some(p) => Note::new(format!(
                "write-back, {size_bytes} bytes, safe store {}",
                p.display()
            ))
            .field("mode", "write-back")
            .field("safe_store", p),
            None => Note::new(format!("write-through, {size_bytes} bytes"))
                .field("mode", "write-through"),
        };
        self.events.publish(
            "cache.enabled",
            &a.volume,
            note.field("size_bytes", size_bytes),
        );
        Ok(volume_json(&st, &a.volume))
    }

    /// Publish a `cache.failed` event if the volume's write-back cache fails.
    fn watch_cache(&self, volume: &str, cache: &CacheService) {
        let events = self.events.clone();
        let name = volume.to_owned();
        cache.on_failure(Box::new(move |why: &str| {
            events.publish(
                "cache.failed",
                &name,
                Note::new(format!(
                    "write-back cache failed: {why}; writes fail until it is disabled"
                ))
                .field("why", why.to_string()),
            )
        }));
    }

    fn cache_disable(&self, a: NameOrVolume) -> Result<Value, OpError> {
        let mut st = self.state.lock();
        let volume = online_volume(&st, &a.volume)?;
        if st.volumes[&a.volume].cache.is_none() {
            return Err(OpError::not_found(format!(
                "volume {} has no cache",
                a.volume
            )));
        }
        let old = st
            .config
            .volumes
            .iter()
            .find(|v| v.name == a.volume)
            .and_then(|v| v.cache.clone());
        set_cache_config(&mut st, &a.volume, None);
        if let Err(e) = self.persist(&st) {
            set_cache_config(&mut st, &a.volume, old);
            return Err(e);
        }
        // Detaching a write-back cache destages everything first.
        if let Err(e) = volume.detach("cache") {
            set_cache_config(&mut st, &a.volume, old);
            let _ = self.persist(&st);
            return Err(OpError::failed(e.to_string()));
        }
        if let Some(c) = st.volumes.get_mut(&a.volume).expect("online").cache.take() {
            let _ = c.shutdown(false);
        }
        if let Some(p) = old.and_then(|c| c.safe_store) {
            let _ = std::fs::remove_file(p);
        }
        self.events.publish("cache.disabled", &a.volume, "");
        Ok(volume_json(&st, &a.volume))
    }

    /// `volume reopen`: a volume whose backend failed (fail-stop) or that
    /// could not be opened at start-up gets a fresh backend on the same
    /// file, and its NBD exports serve from it. What the failed backend had
    /// not made durable is gone (that is what its failure said); the new
    /// one starts from what the file holds. A healthy volume is left alone.
    fn volume_reopen(&self, a: NameArgs) -> Result<Value, OpError> {
        let mut st = self.state.lock();
        let entry = st.volumes.get(&a.name).ok_or_else(|| no_volume(&a.name))?;
        let old = entry.volume.clone();
        if old.as_ref().is_some_and(|v| v.failure().is_none()) {
            return Ok(volume_json(&st, &a.name));
        }
        if let Some(v) = &old {
            let services = v.service_names();
            if !services.is_empty() {
                return Err(OpError::new(
                    ErrorCode::Busy,
                    format!(
                        "volume {} has services on it ({}); restart the daemon to reopen it with them",
                        a.name,
                        services.join(", ")
                    ),
                ));
            }
        }
        let Some(vc) = st.config.volumes.iter().find(|v| v.name == a.name).cloned() else {
            return Err(no_volume(&a.name));
        };
        if vc.cache.is_some() {
            return Err(OpError::new(
                ErrorCode::Busy,
                format!(
                    "volume {} has a cache configured; restart the daemon to reopen it with its cache",
                    a.name
                ),
            ));
        }
        if st
            .config
            .exports
            .iter()
            .any(|e| e.volume == a.name && e.kind == ExportKind::Ublk)
        {
            return Err(OpError::new(
                ErrorCode::Busy,
                format!(
                    "volume {} has a ublk export; remove it (`umbra export remove {} --kind ublk`), reopen, export again",
                    a.name, a.name
                ),
            ));
        }
        let be = FileBackend::open(&vc.path, vc.options).map_err(|e| {
            OpError::failed(format!(
                "volume {}: reopening {}: {e}",
                a.name,
                vc.path.display()
            ))
        })?;
        // Refused while the storage plainly still fails: the first block is
        // written back as it is and flushed (a dead or detached device
        // fails here). Storage that fails only for new allocations (a full
        // filesystem or thin pool) passes, and fails again at its next
        // flush.
        let probe = (|| {
            let n = 4096.min(be.size_bytes()) as usize;
            let mut b = vec![0u8; n];
            be.read(&mut b, 0)?;
            be.write(&b, 0, false)?;
            be.flush()
        })();
        if let Err(e) = probe {
            return Err(OpError::failed(format!(
                "volume {}: its storage still fails (rewriting its first block and flushing: {e}); fix it, then reopen",
                a.name
            )));
        }
        let description = be.describe();
        let size = vc.virtual_size_bytes.unwrap_or(be.size_bytes());
        let volume = Arc::new(Volume::with_size(&a.name, Arc::new(be), description, size));
        let entry = st.volumes.get_mut(&a.name).expect("looked up above");
        entry.volume = Some(volume.clone());
        entry.error = None;
        let exports: Vec<ExportConfig> = exports_of(&st, &a.name);
        for ec in &exports {
            st.export_errors.remove(&ec.volume);
            if let Err(e) = start_export(&mut st, ec) {
                st.export_errors.insert(ec.volume.clone(), e.message);
            }
        }
        // The old backend refuses everything; its connections end on
        // their own errors.
        if let Some(v) = old {
            let _ = v.close();
        }
        self.events.publish(
            "volume.reopened",
            &a.name,
            Note::new(format!("on {}", vc.path.display())).field("path", &vc.path),
        );
        Ok(volume_json(&st, &a.name))
    }

    /// Publish `volume.failed` once for each volume whose backend fails
    /// (fail-stop after a failed flush or FUA write), polled twice a second
    /// off every data path: the failure is visible in `volume info`,
    /// `status`, `export list` and the metrics at once, and here as an
    /// event.
    fn watch_health(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("volume-health".into())
            .spawn(move || {
                let mut said: HashMap<String, String> = HashMap::new();
                let mut progress = Progress::default();
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    let Some(d) = weak.upgrade() else { return };
                    if d.is_stopping() {
                        return;
                    }
                    d.progress_events(&mut progress);
                    let failed: Vec<(String, String)> = {
                        let st = d.state.lock();
                        st.volumes
                            .iter()
                            .filter_map(|(n, e)| {
                                e.volume
                                    .as_ref()
                                    .and_then(|v| v.failure())
                                    .map(|f| (n.clone(), f))
                            })
                            .collect()
                    };
                    said.retain(|n, _| failed.iter().any(|(m, _)| m == n));
                    for (n, why) in failed {
                        if said.insert(n.clone(), why.clone()).is_none() {
                            d.events.publish(
                                "volume.failed",
                                &n,
                                Note::new(format!(
                                    "{why}; every request fails until `umbra volume reopen {n}`"
                                ))
                                .field("why", &why),
                            );
                        }
                    }
                }
            });
    }

    /// Progress events, at most one per object and [`PROGRESS_EVERY`]
    /// while it moves: `image.copy_progress` for a running copy,
    /// `repl.sync_progress` for a leg's sync, `repl.verify_progress` for
    /// a verify. Called by the health thread, outside every lock.
    fn progress_events(&self, p: &mut Progress) {
        let now = std::time::Instant::now();
        let mut seen = std::collections::HashSet::new();
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        for s in self.imaging.list() {
            if s.state != "copying" {
                continue;
            }
            let total = s.copy_chunks_total * s.chunk_bytes;
            let done = total.saturating_sub(s.chunks_to_copy * s.chunk_bytes);
            let key = format!("image:{}", s.name);
            if let Some(rate) = p.advance(&key, done, now) {
                self.events.publish(
                    "image.copy_progress",
                    &s.name,
                    Note::new(format!("{}% copied", s.percent))
                        .field("direction", s.direction)
                        .field("copied_bytes", done)
                        .field("total_bytes", total)
                        .field("percent", s.percent)
                        .field("rate_bytes_per_s", rate),
                );
            }
            seen.insert(key);
        }
        for leg in self.repl.list() {
            let (set, peer) = (s(&leg["name"]), s(&leg["peer_node"]));
            if leg["state"] == "syncing" || leg["state"] == "reverse syncing" {
                let total = leg["sync_total_bytes"].as_u64().unwrap_or(0);
                let done = leg["sync_done_bytes"].as_u64().unwrap_or(0).min(total);
                let key = format!("sync:{set}:{peer}");
                if let Some(rate) = p.advance(&key, done, now) {
                    let percent = if total == 0 {
                        100.0
                    } else {
                        (done as f64 * 1000.0 / total as f64).floor() / 10.0
                    };
                    self.events.publish(
                        "repl.sync_progress",
                        &set,
                        Note::new(format!("{percent}% synced to {peer}"))
                            .field("peer", &peer)
                            .field("reverse", leg["state"] == "reverse syncing")
                            .field("synced_bytes", done)
                            .field("total_bytes", total)
                            .field("percent", percent)
                            .field("rate_bytes_per_s", rate),
                    );
                }
                seen.insert(key);
            }
            let v = &leg["verify"];
            if v["running"] == true {
                let (done, total) = (
                    v["chunks_done"].as_u64().unwrap_or(0),
                    v["chunks_total"].as_u64().unwrap_or(0),
                );
                let chunk = v["chunk_bytes"].as_u64().unwrap_or(0);
                let key = format!("verify:{set}:{peer}");
                if let Some(rate) = p.advance(&key, done * chunk, now) {
                    self.events.publish(
                        "repl.verify_progress",
                        &set,
                        Note::new(format!("{done} of {total} chunks compared with {peer}"))
                            .field("peer", &peer)
                            .field("chunks_done", done)
                            .field("chunks_total", total)
                            .field("chunks_differing", v["chunks_differing"].as_u64())
                            .field("rate_bytes_per_s", rate),
                    );
                }
                seen.insert(key);
            }
        }
        p.last.retain(|k, _| seen.contains(k));
    }

    /// `events --now`: every object as it is, once: volumes, exports, image
    /// sets, replication sets (with every leg), hooks. Read after the
    /// subscription, so an event that follows may already be reflected.
    pub fn object_states(&self) -> Vec<(&'static str, String, Value)> {
        let mut out: Vec<(&'static str, String, Value)> = Vec::new();
        for v in self.volume_list() {
            out.push(("volume", v["name"].as_str().unwrap_or_default().into(), v));
        }
        for e in self.export_list() {
            let name = e["volume"].as_str().unwrap_or_default().to_owned();
            out.push(("export", name, e));
        }
        if let Ok(Value::Array(sets)) = self.handle("image.list", &Value::Null) {
            for i in sets {
                out.push((
                    "image_set",
                    i["name"].as_str().unwrap_or_default().into(),
                    i,
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for l in self.repl.list() {
            let name = l["name"].as_str().unwrap_or_default().to_owned();
            if seen.insert(name.clone()) {
                let info = self.repl.info(&name, None).unwrap_or(l);
                out.push(("set", name, info));
            }
        }
        for h in self.hooks.list() {
            out.push(("hook", h["name"].as_str().unwrap_or_default().into(), h));
        }
        out
    }

    /// `hook add`: store the hook, then start it. The same hook again is
    /// a no-op; another with that name is refused.
    fn hook_add(&self, a: HookAddArgs) -> Result<Value, OpError> {
        let cfg = crate::control::hooks::HookConfig {
            name: a.name,
            on: a.on,
            run: a.run,
            timeout_ms: a
                .timeout_ms
                .unwrap_or(crate::control::hooks::DEFAULT_HOOK_TIMEOUT_MS),
        };
        cfg.validate().map_err(OpError::invalid)?;
        if !cfg.run.is_file() {
            return Err(OpError::invalid(format!(
                "hook {}: {} is not a file",
                cfg.name,
                cfg.run.display()
            )));
        }
        let mut st = self.state.lock();
        if let Some(old) = st.config.hooks.iter().find(|h| h.name == cfg.name) {
            if *old == cfg {
                return Ok(self.hook_json(&cfg.name));
            }
            return Err(OpError::new(
                ErrorCode::Exists,
                format!(
                    "hook {} exists with other settings; `umbra hook remove {}` first",
                    cfg.name, cfg.name
                ),
            ));
        }
        st.config.hooks.push(cfg.clone());
        if let Err(e) = self.persist(&st) {
            st.config.hooks.pop();
            return Err(e);
        }
        drop(st);
        self.hooks.add(cfg.clone());
        self.events.publish(
            "hook.added",
            &cfg.name,
            Note::new(format!(
                "on {} runs {}",
                cfg.on.join(","),
                cfg.run.display()
            ))
            .field("on", &cfg.on)
            .field("run", &cfg.run)
            .field("timeout_ms", cfg.timeout_ms),
        );
        Ok(self.hook_json(&cfg.name))
    }

    fn hook_json(&self, name: &str) -> Value {
        self.hooks
            .list()
            .into_iter()
            .find(|h| h["name"] == name)
            .unwrap_or(Value::Null)
    }

    fn hook_remove(&self, a: NameArgs) -> Result<Value, OpError> {
        let mut st = self.state.lock();
        let Some(i) = st.config.hooks.iter().position(|h| h.name == a.name) else {
            return Err(OpError::not_found(format!("no hook named {}", a.name)));
        };
        let old = st.config.hooks.remove(i);
        if let Err(e) = self.persist(&st) {
            st.config.hooks.insert(i, old);
            return Err(e);
        }
        drop(st);
        self.hooks.remove(&a.name);
        self.events.publish("hook.removed", &a.name, "");
        Ok(json!({"name": a.name, "removed": true}))
    }

    /// Every counter of volumes `names` (all when empty): I/O at the
    /// volume, its cache, its replication legs. The state lock is held only
    /// to read the counters; replication is asked after it is released.
    pub fn volume_stats(&self, names: &[String]) -> Result<Vec<VolumeStats>, OpError> {
        let mut out = Vec::new();
        {
            let st = self.state.lock();
            for n in names {
                if !st.volumes.contains_key(n) {
                    return Err(no_volume(n));
                }
            }
            for (name, e) in &st.volumes {
                if !names.is_empty() && !names.contains(name) {
                    continue;
                }
                out.push(VolumeStats {
                    volume: name.clone(),
                    online: e.volume.is_some(),
                    failure: e.volume.as_ref().and_then(|v| v.failure()),
                    io: e.volume.as_ref().map(|v| v.io_stats()),
                    cache: e.cache.as_ref().map(|c| c.stats()),
                    exports: st
                        .config
                        .exports
                        .iter()
                        .filter(|x| &x.volume == name)
                        .map(|x| export_json(&st, x))
                        .collect(),
                    replication: Vec::new(),
                    image: Vec::new(),
                });
            }
        }
        let legs = self.repl.list();
        let sets = self.imaging.list();
        for v in &mut out {
            v.image = sets
                .iter()
                .filter(|s| s.master == v.volume)
                .cloned()
                .collect();
            v.replication = legs
                .iter()
                .filter(|l| l["volume"] == v.volume.as_str())
                .cloned()
                .collect();
        }
        Ok(out)
    }

    fn cache_stats(&self, a: CacheStatsArgs) -> Result<Value, OpError> {
        let st = self.state.lock();
        let stats_of = |name: &str, e: &VolumeEntry| {
            e.cache.as_ref().map(|c| {
                let mut v = serde_json::to_value(c.stats()).expect("stats serialise");
                v["volume"] = json!(name);
                v
            })
        };
        match a.volume {
            Some(name) => {
                let e = st.volumes.get(&name).ok_or_else(|| no_volume(&name))?;
                stats_of(&name, e)
                    .ok_or_else(|| OpError::not_found(format!("volume {name} has no cache")))
            }
            None => Ok(Value::Array(
                st.volumes
                    .iter()
                    .filter_map(|(n, e)| stats_of(n, e))
                    .collect(),
            )),
        }
    }

    fn export_list(&self) -> Vec<Value> {
        let st = self.state.lock();
        st.config
            .exports
            .iter()
            .map(|e| export_json(&st, e))
            .collect()
    }

    /// Clean shutdown: stop admitting admin requests, disconnect every
    /// client (in-flight requests complete), drain and flush every volume,
    /// persist the configuration.
    pub fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        self.events
            .publish("daemon.stopping", "", "shutdown requested");
        let mut st = self.state.lock();
        for (_, server) in st.servers.drain() {
            server.shutdown();
        }
        for (name, u) in st.ublk.drain() {
            if let Err(e) = u.stop() {
                log::error!("ublk export of {name}: stop: {e}");
            }
        }
        // No client writes any more. Flush every volume first (outside the
        // lock: a replicated flush waits for its peers), so the writes an
        // imaging layer still holds queued reach replication while its
        // links are up; then let the peers catch up, close links.
        let volumes: Vec<_> = st
            .volumes
            .values()
            .filter_map(|e| e.volume.clone())
            .collect();
        drop(st);
        for v in volumes {
            if let Err(e) = v.flush() {
                log::error!("volume {}: flush at shutdown: {e}", v.name());
            }
        }
        self.cluster.stop();
        self.repl.shutdown();
        self.hooks.stop();
        let st = self.state.lock();
        for (name, entry) in &st.volumes {
            if let Some(v) = &entry.volume {
                match v.close() {
                    Ok(()) => log::info!("volume {name}: flushed and closed"),
                    Err(e) => log::error!("volume {name}: close failed: {e}"),
                }
            }
        }
        // No request reaches a volume now: destage write-back caches,
        // write every image bit and mark the bitmap volumes clean.
        for (name, entry) in &st.volumes {
            if let Some(c) = &entry.cache {
                if let Err(e) = c.shutdown(true) {
                    log::error!("volume {name}: write-back destage at shutdown: {e}; the safe store keeps the rest");
                }
            }
        }
        self.imaging.suspend_all();
        if let Err(e) = st.config.save(&self.data_dir) {
            log::error!("persisting the configuration at shutdown: {e}");
        }
        let _ = std::fs::remove_file(self.socket_path());
    }
}

/// Start (or join) the NBD server for `ec.listen` and add the export.
/// Returns the bound address.
fn start_export(st: &mut State, ec: &ExportConfig) -> Result<String, OpError> {
    let volume = online_volume(st, &ec.volume)?;
    let addr: ListenAddr = ec
        .listen
        .parse()
        .map_err(|e: String| OpError::invalid(format!("export of {}: {e}", ec.volume)))?;
    let key = server_key(&addr);
    let server = match key.as_ref().and_then(|k| st.servers.get(k)) {
        Some(s) if s.tls() != ec.tls_certificates.is_some() => {
            return Err(OpError::invalid(format!(
                "export of {}: the listener on {addr} serves {}; every export on one listener is served alike",
                ec.volume,
                if s.tls() { "TLS only (give --tls-certificates)" } else { "without TLS" }
            )))
        }
        Some(s) => s.clone(),
        None => {
            let tls = match &ec.tls_certificates {
                Some(dir) => Some(crate::export::nbd::load_tls(dir).map_err(|e| {
                    OpError::invalid(format!("export of {}: TLS certificates: {e}", ec.volume))
                })?),
                None => None,
            };
            let s = NbdServer::start(&addr, tls, st.nbd_max_clients).map_err(|e| {
                OpError::failed(format!(
                    "export of {}: cannot listen on {addr}: {e}",
                    ec.volume
                ))
            })?;
            st.servers.insert(s.local_addr().to_owned(), s.clone());
            s
        }
    };
    if let ListenAddr::Unix(p) = &addr {
        // Only the daemon's user may connect unless the export says
        // otherwise (the socket is the export's only access control).
        let mode = ec.mode.unwrap_or(0o600);
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            OpError::failed(format!(
                "export of {}: cannot set mode {mode:o} on {}: {e}",
                ec.volume,
                p.display()
            ))
        })?;
    }
    server.add_export(&ec.volume, volume, ec.read_only);
    Ok(server.local_addr().to_owned())
}

/// Start a ublk export: re-attach to the device a crashed daemon left in
/// user recovery, or create a new one. Returns (device path, device id).
fn start_ublk(st: &mut State, ec: &ExportConfig) -> Result<(String, u32), OpError> {
    let volume = online_volume(st, &ec.volume)?;
    let control = match &st.ublk_control {
        Some(c) => c.clone(),
        None => {
            let c = Arc::new(umbra_ublk::Control::open().map_err(|e| {
                OpError::failed(format!(
                    "ublk export of {}: {}: {e} (is the ublk_drv module loaded? `modprobe ublk_drv`)",
                    ec.volume,
                    umbra_ublk::CONTROL_PATH
                ))
            })?);
            st.ublk_control = Some(c.clone());
            c
        }
    };
    let mut recover = None;
    if let Some(id) = ec.dev_id {
        if let Ok(info) = control.dev_info(id) {
            if info.state == crate::export::ublk::S_DEV_QUIESCED {
                recover = Some(id);
            } else {
                // A device of ours that was not cleanly removed and cannot
                // be recovered: remove it and start afresh.
                log::warn!(
                    "ublk device {id} (state {}) is stale; removing it",
                    info.state
                );
                let _ = control.stop(id);
                let _ = control.delete(id);
            }
        }
    }
    let u = UblkExport::start(
        &control,
        volume,
        ec.read_only,
        ec.queues.unwrap_or(DEFAULT_QUEUES),
        ec.depth.unwrap_or(DEFAULT_DEPTH),
        recover,
    )
    .map_err(|e| OpError::failed(format!("ublk export of {}: {e}", ec.volume)))?;
    if recover.is_some() {
        log::info!("ublk export of {}: re-attached to {}", ec.volume, u.path());
    }
    let r = (u.path().to_owned(), u.dev_id());
    st.ublk.insert(ec.volume.clone(), u);
    Ok(r)
}

/// The volume exists and has no export of this kind yet.
fn ensure_exportable(st: &State, volume: &str, kind: ExportKind) -> Result<(), OpError> {
    if !st.volumes.contains_key(volume) {
        return Err(no_volume(volume));
    }
    if st
        .config
        .exports
        .iter()
        .any(|e| e.volume == volume && e.kind == kind)
    {
        return Err(OpError::new(
            ErrorCode::Exists,
            format!(
                "volume {volume} is already exported over {}; see `umbra export list`",
                match kind {
                    ExportKind::Nbd => "NBD",
                    ExportKind::Ublk => "ublk",
                }
            ),
        ));
    }
    Ok(())
}

fn kind_name(k: ExportKind) -> &'static str {
    match k {
        ExportKind::Nbd => "nbd",
        ExportKind::Ublk => "ublk",
    }
}

fn stop_export(st: &mut State, ec: &ExportConfig) {
    if ec.kind == ExportKind::Ublk {
        if let Some(u) = st.ublk.remove(&ec.volume) {
            if let Err(e) = u.stop() {
                log::error!("ublk export of {}: stop: {e}", ec.volume);
            }
        }
        return;
    }
    let Ok(addr) = ec.listen.parse::<ListenAddr>() else {
        return;
    };
    let Some(key) = server_key(&addr) else { return };
    if let Some(server) = st.servers.get(&key).cloned() {
        server.remove_export(&ec.volume);
        if server.export_names().is_empty() {
            server.shutdown();
            st.servers.remove(&key);
        }
    }
}

/// The key a server is registered under: its bound address. A TCP port of
/// 0 never matches a running server (each such request gets its own port).
fn server_key(addr: &ListenAddr) -> Option<String> {
    match addr {
        ListenAddr::Unix(p) => Some(format!("unix:{}", p.display())),
        ListenAddr::Tcp(a) => {
            let sa = a.to_socket_addrs().ok()?.next()?;
            (sa.port() != 0).then(|| sa.to_string())
        }
    }
}

/// Why volume `name`'s backend refuses all I/O, if it does.
fn volume_failure(st: &State, name: &str) -> Option<String> {
    st.volumes
        .get(name)
        .and_then(|e| e.volume.as_ref())
        .and_then(|v| v.failure())
}

fn volume_json(st: &State, name: &str) -> Value {
    let cfg = st.config.volumes.iter().find(|v| v.name == name);
    let entry = &st.volumes[name];
    let failure = volume_failure(st, name);
    // Each export as `export list` shows it.
    let exports: Vec<_> = st
        .config
        .exports
        .iter()
        .filter(|e| e.volume == name)
        .map(|e| export_json(st, e))
        .collect();
    json!({
        "name": name,
        "state": match (&entry.volume, &failure) {
            (None, _) => "offline",
            (Some(_), Some(_)) => "failed",
            (Some(_), None) => "online",
        },
        "error": entry.error.clone().or(failure.map(|f| {
            format!("{f}; writes and flushes fail until `umbra volume reopen {name}`")
        })),
        "size_bytes": entry.volume.as_ref().map(|v| v.size_bytes()),
        "path": cfg.map(|c| c.path.clone()),
        "engine": cfg.map(|c| c.options.engine),
        "direct": cfg.map(|c| c.options.direct),
        "backend": entry.volume.as_ref().map(|v| v.description().to_owned()),
        "services": entry.volume.as_ref().map(|v| v.service_names()).unwrap_or_default(),
        "cache": cfg.and_then(|c| c.cache.as_ref()).map(|c| json!({
            "mode": if c.safe_store.is_some() { "write-back" } else { "write-through" },
            "size_bytes": c.size_bytes,
            "safe_store": c.safe_store,
            "state": match entry.cache.as_ref().and_then(|c| c.stats().write_back).and_then(|w| w.failed) {
                Some(f) => format!("failed: {f}"),
                None => "ok".to_owned(),
            },
        })),
        "image": st.config.images.iter().filter_map(|i| {
            if i.master == name {
                Some(json!({"set": i.name, "role": "master"}))
            } else if i.shadow == name {
                Some(json!({"set": i.name, "role": "shadow"}))
            } else {
                None
            }
        }).collect::<Vec<_>>(),
        "exports": exports,
        "io": entry.volume.as_ref().map(|v| v.io_stats().to_json()),
    })
}

/// Every key of an export's JSON, NBD or ublk (`export_json`): one shape
/// whatever the kind, null where a key does not apply.
const EXPORT_KEYS: &[&str] = &[
    "volume",
    "kind",
    "listen",
    "uri",
    "device",
    "dev_id",
    "queues",
    "depth",
    "read_only",
    "user_copy",
    "state",
    "error",
    "clients",
    "listener_refused_clients",
];

/// An export as `export list` shows it.
fn export_json(st: &State, ec: &ExportConfig) -> Value {
    let mut v = export_json_known(st, ec);
    if let Value::Object(m) = &mut v {
        for k in EXPORT_KEYS {
            m.entry(*k).or_insert(Value::Null);
        }
    }
    v
}

fn export_json_known(st: &State, ec: &ExportConfig) -> Value {
    if ec.kind == ExportKind::Ublk {
        let running = st.ublk.get(&ec.volume);
        return json!({
            "volume": ec.volume,
            "kind": "ublk",
            "listen": ec.listen,
            "device": running.map(|u| u.path().to_owned()),
            "dev_id": ec.dev_id,
            "queues": ec.queues,
            "depth": ec.depth,
            "read_only": ec.read_only,
            "user_copy": running.map(|u| u.user_copy()),
            "state": if running.is_some() { "serving" } else { "failed" },
            "error": st.export_errors.get(&ec.volume),
        });
    }
    let addr = ec.listen.parse::<ListenAddr>().ok();
    let server = addr
        .as_ref()
        .and_then(server_key)
        .and_then(|k| st.servers.get(&k));
    let uri = match &addr {
        Some(ListenAddr::Unix(p)) => format!("nbd+unix:///{}?socket={}", ec.volume, p.display()),
        _ if ec.tls_certificates.is_some() => format!("nbds://{}/{}", ec.listen, ec.volume),
        _ => format!("nbd://{}/{}", ec.listen, ec.volume),
    };
    let failed = volume_failure(st, &ec.volume);
    json!({
        "volume": ec.volume,
        "kind": "nbd",
        "listen": ec.listen,
        "uri": uri,
        "read_only": ec.read_only,
        "state": if server.is_none() || failed.is_some() { "failed" } else { "serving" },
        "error": st.export_errors.get(&ec.volume).cloned().or(failed.map(|f| format!("volume {} failed: {f}", ec.volume))),
        "clients": server.map(|s| s.clients_of(&ec.volume)).unwrap_or(0),
        "listener_refused_clients": server.map(|s| s.refused_clients()).unwrap_or(0),
    })
}

/// Attach a cache at the bottom of `volume`'s stack, so every other
/// service's reads benefit; write-back when `write_back` is given.
fn attach_cache(
    volume: &Volume,
    size_bytes: u64,
    write_back: Option<Arc<WriteBack>>,
) -> Result<Arc<CacheService>, OpError> {
    let cache = Arc::new(match write_back {
        Some(wb) => CacheService::with_write_back(size_bytes, wb),
        None => CacheService::new(size_bytes),
    });
    volume
        .quiesce("enable cache")
        .and_then(|mut g| g.insert(0, cache.clone()))
        .map_err(|e| OpError::failed(e.to_string()))?;
    Ok(cache)
}

/// Default size of a write-back safe store.
pub const DEFAULT_SAFE_STORE_BYTES: u64 = 64 << 20;

/// Re-attach a volume's configured cache at start; a write-back cache
/// replays its safe store first. An error means the volume must not serve.
fn restore_cache(
    volume: &Arc<Volume>,
    cfg: Option<&CacheConfig>,
) -> Result<Option<Arc<CacheService>>, OpError> {
    let Some(c) = cfg else { return Ok(None) };
    let write_back = match &c.safe_store {
        None => None,
        Some(path) => {
            let dev = FileBackend::open(path, FileOptions::default()).map_err(|e| {
                OpError::failed(format!("write-back safe store {}: {e}", path.display()))
            })?;
            let wb = WriteBack::open(Arc::new(dev), volume.size_bytes()).map_err(|e| {
                OpError::failed(format!(
                    "write-back safe store {} refused: {e}; the volume stays offline so that \
                     no stale data is served",
                    path.display()
                ))
            })?;
            Some(wb)
        }
    };
    let wb = write_back.is_some();
    match attach_cache(volume, c.size_bytes, write_back) {
        Ok(cache) => Ok(Some(cache)),
        Err(e) if !wb => {
            log::error!(
                "volume {}: cache not restored: {}",
                volume.name(),
                e.message
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn set_cache_config(st: &mut State, name: &str, cache: Option<CacheConfig>) {
    if let Some(v) = st.config.volumes.iter_mut().find(|v| v.name == name) {
        v.cache = cache;
    }
}

fn ensure_no_volume(st: &State, name: &str) -> Result<(), OpError> {
    if st.volumes.contains_key(name) {
        return Err(OpError::new(
            ErrorCode::Exists,
            format!("volume {name} already exists"),
        ));
    }
    Ok(())
}

fn online_volume(st: &State, name: &str) -> Result<Arc<Volume>, OpError> {
    match st.volumes.get(name) {
        Some(VolumeEntry {
            volume: Some(v), ..
        }) => Ok(v.clone()),
        Some(VolumeEntry { error, .. }) => Err(OpError::failed(format!(
            "volume {name} is offline: {}",
            error.as_deref().unwrap_or("unknown cause")
        ))),
        None => Err(no_volume(name)),
    }
}

fn no_volume(name: &str) -> OpError {
    OpError::not_found(format!("no volume named {name}; see `umbra volume list`"))
}

fn absolute(p: &Path) -> Result<PathBuf, OpError> {
    if p.is_absolute() {
        Ok(p.to_owned())
    } else {
        Err(OpError::invalid(format!(
            "path {} must be absolute (the CLI makes paths absolute for you)",
            p.display()
        )))
    }
}

/// The exports of volume `name`, as configured.
fn exports_of(st: &State, name: &str) -> Vec<ExportConfig> {
    st.config
        .exports
        .iter()
        .filter(|e| e.volume == name)
        .cloned()
        .collect()
}

/// A volume size must be a positive multiple of the sector size.
fn check_size(name: &str, size_bytes: u64) -> Result<(), OpError> {
    if size_bytes == 0 || size_bytes % SECTOR_SIZE_BYTES != 0 {
        return Err(OpError::invalid(format!(
            "volume {name}: size {size_bytes} must be a positive multiple of {SECTOR_SIZE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A volume's added latency (`latency_ms`, up to 10 s) in microseconds.
fn latency_us(ms: Option<f64>) -> Result<u32, OpError> {
    match ms {
        None => Ok(0),
        Some(ms) if (0.0..=10_000.0).contains(&ms) => Ok((ms * 1000.0).round() as u32),
        Some(ms) => Err(OpError::invalid(format!(
            "latency {ms} ms: give 0 to 10000 ms"
        ))),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(op: &str, args: &Value) -> Result<T, OpError> {
    let args = if args.is_null() {
        json!({})
    } else {
        args.clone()
    };
    serde_json::from_value(args).map_err(|e| OpError::invalid(format!("{op}: bad arguments: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameArgs {
    name: String,
}

/// An operation without arguments: anything given is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameOrVolume {
    volume: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeCreateArgs {
    name: String,
    size_bytes: u64,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    engine: Option<EngineKind>,
    #[serde(default)]
    direct: bool,
    /// Added to every request (tests and benchmarks).
    #[serde(default)]
    latency_ms: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeAddArgs {
    name: String,
    path: PathBuf,
    #[serde(default)]
    engine: Option<EngineKind>,
    #[serde(default)]
    direct: bool,
    /// Added to every request (tests and benchmarks).
    #[serde(default)]
    latency_ms: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeRemoveArgs {
    name: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    delete_data: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeResizeArgs {
    name: String,
    size_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheEnableArgs {
    volume: String,
    #[serde(default)]
    size_bytes: Option<u64>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    safe_store: Option<PathBuf>,
    #[serde(default)]
    safe_store_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookAddArgs {
    name: String,
    on: Vec<String>,
    run: PathBuf,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsArgs {
    #[serde(default)]
    volumes: Vec<String>,
}

/// One volume's counters, as `stats` and the metrics exposition show them.
pub struct VolumeStats {
    pub volume: String,
    pub online: bool,
    /// Why its backend refuses all I/O (fail-stop), if it does.
    pub failure: Option<String>,
    /// Requests through the volume (none while it is offline).
    pub io: Option<crate::interposer::stats::IoSnapshot>,
    pub cache: Option<crate::services::cache::CacheStats>,
    /// Its exports, as `export list` shows them.
    pub exports: Vec<Value>,
    /// Its replication legs, as `repl list` shows them.
    pub replication: Vec<Value>,
    /// The image sets it is the master of.
    pub image: Vec<crate::services::image::SetInfo>,
}

impl VolumeStats {
    pub fn to_json(&self) -> Value {
        json!({
            "volume": self.volume,
            "state": match (self.online, &self.failure) {
                (false, _) => "offline",
                (true, Some(_)) => "failed",
                (true, None) => "online",
            },
            "error": self.failure,
            "io": self.io.as_ref().map(|i| i.to_json()),
            "cache": self.cache.as_ref().map(|c| json!({
                "unit": "4 KiB blocks",
                "read_hit_blocks": c.read_hits,
                "read_miss_blocks": c.read_misses,
                "hit_ratio": c.hit_ratio,
                "cached_bytes": c.cached_bytes,
                "capacity_bytes": c.capacity_bytes,
            })),
            "image": self.image.iter().map(|s| json!({
                "set": s.name,
                "shadow": s.shadow,
                "mode": s.mode,
                "chunk_bytes": s.chunk_bytes,
                "cow_chunks": s.cow_chunks,
                "cow_bytes": s.cow_chunks * s.chunk_bytes,
                "copied_chunks": s.copied_chunks,
                "copied_bytes": s.copied_chunks * s.chunk_bytes,
                "cloned_chunks": s.cloned_chunks,
                "chunks_to_copy": s.chunks_to_copy,
                "state": s.state,
            })).collect::<Vec<_>>(),
            "replication": self.replication.iter().map(|l| json!({
                "set": l["name"],
                "role": l["role"],
                "peer_node": l["peer_node"],
                "state": l["state"],
                "link": l["link"],
                "lag_bytes": l["lag_bytes"],
                "lag_writes": l["lag_writes"],
                "queue_depth": l["queue_depth"],
                "sent_bytes": l["bytes"],
                "sent_writes": l["writes"],
                "applied_bytes": l["applied_bytes"],
                "applied_writes": l["applied_writes"],
                "out_of_sync_bytes": l["out_of_sync_bytes"],
                "sync_done_bytes": l["sync_done_bytes"],
                "sync_total_bytes": l["sync_total_bytes"],
            })).collect::<Vec<_>>(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheStatsArgs {
    #[serde(default)]
    volume: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportUblkArgs {
    volume: String,
    #[serde(default)]
    queues: Option<u16>,
    #[serde(default)]
    depth: Option<u16>,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRemoveArgs {
    volume: String,
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportNbdArgs {
    volume: String,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default)]
    tls_certificates: Option<PathBuf>,
}
