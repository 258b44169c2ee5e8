//! The FUSE export: a directory with one file per LUN (`lun<N>`, sized as the LUN),
//! whose reads and writes become SCSI READ/WRITE through [`SharedLun`] (so they carry
//! the LUN's protection policy), and whose fsync is SYNCHRONIZE CACHE. Files are opened
//! with direct I/O, so the page cache never hides the LUN; `losetup` on a file gives a
//! block device. Truncation and other attribute changes leave the file as it is.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request,
};
use tracing::warn;

use crate::block::SharedLun;

const ROOT: u64 = 1;
const TTL: Duration = Duration::from_secs(1);
const EIO: i32 = 5;
const ENOENT: i32 = 2;
const ENOSPC: i32 = 28;
const EINVAL: i32 = 22;

/// A directory of LUN files.
#[derive(Debug)]
pub struct LunFs {
    files: Vec<(String, Arc<SharedLun>)>,
    rt: tokio::runtime::Handle,
    uid: u32,
    gid: u32,
    start: SystemTime,
}

impl LunFs {
    /// Files named `name` for each LUN; I/O runs on `rt`.
    pub fn new(files: Vec<(String, Arc<SharedLun>)>, rt: tokio::runtime::Handle) -> Self {
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        LunFs {
            files,
            rt,
            uid,
            gid,
            start: SystemTime::now(),
        }
    }

    fn lun(&self, ino: u64) -> Option<&Arc<SharedLun>> {
        ino.checked_sub(2)
            .and_then(|i| self.files.get(i as usize))
            .map(|(_, l)| l)
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 2)
        } else {
            let l = self.lun(ino)?;
            (FileType::RegularFile, 0o600, l.info().size_bytes(), 1)
        };
        let blksize = self.lun(ino).map_or(4096, |l| l.info().block_size);
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.start,
            mtime: self.start,
            ctime: self.start,
            crtime: self.start,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize,
            flags: 0,
        })
    }
}

impl Filesystem for LunFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let found = (parent == ROOT)
            .then(|| self.files.iter().position(|(n, _)| OsStr::new(n) == name))
            .flatten()
            .and_then(|i| self.attr(i as u64 + 2));
        match found {
            Some(a) => reply.entry(&TTL, &a, 0),
            None => reply.error(ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        // A LUN has a fixed size; O_TRUNC and chmod leave it as it is.
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if self.lun(ino).is_some() {
            reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
        } else {
            reply.error(ENOENT);
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(lun) = self.lun(ino).cloned() else {
            return reply.error(ENOENT);
        };
        let total = lun.info().size_bytes();
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(EINVAL);
        };
        if off >= total {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(total - off) as u32;
        match self.rt.block_on(lun.read_bytes(off, len)) {
            Ok(d) => reply.data(&d),
            Err(e) => {
                warn!(ino, off, len, "FUSE read failed: {e}");
                reply.error(EIO)
            }
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _wflags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(lun) = self.lun(ino).cloned() else {
            return reply.error(ENOENT);
        };
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(EINVAL);
        };
        if off
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > lun.info().size_bytes())
        {
            return reply.error(ENOSPC);
        }
        match self.rt.block_on(lun.write_bytes(off, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                warn!(ino, off, len = data.len(), "FUSE write failed: {e}");
                reply.error(EIO)
            }
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(lun) = self.lun(ino).cloned() else {
            return reply.error(ENOENT);
        };
        match self.rt.block_on(lun.flush()) {
            Ok(()) => reply.ok(),
            Err(e) => {
                warn!(ino, "FUSE fsync failed: {e}");
                reply.error(EIO)
            }
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(ENOENT);
        }
        let mut entries = vec![
            (ROOT, FileType::Directory, ".".to_owned()),
            (ROOT, FileType::Directory, "..".to_owned()),
        ];
        entries.extend(
            self.files
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (i as u64 + 2, FileType::RegularFile, n.clone())),
        );
        for (i, (ino, kind, name)) in entries
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(0))
        {
            if reply.add(ino, i as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Mount `files` at `dir` (created if missing); unmounted when the session is dropped.
pub fn mount(
    dir: &Path,
    files: Vec<(String, Arc<SharedLun>)>,
    rt: tokio::runtime::Handle,
) -> std::io::Result<fuser::BackgroundSession> {
    std::fs::create_dir_all(dir)?;
    let opts = [
        MountOption::FSName("iser-initiator".into()),
        MountOption::Subtype("iser".into()),
        MountOption::RW,
        MountOption::DefaultPermissions,
    ];
    fuser::spawn_mount2(LunFs::new(files, rt), dir, &opts)
}
