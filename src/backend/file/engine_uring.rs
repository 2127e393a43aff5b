//! io_uring engine with batched submission.
//!
//! One ring thread per backend owns the ring. Callers (NBD workers, service
//! threads) hand it a request through a bounded channel and park; the ring
//! thread drains every queued request into the submission queue, submits
//! them with one `io_uring_enter`, and unparks each caller as its completion
//! arrives. Under load many requests share one syscall; an idle caller pays
//! one channel hop and one wake-up.
//!
//! While requests are in flight the ring thread sleeps in the kernel waiting
//! for a completion. A caller that queues a request meanwhile writes to an
//! eventfd that the ring always has a read posted on, so new requests never
//! wait behind old ones. The eventfd is written only when the ring thread
//! has said it is about to sleep (`sleeping`), so a busy ring costs callers
//! no syscall.

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use io_uring::{opcode, types, IoUring};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};

/// Submission-queue entries. 128 covers the NBD frontend's in-flight window
/// (32 per connection times a few connections) with room for the eventfd.
const RING_ENTRIES: u32 = 128;
/// Requests in flight in the kernel at once; the eventfd read takes one slot.
const MAX_IN_FLIGHT: usize = RING_ENTRIES as usize - 1;
/// user_data of the eventfd read; request slots are 0..MAX_IN_FLIGHT.
const WAKE_TOKEN: u64 = u64::MAX;

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write { dsync: bool },
    DataSync,
}

struct Request {
    op: Op,
    /// Caller's buffer. Valid until the caller is unparked with `done`: the
    /// caller blocks in `submit` for exactly that long.
    ptr: usize,
    len: u32,
    offset: u64,
    waiter: Arc<Waiter>,
}

/// One per calling thread, reused for every request that thread makes.
struct Waiter {
    done: AtomicBool,
    result: AtomicI32,
    thread: Thread,
}

thread_local! {
    static WAITER: Arc<Waiter> = Arc::new(Waiter {
        done: AtomicBool::new(false),
        result: AtomicI32::new(0),
        thread: thread::current(),
    });
}

struct Shared {
    sleeping: AtomicBool,
    wake: EventFd,
}

pub struct UringEngine {
    tx: Option<Sender<Request>>,
    shared: Arc<Shared>,
    ring_thread: Option<JoinHandle<()>>,
}

impl UringEngine {
    /// Set up the ring; fails when the kernel has no (or a disabled) io_uring,
    /// in which case the caller can fall back to the sync engine.
    pub fn new(file: File) -> io::Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?;
        let shared = Arc::new(Shared {
            sleeping: AtomicBool::new(false),
            wake,
        });
        let (tx, rx) = bounded(RING_ENTRIES as usize * 2);
        let thread_shared = shared.clone();
        let ring_thread = thread::Builder::new()
            .name("umbra-uring".into())
            .spawn(move || ring_loop(ring, file, rx, thread_shared))?;
        Ok(UringEngine {
            tx: Some(tx),
            shared,
            ring_thread: Some(ring_thread),
        })
    }

    /// Submit one request and block until it completes; returns the CQE
    /// result (bytes transferred, or a negative errno).
    fn submit(&self, op: Op, ptr: usize, len: u32, offset: u64) -> io::Result<usize> {
        WAITER.with(|waiter| {
            waiter.done.store(false, Ordering::Relaxed);
            let req = Request {
                op,
                ptr,
                len,
                offset,
                waiter: waiter.clone(),
            };
            self.tx
                .as_ref()
                .expect("engine used after drop")
                .send(req)
                .map_err(|_| io::Error::other("io_uring ring thread has exited"))?;
            if self.shared.sleeping.swap(false, Ordering::SeqCst) {
                self.shared.wake.write(1)?;
            }
            while !waiter.done.load(Ordering::Acquire) {
                thread::park();
            }
            let res = waiter.result.load(Ordering::Relaxed);
            if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as usize)
            }
        })
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let chunk = &mut buf[done..];
            let len = chunk.len().min(u32::MAX as usize & !4095) as u32;
            let n = self.submit(
                Op::Read,
                chunk.as_mut_ptr() as usize,
                len,
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let chunk = &buf[done..];
            let len = chunk.len().min(u32::MAX as usize & !4095) as u32;
            let n = self.submit(
                Op::Write { dsync: fua },
                chunk.as_ptr() as usize,
                len,
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n;
        }
        Ok(())
    }

    pub fn sync_data(&self) -> io::Result<()> {
        self.submit(Op::DataSync, 0, 0, 0).map(|_| ())
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // Disconnect the channel, then wake the ring thread so it notices.
        self.tx = None;
        let _ = self.shared.wake.write(1);
        if let Some(t) = self.ring_thread.take() {
            let _ = t.join();
        }
    }
}

