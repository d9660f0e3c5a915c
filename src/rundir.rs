//! Run directories: `OUTPUT/PIPELINE/POINT/`, written so that an earlier
//! result is never lost or half-overwritten.
//!
//! A run works in `OUTPUT/PIPELINE/.POINT.partial/` and is renamed to its
//! final name only when it finished. A finished directory is never touched
//! again; an interrupted one is resumed or, on request, started afresh.

use crate::plan::Run;
use crate::report::{StepMetrics, Summary, loss_svg, run_report};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a run directory cannot be used.
#[derive(Debug)]
pub enum RunDirError {
    /// The run already finished, with the same configuration.
    Finished(PathBuf),
    /// A finished run of another configuration holds the name.
    Taken {
        /// The directory.
        path: PathBuf,
        /// Its plan hash.
        hash: String,
    },
    /// An interrupted run is there; resume it or start afresh.
    Interrupted(PathBuf),
    /// A file system error.
    Io(PathBuf, std::io::Error),
}

impl fmt::Display for RunDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunDirError::Finished(p) => write!(
                f,
                "{} already holds this finished run; nothing to do",
                p.display()
            ),
            RunDirError::Taken { path, hash } => write!(
                f,
                "{} holds a finished run of another configuration (plan {hash})\nhint: move it away, or write elsewhere with `--output DIR`",
                path.display()
            ),
            RunDirError::Interrupted(p) => write!(
                f,
                "{} holds an interrupted run\nhint: continue it with `ftl run --resume`, or delete the folder to start afresh",
                p.display()
            ),
            RunDirError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for RunDirError {}

/// An open run directory.
pub struct RunDir {
    /// Where the run works until it finishes.
    pub work: PathBuf,
    /// Where it ends up.
    pub done: PathBuf,
    metrics: std::fs::File,
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T, RunDirError> {
    r.map_err(|e| RunDirError::Io(path.to_path_buf(), e))
}

/// Writes a file whole or not at all: a temporary beside it, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    io(&tmp, std::fs::write(&tmp, bytes))?;
    io(path, std::fs::rename(&tmp, path))
}

impl RunDir {
    /// The final and working paths of `run` under `output`.
    pub fn paths(output: &Path, run: &Run) -> (PathBuf, PathBuf) {
        let point = run.name.rsplit('/').next().unwrap_or(&run.name);
        let parent = output.join(&run.pipeline);
        (parent.join(point), parent.join(format!(".{point}.partial")))
    }

    /// Opens the run's directory: a fresh one, or the interrupted one when
    /// `resume` is set. `plan_json` and `sources` (name, text) are recorded.
    pub fn open(
        output: &Path,
        run: &Run,
        plan_json: &str,
        sources: &[(String, String)],
        resume: bool,
    ) -> Result<RunDir, RunDirError> {
        let (done, work) = Self::paths(output, run);
        if done.exists() {
            let hash = std::fs::read_to_string(done.join("plan.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["hash"].as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into());
            return Err(if hash == run.hash {
                RunDirError::Finished(done)
            } else {
                RunDirError::Taken { path: done, hash }
            });
        }
        if work.exists() && !resume {
            return Err(RunDirError::Interrupted(work));
        }
        io(&work, std::fs::create_dir_all(work.join("sources")))?;
        write_atomic(&work.join("plan.json"), plan_json.as_bytes())?;
        for (name, text) in sources {
            let file = work.join("sources").join(name.replace('/', "__"));
            write_atomic(&file, text.as_bytes())?;
        }
        let metrics_path = work.join("metrics.jsonl");
        let metrics = io(
            &metrics_path,
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path),
        )?;
        Ok(RunDir {
            work,
            done,
            metrics,
        })
    }

    /// Appends one step to `metrics.jsonl`.
    pub fn log_step(&mut self, step: &StepMetrics) -> Result<(), RunDirError> {
        let line = serde_json::to_string(step).expect("metrics serialize");
        io(&self.work, writeln!(self.metrics, "{line}"))
    }

    /// Drops the steps logged after `step` (they run again after a resume).
    pub fn truncate_steps(&mut self, step: u64) -> Result<(), RunDirError> {
        let path = self.work.join("metrics.jsonl");
        let kept: String = self
            .steps()
            .iter()
            .filter(|s| s.step <= step)
            .map(|s| serde_json::to_string(s).expect("metrics serialize") + "\n")
            .collect();
        write_atomic(&path, kept.as_bytes())?;
        self.metrics = io(&path, std::fs::OpenOptions::new().append(true).open(&path))?;
        Ok(())
    }

    /// Every step logged so far (after a resume, those of the earlier part too).
    pub fn steps(&self) -> Vec<StepMetrics> {
        std::fs::read_to_string(self.work.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Writes the summary, the report and the loss curve, then moves the
    /// directory to its final name.
    pub fn finish(mut self, summary: &Summary) -> Result<PathBuf, RunDirError> {
        io(&self.work, self.metrics.flush())?;
        let steps = self.steps();
        write_atomic(
            &self.work.join("summary.json"),
            serde_json::to_string_pretty(summary)
                .expect("summary serializes")
                .as_bytes(),
        )?;
        write_atomic(&self.work.join("loss.svg"), loss_svg(&steps).as_bytes())?;
        write_atomic(&self.work.join("report.md"), run_report(summary).as_bytes())?;
        io(&self.done, std::fs::rename(&self.work, &self.done))?;
        Ok(self.done)
    }
}
