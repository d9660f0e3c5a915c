//! Run directories never lose a finished result.

use ftl::metrics::Stability;
use ftl::report::{StepMetrics, Summary, Timing};
use ftl::rundir::{RunDir, RunDirError};
use ftl::span::Sources;

fn run(name: &str) -> (ftl::plan::Run, String) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/sentiment.ft"
    ))
    .expect("read");
    let loader = ftl::project::MemoryLoader::new([(name, text.as_str())]);
    let mut sources = Sources::new();
    let checked = ftl::check(name, &loader, &mut sources, "").expect("checks");
    let plan = ftl::lower(&checked, &sources).expect("lowers");
    let json = serde_json::to_string_pretty(&plan.runs[0]).expect("json");
    (plan.runs[0].clone(), json)
}

fn summary(run: &ftl::plan::Run) -> Summary {
    Summary {
        run: run.name.clone(),
        plan_hash: run.hash.clone(),
        method: "lora".into(),
        model: "minilm_l6".into(),
        evaluations: vec![],
        peak_memory_bytes: None,
        estimated_memory_bytes: run.memory.total,
        timing: Timing::default(),
        stability: Stability {
            loss_std_second_half: 0.0,
            spikes: 0,
            max_grad_norm: 0.0,
            non_finite: 0,
        },
        trainable_parameters: 1,
        total_parameters: 2,
        steps: 2,
        seed: 17,
        device: "cpu".into(),
        versions: Default::default(),
        sha256: Default::default(),
        skipped_rows: 0,
        notes: vec![],
    }
}

fn step(i: u64) -> StepMetrics {
    StepMetrics {
        step: i,
        epoch: 1,
        loss: 0.5,
        lr: 1e-4,
        grad_norm: 1.0,
        samples_per_s: 1.0,
        tokens_per_s: 1.0,
        memory_bytes: None,
    }
}

#[test]
fn a_run_works_in_a_partial_folder_and_lands_whole() {
    let out = std::env::temp_dir().join(format!("ftl-rundir-{}", std::process::id()));
    let (r, json) = run("sentiment.ft");
    let sources = vec![("sentiment.ft".to_string(), "pipeline ...".to_string())];
    let mut dir = RunDir::open(&out, &r, &json, &sources, false).expect("open");
    assert!(dir.work.ends_with("sentiment/.main.partial"));
    dir.log_step(&step(1)).expect("log");

    // Interrupted: opening again without resume refuses; with resume continues.
    drop(dir);
    assert!(matches!(
        RunDir::open(&out, &r, &json, &sources, false),
        Err(RunDirError::Interrupted(_))
    ));
    let mut dir = RunDir::open(&out, &r, &json, &sources, true).expect("resume");
    dir.log_step(&step(2)).expect("log");
    assert_eq!(
        dir.steps().iter().map(|s| s.step).collect::<Vec<_>>(),
        [1, 2]
    );
    let done = dir.finish(&summary(&r)).expect("finish");
    for f in [
        "plan.json",
        "metrics.jsonl",
        "summary.json",
        "report.md",
        "loss.svg",
        "sources/sentiment.ft",
    ] {
        assert!(done.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("sentiment/.main.partial").exists());

    // Finished: the same configuration is done; another is refused.
    assert!(matches!(
        RunDir::open(&out, &r, &json, &sources, true),
        Err(RunDirError::Finished(_))
    ));
    let mut other = r.clone();
    other.hash = "0000000000000000".into();
    let err = RunDir::open(&out, &other, &json, &sources, true)
        .err()
        .expect("taken");
    assert!(err.to_string().contains("--output"), "{err}");
    let kept = std::fs::read_to_string(done.join("summary.json")).expect("kept");
    assert!(kept.contains(&r.hash), "the finished run is untouched");
    let _ = std::fs::remove_dir_all(&out);
}