fn ring_loop(mut ring: IoUring, file: File, rx: Receiver<Request>, shared: Arc<Shared>) {
    let fd = types::Fd(file.as_raw_fd());
    let wake_fd = types::Fd(shared.wake.as_fd().as_raw_fd());
    // Leaked on purpose: a cancelled-at-teardown read may still name it, and
    // eight bytes per backend lifetime is the price of never doubting that.
    let wake_buf: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let mut slots: Vec<Option<Arc<Waiter>>> = (0..MAX_IN_FLIGHT).map(|_| None).collect();
    let mut free: Vec<usize> = (0..MAX_IN_FLIGHT).rev().collect();
    let mut disconnected = false;

    let wake_sqe = opcode::Read::new(wake_fd, wake_buf.as_mut_ptr(), 8)
        .build()
        .user_data(WAKE_TOKEN);
    // SAFETY: wake_buf is 'static (leaked above), so the kernel may write to
    // it whenever this read completes.
    unsafe { ring.submission().push(&wake_sqe) }.expect("fresh ring has room");

    loop {
        // 1. Move every queued request into the submission queue.
        while !free.is_empty() {
            match rx.try_recv() {
                Ok(req) => {
                    let slot = free.pop().expect("checked non-empty");
                    let sqe = match req.op {
                        Op::Read => opcode::Read::new(fd, req.ptr as *mut u8, req.len)
                            .offset(req.offset)
                            .build(),
                        Op::Write { dsync } => {
                            opcode::Write::new(fd, req.ptr as *const u8, req.len)
                                .offset(req.offset)
                                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                                .build()
                        }
                        Op::DataSync => opcode::Fsync::new(fd)
                            .flags(types::FsyncFlags::DATASYNC)
                            .build(),
                    }
                    .user_data(slot as u64);
                    slots[slot] = Some(req.waiter);
                    // SAFETY: the buffer at req.ptr stays valid and unaliased
                    // until we set `done` for this slot: its owner is parked
                    // in `submit` until then. The SQ has RING_ENTRIES slots and
                    // at most MAX_IN_FLIGHT + 1 entries are ever outstanding.
                    unsafe { ring.submission().push(&sqe) }.expect("bounded by MAX_IN_FLIGHT");
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        let in_flight = MAX_IN_FLIGHT - free.len();
        if disconnected && in_flight == 0 {
            return;
        }

        // 2. Announce sleep, re-check the channel (see the module docs), then
        //    submit and wait for at least one completion.
        shared.sleeping.store(true, Ordering::SeqCst);
        if !rx.is_empty() && !free.is_empty() {
            shared.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = ring.submit() {
                log::error!("io_uring submit failed: {e}");
            }
            continue;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => log::error!("io_uring submit_and_wait failed: {e}"),
        }
        shared.sleeping.store(false, Ordering::SeqCst);

        // 3. Complete what finished.
        let mut rearm_wake = false;
        for cqe in ring.completion() {
            if cqe.user_data() == WAKE_TOKEN {
                rearm_wake = true;
                continue;
            }
            let slot = cqe.user_data() as usize;
            let waiter = slots[slot].take().expect("completion for a live slot");
            free.push(slot);
            waiter.result.store(cqe.result(), Ordering::Relaxed);
            waiter.done.store(true, Ordering::Release);
            waiter.thread.unpark();
        }
        if rearm_wake && !disconnected {
            let sqe = opcode::Read::new(wake_fd, wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE_TOKEN);
            // SAFETY: wake_buf is 'static; the previous wake read completed,
            // so the SQ has room for this one.
            unsafe { ring.submission().push(&sqe) }.expect("slot of the completed wake read");
        }
    }
}
