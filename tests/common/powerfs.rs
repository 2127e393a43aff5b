//! powerfs: an in-memory FUSE filesystem whose power can be cut.
//!
//! The power-loss tests put the daemon's data dir on it. Every file keeps
//! two images: what reads see now (`live`), and what a power failure would
//! leave (`durable`). Writes, hole punches and zeroings change `live` and are
//! queued as pending; `fsync`/`fdatasync` of the file applies its queue to
//! `durable`, and so does a synchronous write (O_SYNC, O_DSYNC, RWF_DSYNC):
//! with `FOPEN_DIRECT_IO` the kernel sends no fsync after one, it sets
//! `O_DSYNC` in the write's flags and leaves it to us. [`PowerFs::cut`] is
//! the power failure: it
//! unmounts (the daemon must be dead by then, `kill -9`), then per file either
//! drops every pending operation or keeps a random subset of them, each kept
//! write whole or torn at 512-byte sectors (a disk's unit of atomicity), and
//! mounts the result again, with every kernel cache gone.
//!
//! Namespace operations (create, mkdir, mknod, unlink, rename, truncate, a
//! fallocate that grows the file) are durable at once, as on a journaling
//! filesystem that commits metadata in order. That is stricter than ext4
//! for the classic mistake (a rename made durable before the renamed file's
//! data was synced keeps the name and loses the data) and more lenient for
//! directory fsyncs, which are not needed here. A truncate syncs the file's
//! pending data first (ours happen only at create and resize).
//!
//! Files are opened `FOPEN_DIRECT_IO`, so the kernel keeps no page cache in
//! front of them and `O_DIRECT` opens work.

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation,
    INodeNo, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const PAGE: u64 = 4096;
const SECTOR: u64 = 512;
const TTL: Duration = Duration::ZERO;

/// Sparse file contents: 4 KiB pages, absent pages read as zeroes.
#[derive(Clone, Default)]
struct Pages(BTreeMap<u64, Box<[u8]>>);

impl Pages {
    fn write(&mut self, off: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let pos = off + done as u64;
            let (page, at) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - at).min(data.len() - done);
            let p = self
                .0
                .entry(page)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            p[at..at + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    fn zero(&mut self, off: u64, len: u64) {
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let (page, at) = (pos / PAGE, pos % PAGE);
            let n = (PAGE - at).min(end - pos);
            if n == PAGE {
                self.0.remove(&page);
            } else if let Some(p) = self.0.get_mut(&page) {
                p[at as usize..(at + n) as usize].fill(0);
            }
            pos += n;
        }
    }

    fn read(&self, off: u64, buf: &mut [u8]) {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let (page, at) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - at).min(buf.len() - done);
            match self.0.get(&page) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[at..at + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
    }

    fn truncate(&mut self, size: u64) {
        let keep = size.div_ceil(PAGE);
        self.0.retain(|&p, _| p < keep);
        if size % PAGE != 0 {
            if let Some(p) = self.0.get_mut(&(size / PAGE)) {
                p[(size % PAGE) as usize..].fill(0);
            }
        }
    }
}

/// A data operation not yet made durable.
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
}

#[derive(Default)]
struct FileData {
    live: Pages,
    size: u64,
    durable: Pages,
    durable_size: u64,
    pending: Vec<Op>,
}

impl FileData {
    fn sync(&mut self) {
        for op in self.pending.drain(..) {
            match op {
                Op::Write(off, data) => self.durable.write(off, &data),
                Op::Zero(off, len) => self.durable.zero(off, len),
            }
        }
        self.durable_size = self.size;
    }

