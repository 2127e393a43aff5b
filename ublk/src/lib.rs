//! A thin binding of the Linux ublk UAPI on the `io-uring` crate.
//!
//! * [`Control`]: the control device (`/dev/ublk-control`) and its
//!   commands, sent as `IORING_OP_URING_CMD` on a 128-byte-SQE ring:
//!   GET_FEATURES, ADD_DEV, SET_PARAMS, START_DEV, STOP_DEV, DEL_DEV,
//!   GET_DEV_INFO, START/END_USER_RECOVERY.
//! * [`Device`]: one started device (`/dev/ublkbN`): one thread and one
//!   ring per queue, each reading requests from the descriptor array the
//!   kernel shares with it (mmapped from `/dev/ublkcN`), arming every tag
//!   with FETCH_REQ and answering each request with COMMIT_AND_FETCH_REQ
//!   (result and re-arm in one SQE). Data moves by copy mode (the kernel
//!   copies to and from a buffer per tag) or, when the kernel offers it,
//!   USER_COPY (we `pread`/`pwrite` the request's data on `/dev/ublkcN`).
//!
//! START_DEV is issued by the caller's thread while the queue threads
//! already serve: the kernel scans partitions as soon as the disk appears,
//! and those reads must be answered (the partition-scan trap).
//!
//! `unsafe` is confined to this file's `mmap`/`munmap` of the descriptor
//! array, the raw-pointer reads of descriptors, and building SQEs that
//! point at buffers owned by the caller; every block says why it holds.

pub mod sys;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// One request, as the queue thread hands it to the [`Handler`].
#[derive(Debug)]
pub enum Io<'a> {
    Read {
        offset: u64,
        buf: &'a mut [u8],
    },
    Write {
        offset: u64,
        buf: &'a [u8],
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
    },
    /// An op this binding does not know; answer with an error.
    Unknown(u8),
}

/// What serves a device's requests (called from its queue threads).
pub trait Handler: Send + Sync + 'static {
    /// Serve one request: bytes done (reads and writes) or 0, or a negative
    /// errno.
    fn handle(&self, io: Io<'_>) -> i32;
}

#[derive(Debug, Clone)]
pub struct Options {
    pub size_bytes: u64,
    pub queues: u16,
    pub depth: u16,
    /// Largest request, bytes.
    pub max_io_bytes: u32,
    /// Keep the device across a crash of this process (UBLK_F_USER_RECOVERY)
    /// when the kernel supports it.
    pub recovery: bool,
    /// Use USER_COPY when the kernel offers it.
    pub user_copy: bool,
    /// A read-only disk (the kernel refuses writes before they reach us,
    /// and `mount` mounts it read-only).
    pub read_only: bool,
}

