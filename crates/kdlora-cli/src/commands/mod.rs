//! One module per CLI verb.
pub mod bench;
pub mod data;
pub mod eval;
pub mod logits;
pub mod merge;
pub mod predict;
mod runs;
pub mod score;
pub mod student;
mod texts;
pub mod train;

/// What an output path must be: a file to write, or a folder to create (or reuse).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    File,
    Folder,
}

/// Refuses an output path that cannot be written before any work is done, naming it (the OS
/// would only say "File exists" or "Not a directory", after the model ran): an entry of the
/// other kind, or a path below a file. `what` names the setting (`--out`, ``configuration key
/// `out` ``).
pub(crate) fn check_output(what: &str, out: &std::path::Path, kind: Output) -> anyhow::Result<()> {
    match kind {
        Output::File if out.is_dir() => anyhow::bail!(
            "{what} {}: is a directory; give the path of the file to write",
            out.display()
        ),
        Output::Folder if out.exists() && !out.is_dir() => {
            anyhow::bail!("{what} {}: is a file, not a folder", out.display())
        }
        _ => {}
    }
    // The nearest existing ancestor must be a folder.
    for ancestor in out.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        if ancestor.exists() {
            if !ancestor.is_dir() {
                anyhow::bail!(
                    "{what} {}: {} is a file, not a folder",
                    out.display(),
                    ancestor.display()
                );
            }
            break;
        }
    }
    Ok(())
}
