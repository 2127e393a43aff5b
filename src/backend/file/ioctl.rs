//! Block-device ioctls for discard and write-zeroes on raw devices
//! (regular files use fallocate instead), and FICLONERANGE for sharing
//! extents between regular files. The only unsafe in the backend apart
//! from the io_uring engine.

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

/// `struct file_clone_range` of <linux/fs.h>.
#[repr(C)]
pub struct FileCloneRange {
    pub src_fd: i64,
    pub src_offset: u64,
    pub src_length: u64,
    pub dest_offset: u64,
}

// FICLONERANGE = _IOW(0x94, 13, struct file_clone_range).
nix::ioctl_write_ptr!(ficlonerange, 0x94, 13, FileCloneRange);

/// Share `src`'s extents of `[offset, offset + len)` into `dst` at the
/// same offsets (reflink). Fails with EOPNOTSUPP where the filesystem
/// cannot, EXDEV across filesystems, EINVAL when unaligned.
pub fn clone_range(dst: &File, src: &File, offset: u64, len: u64) -> io::Result<()> {
    let arg = FileCloneRange {
        src_fd: src.as_raw_fd() as i64,
        src_offset: offset,
        src_length: len,
        dest_offset: offset,
    };
    // SAFETY: both fds are open for the life of their `File`s, and the
    // kernel reads exactly one `file_clone_range` from `arg`, which
    // outlives the call.
    unsafe { ficlonerange(dst.as_raw_fd(), &arg) }?;
    Ok(())
}