fn errno(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

/// The control device.
pub struct Control {
    fd: File,
    ring: Mutex<IoUring<squeue::Entry128, cqueue::Entry>>,
}

impl Control {
    pub fn open() -> io::Result<Control> {
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4)?;
        Ok(Control {
            fd,
            ring: Mutex::new(ring),
        })
    }

    /// Send one control command and wait for its completion.
    fn cmd(&self, op: u32, c: sys::CtrlCmd) -> io::Result<i32> {
        let mut payload = [0u8; 80];
        // SAFETY: CtrlCmd is a 32-byte repr(C) struct of plain integers;
        // viewing it as bytes reads only initialised memory.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&c as *const sys::CtrlCmd).cast::<u8>(),
                std::mem::size_of::<sys::CtrlCmd>(),
            )
        };
        payload[..bytes.len()].copy_from_slice(bytes);
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd.as_raw_fd()), op)
            .cmd(payload)
            .build()
            .user_data(1);
        let mut ring = self.ring.lock().expect("control ring lock");
        // SAFETY: the SQE points at `c.addr`, a buffer the caller keeps
        // alive until this function returns, which is after the
        // completion has been reaped below.
        unsafe { ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("ublk control ring full"))?;
        ring.submit_and_wait(1)?;
        let cqe = ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("ublk control: no completion"))?;
        if cqe.result() < 0 {
            return Err(errno(cqe.result()));
        }
        Ok(cqe.result())
    }

    fn with_buf<T>(&self, op: u32, dev_id: u32, buf: &mut T, data0: u64) -> io::Result<i32> {
        let c = sys::CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<T>() as u16,
            addr: buf as *mut T as u64,
            data: [data0],
            ..Default::default()
        };
        self.cmd(op, c)
    }

    fn plain(&self, op: u32, dev_id: u32, data0: u64) -> io::Result<i32> {
        let c = sys::CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            data: [data0],
            ..Default::default()
        };
        self.cmd(op, c)
    }

    /// The driver's feature flags (0 on kernels without GET_FEATURES).
    pub fn features(&self) -> u64 {
        let mut f = 0u64;
        match self.with_buf(sys::U_CMD_GET_FEATURES, u32::MAX, &mut f, 0) {
            Ok(_) => f,
            Err(_) => 0,
        }
    }

    pub fn dev_info(&self, dev_id: u32) -> io::Result<sys::DevInfo> {
        let mut info = sys::DevInfo::default();
        self.with_buf(sys::U_CMD_GET_DEV_INFO, dev_id, &mut info, 0)?;
        Ok(info)
    }

    pub fn stop(&self, dev_id: u32) -> io::Result<()> {
        self.plain(sys::U_CMD_STOP_DEV, dev_id, 0).map(|_| ())
    }

    pub fn delete(&self, dev_id: u32) -> io::Result<()> {
        self.plain(sys::U_CMD_DEL_DEV, dev_id, 0).map(|_| ())
    }
}

/// Size of one queue's descriptor area as mmapped (a page multiple).
fn desc_area_bytes(depth: u16) -> usize {
    let page = 4096;
    (depth as usize * std::mem::size_of::<sys::IoDesc>()).div_ceil(page) * page
}

/// Offset of queue `q`'s descriptors in /dev/ublkcN: each queue's slot is
/// sized for the largest depth.
fn desc_area_offset(q: u16) -> i64 {
    sys::CMD_BUF_OFFSET + q as i64 * desc_area_bytes(sys::MAX_QUEUE_DEPTH) as i64
}

/// USER_COPY offset of request `(q, tag)`'s data in /dev/ublkcN.
fn user_copy_offset(q: u16, tag: u16) -> u64 {
    const IO_BUF_OFFSET: u64 = 0x8000_0000;
    const TAG_OFF: u64 = 25;
    const QID_OFF: u64 = TAG_OFF + 16;
    IO_BUF_OFFSET + ((q as u64) << QID_OFF) + ((tag as u64) << TAG_OFF)
}

/// A started device.
pub struct Device {
    dev_id: u32,
    control: Arc<Control>,
    queues: Vec<JoinHandle<()>>,
    user_copy: bool,
}

