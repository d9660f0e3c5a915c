//! Lowering: checked runs to the [`Plan`] that `ftl run` executes.
//!
//! The plan is explicit and self-contained: every default is written out,
//! every model and file is a concrete descriptor, each run has a
//! deterministic name and a content hash, and the source position of every
//! field the user wrote travels along so a runtime error can point at it.

pub mod view;

use crate::check::Checked;
use crate::config::RunConfig;
use crate::diagnostic::{Code, Diagnostic, Result};
use crate::estimate::{MemoryEstimate, Parameters, estimate, human_bytes, parameters};
use crate::span::{Sources, Span};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Version of the plan format.
pub const PLAN_VERSION: u32 = 1;

/// Everything `ftl run` will do for one entry file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Format version.
    pub ftl_plan: u32,
    /// The entry file, project-relative.
    pub entry: String,
    /// Project files the plan was read from (entry first).
    pub files: Vec<String>,
    /// The runs, in source order.
    pub runs: Vec<Run>,
}

/// One run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `PIPELINE/POINT`; its run directory is `output.dir/PIPELINE/POINT`.
    pub name: String,
    /// The pipeline it belongs to.
    pub pipeline: String,
    /// Sweep axis → value label (empty without a sweep).
    pub point: BTreeMap<String, String>,
    /// sha256 of the configuration (the JSON of `config`), first 16 hex digits.
    pub hash: String,
    /// The configuration.
    pub config: RunConfig,
    /// Parameter counts.
    pub parameters: Parameters,
    /// Predicted peak device memory.
    pub memory: MemoryEstimate,
    /// Why the run will not execute (over budget with `budget.exceed = skip`).
    pub skip: Option<String>,
    /// Where each field the user wrote came from, by dotted path.
    pub origins: BTreeMap<String, SourcePos>,
}

/// A position in a source file, stable across machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePos {
    /// The file as named in diagnostics.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Lowers checked runs to a plan: names, hashes, estimates, budget checks.
pub fn lower(checked: &Checked, sources: &Sources) -> Result<Plan> {
    let mut errors = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    let mut names: BTreeMap<String, Span> = BTreeMap::new();
    for c in &checked.runs {
        let point_label = if c.point.is_empty() {
            "main".to_string()
        } else {
            c.point
                .iter()
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("-")
        };
        let name = format!("{}/{point_label}", c.pipeline);
        if let Some(first) = names.get(&name) {
            errors.push(
                Diagnostic::error(
                    Code::DuplicateRunName,
                    c.pipeline_span,
                    format!("two runs are named `{name}`"),
                )
                .label("this pipeline's run")
                .with_label(*first, "has the same name as this one's")
                .hint("rename a pipeline; runs are written to `output.dir/PIPELINE/POINT`"),
            );
            continue;
        }
        names.insert(name.clone(), c.pipeline_span);
        let memory = estimate(&c.config);
        let mut skip = None;
        if let Some(budget) = c.config.budget.gpu_memory
            && memory.total > budget
        {
            match c.config.budget.exceed {
                crate::config::Exceed::Error => errors.push(over_budget(c, &name, memory, budget)),
                crate::config::Exceed::Skip => {
                    skip = Some(format!(
                        "estimated {} of device memory, over the budget of {}",
                        human_bytes(memory.total),
                        human_bytes(budget)
                    ))
                }
            }
        }
        let origins = c
            .origins
            .iter()
            .map(|(k, span)| {
                let (line, column) = sources.line_col(span.source, span.start);
                (
                    k.clone(),
                    SourcePos {
                        file: sources.get(span.source).name.clone(),
                        line,
                        column,
                    },
                )
            })
            .collect();
        runs.push(Run {
            name,
            pipeline: c.pipeline.clone(),
            point: c.point.iter().cloned().collect(),
            hash: config_hash(&c.config),
            parameters: parameters(&c.config),
            memory,
            config: c.config.clone(),
            skip,
            origins,
        });
    }
    if runs.is_empty() && errors.is_empty() {
        let span = Span::new(sources.find_entry(), 0, 0);
        errors.push(
            Diagnostic::error(Code::NoPipeline, span, "this file declares no pipeline to run")
                .label("no `pipeline` here")
                .hint("add `pipeline NAME { model.base = ... dataset = ... }`, or run the file that imports this one"),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Plan {
        ftl_plan: PLAN_VERSION,
        entry: checked.entry.clone(),
        files: checked.files.clone(),
        runs,
    })
}

fn over_budget(
    c: &crate::check::CheckedRun,
    name: &str,
    m: MemoryEstimate,
    budget: u64,
) -> Diagnostic {
    let span = c
        .origins
        .get("budget.gpu_memory")
        .copied()
        .unwrap_or(c.pipeline_span);
    let mut d = Diagnostic::error(
        Code::OverBudget,
        span,
        format!(
            "run `{name}` needs about {} of device memory, over the budget of {}",
            human_bytes(m.total),
            human_bytes(budget)
        ),
    )
    .label("the budget")
    .note("to plan such runs as skipped and run the others, set `budget.exceed = skip`")
    .note(format!(
        "estimate: weights {}, gradients {}, optimizer {}, activations {}, workspace {}; highest {}",
        human_bytes(m.weights),
        human_bytes(m.gradients),
        human_bytes(m.optimizer),
        human_bytes(m.activations),
        human_bytes(m.workspace),
        m.peak_at.describe()
    ));
    let cfg = &c.config;
    if cfg.train.batch_size > 1 {
        let half = cfg.train.batch_size / 2;
        d = d.hint(format!(
            "halve the batch and keep the effective batch: `train.batch_size = {half}` with `train.grad_accum = {}`",
            cfg.train.grad_accum * 2
        ));
    }
    match cfg.method {
        crate::config::Method::Full => {
            d = d.hint("train adapters instead: `method = lora(rank = 8)` keeps the base frozen, with no gradients or optimizer state for it");
        }
        crate::config::Method::Lora(_) => {
            d = d.hint("store the frozen base in 4 bits: `method = qlora(rank = 8)`");
        }
        crate::config::Method::Qlora(_) => {}
    }
    if cfg.dataset.max_tokens > 64 {
        d = d.hint(format!(
            "shorter inputs cut activations: `dataset.max_tokens = {}`",
            cfg.dataset.max_tokens / 2
        ));
    }
    d
}

/// The first 16 hex digits of the sha256 of the configuration's JSON.
pub fn config_hash(config: &RunConfig) -> String {
    let json = serde_json::to_string(config).expect("configurations serialize");
    let digest = Sha256::digest(json.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
