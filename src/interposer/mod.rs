//! The interposer: a named volume and the stack of data services every one
//! of its requests passes through.
//!
//! ```text
//!   export (NBD, ublk) ──► Volume ──► service N ──► … ──► service 1 ──► backend
//! ```
//!
//! A [`Service`] is a factory for one layer: given the device below, it
//! returns the device that wraps it. The stack is built in one place
//! ([`build_stack`]) and capped at [`MAX_SERVICES`] layers.
//!
//! # The quiesce protocol
//! Every operation that needs a consistent cut of a volume (attach or detach
//! a service, establish a shadow, take a group point in time, swap roles)
//! goes through [`Volume::quiesce`], which:
//! 1. **stops admitting** new requests and 2. **drains** those in flight:
//!    requests hold a read lock on the stack for their whole duration and
//!    the quiesce takes the write lock (parking_lot's lock is fair: once a
//!    writer waits, new readers queue behind it);
//! 3. **syncs**: flushes the stack and syncs every service's metadata; a
//!    failure here resumes the volume unchanged and returns the error;
//! 4. hands the caller a [`QuiesceGuard`] to **act** on the stack; a rebuild
//!    that fails restores the previous stack (**rolls back**) and returns
//!    the error;
//! 5. **resumes** when the guard drops.
//!
//! Several volumes are quiesced together by taking their guards in name
//! order ([`quiesce_many`]), which is how a group point in time is taken.

pub mod passthrough;
pub mod stats;

use crate::device::{BlockDevice, Describe, DeviceError, LatencyClass, Result};
use parking_lot::{RwLock, RwLockWriteGuard};
use stats::Op;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most layers a volume may stack. Imaging, replication and caching are one
/// each; several shadows of one master add one layer per set. Eight leaves
/// room without letting a runaway loop build an unbounded chain.
pub const MAX_SERVICES: usize = 8;

/// How long a quiesce waits for in-flight requests to drain. A request stuck
/// longer than this (a hung backend) makes the operation fail, not hang.
pub const QUIESCE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: in-flight I/O did not drain within {timeout_s}s; nothing changed")]
    DrainTimeout { volume: String, timeout_s: u64 },
    #[error("volume {volume}: sync before {action} failed; nothing changed: {source}")]
    Sync {
        volume: String,
        action: String,
        #[source]
        source: DeviceError,
    },
    #[error("volume {volume}: {action} failed and was rolled back: {reason}")]
    RolledBack {
        volume: String,
        action: String,
        reason: String,
    },
    #[error("volume {volume}: already has {MAX_SERVICES} services")]
    StackFull { volume: String },
    #[error("volume {volume}: no service named {service}")]
    NoSuchService { volume: String, service: String },
    #[error("volume {volume}: a service named {service} is already attached")]
    DuplicateService { volume: String, service: String },
    #[error("volume {volume} is closed")]
    Closed { volume: String },
}

/// A data service: one layer of a volume's stack.
pub trait Service: Send + Sync {
    /// Unique within a volume's stack, e.g. `passthrough`, `image:nightly`.
    fn name(&self) -> &str;

    /// Where the layer belongs in a stack. Every stack is kept ordered by
    /// tier, bottom first, whatever order its layers were attached in (a
    /// restart attaches them in another order than the commands did).
    fn tier(&self) -> Tier {
        Tier::Service
    }

    /// Build this layer on top of `lower`. Called on attach and on every
    /// rebuild of the stack (another layer attached or detached), so the
    /// layer's state lives in the service, not in the returned device.
    fn stack_on(
        &self,
        lower: Arc<dyn BlockDevice>,
    ) -> std::result::Result<Arc<dyn BlockDevice>, String>;

    /// Make the service's metadata durable (bitmaps, indexes). Called at
    /// every quiesce after the data flush.
    fn sync_metadata(&self) -> Result<()> {
        Ok(())
    }

    /// Called while quiesced, just before the layer is removed (a cache
    /// destages here). An error keeps the service attached.
    fn before_detach(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// The tiers of a stack, bottom first (layers of one tier keep the order
/// they were attached in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Right above the backend: every other layer's reads benefit, and a
    /// write-back destage writes what every layer above decided.
    Cache,
    /// A replication primary's layers: below imaging, so the writes the
    /// imaging layer makes by itself (a restore's copies into the master)
    /// reach the peers like a client's. Above imaging they would bypass
    /// them and the peers would silently diverge.
    Replication,
    /// Imaging and every other service.
    Service,
    /// A replication secondary's guard, on top: it refuses client writes
    /// before any layer acts on them, and the applier writes right below
    /// it, so an imaging layer under it copies on write for replicated
    /// writes too (a snapshot of a secondary keeps its point in time).
    Guard,
}

struct Stack {
    top: Arc<dyn BlockDevice>,
    services: Vec<Arc<dyn Service>>,
    closed: bool,
}

/// Build a device chain: `backend`, then each service bottom-up.
pub fn build_stack(
    backend: &Arc<dyn BlockDevice>,
    services: &[Arc<dyn Service>],
) -> std::result::Result<Arc<dyn BlockDevice>, String> {
    if services.len() > MAX_SERVICES {
        return Err(format!("more than {MAX_SERVICES} services"));
    }
    let mut top = backend.clone();
    for s in services {
        top = s
            .stack_on(top)
            .map_err(|e| format!("service {}: {e}", s.name()))?;
    }
    Ok(top)
}

/// A named volume: its backend, and the service stack in front of it.
pub struct Volume {
    name: String,
    backend: Arc<dyn BlockDevice>,
    description: String,
    size_bytes: u64,
    stack: RwLock<Stack>,
    /// The stack's latency class, cached at every rebuild so frontends can
    /// ask per request without taking the stack lock.
    blocking: AtomicBool,
    /// What every request through the volume did (`stats.rs`).
    stats: stats::IoStats,
}

impl Volume {
    pub fn new(name: &str, backend: Arc<dyn BlockDevice>, description: String) -> Self {
        let size = backend.size_bytes();
        Self::with_size(name, backend, description, size)
    }

