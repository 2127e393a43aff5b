//! Data imaging: point-in-time shadow volumes with persistent bitmaps
//! (Instant Image's design, FlashCopy's semantics).
//!
//! A **set** is a master volume, a shadow volume and a bitmap volume.
//! Establishing a set quiesces both volumes, writes one header and puts
//! two layers in place (constant time, whatever the volume size):
//!
//! ```text
//!   master volume stack:  … ─► [image]        ─► master backend
//!                                 │ copy-on-write ▼
//!   shadow volume stack:  … ─► [image-shadow] ─► shadow backend
//!                                 │ reads of chunks the shadow lacks ▲
//! ```
//! * `set.rs`: the bits, the copy-on-write rules, group commit and the
//!   copy engine; its module docs state the crash rule.
//! * `layers.rs`: the master and shadow layers.
//! * `behind.rs`: master writes acknowledged before their copy-on-write
//!   commit, applied in order once it is durable.
//! * `format.rs`: the bitmap volume (docs/image-format.md).
//!
//! [`Imaging`] is the registry one daemon (or test) keeps: it enforces
//! that a volume plays one role only, and runs the operations (update,
//! copy, abort, disable, groups) with the right quiesce.

mod behind;
pub mod format;
mod layers;
mod overflow;
mod set;

pub use format::{Direction, Kind, DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES};
pub use layers::{MASTER_LAYER, SHADOW_LAYER};
pub use overflow::Overflow;
pub use set::{ImageSet, Notifier, Throttle};

use crate::device::BlockDevice;
use crate::interposer::{quiesce_many, Service, Volume, MAX_SERVICES};
use format::{chunks_for, Header, HeaderState, Layout, Transition, HEADER_BYTES};
use layers::{MasterSide, ShadowSide};
use parking_lot::Mutex;
use set::SetParts;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The request makes no sense as given (sizes, names, options).
    #[error("{0}")]
    Invalid(String),
    /// It conflicts with the state of a set or volume.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// It was tried and failed (I/O, a refused bitmap volume).
    #[error("{0}")]
    Failed(String),
}

type IResult<T> = std::result::Result<T, ImageError>;

/// How a set is established.
#[derive(Debug, Clone)]
pub struct EnableOptions {
    pub kind: Kind,
    pub chunk_bytes: u32,
    /// Keep the bits in memory and write them only at a clean suspend:
    /// no bitmap I/O on the write path, but after a crash an idle
    /// independent set is recopied in full (a new point in time) and any
    /// other set's shadow goes offline.
    pub memory_bitmap: bool,
    /// Copy engine throttle from the start.
    pub throttle: Throttle,
    /// A compact set's overflow volume (registered with
    /// [`Imaging::overflow_add`]).
    pub overflow: Option<String>,
}

impl Default for EnableOptions {
    fn default() -> Self {
        EnableOptions {
            kind: Kind::Dependent,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            memory_bitmap: false,
            throttle: Throttle::default(),
            overflow: None,
        }
    }
}

/// Size the bitmap volume of a set over a `master_bytes` master needs.
pub fn bitmap_bytes_for(master_bytes: u64, chunk_bytes: u32, kind: Kind) -> u64 {
    Layout::for_chunks(chunks_for(master_bytes, chunk_bytes), kind == Kind::Compact).total_bytes
}

/// What `image info` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetInfo {
    pub name: String,
    pub master: String,
    pub shadow: String,
    pub mode: Kind,
    /// idle, copying, aborted (chunks left, no copy running) or failed.
    pub state: &'static str,
    pub direction: Direction,
    pub chunk_bytes: u64,
    pub chunks_total: u64,
    pub chunks_differing: u64,
    pub chunks_to_copy: u64,
    /// Chunks the running (or last) copy set out to move.
    pub copy_chunks_total: u64,
    /// Since the set was opened: chunks copied because a master write
    /// touched them first (copy-on-write), and chunks the background copy
    /// moved (`chunk_bytes` each).
    pub cow_chunks: u64,
    pub copied_chunks: u64,
    /// Of those, chunks shared with the filesystem's extents (reflink).
    pub cloned_chunks: u64,
    pub percent: f64,
    pub memory_bitmap: bool,
    pub throttle: Throttle,
    pub error: Option<String>,
}

