//! The one way kdlora writes an output file: [`write_atomic`].
//!
//! It lives in this burn-free crate because every crate that writes files (data, encoders, LoRA,
//! distillation, training, the CLI) can depend on it without linking anything heavy.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` so that a reader never sees a half-written file:
///
/// - a regular file (or a new one) is replaced through a temporary sibling, synced and renamed
///   over it; the replacement keeps the old file's permissions, and a new file gets the process
///   umask's (never a forced `0600`);
/// - a symbolic link is followed: its target is replaced, the link stays;
/// - a FIFO, character or block device (`/dev/stdout`, `/dev/null`, a named pipe) is written in
///   place, never replaced by a regular file;
/// - a directory is an error.
///
/// The returned error says which of these failed; callers wrap it with the path they were given.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let target = resolve_links(path)?;
    match fs::metadata(&target) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory, not a file",
        )),
        Ok(meta) if !meta.is_file() => write_in_place(&target, bytes),
        Ok(meta) => replace_file(&target, bytes, Some(meta.permissions())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => replace_file(&target, bytes, None),
        Err(e) => Err(e),
    }
}

/// The file a chain of symbolic links ends at (the path itself when it is no link). A dangling
/// link resolves to the missing file it names, so writing creates that file.
fn resolve_links(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    // Linux gives up after 40 links (ELOOP); so do we, instead of looping forever on a cycle.
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = fs::read_link(&current)?;
                current = if link.is_absolute() {
                    link
                } else {
                    current
                        .parent()
                        .map_or_else(|| link.clone(), |parent| parent.join(&link))
                };
            }
            _ => return Ok(current),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

fn write_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // No truncate and no create: pipes and devices cannot be truncated, and the node exists.
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(bytes)?;
    file.flush()
}

fn replace_file(path: &Path, bytes: &[u8], keep: Option<fs::Permissions>) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        // `create_new` with the default mode (0666) lets the kernel apply the umask.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if let Some(permissions) = keep {
            file.set_permissions(permissions)?;
        }
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is one of the temporary names [`write_atomic`] (and the run folder's staged
/// directories, `.NAME.tmp-PID` / `.NAME.old-PID`) use: what a killed process leaves behind.
pub fn is_temporary_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    [".tmp-", ".old-"].iter().any(|marker| {
        rest.rfind(marker).is_some_and(|at| {
            let suffix = &rest[at + marker.len()..];
            at > 0 && !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_digit() || c == '-')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn tempdir() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kdlora-schema-atomic-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_new_and_replaces_existing_files_without_leftovers() {
        let dir = tempdir();
        let path = dir.join("out.tsv");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(names(&dir), vec!["out.tsv"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempdir();
        let err = write_atomic(&dir, b"x").unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_written_through_and_kept() {
        let dir = tempdir();
        let real = dir.join("real.tsv");
        fs::write(&real, b"old").unwrap();
        let link = dir.join("link.tsv");
        std::os::unix::fs::symlink("real.tsv", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"new");
        // A dangling link creates the file it names.
        let dangling = dir.join("dangling.tsv");
        std::os::unix::fs::symlink("made.tsv", &dangling).unwrap();
        write_atomic(&dangling, b"made").unwrap();
        assert_eq!(fs::read(dir.join("made.tsv")).unwrap(), b"made");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_device_node_is_written_in_place() {
        // /dev/null is a character device every unix has; replacing it would need root, and the
        // old code would have tried (and, as root, succeeded).
        write_atomic(Path::new("/dev/null"), b"discarded").unwrap();
        let meta = fs::metadata("/dev/null").unwrap();
        assert!(!meta.is_file());
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_in_place() {
        use std::io::Read;
        let dir = tempdir();
        let fifo = dir.join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                fs::File::open(&fifo)
                    .unwrap()
                    .read_to_string(&mut text)
                    .unwrap();
                text
            })
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), "through the pipe");
        assert!(
            !fs::metadata(&fifo).unwrap().is_file(),
            "the FIFO was replaced"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn permissions_follow_the_umask_or_the_replaced_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        // A new file: 0666 less the umask (the test process's umask is unknown; read it back
        // from a file created the ordinary way).
        let reference = dir.join("reference");
        fs::write(&reference, b"").unwrap();
        let umasked = fs::metadata(&reference).unwrap().permissions().mode() & 0o777;
        let fresh = dir.join("fresh");
        write_atomic(&fresh, b"x").unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            umasked
        );
        // An existing file keeps its mode.
        let kept = dir.join("kept");
        fs::write(&kept, b"").unwrap();
        fs::set_permissions(&kept, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&kept, b"y").unwrap();
        assert_eq!(
            fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
            0o640
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names() {
        assert!(is_temporary_name(".adapter.tmp-1234"));
        assert!(is_temporary_name(".model.old-99"));
        assert!(is_temporary_name(".metrics.json.tmp-5-0"));
        assert!(!is_temporary_name("adapter"));
        assert!(!is_temporary_name("step-00000004"));
        assert!(!is_temporary_name(".notes.tmp-draft"));
    }
}