    /// A volume that presents `size_bytes` whatever its backend's size: a
    /// compact shadow shows its master's size over a smaller store, through
    /// the imaging layer that maps one to the other. Without that layer,
    /// requests past the backend's end fail with EINVAL.
    pub fn with_size(
        name: &str,
        backend: Arc<dyn BlockDevice>,
        description: String,
        size_bytes: u64,
    ) -> Self {
        Volume {
            name: name.to_owned(),
            size_bytes,
            stack: RwLock::new(Stack {
                top: backend.clone(),
                services: Vec::new(),
                closed: false,
            }),
            blocking: AtomicBool::new(backend.latency_class() == LatencyClass::Blocking),
            backend,
            description,
            stats: stats::IoStats::default(),
        }
    }

    pub fn with_describe<B: BlockDevice + Describe + 'static>(name: &str, backend: B) -> Self {
        let description = backend.describe();
        Self::new(name, Arc::new(backend), description)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The device at the bottom of the stack.
    pub fn backend(&self) -> &Arc<dyn BlockDevice> {
        &self.backend
    }

    pub fn service_names(&self) -> Vec<String> {
        self.stack
            .read()
            .services
            .iter()
            .map(|s| s.name().to_owned())
            .collect()
    }

    /// Stop admitting, drain, sync; see the module docs. `action` names the
    /// operation in errors.
    pub fn quiesce(&self, action: &str) -> std::result::Result<QuiesceGuard<'_>, VolumeError> {
        let stack = self
            .stack
            .try_write_for(QUIESCE_DRAIN_TIMEOUT)
            .ok_or_else(|| VolumeError::DrainTimeout {
                volume: self.name.clone(),
                timeout_s: QUIESCE_DRAIN_TIMEOUT.as_secs(),
            })?;
        if stack.closed {
            return Err(VolumeError::Closed {
                volume: self.name.clone(),
            });
        }
        let sync = || -> Result<()> {
            stack.top.flush()?;
            for s in stack.services.iter().rev() {
                s.sync_metadata()?;
            }
            Ok(())
        };
        sync().map_err(|source| VolumeError::Sync {
            volume: self.name.clone(),
            action: action.to_owned(),
            source,
        })?;
        Ok(QuiesceGuard {
            volume: self,
            stack,
            action: action.to_owned(),
        })
    }

    /// Attach `service` on top of the stack while the volume serves.
    pub fn attach(&self, service: Arc<dyn Service>) -> std::result::Result<(), VolumeError> {
        let mut guard = self.quiesce(&format!("attach {}", service.name()))?;
        guard.push(service)
    }

    /// Detach the service named `name` while the volume serves.
    pub fn detach(&self, name: &str) -> std::result::Result<(), VolumeError> {
        let mut guard = self.quiesce(&format!("detach {name}"))?;
        guard.remove(name)
    }

    /// Quiesce for the last time, flush, and refuse all later requests.
    pub fn close(&self) -> std::result::Result<(), VolumeError> {
        let mut guard = self.quiesce("close")?;
        guard.stack.closed = true;
        Ok(())
    }

    /// Every request through the volume so far (`stats.rs`).
    pub fn io_stats(&self) -> stats::IoSnapshot {
        self.stats.snapshot()
    }

    /// Run one request through the stack, counted.
    #[inline]
    fn counted(
        &self,
        op: Op,
        bytes: u64,
        f: impl FnOnce(&dyn BlockDevice) -> Result<()>,
    ) -> Result<()> {
        if !cfg!(feature = "io-stats") {
            return self.with_top(f);
        }
        let t = self.stats.start();
        let r = self.with_top(f);
        self.stats.end(t, op, bytes, r.is_ok());
        r
    }

    #[inline]
    fn with_top<T>(&self, f: impl FnOnce(&dyn BlockDevice) -> Result<T>) -> Result<T> {
        // The read lock is the admission gate of the quiesce protocol: one
        // uncontended atomic add, held for the request's duration so a
        // quiesce can drain. It never waits except while a quiesce runs.
        let stack = self.stack.read();
        if stack.closed {
            return Err(DeviceError::ShuttingDown);
        }
        f(stack.top.as_ref())
    }
}