impl SetInfo {
    fn of(s: &ImageSet) -> SetInfo {
        let pending = s.pending();
        let total = s.copy_total().max(pending);
        let state = if s.is_failed() {
            "failed"
        } else if s.is_copying() {
            "copying"
        } else if pending > 0 {
            "aborted"
        } else {
            "idle"
        };
        SetInfo {
            name: s.name().to_owned(),
            master: s.master_name().to_owned(),
            shadow: s.shadow_name().to_owned(),
            mode: s.kind(),
            state,
            direction: s.direction(),
            chunk_bytes: s.chunk_bytes(),
            chunks_total: s.chunks(),
            chunks_differing: s.differing(),
            chunks_to_copy: pending,
            copy_chunks_total: total,
            cow_chunks: s
                .counters
                .cow_chunks
                .load(std::sync::atomic::Ordering::Relaxed),
            copied_chunks: s
                .counters
                .copied_chunks
                .load(std::sync::atomic::Ordering::Relaxed),
            cloned_chunks: s
                .counters
                .cloned_chunks
                .load(std::sync::atomic::Ordering::Relaxed),
            percent: if total == 0 {
                100.0
            } else {
                ((total - pending) as f64 * 1000.0 / total as f64).floor() / 10.0
            },
            memory_bitmap: s.memory_bitmap(),
            throttle: s.throttle(),
            error: s.failure(),
        }
    }
}

/// The imaging registry: every set, and the imaging layer of every master.
#[derive(Default)]
pub struct Imaging {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    sets: BTreeMap<String, Arc<ImageSet>>,
    masters: HashMap<String, Arc<MasterSide>>,
    overflows: BTreeMap<String, Arc<Overflow>>,
}

impl Registry {
    /// A new set `name` of `master` and `shadow`: refuse a taken name and
    /// volumes already in conflicting roles.
    fn check_new_set(&self, name: &str, master: &str, shadow: &str) -> IResult<()> {
        if self.sets.contains_key(name) {
            return Err(ImageError::Conflict(format!(
                "image set {name} already exists"
            )));
        }
        self.check_role(master, true)?;
        self.check_role(shadow, false)
    }

    fn overflow_for(&self, set: &str, name: &str, chunk_bytes: u32) -> IResult<Arc<Overflow>> {
        let o = self.overflows.get(name).cloned().ok_or_else(|| {
            ImageError::NotFound(format!(
                "image set {set}: no overflow volume named {name}; see `umbra image overflow info`"
            ))
        })?;
        if o.chunk_bytes() != chunk_bytes {
            return Err(ImageError::Invalid(format!(
                "image set {set}: overflow volume {name} has {}-byte chunks, the set {chunk_bytes}",
                o.chunk_bytes()
            )));
        }
        Ok(o)
    }

    /// An overflow volume no set uses any more is empty again.
    fn reset_unused_overflows(&self) {
        for (name, o) in &self.overflows {
            let used = self.sets.values().any(|s| s.overflow_name() == *name);
            if !used && o.usage().1 > 0 {
                if let Err(e) = o.reset() {
                    log::error!("overflow volume {name}: reset failed: {e}");
                }
            }
        }
    }

    /// Refuse a volume already playing a role that conflicts with `role`.
    fn check_role(&self, volume: &str, as_master: bool) -> IResult<()> {
        for s in self.sets.values() {
            if s.shadow_name() == volume {
                return Err(ImageError::Conflict(format!(
                    "volume {volume} is already the shadow of image set {}",
                    s.name()
                )));
            }
            if !as_master && s.master_name() == volume {
                return Err(ImageError::Conflict(format!(
                    "volume {volume} is the master of image set {}; it cannot also be a shadow",
                    s.name()
                )));
            }
        }
        Ok(())
    }
}

