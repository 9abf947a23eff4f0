//! The aggregator's Lambda package (`deployer-and-aggregator.md` §10): the `zael-aggregator`
//! binary as one executable `bootstrap` (mode 0755) at the root of a zip, for
//! `provided.al2023` on x86_64.
//!
//! Decision: the deployer does not embed the binary (that would need a nested cargo build of
//! the aggregator inside the deployer's build); it packages the `zael-aggregator` that sits
//! next to the running `zae-limiter` (cargo builds and installs both into the same directory),
//! or the one named by `--binary` / `ZAEL_AGGREGATOR_BINARY`. No compiler is needed at run
//! time. The binary must be an x86_64 ELF needing glibc 2.34 at most (what the runtime ships).

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable naming the aggregator binary.
pub const BINARY_ENV: &str = "ZAEL_AGGREGATOR_BINARY";
/// `provided.al2023` ships glibc 2.34.
pub const MAX_GLIBC: (u32, u32) = (2, 34);
/// Lambda's limit on a function's unzipped code.
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;

#[derive(Debug)]
pub struct Package {
    pub zip: Vec<u8>,
    /// Hex SHA-256 of the zip.
    pub sha256: String,
}

/// The aggregator binary: `explicit`, else `$ZAEL_AGGREGATOR_BINARY`, else `zael-aggregator`
/// beside the running executable.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the running executable: {e}"))?;
    let sibling = exe.with_file_name("zael-aggregator");
    if sibling.is_file() {
        Ok(sibling)
    } else {
        Err(format!(
            "the aggregator binary was not found at {}; build it with 'cargo build --release -p zael-aggregator' \
             (it lands next to zae-limiter), or name it with --binary or {BINARY_ENV}",
            sibling.display()
        ))
    }
}

/// A glibc version, `(2, 34)`.
pub type GlibcVersion = (u32, u32);

/// Reads and checks the binary at `path`: its bytes and the glibc it needs.
pub fn inspect(path: &Path) -> Result<(Vec<u8>, Option<GlibcVersion>), String> {
    let size = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
    if size > MAX_UNZIPPED_BYTES {
        return Err(format!(
            "{} is {} MB, over Lambda's 250 MB for unzipped code (a debug build?); build it with \
             'cargo build --release -p zael-aggregator'",
            path.display(),
            size / (1024 * 1024)
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    check_elf_x86_64(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let glibc = highest_glibc(&bytes);
    if let Some(v) = glibc.filter(|v| *v > MAX_GLIBC) {
        return Err(format!(
            "{} needs glibc {}.{}, but provided.al2023 ships {}.{}; build it on an older glibc or for musl",
            path.display(),
            v.0,
            v.1,
            MAX_GLIBC.0,
            MAX_GLIBC.1
        ));
    }
    Ok((bytes, glibc))
}

/// A package built on first use, at most once (a command may need it for staging and for
/// the push, or not at all).
pub struct LazyPackage {
    binary: Result<PathBuf, String>,
    built: std::cell::OnceCell<Result<Package, String>>,
}

impl LazyPackage {
    /// The binary [`locate`] finds for `explicit`; a lookup failure is reported on first use.
    pub fn new(explicit: Option<&Path>) -> LazyPackage {
        LazyPackage { binary: locate(explicit), built: std::cell::OnceCell::new() }
    }

    pub fn get(&self) -> Result<&Package, String> {
        self.built.get_or_init(|| build(self.binary.as_ref().map_err(Clone::clone)?)).as_ref().map_err(Clone::clone)
    }
}

/// Reads, checks and zips the binary at `path`.
pub fn build(path: &Path) -> Result<Package, String> {
    let (bytes, _) = inspect(path)?;
    let zip = zip_bootstrap(&bytes).map_err(|e| format!("cannot build the zip: {e}"))?;
    let sha256 = Sha256::digest(&zip).iter().map(|b| format!("{b:02x}")).collect();
    Ok(Package { zip, sha256 })
}

fn check_elf_x86_64(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    // e_machine, little-endian at offset 18: 0x3E is x86-64.
    if bytes[5] != 1 || u16::from_le_bytes([bytes[18], bytes[19]]) != 0x3E {
        return Err("not an x86_64 executable (the function's architecture is x86_64)".into());
    }
    Ok(())
}

/// The highest `GLIBC_2.N` symbol version named in the binary.
pub fn highest_glibc(bytes: &[u8]) -> Option<(u32, u32)> {
    let needle = b"GLIBC_2.";
    let mut best = None;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(needle.len()).position(|w| w == needle) {
        let start = i + pos + needle.len();
        let digits: String = bytes[start..].iter().take_while(|b| b.is_ascii_digit()).map(|b| *b as char).collect();
        if let Ok(minor) = digits.parse::<u32>() {
            best = best.max(Some((2, minor)));
        }
        i = start;
    }
    best
}

fn zip_bootstrap(binary: &[u8]) -> zip::result::ZipResult<Vec<u8>> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    writer.start_file("bootstrap", options)?;
    writer.write_all(binary)?;
    Ok(writer.finish()?.into_inner())
}

/// `12.3 KB`.
pub fn kb(bytes: usize) -> String {
    format!("{:.1} KB", bytes as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16, extra: &[u8]) -> Vec<u8> {
        let mut b = b"\x7fELF\x02\x01\x01".to_vec();
        b.resize(18, 0);
        b.extend(machine.to_le_bytes());
        b.extend(extra);
        b
    }

    #[test]
    fn glibc_versions_are_compared_numerically() {
        assert_eq!(highest_glibc(b"..GLIBC_2.9\0GLIBC_2.34\0GLIBC_2.17\0"), Some((2, 34)));
        assert_eq!(highest_glibc(b"no versions"), None);
    }

    #[test]
    fn the_zip_holds_one_executable_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agg");
        std::fs::write(&path, elf(0x3E, b"GLIBC_2.28\0")).unwrap();
        assert_eq!(inspect(&path).unwrap().1, Some((2, 28)));
        let package = build(&path).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(package.zip)).unwrap();
        assert_eq!(archive.len(), 1);
        let file = archive.by_index(0).unwrap();
        assert_eq!((file.name().unwrap().as_ref(), file.unix_mode().map(|m| m & 0o777)), ("bootstrap", Some(0o755)));
    }

    #[test]
    fn foreign_binaries_and_new_glibc_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let arm = dir.path().join("arm");
        std::fs::write(&arm, elf(0xB7, b"")).unwrap();
        assert!(build(&arm).unwrap_err().ends_with("not an x86_64 executable (the function's architecture is x86_64)"));
        let new = dir.path().join("new");
        std::fs::write(&new, elf(0x3E, b"GLIBC_2.36")).unwrap();
        assert!(build(&new).unwrap_err().contains("needs glibc 2.36, but provided.al2023 ships 2.34"));
        let huge = dir.path().join("huge");
        std::fs::File::create(&huge).unwrap().set_len(MAX_UNZIPPED_BYTES + 1).unwrap();
        assert!(build(&huge).unwrap_err().contains("is 250 MB, over Lambda's 250 MB for unzipped code"));
        let text = dir.path().join("text");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(build(&text).unwrap_err().ends_with("not an ELF executable"));
    }
}
