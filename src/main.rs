//! The `ftl` command line: reads files, calls the library, prints results.

use clap::{Parser, Subcommand};
use ftl::diagnostic::Diagnostic;
use ftl::project::FsLoader;
use ftl::span::Sources;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod run;

#[derive(Parser)]
#[command(
    name = "ftl",
    version,
    about = "Fine-tuning pipelines for compact language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check pipeline files and report every problem.
    Check {
        /// The `.ft` files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The project folder paths must stay inside (default: the file's folder).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Show the fully resolved plan `ftl run` would execute.
    Plan {
        /// The `.ft` file.
        file: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// The project folder paths must stay inside (default: the file's folder).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Predict peak device memory of each run, part by part.
    Estimate {
        /// The `.ft` file.
        file: PathBuf,
        /// The project folder paths must stay inside (default: the file's folder).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Get a model's files into ftl's cache, from the first place that has them.
    Fetch {
        /// A stdlib model (`minilm_l6`), a Hugging Face id, or a local folder.
        model: String,
        /// Say where ftl looked, and show download progress.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Train every run of a pipeline and write its run directory.
    Run {
        /// The `.ft` file, or with `--resume` an interrupted run's directory.
        file: PathBuf,
        /// Root of run directories (default: the pipeline's `output.dir`).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Continue interrupted runs from their last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Run only the runs whose name (`PIPELINE/POINT`) contains this.
        #[arg(long)]
        only: Option<String>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
        /// Print each finished run's summary as one JSON line on stdout.
        #[arg(long)]
        json: bool,
        /// Say where the model was looked for.
        #[arg(long, short)]
        verbose: bool,
        /// The project folder paths must stay inside (default: the file's folder).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Accuracy and macro-F1 of a finished run on a labeled file.
    Eval {
        /// The run directory (`runs/PIPELINE/RUN`).
        run: PathBuf,
        /// A labeled file with the run's text and label columns.
        #[arg(long)]
        data: PathBuf,
        /// Print `{"accuracy": …, "macro_f1": …}`.
        #[arg(long)]
        json: bool,
    },
    /// Label texts with a finished run's model.
    Predict {
        /// The run directory.
        run: PathBuf,
        /// Texts to label.
        texts: Vec<String>,
        /// A file with one text per line.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print one JSON object per text.
        #[arg(long)]
        json: bool,
    },
    /// Fold a run's adapters into its base and write a Hugging Face model.
    Merge {
        /// The run directory.
        run: PathBuf,
        /// Where to write it (default: RUN/merged).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Format files in place (or check that they are formatted).
    Fmt {
        /// The `.ft` files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Change nothing; fail if a file is not formatted.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ok = match cli.command {
        Command::Run {
            file,
            output,
            resume,
            only,
            quiet,
            json,
            verbose,
            root,
        } => {
            let options = run::Options {
                output,
                resume,
                only,
                quiet,
                json,
                verbose,
            };
            return run::run(&file, root.as_deref(), &options);
        }
        Command::Eval { run, data, json } => run::eval(&run, &data, json),
        Command::Predict {
            run,
            texts,
            file,
            json,
        } => run::predict(&run, texts, file.as_deref(), json),
        Command::Merge { run, output } => run::merge(&run, output.as_deref()),
        Command::Check { files, root } => files
            .iter()
            .map(|f| check_file(f, root.as_deref()))
            .fold(true, |a, b| a & b),
        Command::Plan { file, json, root } => plan_file(&file, root.as_deref(), json),
        Command::Estimate { file, root } => estimate_file(&file, root.as_deref()),
        Command::Fetch { model, verbose } => fetch_model(&model, verbose),
        Command::Fmt { files, check } => files
            .iter()
            .map(|f| fmt_file(f, check))
            .fold(true, |a, b| a & b),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

fn report(diags: &[Diagnostic], sources: &Sources) {
    eprint!("{}", ftl::render::render(diags, sources, color()));
}

/// Splits a path into (project root, entry path inside it, display prefix).
pub(crate) fn project_of(
    file: &Path,
    root: Option<&Path>,
) -> Result<(PathBuf, String, String), String> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (root, entry) = match root {
        None => {
            let name = file
                .file_name()
                .ok_or_else(|| format!("{} is not a file", file.display()))?;
            (dir.to_path_buf(), name.to_string_lossy().into_owned())
        }
        Some(root) => {
            let abs = |p: &Path| {
                p.canonicalize()
                    .map_err(|e| format!("{}: {e}", p.display()))
            };
            let (r, f) = (abs(root)?, abs(file)?);
            let rel = f.strip_prefix(&r).map_err(|_| {
                format!(
                    "{} is not inside the project folder {}",
                    file.display(),
                    root.display()
                )
            })?;
            (root.to_path_buf(), rel.to_string_lossy().replace('\\', "/"))
        }
    };
    let prefix = match root.to_string_lossy().as_ref() {
        "." | "" => String::new(),
        r => format!("{}/", r.trim_end_matches('/')),
    };
    Ok((root, entry, prefix))
}

pub(crate) fn load_plan(file: &Path, root: Option<&Path>) -> Option<ftl::plan::Plan> {
    let (root, entry, prefix) = match project_of(file, root) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return None;
        }
    };
    let loader = FsLoader::new(root);
    let mut sources = Sources::new();
    let checked = ftl::check(&entry, &loader, &mut sources, &prefix)
        .map_err(|d| report(&d, &sources))
        .ok()?;
    ftl::lower(&checked, &sources)
        .map_err(|d| report(&d, &sources))
        .ok()
}

fn check_file(file: &Path, root: Option<&Path>) -> bool {
    let (root, entry, prefix) = match project_of(file, root) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    let loader = FsLoader::new(root);
    let mut sources = Sources::new();
    match ftl::check(&entry, &loader, &mut sources, &prefix) {
        Ok(checked) if checked.runs.is_empty() => true,
        Ok(checked) => match ftl::lower(&checked, &sources) {
            Ok(_) => true,
            Err(d) => {
                report(&d, &sources);
                false
            }
        },
        Err(d) => {
            report(&d, &sources);
            false
        }
    }
}

fn plan_file(file: &Path, root: Option<&Path>, json: bool) -> bool {
    let Some(plan) = load_plan(file, root) else {
        return false;
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).expect("plans serialize")
        );
    } else {
        print!("{}", ftl::plan::view::render(&plan));
    }
    true
}

fn estimate_file(file: &Path, root: Option<&Path>) -> bool {
    use ftl::estimate::{PeakMoment, human_bytes as h};
    let Some(plan) = load_plan(file, root) else {
        return false;
    };
    println!(
        "{:<36} {:>11} {:>8} {:>11} {:>11} {:>11} {:>11} {:>11}  budget",
        "run", "total", "peak at", "weights", "gradients", "optimizer", "activations", "workspace"
    );
    for run in &plan.runs {
        let m = &run.memory;
        let verdict = if run.skip.is_some() {
            "over: skipped"
        } else {
            "fits"
        };
        let budget = run
            .config
            .budget
            .gpu_memory
            .map_or("none".to_string(), |b| format!("{} ({verdict})", h(b)));
        println!(
            "{:<36} {:>11} {:>8} {:>11} {:>11} {:>11} {:>11} {:>11}  {budget}",
            run.name,
            h(m.total),
            match m.peak_at {
                PeakMoment::AfterForward => "forward",
                PeakMoment::OptimizerStep => "step",
            },
            h(m.weights),
            h(m.gradients),
            h(m.optimizer),
            h(m.activations),
            h(m.workspace)
        );
    }
    true
}

fn fetch_model(model: &str, verbose: bool) -> bool {
    use ftl::runtime::fetch::{FetchOptions, resolve, stdlib_model};
    let name = match stdlib_model(model).and_then(|m| m.hub) {
        Some(hub) if hub != model => {
            eprintln!("{model} is {hub}");
            hub
        }
        _ => model.to_string(),
    };
    let options = FetchOptions {
        show_progress: verbose,
        ..FetchOptions::from_env()
    };
    match resolve(&name, &options) {
        Ok(found) => {
            if verbose {
                for a in &found.attempts {
                    eprintln!("  {a}");
                }
            }
            println!("{}", found.dir.display());
            true
        }
        Err(e) => {
            eprintln!("{}", e.report());
            false
        }
    }
}

fn fmt_file(file: &Path, check: bool) -> bool {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return false;
        }
    };
    let mut sources = Sources::new();
    let id = sources.add(file.to_string_lossy(), text.clone());
    let ast = match ftl::parse(id, &text) {
        Ok(a) => a,
        Err(d) => {
            report(&d, &sources);
            return false;
        }
    };
    let formatted = ftl::fmt::format(&ast, &text);
    if formatted == text {
        return true;
    }
    if check {
        eprintln!(
            "{} is not formatted; run `ftl fmt {}`",
            file.display(),
            file.display()
        );
        return false;
    }
    // Write beside, then rename: an interrupted write never truncates the file.
    let tmp = file.with_extension("ft.fmt-tmp");
    match std::fs::write(&tmp, &formatted).and_then(|_| std::fs::rename(&tmp, file)) {
        Ok(()) => {
            eprintln!("formatted {}", file.display());
            true
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("error: cannot write {}: {e}", file.display());
            false
        }
    }
}