impl Imaging {
    pub fn get(&self, name: &str) -> IResult<Arc<ImageSet>> {
        self.inner
            .lock()
            .sets
            .get(name)
            .cloned()
            .ok_or_else(|| no_set(name))
    }

    pub fn list(&self) -> Vec<SetInfo> {
        self.inner
            .lock()
            .sets
            .values()
            .map(|s| SetInfo::of(s))
            .collect()
    }

    pub fn info(&self, name: &str) -> IResult<SetInfo> {
        Ok(SetInfo::of(self.get(name)?.as_ref()))
    }

    /// The set `volume` belongs to, as master or shadow.
    pub fn sets_of_volume(&self, volume: &str) -> Vec<String> {
        self.inner
            .lock()
            .sets
            .values()
            .filter(|s| s.master_name() == volume || s.shadow_name() == volume)
            .map(|s| s.name().to_owned())
            .collect()
    }

    /// Establish a new set. `bitmap` must be zero-filled (a fresh sparse
    /// file) and at least [`bitmap_bytes_for`] bytes; nothing is copied
    /// now, so this takes the same time for any volume size.
    pub fn enable(
        &self,
        name: &str,
        master: &Arc<Volume>,
        shadow: &Arc<Volume>,
        bitmap: Arc<dyn BlockDevice>,
        opts: &EnableOptions,
        notify: Option<Notifier>,
    ) -> IResult<Arc<ImageSet>> {
        if name.is_empty() || name.len() > format::NAME_BYTES {
            return Err(ImageError::Invalid(format!(
                "image set name {name:?} must be 1 to {} bytes",
                format::NAME_BYTES
            )));
        }
        format::validate_chunk_bytes(opts.chunk_bytes)
            .map_err(|e| ImageError::Invalid(format!("image set {name}: {e}")))?;
        if master.name() == shadow.name() {
            return Err(ImageError::Invalid(format!(
                "image set {name}: master and shadow are the same volume {}",
                master.name()
            )));
        }
        let (mb, sb) = (master.size_bytes(), shadow_store_bytes(shadow));
        if opts.kind == Kind::Compact && sb < opts.chunk_bytes as u64 {
            return Err(ImageError::Invalid(format!(
                "image set {name}: compact shadow {} ({sb} bytes) cannot hold one {}-byte chunk",
                shadow.name(),
                opts.chunk_bytes
            )));
        }
        if opts.kind == Kind::Compact && shadow.size_bytes() != mb {
            return Err(ImageError::Invalid(format!(
                "image set {name}: a compact shadow volume must present the master's size \
                 ({mb} bytes), not {}",
                shadow.size_bytes()
            )));
        }
        if opts.kind != Kind::Compact && opts.overflow.is_some() {
            return Err(ImageError::Invalid(format!(
                "image set {name}: only a compact set takes an overflow volume"
            )));
        }
        if opts.kind != Kind::Compact && sb < mb {
            return Err(ImageError::Invalid(format!(
                "image set {name}: shadow {} ({sb} bytes) is smaller than master {} ({mb} bytes); \
                 a shadow must be at least the master's size",
                shadow.name(),
                master.name()
            )));
        }
        let chunks = chunks_for(mb, opts.chunk_bytes);
        let layout = Layout::for_chunks(chunks, opts.kind == Kind::Compact);
        if bitmap.size_bytes() < layout.total_bytes {
            return Err(ImageError::Invalid(format!(
                "image set {name}: bitmap volume has {} bytes, needs {}",
                bitmap.size_bytes(),
                layout.total_bytes
            )));
        }
        let mut reg = self.inner.lock();
        reg.check_new_set(name, master.name(), shadow.name())?;
        let overflow = match &opts.overflow {
            Some(o) => Some(reg.overflow_for(name, o, opts.chunk_bytes)?),
            None => None,
        };
        let header = Header {
            seq: 0,
            kind: opts.kind,
            state: HeaderState::Dirty,
            direction: match opts.kind {
                Kind::Independent => Direction::ToShadow,
                Kind::Dependent | Kind::Compact => Direction::None,
            },
            copy_active: opts.kind == Kind::Independent,
            copy_inverted: opts.kind == Kind::Independent,
            memory_bitmap: opts.memory_bitmap,
            transition: Transition::None,
            chunk_bytes: opts.chunk_bytes,
            throttle_delay_ms: opts.throttle.delay_ms,
            throttle_unit: opts.throttle.unit,
            master_bytes: mb,
            shadow_bytes: sb,
            chunks,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            set: name.to_owned(),
            master: master.name().to_owned(),
            shadow: shadow.name().to_owned(),
            overflow: opts.overflow.clone().unwrap_or_default(),
        };
        let write_header = || -> crate::device::Result<()> {
            bitmap.write(&vec![0u8; HEADER_BYTES as usize], HEADER_BYTES, false)?;
            bitmap.write(&header.encode(), 0, false)?;
            bitmap.flush()
        };
        write_header().map_err(|e| {
            ImageError::Failed(format!("image set {name}: writing the bitmap header: {e}"))
        })?;
        let set = Self::build(&mut reg, header, bitmap, master, shadow, notify, overflow);
        if opts.kind == Kind::Independent {
            // Every chunk is pending: the bitmap on disk says so through
            // the inverted copy bitmap, with no bitmap write at all.
            set.copy_fill_for_enable();
        }
        self.attach(&mut reg, &set, master, shadow)?;
        set.start_engine();
        Ok(set)
    }

