//! `ftl run`, `eval`, `predict` and `merge`: plan, execute, show progress.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ftl::plan::Run;
use ftl::report::{Row, Summary, comparison};
use ftl::rundir::RunDir;
use ftl::runtime::error::RuntimeError;
use ftl::runtime::fetch::FetchOptions;
use ftl::runtime::train::run::{self as train, Event, Job, Observer};

/// Flags of `ftl run`.
pub struct Options {
    pub output: Option<PathBuf>,
    pub resume: bool,
    pub only: Option<String>,
    pub quiet: bool,
    pub json: bool,
    pub verbose: bool,
}

fn fail(e: &RuntimeError) {
    eprintln!("{}", e.report());
}

/// Progress on stderr: a live line on a terminal, a line per tenth otherwise.
struct Progress {
    quiet: bool,
    verbose: bool,
    live: bool,
    started: Instant,
    first_step: u64,
    shown: u64,
}

impl Observer for Progress {
    fn event(&mut self, event: Event<'_>) {
        if self.quiet {
            return;
        }
        match event {
            Event::Notice(n) if self.verbose || !n.starts_with("model ") => {
                self.clear();
                eprintln!("{n}");
            }
            Event::Notice(_) => {}
            Event::Started { run, steps, from } => {
                self.started = Instant::now();
                self.first_step = from;
                eprintln!("{run}: {steps} steps");
            }
            Event::Step(m, total) => {
                let done = m.step - self.first_step;
                let elapsed = self.started.elapsed().as_secs_f64();
                let eta = elapsed / done as f64 * (total - m.step) as f64;
                let line = format!(
                    "  step {}/{} · loss {:.4} · {:.0} samples/s · {:.0} tokens/s · ETA {}",
                    m.step,
                    total,
                    m.loss,
                    m.samples_per_s,
                    m.tokens_per_s,
                    clock(eta)
                );
                if self.live {
                    eprint!("\r\x1b[2K{line}");
                    let _ = std::io::stderr().flush();
                } else if m.step * 10 / total.max(1) > self.shown || m.step == total {
                    self.shown = m.step * 10 / total.max(1);
                    eprintln!("{line}");
                }
            }
            Event::Evaluated(e) => {
                self.clear();
                eprintln!(
                    "  {} at step {}: accuracy {:.2}% · macro-F1 {:.4} ({} examples)",
                    e.split,
                    e.step,
                    e.accuracy * 100.0,
                    e.macro_f1,
                    e.examples
                );
            }
        }
    }
}

impl Progress {
    fn clear(&self) {
        if self.live {
            eprint!("\r\x1b[2K");
        }
    }
}

fn clock(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "–".into();
    }
    let s = seconds.round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Runs every run of a pipeline (or resumes one run directory).
