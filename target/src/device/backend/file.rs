//! A file or block-device backing store with `pread`/`pwrite`, hole punching for
//! unmap, `SEEK_DATA`/`SEEK_HOLE` for mapping status, and PI in a `<data>.pi` sidecar.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use t10pi::TUPLE_SIZE;

use super::{check_range, units, Backend, BackendError, LbaStatus, CHUNK_BYTES};

/// How to open a file backing store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOptions {
    /// Logical block size (512 or 4096; 1024 and 2048 also work).
    pub block_size: u32,
    /// Size in bytes: a regular file is created sparse or resized to it; `None`
    /// keeps the existing size (block devices always keep theirs).
    pub size: Option<u64>,
    /// Create the file when missing.
    pub create: bool,
    /// Keep PI tuples in the `<path>.pi` sidecar (created and formatted when missing).
    pub pi: bool,
    /// Open read-only (no resize, no writes).
    pub read_only: bool,
}

/// A LUN stored in a regular file or a block device.
#[derive(Debug)]
pub struct FileBackend {
    path: PathBuf,
    data: File,
    pi: Option<File>,
    block_size: u32,
    blocks: u64,
    block_device: bool,
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> BackendError {
    move |source| BackendError::Io { op, source }
}

/// The sidecar path holding the PI of `data_path`: `<data_path>.pi`.
pub fn pi_path(data_path: &Path) -> PathBuf {
    let mut s = data_path.as_os_str().to_owned();
    s.push(".pi");
    PathBuf::from(s)
}

impl FileBackend {
    /// Opens (and when asked creates and sizes) the data file and the PI sidecar.
    pub fn open(path: &Path, opts: &FileOptions) -> Result<Self, BackendError> {
        if !matches!(opts.block_size, 512 | 1024 | 2048 | 4096) {
            return Err(BackendError::Geometry(format!(
                "block size {}",
                opts.block_size
            )));
        }
        let data = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .create(opts.create && !opts.read_only)
            .truncate(false)
            .open(path)
            .map_err(io_err("open data file"))?;
        let meta = data.metadata().map_err(io_err("stat data file"))?;
        let block_device = meta.file_type().is_block_device();
        let len = if block_device {
            (&data)
                .seek(SeekFrom::End(0))
                .map_err(io_err("size block device"))?
        } else {
            match opts.size {
                Some(size) if size != meta.len() && !opts.read_only => {
                    data.set_len(size).map_err(io_err("resize data file"))?;
                    size
                }
                _ => meta.len(),
            }
        };
        let blocks = len / u64::from(opts.block_size);
        if blocks == 0 {
            return Err(BackendError::Geometry(format!(
                "{} is smaller than one block",
                path.display()
            )));
        }
        let pi = if opts.pi {
            let pp = pi_path(path);
            let f = OpenOptions::new()
                .read(true)
                .write(!opts.read_only)
                .create(!opts.read_only)
                .truncate(false)
                .open(&pp)
                .map_err(io_err("open PI sidecar"))?;
            let have = f.metadata().map_err(io_err("stat PI sidecar"))?.len();
            let need = blocks * TUPLE_SIZE as u64;
            if have < need && !opts.read_only {
                fill_ff(&f, have, need)?;
                f.sync_data().map_err(io_err("sync PI sidecar"))?;
            }
            Some(f)
        } else {
            None
        };
        Ok(FileBackend {
            path: path.to_owned(),
            data,
            pi,
            block_size: opts.block_size,
            blocks,
            block_device,
        })
    }

    /// Path of the data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn pi_file(&self) -> Result<&File, BackendError> {
        self.pi.as_ref().ok_or(BackendError::NoPi)
    }