    /// Resume a set after a restart from its bitmap volume.
    pub fn open(
        &self,
        name: &str,
        master: &Arc<Volume>,
        shadow: &Arc<Volume>,
        bitmap: Arc<dyn BlockDevice>,
        notify: Option<Notifier>,
    ) -> IResult<Arc<ImageSet>> {
        let header = read_header(bitmap.as_ref()).map_err(|e| {
            ImageError::Failed(format!("image set {name}: bitmap volume refused: {e}"))
        })?;
        let mismatch = |what: &str, want: &str, got: &str| {
            ImageError::Failed(format!(
                "image set {name}: bitmap volume belongs to {what} {got}, not {want}"
            ))
        };
        if header.set != name {
            return Err(mismatch("set", name, &header.set));
        }
        if header.master != master.name() {
            return Err(mismatch("master", master.name(), &header.master));
        }
        if header.shadow != shadow.name() {
            return Err(mismatch("shadow", shadow.name(), &header.shadow));
        }
        if header.master_bytes != master.size_bytes()
            || header.shadow_bytes != shadow_store_bytes(shadow)
        {
            return Err(ImageError::Failed(format!(
                "image set {name}: volume sizes changed (bitmap says master {} and shadow {} bytes, \
                 volumes are {} and {})",
                header.master_bytes,
                header.shadow_bytes,
                master.size_bytes(),
                shadow.size_bytes()
            )));
        }
        let mut reg = self.inner.lock();
        reg.check_new_set(name, master.name(), shadow.name())?;
        let overflow = if header.overflow.is_empty() {
            None
        } else {
            Some(reg.overflow_for(name, &header.overflow, header.chunk_bytes)?)
        };
        let crashed = header.state == HeaderState::Dirty;
        let memory = header.memory_bitmap;
        let independent_idle = header.kind == Kind::Independent && !header.copy_active;
        let set = Self::build(&mut reg, header, bitmap, master, shadow, notify, overflow);
        let fail = |e: String| ImageError::Failed(format!("image set {name}: {e}"));
        set.load_bitmaps().map_err(&fail)?;
        set.redo_transition().map_err(|e| fail(e.to_string()))?;
        if memory && crashed && !set.is_failed() {
            if independent_idle {
                log::warn!(
                    "image set {name}: memory bitmap lost in a crash; copying the shadow in full \
                     (a new point in time)"
                );
                set.transition(Transition::Fill, Direction::ToShadow)
                    .map_err(|e| fail(e.to_string()))?;
            } else {
                set.fail("its memory bitmap was lost in a crash; the shadow is offline".into());
            }
        }
        set.mark_dirty().map_err(|e| fail(e.to_string()))?;
        self.attach(&mut reg, &set, master, shadow)?;
        let restoring = set.direction() == Direction::ToMaster;
        if set.header_snapshot().copy_active && set.pending() > 0 && (restoring || !set.is_failed())
        {
            set.start_engine();
        }
        Ok(set)
    }

