#![doc = include_str!("../README.md")]

mod error;

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

pub use error::{HubError, Result};

/// The Hub's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The revision used when an id has no `@revision`.
pub const DEFAULT_REVISION: &str = "main";

/// Files a model folder must hold.
pub const REQUIRED_FILES: &[&str] = &[
    "config.json",
    kdlora_schema::TOKENIZER_FILE,
    "model.safetensors",
];

/// Files downloaded alongside when the repository has them.
pub const OPTIONAL_FILES: &[&str] = kdlora_schema::TOKENIZER_COMPANION_FILES;

/// Weight files kdlora does not load (pickle); named in the error when a repository only has them.
const PICKLE_WEIGHTS: &[&str] = &["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"];

/// Where and how Hub ids are resolved. [`HubSettings::from_env`] reads the variables
/// `huggingface_hub` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSettings {
    /// The Hugging Face hub cache folder (the one holding `models--org--name/`).
    pub cache: PathBuf,
    /// Never download (`HF_HUB_OFFLINE=1`): only cached models resolve.
    pub offline: bool,
    /// Hub endpoint, without a trailing `/` (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Access token for gated or private repositories (`HF_TOKEN`, else `HF_HOME/token`).
    pub token: Option<String>,
    /// Show a progress bar per downloaded file.
    pub progress: bool,
}

impl HubSettings {
    /// Settings for a cache folder, online, the default endpoint, no token, no progress bar.
    pub fn new(cache: impl Into<PathBuf>) -> Self {
        Self {
            cache: cache.into(),
            offline: false,
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            progress: false,
        }
    }

    /// Settings from the process environment: `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`,
    /// `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN` (as `huggingface_hub` reads them).
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Settings from a variable lookup (empty values count as unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = var("HOME")
            .or_else(|| var("USERPROFILE"))
            .map(PathBuf::from);
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        let endpoint = var("HF_ENDPOINT")
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(hf_home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self {
            cache,
            offline,
            endpoint,
            token,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

pub use kdlora_schema::HubSource;

/// A resolved model argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The local model folder.
    pub path: PathBuf,
    /// The Hub repository, when the folder is a snapshot in a Hugging Face cache.
    pub hub: Option<HubSource>,
}

/// Resolves a model argument (a local folder or a Hub id `org/name[@revision]`) to a local
/// folder, with settings from the environment ([`HubSettings::from_env`]).
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    resolve_model_in(arg, &HubSettings::from_env()).map(|r| r.path)
}

/// [`resolve_model`] for a path argument (`--model`, `RunConfig::model`).
pub fn resolve_model_path(arg: &Path) -> Result<PathBuf> {
    resolve_model(&arg.to_string_lossy())
}

/// Resolves a model argument with explicit settings; see the module documentation for the rules.
pub fn resolve_model_in(arg: &str, settings: &HubSettings) -> Result<ResolvedModel> {
    let local = expand_home(arg);
    if local.exists() {
        let hub = hub_source(&local);
        return Ok(ResolvedModel { path: local, hub });
    }
    let Some((id, revision)) = parse_hub_id(arg) else {
        return Err(HubError::ModelNotFound { path: local });
    };
    let query = Query {
        arg,
        id,
        revision,
        settings,
    };
    query.resolve()
}

/// Splits `org/name[@revision]` (or `name[@revision]`) into id and revision; `None` when the
/// argument is not a valid Hub id (and so is treated as a path).
pub fn parse_hub_id(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('~') || arg.contains('\\') {
        return None;
    }
    let (id, revision) = match arg.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (arg, DEFAULT_REVISION),
    };
    let valid_revision = !revision.is_empty()
        && !revision.chars().any(|c| c.is_whitespace() || c == '\\')
        && revision
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    let mut parts = id.split('/');
    let valid_id = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, None) => valid_segment(name),
        (Some(org), Some(name), None) => valid_segment(org) && valid_segment(name),
        _ => false,
    };
    (valid_id && valid_revision).then_some((id, revision))
}

/// A repository id segment as the Hub allows it: `[A-Za-z0-9._-]`, at most 96 characters, not
/// starting or ending with `-` or `.`, no `--` or `..`.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

