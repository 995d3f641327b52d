//! One file's unsynced writes: the pages written since its last fsync, its logical size, and how much of the
//! backing file is still its content (a truncation since the last fsync hides the backing bytes past it). The
//! backing file is untouched until [`Dirty::flush`]; dropping a `Dirty` is what a power cut does to it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

/// The cache's granularity: a write of one byte caches (and an fsync writes back) its whole 4 KiB page.
pub const PAGE: u64 = 4096;

/// The unsynced state of one file.
#[derive(Debug)]
pub struct Dirty {
    /// Page index → the page's bytes as the file now reads (bytes past `size` are zero).
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The file's size as the processes using it see it.
    size: u64,
    /// Bytes `[0, keep)` of the backing file are still the file's content where no page covers them.
    keep: u64,
}

impl Dirty {
    /// A file with nothing cached yet, whose backing file is `backing_len` bytes long.
    pub fn new(backing_len: u64) -> Dirty {
        Dirty {
            pages: BTreeMap::new(),
            size: backing_len,
            keep: backing_len,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes held in memory (whole pages).
    pub fn cached_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    /// Reads backing bytes `[off, off + buf.len())`, zero past `keep` or the backing file's end.
    fn read_backing(&self, file: &File, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let upto = self.keep.min(off + buf.len() as u64);
        if upto <= off {
            return Ok(());
        }
        let want = (upto - off) as usize;
        let mut done = 0;
        while done < want {
            match file.read_at(&mut buf[done..want], off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Up to `len` bytes from `off` (fewer at the end of the file).
    pub fn read(&self, file: &File, off: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = self.size.min(off.saturating_add(len));
        if end <= off {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - off) as usize];
        self.read_backing(file, off, &mut buf)?;
        for (&idx, page) in self.pages.range(off / PAGE..=(end - 1) / PAGE) {
            let start = (idx * PAGE).max(off);
            let stop = ((idx + 1) * PAGE).min(end);
            let from = (start - idx * PAGE) as usize;
            let to = (stop - idx * PAGE) as usize;
            buf[(start - off) as usize..(stop - off) as usize].copy_from_slice(&page[from..to]);
        }
        Ok(buf)
    }

    /// Caches `data` at `off`, loading the touched pages from the backing file first.
    pub fn write(&mut self, file: &File, off: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = off + data.len() as u64;
        for idx in off / PAGE..=(end - 1) / PAGE {
            if !self.pages.contains_key(&idx) {
                let mut page = vec![0u8; PAGE as usize];
                if idx * PAGE < self.size {
                    self.read_backing(file, idx * PAGE, &mut page)?;
                }
                self.pages.insert(idx, page.into_boxed_slice());
            }
            let page = self.pages.get_mut(&idx).expect("inserted above");
            let start = (idx * PAGE).max(off);
            let stop = ((idx + 1) * PAGE).min(end);
            page[(start - idx * PAGE) as usize..(stop - idx * PAGE) as usize]
                .copy_from_slice(&data[(start - off) as usize..(stop - off) as usize]);
        }
        self.size = self.size.max(end);
        Ok(())
    }

    /// `truncate(2)` / `ftruncate(2)` to `new` bytes, cached like a write.
    pub fn truncate(&mut self, new: u64) {
        self.keep = self.keep.min(new);
        self.pages.retain(|&idx, _| idx * PAGE < new);
        if let Some(page) = self.pages.get_mut(&(new / PAGE)) {
            page[(new % PAGE) as usize..].fill(0);
        }
        self.size = new;
    }

    /// Writes the cached state to the backing file and syncs it (`fsync`/`fdatasync` on the file).
    pub fn flush(&self, file: &File) -> io::Result<()> {
        if file.metadata()?.len() > self.keep {
            file.set_len(self.keep)?;
        }
        for (&idx, page) in &self.pages {
            let start = idx * PAGE;
            let n = (self.size - start).min(PAGE) as usize;
            file.write_all_at(&page[..n], start)?;
        }
        file.set_len(self.size)?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn backing(content: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(content).expect("write");
        let file = File::options()
            .read(true)
            .write(true)
            .open(f.path())
            .expect("open");
        (f, file)
    }

    #[test]
    fn writes_are_read_back_but_stay_out_of_the_backing_file_until_flush() {
        let (t, file) = backing(b"hello world");
        let mut d = Dirty::new(11);
        d.write(&file, 6, b"WORLD, and more").expect("write");
        assert_eq!(
            d.read(&file, 0, 100).expect("read"),
            b"hello WORLD, and more"
        );
        assert_eq!(std::fs::read(t.path()).expect("read"), b"hello world");
        d.flush(&file).expect("flush");
        assert_eq!(
            std::fs::read(t.path()).expect("read"),
            b"hello WORLD, and more"
        );
    }

    #[test]
    fn truncation_hides_backing_bytes_and_extension_reads_zeros() {
        let (t, file) = backing(&[7u8; 10_000]);
        let mut d = Dirty::new(10_000);
        d.truncate(100);
        d.write(&file, 5000, b"x").expect("write");
        let all = d.read(&file, 0, 20_000).expect("read");
        assert_eq!(all.len(), 5001);
        assert!(all[..100].iter().all(|&b| b == 7));
        assert!(all[100..5000].iter().all(|&b| b == 0));
        assert_eq!(std::fs::metadata(t.path()).expect("stat").len(), 10_000);
        d.flush(&file).expect("flush");
        assert_eq!(std::fs::read(t.path()).expect("read"), all);
    }

    #[test]
    fn pages_straddling_writes_and_a_shrinking_truncate() {
        let (_t, file) = backing(b"");
        let mut d = Dirty::new(0);
        let data: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        d.write(&file, 100, &data).expect("write");
        assert_eq!(d.read(&file, 100, 9000).expect("read"), data);
        d.truncate(4100);
        d.truncate(8192);
        let r = d.read(&file, 0, 9000).expect("read");
        assert_eq!(r.len(), 8192);
        assert_eq!(&r[100..4100], &data[..4000]);
        assert!(r[4100..].iter().all(|&b| b == 0));
    }
}