    fn build(
        reg: &mut Registry,
        header: Header,
        store: Arc<dyn BlockDevice>,
        master: &Arc<Volume>,
        shadow: &Arc<Volume>,
        notify: Option<Notifier>,
        overflow: Option<Arc<Overflow>>,
    ) -> Arc<ImageSet> {
        let master_side = reg
            .masters
            .get(master.name())
            .cloned()
            .unwrap_or_else(|| Arc::new(MasterSide::new(master.name())));
        let set = Arc::new(ImageSet::new(SetParts {
            header,
            store,
            master: master_side,
            shadow: Arc::new(ShadowSide::new(shadow.name())),
            master_volume: Arc::downgrade(master),
            shadow_volume: Arc::downgrade(shadow),
            notify,
            overflow,
        }));
        set.shadow.bind(&set);
        set
    }

    /// Put the set's layers into both stacks under one quiesce.
    fn attach(
        &self,
        reg: &mut Registry,
        set: &Arc<ImageSet>,
        master: &Arc<Volume>,
        shadow: &Arc<Volume>,
    ) -> IResult<()> {
        let mut guards = quiesce_many(
            &[master.as_ref(), shadow.as_ref()],
            &format!("enable image set {}", set.name()),
        )
        .map_err(|e| ImageError::Failed(e.to_string()))?;
        let (mg, sg) = split_guards(&mut guards, master.name());
        let side = set.master.clone();
        side.add_set(set.clone());
        let mut services: Vec<Arc<dyn Service>> = mg.services().to_vec();
        if !services.iter().any(|s| s.name() == MASTER_LAYER) {
            if services.len() >= MAX_SERVICES {
                side.remove_set(set.name());
                return Err(ImageError::Failed(format!(
                    "volume {} already has {MAX_SERVICES} services",
                    master.name()
                )));
            }
            services.push(side.clone());
        }
        if let Err(e) = mg.replace_services(services) {
            side.remove_set(set.name());
            return Err(ImageError::Failed(e.to_string()));
        }
        if let Err(e) = sg.push(set.shadow.clone()) {
            side.remove_set(set.name());
            let services = mg.services().to_vec();
            let _ = if side.sets().is_empty() {
                mg.remove(MASTER_LAYER)
            } else {
                mg.replace_services(services)
            };
            return Err(ImageError::Failed(e.to_string()));
        }
        reg.masters.insert(master.name().to_owned(), side);
        reg.sets.insert(set.name().to_owned(), set.clone());
        Ok(())
    }

