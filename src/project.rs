//! Where project files come from: the file system, or memory (tests).

use crate::check::Loader;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads project files under a root folder.
pub struct FsLoader {
    root: PathBuf,
}

impl FsLoader {
    /// A loader for the project at `root`.
    pub fn new(root: impl Into<PathBuf>) -> FsLoader {
        FsLoader { root: root.into() }
    }

    /// The project folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Loader for FsLoader {
    fn read(&self, path: &str) -> Result<String, String> {
        let full = self.root.join(path);
        // A link may point anywhere; resolve it and keep the project bounds.
        let root = self.root.canonicalize().map_err(|e| e.to_string())?;
        let real = full.canonicalize().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => e.to_string(),
        })?;
        if !real.starts_with(&root) {
            return Err("it links to a file outside the project".into());
        }
        let bytes = std::fs::read(&real).map_err(|e| e.to_string())?;
        String::from_utf8(bytes).map_err(|_| "the file is not valid UTF-8".to_string())
    }
}

/// Project files held in memory.
#[derive(Default)]
pub struct MemoryLoader {
    files: BTreeMap<String, String>,
}

impl MemoryLoader {
    /// A loader over `(path, text)` pairs.
    pub fn new<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> MemoryLoader {
        MemoryLoader {
            files: files
                .into_iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect(),
        }
    }
}

impl Loader for MemoryLoader {
    fn read(&self, path: &str) -> Result<String, String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| "no such file".to_string())
    }
}