/// `~/x` with the home folder put in (configuration files are not expanded by a shell).
fn expand_home(arg: &str) -> PathBuf {
    if let Some(rest) = arg.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
    {
        return PathBuf::from(home).join(rest);
    }
    PathBuf::from(arg)
}

/// The Hub repository of a folder that is a snapshot in a Hugging Face cache
/// (`…/models--org--name/snapshots/COMMIT`), with the revision whose ref points at it (`main`
/// first), else the commit.
pub fn hub_source(path: &Path) -> Option<HubSource> {
    let path = std::fs::canonicalize(path).ok()?;
    let commit = path.file_name()?.to_str()?.to_string();
    let snapshots = path.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let repo_dir = snapshots.parent()?;
    let folder = repo_dir.file_name()?.to_str()?;
    let id = folder.strip_prefix("models--")?.replace("--", "/");
    parse_hub_id(&id)?;
    let refs = repo_dir.join("refs");
    let points_here = |rev: &str| {
        std::fs::read_to_string(refs.join(rev)).is_ok_and(|c| c.trim() == commit.as_str())
    };
    let revision = if points_here(DEFAULT_REVISION) {
        DEFAULT_REVISION.to_string()
    } else {
        std::fs::read_dir(&refs)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|rev| points_here(rev))
            .min()
            .unwrap_or_else(|| commit.clone())
    };
    Some(HubSource {
        id,
        revision,
        commit,
    })
}

/// Whether a revision is a full commit hash.
fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// One Hub lookup.
struct Query<'a> {
    arg: &'a str,
    id: &'a str,
    revision: &'a str,
    settings: &'a HubSettings,
}

