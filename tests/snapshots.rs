//! File-driven snapshot tests, one function per stage.
//!
//! - `tests/cases/*.ft`: one mistake each (the header comment names the
//!   code); the snapshot shows the source and the rendered diagnostics.
//!   Files named `ok_*.ft` are valid; their snapshot is the plan.
//! - `pipelines/*.ft`: the plan of every example pipeline.
//! - `stdlib/*.ft`: the checked declarations of every stdlib module.
//! - every `.ft` file: its formatted text, and formatting is idempotent.
//!
//! Run `INSTA_UPDATE=always cargo test --test snapshots` after an intended
//! change and review the diff of `tests/snapshots/`. A snapshot no test
//! writes fails `unreferenced_snapshots`.

use ftl::project::FsLoader;
use ftl::span::Sources;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ft_files(dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ft"))
        .collect();
    out.sort();
    out
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(root().join("tests/snapshots"));
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s
}

/// Checks and lowers `dir/file` with `dir` as the project, as `ftl plan` does.
fn plan(
    dir: &str,
    file: &Path,
) -> (
    Sources,
    Result<ftl::plan::Plan, Vec<ftl::diagnostic::Diagnostic>>,
) {
    let loader = FsLoader::new(root().join(dir));
    let mut sources = Sources::new();
    let entry = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let prefix = format!("{dir}/");
    let result =
        ftl::check(&entry, &loader, &mut sources, &prefix).and_then(|c| ftl::lower(&c, &sources));
    (sources, result)
}

fn render_plan(p: &ftl::plan::Plan) -> String {
    ftl::plan::view::render(p)
}

#[test]
fn cases() {
    let files: Vec<PathBuf> = ft_files("tests/cases")
        .into_iter()
        .filter(|p| !stem(p).starts_with("ok_"))
        .collect();
    assert!(
        files.len() >= 40,
        "expected at least 40 invalid cases, found {}",
        files.len()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read case");
        let (sources, result) = plan("tests/cases", &file);
        let diags = match result {
            Ok(_) => panic!("{} should be rejected", file.display()),
            Err(d) => d,
        };
        let header = text.lines().next().unwrap_or("");
        if let Some(code) = header
            .split_whitespace()
            .find(|w| w.starts_with('E') && w.len() == 6)
        {
            let code = code.trim_end_matches(':');
            assert!(
                diags.iter().any(|d| d.code.as_str() == code),
                "{}: header names {code}, diagnostics have {:?}",
                file.display(),
                diags.iter().map(|d| d.code.as_str()).collect::<Vec<_>>()
            );
        }
        let rendered = ftl::render::render(&diags, &sources, false);
        settings().bind(|| {
            insta::assert_snapshot!(
                format!("case__{}", stem(&file)),
                format!("{text}\n---\n{rendered}")
            )
        });
    }
}

#[test]
fn valid_cases() {
    for file in ft_files("tests/cases")
        .into_iter()
        .filter(|p| stem(p).starts_with("ok_"))
    {
        let (sources, result) = plan("tests/cases", &file);
        let plan = result.unwrap_or_else(|d| {
            panic!(
                "{}:\n{}",
                file.display(),
                ftl::render::render(&d, &sources, false)
            )
        });
        settings()
            .bind(|| insta::assert_snapshot!(format!("case__{}", stem(&file)), render_plan(&plan)));
    }
}

#[test]
fn pipelines() {
    let files = ft_files("pipelines");
    assert!(files.len() >= 3, "the examples are missing");
    for file in files {
        let (sources, result) = plan("pipelines", &file);
        let plan = result.unwrap_or_else(|d| {
            panic!(
                "{}:\n{}",
                file.display(),
                ftl::render::render(&d, &sources, false)
            )
        });
        settings()
            .bind(|| insta::assert_snapshot!(format!("plan__{}", stem(&file)), render_plan(&plan)));
    }
}

