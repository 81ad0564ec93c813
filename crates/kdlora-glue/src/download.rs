//! Downloading the official GLUE files into the original layout (as GLUE's download script
//! does): zip archives from `dl.fbaipublicfiles.com/glue/data`, the AX set as a single TSV, and
//! MRPC rebuilt from SentEval's copy of the Microsoft files plus GLUE's list of dev pairs.
//!
//! Every task folder appears atomically: files are fetched into temporary files, extracted into
//! a hidden staging folder inside the output folder, checked, and renamed into place. The
//! library never prints; progress is reported through a callback.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::GlueError;
use crate::task::GlueTask;

/// Where GLUE's archives are published.
pub const OFFICIAL_GLUE_BASE_URL: &str = "https://dl.fbaipublicfiles.com/glue/data";
/// Where SentEval publishes the MRPC text files.
pub const OFFICIAL_SENTEVAL_BASE_URL: &str =
    "https://dl.fbaipublicfiles.com/senteval/senteval_data";
/// Environment variable the CLI reads to override the base URL (all files then come from it).
pub const BASE_URL_ENV: &str = "KDLORA_GLUE_BASE_URL";

/// The URLs files are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlueSources {
    /// Base of the task archives, `AX.tsv` and `mrpc_dev_ids.tsv`.
    pub glue_base: String,
    /// Base of `msr_paraphrase_train.txt` and `msr_paraphrase_test.txt`.
    pub senteval_base: String,
}

impl Default for GlueSources {
    fn default() -> Self {
        Self {
            glue_base: OFFICIAL_GLUE_BASE_URL.to_string(),
            senteval_base: OFFICIAL_SENTEVAL_BASE_URL.to_string(),
        }
    }
}

impl GlueSources {
    /// Every file from one base URL (a mirror, or a local test server).
    pub fn from_base_url(base: &str) -> Self {
        let base = base.trim_end_matches('/').to_string();
        Self {
            glue_base: base.clone(),
            senteval_base: base,
        }
    }

    fn url(base: &str, file: &str) -> String {
        format!("{}/{file}", base.trim_end_matches('/'))
    }
}

/// Name of the archive a task is published as (`None` for MRPC and AX, which are not zips).
pub fn archive_name(task: GlueTask) -> Option<&'static str> {
    Some(match task {
        GlueTask::Cola => "CoLA.zip",
        GlueTask::Sst2 => "SST-2.zip",
        GlueTask::Stsb => "STS-B.zip",
        GlueTask::Qqp => "QQP-clean.zip",
        GlueTask::Mnli => "MNLI.zip",
        GlueTask::Qnli => "QNLIv2.zip",
        GlueTask::Rte => "RTE.zip",
        GlueTask::Wnli => "WNLI.zip",
        GlueTask::Mrpc | GlueTask::Ax => return None,
    })
}

