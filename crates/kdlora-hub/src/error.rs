//! The errors of resolving a model argument.

use std::path::PathBuf;

/// Why a model argument could not be resolved to a local folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// A model argument looks like a path (or is not a valid Hub id) and does not exist.
    #[error(
        "model folder {path} not found (a path is never looked up on the Hugging Face Hub; Hub ids \
         look like `org/name` or `org/name@revision`)"
    )]
    ModelNotFound {
        /// The path as given.
        path: PathBuf,
    },

    /// A Hugging Face Hub model id could not be resolved to a complete local snapshot
    /// (not cached while offline, missing file, download failure).
    #[error(
        "Hugging Face model `{id}` at revision `{revision}`: {reason} (cache searched: {cache})"
    )]
    Hub {
        /// Repository id (`org/name`).
        id: String,
        /// Revision asked for (`main` by default).
        revision: String,
        /// The file that is missing or failed, when one is to blame.
        file: Option<String>,
        /// The Hugging Face hub cache folder searched (and downloaded into).
        cache: PathBuf,
        /// What went wrong and what to do about it.
        reason: String,
    },

    /// Writing into the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = HubError> = std::result::Result<T, E>;