#[test]
fn stdlib_modules() {
    for (name, text) in ftl::stdlib::MODULES {
        let loader = ftl::project::MemoryLoader::new([("module.ft", *text)]);
        let mut sources = Sources::new();
        let decls = ftl::check::declarations("module.ft", &loader, &mut sources, "std/")
            .unwrap_or_else(|d| {
                panic!("std/{name}:\n{}", ftl::render::render(&d, &sources, false))
            });
        let json = serde_json::to_string_pretty(&decls).expect("serialize");
        settings().bind(|| insta::assert_snapshot!(format!("stdlib__{name}"), json));
    }
}

/// Every `.ft` file in the repository (build output, run folders with their
/// copies of the sources, and installed packages aside), with a snapshot
/// name derived from its path.
fn all_ft_files() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !["target", "runs", "node_modules", ".git"].contains(&name.as_str())
                    && !name.starts_with('.')
                {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "ft") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(root())
                .expect("inside the repo")
                .with_extension("");
            let name = rel
                .to_string_lossy()
                .replace(['/', '\\'], "__")
                .replace(['.', '-'], "_");
            (format!("fmt__{name}"), f)
        })
        .collect()
}

#[test]
fn formatting() {
    for (name, file) in all_ft_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let mut sources = Sources::new();
        let id = sources.add(file.display().to_string(), text.clone());
        let Ok(ast) = ftl::parse(id, &text) else {
            continue;
        };
        let once = ftl::fmt::format(&ast, &text);
        let id2 = sources.add("formatted", once.clone());
        let ast2 = ftl::parse(id2, &once).unwrap_or_else(|d| {
            panic!("{} formats to invalid text:\n{once}\n{d:?}", file.display())
        });
        let twice = ftl::fmt::format(&ast2, &once);
        assert_eq!(
            once,
            twice,
            "{}: formatting is not idempotent",
            file.display()
        );
        assert_eq!(
            strip_ws(&text),
            strip_ws(&once),
            "{}: formatting changed more than layout",
            file.display()
        );
        let shipped =
            file.starts_with(root().join("pipelines")) || file.starts_with(root().join("stdlib"));
        if shipped {
            assert_eq!(
                text,
                once,
                "{} is not formatted: run `ftl fmt {}`",
                file.display(),
                file.display()
            );
        }
        settings().bind(|| insta::assert_snapshot!(name, once));
    }
}

/// The text without layout: what formatting must never change. Commas
/// between block entries and before closing brackets are layout too.
fn strip_ws(text: &str) -> String {
    let no_ws: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    no_ws
        .replace(",]", "]")
        .replace(",)", ")")
        .replace(",}", "}")
        .replace(['=', ','], "")
}

#[test]
fn unreferenced_snapshots() {
    let mut expected: Vec<String> = Vec::new();
    for f in ft_files("tests/cases") {
        expected.push(format!("case__{}", stem(&f)));
    }
    for f in ft_files("pipelines") {
        expected.push(format!("plan__{}", stem(&f)));
    }
    for (name, _) in ftl::stdlib::MODULES {
        expected.push(format!("stdlib__{name}"));
    }
    for (name, file) in all_ft_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let mut sources = Sources::new();
        let id = sources.add("x", text.clone());
        if ftl::parse(id, &text).is_ok() {
            expected.push(name);
        }
    }
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(root().join("tests/snapshots")).expect("snapshots dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let Some(base) = name.strip_suffix(".snap") else {
            continue;
        };
        // Other test files (train__…) own their snapshots.
        let ours = ["case__", "plan__", "stdlib__", "fmt__"]
            .iter()
            .any(|p| base.starts_with(p));
        if ours && !expected.iter().any(|e| e == base) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "snapshots no test writes (delete them): {stale:?}"
    );
}

#[test]
fn every_code_is_documented_and_exercised() {
    let doc = std::fs::read_to_string(root().join("docs/errors.md")).expect("docs/errors.md");
    let mut snapshots = String::new();
    for entry in std::fs::read_dir(root().join("tests/snapshots")).expect("snapshots dir") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("case__"))
        {
            snapshots.push_str(&std::fs::read_to_string(path).expect("read"));
        }
    }
    for code in ftl::diagnostic::Code::ALL {
        assert!(
            doc.contains(&format!("## {code}")),
            "{code} has no section in docs/errors.md"
        );
        assert!(
            snapshots.contains(&format!("[{code}]")),
            "no case in tests/cases produces {code}"
        );
    }
}