pub fn run(file: &Path, root: Option<&Path>, options: &Options) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C exits at once.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\nstopping after this step; a checkpoint will be saved (Ctrl-C again to quit now)"
            );
        });
    }
    let mut progress = Progress {
        quiet: options.quiet,
        verbose: options.verbose,
        live: std::io::stderr().is_terminal(),
        started: Instant::now(),
        first_step: 0,
        shown: 0,
    };
    if file.is_dir() {
        return resume_dir(file, options, &mut progress, &stop);
    }
    let Some(mut plan) = crate::load_plan(file, root) else {
        return ExitCode::FAILURE;
    };
    if let Some(only) = &options.only {
        plan.runs.retain(|r| r.name.contains(only.as_str()));
        if plan.runs.is_empty() {
            eprintln!(
                "error: no run's name contains `{only}`\nhint: `ftl plan {}` lists them",
                file.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let project_root = match crate::project_of(file, root) {
        Ok((r, _, _)) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sources: Vec<(String, String)> = plan
        .files
        .iter()
        .filter_map(|f| {
            std::fs::read_to_string(project_root.join(f))
                .ok()
                .map(|t| (f.clone(), t))
        })
        .collect();
    let mut rows = Vec::new();
    let mut ok = true;
    let mut pipelines = Vec::new();
    for run in &plan.runs {
        let output = options
            .output
            .clone()
            .unwrap_or_else(|| project_root.join(&run.config.output.dir));
        if !pipelines.contains(&(output.clone(), run.pipeline.clone())) {
            pipelines.push((output.clone(), run.pipeline.clone()));
        }
        if let Some(why) = &run.skip {
            if !options.quiet {
                eprintln!("{}: skipped: {why}", run.name);
            }
            rows.push((
                output,
                run.pipeline.clone(),
                Row::Skipped {
                    run: run.name.clone(),
                    why: why.clone(),
                },
            ));
            continue;
        }
        if let Some(summary) = finished(&output, run) {
            if !options.quiet {
                eprintln!("{}: already finished, kept as it is", run.name);
            }
            rows.push((output, run.pipeline.clone(), Row::Done(Box::new(summary))));
            continue;
        }
        let job = Job {
            run: run.clone(),
            sources: sources.clone(),
            project_root: project_root.clone(),
            output: output.clone(),
            resume: options.resume,
            fetch: FetchOptions::from_env(),
            data_search: ftl::data::data_search_path(),
        };
        match train::execute(&job, &mut progress, &stop) {
            Ok(outcome) => {
                done(&outcome.summary, &outcome.dir, options, &progress);
                rows.push((
                    output,
                    run.pipeline.clone(),
                    Row::Done(Box::new(outcome.summary)),
                ));
            }
            Err(e) => {
                progress.clear();
                fail(&e);
                if matches!(e, RuntimeError::Interrupted { .. }) {
                    return ExitCode::from(130);
                }
                ok = false;
            }
        }
    }
    if plan.runs.len() > 1 {
        for (output, pipeline) in pipelines {
            let table: Vec<Row> = rows
                .iter()
                .filter(|(o, p, _)| *o == output && *p == pipeline)
                .map(|(_, _, r)| r.clone())
                .collect();
            let text = comparison(&table);
            let path = output.join(&pipeline).join("comparison.md");
            if std::fs::create_dir_all(output.join(&pipeline)).is_ok() {
                let _ = ftl::rundir::write_atomic(&path, text.as_bytes());
            }
            if !options.quiet && !options.json {
                println!("{text}");
                eprintln!("comparison written to {}", path.display());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn done(summary: &Summary, dir: &Path, options: &Options, progress: &Progress) {
    progress.clear();
    if options.json {
        println!(
            "{}",
            serde_json::to_string(summary).expect("summary serializes")
        );
    }
    if !options.quiet {
        let acc = summary
            .evaluation("eval")
            .or(summary.evaluations.first())
            .map_or("no evaluation".into(), |e| {
                format!("{} accuracy {:.2}%", e.split, e.accuracy * 100.0)
            });
        eprintln!(
            "{}: {acc} after {} steps in {:.1} s → {}",
            summary.run,
            summary.steps,
            summary.timing.total(),
            dir.display()
        );
    }
}

/// The summary of `run` if it already finished with the same configuration.
fn finished(output: &Path, run: &Run) -> Option<Summary> {
    let (done, _) = RunDir::paths(output, run);
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(done.join("plan.json")).ok()?).ok()?;
    if plan["hash"].as_str() != Some(run.hash.as_str()) {
        return None;
    }
    serde_json::from_str(&std::fs::read_to_string(done.join("summary.json")).ok()?).ok()
}

/// `ftl run --resume DIR`: continues the interrupted run in DIR from its plan.
fn resume_dir(
    dir: &Path,
    options: &Options,
    progress: &mut Progress,
    stop: &AtomicBool,
) -> ExitCode {
    let bad = |m: &str| {
        eprintln!("error: {}: {m}", dir.display());
        ExitCode::FAILURE
    };
    if !options.resume {
        return bad("is a folder; give a `.ft` file, or `--resume` to continue an interrupted run");
    }
    let Ok(text) = std::fs::read_to_string(dir.join("plan.json")) else {
        return bad("no plan.json here; is this a run directory?");
    };
    let Ok(run) = serde_json::from_str::<Run>(&text) else {
        return bad("plan.json is not a run plan");
    };
    // DIR is OUTPUT/PIPELINE/.POINT.partial (or OUTPUT/PIPELINE/POINT).
    let Some(output) = dir.parent().and_then(Path::parent) else {
        return bad("not inside OUTPUT/PIPELINE/");
    };
    let sources_dir = dir.join("sources");
    let sources: Vec<(String, String)> = std::fs::read_dir(&sources_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().replace("__", "/");
            std::fs::read_to_string(e.path()).ok().map(|t| (name, t))
        })
        .collect();
    // The project root is where output.dir was resolved from.
    let project_root = output
        .canonicalize()
        .ok()
        .and_then(|o| {
            let depth = Path::new(&run.config.output.dir).components().count();
            o.ancestors().nth(depth).map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let job = Job {
        run,
        sources,
        project_root,
        output: output.to_path_buf(),
        resume: true,
        fetch: FetchOptions::from_env(),
        data_search: ftl::data::data_search_path(),
    };
    match train::execute(&job, progress, stop) {
        Ok(outcome) => {
            done(&outcome.summary, &outcome.dir, options, progress);
            ExitCode::SUCCESS
        }
        Err(e) => {
            progress.clear();
            fail(&e);
            if matches!(e, RuntimeError::Interrupted { .. }) {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `ftl eval RUN --data FILE`.
pub fn eval(run: &Path, data: &Path, json: bool) -> bool {
    match train::eval_file(run, data, &FetchOptions::from_env()) {
        Ok(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "accuracy": e.accuracy,
                        "macro_f1": e.macro_f1,
                        "examples": e.examples,
                        "confusion": e.confusion,
                    })
                );
            } else {
                println!(
                    "accuracy {:.2}% · macro-F1 {:.4} · {} examples",
                    e.accuracy * 100.0,
                    e.macro_f1,
                    e.examples
                );
            }
            true
        }
        Err(e) => {
            fail(&e);
            false
        }
    }
}

/// `ftl predict RUN TEXT… | --file F`.
pub fn predict(run: &Path, mut texts: Vec<String>, file: Option<&Path>, json: bool) -> bool {
    if let Some(file) = file {
        match std::fs::read_to_string(file) {
            Ok(t) => texts.extend(t.lines().filter(|l| !l.trim().is_empty()).map(String::from)),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                return false;
            }
        }
    }
    if texts.is_empty() {
        eprintln!("error: nothing to predict\nhint: give texts as arguments or `--file FILE`");
        return false;
    }
    match train::predict_texts(run, &texts, &FetchOptions::from_env()) {
        Ok(results) => {
            for (text, (label, probs)) in texts.iter().zip(results) {
                if json {
                    let mut probs: Vec<_> = probs.into_iter().collect();
                    probs.sort_by(|a, b| a.0.cmp(&b.0));
                    let probs: serde_json::Map<String, serde_json::Value> =
                        probs.into_iter().map(|(k, v)| (k, v.into())).collect();
                    println!(
                        "{}",
                        serde_json::json!({"text": text, "label": label, "probabilities": probs})
                    );
                } else {
                    let p = probs.get(&label).copied().unwrap_or(0.0);
                    println!("{label}\t{p:.3}\t{text}");
                }
            }
            true
        }
        Err(e) => {
            fail(&e);
            false
        }
    }
}

/// `ftl merge RUN [--output DIR]`.
pub fn merge(run: &Path, output: Option<&Path>) -> bool {
    let out = output.map_or_else(|| run.join("merged"), Path::to_path_buf);
    match train::merge_run(run, &out, &FetchOptions::from_env()) {
        Ok(()) => {
            eprintln!("merged model written to {}", out.display());
            true
        }
        Err(e) => {
            fail(&e);
            false
        }
    }
}
