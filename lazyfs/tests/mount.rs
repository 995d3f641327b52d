//! The layer mounted for real (needs root and /dev/fuse): unsynced writes are read back while mounted and gone
//! after a clear-cache; fsynced ones survive it; truncations are cached like writes.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};

fn mounted() -> (tempfile::TempDir, lazyfs::Mount) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (b, m) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir(&b).expect("mkdir backing");
    std::fs::create_dir(&m).expect("mkdir mnt");
    let mount = lazyfs::mount(&b, &m).expect("mount (needs root and /dev/fuse)");
    (dir, mount)
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

#[test]
fn unsynced_writes_are_lost_on_clear_cache() {
    let (_dir, mount) = mounted();
    let p = mount.mountpoint().join("a");
    std::fs::write(&p, b"not synced").expect("write");
    assert_eq!(read(&p), b"not synced");
    assert_eq!(read(&mount.backing().join("a")), b"");
    let d = mount.clear_cache();
    assert_eq!(d.files, 1);
    assert_eq!(
        read(&p),
        b"",
        "the file's creation is durable, its data is not"
    );
}

#[test]
fn fsynced_writes_survive_clear_cache() {
    let (_dir, mount) = mounted();
    let p = mount.mountpoint().join("b");
    let mut f = std::fs::File::create(&p).expect("create");
    f.write_all(b"synced").expect("write");
    f.sync_data().expect("fdatasync");
    f.write_all(b" and then not").expect("write");
    assert_eq!(read(&p), b"synced and then not");
    drop(f);
    mount.clear_cache();
    assert_eq!(read(&p), b"synced");
}

#[test]
fn a_truncation_is_cached_like_a_write() {
    let (_dir, mount) = mounted();
    let p = mount.mountpoint().join("c");
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .expect("create");
    f.write_all(&[1u8; 20_000]).expect("write");
    f.sync_all().expect("fsync");
    f.set_len(10).expect("truncate");
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).expect("read");
    assert_eq!(buf.len(), 10);
    drop(f);
    mount.clear_cache();
    assert_eq!(read(&p).len(), 20_000);
    // sync writes the cache back: then a clear-cache has nothing to drop.
    std::fs::write(&p, b"x").expect("write");
    mount.sync().expect("sync");
    assert_eq!(mount.clear_cache(), lazyfs::Dropped::default());
    assert_eq!(read(&p), b"x");
}

#[test]
fn renames_and_directories_pass_through() {
    let (_dir, mount) = mounted();
    let m = mount.mountpoint();
    std::fs::create_dir_all(m.join("d/e")).expect("mkdir");
    let mut f = std::fs::File::create(m.join("d/e/f")).expect("create");
    f.write_all(b"moved").expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    std::fs::rename(m.join("d"), m.join("g")).expect("rename");
    assert_eq!(read(&m.join("g/e/f")), b"moved");
    let names: Vec<_> = std::fs::read_dir(m.join("g/e"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["f"]);
    std::fs::remove_file(m.join("g/e/f")).expect("unlink");
    assert!(!mount.backing().join("g/e/f").exists());
}