/// Options of [`download_task`].
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Source URLs.
    pub sources: GlueSources,
    /// Replace a task folder that already exists (otherwise it is left alone).
    pub force: bool,
    /// Refuse any single file larger than this (bytes); guards against a wrong URL.
    pub max_bytes: u64,
    /// Connect and read timeout.
    pub timeout: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            sources: GlueSources::default(),
            force: false,
            max_bytes: 2 << 30,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Progress reports of [`download_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadEvent {
    /// A file transfer started; `total` is the announced size.
    Started {
        /// The URL.
        url: String,
        /// Content-Length, when the server sent one.
        total: Option<u64>,
    },
    /// Bytes received so far for the current file.
    Progress {
        /// Bytes so far.
        bytes: u64,
    },
    /// The current file is complete.
    Finished {
        /// Total bytes received.
        bytes: u64,
    },
    /// Extracting or converting into the output folder.
    Extracting {
        /// The task folder being built.
        folder: String,
    },
}

/// What [`download_task`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadOutcome {
    /// The task folder was created (or replaced with `force`).
    Downloaded(PathBuf),
    /// The task folder existed and `force` was off; nothing was fetched.
    AlreadyPresent(PathBuf),
}

/// Downloads one task into `out/<GLUE folder>` (e.g. `out/CoLA`, `out/diagnostic`).
pub fn download_task(
    task: GlueTask,
    out: &Path,
    options: &DownloadOptions,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<DownloadOutcome, GlueError> {
    let folder = task.original_dir();
    let target = out.join(folder);
    if target.exists() && !options.force {
        return Ok(DownloadOutcome::AlreadyPresent(target));
    }
    std::fs::create_dir_all(out).map_err(|e| GlueError::io(out, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".kdlora-download-")
        .tempdir_in(out)
        .map_err(|e| GlueError::io(out, e))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(options.timeout)
        .timeout_read(options.timeout)
        .build();
    let fetch = |url: &str, progress: &mut dyn FnMut(DownloadEvent)| {
        fetch_to_temp(&agent, url, staging.path(), options.max_bytes, progress)
    };

    match task {
        GlueTask::Ax => {
            let url = GlueSources::url(&options.sources.glue_base, "AX.tsv");
            let tmp = fetch(&url, progress)?;
            progress(DownloadEvent::Extracting {
                folder: folder.to_string(),
            });
            let dir = staging.path().join(folder);
            std::fs::create_dir_all(&dir).map_err(|e| GlueError::io(&dir, e))?;
            let dest = dir.join("diagnostic.tsv");
            tmp.persist(&dest)
                .map_err(|e| GlueError::io(&dest, e.error))?;
        }
        GlueTask::Mrpc => {
            let train_url =
                GlueSources::url(&options.sources.senteval_base, "msr_paraphrase_train.txt");
            let test_url =
                GlueSources::url(&options.sources.senteval_base, "msr_paraphrase_test.txt");
            let ids_url = GlueSources::url(&options.sources.glue_base, "mrpc_dev_ids.tsv");
            let train = fetch(&train_url, progress)?;
            let test = fetch(&test_url, progress)?;
            let ids = fetch(&ids_url, progress)?;
            progress(DownloadEvent::Extracting {
                folder: folder.to_string(),
            });
            let read = |f: &tempfile::NamedTempFile, url: &str| {
                std::fs::read(f.path()).map_err(|e| GlueError::Download {
                    url: url.to_string(),
                    problem: format!("reading the downloaded file: {e}"),
                })
            };
            let files = format_mrpc(
                &read(&train, &train_url)?,
                &read(&test, &test_url)?,
                &read(&ids, &ids_url)?,
            )
            .map_err(|problem| GlueError::Download {
                url: train_url.clone(),
                problem,
            })?;
            let dir = staging.path().join(folder);
            std::fs::create_dir_all(&dir).map_err(|e| GlueError::io(&dir, e))?;
            for (name, text) in files {
                let path = dir.join(name);
                std::fs::write(&path, text).map_err(|e| GlueError::io(&path, e))?;
            }
        }
        _ => {
            let name = archive_name(task).unwrap_or("archive.zip");
            let url = GlueSources::url(&options.sources.glue_base, name);
            let tmp = fetch(&url, progress)?;
            progress(DownloadEvent::Extracting {
                folder: folder.to_string(),
            });
            extract_zip(tmp.path(), staging.path())?;
            if !staging.path().join(folder).is_dir() {
                return Err(GlueError::Archive {
                    path: PathBuf::from(name),
                    problem: format!("has no top-level folder {folder}/"),
                });
            }
        }
    }

    let built = staging.path().join(folder);
    // `force`: move the old folder aside (it is deleted with the staging folder) and put it
    // back if the new one cannot be moved into place.
    let previous = staging.path().join(".previous");
    let replacing = target.exists();
    if replacing {
        std::fs::rename(&target, &previous).map_err(|e| GlueError::io(&target, e))?;
    }
    if let Err(e) = std::fs::rename(&built, &target) {
        if replacing {
            let _ = std::fs::rename(&previous, &target);
        }
        return Err(GlueError::io(&target, e));
    }
    tracing::debug!(task = %task, folder = %target.display(), "GLUE task downloaded");
    Ok(DownloadOutcome::Downloaded(target))
}

/// Streams `url` into a temporary file in `dir`, checking the byte count against the
/// Content-Length and `max_bytes`.
fn fetch_to_temp(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    max_bytes: u64,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<tempfile::NamedTempFile, GlueError> {
    let fail = |problem: String| GlueError::Download {
        url: url.to_string(),
        problem,
    };
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => fail(format!("HTTP status {code}")),
        ureq::Error::Transport(t) => fail(t.to_string()),
    })?;
    let total = match response.header("Content-Length") {
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| fail(format!("invalid Content-Length {v:?}")))?,
        ),
        None => None,
    };
    if let Some(t) = total
        && t > max_bytes
    {
        return Err(fail(format!(
            "announced size {t} bytes exceeds the limit of {max_bytes}"
        )));
    }
    progress(DownloadEvent::Started {
        url: url.to_string(),
        total,
    });
    let mut tmp = tempfile::Builder::new()
        .prefix(".kdlora-part-")
        .tempfile_in(dir)
        .map_err(|e| GlueError::io(dir, e))?;
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received: u64 = 0;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| fail(format!("after {received} bytes: {e}")))?;
        if n == 0 {
            break;
        }
        received += n as u64;
        if received > max_bytes {
            return Err(fail(format!("more than {max_bytes} bytes")));
        }
        tmp.write_all(&buf[..n])
            .map_err(|e| GlueError::io(tmp.path(), e))?;
        progress(DownloadEvent::Progress { bytes: received });
    }
    if let Some(t) = total
        && t != received
    {
        return Err(fail(format!(
            "size mismatch: Content-Length {t} but received {received} bytes"
        )));
    }
    if received == 0 {
        return Err(fail("empty response".to_string()));
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| GlueError::io(tmp.path(), e))?;
    progress(DownloadEvent::Finished { bytes: received });
    Ok(tmp)
}

/// Extracts a zip archive into `dest`, refusing entries that would land outside it and
/// checking each entry's size (the zip reader checks its CRC).
pub fn extract_zip(archive: &Path, dest: &Path) -> Result<(), GlueError> {
    let bad = |problem: String| GlueError::Archive {
        path: archive.to_path_buf(),
        problem,
    };
    let file = File::open(archive).map_err(|e| GlueError::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("entry {i}: {e}")))?;
        let name = entry.name().to_string();
        let relative = entry
            .enclosed_name()
            .ok_or_else(|| bad(format!("entry {name:?} has an unsafe path")))?;
        let path = dest.join(&relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(|e| GlueError::io(&path, e))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| GlueError::io(parent, e))?;
        }
        let expected = entry.size();
        let mut out = File::create(&path).map_err(|e| GlueError::io(&path, e))?;
        let written =
            std::io::copy(&mut entry, &mut out).map_err(|e| bad(format!("entry {name:?}: {e}")))?;
        if written != expected {
            return Err(bad(format!(
                "entry {name:?}: {written} bytes extracted, {expected} declared"
            )));
        }
    }
    Ok(())
}

/// Builds MRPC's `train.tsv`, `dev.tsv` and `test.tsv` from the Microsoft files, as GLUE's
/// download script does: train rows whose `#1 ID`/`#2 ID` pair is listed in the dev ids go to
/// `dev.tsv` (both keep the source header), test rows get an `index` column.
pub fn format_mrpc(
    train: &[u8],
    test: &[u8],
    dev_ids: &[u8],
) -> Result<Vec<(&'static str, String)>, String> {
    let text = |bytes: &[u8], what: &str| {
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("{what} is not UTF-8: {e}"))
    };
    let train = text(train, "msr_paraphrase_train.txt")?;
    let test = text(test, "msr_paraphrase_test.txt")?;
    let dev_ids = text(dev_ids, "mrpc_dev_ids.tsv")?;
    let rows = |s: &str| -> Vec<String> {
        s.split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    };
    let ids: HashSet<(String, String)> = rows(&dev_ids)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f.first().unwrap_or(&"").trim().to_string(),
                f.get(1).unwrap_or(&"").trim().to_string(),
            )
        })
        .collect();
    let train_rows = rows(&train);
    let Some((header, body)) = train_rows.split_first() else {
        return Err("msr_paraphrase_train.txt is empty".to_string());
    };
    let mut train_out = format!("{header}\n");
    let mut dev_out = format!("{header}\n");
    for (i, row) in body.iter().enumerate() {
        let f: Vec<&str> = row.split('\t').collect();
        if f.len() != 5 {
            return Err(format!(
                "msr_paraphrase_train.txt line {}: expected 5 fields, found {}",
                i + 2,
                f.len()
            ));
        }
        let line = format!("{}\t{}\t{}\t{}\t{}\n", f[0], f[1], f[2], f[3], f[4]);
        if ids.contains(&(f[1].to_string(), f[2].to_string())) {
            dev_out.push_str(&line);
        } else {
            train_out.push_str(&line);
        }
    }
    let test_rows = rows(&test);
    let mut test_out = String::from("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n");
    for (i, row) in test_rows.iter().skip(1).enumerate() {
        let f: Vec<&str> = row.split('\t').collect();
        if f.len() != 5 {
            return Err(format!(
                "msr_paraphrase_test.txt line {}: expected 5 fields, found {}",
                i + 2,
                f.len()
            ));
        }
        test_out.push_str(&format!("{i}\t{}\t{}\t{}\t{}\n", f[1], f[2], f[3], f[4]));
    }
    Ok(vec![
        ("train.tsv", train_out),
        ("dev.tsv", dev_out),
        ("test.tsv", test_out),
    ])
}
