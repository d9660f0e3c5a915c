//! Reading real and broken data files as a pipeline describes them.

use ftl::config::{BadRows, DatasetConfig, FileRef, Format, Limits, Split};
use ftl::data::{self, DataError};
use std::path::PathBuf;

/// Where SST-2 is: `FTL_DATA_PATH`, else `../shared/data` beside the repo.
fn shared_data() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("FTL_DATA_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let found: Vec<PathBuf> = dirs
        .into_iter()
        .filter(|d| d.join("sst2/train.tsv").is_file())
        .collect();
    assert!(
        !found.is_empty(),
        "SST-2 not found: set FTL_DATA_PATH to the folder holding sst2/train.tsv"
    );
    found
}

fn sst2() -> DatasetConfig {
    DatasetConfig {
        name: Some("sst2".into()),
        format: Format::Tsv,
        train: FileRef::DataPath {
            name: "sst2/train.tsv".into(),
        },
        eval: Some(Split::File {
            file: FileRef::DataPath {
                name: "sst2/dev.tsv".into(),
            },
        }),
        test: None,
        text: "sentence".into(),
        label: "label".into(),
        labels: vec!["negative".into(), "positive".into()],
        limit: Limits::default(),
        max_tokens: 64,
        shuffle: true,
        seed: 42,
        bad_rows: BadRows::Error,
        sha256: [
            (
                "train".to_string(),
                "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1".to_string(),
            ),
            (
                "eval".to_string(),
                "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0".to_string(),
            ),
        ]
        .into(),
    }
}

#[test]
fn sst2_reads_whole_with_the_published_label_counts() {
    let loaded =
        data::load(&sst2(), std::path::Path::new("."), &shared_data()).expect("SST-2 loads");
    assert_eq!(loaded.train.len(), 67_349);
    let eval = loaded.eval.expect("dev split");
    assert_eq!(eval.len(), 872);
    let positives = |rows: &[data::Example]| rows.iter().filter(|e| e.label == 1).count();
    assert_eq!(positives(&loaded.train), 37_569);
    assert_eq!(positives(&eval), 444);
    assert_eq!(
        loaded.train[0].text,
        "hide new secretions from the parental units"
    );
    assert_eq!(loaded.train[0].line, 2);
    assert!(loaded.skipped.is_empty());
}

#[test]
fn limits_take_the_first_rows_and_holdout_is_seeded() {
    let mut cfg = sst2();
    cfg.limit.train = Some(8_000);
    cfg.eval = Some(Split::Holdout {
        fraction: 0.1,
        seed: 3,
    });
    let a = data::load(&cfg, std::path::Path::new("."), &shared_data()).expect("loads");
    let b = data::load(&cfg, std::path::Path::new("."), &shared_data()).expect("loads");
    assert_eq!(a, b, "the same seed gives the same split");
    let eval = a.eval.expect("held out");
    assert_eq!(eval.len(), 6_735);
    assert_eq!(a.train.len(), 8_000);
    let held: std::collections::BTreeSet<u64> = eval.iter().map(|e| e.line).collect();
    assert!(
        a.train.iter().all(|e| !held.contains(&e.line)),
        "held-out rows leave training"
    );
    cfg.eval = Some(Split::Holdout {
        fraction: 0.1,
        seed: 4,
    });
    let c = data::load(&cfg, std::path::Path::new("."), &shared_data()).expect("loads");
    assert_ne!(c.eval, Some(eval), "another seed, another split");
}

