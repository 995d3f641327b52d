//! The FUSE side: a passthrough over a backing directory whose file data goes through [`crate::cache::Dirty`].
//! Names, directories, permissions, renames and unlinks go straight to the backing directory (they survive a
//! clear-cache: see the crate doc for what is and is not modelled). Inode numbers are the layer's own, one per path.

use crate::cache::Dirty;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Entries and attributes are never cached by the kernel: after a clear-cache, sizes must come from the layer.
const TTL: Duration = Duration::ZERO;

/// What a clear-cache dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Files that had unsynced data.
    pub files: u64,
    /// Unsynced bytes (whole cached pages).
    pub bytes: u64,
}

/// The layer's state, shared by the FUSE threads and the control handle.
#[derive(Debug, Default)]
pub(crate) struct Inner {
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    pub(crate) dirty: HashMap<u64, Dirty>,
    handles: HashMap<u64, (u64, Arc<File>)>,
    next_fh: u64,
}

impl Inner {
    pub(crate) fn new() -> Inner {
        let mut s = Inner {
            next_ino: 2,
            next_fh: 1,
            ..Inner::default()
        };
        s.paths.insert(1, PathBuf::new());
        s.inos.insert(PathBuf::new(), 1);
        s
    }

    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.paths.insert(ino, rel.to_path_buf());
        self.inos.insert(rel.to_path_buf(), ino);
        ino
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.inos.remove(rel) {
            self.paths.remove(&ino);
            if !self.handles.values().any(|(i, _)| *i == ino) {
                self.dirty.remove(&ino);
            }
        }
    }

    /// `from` (and everything under it) is now called `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        self.forget_path(to);
        let moved: Vec<(PathBuf, u64)> = self
            .inos
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (p, ino) in moved {
            let rest = p.strip_prefix(from).expect("filtered on the prefix");
            let np = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            self.inos.remove(&p);
            self.inos.insert(np.clone(), ino);
            self.paths.insert(ino, np);
        }
    }

    fn file_of(&self, fh: FileHandle) -> Result<(u64, Arc<File>), Errno> {
        self.handles.get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, (ino, Arc::new(file)));
        fh
    }

    /// Writes back the unsynced data of `ino` through `file` and syncs it.
    pub(crate) fn flush(&mut self, ino: u64, file: &File) -> io::Result<()> {
        if let Some(d) = self.dirty.remove(&ino) {
            if let Err(e) = d.flush(file) {
                self.dirty.insert(ino, d);
                return Err(e);
            }
        }
        Ok(())
    }

    /// `sync(2)` for the layer: every file's unsynced data written back.
    pub(crate) fn flush_all(&mut self, root: &Path) -> io::Result<()> {
        let inos: Vec<u64> = self.dirty.keys().copied().collect();
        for ino in inos {
            let open = self
                .handles
                .values()
                .find(|(i, _)| *i == ino)
                .map(|(_, f)| f.clone());
            let file = match (open, self.paths.get(&ino)) {
                (Some(f), _) => f,
                (None, Some(rel)) => Arc::new(File::options().write(true).open(root.join(rel))?),
                (None, None) => {
                    self.dirty.remove(&ino);
                    continue;
                }
            };
            self.flush(ino, &file)?;
        }
        Ok(())
    }

    /// Drops every unsynced write: the power cut.
    pub(crate) fn clear(&mut self) -> Dropped {
        let d = Dropped {
            files: self.dirty.len() as u64,
            bytes: self.dirty.values().map(Dirty::cached_bytes).sum(),
        };
        self.dirty.clear();
        d
    }
}

/// The filesystem handed to fuser.
pub(crate) struct LazyFs {
    pub(crate) root: PathBuf,
    pub(crate) inner: Arc<Mutex<Inner>>,
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
}

fn kind_of(md: &Metadata) -> FileType {
    FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile)
}

