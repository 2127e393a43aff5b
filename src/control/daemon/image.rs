//! The daemon's imaging operations (`image.*` on the admin socket).
//!
//! The sets themselves live in `services::image::Imaging`; this file adds
//! what the daemon owns: bitmap files in the data dir, shadow volumes
//! created on demand, the persisted configuration, groups, events, and the
//! refusals that need the daemon's view (exports, other relationships).

use super::{online_volume, parse, Daemon, State};
use crate::backend::{EngineKind, FileBackend, FileOptions};
use crate::control::admin::{ErrorCode, OpError};
use crate::control::config::{ImageConfig, ImageGroupConfig, OverflowConfig, VolumeConfig};
use crate::control::validate_name;
use crate::device::BlockDevice;
use crate::services::image::{
    bitmap_bytes_for, Direction, EnableOptions, ImageError, Kind, Notifier, Throttle,
    DEFAULT_CHUNK_BYTES,
};
use crate::services::Note;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Longest a single `image.wait` request blocks; the CLI loops for longer.
const MAX_WAIT_MS: u64 = 60_000;

impl From<ImageError> for OpError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Invalid(m) => OpError::invalid(m),
            ImageError::Conflict(m) => OpError::new(ErrorCode::Busy, m),
            ImageError::NotFound(m) => OpError::not_found(m),
            ImageError::Failed(m) => OpError::failed(m),
        }
    }
}

/// Bitmap files are opened with pread/pwrite: their writes are small and
/// always followed by a flush.
/// Whether the backing file at `path` holds data, and what: a regular
/// file with an allocated extent (SEEK_DATA), or any block device (its
/// contents are not ours to judge). `None`: all holes.
fn holds_data(path: &std::path::Path) -> Option<String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).ok()?;
    let m = f.metadata().ok()?;
    if !m.file_type().is_file() {
        return Some(format!("{} is a block device", path.display()));
    }
    match nix::unistd::lseek(f.as_raw_fd(), 0, nix::unistd::Whence::SeekData) {
        Ok(at) if (at as u64) < m.len() => Some(format!("data at byte {at} of {}", path.display())),
        _ => None,
    }
}

fn bitmap_options() -> FileOptions {
    FileOptions {
        engine: EngineKind::Sync,
        direct: false,
        ..Default::default()
    }
}

impl Daemon {
    pub(super) fn notifier(&self) -> Notifier {
        let events = self.events.clone();
        Arc::new(move |kind: &str, set: &str, note: crate::services::Note| {
            events.publish(kind, set, note)
        })
    }