impl Query<'_> {
    fn repo_dir(&self) -> PathBuf {
        self.settings
            .cache
            .join(Repo::new(self.id.to_string(), RepoType::Model).folder_name())
    }

    fn error(&self, file: Option<&str>, reason: impl Into<String>) -> HubError {
        HubError::Hub {
            id: self.id.to_string(),
            revision: self.revision.to_string(),
            file: file.map(str::to_string),
            cache: self.settings.cache.clone(),
            reason: reason.into(),
        }
    }

    fn source(&self, commit: &str) -> HubSource {
        HubSource {
            id: self.id.to_string(),
            revision: self.revision.to_string(),
            commit: commit.to_string(),
        }
    }

    /// The commit the cache has for this revision: the revision itself when it is a commit with
    /// a snapshot folder, else the content of `refs/REVISION`.
    fn cached_commit(&self) -> Option<String> {
        let repo_dir = self.repo_dir();
        if is_commit_hash(self.revision) && repo_dir.join("snapshots").join(self.revision).is_dir()
        {
            return Some(self.revision.to_string());
        }
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(self.revision)).ok()?;
        let commit = commit.trim();
        (!commit.is_empty()).then(|| commit.to_string())
    }

    fn resolve(&self) -> Result<ResolvedModel> {
        let mut snapshot_missing = None;
        if let Some(commit) = self.cached_commit() {
            let snapshot = self.repo_dir().join("snapshots").join(&commit);
            let missing = missing_files(&snapshot);
            if missing.is_empty() {
                tracing::debug!(id = self.id, revision = self.revision, snapshot = %snapshot.display(), "model found in the Hugging Face cache");
                return Ok(ResolvedModel {
                    path: snapshot,
                    hub: Some(self.source(&commit)),
                });
            }
            if missing.contains(&"model.safetensors")
                && let Some(pickle) = PICKLE_WEIGHTS.iter().find(|f| snapshot.join(f).exists())
            {
                return Err(self.safetensors_only(pickle));
            }
            snapshot_missing = Some((snapshot, missing[0]));
        }
        if self.settings.offline {
            return Err(match snapshot_missing {
                Some((snapshot, file)) => self.error(
                    Some(file),
                    format!(
                        "the cached snapshot {} has no {file}, and HF_HUB_OFFLINE is set so it \
                         was not downloaded; download it (unset HF_HUB_OFFLINE, or \
                         `huggingface-cli download {} {file} --revision {}`) or pass a local \
                         model folder",
                        snapshot.display(),
                        self.id,
                        self.revision
                    ),
                ),
                None => self.error(
                    None,
                    format!(
                        "not in the Hugging Face cache (no {}), and HF_HUB_OFFLINE is set so it \
                         was not downloaded; download it (unset HF_HUB_OFFLINE, or \
                         `huggingface-cli download {} {} --revision {}`) or pass a local model \
                         folder (no local folder `{}` exists)",
                        self.repo_dir().join("refs").join(self.revision).display(),
                        self.id,
                        REQUIRED_FILES.join(" "),
                        self.revision,
                        self.arg
                    ),
                ),
            });
        }
        self.download()
    }

    fn safetensors_only(&self, pickle: &str) -> HubError {
        self.error(
            Some("model.safetensors"),
            format!(
                "the repository has {pickle} but no model.safetensors; kdlora loads only \
                 safetensors weights (convert it, e.g. with transformers: \
                 `AutoModel.from_pretrained(...).save_pretrained(DIR, safe_serialization=True)`, \
                 and pass DIR)"
            ),
        )
    }

    fn api_error(&self, file: Option<&str>, what: &str, err: ApiError) -> HubError {
        let endpoint = &self.settings.endpoint;
        let reason = match &err {
            ApiError::RequestError(e) => match e.as_ref() {
                ureq::Error::Status(404, _) => format!(
                    "{what}: not found on {endpoint} (no such model repository or revision; a \
                     local folder `{}` does not exist either)",
                    self.arg
                ),
                ureq::Error::Status(code @ (401 | 403), _) => format!(
                    "{what}: {endpoint} answered {code} (a gated or private repository: accept \
                     its terms on the Hub and set HF_TOKEN)"
                ),
                ureq::Error::Status(code, _) => format!("{what}: {endpoint} answered {code}"),
                ureq::Error::Transport(t) => format!(
                    "{what}: cannot reach {endpoint} ({t}); download the model elsewhere into \
                     the cache, set HF_HUB_OFFLINE=1 to use the cache only, or pass a local \
                     model folder"
                ),
            },
            other => format!("{what}: {other}"),
        };
        self.error(file, reason)
    }

    /// Downloads the model files of the revision's commit into the cache.
    fn download(&self) -> Result<ResolvedModel> {
        let s = self.settings;
        let mut builder = ApiBuilder::from_cache(Cache::new(s.cache.clone()))
            .with_endpoint(s.endpoint.clone())
            .with_progress(s.progress);
        if s.token.is_some() {
            builder = builder.with_token(s.token.clone());
        }
        let api = builder
            .build()
            .map_err(|e| self.api_error(None, "setting up the Hub client", e))?;
        let asked = Repo::with_revision(
            self.id.to_string(),
            RepoType::Model,
            self.revision.to_string(),
        );
        let info = api
            .repo(asked.clone())
            .info()
            .map_err(|e| self.api_error(None, "looking up the repository", e))?;
        let commit = info.sha.trim().to_string();
        if commit.is_empty() {
            return Err(self.error(None, "the Hub returned no commit for this revision"));
        }
        let listed = |name: &str| info.siblings.iter().any(|f| f.rfilename == name);
        for file in REQUIRED_FILES {
            if listed(file) {
                continue;
            }
            if *file == "model.safetensors" {
                if let Some(pickle) = PICKLE_WEIGHTS.iter().find(|f| listed(f)) {
                    return Err(self.safetensors_only(pickle));
                }
                if listed("model.safetensors.index.json") {
                    return Err(self.error(
                        Some(file),
                        "the repository's weights are sharded (model.safetensors.index.json); \
                         kdlora loads a single model.safetensors",
                    ));
                }
            }
            return Err(self.error(
                Some(file),
                format!(
                    "the repository (commit {commit}) has no {file}; kdlora needs {}",
                    REQUIRED_FILES.join(", ")
                ),
            ));
        }
        // Download from the commit, not the branch, so that every file comes from one snapshot.
        let pinned = api.repo(Repo::with_revision(
            self.id.to_string(),
            RepoType::Model,
            commit.clone(),
        ));
        let snapshot = self.repo_dir().join("snapshots").join(&commit);
        let wanted = REQUIRED_FILES
            .iter()
            .chain(OPTIONAL_FILES.iter().filter(|f| listed(f)));
        for file in wanted {
            if snapshot.join(file).exists() {
                continue;
            }
            tracing::info!(
                id = self.id,
                revision = self.revision,
                commit = %commit,
                file = *file,
                endpoint = %s.endpoint,
                cache = %s.cache.display(),
                "downloading from the Hugging Face Hub"
            );
            let path = pinned
                .download(file)
                .map_err(|e| self.api_error(Some(file), &format!("downloading {file}"), e))?;
            if path.parent() != Some(snapshot.as_path()) {
                return Err(self.error(
                    Some(file),
                    format!(
                        "{file} was stored at {} instead of the snapshot {} (the Hub answered \
                         another commit)",
                        path.display(),
                        snapshot.display()
                    ),
                ));
            }
        }
        if self.revision != commit {
            Cache::new(s.cache.clone())
                .repo(asked)
                .create_ref(&commit)
                .map_err(|e| HubError::io(self.repo_dir().join("refs").join(self.revision), e))?;
        }
        if let Some(file) = missing_files(&snapshot).first() {
            return Err(self.error(
                Some(file),
                format!(
                    "{file} is missing from {} after download",
                    snapshot.display()
                ),
            ));
        }
        tracing::info!(id = self.id, revision = self.revision, commit = %commit, snapshot = %snapshot.display(), "model downloaded");
        Ok(ResolvedModel {
            path: snapshot,
            hub: Some(self.source(&commit)),
        })
    }
}

