//! The ublk export: a volume as `/dev/ublkbN`.
//!
//! The `umbra-ublk` crate runs the device (control commands, one thread and
//! ring per queue); this module answers its requests from the volume's
//! stack and maps errors to errnos. Flush and FUA reach the stack (the
//! device is created with a volatile cache and FUA support); discard and
//! write-zeroes are mapped; requests past the end fail with EINVAL in the
//! volume's range check, unknown ops with EOPNOTSUPP.

use crate::device::BlockDevice;
use crate::interposer::Volume;
use std::sync::Arc;
use umbra_ublk::{Control, Device, Handler, Io, Options};

pub use umbra_ublk::sys::{S_DEV_LIVE, S_DEV_QUIESCED};

/// Default queues and depth of a ublk export.
pub const DEFAULT_QUEUES: u16 = 1;
pub const DEFAULT_DEPTH: u16 = 64;
/// Set (to anything) to make new ublk devices use copy mode even where
/// the kernel offers USER_COPY.
pub const COPY_MODE_ENV: &str = "UMBRA_UBLK_COPY_MODE";
/// Largest request the device accepts.
pub const MAX_IO_BYTES: u32 = 512 << 10;

struct VolumeHandler {
    volume: Arc<Volume>,
    read_only: bool,
}

impl Handler for VolumeHandler {
    fn handle(&self, io: Io<'_>) -> i32 {
        let v = &self.volume;
        let writes = matches!(
            io,
            Io::Write { .. } | Io::Discard { .. } | Io::WriteZeroes { .. }
        );
        if writes && self.read_only {
            return -libc::EPERM;
        }
        let (res, done) = match io {
            Io::Read { offset, buf } => {
                let n = buf.len();
                (v.read(buf, offset), n)
            }
            Io::Write { offset, buf, fua } => (v.write(buf, offset, fua), buf.len()),
            Io::Flush => (v.flush(), 0),
            Io::Discard { offset, len } => (v.discard(offset, len), 0),
            Io::WriteZeroes { offset, len } => (v.write_zeroes(offset, len, false), 0),
            Io::Unknown(op) => {
                log::debug!("ublk export of {}: unknown op {op}", v.name());
                return -libc::EOPNOTSUPP;
            }
        };
        match res {
            Ok(()) => done as i32,
            Err(e) => {
                log::debug!("ublk export of {}: {e}", v.name());
                -e.errno()
            }
        }
    }
}

/// A running ublk export.
pub struct UblkExport {
    device: Option<Device>,
    path: String,
    dev_id: u32,
}

impl UblkExport {
    /// Create and start the device, or re-attach to `recover_id` when a
    /// crashed daemon left it in user recovery.
    pub fn start(
        control: &Arc<Control>,
        volume: Arc<Volume>,
        read_only: bool,
        queues: u16,
        depth: u16,
        recover_id: Option<u32>,
    ) -> std::io::Result<UblkExport> {
        let opts = Options {
            size_bytes: volume.size_bytes(),
            queues,
            depth,
            max_io_bytes: MAX_IO_BYTES,
            recovery: true,
            // USER_COPY where the kernel offers it; UMBRA_UBLK_COPY_MODE=1
            // forces copy mode (the VM test runs both).
            user_copy: std::env::var_os(COPY_MODE_ENV).is_none(),
            // A read-only export, or a volume that refuses writes now (a
            // replication secondary): the disk says so, like the NBD
            // export's READ_ONLY flag. Fixed for the device's life: after
            // a promotion, export it again to write.
            read_only: read_only || volume.refuses_writes(),
        };
        let handler = Arc::new(VolumeHandler { volume, read_only });
        let device = Device::start(control.clone(), &opts, handler, recover_id)?;
        Ok(UblkExport {
            path: device.block_path(),
            dev_id: device.dev_id(),
            device: Some(device),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }

    /// Whether data moves by USER_COPY (else copy mode).
    pub fn user_copy(&self) -> bool {
        self.device.as_ref().is_some_and(|d| d.user_copy())
    }

    /// Stop and delete the device; in-flight requests complete first.
    pub fn stop(mut self) -> std::io::Result<()> {
        match self.device.take() {
            Some(d) => d.stop_and_delete(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    fn handler(read_only: bool) -> VolumeHandler {
        VolumeHandler {
            volume: Arc::new(Volume::new(
                "u",
                Arc::new(MemoryBackend::new(1 << 20)),
                String::new(),
            )),
            read_only,
        }
    }

    #[test]
    fn requests_map_to_the_volume_and_errors_to_errnos() {
        let h = handler(false);
        assert_eq!(
            h.handle(Io::Write {
                offset: 4096,
                buf: &[7u8; 4096],
                fua: true
            }),
            4096
        );
        let mut buf = vec![0u8; 4096];
        assert_eq!(
            h.handle(Io::Read {
                offset: 4096,
                buf: &mut buf
            }),
            4096
        );
        assert_eq!(buf, vec![7u8; 4096]);
        assert_eq!(h.handle(Io::Flush), 0);
        assert_eq!(
            h.handle(Io::WriteZeroes {
                offset: 4096,
                len: 4096
            }),
            0
        );
        assert_eq!(
            h.handle(Io::Discard {
                offset: 0,
                len: 8192
            }),
            0
        );
        // Past the end, and an op nobody knows: errors, not crashes.
        assert_eq!(
            h.handle(Io::Read {
                offset: (1 << 20) - 512,
                buf: &mut buf
            }),
            -libc::EINVAL
        );
        assert_eq!(h.handle(Io::Unknown(42)), -libc::EOPNOTSUPP);
        let ro = handler(true);
        assert_eq!(
            ro.handle(Io::Write {
                offset: 0,
                buf: &[1u8; 512],
                fua: false
            }),
            -libc::EPERM
        );
    }
}
