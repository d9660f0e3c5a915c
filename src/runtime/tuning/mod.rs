//! Autotune results that ftl ships for the GPUs it has been measured on.
//!
//! On CUDA, burn picks among several kernels for each product and reduction
//! by timing them all on the first call with a new shape: cubecl's autotuner.
//! Timing a candidate means compiling it first, and almost all of a cold
//! start is spent compiling candidates that lose (on the H200, about 385 of
//! the 415 s before MiniLM's first LoRA step; BENCHMARKS.md). Once tuned,
//! cubecl keeps the winners in its autotune cache, and a later run compiles
//! only those.
//!
//! For a GPU model listed here, ftl writes the winners it found on that GPU
//! into cubecl's autotune cache before the first step, so a first run there
//! compiles only the kernels it uses. Entries the cache already holds are
//! left as they are; shapes the tables do not cover are tuned as usual; and
//! cubecl checks every entry against its own list of candidates (a checksum
//! in each key) and tunes again when they differ. Set `FTL_SHIPPED_TUNING=off`
//! to tune everything on the machine at hand.
//!
//! A table is a JSON-lines file: one cubecl autotune entry per line (its
//! `key` and `value`, as cubecl writes them) with the name of the cubecl
//! table it belongs to (`table`). `bench/tuning_tables.sh` makes them.
//!
//! A table covers the kernels of the code it was made with. A change to
//! what a training step runs (a product that fuses another epilogue, a
//! reduction of another length) brings keys the table lacks, and a first
//! run tunes them, compiling every candidate: on the H200, 13 such keys
//! made MiniLM full fine-tuning's cold first step take 98 s instead of
//! about 30 (BENCHMARKS.md). `KEEP_SHIPPED=1 bench/tuning_tables.sh` adds
//! the missing keys to the shipped table.

use std::path::{Path, PathBuf};

/// The tables, by GPU model (see [`gpu_slug`]).
const SHIPPED: &[(&str, &str)] = &[("nvidia-h200", include_str!("nvidia-h200.jsonl"))];

/// The version of cubecl whose cache layout the tables are written in: the
/// folder under `autotune/` where cubecl 0.10 (burn 0.21) reads them.
const CUBECL_CACHE_VERSION: &str = "0.10.0";

/// A file-name-safe name for a GPU model, as the CUDA driver names it:
/// `NVIDIA H200` becomes `nvidia-h200`, `NVIDIA GeForce RTX 4090` becomes
/// `nvidia-geforce-rtx-4090`.
pub fn gpu_slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    while slug.ends_with('-') {
        slug.pop();
    }
    if slug.is_empty() {
        "unnamed-gpu".into()
    } else {
        slug
    }
}

/// The tuning table ftl ships for this GPU model, if any.
pub fn shipped(gpu: &str) -> Option<&'static str> {
    SHIPPED.iter().find(|(g, _)| *g == gpu).map(|(_, t)| *t)
}

/// Whether the user turned the shipped tables off (`FTL_SHIPPED_TUNING=off`).
pub fn turned_off() -> bool {
    std::env::var("FTL_SHIPPED_TUNING")
        .is_ok_and(|v| matches!(v.trim(), "off" | "0" | "false" | "no"))
}

/// Where cubecl keeps one autotune table of CUDA device `ordinal`, for the
/// cache rooted at `root`.
pub fn table_path(root: &Path, ordinal: u32, table: &str) -> PathBuf {
    root.join("autotune")
        .join(CUBECL_CACHE_VERSION)
        .join(format!("device-0-{ordinal}-cuda"))
        .join(format!("{table}.json.log"))
}

/// What went wrong reading a table.
#[derive(Debug)]
pub enum SeedError {
    /// A line of the table is not an entry (the table is corrupt).
    Table {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// The cache could not be read or written.
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for SeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedError::Table { line, why } => write!(f, "line {line} of the tuning table: {why}"),
            SeedError::Io(path, e) => write!(f, "{}: {e}", path.display()),
        }
    }
}