impl LazyFs {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attr(&self, s: &Inner, ino: u64, md: &Metadata) -> FileAttr {
        let size = s.dirty.get(&ino).map_or(md.len(), Dirty::size);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: md.blocks().max(size.div_ceil(512)),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: time(md.ctime(), md.ctime_nsec()),
            kind: kind_of(md),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    fn rel(&self, s: &Inner, ino: INodeNo) -> Result<PathBuf, Errno> {
        s.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, s: &Inner, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(s, parent)?.join(name))
    }

    /// The entry for `rel` (which exists), chowned to the caller when it was just created.
    fn entry(&self, s: &mut Inner, rel: &Path, owner: Option<&Request>) -> Result<FileAttr, Errno> {
        let abs = self.root.join(rel);
        if let Some(req) = owner {
            std::os::unix::fs::lchown(&abs, Some(req.uid()), Some(req.gid())).map_err(errno)?;
        }
        let md = std::fs::symlink_metadata(&abs).map_err(errno)?;
        let ino = s.ino_for(rel);
        Ok(self.attr(s, ino, &md))
    }

    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        size: Option<u64>,
        times: (Option<TimeOrNow>, Option<TimeOrNow>),
    ) -> Result<FileAttr, Errno> {
        let mut s = self.lock();
        let abs = self.root.join(self.rel(&s, ino)?);
        if let Some(m) = mode {
            std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(m & 0o7777))
                .map_err(errno)?;
        }
        if owner.0.is_some() || owner.1.is_some() {
            std::os::unix::fs::lchown(&abs, owner.0, owner.1).map_err(errno)?;
        }
        if let Some(n) = size {
            let len = std::fs::metadata(&abs).map_err(errno)?.len();
            s.dirty
                .entry(ino.0)
                .or_insert_with(|| Dirty::new(len))
                .truncate(n);
        }
        if times.0.is_some() || times.1.is_some() {
            let at = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let mut ft = std::fs::FileTimes::new();
            if let Some(t) = times.0 {
                ft = ft.set_accessed(at(t));
            }
            if let Some(t) = times.1 {
                ft = ft.set_modified(at(t));
            }
            File::open(&abs)
                .and_then(|f| f.set_times(ft))
                .map_err(errno)?;
        }
        let md = std::fs::symlink_metadata(&abs).map_err(errno)?;
        Ok(self.attr(&s, ino.0, &md))
    }

    fn do_open(&self, ino: INodeNo, flags: i32) -> Result<u64, Errno> {
        let mut s = self.lock();
        let abs = self.root.join(self.rel(&s, ino)?);
        let file = File::options()
            .read(true)
            .write(true)
            .open(&abs)
            .or_else(|_| File::open(&abs))
            .map_err(errno)?;
        if flags & libc::O_TRUNC != 0 {
            let len = file.metadata().map_err(errno)?.len();
            s.dirty
                .entry(ino.0)
                .or_insert_with(|| Dirty::new(len))
                .truncate(0);
        }
        Ok(s.add_handle(ino.0, file))
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let mut s = self.lock();
        let rel = self.child(&s, parent, name)?;
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(flags & libc::O_EXCL)
            .mode(mode & 0o7777)
            .open(self.root.join(&rel))
            .map_err(errno)?;
        let attr = self.entry(&mut s, &rel, Some(req))?;
        if flags & libc::O_TRUNC != 0 {
            let len = file.metadata().map_err(errno)?.len();
            s.dirty
                .entry(attr.ino.0)
                .or_insert_with(|| Dirty::new(len))
                .truncate(0);
        }
        let fh = s.add_handle(attr.ino.0, file);
        let md = std::fs::symlink_metadata(self.root.join(&rel)).map_err(errno)?;
        Ok((self.attr(&s, attr.ino.0, &md), fh))
    }

    fn do_read(&self, ino: INodeNo, fh: FileHandle, off: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let s = self.lock();
        let (_, file) = s.file_of(fh)?;
        if let Some(d) = s.dirty.get(&ino.0) {
            return d.read(&file, off, u64::from(size)).map_err(errno);
        }
        let len = file.metadata().map_err(errno)?.len();
        Dirty::new(len)
            .read(&file, off, u64::from(size))
            .map_err(errno)
    }

    fn do_write(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        off: u64,
        data: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        let mut s = self.lock();
        let (_, file) = s.file_of(fh)?;
        let d = match s.dirty.entry(ino.0) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Dirty::new(file.metadata().map_err(errno)?.len()))
            }
        };
        d.write(&file, off, data).map_err(errno)?;
        if flags & (libc::O_SYNC | libc::O_DSYNC) != 0 {
            s.flush(ino.0, &file).map_err(errno)?;
        }
        Ok(())
    }

    fn do_readdir(&self, ino: INodeNo) -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
        let mut s = self.lock();
        let rel = self.rel(&s, ino)?;
        let mut out = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        for e in std::fs::read_dir(self.root.join(&rel)).map_err(errno)? {
            let e = e.map_err(errno)?;
            let kind = e
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            let child = s.ino_for(&rel.join(e.file_name()));
            out.push((child, kind, e.file_name()));
        }
        Ok(out)
    }
}

