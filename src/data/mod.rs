//! Reading labelled text: finding files, parsing TSV, CSV and JSONL rows,
//! mapping labels, splitting and limiting, and batching by length.
//!
//! Nothing here knows about tensors: the runtime turns [`Example`]s into
//! token batches. Every bad row is an error naming the file, the line and the
//! fix, unless the pipeline says `bad_rows = skip`, in which case the skipped
//! rows are counted and kept for the report.

pub mod batch;
pub mod read;
pub mod rng;

use crate::config::{DatasetConfig, FileRef, Split};
use std::fmt;
use std::path::{Path, PathBuf};

/// One labelled example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// The text, trimmed.
    pub text: String,
    /// The label id (index into the dataset's labels).
    pub label: u32,
    /// 1-based line of the row's first line in its file.
    pub line: u64,
}

/// A row that could not be read, when `bad_rows = skip`.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRow {
    /// The file as shown to the user.
    pub file: String,
    /// 1-based line.
    pub line: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// Why data could not be read.
#[derive(Clone, Debug, PartialEq)]
pub enum DataError {
    /// A file was not found; `looked` lists every place tried.
    NotFound {
        /// The file as written in the pipeline.
        file: String,
        /// Where ftl looked.
        looked: Vec<PathBuf>,
        /// How to make it findable.
        hint: String,
    },
    /// A file could not be read.
    Io {
        /// The file.
        file: String,
        /// The system's reason.
        reason: String,
    },
    /// The header lacks a column the pipeline names.
    MissingColumn {
        /// The file.
        file: String,
        /// The column the pipeline names.
        column: String,
        /// The columns the file has.
        available: Vec<String>,
        /// The pipeline field that names it (`dataset.text`).
        field: &'static str,
    },
    /// A row that cannot be used.
    BadRow {
        /// The file.
        file: String,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// A file's content differs from the digest the pipeline pins.
    Checksum {
        /// The file.
        file: String,
        /// The pinned sha256.
        expected: String,
        /// The file's sha256.
        found: String,
    },
    /// A split ended up with no rows.
    Empty {
        /// Which split.
        split: String,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::NotFound { file, looked, hint } => {
                write!(f, "data file `{file}` not found; looked in:")?;
                for l in looked {
                    write!(f, "\n  {}", l.display())?;
                }
                write!(f, "\nhint: {hint}")
            }
            DataError::Io { file, reason } => write!(f, "cannot read {file}: {reason}"),
            DataError::MissingColumn {
                file,
                column,
                available,
                field,
            } => write!(
                f,
                "{file}: no column `{column}` (named by `{field}`); the columns are {}\nhint: set `{field}` to one of them",
                available
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DataError::BadRow {
                file,
                line,
                problem,
                fix,
            } => write!(f, "{file}:{line}: {problem}\nhint: {fix}"),
            DataError::Checksum {
                file,
                expected,
                found,
            } => write!(
                f,
                "{file}: sha256 is {found}, but the pipeline pins {expected}\nhint: the file differs from the one the pipeline was written for; get the original, or update `dataset.sha256`"
            ),
            DataError::Empty { split } => write!(
                f,
                "the `{split}` split has no rows\nhint: check the file and `dataset.limit`"
            ),
        }
    }
}

impl std::error::Error for DataError {}

/// Where `data("...")` files are looked up: each folder of `FTL_DATA_PATH`
/// (`:`-separated), then `ftl`'s cache (`$FTL_HOME/data`, default
/// `$XDG_CACHE_HOME/ftl/data` or `~/.cache/ftl/data`).
pub fn data_search_path() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("FTL_DATA_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    out.push(ftl_home().join("data"));
    out
}

/// ftl's own folder for caches: `$FTL_HOME`, else `ftl` in the user's cache
/// folder (`$XDG_CACHE_HOME` or `~/.cache` on Linux).
pub fn ftl_home() -> PathBuf {
    match std::env::var_os("FTL_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("ftl"),
    }
}

/// The path of a data file on this machine.
pub fn resolve(
    file: &FileRef,
    project_root: &Path,
    search: &[PathBuf],
) -> Result<PathBuf, DataError> {
    match file {
        FileRef::Project { path } => {
            let full = project_root.join(path);
            if full.is_file() {
                Ok(full)
            } else {
                Err(DataError::NotFound {
                    file: path.clone(),
                    looked: vec![full],
                    hint: "paths in a pipeline are relative to the `.ft` file that names them"
                        .into(),
                })
            }
        }
        FileRef::DataPath { name } => {
            let looked: Vec<PathBuf> = search.iter().map(|d| d.join(name)).collect();
            match looked.iter().find(|p| p.is_file()) {
                Some(p) => Ok(p.clone()),
                None => Err(DataError::NotFound {
                    file: format!("data(\"{name}\")"),
                    looked,
                    hint: format!(
                        "put the folder that holds `{name}` on FTL_DATA_PATH (e.g. `export FTL_DATA_PATH=/path/to/data`), or copy it into {}",
                        ftl_home().join("data").display()
                    ),
                }),
            }
        }
    }
}

/// The rows of each split, ready for tokenizing.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// Training rows.
    pub train: Vec<Example>,
    /// Evaluation rows, if the dataset has the split.
    pub eval: Option<Vec<Example>>,
    /// Test rows, if the dataset has the split.
    pub test: Option<Vec<Example>>,
    /// Rows skipped under `bad_rows = skip`.
    pub skipped: Vec<BadRow>,
}

