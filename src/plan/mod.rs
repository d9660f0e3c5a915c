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
    for hint in fitting_changes(&c.config, budget) {
        d = d.hint(hint);
    }
    d
}

/// One change to a run's configuration: why, what to write, and what it does.
struct Change {
    why: &'static str,
    code: String,
    /// Whether it sets `method` (a later method change replaces it).
    sets_method: bool,
    apply: Box<dyn Fn(&mut RunConfig)>,
}

/// What would bring `cfg` under `budget`, each with its estimate: every
/// single change that fits on its own (bf16, adapters, a 4-bit base, a
/// smaller batch with gradient accumulation, shorter inputs); when none
/// does, the fewest of them that fit together, or what even all of them
/// leave over.
fn fitting_changes(cfg: &RunConfig, budget: u64) -> Vec<String> {
    let total = |c: &RunConfig| estimate(c).total;
    let fits = |c: &RunConfig| total(c) <= budget;
    let singles: Vec<String> = structural_changes(cfg)
        .into_iter()
        .chain(largest_batch(cfg, &fits))
        .chain(longest_inputs(cfg, &fits))
        .filter_map(|ch| {
            let mut c = cfg.clone();
            (ch.apply)(&mut c);
            let needs = total(&c);
            (needs <= budget)
                .then(|| format!("{}: {} (about {})", ch.why, ch.code, human_bytes(needs)))
        })
        .collect();
    if !singles.is_empty() {
        return singles;
    }
    // Together: precision and method first (each replacing the one
    // before: a 4-bit base replaces plain adapters), then the largest batch
    // that fits, then the longest inputs.
    let mut c = cfg.clone();
    let mut taken: Vec<Change> = Vec::new();
    let together = |c: &RunConfig, taken: &[Change]| {
        let codes: Vec<&str> = taken.iter().map(|t| t.code.as_str()).collect();
        vec![format!(
            "no single change fits; together these do (about {}): {}",
            human_bytes(total(c)),
            codes.join(", ")
        )]
    };
    for ch in structural_changes(cfg) {
        if ch.sets_method {
            taken.retain(|t| !t.sets_method);
        }
        (ch.apply)(&mut c);
        taken.push(ch);
        if fits(&c) {
            return together(&c, &taken);
        }
    }
    type Largest = fn(&RunConfig, &dyn Fn(&RunConfig) -> bool) -> Option<Change>;
    type Smallest = fn(&RunConfig) -> Option<Change>;
    let steps: [(Largest, Smallest); 2] = [
        (largest_batch, smallest_batch),
        (longest_inputs, shortest_inputs),
    ];
    for (largest, smallest) in steps {
        let Some(ch) = largest(&c, &fits).or_else(|| smallest(&c)) else {
            continue;
        };
        (ch.apply)(&mut c);
        taken.push(ch);
        if fits(&c) {
            return together(&c, &taken);
        }
    }
    let codes: Vec<&str> = taken.iter().map(|t| t.code.as_str()).collect();
    vec![format!(
        "even {} together leave the run at about {}: choose a smaller model or a larger budget",
        codes.join(", "),
        human_bytes(total(&c))
    )]
}

/// bf16 instead of fp32, adapters instead of full fine-tuning, a 4-bit base
/// under adapters: the changes that do not depend on the budget.
fn structural_changes(cfg: &RunConfig) -> Vec<Change> {
    use crate::check::sections::{default_lora, default_quantize};
    use crate::config::{Lora, Method, Precision, QuantFormat};
    let mut changes = Vec::new();
    if cfg.train.precision == Precision::Fp32 {
        changes.push(Change {
            why: "compute in bf16 on the GPU",
            code: "`train.precision = bf16`".into(),
            sets_method: false,
            apply: Box::new(|c| c.train.precision = Precision::Bf16),
        });
    }
    let four_bit = |c: &mut RunConfig, lora: &Lora| {
        c.method = Method::Qlora(lora.clone());
        c.quantize = default_quantize(QuantFormat::Nf4);
    };
    match &cfg.method {
        Method::Full => {
            // What `lora()` would be, with the rank written out.
            let lora = default_lora(&cfg.model.base);
            let adapters = lora.clone();
            changes.push(Change {
                why: "train adapters, with no gradients or optimizer state for the base",
                code: format!("`method = lora(rank = {})`", lora.rank),
                sets_method: true,
                apply: Box::new(move |c| c.method = Method::Lora(adapters.clone())),
            });
            changes.push(Change {
                why: "train adapters over a base stored in 4 bits",
                code: format!("`method = qlora(rank = {})`", lora.rank),
                sets_method: true,
                apply: Box::new(move |c| four_bit(c, &lora)),
            });
        }
        Method::Lora(lora) => {
            let lora = lora.clone();
            changes.push(Change {
                why: "store the frozen base in 4 bits, the adapters as they are",
                code: "`method = qlora(…)`".into(),
                sets_method: true,
                apply: Box::new(move |c| four_bit(c, &lora)),
            });
        }
        Method::Qlora(_) => {}
    }
    changes
}

/// The largest smaller batch that fits, with the effective batch kept by
/// gradient accumulation.
fn largest_batch(cfg: &RunConfig, fits: &dyn Fn(&RunConfig) -> bool) -> Option<Change> {
    let (batch, accum) = (cfg.train.batch_size, cfg.train.grad_accum);
    let k = (1..batch.max(1).ilog2() + 1).find(|k| {
        let mut c = cfg.clone();
        c.train.batch_size = batch >> k;
        fits(&c)
    })?;
    Some(batch_change(batch >> k, accum << k))
}

fn batch_change(batch: u32, accum: u32) -> Change {
    Change {
        why: "a smaller batch, the same effective batch",
        code: format!("`train.batch_size = {batch}` with `train.grad_accum = {accum}`"),
        sets_method: false,
        apply: Box::new(move |c| {
            c.train.batch_size = batch;
            c.train.grad_accum = accum;
        }),
    }
}

/// The longest halved input length, down to 16 tokens, that fits.
fn longest_inputs(cfg: &RunConfig, fits: &dyn Fn(&RunConfig) -> bool) -> Option<Change> {
    let tokens = cfg.dataset.max_tokens;
    let t = (1..8)
        .map(|k| tokens >> k)
        .take_while(|t| *t >= 16)
        .find(|t| {
            let mut c = cfg.clone();
            c.dataset.max_tokens = *t;
            fits(&c)
        })?;
    Some(tokens_change(t))
}

fn tokens_change(tokens: u32) -> Change {
    Change {
        why: "shorter inputs",
        code: format!("`dataset.max_tokens = {tokens}`"),
        sets_method: false,
        apply: Box::new(move |c| c.dataset.max_tokens = tokens),
    }
}

/// Batch 1, the effective batch kept.
fn smallest_batch(cfg: &RunConfig) -> Option<Change> {
    let (batch, accum) = (cfg.train.batch_size, cfg.train.grad_accum);
    (batch > 1).then(|| batch_change(1, accum * batch))
}

/// 16 tokens.
fn shortest_inputs(cfg: &RunConfig) -> Option<Change> {
    (cfg.dataset.max_tokens > 16).then(|| tokens_change(16))
}

/// The first 16 hex digits of the sha256 of the configuration's JSON.
pub fn config_hash(config: &RunConfig) -> String {
    let json = serde_json::to_string(config).expect("configurations serialize");
    let digest = Sha256::digest(json.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