    /// The power fails: keep nothing of the pending operations, or a random
    /// subset (each kept write whole or torn at sectors). Returns the pending
    /// bytes dropped.
    fn cut(&mut self, rng: &mut StdRng, keep_some: bool) -> u64 {
        let mut lost = 0;
        for op in self.pending.drain(..) {
            let keep = keep_some && rng.gen_bool(0.5);
            match op {
                Op::Write(off, data) if keep && rng.gen_bool(0.25) => {
                    // Torn: each sector the write touches lands or not.
                    let end = off + data.len() as u64;
                    let mut pos = off;
                    while pos < end {
                        let next = ((pos / SECTOR + 1) * SECTOR).min(end);
                        let piece = &data[(pos - off) as usize..(next - off) as usize];
                        if rng.gen_bool(0.5) {
                            self.durable.write(pos, piece);
                            self.durable_size = self.durable_size.max(next);
                        } else {
                            lost += piece.len() as u64;
                        }
                        pos = next;
                    }
                }
                Op::Write(off, data) if keep => {
                    self.durable.write(off, &data);
                    self.durable_size = self.durable_size.max(off + data.len() as u64);
                }
                Op::Write(_, data) => lost += data.len() as u64,
                Op::Zero(off, len) if keep => self.durable.zero(off, len),
                Op::Zero(_, len) => lost += len,
            }
        }
        self.live = self.durable.clone();
        self.size = self.durable_size;
        lost
    }

    fn pending_bytes(&self) -> u64 {
        self.pending
            .iter()
            .map(|op| match op {
                Op::Write(_, d) => d.len() as u64,
                Op::Zero(_, l) => *l,
            })
            .sum()
    }
}

enum Node {
    Dir(BTreeMap<OsString, u64>),
    File(FileData),
    Special(FileType, u32),
}

struct Inode {
    node: Node,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    open: u32,
    mtime: SystemTime,
}

struct State {
    inodes: HashMap<u64, Inode>,
    next: u64,
}