    /// Reopen every overflow volume, then every configured set (at start,
    /// after the volumes).
    pub(super) fn restore_images(&self, st: &mut State) {
        for oc in st.config.image_overflows.clone() {
            let res = FileBackend::open(&oc.path, bitmap_options())
                .map_err(|e| format!("overflow volume {}: {e}", oc.name))
                .and_then(|dev| {
                    self.imaging
                        .overflow_add(&oc.name, Arc::new(dev), None)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = res {
                log::error!("{e}");
                st.image_errors.insert(format!("overflow:{}", oc.name), e);
            }
        }
        for ic in st.config.images.clone() {
            let res = (|| -> Result<(), OpError> {
                let master = online_volume(st, &ic.master)?;
                let shadow = online_volume(st, &ic.shadow)?;
                let bitmap = FileBackend::open(&ic.bitmap, bitmap_options()).map_err(|e| {
                    OpError::failed(format!("image set {}: bitmap volume: {e}", ic.name))
                })?;
                self.imaging.open(
                    &ic.name,
                    &master,
                    &shadow,
                    Arc::new(bitmap),
                    Some(self.notifier()),
                )?;
                Ok(())
            })();
            if let Err(e) = res {
                log::error!("image set {} not restored: {}", ic.name, e.message);
                st.image_errors.insert(ic.name.clone(), e.message);
            }
        }
    }

    pub(super) fn handle_image(&self, op: &str, args: &Value) -> Result<Value, OpError> {
        match op {
            "image.enable" => self.image_enable(parse(op, args)?),
            "image.update" => self.image_update(parse(op, args)?),
            "image.abort" => {
                let a: SetArgs = parse(op, args)?;
                self.imaging.abort(&a.name)?;
                self.events.publish("image.aborted", &a.name, "");
                self.image_info(&a.name)
            }
            "image.wait" => self.image_wait(parse(op, args)?),
            "image.disable" => self.image_disable(parse(op, args)?),
            "image.throttle" => {
                let a: ThrottleArgs = parse(op, args)?;
                self.imaging.set_throttle(
                    &a.name,
                    Throttle {
                        delay_ms: a.delay_ms,
                        unit: a.unit,
                    },
                )?;
                self.image_info(&a.name)
            }
            "image.list" => {
                parse::<super::NoArgs>(op, args)?;
                let st = self.state.lock();
                Ok(Value::Array(
                    st.config
                        .images
                        .iter()
                        .map(|ic| self.image_json(&st, ic))
                        .collect(),
                ))
            }
            "image.info" => {
                let a: SetArgs = parse(op, args)?;
                self.image_info(&a.name)
            }
            "image.group.create" => self.group_create(parse(op, args)?),
            "image.group.remove" => {
                let a: SetArgs = parse(op, args)?;
                let mut st = self.state.lock();
                let Some(pos) = st.config.image_groups.iter().position(|g| g.name == a.name) else {
                    return Err(OpError::not_found(format!(
                        "no image group named {}",
                        a.name
                    )));
                };
                let g = st.config.image_groups.remove(pos);
                if let Err(e) = self.persist(&st) {
                    st.config.image_groups.insert(pos, g);
                    return Err(e);
                }
                self.events.publish("image.group_removed", &a.name, "");
                Ok(json!({"name": a.name}))
            }
            "image.overflow.create" => self.overflow_create(parse(op, args)?),
            "image.overflow.attach" => {
                let a: OverflowAttachArgs = parse(op, args)?;
                self.imaging.overflow_attach(&a.set, Some(&a.overflow))?;
                self.events.publish(
                    "image.overflow_attached",
                    &a.set,
                    Note::new(a.overflow.clone()).field("overflow", &a.overflow),
                );
                self.image_info(&a.set)
            }
            "image.overflow.detach" => {
                let a: SetArgs = parse(op, args)?;
                self.imaging.overflow_attach(&a.name, None)?;
                self.events.publish("image.overflow_detached", &a.name, "");
                self.image_info(&a.name)
            }
            "image.overflow.info" => {
                let a: OptNameArgs = parse(op, args)?;
                let st = self.state.lock();
                let all: Vec<Value> = st
                    .config
                    .image_overflows
                    .iter()
                    .filter(|o| a.name.as_ref().is_none_or(|n| n == &o.name))
                    .map(|o| self.overflow_json(&st, o))
                    .collect();
                match a.name {
                    Some(n) => all
                        .into_iter()
                        .next()
                        .ok_or_else(|| OpError::not_found(format!("no overflow volume named {n}"))),
                    None => Ok(Value::Array(all)),
                }
            }
            "image.overflow.remove" => {
                let a: SetArgs = parse(op, args)?;
                let mut st = self.state.lock();
                let Some(pos) = st
                    .config
                    .image_overflows
                    .iter()
                    .position(|o| o.name == a.name)
                else {
                    return Err(OpError::not_found(format!(
                        "no overflow volume named {}",
                        a.name
                    )));
                };
                if self.imaging.overflow_info(&a.name).is_ok() {
                    self.imaging.overflow_remove(&a.name)?;
                }
                let oc = st.config.image_overflows.remove(pos);
                if let Err(e) = self.persist(&st) {
                    st.config.image_overflows.insert(pos, oc);
                    return Err(e);
                }
                let _ = std::fs::remove_file(&oc.path);
                self.events.publish("image.overflow_removed", &a.name, "");
                Ok(json!({"name": a.name}))
            }
            "image.group.list" => {
                parse::<super::NoArgs>(op, args)?;
                let st = self.state.lock();
                Ok(serde_json::to_value(&st.config.image_groups).expect("groups serialise"))
            }
            _ => Err(OpError::new(
                ErrorCode::UnknownOp,
                format!("unknown operation {op:?}; see docs/admin-protocol.md"),
            )),
        }
    }

    fn image_info(&self, name: &str) -> Result<Value, OpError> {
        let st = self.state.lock();
        let ic = st
            .config
            .images
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| {
                OpError::not_found(format!("no image set named {name}; see `umbra image list`"))
            })?;
        Ok(self.image_json(&st, ic))
    }

    fn image_json(&self, st: &State, ic: &ImageConfig) -> Value {
        let groups: Vec<&str> = st
            .config
            .image_groups
            .iter()
            .filter(|g| g.sets.contains(&ic.name))
            .map(|g| g.name.as_str())
            .collect();
        let mut v = match self.imaging.get(&ic.name) {
            Ok(set) => {
                let info = self.imaging.info(&ic.name).expect("registered");
                let mut v = serde_json::to_value(info).expect("info serialises");
                if set.kind() == Kind::Compact {
                    v["overflow"] = json!(set.overflow_name());
                    v["overflow_chunks"] = json!(set.overflow_chunks());
                }
                v
            }
            Err(_) => json!({
                "name": ic.name,
                "master": ic.master,
                "shadow": ic.shadow,
                "mode": ic.mode,
                "state": "offline",
                "error": st.image_errors.get(&ic.name),
            }),
        };
        v["bitmap"] = json!(ic.bitmap);
        v["groups"] = json!(groups);
        v
    }

    fn image_enable(&self, a: EnableArgs) -> Result<Value, OpError> {
        validate_name(&a.name).map_err(|e| OpError::invalid(format!("image set: {e}")))?;
        let chunk_bytes = a.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES);
        let mut st = self.state.lock();
        if st.config.images.iter().any(|i| i.name == a.name) {
            return Err(OpError::new(
                ErrorCode::Exists,
                format!("image set {} already exists", a.name),
            ));
        }
        let master = online_volume(&st, &a.master)?;
        // The shadow is an existing volume, or created now at the master's
        // size next to it in the data dir.
        let created_shadow = !st.volumes.contains_key(&a.shadow);
        let compact = a.mode == Kind::Compact;
        if compact && !created_shadow {
            return Err(OpError::invalid(format!(
                "image set {}: a compact shadow is created by `image enable` (with --shadow-size); \
                 volume {} already exists",
                a.name, a.shadow
            )));
        }
        if !created_shadow && !a.overwrite {
            if let Some(vc) = st.config.volumes.iter().find(|v| v.name == a.shadow) {
                if let Some(what) = holds_data(&vc.path) {
                    return Err(OpError::new(
                        ErrorCode::Exists,
                        format!(
                            "image set {}: shadow volume {} holds data ({what}); enabling overwrites it with the master's point in time: pass overwrite (--yes)",
                            a.name, a.shadow
                        ),
                    ));
                }
            }
        }
        if compact && a.shadow_size_bytes.is_none() {
            return Err(OpError::invalid(format!(
                "image set {}: a compact set needs --shadow-size (the space for saved chunks)",
                a.name
            )));
        }
        if created_shadow {
            validate_name(&a.shadow).map_err(|e| OpError::invalid(format!("shadow: {e}")))?;
            let size = a.shadow_size_bytes.unwrap_or(master.size_bytes());
            let path = self.data_dir.join(format!("{}.img", a.shadow));
            let backend = FileBackend::create(&path, size, FileOptions::default())
                .map_err(|e| OpError::failed(format!("shadow {}: {e}", a.shadow)))?;
            let shown = compact.then(|| master.size_bytes());
            if let Err(e) = self.add_volume_sized(&mut st, &a.shadow, path.clone(), backend, shown)
            {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
        let undo_shadow = |st: &mut State| {
            if created_shadow {
                self.drop_volume_locked(st, &a.shadow);
            }
        };
        let shadow = match online_volume(&st, &a.shadow) {
            Ok(v) => v,
            Err(e) => {
                undo_shadow(&mut st);
                return Err(e);
            }
        };
        let bitmap_path = a
            .bitmap
            .clone()
            .unwrap_or_else(|| self.data_dir.join(format!("{}.bitmap", a.name)));
        if !bitmap_path.is_absolute() {
            undo_shadow(&mut st);
            return Err(OpError::invalid(format!(
                "bitmap path {} must be absolute",
                bitmap_path.display()
            )));
        }
        let bitmap = match FileBackend::create(
            &bitmap_path,
            bitmap_bytes_for(master.size_bytes(), chunk_bytes, a.mode),
            bitmap_options(),
        ) {
            Ok(b) => b,
            Err(e) => {
                undo_shadow(&mut st);
                return Err(OpError::failed(format!(
                    "image set {}: bitmap volume: {e}",
                    a.name
                )));
            }
        };
        let opts = EnableOptions {
            kind: a.mode,
            chunk_bytes,
            memory_bitmap: a.memory_bitmap,
            throttle: Throttle {
                delay_ms: a.throttle_delay_ms,
                unit: a.throttle_unit,
            },
            overflow: a.overflow.clone(),
        };
        let t = std::time::Instant::now();
        let res = self.imaging.enable(
            &a.name,
            &master,
            &shadow,
            Arc::new(bitmap),
            &opts,
            Some(self.notifier()),
        );
        let establish_us = t.elapsed().as_micros() as u64;
        if let Err(e) = res {
            let _ = std::fs::remove_file(&bitmap_path);
            undo_shadow(&mut st);
            return Err(e.into());
        }
        let ic = ImageConfig {
            name: a.name.clone(),
            master: a.master.clone(),
            shadow: a.shadow.clone(),
            bitmap: bitmap_path.clone(),
            mode: a.mode,
            chunk_bytes,
            memory_bitmap: a.memory_bitmap,
        };
        st.config.images.push(ic.clone());
        if let Err(e) = self.persist(&st) {
            st.config.images.pop();
            let _ = self.imaging.disable(&a.name, true);
            let _ = std::fs::remove_file(&bitmap_path);
            undo_shadow(&mut st);
            return Err(e);
        }
        self.events.publish(
            "image.enabled",
            &a.name,
            Note::new(format!(
                "{} shadow {} of {}, established in {establish_us} µs",
                kind_str(a.mode),
                a.shadow,
                a.master
            ))
            .field("mode", kind_str(a.mode))
            .field("master", &a.master)
            .field("shadow", &a.shadow)
            .field("shadow_created", created_shadow)
            .field("establish_us", establish_us),
        );
        let mut v = self.image_json(&st, &ic);
        v["establish_us"] = json!(establish_us);
        v["shadow_created"] = json!(created_shadow);
        Ok(v)
    }

    fn image_update(&self, a: UpdateArgs) -> Result<Value, OpError> {
        let to = match a.to.as_str() {
            "shadow" => Direction::ToShadow,
            "master" => Direction::ToMaster,
            other => {
                return Err(OpError::invalid(format!(
                    "image update: --to must be shadow or master, not {other:?}"
                )))
            }
        };
        let st = self.state.lock();
        let names: Vec<String> = match (&a.name, &a.group) {
            (Some(n), None) => vec![n.clone()],
            (None, Some(g)) => st
                .config
                .image_groups
                .iter()
                .find(|x| &x.name == g)
                .map(|x| x.sets.clone())
                .ok_or_else(|| OpError::not_found(format!("no image group named {g}")))?,
            _ => {
                return Err(OpError::invalid(
                    "image update: give exactly one of a set name or a group",
                ))
            }
        };
        if to == Direction::ToMaster && !a.force {
            for n in &names {
                let master = self.imaging.get(n)?.master_name().to_owned();
                if let Some(e) = st
                    .config
                    .exports
                    .iter()
                    .find(|e| e.volume == master && !e.read_only)
                {
                    return Err(OpError::new(
                        ErrorCode::Busy,
                        format!(
                            "image set {n}: master {master} is exported read-write ({}); a restore \
                             changes its data under its users. Unmount it, or pass --force",
                            e.listen
                        ),
                    ));
                }
            }
        }
        drop(st);
        self.imaging.update(&names, to, a.full)?;
        let what = match (to, a.full) {
            (Direction::ToMaster, true) => "full copy to master",
            (Direction::ToMaster, false) => "update to master",
            (_, true) => "full copy to shadow",
            _ => "update to shadow",
        };
        for n in &names {
            self.events.publish(
                "image.updated",
                n,
                Note::new(what).field("direction", to).field("full", a.full),
            );
        }
        let st = self.state.lock();
        Ok(Value::Array(
            st.config
                .images
                .iter()
                .filter(|i| names.contains(&i.name))
                .map(|ic| self.image_json(&st, ic))
                .collect(),
        ))
    }

    fn image_wait(&self, a: WaitArgs) -> Result<Value, OpError> {
        let set = self.imaging.get(&a.name)?;
        let ms = a.timeout_ms.unwrap_or(MAX_WAIT_MS).min(MAX_WAIT_MS);
        let done = set.wait(Duration::from_millis(ms));
        let mut v = self.image_info(&a.name)?;
        v["done"] = json!(done);
        Ok(v)
    }

    fn image_disable(&self, a: DisableArgs) -> Result<Value, OpError> {
        let mut st = self.state.lock();
        let Some(pos) = st.config.images.iter().position(|i| i.name == a.name) else {
            return Err(OpError::not_found(format!(
                "no image set named {}; see `umbra image list`",
                a.name
            )));
        };
        let ic = st.config.images[pos].clone();
        // A set that never came back after a restart has no layers.
        if self.imaging.get(&a.name).is_ok() {
            self.imaging.disable(&a.name, a.force)?;
        }
        let groups_before = st.config.image_groups.clone();
        st.config.images.remove(pos);
        for g in &mut st.config.image_groups {
            g.sets.retain(|s| s != &a.name);
        }
        st.config.image_groups.retain(|g| !g.sets.is_empty());
        if let Err(e) = self.persist(&st) {
            // The layers are gone already; keep the config honest.
            log::error!(
                "image set {}: disabled but not persisted: {}",
                a.name,
                e.message
            );
            st.config.images.insert(pos, ic);
            st.config.image_groups = groups_before;
            return Err(e);
        }
        st.image_errors.remove(&a.name);
        let _ = std::fs::remove_file(&ic.bitmap);
        let note = match ic.mode {
            Kind::Dependent => format!(
                "shadow {} no longer holds a point in time (it was dependent on {})",
                ic.shadow, ic.master
            ),
            Kind::Independent => format!("shadow {} is now an ordinary volume", ic.shadow),
            Kind::Compact => format!(
                "compact shadow {} no longer holds a point in time; its store is kept",
                ic.shadow
            ),
        };
        self.events.publish(
            "image.disabled",
            &a.name,
            Note::new(note.clone())
                .field("mode", kind_str(ic.mode))
                .field("shadow", &ic.shadow),
        );
        Ok(json!({"name": a.name, "note": note}))
    }

    fn group_create(&self, a: GroupArgs) -> Result<Value, OpError> {
        validate_name(&a.name).map_err(|e| OpError::invalid(format!("image group: {e}")))?;
        if a.sets.is_empty() {
            return Err(OpError::invalid(format!(
                "image group {}: name at least one set",
                a.name
            )));
        }
        let mut st = self.state.lock();
        if st.config.image_groups.iter().any(|g| g.name == a.name) {
            return Err(OpError::new(
                ErrorCode::Exists,
                format!("image group {} already exists", a.name),
            ));
        }
        for s in &a.sets {
            if !st.config.images.iter().any(|i| &i.name == s) {
                return Err(OpError::not_found(format!(
                    "image group {}: no image set named {s}",
                    a.name
                )));
            }
        }
        let mut sets = a.sets.clone();
        sets.sort();
        sets.dedup();
        st.config.image_groups.push(ImageGroupConfig {
            name: a.name.clone(),
            sets: sets.clone(),
        });
        if let Err(e) = self.persist(&st) {
            st.config.image_groups.pop();
            return Err(e);
        }
        self.events.publish(
            "image.group_created",
            &a.name,
            Note::new(sets.join(" ")).field("sets", &sets),
        );
        Ok(json!({"name": a.name, "sets": sets}))
    }

    /// Undo a volume this module created (enable failed after creating the
    /// shadow): forget it and delete its file.
    fn drop_volume_locked(&self, st: &mut State, name: &str) {
        let path: Option<PathBuf> = st
            .config
            .volumes
            .iter()
            .find(|v| v.name == name)
            .map(|v: &VolumeConfig| v.path.clone());
        st.config.volumes.retain(|v| v.name != name);
        if let Some(e) = st.volumes.remove(name) {
            if let Some(v) = e.volume {
                let _ = v.close();
            }
        }
        let _ = self.persist(st);
        let deleted = path
            .as_ref()
            .is_some_and(|p| std::fs::remove_file(p).is_ok());
        // `volume.created` was said for it: say it is gone again, and
        // truthfully what became of its file.
        self.events.publish(
            "volume.removed",
            name,
            Note::new(match (&path, deleted) {
                (Some(p), true) => format!(
                    "created for an image set whose enable failed; backing file {} deleted",
                    p.display()
                ),
                (Some(p), false) => format!(
                    "created for an image set whose enable failed; backing file {} kept",
                    p.display()
                ),
                (None, _) => "created for an image set whose enable failed".into(),
            })
            .field("path", &path)
            .field("backing_kept", path.is_some() && !deleted)
            .field("why", "created for an image set whose enable failed"),
        );
    }
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Independent => "independent",
        Kind::Dependent => "dependent",
        Kind::Compact => "compact dependent",
    }
}

impl Daemon {
    fn overflow_json(&self, st: &State, oc: &OverflowConfig) -> Value {
        match self.imaging.overflow_info(&oc.name) {
            Ok((cap, used, sets)) => json!({
                "name": oc.name,
                "path": oc.path,
                "state": "online",
                "capacity_chunks": cap,
                "used_chunks": used,
                "sets": sets,
            }),
            Err(_) => json!({
                "name": oc.name,
                "path": oc.path,
                "state": "offline",
                "error": st.image_errors.get(&format!("overflow:{}", oc.name)),
            }),
        }
    }