#[test]
fn a_missing_data_file_says_where_ftl_looked() {
    let mut cfg = sst2();
    cfg.train = FileRef::DataPath {
        name: "imdb/train.tsv".into(),
    };
    let err = data::load(
        &cfg,
        std::path::Path::new("."),
        &[PathBuf::from("/nowhere/a"), PathBuf::from("/nowhere/b")],
    )
    .expect_err("missing");
    let text = err.to_string();
    assert!(
        text.contains("`data(\"imdb/train.tsv\")` not found"),
        "{text}"
    );
    assert!(
        text.contains("/nowhere/a/imdb/train.tsv") && text.contains("/nowhere/b/imdb/train.tsv"),
        "{text}"
    );
    assert!(text.contains("FTL_DATA_PATH"), "{text}");
}

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn project(name: &str, files: &[(&str, &[u8])]) -> Tmp {
    let dir = std::env::temp_dir().join(format!("ftl-data-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    for (f, bytes) in files {
        std::fs::write(dir.join(f), bytes).expect("write");
    }
    Tmp(dir)
}

fn local(file: &str, format: Format, bad_rows: BadRows) -> DatasetConfig {
    DatasetConfig {
        name: None,
        format,
        train: FileRef::Project { path: file.into() },
        eval: None,
        test: None,
        text: "text".into(),
        label: "label".into(),
        labels: vec!["neg".into(), "pos".into()],
        limit: Limits::default(),
        max_tokens: 64,
        shuffle: true,
        seed: 1,
        bad_rows,
        sha256: Default::default(),
    }
}

#[test]
fn csv_with_quotes_commas_and_newlines() {
    let csv = b"text,label\n\"good, really\",pos\n\"she said \"\"no\"\"\nand left\",0\nplain,1\n";
    let p = project("csv", &[("d.csv", csv)]);
    let t = data::load(&local("d.csv", Format::Csv, BadRows::Error), &p.0, &[]).expect("reads");
    let rows: Vec<(&str, u32, u64)> = t
        .train
        .iter()
        .map(|e| (e.text.as_str(), e.label, e.line))
        .collect();
    assert_eq!(
        rows,
        [
            ("good, really", 1, 2),
            ("she said \"no\"\nand left", 0, 3),
            ("plain", 1, 5)
        ]
    );
}

#[test]
fn jsonl_with_numeric_and_named_labels() {
    let jsonl = b"{\"text\": \"fine\", \"label\": 1}\n\n{\"text\": \"bad\", \"label\": \"neg\"}\n";
    let p = project("jsonl", &[("d.jsonl", jsonl)]);
    let t = data::load(&local("d.jsonl", Format::Jsonl, BadRows::Error), &p.0, &[]).expect("reads");
    assert_eq!(
        t.train
            .iter()
            .map(|e| (e.label, e.line))
            .collect::<Vec<_>>(),
        [(1, 1), (0, 3)]
    );
}

#[test]
fn each_kind_of_bad_row_names_file_line_and_fix() {
    let cases: &[(&str, Format, &[u8], u64, &str)] = &[
        (
            "unknown_label",
            Format::Tsv,
            b"text\tlabel\nok\t1\nhmm\tmaybe\n",
            3,
            "unknown label `maybe`",
        ),
        (
            "empty_text",
            Format::Tsv,
            b"text\tlabel\n   \t1\n",
            2,
            "the text is empty",
        ),
        (
            "missing_field",
            Format::Tsv,
            b"text\tlabel\nonly text\n",
            2,
            "the row has no `label` value",
        ),
        (
            "invalid_utf8",
            Format::Tsv,
            b"text\tlabel\nok\t1\n\xff\xfe\t0\n",
            3,
            "not valid UTF-8",
        ),
        (
            "bad_json",
            Format::Jsonl,
            b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \n",
            2,
            "not a JSON object",
        ),
        (
            "label_id_too_big",
            Format::Csv,
            b"text,label\na,0\nb,2\n",
            3,
            "unknown label `2`",
        ),
    ];
    for (name, format, bytes, line, problem) in cases {
        let file = format!(
            "d.{}",
            match format {
                Format::Tsv => "tsv",
                Format::Csv => "csv",
                Format::Jsonl => "jsonl",
            }
        );
        let p = project(name, &[(file.as_str(), bytes)]);
        let err = data::load(&local(&file, *format, BadRows::Error), &p.0, &[]).expect_err(name);
        match &err {
            DataError::BadRow {
                file: f,
                line: l,
                problem: pr,
                fix,
            } => {
                assert_eq!((f.as_str(), *l), (file.as_str(), *line), "{name}");
                assert!(pr.contains(problem), "{name}: {pr}");
                assert!(
                    fix.contains("bad_rows = skip") || fix.contains("JSON"),
                    "{name}: {fix}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
        let skipped = data::load(&local(&file, *format, BadRows::Skip), &p.0, &[]);
        match skipped {
            Ok(t) => assert_eq!(
                t.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
                [*line],
                "{name}"
            ),
            Err(DataError::Empty { .. }) => {}
            Err(e) => panic!("{name} with skip: {e}"),
        }
    }
}

#[test]
fn a_file_that_differs_from_its_pinned_digest_is_refused() {
    let p = project("digest", &[("d.tsv", b"text\tlabel\nhi\t1\n")]);
    let mut cfg = local("d.tsv", Format::Tsv, BadRows::Error);
    cfg.sha256.insert("train".into(), "0".repeat(64));
    let err = data::load(&cfg, &p.0, &[]).expect_err("digest differs");
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("dataset.sha256"), "{err}");
}

#[test]
fn a_missing_column_lists_the_columns() {
    let p = project("cols", &[("d.tsv", b"sentence\tstars\nhi\t1\n")]);
    let err = data::load(&local("d.tsv", Format::Tsv, BadRows::Error), &p.0, &[])
        .expect_err("no text column");
    let text = err.to_string();
    assert!(
        text.contains("no column `text` (named by `dataset.text`)")
            && text.contains("`sentence`, `stars`"),
        "{text}"
    );
}
