//! Reading files that a hostile or careless user controls (checkpoint directories, the
//! calibration cache) without ever leaving the directory they are in.
//!
//! A [`Dir`] is an open directory handle; files and subdirectories are opened *relative to
//! it* by plain names, never through a symlink (`O_NOFOLLOW` on the handle's `openat`, so
//! nothing can be swapped in between a check and the open). A file is read only if the
//! opened handle is a regular file (a FIFO is opened non-blocking, so it cannot hang the
//! open, and is then refused), and never past a length the caller states.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Why a name is not a plain entry of a directory, or `None` if it is one.
pub(crate) fn plain_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name == "." || name == ".." {
        Some("a reference to a directory, not a name in it")
    } else if name.contains(['/', '\\', '\0']) {
        Some("a path, not a plain name")
    } else {
        None
    }
}

fn refuse(name: &str, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?}: {why}"))
}

/// A directory opened once; its entries are opened through this handle.
#[derive(Debug)]
pub(crate) struct Dir {
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens `path` (following a symlink in it: the caller chose this path).
    pub fn open(path: &Path) -> io::Result<Dir> {
        Dir::open_with(path, false)
    }

    /// Opens the subdirectory `name`, refusing a symlink or anything but a directory.
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        if let Some(why) = plain_name_problem(name) {
            return Err(refuse(name, why));
        }
        let path = self.path.join(name);
        #[cfg(unix)]
        {
            use rustix::fs::{Mode, OFlags, openat};
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = openat(&self.fd, name, flags, Mode::empty())
                .map_err(|e| self.explain(name, io::Error::from(e)))?;
            Ok(Dir { fd, path })
        }
        #[cfg(not(unix))]
        {
            Dir::open_with(&path, true)
        }
    }

    fn open_with(path: &Path, no_follow: bool) -> io::Result<Dir> {
        #[cfg(unix)]
        {
            use rustix::fs::{Mode, OFlags, open};
            let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            if no_follow {
                flags |= OFlags::NOFOLLOW;
            }
            let fd = open(path, flags, Mode::empty()).map_err(io::Error::from)?;
            Ok(Dir { fd, path: path.to_path_buf() })
        }
        #[cfg(not(unix))]
        {
            let meta = if no_follow { path.symlink_metadata()? } else { path.metadata()? };
            if !meta.is_dir() {
                return Err(refuse(&path.display().to_string(), "is not a directory"));
            }
            Ok(Dir { path: path.to_path_buf() })
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the regular file `name`, which must hold at most `max` bytes.
    pub fn read_file(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let file = self.open_file(name)?;
        read_bounded(file, name, max)
    }

    /// Reads the regular file `name`, which must hold exactly `len` bytes: the length is
    /// checked on the open handle before anything is read or allocated.
    pub fn read_exact_len(&self, name: &str, len: u64) -> io::Result<Vec<u8>> {
        let file = self.open_file(name)?;
        let size = file.metadata()?.len();
        if size != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: {size} bytes, the manifest says {len} (truncated or replaced?)"),
            ));
        }
        read_bounded(file, name, len)
    }

    /// Opens `name` for reading: a plain name, not a symlink, and (checked on the handle) a
    /// regular file.
    fn open_file(&self, name: &str) -> io::Result<File> {
        if let Some(why) = plain_name_problem(name) {
            return Err(refuse(name, why));
        }
        #[cfg(unix)]
        let file = {
            use rustix::fs::{AtFlags, FileType, Mode, OFlags, openat, statat};
            // Looked at first (not followed), so a device node is not even opened: opening
            // some has side effects. The opened handle is checked again below, in case the
            // entry was swapped in between.
            let stat = statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.explain(name, io::Error::from(e)))?;
            let kind = FileType::from_raw_mode(stat.st_mode);
            if kind != FileType::RegularFile {
                return Err(refuse(
                    name,
                    format!("is not a regular file ({})", describe_raw(kind)),
                ));
            }
            // Non-blocking: opening a FIFO for reading would otherwise wait for a writer.
            let flags = OFlags::RDONLY
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC;
            let fd = openat(&self.fd, name, flags, Mode::empty())
                .map_err(|e| self.explain(name, io::Error::from(e)))?;
            File::from(fd)
        };
        #[cfg(not(unix))]
        let file = {
            let path = self.path.join(name);
            if path.symlink_metadata()?.file_type().is_symlink() {
                return Err(refuse(name, "is a symlink (not followed)"));
            }
            File::open(path)?
        };
        let kind = file.metadata()?.file_type();
        if !kind.is_file() {
            return Err(refuse(name, format!("is not a regular file ({})", describe(kind))));
        }
        Ok(file)
    }

    /// A clearer message for what `O_NOFOLLOW` and `O_DIRECTORY` report.
    #[cfg(unix)]
    fn explain(&self, name: &str, e: io::Error) -> io::Error {
        let link = self.path.join(name).symlink_metadata().is_ok_and(|m| m.is_symlink());
        if link {
            refuse(name, "is a symlink (not followed)")
        } else if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) {
            refuse(name, "is not a directory")
        } else {
            e
        }
    }
}

