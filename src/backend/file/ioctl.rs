//! Block-device ioctls for discard and write-zeroes on raw devices
//! (regular files use fallocate instead). The only unsafe in the backend
//! apart from the io_uring engine.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

// BLKDISCARD = _IO(0x12, 119) and BLKZEROOUT = _IO(0x12, 127) from
// <linux/fs.h>; both take a pointer to `uint64_t range[2] = {start, len}`.
nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

pub fn discard(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: the fd is open for the life of `file`, and the kernel reads
    // exactly two u64 from `range`, which outlives the call.
    unsafe { blkdiscard(file.as_raw_fd(), &range) }?;
    Ok(())
}

pub fn zero_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: as in `discard`.
    unsafe { blkzeroout(file.as_raw_fd(), &range) }?;
    Ok(())
}