    /// Take a new point in time (`to` shadow) or restore the master (`to`
    /// master) for every set in `names` at once: their volumes are
    /// quiesced together, so a group gets one point in time. `full` copies
    /// every chunk instead of only the differing ones.
    pub fn update(&self, names: &[String], to: Direction, full: bool) -> IResult<()> {
        if to == Direction::None {
            return Err(ImageError::Invalid("update needs a direction".into()));
        }
        let reg = self.inner.lock();
        let mut sets = Vec::new();
        for n in names {
            sets.push(reg.sets.get(n).cloned().ok_or_else(|| no_set(n))?);
        }
        for s in &sets {
            check_update(&reg, s, to, full)?;
        }
        let mut volumes = Vec::new();
        for s in &sets {
            for v in [&s.master_volume, &s.shadow_volume] {
                volumes.push(v.upgrade().ok_or_else(|| {
                    ImageError::Failed(format!("image set {}: a volume is gone", s.name()))
                })?);
            }
        }
        let refs: Vec<&Volume> = volumes.iter().map(|v| v.as_ref()).collect();
        let action = format!("update image sets {}", names.join(", "));
        let guards = quiesce_many(&refs, &action).map_err(|e| ImageError::Failed(e.to_string()))?;
        for s in &sets {
            let (t, dir) = match (to, s.kind(), full) {
                (Direction::ToShadow, Kind::Independent, true) => {
                    (Transition::Fill, Direction::ToShadow)
                }
                (Direction::ToShadow, Kind::Independent, false) => {
                    (Transition::Merge, Direction::ToShadow)
                }
                (Direction::ToShadow, Kind::Dependent | Kind::Compact, _) => {
                    (Transition::Clear, Direction::None)
                }
                (_, Kind::Independent, true) => (Transition::Fill, Direction::ToMaster),
                (_, _, _) => (Transition::Merge, Direction::ToMaster),
            };
            s.transition(t, dir)
                .map_err(|e| ImageError::Failed(format!("image set {}: {e}", s.name())))?;
            if s.is_failed() {
                s.clear_failure()
                    .map_err(|e| ImageError::Failed(format!("image set {}: {e}", s.name())))?;
            }
        }
        drop(guards);
        for s in &sets {
            if s.pending() > 0 {
                s.start_engine();
            }
        }
        Ok(())
    }

    /// Stop a running copy; the target keeps depending on the source for
    /// the chunks not copied yet.
    pub fn abort(&self, name: &str) -> IResult<()> {
        let s = self.get(name)?;
        if !s.is_copying() {
            return Err(ImageError::Conflict(format!(
                "image set {name} has no copy running"
            )));
        }
        s.stop_engine(true)
            .map_err(|e| ImageError::Failed(format!("image set {name}: {e}")))
    }

    pub fn set_throttle(&self, name: &str, t: Throttle) -> IResult<()> {
        self.get(name)?
            .set_throttle(t)
            .map_err(|e| ImageError::Failed(format!("image set {name}: {e}")))
    }

    /// End a set: its layers leave both stacks. Refused while the master
    /// depends on the shadow (a restore not finished) and, unless `force`,
    /// while an independent shadow is incomplete.
    pub fn disable(&self, name: &str, force: bool) -> IResult<()> {
        let mut reg = self.inner.lock();
        let s = reg.sets.get(name).cloned().ok_or_else(|| no_set(name))?;
        let pending = s.pending();
        if pending > 0 && s.direction() == Direction::ToMaster && !(force && s.is_failed()) {
            return Err(ImageError::Conflict(format!(
                "image set {name}: the master still reads {pending} chunks from the shadow (restore \
                 not finished); run `umbra image update {name} --to master --wait` first"
            )));
        }
        if pending > 0 && s.kind() == Kind::Independent && !force {
            return Err(ImageError::Conflict(format!(
                "image set {name}: the shadow is incomplete ({pending} chunks not copied); wait for \
                 the copy, or pass --force to leave an incomplete shadow"
            )));
        }
        s.stop_engine(false)
            .map_err(|e| ImageError::Failed(format!("image set {name}: {e}")))?;
        let (master, shadow) = match (s.master_volume.upgrade(), s.shadow_volume.upgrade()) {
            (Some(m), Some(sh)) => (m, sh),
            _ => {
                return Err(ImageError::Failed(format!(
                    "image set {name}: a volume is gone"
                )))
            }
        };
        let mut guards = quiesce_many(
            &[master.as_ref(), shadow.as_ref()],
            &format!("disable image set {name}"),
        )
        .map_err(|e| ImageError::Failed(e.to_string()))?;
        let (mg, sg) = split_guards(&mut guards, master.name());
        sg.remove(SHADOW_LAYER)
            .map_err(|e| ImageError::Failed(e.to_string()))?;
        s.master.remove_set(name);
        let res = if s.master.sets().is_empty() {
            reg.masters.remove(master.name());
            mg.remove(MASTER_LAYER)
        } else {
            let services = mg.services().to_vec();
            mg.replace_services(services)
        };
        res.map_err(|e| ImageError::Failed(e.to_string()))?;
        reg.sets.remove(name);
        reg.reset_unused_overflows();
        Ok(())
    }