impl Device {
    /// Create a device, or (with `recover`) re-attach to one a crashed
    /// server left in user recovery, and start serving it with `handler`.
    /// Returns once `/dev/ublkbN` serves.
    pub fn start(
        control: Arc<Control>,
        opts: &Options,
        handler: Arc<dyn Handler>,
        recover: Option<u32>,
    ) -> io::Result<Device> {
        if opts.queues == 0 || opts.depth == 0 || opts.depth > sys::MAX_QUEUE_DEPTH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "queues must be at least 1 and depth 1 to {}",
                    sys::MAX_QUEUE_DEPTH
                ),
            ));
        }
        let features = control.features();
        let user_copy = opts.user_copy && features & sys::F_USER_COPY != 0;
        let (dev_id, info) = match recover {
            Some(id) => {
                let info = control.dev_info(id)?;
                if info.flags & sys::F_USER_RECOVERY == 0 {
                    return Err(io::Error::other(format!(
                        "ublk device {id} was not created with user recovery"
                    )));
                }
                control.plain(sys::U_CMD_START_USER_RECOVERY, id, 0)?;
                (id, info)
            }
            None => {
                let mut flags = sys::F_CMD_IOCTL_ENCODE;
                if opts.recovery && features & sys::F_USER_RECOVERY != 0 {
                    flags |= sys::F_USER_RECOVERY;
                }
                if user_copy {
                    flags |= sys::F_USER_COPY;
                }
                let mut info = sys::DevInfo {
                    nr_hw_queues: opts.queues,
                    queue_depth: opts.depth,
                    max_io_buf_bytes: opts.max_io_bytes,
                    dev_id: u32::MAX,
                    flags,
                    ..Default::default()
                };
                control.with_buf(sys::U_CMD_ADD_DEV, u32::MAX, &mut info, 0)?;
                let id = info.dev_id;
                let sectors = opts.size_bytes / 512;
                let mut params = sys::Params {
                    len: std::mem::size_of::<sys::Params>() as u32,
                    types: sys::PARAM_TYPE_BASIC | sys::PARAM_TYPE_DISCARD,
                    basic: sys::ParamBasic {
                        attrs: sys::ATTR_VOLATILE_CACHE
                            | sys::ATTR_FUA
                            | if opts.read_only {
                                sys::ATTR_READ_ONLY
                            } else {
                                0
                            },
                        logical_bs_shift: 9,
                        physical_bs_shift: 12,
                        io_opt_shift: 12,
                        io_min_shift: 9,
                        max_sectors: opts.max_io_bytes / 512,
                        dev_sectors: sectors,
                        ..Default::default()
                    },
                    discard: sys::ParamDiscard {
                        discard_granularity: 4096,
                        max_discard_sectors: u32::MAX >> 9,
                        max_write_zeroes_sectors: u32::MAX >> 9,
                        max_discard_segments: 1,
                        ..Default::default()
                    },
                    ..Default::default()
                };
                if let Err(e) = control.with_buf(sys::U_CMD_SET_PARAMS, id, &mut params, 0) {
                    let _ = control.delete(id);
                    return Err(e);
                }
                (id, info)
            }
        };
        let user_copy = info.flags & sys::F_USER_COPY != 0;
        let cdev = match open_char_device(dev_id) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                if recover.is_none() {
                    let _ = control.delete(dev_id);
                }
                return Err(e);
            }
        };
        let mut queues = Vec::new();
        for q in 0..info.nr_hw_queues {
            let (cdev, handler) = (cdev.clone(), handler.clone());
            let depth = info.queue_depth;
            let max_io = info.max_io_buf_bytes as usize;
            queues.push(
                std::thread::Builder::new()
                    .name(format!("ublk{dev_id}-q{q}"))
                    .spawn(move || {
                        if let Err(e) = serve_queue(&cdev, q, depth, max_io, user_copy, handler) {
                            log::error!("ublk{dev_id} queue {q}: {e}");
                        }
                    })?,
            );
        }
        // START_DEV (or END_USER_RECOVERY) waits in the kernel until every
        // queue has armed every tag, then adds the disk, whose partition
        // scan the queue threads answer.
        let pid = std::process::id() as u64;
        let res = match recover {
            Some(_) => control.plain(sys::U_CMD_END_USER_RECOVERY, dev_id, pid),
            None => control.plain(sys::U_CMD_START_DEV, dev_id, pid),
        };
        let dev = Device {
            dev_id,
            control,
            queues,
            user_copy,
        };
        if let Err(e) = res {
            let _ = dev.stop_and_delete();
            return Err(e);
        }
        Ok(dev)
    }

    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }

    pub fn block_path(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }

    pub fn user_copy(&self) -> bool {
        self.user_copy
    }

    /// Stop the device (in-flight requests complete first), wait for the
    /// queue threads, delete it.
    pub fn stop_and_delete(mut self) -> io::Result<()> {
        let stop = self.control.stop(self.dev_id);
        for q in self.queues.drain(..) {
            let _ = q.join();
        }
        stop?;
        self.control.delete(self.dev_id)
    }
}