    fn zero_range(&self, off: u64, len: u64) -> Result<(), BackendError> {
        let zeros = vec![0u8; CHUNK_BYTES.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.data
                .write_all_at(&zeros[..n], off + done)
                .map_err(io_err("zero data"))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Writes 0xFF over `[from, to)` of `f` in bounded chunks.
fn fill_ff(f: &File, from: u64, to: u64) -> Result<(), BackendError> {
    let ff = vec![0xFFu8; CHUNK_BYTES.min((to - from) as usize)];
    let mut off = from;
    while off < to {
        let n = (to - off).min(ff.len() as u64) as usize;
        f.write_all_at(&ff[..n], off).map_err(io_err("format PI"))?;
        off += n as u64;
    }
    Ok(())
}

impl Backend for FileBackend {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn has_pi(&self) -> bool {
        self.pi.is_some()
    }

    fn read(&self, lba: u64, data: &mut [u8]) -> Result<(), BackendError> {
        let n = units(data.len(), self.block_size as usize)?;
        check_range(lba, n, self.blocks)?;
        self.data
            .read_exact_at(data, lba * u64::from(self.block_size))
            .map_err(io_err("read data"))
    }

    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BackendError> {
        let n = units(data.len(), self.block_size as usize)?;
        check_range(lba, n, self.blocks)?;
        self.data
            .write_all_at(data, lba * u64::from(self.block_size))
            .map_err(io_err("write data"))?;
        if fua {
            self.data.sync_data().map_err(io_err("sync data"))?;
        }
        Ok(())
    }

    fn read_pi(&self, lba: u64, pi: &mut [u8]) -> Result<(), BackendError> {
        let n = units(pi.len(), TUPLE_SIZE)?;
        check_range(lba, n, self.blocks)?;
        self.pi_file()?
            .read_exact_at(pi, lba * TUPLE_SIZE as u64)
            .map_err(io_err("read PI"))
    }

    fn write_pi(&self, lba: u64, pi: &[u8], fua: bool) -> Result<(), BackendError> {
        let n = units(pi.len(), TUPLE_SIZE)?;
        check_range(lba, n, self.blocks)?;
        let f = self.pi_file()?;
        f.write_all_at(pi, lba * TUPLE_SIZE as u64)
            .map_err(io_err("write PI"))?;
        if fua {
            f.sync_data().map_err(io_err("sync PI"))?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), BackendError> {
        self.data.sync_data().map_err(io_err("sync data"))?;
        if let Some(f) = &self.pi {
            f.sync_data().map_err(io_err("sync PI"))?;
        }
        Ok(())
    }

    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError> {
        check_range(lba, blocks, self.blocks)?;
        if let Some(f) = &self.pi {
            fill_ff(
                f,
                lba * TUPLE_SIZE as u64,
                (lba + blocks) * TUPLE_SIZE as u64,
            )?;
        }
        let off = lba * u64::from(self.block_size);
        let len = blocks * u64::from(self.block_size);
        let (Ok(off_i), Ok(len_i)) = (libc::off_t::try_from(off), libc::off_t::try_from(len))
        else {
            return self.zero_range(off, len);
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by
        // `self.data` and stays open for the duration of the call.
        let rc = unsafe {
            libc::fallocate(
                self.data.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off_i,
                len_i,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => {
                self.zero_range(off, len)
            }
            _ => Err(BackendError::Io {
                op: "punch hole",
                source: e,
            }),
        }
    }

    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BackendError> {
        check_range(lba, 1, self.blocks)?;
        let bs = u64::from(self.block_size);
        let end = self.blocks * bs;
        let off = lba * bs;
        let all_mapped = LbaStatus {
            mapped: true,
            blocks: self.blocks - lba,
        };
        if self.block_device {
            return Ok(all_mapped);
        }
        let Ok(off_i) = libc::off_t::try_from(off) else {
            return Ok(all_mapped);
        };
        let fd = self.data.as_raw_fd();
        // SAFETY: lseek only reads its integer arguments on an fd owned by
        // `self.data`; it moves the file offset, which no other code uses (all I/O
        // is positional).
        let data_at = unsafe { libc::lseek(fd, off_i, libc::SEEK_DATA) };
        if data_at < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // No data at or after `off`: deallocated to the end.
                Some(libc::ENXIO) => Ok(LbaStatus {
                    mapped: false,
                    blocks: self.blocks - lba,
                }),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(all_mapped),
                _ => Err(BackendError::Io {
                    op: "seek data",
                    source: e,
                }),
            };
        }
        let data_at = (data_at as u64).min(end);
        if data_at > off {
            // A hole up to `data_at`; count only whole blocks inside the hole.
            let hole_blocks = (data_at / bs).saturating_sub(lba);
            if hole_blocks > 0 {
                return Ok(LbaStatus {
                    mapped: false,
                    blocks: hole_blocks,
                });
            }
        }
        // SAFETY: as above.
        let hole_at = unsafe { libc::lseek(fd, off_i, libc::SEEK_HOLE) };
        if hole_at < 0 {
            return Ok(all_mapped);
        }
        let hole_at = (hole_at as u64).min(end);
        let run = hole_at.div_ceil(bs).saturating_sub(lba).max(1);
        Ok(LbaStatus {
            mapped: true,
            blocks: run.min(self.blocks - lba),
        })
    }

    fn format_pi(&self) -> Result<(), BackendError> {
        let f = self.pi_file()?;
        fill_ff(f, 0, self.blocks * TUPLE_SIZE as u64)?;
        f.sync_data().map_err(io_err("sync PI"))
    }
}