    /// Register an overflow volume: `create` formats `dev` in chunks of
    /// that size, otherwise its header is read and validated.
    pub fn overflow_add(
        &self,
        name: &str,
        dev: Arc<dyn BlockDevice>,
        create: Option<u32>,
    ) -> IResult<Arc<Overflow>> {
        let mut reg = self.inner.lock();
        if reg.overflows.contains_key(name) {
            return Err(ImageError::Conflict(format!(
                "overflow volume {name} already exists"
            )));
        }
        let o = match create {
            Some(chunk) => Overflow::create(name, dev, chunk),
            None => Overflow::open(name, dev),
        }
        .map_err(ImageError::Failed)?;
        let o = Arc::new(o);
        reg.overflows.insert(name.to_owned(), o.clone());
        Ok(o)
    }

    /// Forget an overflow volume no set uses.
    pub fn overflow_remove(&self, name: &str) -> IResult<()> {
        let mut reg = self.inner.lock();
        if !reg.overflows.contains_key(name) {
            return Err(ImageError::NotFound(format!(
                "no overflow volume named {name}"
            )));
        }
        if let Some(s) = reg.sets.values().find(|s| s.overflow_name() == name) {
            return Err(ImageError::Conflict(format!(
                "overflow volume {name} is attached to image set {}",
                s.name()
            )));
        }
        reg.overflows.remove(name);
        Ok(())
    }

    /// (capacity chunks, used chunks, sets attached) of an overflow volume.
    pub fn overflow_info(&self, name: &str) -> IResult<(u64, u64, Vec<String>)> {
        let reg = self.inner.lock();
        let o = reg
            .overflows
            .get(name)
            .ok_or_else(|| ImageError::NotFound(format!("no overflow volume named {name}")))?;
        let (cap, used) = o.usage();
        let sets = reg
            .sets
            .values()
            .filter(|s| s.overflow_name() == name)
            .map(|s| s.name().to_owned())
            .collect();
        Ok((cap, used, sets))
    }

    /// Attach (`Some`) or detach (`None`) a compact set's overflow volume.
    /// Detaching is refused while chunks of the set live there.
    pub fn overflow_attach(&self, set: &str, overflow: Option<&str>) -> IResult<()> {
        let reg = self.inner.lock();
        let s = reg.sets.get(set).cloned().ok_or_else(|| no_set(set))?;
        if s.kind() != Kind::Compact {
            return Err(ImageError::Invalid(format!(
                "image set {set} is not compact; only compact sets use an overflow volume"
            )));
        }
        let o = match overflow {
            Some(name) => Some(reg.overflow_for(set, name, s.chunk_bytes() as u32)?),
            None => {
                let n = s.overflow_chunks();
                if n > 0 {
                    return Err(ImageError::Conflict(format!(
                        "image set {set} keeps {n} chunks in overflow volume {}; refresh the shadow \
                         (`umbra image update {set} --to shadow`) or disable the set first",
                        s.overflow_name()
                    )));
                }
                None
            }
        };
        s.set_overflow(o)
            .map_err(|e| ImageError::Failed(format!("image set {set}: {e}")))?;
        reg.reset_unused_overflows();
        Ok(())
    }