    fn overflow_create(&self, a: OverflowCreateArgs) -> Result<Value, OpError> {
        validate_name(&a.name).map_err(|e| OpError::invalid(format!("overflow volume: {e}")))?;
        let chunk = a.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES);
        let mut st = self.state.lock();
        if st.config.image_overflows.iter().any(|o| o.name == a.name) {
            return Err(OpError::new(
                ErrorCode::Exists,
                format!("overflow volume {} already exists", a.name),
            ));
        }
        let path = a
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join(format!("{}.overflow", a.name)));
        if !path.is_absolute() {
            return Err(OpError::invalid(format!(
                "overflow path {} must be absolute",
                path.display()
            )));
        }
        let dev = FileBackend::create(
            &path,
            crate::services::image::format::OVERFLOW_DATA_OFFSET + a.size_bytes,
            bitmap_options(),
        )
        .map_err(|e| OpError::failed(format!("overflow volume {}: {e}", a.name)))?;
        if let Err(e) = self
            .imaging
            .overflow_add(&a.name, Arc::new(dev), Some(chunk))
        {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        let oc = OverflowConfig {
            name: a.name.clone(),
            path: path.clone(),
        };
        st.config.image_overflows.push(oc.clone());
        if let Err(e) = self.persist(&st) {
            st.config.image_overflows.pop();
            let _ = self.imaging.overflow_remove(&a.name);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.events.publish(
            "image.overflow_created",
            &a.name,
            Note::new(format!("{} bytes on {}", a.size_bytes, path.display()))
                .field("size_bytes", a.size_bytes)
                .field("path", &path),
        );
        Ok(self.overflow_json(&st, &oc))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverflowCreateArgs {
    name: String,
    size_bytes: u64,
    #[serde(default)]
    chunk_bytes: Option<u32>,
    #[serde(default)]
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverflowAttachArgs {
    set: String,
    overflow: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptNameArgs {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetArgs {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableArgs {
    name: String,
    master: String,
    shadow: String,
    mode: Kind,
    #[serde(default)]
    chunk_bytes: Option<u32>,
    #[serde(default)]
    bitmap: Option<PathBuf>,
    #[serde(default)]
    memory_bitmap: bool,
    /// Size of a shadow volume created by this request (default: the
    /// master's size).
    #[serde(default)]
    shadow_size_bytes: Option<u64>,
    #[serde(default)]
    throttle_delay_ms: u32,
    #[serde(default)]
    throttle_unit: u32,
    /// A compact set's overflow volume.
    #[serde(default)]
    overflow: Option<String>,
    /// An existing shadow volume that holds data may be overwritten.
    #[serde(default)]
    overwrite: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateArgs {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    group: Option<String>,
    to: String,
    #[serde(default)]
    full: bool,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitArgs {
    name: String,
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
#[serde(deny_unknown_fields)]
struct ThrottleArgs {
    name: String,
    delay_ms: u32,
    unit: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupArgs {
    name: String,
    sets: Vec<String>,
}
