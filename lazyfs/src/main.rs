//! `shredproof-lazyfs BACKING MOUNTPOINT [FIFO]`: mounts the layer and serves a LazyFS-style control FIFO (default
//! `MOUNTPOINT.fifo`): each line `clear-cache` (or LazyFS's `lazyfs::clear-cache`) drops the unsynced writes,
//! `sync` (`lazyfs::checkpoint`) writes them back, `unmount` ends the program. Runs until `unmount` or a signal
//! that kills it (the mount then stays until `umount MOUNTPOINT`).

use std::io::BufRead as _;
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("shredproof-lazyfs: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(backing), Some(mountpoint)) = (args.first(), args.get(1)) else {
        return Err("usage: shredproof-lazyfs BACKING MOUNTPOINT [FIFO]".into());
    };
    let fifo = args.get(2).map_or_else(
        || PathBuf::from(format!("{mountpoint}.fifo")),
        PathBuf::from,
    );
    if !fifo.exists() {
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("mkfifo {}: {e}", fifo.display()))?;
    }
    let mount =
        lazyfs::mount(backing.as_ref(), mountpoint.as_ref()).map_err(|e| format!("mount: {e}"))?;
    eprintln!(
        "shredproof-lazyfs: {backing} mounted at {mountpoint}; control FIFO {}",
        fifo.display()
    );
    loop {
        let f = std::fs::File::open(&fifo).map_err(|e| format!("open {}: {e}", fifo.display()))?;
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(|e| format!("read {}: {e}", fifo.display()))?;
            match line.trim() {
                "clear-cache" | "lazyfs::clear-cache" => {
                    let d = mount.clear_cache();
                    eprintln!(
                        "clear-cache: dropped {} bytes of {} file(s)",
                        d.bytes, d.files
                    );
                }
                "sync" | "lazyfs::checkpoint" => match mount.sync() {
                    Ok(()) => eprintln!("sync: done"),
                    Err(e) => eprintln!("sync: {e}"),
                },
                "unmount" => return mount.unmount().map_err(|e| format!("unmount: {e}")),
                "" => {}
                other => eprintln!("unknown command {other:?} (clear-cache, sync, unmount)"),
            }
        }
    }
}