    /// Stop every copy thread and write nothing: what a crash does to a
    /// daemon's threads. Tests use it to "crash" before reopening the same
    /// backends; nothing else should.
    pub fn halt_all(&self) {
        for s in self.inner.lock().sets.values() {
            let _ = s.stop_engine(false);
        }
    }

    /// Clean shutdown of every set: stop copies (they resume at the next
    /// start), write every bit and mark each bitmap volume clean. Call after
    /// the volumes stopped admitting I/O.
    pub fn suspend_all(&self) {
        let reg = self.inner.lock();
        for s in reg.sets.values() {
            match s.suspend() {
                Ok(()) => log::info!("image set {}: suspended cleanly", s.name()),
                Err(e) => log::error!("image set {}: suspend failed: {e}", s.name()),
            }
        }
    }
}

fn check_update(reg: &Registry, s: &ImageSet, to: Direction, full: bool) -> IResult<()> {
    let name = s.name();
    if s.is_copying() {
        return Err(ImageError::Conflict(format!(
            "image set {name}: a copy is running; `umbra image wait {name}` or `umbra image abort {name}` first"
        )));
    }
    if s.is_failed() && !(to == Direction::ToShadow && full && s.kind() == Kind::Independent) {
        return Err(ImageError::Conflict(format!(
            "image set {name} is failed ({}); only a full copy to the shadow of an independent set \
             brings it back, or disable it",
            s.failure().unwrap_or_default()
        )));
    }
    let pending = s.pending();
    match to {
        Direction::ToShadow if s.direction() == Direction::ToMaster && pending > 0 => {
            Err(ImageError::Conflict(format!(
                "image set {name}: a restore is unfinished ({pending} chunks); finish it with \
                 `umbra image update {name} --to master` first"
            )))
        }
        Direction::ToMaster if s.direction() == Direction::ToShadow && pending > 0 => {
            Err(ImageError::Conflict(format!(
                "image set {name}: the shadow is incomplete ({pending} chunks not copied); \
                 it cannot restore the master"
            )))
        }
        Direction::ToMaster => {
            for other in reg.sets.values() {
                if other.name() != name
                    && other.master_name() == s.master_name()
                    && other.direction() == Direction::ToMaster
                    && other.pending() > 0
                {
                    return Err(ImageError::Conflict(format!(
                        "master {} is already being restored from image set {}",
                        s.master_name(),
                        other.name()
                    )));
                }
            }
            let _ = full;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Split the two guards of a set's quiesce into (master, shadow).
fn split_guards<'g, 'a>(
    guards: &'g mut [crate::interposer::QuiesceGuard<'a>],
    master: &str,
) -> (
    &'g mut crate::interposer::QuiesceGuard<'a>,
    &'g mut crate::interposer::QuiesceGuard<'a>,
) {
    let (a, b) = guards.split_at_mut(1);
    if a[0].volume().name() == master {
        (&mut a[0], &mut b[0])
    } else {
        (&mut b[0], &mut a[0])
    }
}

/// Read and validate the header of a bitmap volume.
pub fn read_header(dev: &dyn BlockDevice) -> std::result::Result<Header, String> {
    let size = dev.size_bytes();
    if size < 2 * HEADER_BYTES {
        return Err(format!(
            "bitmap volume is truncated: {size} bytes, smaller than its two header slots"
        ));
    }
    let mut slots = vec![0u8; 2 * HEADER_BYTES as usize];
    dev.read(&mut slots, 0)
        .map_err(|e| format!("reading the header: {e}"))?;
    let (a, b) = slots.split_at(HEADER_BYTES as usize);
    Header::pick(a, b, size).map_err(|e| e.0)
}

/// Bytes the shadow volume really stores (a compact shadow volume shows
/// the master's size over a smaller backend).
fn shadow_store_bytes(shadow: &Volume) -> u64 {
    shadow.backend().size_bytes()
}

fn no_set(name: &str) -> ImageError {
    ImageError::NotFound(format!("no image set named {name}; see `umbra image list`"))
}

#[cfg(test)]
mod tests;