fn open_char_device(dev_id: u32) -> io::Result<File> {
    let path = format!("/dev/ublkc{dev_id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(f),
            Err(e) if Instant::now() < deadline && e.kind() == io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{path}: {e}"))),
        }
    }
}

/// The mmapped descriptor array of one queue.
struct DescArea {
    ptr: *mut libc::c_void,
    len: usize,
    depth: u16,
}

impl DescArea {
    fn map(cdev: &File, q: u16, depth: u16) -> io::Result<DescArea> {
        let len = desc_area_bytes(depth);
        // SAFETY: a fresh shared read-only mapping of the driver's
        // descriptor area for queue q; no Rust object aliases it, and it is
        // unmapped exactly once in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                cdev.as_raw_fd(),
                desc_area_offset(q),
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(DescArea { ptr, len, depth })
    }

    /// The descriptor of `tag`, as the kernel wrote it before completing
    /// the tag's fetch.
    fn get(&self, tag: u16) -> sys::IoDesc {
        assert!(tag < self.depth);
        // SAFETY: tag < depth, so the descriptor lies inside the mapping;
        // the kernel finished writing it before completing the fetch we
        // just reaped, and a volatile read copies it out at once.
        unsafe { std::ptr::read_volatile((self.ptr as *const sys::IoDesc).add(tag as usize)) }
    }
}

