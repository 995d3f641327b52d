//! A private PostgreSQL cluster whose data directory lives on the `lazyfs` layer (the `lose-unsynced` fault):
//! the server runs as usual (fsync on), and a power cut is SIGKILL of the postmaster and its backends, then the
//! layer's clear-cache (every write the server did not fsync is dropped), then a restart into crash recovery.
//!
//! Started on first use, next to the launcher's ordinary cluster, so other scenarios keep the plain file system.
//! The layer is a FUSE mount: it needs root and `/dev/fuse` (no libfuse, no fusermount3). The server is started
//! with `wal_writer_delay=10s` (the maximum) so an asynchronous commit (`synchronous_commit=off`, the planted
//! `no-sync` bug) is not flushed by the WAL writer before the cut; a synchronous commit flushes its own WAL and
//! is unaffected.

use super::DbError;
use fixtures::pg::{Flavor, PgCluster, PgError};
use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use tempfile::TempDir;

/// The cluster on the layer. Dropped in order: server stopped, layer unmounted, then the directories removed.
pub struct LazyPg {
    cluster: Option<PgCluster>,
    mount: Option<lazyfs::Mount>,
    /// The backing directory under the mount (where the data directory's durable state is).
    _backing: TempDir,
}

fn pg_err(what: &str) -> impl FnOnce(std::io::Error) -> PgError + '_ {
    move |source| PgError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Whether this process can mount the layer (root, `/dev/fuse`).
pub fn available() -> bool {
    nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists()
}

impl LazyPg {
    /// initdb and start a cluster on a fresh layer. initdb's own writes are synced (it runs with `--no-sync`;
    /// a cut must not take the cluster's skeleton with it).
    pub fn start() -> Result<LazyPg, DbError> {
        if !available() {
            return Err(DbError::Other(
                "lose-unsynced mounts a FUSE layer under the database: it needs root and /dev/fuse"
                    .into(),
            ));
        }
        let bin = PgCluster::bin_dir().ok_or(PgError::NoBinaries)?;
        let backing = tempfile::Builder::new()
            .prefix("shredproof-lazyfs-")
            .tempdir_in("/tmp")?;
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or(PgError::NoPostgresUser)?;
        std::os::unix::fs::chown(
            backing.path(),
            Some(user.uid.as_raw()),
            Some(user.gid.as_raw()),
        )?;
        std::fs::set_permissions(backing.path(), std::fs::Permissions::from_mode(0o700))?;
        let slot: RefCell<Option<lazyfs::Mount>> = RefCell::new(None);
        let mount_here = |data: &Path| -> Result<(), PgError> {
            std::fs::create_dir(data).map_err(pg_err("creating the mount point"))?;
            let m =
                lazyfs::mount(backing.path(), data).map_err(pg_err("mounting the lazyfs layer"))?;
            *slot.borrow_mut() = Some(m);
            Ok(())
        };
        let sync_initdb = |_: &Path| -> Result<(), PgError> {
            match slot.borrow().as_ref() {
                Some(m) => m.sync().map_err(pg_err("syncing initdb's files")),
                None => Ok(()),
            }
        };
        let started = PgCluster::start_with(Flavor {
            bin,
            settings: vec!["wal_writer_delay=10s".to_owned()],
            after_initdb: &sync_initdb,
            before_initdb: &mount_here,
        });
        let mount = slot.into_inner();
        let cluster = started?;
        Ok(LazyPg {
            cluster: Some(cluster),
            mount,
            _backing: backing,
        })
    }

    fn cluster(&mut self) -> Result<&mut PgCluster, DbError> {
        self.cluster
            .as_mut()
            .ok_or_else(|| DbError::Other("the lazyfs cluster is gone".into()))
    }

    pub fn port(&self) -> u16 {
        self.cluster.as_ref().map_or(0, PgCluster::port)
    }

    pub fn create_database(&mut self, db: &str) -> Result<String, DbError> {
        Ok(self.cluster()?.create_database(db)?)
    }

    /// `restart-db` on this cluster: SIGKILL and restart, nothing dropped (a process crash, not a power cut).
    pub fn restart(&mut self) -> Result<(), DbError> {
        let c = self.cluster()?;
        c.kill9()?;
        c.restart()?;
        Ok(())
    }

    /// The power cut: SIGKILL, clear-cache, restart. Returns what was dropped.
    pub fn lose_unsynced(&mut self) -> Result<String, DbError> {
        self.cluster()?.kill9()?;
        let dropped = self
            .mount
            .as_ref()
            .map(lazyfs::Mount::clear_cache)
            .unwrap_or_default();
        let t = std::time::Instant::now();
        self.cluster()?.restart()?;
        Ok(format!(
            "postmaster SIGKILLed, {} unsynced bytes of {} file(s) dropped, back up in {} ms",
            dropped.bytes,
            dropped.files,
            t.elapsed().as_millis()
        ))
    }
}

impl Drop for LazyPg {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.stop();
        }
        // Unmount before the cluster's temp dir is removed: the removal must not run through the layer.
        drop(self.mount.take());
        drop(self.cluster.take());
    }
}