#[cfg(unix)]
fn describe_raw(kind: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType;
    match kind {
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Socket => "a socket",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink (not followed)",
        _ => "not a plain file",
    }
}

fn describe(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symlink"
    } else {
        "not a plain file"
    }
}

/// Reads at most `max` bytes of `file`; more than that is an error, not a truncation.
fn read_bounded(file: File, name: &str, max: u64) -> io::Result<Vec<u8>> {
    let hint = file.metadata()?.len().min(max);
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(usize::try_from(hint).unwrap_or(usize::MAX)).map_err(|_| {
        io::Error::new(io::ErrorKind::OutOfMemory, format!("{name}: {hint} bytes do not fit"))
    })?;
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name}: longer than the {max} bytes allowed"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("manychips-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn names_must_be_plain() {
        for bad in ["", ".", "..", "../x", "/etc/hostname", "a/b", "a\\b", "a\0b"] {
            assert!(plain_name_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(plain_name_problem("model.safetensors"), None);
    }

    #[test]
    fn reads_only_regular_files_inside_and_within_bounds() {
        let root = scratch("bounds");
        std::fs::write(root.join("ok"), b"hello").unwrap();
        let dir = Dir::open(&root).unwrap();
        assert_eq!(dir.read_file("ok", 5).unwrap(), b"hello");
        assert!(dir.read_file("ok", 4).unwrap_err().to_string().contains("longer than"));
        assert!(dir.read_exact_len("ok", 6).unwrap_err().to_string().contains("5 bytes"));
        assert!(dir.read_file("../ok", 100).is_err());
        assert!(dir.read_file("missing", 100).is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("ok"), root.join("link")).unwrap();
            let e = dir.read_file("link", 100).unwrap_err().to_string();
            assert!(e.contains("symlink"), "{e}");
            std::fs::create_dir(root.join("sub")).unwrap();
            std::os::unix::fs::symlink(root.join("sub"), root.join("sublink")).unwrap();
            let e = dir.open_dir("sublink").unwrap_err().to_string();
            assert!(e.contains("symlink"), "{e}");
            let e = dir.open_dir("ok").unwrap_err().to_string();
            assert!(e.contains("not a directory"), "{e}");
            assert!(dir.open_dir("sub").is_ok());
            std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
            assert!(dir.read_file("zero", 100).is_err());
            let fifo = root.join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            if made.is_ok_and(|s| s.success()) {
                let e = dir.read_file("fifo", 100).unwrap_err().to_string();
                assert!(e.contains("FIFO"), "{e}");
            }
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_refused() {
        let dev = Dir::open(Path::new("/dev")).unwrap();
        let e = dev.read_file("zero", 1 << 20).unwrap_err().to_string();
        assert!(e.contains("a device"), "{e}");
    }
}