impl Drop for DescArea {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; unmapped once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// An I/O command SQE for `tag`.
fn io_sqe(cdev: &File, op: u32, q: u16, tag: u16, result: i32, addr: u64) -> squeue::Entry {
    let cmd = sys::IoCmd {
        q_id: q,
        tag,
        result,
        addr,
    };
    let mut payload = [0u8; 16];
    payload[0..2].copy_from_slice(&cmd.q_id.to_ne_bytes());
    payload[2..4].copy_from_slice(&cmd.tag.to_ne_bytes());
    payload[4..8].copy_from_slice(&cmd.result.to_ne_bytes());
    payload[8..16].copy_from_slice(&cmd.addr.to_ne_bytes());
    opcode::UringCmd16::new(types::Fd(cdev.as_raw_fd()), op)
        .cmd(payload)
        .build()
        .user_data(tag as u64)
}

/// Worker threads per queue, at most. Requests run on the workers, so a
/// queue has as many in flight as it has workers (the kernel hands it at
/// most `depth`). With a backend request of latency L and CPU cost c, w
/// workers serve min(w / L, cores / c) requests per second: 16 keep a
/// 1 ms device at 16k IOPS per queue, where one request at a time gave
/// 1k, while a blocked worker costs no CPU; more would only add threads
/// per device, which a daemon with a thousand volumes pays for.
pub const MAX_WORKERS_PER_QUEUE: u16 = 16;

/// The `user_data` of the eventfd read that wakes the queue thread when a
/// worker finished (tags are below 65536).
const WAKE: u64 = u64::MAX;

/// A tag's buffer, handed to the worker that serves the tag's request.
struct TagBuf(*mut u8);

// SAFETY: a tag's buffer is touched by one thread at a time: the worker
// serving its request, from the fetch's completion until the worker hands
// back the result; the queue thread commits (and re-arms) the tag only
// after that.
unsafe impl Send for TagBuf {}

/// A fetched request on its way to a worker.
struct Job {
    tag: u16,
    desc: sys::IoDesc,
    buf: TagBuf,
}

/// What a queue thread and its workers share.
struct Work {
    jobs: Mutex<(std::collections::VecDeque<Job>, bool)>,
    more: std::sync::Condvar,
    /// Finished requests: (tag, result to commit).
    done: Mutex<Vec<(u16, i32)>>,
    /// Written by a worker after it added to `done`.
    wake: std::os::fd::OwnedFd,
}

impl Work {
    fn finished(&self, tag: u16, result: i32) {
        self.done.lock().expect("done list").push((tag, result));
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write from a live buffer to our eventfd.
        let n = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        if n != 8 {
            log::error!(
                "ublk: waking the queue thread: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// One queue thread: arm every tag, hand each fetched request to a worker
/// (up to [`MAX_WORKERS_PER_QUEUE`], so requests that block overlap), and
/// commit the results as the workers finish them, out of order, each with
/// the re-arm of its tag (COMMIT_AND_FETCH_REQ), all pending ones in one
/// `io_uring_enter`; until the device stops (every fetch completes with
/// ABORT).
fn serve_queue(
    cdev: &File,
    q: u16,
    depth: u16,
    max_io: usize,
    user_copy: bool,
    handler: Arc<dyn Handler>,
) -> io::Result<()> {
    let descs = DescArea::map(cdev, q, depth)?;
    // SAFETY: eventfd(2) with valid flags; the fd is owned right below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: efd is a fresh descriptor nobody else owns.
    let wake = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) };
    let work = Work {
        jobs: Mutex::new((std::collections::VecDeque::new(), false)),
        more: std::sync::Condvar::new(),
        done: Mutex::new(Vec::new()),
        wake,
    };
    // Every tag's commit and the wake-up read can be queued at once.
    let mut ring = IoUring::<squeue::Entry, cqueue::Entry>::builder()
        .build((depth as u32 + 1).next_power_of_two())?;
    // One page-aligned buffer per tag.
    let layout = std::alloc::Layout::from_size_align(max_io.max(4096), 4096)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut ptrs: Vec<*mut u8> = Vec::with_capacity(depth as usize);
    for _ in 0..depth {
        // SAFETY: layout has a non-zero size; the allocation is freed below
        // after the ring (which may point into it) is gone.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        ptrs.push(p);
    }
    // The eventfd read's target, alive as long as the buffers.
    let mut wake_buf = Box::new([0u8; 8]);
    let workers = depth.clamp(1, MAX_WORKERS_PER_QUEUE);
    let result = std::thread::scope(|scope| {
        for i in 0..workers {
            let (work, handler) = (&work, handler.as_ref());
            let spawned = std::thread::Builder::new()
                .name(format!("ublk-q{q}-w{i}"))
                .spawn_scoped(scope, move || loop {
                    let job = {
                        let mut g = work.jobs.lock().expect("job queue");
                        loop {
                            if let Some(j) = g.0.pop_front() {
                                break j;
                            }
                            if g.1 {
                                return;
                            }
                            g = work.more.wait(g).expect("job queue");
                        }
                    };
                    // SAFETY: this worker owns the tag's buffer until it
                    // reports the result (see TagBuf); max_io bytes long.
                    let buf = unsafe { std::slice::from_raw_parts_mut(job.buf.0, max_io) };
                    let r = serve_one(cdev, q, job.tag, &job.desc, buf, user_copy, handler);
                    work.finished(job.tag, r);
                });
            if let Err(e) = spawned {
                // The workers already started must not wait forever.
                work.jobs.lock().expect("job queue").1 = true;
                work.more.notify_all();
                return Err(e);
            }
        }
        let served = (|| -> io::Result<()> {
            for tag in 0..depth {
                let addr = if user_copy {
                    0
                } else {
                    ptrs[tag as usize] as u64
                };
                let sqe = io_sqe(cdev, sys::U_IO_FETCH_REQ, q, tag, 0, addr);
                // SAFETY: addr points at this tag's buffer, alive until the
                // ring is dropped (the buffers are freed after).
                unsafe { ring.submission().push(&sqe) }
                    .map_err(|_| io::Error::other("queue ring full"))?;
            }
            let arm_wake = |ring: &mut IoUring, buf: &mut [u8; 8]| -> io::Result<()> {
                let sqe = opcode::Read::new(types::Fd(work.wake.as_raw_fd()), buf.as_mut_ptr(), 8)
                    .build()
                    .user_data(WAKE);
                // SAFETY: the 8-byte target lives until after the ring is
                // dropped; one such read is in flight at a time.
                unsafe { ring.submission().push(&sqe) }
                    .map_err(|_| io::Error::other("queue ring full"))
            };
            arm_wake(&mut ring, &mut wake_buf)?;
            ring.submit()?;
            let mut aborted = 0u32;
            loop {
                match ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return Err(e),
                }
                let cqes: Vec<(u64, i32)> = ring
                    .completion()
                    .map(|c| (c.user_data(), c.result()))
                    .collect();
                let mut rearm = false;
                let mut handed = 0;
                for (data, res) in cqes {
                    if data == WAKE {
                        rearm = true;
                        continue;
                    }
                    let tag = data as u16;
                    if res == sys::IO_RES_ABORT {
                        aborted += 1;
                        if aborted >= depth as u32 {
                            return Ok(());
                        }
                        continue;
                    }
                    if res < 0 {
                        return Err(io::Error::other(format!(
                            "fetch of tag {tag} failed: {}",
                            errno(res)
                        )));
                    }
                    let job = Job {
                        tag,
                        desc: descs.get(tag),
                        buf: TagBuf(ptrs[tag as usize]),
                    };
                    work.jobs.lock().expect("job queue").0.push_back(job);
                    handed += 1;
                }
                match handed {
                    0 => {}
                    1 => work.more.notify_one(),
                    _ => work.more.notify_all(),
                }
                // Commit what the workers finished, each with its tag's
                // re-arm; all go in the next enter.
                let done = std::mem::take(&mut *work.done.lock().expect("done list"));
                for (tag, r) in done {
                    let addr = if user_copy {
                        0
                    } else {
                        ptrs[tag as usize] as u64
                    };
                    let sqe = io_sqe(cdev, sys::U_IO_COMMIT_AND_FETCH_REQ, q, tag, r, addr);
                    // SAFETY: as for the fetch above; the worker is done
                    // with the buffer.
                    unsafe { ring.submission().push(&sqe) }
                        .map_err(|_| io::Error::other("queue ring full"))?;
                }
                if rearm {
                    arm_wake(&mut ring, &mut wake_buf)?;
                }
            }
        })();
        // Stop the workers (they finish what they hold first).
        work.jobs.lock().expect("job queue").1 = true;
        work.more.notify_all();
        served
    });
    drop(ring);
    drop(wake_buf);
    for p in ptrs {
        // SAFETY: allocated above with this layout; the ring is gone and
        // the workers have ended, so nothing refers to it any more.
        unsafe { std::alloc::dealloc(p, layout) };
    }
    result
}

/// Serve one request; the result to commit.
fn serve_one(
    cdev: &File,
    q: u16,
    tag: u16,
    desc: &sys::IoDesc,
    buf: &mut [u8],
    user_copy: bool,
    handler: &dyn Handler,
) -> i32 {
    let op = (desc.op_flags & 0xff) as u8;
    let fua = desc.op_flags & sys::IO_F_FUA != 0;
    let offset = desc.start_sector * 512;
    let len = desc.nr_sectors as usize * 512;
    match op {
        sys::IO_OP_READ | sys::IO_OP_WRITE if len > buf.len() => -libc::EINVAL,
        sys::IO_OP_READ => {
            let r = handler.handle(Io::Read {
                offset,
                buf: &mut buf[..len],
            });
            if r > 0 && user_copy {
                if let Err(e) = cdev.write_all_at(&buf[..r as usize], user_copy_offset(q, tag)) {
                    return -e.raw_os_error().unwrap_or(libc::EIO);
                }
            }
            r
        }
        sys::IO_OP_WRITE => {
            if user_copy {
                if let Err(e) = cdev.read_exact_at(&mut buf[..len], user_copy_offset(q, tag)) {
                    return -e.raw_os_error().unwrap_or(libc::EIO);
                }
            }
            handler.handle(Io::Write {
                offset,
                buf: &buf[..len],
                fua,
            })
        }
        sys::IO_OP_FLUSH => handler.handle(Io::Flush),
        sys::IO_OP_DISCARD => handler.handle(Io::Discard {
            offset,
            len: len as u64,
        }),
        sys::IO_OP_WRITE_ZEROES => handler.handle(Io::WriteZeroes {
            offset,
            len: len as u64,
        }),
        other => handler.handle(Io::Unknown(other)),
    }
}