/// One entry of a table: the cubecl table it goes to, its key without the
/// checksum (what tells two entries apart), and the line cubecl reads.
struct Entry {
    table: String,
    key: String,
    line: String,
}

fn entries(text: &str) -> Result<Vec<Entry>, SeedError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| SeedError::Table {
            line: i + 1,
            why: why.into(),
        };
        let mut value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let object = value.as_object_mut().ok_or_else(|| bad("not an object"))?;
        let table = object
            .shift_remove("table")
            .and_then(|t| t.as_str().map(str::to_owned))
            .filter(|t| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            })
            .ok_or_else(|| bad("no usable `table` name"))?;
        let key = object
            .get("key")
            .and_then(|k| k.get("key"))
            .ok_or_else(|| bad("no `key.key`"))?
            .to_string();
        if object
            .get("value")
            .and_then(|v| v.get("fastest_index"))
            .and_then(|i| i.as_u64())
            .is_none()
        {
            return Err(bad("no `value.fastest_index`"));
        }
        out.push(Entry {
            table,
            key,
            line: value.to_string(),
        });
    }
    Ok(out)
}

/// Adds a table's entries to the autotune cache rooted at `root` for CUDA
/// device `ordinal`, skipping keys the cache already has. Returns how many
/// were added.
pub fn seed(text: &str, root: &Path, ordinal: u32) -> Result<usize, SeedError> {
    let entries = entries(text)?;
    let mut tables: Vec<&str> = entries.iter().map(|e| e.table.as_str()).collect();
    tables.sort_unstable();
    tables.dedup();
    let mut added = 0;
    for table in tables {
        let path = table_path(root, ordinal, table);
        let io = |e| SeedError::Io(path.clone(), e);
        let existing = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut have: std::collections::HashSet<String> = existing
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                v.get("key")
                    .and_then(|k| k.get("key"))
                    .map(|k| k.to_string())
            })
            .collect();
        // cubecl reads an entry only up to its newline: an unfinished last
        // line must not swallow the first one added.
        let mut text = if existing.is_empty() || existing.ends_with('\n') {
            String::new()
        } else {
            "\n".to_string()
        };
        for e in entries.iter().filter(|e| e.table == table) {
            if have.insert(e.key.clone()) {
                text.push_str(&e.line);
                text.push('\n');
                added += 1;
            }
        }
        if text.trim().is_empty() {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(io)?;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = concat!(
        r#"{"table":"burn_cubecl-kernel-matmul-tune-base","key":{"key":{"m":64},"checksum":"c1"},"value":{"fastest_index":3,"results":[]}}"#,
        "\n",
        r#"{"table":"burn_cubecl-kernel-matmul-tune-base","key":{"key":{"m":128},"checksum":"c1"},"value":{"fastest_index":5,"results":[]}}"#,
        "\n",
        r#"{"table":"burn_cubecl_fusion-optim-reduce-tune","key":{"key":{"n":7},"checksum":"c2"},"value":{"fastest_index":0,"results":[]}}"#,
        "\n",
    );

    #[test]
    fn gpu_names_become_folder_names() {
        assert_eq!(gpu_slug("NVIDIA H200"), "nvidia-h200");
        assert_eq!(
            gpu_slug("  NVIDIA GeForce RTX 4090 "),
            "nvidia-geforce-rtx-4090"
        );
        assert_eq!(gpu_slug("NVIDIA A100-SXM4-80GB"), "nvidia-a100-sxm4-80gb");
        assert_eq!(gpu_slug("../.."), "unnamed-gpu");
        assert_eq!(gpu_slug(""), "unnamed-gpu");
    }

    #[test]
    fn a_table_fills_an_empty_cache_and_adds_only_missing_keys_later() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // The user's cache already chose differently for m = 64, and its last
        // line was cut off by an interrupted write.
        let matmul = table_path(root, 1, "burn_cubecl-kernel-matmul-tune-base");
        std::fs::create_dir_all(matmul.parent().unwrap()).unwrap();
        let own =
            r#"{"key":{"key":{"m":64},"checksum":"c1"},"value":{"fastest_index":9,"results":[]}}"#;
        std::fs::write(&matmul, format!("{own}\n{{\"key\":{{\"ke")).unwrap();

        assert_eq!(seed(TABLE, root, 1).unwrap(), 2);
        let text = std::fs::read_to_string(&matmul).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], own, "the user's entry stays first and unchanged");
        assert_eq!(lines[1], r#"{"key":{"ke"#);
        assert_eq!(
            lines[2],
            r#"{"key":{"key":{"m":128},"checksum":"c1"},"value":{"fastest_index":5,"results":[]}}"#,
            "the added entry is cubecl's own line, without the table name"
        );
        assert_eq!(lines.len(), 3);
        assert!(text.ends_with('\n'));
        let reduce = table_path(root, 1, "burn_cubecl_fusion-optim-reduce-tune");
        assert_eq!(std::fs::read_to_string(&reduce).unwrap().lines().count(), 1);
        // Device 0's cache is another folder, untouched.
        assert!(!table_path(root, 0, "burn_cubecl-kernel-matmul-tune-base").exists());
        // Seeding again adds nothing.
        assert_eq!(seed(TABLE, root, 1).unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&matmul).unwrap(), text);
    }

    #[test]
    fn a_corrupt_table_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        for (table, line, what) in [
            ("{\"key\":1}\nnot json\n", 1, "table"),
            (
                r#"{"table":"../x","key":{"key":1},"value":{"fastest_index":0}}"#,
                1,
                "table",
            ),
            (
                concat!(
                    r#"{"table":"t","key":{"key":1},"value":{"fastest_index":0}}"#,
                    "\n",
                    r#"{"table":"t","key":{"key":2},"value":{}}"#
                ),
                2,
                "fastest_index",
            ),
        ] {
            let err = seed(table, dir.path(), 0).expect_err("corrupt");
            let said = err.to_string();
            assert!(said.starts_with(&format!("line {line} ")), "{said}");
            assert!(said.contains(what), "{said}");
        }
        // Nothing was written for a table refused on its first line.
        assert!(!dir.path().join("autotune").exists());
    }

    #[test]
    fn every_shipped_table_is_well_formed_and_names_cubecl_tables() {
        for (gpu, text) in SHIPPED {
            assert_eq!(gpu_slug(gpu), *gpu);
            let entries = entries(text).unwrap_or_else(|e| panic!("{gpu}: {e}"));
            assert!(!entries.is_empty(), "{gpu}: empty table");
            for e in &entries {
                assert!(
                    e.table.starts_with("burn_cubecl"),
                    "{gpu}: unexpected table {}",
                    e.table
                );
            }
        }
    }

    /// The seeded files are where cubecl reads its autotune cache, in the
    /// format it reads: cubecl's own cache loads every entry back.
    #[cfg(feature = "cuda")]
    #[test]
    fn cubecl_reads_the_seeded_entries_back() {
        use cubecl::cache::{Cache, CacheOption};
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(seed(TABLE, dir.path(), 0).unwrap(), 3);
        // As cubecl's TuneCache opens it: `{device}/{name}` under `autotune`.
        let open = |table: &str| {
            Cache::<serde_json::Value, serde_json::Value>::new(
                format!("device-0-0-cuda/{table}"),
                CacheOption::default().root(dir.path()).name("autotune"),
            )
        };
        let matmul = open("burn_cubecl-kernel-matmul-tune-base");
        assert_eq!(matmul.len(), 2);
        let key = serde_json::json!({"key": {"m": 128}, "checksum": "c1"});
        assert_eq!(matmul.get(&key).unwrap()["fastest_index"], 5);
        assert_eq!(open("burn_cubecl_fusion-optim-reduce-tune").len(), 1);
    }
}