/// Reads a dataset as the plan describes it: files found, rows parsed,
/// held-out splits carved from training with their seed, limits applied (the
/// first N rows of each split, in file order).
pub fn load(
    cfg: &DatasetConfig,
    project_root: &Path,
    search: &[PathBuf],
) -> Result<Loaded, DataError> {
    let mut skipped = Vec::new();
    let mut read_file = |file: &FileRef, role: &str| -> Result<Vec<Example>, DataError> {
        let path = resolve(file, project_root, search)?;
        let shown = match file {
            FileRef::Project { path } => path.clone(),
            FileRef::DataPath { .. } => path.display().to_string(),
        };
        if let Some(expected) = cfg.sha256.get(role) {
            let found = sha256_file(&path).map_err(|e| DataError::Io {
                file: shown.clone(),
                reason: e.to_string(),
            })?;
            if &found != expected {
                return Err(DataError::Checksum {
                    file: shown,
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let table = read::read_table(&path, &shown, cfg)?;
        skipped.extend(table.skipped);
        Ok(table.examples)
    };
    let mut train = read_file(&cfg.train, "train")?;
    let mut carve = |split: &Option<Split>,
                     role: &str,
                     train: &mut Vec<Example>|
     -> Result<Option<Vec<Example>>, DataError> {
        match split {
            None => Ok(None),
            Some(Split::File { file }) => read_file(file, role).map(Some),
            Some(Split::Holdout { fraction, seed }) => Ok(Some(holdout(train, *fraction, *seed))),
        }
    };
    let mut eval = carve(&cfg.eval, "eval", &mut train)?;
    let mut test = carve(&cfg.test, "test", &mut train)?;
    let limit = |rows: &mut Vec<Example>, n: Option<u64>| {
        if let Some(n) = n {
            rows.truncate(n as usize);
        }
    };
    limit(&mut train, cfg.limit.train);
    if let Some(e) = eval.as_mut() {
        limit(e, cfg.limit.eval);
    }
    if let Some(t) = test.as_mut() {
        limit(t, cfg.limit.test);
    }
    for (name, rows) in [
        ("train", Some(&train)),
        ("eval", eval.as_ref()),
        ("test", test.as_ref()),
    ] {
        if rows.is_some_and(|r| r.is_empty()) {
            return Err(DataError::Empty { split: name.into() });
        }
    }
    Ok(Loaded {
        train,
        eval,
        test,
        skipped,
    })
}

/// The sha256 of a file, in lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Moves a seeded random share of `train` into a new split; both keep file order.
pub fn holdout(train: &mut Vec<Example>, fraction: f64, seed: u64) -> Vec<Example> {
    let n = train.len();
    let take = ((n as f64) * fraction)
        .round()
        .clamp(if n > 1 { 1.0 } else { 0.0 }, n.saturating_sub(1) as f64) as usize;
    let mut order: Vec<usize> = (0..n).collect();
    rng::Rng::new(seed).shuffle(&mut order);
    let mut chosen = vec![false; n];
    for &i in &order[..take] {
        chosen[i] = true;
    }
    let mut kept = Vec::with_capacity(n - take);
    let mut held = Vec::with_capacity(take);
    for (i, ex) in std::mem::take(train).into_iter().enumerate() {
        if chosen[i] {
            held.push(ex)
        } else {
            kept.push(ex)
        }
    }
    *train = kept;
    held
}