fn reply_entry(r: Result<FileAttr, Errno>, reply: ReplyEntry) {
    match r {
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

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        let r = self
            .child(&s, parent, name)
            .and_then(|rel| self.entry(&mut s, &rel, None));
        reply_entry(r, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.lock();
        let r = self.rel(&s, ino).and_then(|rel| {
            let md = std::fs::symlink_metadata(self.root.join(rel)).map_err(errno)?;
            Ok(self.attr(&s, ino.0, &md))
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
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
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, (uid, gid), size, (atime, mtime)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let s = self.lock();
        let r = self
            .rel(&s, ino)
            .and_then(|rel| std::fs::read_link(self.root.join(rel)).map_err(errno));
        match r {
            Ok(t) => reply.data(t.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
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
        let mut s = self.lock();
        let r = self.child(&s, parent, name).and_then(|rel| {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(self.root.join(&rel))
                .map_err(errno)?;
            self.entry(&mut s, &rel, Some(req))
        });
        reply_entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = self.child(&s, parent, name).and_then(|rel| {
            std::fs::remove_file(self.root.join(&rel)).map_err(errno)?;
            s.forget_path(&rel);
            Ok(())
        });
        reply_empty(r, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let r = self.child(&s, parent, name).and_then(|rel| {
            std::fs::remove_dir(self.root.join(&rel)).map_err(errno)?;
            s.forget_path(&rel);
            Ok(())
        });
        reply_empty(r, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let r = self.child(&s, parent, link_name).and_then(|rel| {
            std::os::unix::fs::symlink(target, self.root.join(&rel)).map_err(errno)?;
            self.entry(&mut s, &rel, Some(req))
        });
        reply_entry(r, reply);
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
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let mut s = self.lock();
        let r = self.child(&s, parent, name).and_then(|from| {
            let to = self.child(&s, newparent, newname)?;
            std::fs::rename(self.root.join(&from), self.root.join(&to)).map_err(errno)?;
            s.moved(&from, &to);
            Ok(())
        });
        reply_empty(r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let r = self.rel(&s, ino).and_then(|from| {
            let to = self.child(&s, newparent, newname)?;
            std::fs::hard_link(self.root.join(from), self.root.join(&to)).map_err(errno)?;
            self.entry(&mut s, &to, None)
        });
        reply_entry(r, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino, fh, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(ino, fh, offset, data, flags.0) {
            Ok(()) => reply.written(data.len() as u32),
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
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let r = s.file_of(fh).and_then(|(_, file)| {
            s.flush(ino.0, &file).map_err(errno)?;
            file.sync_all().map_err(errno)
        });
        reply_empty(r, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.do_readdir(ino) {
            Ok(list) => {
                for (i, (child, kind, name)) in list.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory operations are applied to the backing directory at once: nothing is pending.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(v) => reply.statfs(
                v.blocks(),
                v.blocks_free(),
                v.blocks_available(),
                v.files(),
                v.files_free(),
                v.block_size() as u32,
                v.name_max() as u32,
                v.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // No extended attributes (the kernel stops asking after ENOSYS); fuser's default would log each call.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(req, parent, name, mode & !umask, flags) {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }
}