/// The required files a folder lacks (dangling cache symlinks count as missing).
fn missing_files(dir: &Path) -> Vec<&'static str> {
    REQUIRED_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    const OTHER: &str = "fedcba9876543210fedcba9876543210fedcba98";

    fn offline(cache: &Path) -> HubSettings {
        HubSettings {
            offline: true,
            ..HubSettings::new(cache)
        }
    }

    /// A cached snapshot of `org/name` at `commit`, with `refs/{rev}` pointing at it.
    fn snapshot(
        cache: &Path,
        id: &str,
        rev: Option<&str>,
        commit: &str,
        files: &[&str],
    ) -> PathBuf {
        let repo = cache.join(format!("models--{}", id.replace('/', "--")));
        let snap = repo.join("snapshots").join(commit);
        fs::create_dir_all(&snap).unwrap();
        for f in files {
            fs::write(snap.join(f), b"{}").unwrap();
        }
        if let Some(rev) = rev {
            let r = repo.join("refs").join(rev);
            fs::create_dir_all(r.parent().unwrap()).unwrap();
            fs::write(r, format!("{commit}\n")).unwrap();
        }
        snap
    }

    #[test]
    fn parses_hub_ids_and_rejects_paths() {
        assert_eq!(
            parse_hub_id("bert-base-uncased"),
            Some(("bert-base-uncased", "main"))
        );
        assert_eq!(
            parse_hub_id("microsoft/deberta-v3-base@v1.0"),
            Some(("microsoft/deberta-v3-base", "v1.0"))
        );
        assert_eq!(
            parse_hub_id("org/name@refs/pr/1"),
            Some(("org/name", "refs/pr/1"))
        );
        for path in [
            "/abs/model",
            "./model",
            "../model",
            "~/model",
            ".",
            "..",
            "a/b/c",
            "org/name/",
            "org//name",
            "dir\\model",
            "has space/x",
            "org/-bad",
            "org/a--b",
            "org/name@",
            "org/name@../x",
            "",
        ] {
            assert_eq!(parse_hub_id(path), None, "{path}");
        }
    }

    #[test]
    fn settings_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = HubSettings::from_vars(vars(&[("HOME", "/home/u")]));
        assert_eq!(s.cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!s.offline);
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        let s = HubSettings::from_vars(vars(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "/hf"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", "http://mirror.local/"),
            ("HF_TOKEN", "hf_x"),
        ]));
        assert_eq!(s.cache, PathBuf::from("/hf/hub"));
        assert!(s.offline);
        assert_eq!(s.endpoint, "http://mirror.local");
        assert_eq!(s.token.as_deref(), Some("hf_x"));
        let s = HubSettings::from_vars(vars(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/cache"),
            ("HF_HUB_OFFLINE", "TRUE"),
        ]));
        assert_eq!(s.cache, PathBuf::from("/cache"));
        assert!(s.offline);
        let s = HubSettings::from_vars(vars(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "0")]));
        assert!(!s.offline);
    }

    #[test]
    fn an_existing_local_folder_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        snapshot(&cache, "org/name", Some("main"), COMMIT, REQUIRED_FILES);
        // A local folder named like a Hub id is used as is, not looked up.
        let local = dir.path().join("org/name");
        fs::create_dir_all(&local).unwrap();
        let arg = local.to_str().unwrap();
        let r = resolve_model_in(arg, &offline(&cache)).unwrap();
        assert_eq!(r.path, local);
        assert_eq!(r.hub, None);
    }

    #[test]
    fn a_cached_id_resolves_to_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let snap = snapshot(cache, "org/name", Some("main"), COMMIT, REQUIRED_FILES);
        let r = resolve_model_in("org/name", &offline(cache)).unwrap();
        assert_eq!(r.path, snap);
        let hub = r.hub.unwrap();
        assert_eq!(
            (hub.id.as_str(), hub.revision.as_str()),
            ("org/name", "main")
        );
        assert_eq!(hub.commit, COMMIT);
        // The snapshot folder itself, passed later (a saved run config), keeps its origin.
        let again = resolve_model_in(snap.to_str().unwrap(), &offline(cache)).unwrap();
        assert_eq!(again.hub.unwrap().id, "org/name");
        // Ids without an organisation.
        let snap = snapshot(
            cache,
            "bert-base-uncased",
            Some("main"),
            OTHER,
            REQUIRED_FILES,
        );
        assert_eq!(
            resolve_model_in("bert-base-uncased", &offline(cache))
                .unwrap()
                .path,
            snap
        );
    }

    #[test]
    fn a_revision_uses_its_ref() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        snapshot(cache, "org/name", Some("main"), COMMIT, REQUIRED_FILES);
        let v1 = snapshot(cache, "org/name", Some("v1"), OTHER, REQUIRED_FILES);
        let r = resolve_model_in("org/name@v1", &offline(cache)).unwrap();
        assert_eq!(r.path, v1);
        let hub = r.hub.unwrap();
        assert_eq!((hub.revision.as_str(), hub.commit.as_str()), ("v1", OTHER));
        let pr = snapshot(
            cache,
            "org/name",
            Some("refs/pr/3"),
            "abc123",
            REQUIRED_FILES,
        );
        assert_eq!(
            resolve_model_in("org/name@refs/pr/3", &offline(cache))
                .unwrap()
                .path,
            pr
        );
    }

    #[test]
    fn a_commit_hash_revision_with_a_snapshot_works() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        snapshot(cache, "org/name", Some("main"), COMMIT, REQUIRED_FILES);
        // No ref names this commit: the snapshot folder alone is enough.
        let old = snapshot(cache, "org/name", None, OTHER, REQUIRED_FILES);
        let r = resolve_model_in(&format!("org/name@{OTHER}"), &offline(cache)).unwrap();
        assert_eq!(r.path, old);
        assert_eq!(r.hub.unwrap().commit, OTHER);
    }

    #[test]
    fn offline_and_uncached_names_the_id_and_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hub-cache");
        let err = resolve_model_in("org/absent@v2", &offline(&cache)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, HubError::Hub { .. }), "{text}");
        for part in [
            "org/absent",
            "`v2`",
            cache.to_str().unwrap(),
            "HF_HUB_OFFLINE",
            "local model folder",
        ] {
            assert!(text.contains(part), "`{part}` not in: {text}");
        }
    }

    #[test]
    fn a_missing_path_is_not_found_not_a_hub_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let settings = HubSettings::new(dir.path());
        for arg in [
            "/nonexistent/kdlora/model".to_string(),
            "./no-such-model".to_string(),
            "../no-such-model".to_string(),
            "models/nested/no-such".to_string(),
            dir.path().join("absent").to_string_lossy().to_string(),
        ] {
            // Online settings: a Hub lookup would try the network; a path never does.
            let err = resolve_model_in(&arg, &settings).unwrap_err();
            assert!(
                matches!(err, HubError::ModelNotFound { .. }),
                "{arg}: {err}"
            );
            let text = err.to_string();
            assert!(text.contains(&arg) && text.contains("not found"), "{text}");
        }
    }

    #[test]
    fn a_snapshot_without_weights_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        snapshot(
            cache,
            "org/partial",
            Some("main"),
            COMMIT,
            &["config.json", "tokenizer.json"],
        );
        let err = resolve_model_in("org/partial", &offline(cache)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, HubError::Hub { file: Some(f), .. } if f == "model.safetensors"),
            "{text}"
        );
        assert!(
            text.contains("model.safetensors") && text.contains("org/partial"),
            "{text}"
        );

        snapshot(
            cache,
            "org/pickle",
            Some("main"),
            COMMIT,
            &["config.json", "tokenizer.json", "pytorch_model.bin"],
        );
        let text = resolve_model_in("org/pickle", &HubSettings::new(cache))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("pytorch_model.bin") && text.contains("only safetensors"),
            "{text}"
        );
    }

    #[test]
    fn the_real_minilm_resolves_through_a_cache() {
        let shared = std::env::var("KDLORA_SHARED").unwrap_or_else(|_| "../../../shared".into());
        let model = Path::new(&shared).join("models/paraphrase-MiniLM-L3-v2");
        if !model.join("model.safetensors").is_file() {
            eprintln!("skipped: {} is absent", model.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot(
            dir.path(),
            "sentence-transformers/paraphrase-MiniLM-L3-v2",
            Some("main"),
            COMMIT,
            &[],
        );
        for f in REQUIRED_FILES {
            std::os::unix::fs::symlink(fs::canonicalize(model.join(f)).unwrap(), snap.join(f))
                .unwrap();
        }
        let r = resolve_model_in(
            "sentence-transformers/paraphrase-MiniLM-L3-v2",
            &offline(dir.path()),
        )
        .unwrap();
        assert_eq!(r.path, snap);
        let config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(r.path.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["num_hidden_layers"], 3);
    }

    /// The download path end to end against a loopback server speaking the Hub's protocol.
    mod loopback {
        use super::*;
        use std::io::{BufRead, BufReader, Write};
        use std::net::{TcpListener, TcpStream};

        /// Serves `org/name` at commit COMMIT (branch `main`) with `files`.
        fn serve(files: Vec<(&'static str, Vec<u8>)>) -> String {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = handle(stream, &files);
                }
            });
            format!("http://{addr}")
        }

        fn handle(mut stream: TcpStream, files: &[(&str, Vec<u8>)]) -> std::io::Result<()> {
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range = None;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = header.split_once(':')
                    && k.eq_ignore_ascii_case("range")
                {
                    range = v.trim().strip_prefix("bytes=").map(str::to_string);
                }
            }
            let respond =
                |stream: &mut TcpStream, status: &str, headers: &[String], body: &[u8]| {
                    let mut head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for h in headers {
                        head.push_str(h);
                        head.push_str("\r\n");
                    }
                    head.push_str("\r\n");
                    stream.write_all(head.as_bytes())?;
                    stream.write_all(body)
                };
            if let Some(rev) = path.strip_prefix("/api/models/org/name/revision/") {
                if rev != "main" && rev != COMMIT {
                    return respond(&mut stream, "404 Not Found", &[], b"{}");
                }
                let siblings: Vec<_> = files
                    .iter()
                    .map(|(f, _)| serde_json::json!({ "rfilename": f }))
                    .collect();
                let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
                return respond(
                    &mut stream,
                    "200 OK",
                    &["Content-Type: application/json".into()],
                    body.as_bytes(),
                );
            }
            let file = path
                .strip_prefix(&format!("/org/name/resolve/{COMMIT}/"))
                .and_then(|f| files.iter().find(|(n, _)| *n == f));
            let Some((name, bytes)) = file else {
                return respond(&mut stream, "404 Not Found", &[], b"");
            };
            let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                Some((a, b)) => (
                    a.parse().unwrap_or(0),
                    b.parse::<usize>()
                        .map(|e| e + 1)
                        .unwrap_or(bytes.len())
                        .min(bytes.len()),
                ),
                None => (0, bytes.len()),
            };
            let headers = [
                format!("ETag: \"etag-{name}\""),
                format!("X-Repo-Commit: {COMMIT}"),
                format!(
                    "Content-Range: bytes {start}-{}/{}",
                    end.max(1) - 1,
                    bytes.len()
                ),
            ];
            respond(
                &mut stream,
                "206 Partial Content",
                &headers,
                &bytes[start..end],
            )
        }

        fn proxied() -> bool {
            [
                "http_proxy",
                "HTTP_PROXY",
                "all_proxy",
                "ALL_PROXY",
                "https_proxy",
                "HTTPS_PROXY",
            ]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
        }

        #[test]
        fn downloads_into_the_cache_then_resolves_offline() {
            if proxied() {
                eprintln!(
                    "skipped: a proxy variable is set (ureq would send loopback requests to it)"
                );
                return;
            }
            let endpoint = serve(vec![
                ("config.json", br#"{"model_type":"bert"}"#.to_vec()),
                ("tokenizer.json", b"{\"tok\":1}".to_vec()),
                ("model.safetensors", vec![7u8; 3000]),
                ("vocab.txt", b"[PAD]\n".to_vec()),
                ("README.md", b"# card".to_vec()),
            ]);
            let dir = tempfile::tempdir().unwrap();
            let cache = dir.path().join("hub");
            let settings = HubSettings {
                endpoint: endpoint.clone(),
                ..HubSettings::new(&cache)
            };
            let r = resolve_model_in("org/name", &settings).unwrap();
            let snap = cache.join("models--org--name/snapshots").join(COMMIT);
            assert_eq!(r.path, snap);
            assert_eq!(r.hub.as_ref().unwrap().commit, COMMIT);
            assert_eq!(
                fs::read(snap.join("model.safetensors")).unwrap(),
                vec![7u8; 3000]
            );
            assert_eq!(fs::read(snap.join("vocab.txt")).unwrap(), b"[PAD]\n");
            // Optional files the repository lacks and files kdlora does not need: not fetched.
            assert!(!snap.join("tokenizer_config.json").exists());
            assert!(!snap.join("README.md").exists());
            let main = fs::read_to_string(cache.join("models--org--name/refs/main")).unwrap();
            assert_eq!(main.trim(), COMMIT);
            // Now cached: resolves offline to the same folder.
            assert_eq!(resolve_model_in("org/name", &offline(&cache)).unwrap(), r);
            // Unknown revision: the server's 404 is named.
            let text = resolve_model_in("org/name@nope", &settings)
                .unwrap_err()
                .to_string();
            assert!(
                text.contains("not found on") && text.contains("`nope`"),
                "{text}"
            );
        }

        #[test]
        fn a_pickle_only_repository_is_refused() {
            if proxied() {
                eprintln!("skipped: a proxy variable is set");
                return;
            }
            let endpoint = serve(vec![
                ("config.json", b"{}".to_vec()),
                ("tokenizer.json", b"{}".to_vec()),
                ("pytorch_model.bin", vec![0u8; 10]),
            ]);
            let dir = tempfile::tempdir().unwrap();
            let settings = HubSettings {
                endpoint,
                ..HubSettings::new(dir.path())
            };
            let text = resolve_model_in("org/name", &settings)
                .unwrap_err()
                .to_string();
            assert!(
                text.contains("pytorch_model.bin") && text.contains("only safetensors"),
                "{text}"
            );
            // Nothing was downloaded.
            assert!(!dir.path().join("models--org--name/snapshots").exists());
        }
    }
}