impl BlockDevice for Volume {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    /// The backend's failure (fail-stop): every request through the stack
    /// ends there.
    fn failure(&self) -> Option<String> {
        self.backend.failure()
    }
    /// What the top of the stack says (a secondary's guard is on top).
    fn refuses_writes(&self) -> bool {
        self.stack.read().top.refuses_writes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        self.counted(Op::Read, len, |d| d.read(buf, offset))
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.counted(Op::Write, buf.len() as u64, |d| d.write(buf, offset, fua))
    }
    fn flush(&self) -> Result<()> {
        self.counted(Op::Flush, 0, |d| d.flush())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.counted(Op::Discard, len, |d| d.discard(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.counted(Op::WriteZeroes, len, |d| d.write_zeroes(offset, len, fua))
    }
    fn block_size_bytes(&self) -> u32 {
        self.backend.block_size_bytes()
    }
    fn latency_class(&self) -> LatencyClass {
        if self.blocking.load(Ordering::Relaxed) {
            LatencyClass::Blocking
        } else {
            LatencyClass::Memory
        }
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<crate::device::Extent>> {
        self.with_top(|d| d.allocation(offset, len))
    }
    fn write_may_block(&self, offset: u64, len: u64) -> bool {
        // Only a layer that asks (imaging) makes this differ from the
        // cached class; ask the stack only then.
        if self.blocking.load(Ordering::Relaxed) {
            return true;
        }
        let stack = self.stack.read();
        !stack.services.is_empty() && stack.top.write_may_block(offset, len)
    }
}

/// Held while a volume is quiesced: no request is in flight and none is
/// admitted. Dropping it resumes the volume.
pub struct QuiesceGuard<'a> {
    volume: &'a Volume,
    stack: RwLockWriteGuard<'a, Stack>,
    action: String,
}

impl QuiesceGuard<'_> {
    pub fn volume(&self) -> &Volume {
        self.volume
    }

    /// The services as they stand, bottom-up.
    pub fn services(&self) -> &[Arc<dyn Service>] {
        &self.stack.services
    }

    /// Replace the service list and rebuild the stack, ordered by tier
    /// (stable within a tier); on failure the old stack stays in place and
    /// the error names the action.
    pub fn replace_services(
        &mut self,
        mut services: Vec<Arc<dyn Service>>,
    ) -> std::result::Result<(), VolumeError> {
        services.sort_by_key(|s| s.tier());
        if services.len() > MAX_SERVICES {
            return Err(VolumeError::StackFull {
                volume: self.volume.name.clone(),
            });
        }
        match build_stack(&self.volume.backend, &services) {
            Ok(top) => {
                let blocking = top.latency_class() == LatencyClass::Blocking;
                self.volume.blocking.store(blocking, Ordering::Relaxed);
                self.stack.top = top;
                self.stack.services = services;
                Ok(())
            }
            Err(reason) => Err(VolumeError::RolledBack {
                volume: self.volume.name.clone(),
                action: self.action.clone(),
                reason,
            }),
        }
    }

    /// Attach `service` on top of the layers of its tier.
    pub fn push(&mut self, service: Arc<dyn Service>) -> std::result::Result<(), VolumeError> {
        let top = self.stack.services.len();
        self.insert(top, service)
    }

    /// Attach `service` at `position` within the order of tiers (0 = as
    /// low as its tier allows).
    pub fn insert(
        &mut self,
        position: usize,
        service: Arc<dyn Service>,
    ) -> std::result::Result<(), VolumeError> {
        if self
            .stack
            .services
            .iter()
            .any(|s| s.name() == service.name())
        {
            return Err(VolumeError::DuplicateService {
                volume: self.volume.name.clone(),
                service: service.name().to_owned(),
            });
        }
        let mut services = self.stack.services.clone();
        services.insert(position.min(services.len()), service);
        self.replace_services(services)
    }

    pub fn remove(&mut self, name: &str) -> std::result::Result<(), VolumeError> {
        let Some(pos) = self.stack.services.iter().position(|s| s.name() == name) else {
            return Err(VolumeError::NoSuchService {
                volume: self.volume.name.clone(),
                service: name.to_owned(),
            });
        };
        let service = self.stack.services[pos].clone();
        service
            .before_detach()
            .map_err(|reason| VolumeError::RolledBack {
                volume: self.volume.name.clone(),
                action: self.action.clone(),
                reason,
            })?;
        let mut services = self.stack.services.clone();
        services.remove(pos);
        self.replace_services(services)
    }
}

/// Quiesce several volumes together (a group point in time). Guards are
/// taken in name order so two concurrent group operations cannot deadlock;
/// if any volume fails to quiesce, those already quiesced resume.
pub fn quiesce_many<'a>(
    volumes: &[&'a Volume],
    action: &str,
) -> std::result::Result<Vec<QuiesceGuard<'a>>, VolumeError> {
    let mut sorted: Vec<&'a Volume> = volumes.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|a, b| a.name == b.name);
    let mut guards = Vec::with_capacity(sorted.len());
    for v in sorted {
        guards.push(v.quiesce(action)?);
    }
    Ok(guards)
}

#[cfg(test)]
mod tests;
