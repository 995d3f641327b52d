//! `lazyfs`: a LazyFS-style FUSE layer (after dsrhaslab/lazyfs) for crash tests. It passes every operation through
//! to a backing directory, except file data: what a process writes stays in this layer's memory until that file is
//! fsynced (`fsync`/`fdatasync`, or a write on an `O_SYNC`/`O_DSYNC` descriptor); [`Mount::clear_cache`] drops
//! everything not synced, which is what a power cut does to a disk's page cache. Reads see the cached data, so the
//! processes above cannot tell until the cut.
//!
//! Modelled: file contents and sizes (writes, truncations, extensions) at 4 KiB page granularity, per file.
//! Not modelled (they are durable at once, as on a file system that journals metadata synchronously): file
//! creation, unlink, rename, mkdir/rmdir, permissions, ownership and times; `close` and `sync_file_range` do not
//! persist anything (LazyFS's default); hard links are separate files to the cache (a write through one name is
//! not seen through the other until fsync). The kernel is told to cache neither entries nor attributes, and each
//! open drops its page cache, so after a clear-cache a process that reopens a file reads what survived.
//!
//! Mounting needs `/dev/fuse` and root (fuser's pure-Rust mount calls mount(2) itself; no libfuse, no
//! fusermount3); the layer is mounted `allow_other` + `default_permissions`, so other users (the `postgres`
//! server user) can use it under the backing files' own permissions.

pub mod cache;
mod fs;

pub use fs::Dropped;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A mounted layer; unmounted on drop.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    inner: Arc<Mutex<fs::Inner>>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

/// Mounts a layer over `backing` (an existing directory) at `mountpoint` (an existing, empty directory).
pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Mount> {
    let inner = Arc::new(Mutex::new(fs::Inner::new()));
    let fs = fs::LazyFs {
        root: backing.to_path_buf(),
        inner: inner.clone(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("shredproof-lazyfs".into()),
        fuser::MountOption::Subtype("lazyfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    config.acl = fuser::SessionACL::All;
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    Ok(Mount {
        session: Some(session),
        inner,
        backing: backing.to_path_buf(),
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl Mount {
    fn lock(&self) -> std::sync::MutexGuard<'_, fs::Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every write not yet fsynced (LazyFS's `clear-cache`). Call it while no process uses the files
    /// (after killing them), as a power cut would find them.
    pub fn clear_cache(&self) -> Dropped {
        self.lock().clear()
    }

    /// Writes every file's unsynced data back and syncs it (`sync(2)` for this layer; LazyFS's `checkpoint`).
    pub fn sync(&self) -> io::Result<()> {
        self.lock().flush_all(&self.backing)
    }

    /// Unsynced bytes held now (whole pages) and the files they belong to.
    pub fn unsynced(&self) -> Dropped {
        let s = self.lock();
        Dropped {
            files: s.dirty.len() as u64,
            bytes: s.dirty.values().map(cache::Dirty::cached_bytes).sum(),
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Unmounts now (drop does the same, ignoring errors).
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}