impl State {
    fn new() -> State {
        let root = Inode {
            node: Node::Dir(BTreeMap::new()),
            perm: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            open: 0,
            mtime: SystemTime::now(),
        };
        State {
            inodes: HashMap::from([(1, root)]),
            next: 2,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let i = self.inodes.get(&ino)?;
        let (kind, size, blocks, rdev) = match &i.node {
            Node::Dir(e) => (FileType::Directory, e.len() as u64, 0, 0),
            Node::File(f) => (
                FileType::RegularFile,
                f.size,
                f.live.0.len() as u64 * (PAGE / 512),
                0,
            ),
            Node::Special(k, rdev) => (*k, 0, 0, *rdev),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: i.mtime,
            mtime: i.mtime,
            ctime: i.mtime,
            crtime: i.mtime,
            kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn dir(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.node) {
            Some(Node::Dir(e)) => Ok(e),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.node) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(Errno::EISDIR),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    fn add(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        node: Node,
        mode: u32,
    ) -> Result<u64, Errno> {
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        let is_dir = matches!(node, Node::Dir(_));
        self.inodes.insert(
            ino,
            Inode {
                node,
                perm: (mode & 0o7777) as u16,
                uid: req.uid(),
                gid: req.gid(),
                nlink: if is_dir { 2 } else { 1 },
                open: 0,
                mtime: SystemTime::now(),
            },
        );
        self.dir(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Drop one link to `ino`; the inode goes when nothing links or opens it.
    fn unlink_ino(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.nlink = i
                .nlink
                .saturating_sub(if matches!(i.node, Node::Dir(_)) { 2 } else { 1 });
            if i.nlink == 0 && i.open == 0 {
                self.inodes.remove(&ino);
            }
        }
    }

    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        match (&self.inodes[&ino].node, want_dir) {
            (Node::Dir(e), true) if !e.is_empty() => return Err(Errno::ENOTEMPTY),
            (Node::Dir(_), false) => return Err(Errno::EISDIR),
            (Node::Dir(_), true) => {}
            (_, true) => return Err(Errno::ENOTDIR),
            (_, false) => {}
        }
        self.dir(parent)?.remove(name);
        self.unlink_ino(ino);
        Ok(())
    }
}

/// The FUSE side: every request takes the one lock (tests, not speed).
struct Fs(Arc<Mutex<State>>);

fn reply_entry(s: &State, ino: Result<u64, Errno>, reply: ReplyEntry) {
    match ino.and_then(|i| s.attr(i).ok_or(Errno::ENOENT)) {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(r: Result<(), Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl fuser::Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.0.lock();
        let ino = s
            .dir(parent.0)
            .and_then(|d| d.get(name).copied().ok_or(Errno::ENOENT));
        reply_entry(&s, ino, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.lock().attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.0.lock();
        if let Some(size) = size {
            match s.file(ino.0) {
                Ok(f) => {
                    f.sync();
                    f.live.truncate(size);
                    f.durable.truncate(size);
                    f.size = size;
                    f.durable_size = size;
                }
                Err(e) => return reply.error(e),
            }
        }
        let Some(i) = s.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(m) = mode {
            i.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            i.uid = u;
        }
        if let Some(g) = gid {
            i.gid = g;
        }
        i.mtime = SystemTime::now();
        let a = s.attr(ino.0).unwrap();
        reply.attr(&TTL, &a);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFSOCK => Some(FileType::Socket),
            libc::S_IFIFO => Some(FileType::NamedPipe),
            _ => return reply.error(Errno::EPERM),
        };
        let node = match kind {
            None => Node::File(FileData::default()),
            Some(k) => Node::Special(k, rdev),
        };
        let mut s = self.0.lock();
        let ino = s.add(req, parent.0, name, node, mode & !umask);
        reply_entry(&s, ino, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.0.lock();
        let ino = s.add(
            req,
            parent.0,
            name,
            Node::Dir(BTreeMap::new()),
            mode & !umask,
        );
        reply_entry(&s, ino, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.0.lock().remove(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.0.lock().remove(parent.0, name, true), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.0.lock();
        let r = (|| {
            let ino = *s.dir(parent.0)?.get(name).ok_or(Errno::ENOENT)?;
            if let Some(&old) = s.dir(newparent.0)?.get(newname) {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                if old != ino {
                    if let Node::Dir(e) = &s.inodes[&old].node {
                        if !e.is_empty() {
                            return Err(Errno::ENOTEMPTY);
                        }
                    }
                    s.unlink_ino(old);
                }
            } else if !flags.is_empty() && !flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EINVAL);
            }
            s.dir(parent.0)?.remove(name);
            s.dir(newparent.0)?.insert(newname.to_owned(), ino);
            Ok(())
        })();
        reply_empty(r, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.0.lock();
        match s.inodes.get_mut(&ino.0) {
            Some(i) => {
                i.open += 1;
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.0.lock();
        match s.add(
            req,
            parent.0,
            name,
            Node::File(FileData::default()),
            mode & !umask,
        ) {
            Ok(ino) => {
                s.inodes.get_mut(&ino).unwrap().open += 1;
                let a = s.attr(ino).unwrap();
                reply.created(
                    &TTL,
                    &a,
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::FOPEN_DIRECT_IO,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.0.lock();
        match s.file(ino.0) {
            Ok(f) => {
                let n = f.size.saturating_sub(offset).min(size as u64) as usize;
                let mut buf = vec![0u8; n];
                f.live.read(offset, &mut buf);
                reply.data(&buf);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.0.lock();
        match s.file(ino.0) {
            Ok(f) => {
                f.live.write(offset, data);
                f.size = f.size.max(offset + data.len() as u64);
                f.pending.push(Op::Write(offset, data.to_vec()));
                // O_SYNC includes O_DSYNC's bit; either makes it durable
                // before we answer, the rest of the file's queue with it
                // (as a journaling filesystem's fdatasync would).
                if flags.0 & libc::O_DSYNC != 0 {
                    f.sync();
                }
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.0.lock();
        if let Some(i) = s.inodes.get_mut(&ino.0) {
            i.open = i.open.saturating_sub(1);
            if i.open == 0 && i.nlink == 0 {
                s.inodes.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.0.lock().file(ino.0).map(|f| f.sync()), reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.0.lock();
        let entries: Vec<(u64, OsString)> = match s.dir(ino.0) {
            Ok(d) => d.iter().map(|(n, &i)| (i, n.clone())).collect(),
            Err(e) => return reply.error(e),
        };
        let all = [(ino.0, OsString::from(".")), (ino.0, OsString::from(".."))]
            .into_iter()
            .chain(entries);
        for (k, (i, name)) in all.enumerate().skip(offset as usize) {
            let kind = s.attr(i).map(|a| a.kind).unwrap_or(FileType::RegularFile);
            if reply.add(INodeNo(i), k as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace operations are durable at once.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = 1 << 24; // 64 GiB of 4 KiB blocks: plenty, and honest enough
        reply.statfs(
            blocks,
            blocks,
            blocks,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.0.lock();
        let f = match s.file(ino.0) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        if mode
            & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE)
            != 0
            || (mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep_size)
        {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let end = offset + length;
        if zero {
            let to = if keep_size { end.min(f.size) } else { end };
            if to > offset {
                f.live.zero(offset, to - offset);
                f.pending.push(Op::Zero(offset, to - offset));
            }
        }
        if !keep_size && end > f.size {
            // Growing the file is metadata: durable at once, reads as zeroes.
            f.size = end;
            f.durable_size = f.durable_size.max(end);
        }
        reply.ok();
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let mut s = self.0.lock();
        let f = match s.file(ino.0) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let off = offset.max(0) as u64;
        if off >= f.size {
            return reply.error(Errno::ENXIO);
        }
        let page = off / PAGE;
        let r = match whence {
            libc::SEEK_DATA => match f.live.0.range(page..).next() {
                Some((&p, _)) if p * PAGE < f.size => Ok((p * PAGE).max(off)),
                _ => Err(Errno::ENXIO),
            },
            libc::SEEK_HOLE => {
                let mut p = page;
                while f.live.0.contains_key(&p) {
                    p += 1;
                }
                Ok((p * PAGE).max(off).min(f.size))
            }
            _ => Err(Errno::EINVAL),
        };
        match r {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(e),
        }
    }
}

/// What a power cut did.
#[derive(Debug, Default)]
pub struct Cut {
    pub files: usize,
    pub pending_bytes: u64,
    pub lost_bytes: u64,
}

/// A mounted powerfs (root only). Dropping it unmounts.
pub struct PowerFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl PowerFs {
    pub fn mount() -> PowerFs {
        super::require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut fs = PowerFs {
            state: Arc::new(Mutex::new(State::new())),
            session: None,
            mnt,
            _dir: dir,
        };
        fs.attach();
        fs
    }

    fn attach(&mut self) {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("umbra-powerfs".into()),
            MountOption::Subtype("powerfs".into()),
        ];
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(Fs(self.state.clone()), &self.mnt, &config)
            .unwrap_or_else(|e| panic!("mount powerfs on {}: {e}", self.mnt.display()));
        self.session = Some(session);
    }

    fn detach(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // The kernel answers a close before our reply to its RELEASE, and
        // holds the mount until then: busy for a moment after the last
        // close (or the daemon's death). Busy for longer means a process
        // still uses the filesystem.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match nix::mount::umount(&self.mnt) {
                Ok(()) => break,
                Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!(
                    "unmount powerfs {}: {e} (is a process still using it?)",
                    self.mnt.display()
                ),
            }
        }
        // Its thread ends once the device reports the unmount (ENODEV, or
        // ECONNABORTED when the kernel aborted the connection first); the
        // session's own unmount (on drop, before we mount again) then finds
        // nothing.
        match session.join() {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ECONNABORTED)) => {}
            Err(e) => panic!("powerfs session ended with {e} after the unmount"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Bytes written (or zeroed) since their file's last fsync, all files.
    pub fn pending_bytes(&self) -> u64 {
        let s = self.state.lock();
        s.inodes
            .values()
            .map(|i| match &i.node {
                Node::File(f) => f.pending_bytes(),
                _ => 0,
            })
            .sum()
    }

    /// Cut the power: unmount (every process using the filesystem must be
    /// dead), keep nothing or (with `keep_some`) a random subset of every
    /// file's pending operations, seeded by `seed`, and mount again.
    pub fn cut(&mut self, seed: u64, keep_some: bool) -> Cut {
        self.detach();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cut = Cut::default();
        {
            let mut s = self.state.lock();
            s.inodes.retain(|_, i| i.nlink > 0);
            for i in s.inodes.values_mut() {
                i.open = 0;
                if let Node::File(f) = &mut i.node {
                    cut.files += 1;
                    cut.pending_bytes += f.pending_bytes();
                    cut.lost_bytes += f.cut(&mut rng, keep_some);
                }
            }
        }
        self.attach();
        cut
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Do not panic again; leave a busy mount lazily detached.
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
            if let Some(s) = self.session.take() {
                let _ = s.umount_and_join();
            }
        } else {
            self.detach();
        }
    }
}
