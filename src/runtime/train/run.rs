//! Executes one run of a plan: resolve and load the model and the data,
//! prepare the method, train, evaluate, and leave a finished run directory.
//!
//! Reproducibility: data order comes from [`crate::data::batch`] with the
//! run's seed and the epoch; dropout draws from the backend's generator,
//! reseeded before every forward pass from (seed, step, micro-batch), so a run
//! resumed from a checkpoint draws exactly what the uninterrupted run drew.
//! On the CPU the two end bitwise equal.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::config::{Artifact, CheckpointEvery, Every, Length, Method, Precision, RunConfig};
use crate::data::{self, Example, batch};
use crate::metrics::{self, Confusion};
use crate::plan::Run;
use crate::report::{Evaluation, StepMetrics, Summary, Timing};
use crate::rundir::RunDir;
use crate::runtime::backend::{self, Cpu, Target, cpu_device};
use crate::runtime::error::{RuntimeError, RuntimeResult};
use crate::runtime::fetch::{self, FetchOptions, Resolved};
use crate::runtime::model::classifier::Classifier;
use crate::runtime::model::dropout::Draws;
use crate::runtime::model::head::{ClassificationHeadConfig, Pooling};
use crate::runtime::model::{EncoderConfig, load_model_dir};
use crate::runtime::tokenize::TextTokenizer;
use crate::runtime::train::optim::{AdamW, lr_at};
use crate::runtime::train::state::{self, Progress};

/// Everything needed to execute one run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The run, as planned.
    pub run: Run,
    /// The pipeline's source files (name, text), copied into the run directory.
    pub sources: Vec<(String, String)>,
    /// The folder paths in the pipeline are relative to.
    pub project_root: PathBuf,
    /// Root of run directories.
    pub output: PathBuf,
    /// Continue an interrupted run from its checkpoint.
    pub resume: bool,
    /// Where models are looked for.
    pub fetch: FetchOptions,
    /// Where `data("…")` files are looked for.
    pub data_search: Vec<PathBuf>,
}

/// What happens during a run, for progress displays.
#[derive(Debug)]
pub enum Event<'a> {
    /// Something worth a line (device fallback, model found, resume).
    Notice(String),
    /// Training starts (or resumes at `from`).
    Started {
        /// `PIPELINE/POINT`.
        run: &'a str,
        /// Optimizer steps in all.
        steps: u64,
        /// Steps already done (after a resume).
        from: u64,
    },
    /// An optimizer step finished.
    Step(&'a StepMetrics, u64),
    /// An evaluation finished.
    Evaluated(&'a Evaluation),
}

/// Receives [`Event`]s.
pub trait Observer {
    /// Called for each event.
    fn event(&mut self, event: Event<'_>);
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {
    fn event(&mut self, _: Event<'_>) {}
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its directory.
    pub dir: PathBuf,
    /// Its summary.
    pub summary: Summary,
}

/// Picks the device the run's plan asks for and executes the run there.
pub fn execute(
    job: &Job,
    observer: &mut dyn Observer,
    stop: &AtomicBool,
) -> RuntimeResult<Outcome> {
    let (target, notice) = backend::select(&job.run.config.device, devices())?;
    if let Some(n) = notice {
        observer.event(Event::Notice(n));
    }
    match target {
        Target::Cpu => execute_on::<Autodiff<Cpu>>(
            job,
            cpu_device(),
            "cpu".into(),
            Shaping::CPU,
            &|| None,
            observer,
            stop,
        ),
        #[cfg(feature = "cuda")]
        Target::Cuda(n) => {
            if let Some(cache) = backend::configure_cubecl(n) {
                if let Some(why) = &cache.seed_error {
                    observer.event(Event::Notice(format!(
                        "ftl's tuning for this GPU was not used ({why}): the first step tunes every kernel"
                    )));
                }
                if let Some(notice) = backend::cold_cache_notice(&cache.root, cache.shipped) {
                    observer.event(Event::Notice(notice));
                }
            }
            let device = burn::backend::cuda::CudaDevice::new(n as usize);
            let sample = device.clone();
            execute_on::<Autodiff<backend::Gpu>>(
                job,
                device,
                format!("cuda:{n}"),
                Shaping::CUDA,
                &move || backend::cuda_memory_in_use(&sample),
                observer,
                stop,
            )
        }
        #[cfg(not(feature = "cuda"))]
        Target::Cuda(n) => Err(RuntimeError::NoCudaDevice {
            ordinal: n,
            reason: "this ftl was built without CUDA".into(),
        }),
    }
}

/// How a device wants work shaped.
#[derive(Clone, Copy, Debug)]
struct Shaping {
    /// Give every batch one shape: pad its rows to `dataset.max_tokens` and
    /// fill a short batch (an epoch's last, a split's last) to the batch
    /// size ([`filled`]). CUDA compiles and autotunes kernels per tensor
    /// shape, so one shape means paying that cost once; on the CPU padding
    /// is only wasted work.
    fixed_shape: bool,
    /// bf16 products are available (`train.precision = bf16`).
    half: bool,
}

impl Shaping {
    const CPU: Shaping = Shaping {
        fixed_shape: false,
        half: false,
    };
    #[cfg(feature = "cuda")]
    const CUDA: Shaping = Shaping {
        fixed_shape: true,
        half: true,
    };
}

fn devices() -> Result<u32, String> {
    if backend::cuda_available() {
        backend::cuda_devices()
    } else {
        Err("no CUDA driver is installed".into())
    }
}

/// A classifier ready to use, with what it was loaded from.
pub struct LoadedModel<B: Backend> {
    /// Encoder + head, prepared for the run's method.
    pub model: Classifier<B>,
    /// The encoder's config.
    pub config: EncoderConfig,
    /// The tokenizer, truncating to the run's max tokens.
    pub tokenizer: TextTokenizer,
    /// Where the model's files were found.
    pub resolved: Resolved,
}

/// The name a model is resolved by: its project folder, hub id or declaration name.
pub fn model_name(cfg: &RunConfig, project_root: &Path) -> String {
    let spec = &cfg.model.base;
    match (&spec.path, &spec.hub) {
        (Some(path), _) => project_root.join(path).display().to_string(),
        (None, Some(hub)) => hub.clone(),
        (None, None) => spec.name.clone(),
    }
}

/// Resolves and loads the run's model and tokenizer, adds the head (drawn
/// from the seed) and prepares the method (adapters, 4-bit base).
pub fn load_classifier<B: Backend>(
    cfg: &RunConfig,
    project_root: &Path,
    fetch_options: &FetchOptions,
    device: &B::Device,
) -> RuntimeResult<LoadedModel<B>> {
    let resolved = fetch::resolve(&model_name(cfg, project_root), fetch_options)?;
    let (config, mut encoder, _) = load_model_dir::<B>(&resolved.dir, device)?;
    // `model.dropout` is the whole model's, whatever config.json says: the
    // pipeline file alone decides what a run computes.
    encoder.set_dropout(cfg.model.dropout);
    let tokenizer = TextTokenizer::from_file(
        &resolved.dir.join("tokenizer.json"),
        cfg.dataset.max_tokens as usize,
        config.pad_token_id as u32,
    )?;
    let pooling = match cfg.model.pooling {
        crate::config::Pooling::Mean => Pooling::Mean,
        crate::config::Pooling::Cls => Pooling::Cls,
    };
    let head = ClassificationHeadConfig::new(
        config.hidden_size,
        cfg.model.labels.len(),
        pooling,
        cfg.train.seed,
    )
    .with_dropout(cfg.model.dropout)
    .init(device);
    let model = Classifier { encoder, head }.prepare(
        config.architecture,
        &cfg.method,
        &cfg.quantize,
        cfg.train.seed,
    )?;
    Ok(LoadedModel {
        model,
        config,
        tokenizer,
        resolved,
    })
}

/// Token ids of each text, truncated, without padding.
pub fn tokenize_all(tokenizer: &TextTokenizer, texts: &[&str]) -> RuntimeResult<Vec<Vec<i64>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(1024) {
        let batch = tokenizer.encode_batch(chunk)?;
        out.extend((0..batch.batch).map(|r| batch.tokens(r)));
    }
    Ok(out)
}

/// Ids and mask `[batch, seq]` of `rows`, padded to a multiple of 16 (or,
/// with `fixed_shape`, to `max_tokens`); and the number of real tokens.
pub fn batch_tensors<B: Backend>(
    rows: &[&[i64]],
    pad: i64,
    max_tokens: usize,
    fixed_shape: bool,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, usize) {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let seq = if fixed_shape {
        max_tokens.max(longest)
    } else {
        batch::padded_length(longest, max_tokens.max(longest))
    };
    let mut ids = Vec::with_capacity(rows.len() * seq);
    let mut mask = Vec::with_capacity(rows.len() * seq);
    let mut tokens = 0;
    for row in rows {
        ids.extend_from_slice(row);
        ids.extend(std::iter::repeat_n(pad, seq - row.len()));
        mask.extend(std::iter::repeat_n(1i64, row.len()));
        mask.extend(std::iter::repeat_n(0i64, seq - row.len()));
        tokens += row.len();
    }
    let shape = [rows.len(), seq];
    (
        Tensor::from_data(TensorData::new(ids, shape), device),
        Tensor::from_data(TensorData::new(mask, shape), device),
        tokens,
    )
}

/// `rows` filled to `size` rows by repeating the last one, so that a short
/// batch has the shape of every other. On CUDA a batch of a new shape
/// compiles its kernels in the middle of training: an SST-2 epoch's last
/// batch (21 sentences) stalled a MiniLM epoch for 16 to 36 seconds. The
/// repeated rows' losses are masked out ([`batch_loss`]) and their
/// predictions dropped.
pub fn filled<'a>(rows: &[&'a [i64]], size: usize) -> Vec<&'a [i64]> {
    let mut out = rows.to_vec();
    if let Some(&last) = rows.last() {
        out.resize(size.max(rows.len()), last);
    }
    out
}

/// One batch's share of a step's loss: the mean cross-entropy of its `real`
/// first rows, weighted by their share of the step's `examples`. Rows after
/// `real` (filled by [`filled`]) count for nothing, so their gradients are
/// zero.
pub fn batch_loss<B: Backend>(
    loss_fn: &CrossEntropyLoss<B>,
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    real: usize,
    examples: usize,
) -> Tensor<B, 1> {
    let [rows, _] = logits.dims();
    if real >= rows {
        return loss_fn
            .forward(logits, targets)
            .mul_scalar(rows as f64 / examples as f64);
    }
    let weights: Vec<f32> = (0..rows)
        .map(|i| if i < real { 1.0 } else { 0.0 })
        .collect();
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [rows]), &logits.device());
    let picked = burn::tensor::activation::log_softmax(logits, 1)
        .gather(1, targets.reshape([rows, 1]))
        .reshape([rows]);
    (picked * weights).sum().neg().div_scalar(examples as f64)
}

/// Predicted label ids and class probabilities for tokenized rows, batched
/// by length (results are in the input order).
pub fn predict<B: Backend>(
    model: &Classifier<B>,
    tokens: &[Vec<i64>],
    batch_size: usize,
    pad: i64,
    max_tokens: usize,
    fixed_shape: bool,
    device: &B::Device,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| (tokens[i].len(), i));
    let mut predicted = vec![0u32; tokens.len()];
    let mut probabilities = vec![Vec::new(); tokens.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let mut rows: Vec<&[i64]> = chunk.iter().map(|&i| tokens[i].as_slice()).collect();
        if fixed_shape {
            rows = filled(&rows, batch_size);
        }
        let (ids, mask, _) = batch_tensors::<B>(&rows, pad, max_tokens, fixed_shape, device);
        let logits = model.forward(ids, mask);
        let [n, classes] = logits.dims();
        let probs: Vec<f32> = burn::tensor::activation::softmax(logits, 1)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32");
        for (k, &i) in chunk.iter().enumerate() {
            let p = probs[k * classes..(k + 1) * classes].to_vec();
            let best = p
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b });
            predicted[i] = best.0 as u32;
            probabilities[i] = p;
        }
        debug_assert_eq!(n, rows.len());
    }
    (predicted, probabilities)
}

/// Accuracy, macro-F1 and the confusion matrix of `model` on labeled rows.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &Classifier<B>,
    split: &str,
    step: u64,
    tokens: &[Vec<i64>],
    labels: &[u32],
    classes: usize,
    batch_size: usize,
    pad: i64,
    max_tokens: usize,
    fixed_shape: bool,
    device: &B::Device,
) -> (Evaluation, Vec<u32>) {
    let (predicted, _) = predict(
        model,
        tokens,
        batch_size,
        pad,
        max_tokens,
        fixed_shape,
        device,
    );
    let confusion = Confusion::new(labels, &predicted, classes);
    (
        Evaluation {
            split: split.to_string(),
            step,
            accuracy: confusion.accuracy(),
            macro_f1: confusion.macro_f1(),
            confusion: confusion.counts.clone(),
            examples: labels.len() as u64,
        },
        predicted,
    )
}

/// A tokenized split.
struct Split {
    name: String,
    rows: Vec<Example>,
    tokens: Vec<Vec<i64>>,
}

impl Split {
    fn labels(&self) -> Vec<u32> {
        self.rows.iter().map(|r| r.label).collect()
    }
}

/// Steps whose metrics are read from the device together.
const LOG_EVERY: usize = 25;

/// A step whose metrics still sit on the device.
struct Pending<B: Backend> {
    step: u64,
    epoch: u32,
    lr: f64,
    examples: usize,
    tokens: usize,
    loss: Option<Tensor<B, 1>>,
    norm: Option<Tensor<B, 1>>,
    memory: Option<u64>,
}

fn mix(seed: u64, step: u64, micro: u64) -> u64 {
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

fn execute_on<AB: AutodiffBackend>(
    job: &Job,
    device: AB::Device,
    device_name: String,
    shaping: Shaping,
    memory: &dyn Fn() -> Option<u64>,
    observer: &mut dyn Observer,
    stop: &AtomicBool,
) -> RuntimeResult<Outcome> {
    let started = Instant::now();
    let run = &job.run;
    let cfg = &run.config;
    let plan_json = serde_json::to_string_pretty(run).expect("run serializes");

    // Metrics logged after the last checkpoint are dropped on resume: those
    // steps run again.
    let (_, work) = RunDir::paths(&job.output, run);
    let checkpoint = work.join("checkpoint.safetensors");
    let resuming = job.resume && checkpoint.is_file();
    let mut rundir =
        RunDir::open(&job.output, run, &plan_json, &job.sources, job.resume).map_err(|e| {
            RuntimeError::RunDir {
                message: e.to_string(),
            }
        })?;
    let mut cleanup = DiscardUnlessResumable {
        work: rundir.work.clone(),
        armed: true,
    };

    // Data.
    let loaded = data::load(&cfg.dataset, &job.project_root, &job.data_search).map_err(|e| {
        RuntimeError::Data {
            message: e.to_string(),
        }
    })?;
    let skipped_rows = loaded.skipped.len() as u64;
    if skipped_rows > 0 {
        observer.event(Event::Notice(format!("skipped {skipped_rows} bad rows")));
    }

    // Model.
    let LoadedModel {
        model,
        config,
        tokenizer,
        resolved,
    } = load_classifier::<AB>(cfg, &job.project_root, &job.fetch, &device)?;
    // Shown with --verbose: where the model was found and every place tried.
    observer.event(Event::Notice(format!(
        "model {} from {}{}",
        cfg.model.base.name,
        resolved.dir.display(),
        resolved
            .attempts
            .iter()
            .map(|a| format!("\n  {a}"))
            .collect::<String>()
    )));
    let pad = config.pad_token_id as i64;
    let max_tokens = cfg.dataset.max_tokens as usize;
    fn texts(rows: &[Example]) -> Vec<&str> {
        rows.iter().map(|r| r.text.as_str()).collect()
    }
    let train_tokens = tokenize_all(&tokenizer, &texts(&loaded.train))?;
    let mut splits = Vec::new();
    for (name, rows) in [("eval", &loaded.eval), ("test", &loaded.test)] {
        if let Some(rows) = rows
            && cfg.evaluate.on.iter().any(|s| s == name)
        {
            splits.push(Split {
                name: name.into(),
                tokens: tokenize_all(&tokenizer, &texts(rows))?,
                rows: rows.clone(),
            });
        }
    }

    let mut optimizer = AdamW::<AB::InnerBackend>::new(cfg.train.optimizer);
    let mut model = model;
    let mut progress = Progress {
        step: 0,
        epoch: 0,
        batch: 0,
        evaluations: Vec::new(),
        seconds: [0.0; 4],
        peak_memory_bytes: None,
    };
    let mut notes = Vec::new();
    // Said in the run's output and its report: a reader comparing runs must
    // not assume half-precision compute that did not happen.
    let all_half = cfg.train.precision == Precision::Bf16;
    let packed_half =
        matches!(cfg.method, Method::Qlora(_)) && cfg.quantize.compute == Precision::Bf16;
    if shaping.half {
        model = model.compute_in_half(all_half, packed_half);
    } else {
        let asked = [
            all_half.then_some("train.precision"),
            packed_half.then_some("quantize.compute"),
        ];
        for field in asked.into_iter().flatten() {
            let note = format!(
                "{field} = bf16 applies on CUDA only: this run computed in fp32 on the CPU"
            );
            observer.event(Event::Notice(format!("{}: {note}", run.name)));
            notes.push(note);
        }
    }
    if resuming {
        let (m, p) = state::load_checkpoint::<AB, _>(&checkpoint, model, &mut optimizer, &device)?;
        model = m;
        progress = p;
        notes.push(format!(
            "resumed from the checkpoint at step {}",
            progress.step
        ));
        observer.event(Event::Notice(format!(
            "resuming {} at step {}",
            run.name, progress.step
        )));
        rundir
            .truncate_steps(progress.step)
            .map_err(|e| RuntimeError::RunDir {
                message: e.to_string(),
            })?;
    }
    // The trained parameters move into the optimizer's buffers before the
    // first forward pass (see `AdamW::prepare`). On CUDA the weights only
    // bf16 products read are then bf16 views of their masters
    // (`AdamW::keep_in_half`), unless gradients are accumulated over
    // micro-batches: summed in bf16 they would round.
    if cfg.train.grad_accum <= 1 {
        optimizer.keep_in_half(model.half_weights());
    }
    model = optimizer.prepare(model);
    progress.seconds[0] += started.elapsed().as_secs_f64();

    let names = state::named_params::<AB, _>(&model);
    let trainable: u64 = names
        .iter()
        .filter(|n| n.trainable)
        .map(|n| n.shape.iter().product::<usize>() as u64)
        .sum();

    // Schedule.
    let t = &cfg.train;
    let bs = t.batch_size as usize;
    let accum = t.grad_accum.max(1) as usize;
    let lengths: Vec<usize> = train_tokens.iter().map(Vec::len).collect();
    let batches_per_epoch = lengths.len().div_ceil(bs);
    let steps_per_epoch = batches_per_epoch.div_ceil(accum) as u64;
    let total = match t.length {
        Length::Epochs(e) => e as u64 * steps_per_epoch,
        Length::Steps(n) => n,
    };
    observer.event(Event::Started {
        run: &run.name,
        steps: total,
        from: progress.step,
    });

    let classes = cfg.model.labels.len();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let budget = cfg.budget.time;
    let spent_before = progress.seconds.iter().sum::<f64>() - progress.seconds[0];
    let clock = Instant::now();
    let labels_of =
        |idx: &[usize]| -> Vec<i64> { idx.iter().map(|&i| loaded.train[i].label as i64).collect() };
    let mut last_eval_step = progress.evaluations.last().map(|e| e.step);
    let mut stopped_early = false;
    let mut peak = progress.peak_memory_bytes;
    let first_step = progress.step + 1;
    let mut pending: Vec<Pending<AB::InnerBackend>> = Vec::new();
    let mut window = Instant::now();

    let run_eval = |model: &Classifier<AB>,
                    step: u64,
                    progress: &mut Progress,
                    observer: &mut dyn Observer,
                    final_eval: bool|
     -> Vec<(String, Vec<u32>)> {
        let t0 = Instant::now();
        // Evaluation's batches have other shapes than training's: give back
        // what training is not using before, and what evaluation used
        // after, so that the device never holds both.
        AB::memory_cleanup(&device);
        let valid = model.valid();
        let mut predictions = Vec::new();
        for split in &splits {
            let (e, predicted) = evaluate(
                &valid,
                &split.name,
                step,
                &split.tokens,
                &split.labels(),
                classes,
                bs * 2,
                pad,
                max_tokens,
                shaping.fixed_shape,
                &device,
            );
            observer.event(Event::Evaluated(&e));
            progress.evaluations.push(e);
            if final_eval {
                predictions.push((split.name.clone(), predicted));
            }
        }
        AB::memory_cleanup(&device);
        progress.seconds[3] += t0.elapsed().as_secs_f64();
        predictions
    };

    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut batches_of = u64::MAX;
    'training: while progress.step < total {
        if batches_of != progress.epoch {
            batches = batch::length_grouped(&lengths, bs, t.seed, progress.epoch);
            batches_of = progress.epoch;
        }
        {
            let group = &batches[progress.batch..(progress.batch + accum).min(batches.len())];
            let examples: usize = group.iter().map(Vec::len).sum();
            let mut accumulator = GradientsAccumulator::<Classifier<AB>>::new();
            let mut loss_sum: Option<Tensor<AB::InnerBackend, 1>> = None;
            let mut tokens = 0;
            for (k, idx) in group.iter().enumerate() {
                let seed = mix(t.seed, progress.step, k as u64);
                AB::seed(&device, seed);
                // ftl's own dropout draws on CUDA (model::dropout).
                Draws::seed(seed);
                let mut rows: Vec<&[i64]> =
                    idx.iter().map(|&i| train_tokens[i].as_slice()).collect();
                let mut labels = labels_of(idx);
                tokens += rows.iter().map(|r| r.len()).sum::<usize>();
                if shaping.fixed_shape {
                    rows = filled(&rows, bs);
                    let last = labels.last().copied().unwrap_or(0);
                    labels.resize(rows.len(), last);
                }
                let (ids, mask, _) =
                    batch_tensors::<AB>(&rows, pad, max_tokens, shaping.fixed_shape, &device);
                let targets =
                    Tensor::<AB, 1, Int>::from_data(TensorData::new(labels, [rows.len()]), &device);
                let logits = model.forward(ids, mask);
                // Activations are all alive here: the peak is near.
                if let Some(bytes) = memory() {
                    peak = Some(peak.unwrap_or(0).max(bytes));
                }
                let loss = batch_loss(&loss_fn, logits, targets, idx.len(), examples);
                let detached = loss.clone().inner();
                loss_sum = Some(match loss_sum {
                    Some(s) => s + detached,
                    None => detached,
                });
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
            }
            let grads = accumulator.grads();
            let lr = lr_at(t.lr, &t.schedule, progress.step, total);
            let (updated, norm) = optimizer.step(model, grads, lr, t.clip_grad_norm);
            model = updated;
            progress.step += 1;
            progress.batch += group.len();
            let in_use = memory();
            if let Some(bytes) = in_use {
                peak = Some(peak.unwrap_or(0).max(bytes));
            }
            progress.peak_memory_bytes = peak;

            pending.push(Pending {
                step: progress.step,
                epoch: progress.epoch as u32 + 1,
                lr,
                examples,
                tokens,
                loss: loss_sum,
                norm,
                memory: in_use,
            });
            // Metrics stay on the device and are read in windows: reading
            // waits for the device, so it happens every LOG_EVERY steps and
            // before anything that needs them.
            let boundary = |every: u64| every > 0 && progress.step.is_multiple_of(every);
            let flush_now = pending.len() >= LOG_EVERY
                || pending[0].step == first_step
                || progress.step >= total
                || progress.batch >= batches.len()
                || stop.load(Ordering::SeqCst)
                || matches!(cfg.evaluate.every, Every::Steps(n) if boundary(n))
                || matches!(cfg.output.checkpoint_every, CheckpointEvery::Steps(n) if boundary(n))
                || budget.is_some_and(|l| spent_before + clock.elapsed().as_secs_f64() > l);
            if flush_now {
                let window_secs = window.elapsed().as_secs_f64();
                let read = |values: Vec<Tensor<AB::InnerBackend, 1>>| -> Vec<f64> {
                    if values.is_empty() {
                        return Vec::new();
                    }
                    Tensor::cat(values, 0)
                        .into_data()
                        .convert::<f64>()
                        .to_vec::<f64>()
                        .expect("f64")
                };
                let losses = read(
                    pending
                        .iter()
                        .map(|p| p.loss.clone().expect("a step has a loss"))
                        .collect(),
                );
                let norms = read(pending.iter().filter_map(|p| p.norm.clone()).collect());
                // The read waited for the device: a product of these steps
                // that failed has been recorded, and their metrics are not
                // logged.
                if let Some(message) = crate::runtime::backend::device_failure() {
                    let step = pending.last().map_or(progress.step, |p| p.step);
                    return Err(RuntimeError::DeviceFailure { step, message });
                }
                let secs = window.elapsed().as_secs_f64().max(window_secs);
                window = Instant::now();
                let per_step = secs / pending.len() as f64;
                let warmup_window = pending[0].step == first_step && pending.len() == 1;
                progress.seconds[if warmup_window && first_step == 1 {
                    1
                } else {
                    2
                }] += secs;
                for (i, p) in pending.drain(..).enumerate() {
                    let metrics = StepMetrics {
                        step: p.step,
                        epoch: p.epoch,
                        loss: losses[i],
                        lr: p.lr,
                        grad_norm: norms.get(i).copied().unwrap_or(0.0),
                        samples_per_s: p.examples as f64 / per_step,
                        tokens_per_s: p.tokens as f64 / per_step,
                        memory_bytes: p.memory,
                    };
                    rundir
                        .log_step(&metrics)
                        .map_err(|e| RuntimeError::RunDir {
                            message: e.to_string(),
                        })?;
                    observer.event(Event::Step(&metrics, total));
                    if !metrics.loss.is_finite() {
                        return Err(RuntimeError::NonFinite { step: p.step });
                    }
                }
            }
            if progress.step == first_step {
                // What only the first step needed (autotuning's trial
                // buffers, on a cold start) goes back to the device. The
                // metrics were just read: the device has finished the step.
                AB::memory_cleanup(&device);
            }
            if progress.batch >= batches.len() {
                progress.epoch += 1;
                progress.batch = 0;
                if cfg.evaluate.every == Every::Epoch && progress.step < total {
                    run_eval(&model, progress.step, &mut progress, observer, false);
                    last_eval_step = Some(progress.step);
                }
                if cfg.output.checkpoint_every == CheckpointEvery::Epoch && progress.step < total {
                    state::save_checkpoint::<AB, _>(&checkpoint, &model, &optimizer, &progress)?;
                }
            }
            if let Every::Steps(n) = cfg.evaluate.every
                && progress.step.is_multiple_of(n)
                && progress.step < total
            {
                run_eval(&model, progress.step, &mut progress, observer, false);
                last_eval_step = Some(progress.step);
            }
            if let CheckpointEvery::Steps(n) = cfg.output.checkpoint_every
                && progress.step.is_multiple_of(n)
                && progress.step < total
            {
                state::save_checkpoint::<AB, _>(&checkpoint, &model, &optimizer, &progress)?;
            }
            if stop.load(Ordering::SeqCst) {
                state::save_checkpoint::<AB, _>(&checkpoint, &model, &optimizer, &progress)?;
                return Err(RuntimeError::Interrupted { dir: work });
            }
            if let Some(limit) = budget
                && spent_before + clock.elapsed().as_secs_f64() > limit
                && progress.step < total
            {
                notes.push(format!(
                    "stopped at step {} of {}: the time budget of {limit:.0} s ran out",
                    progress.step, total
                ));
                stopped_early = true;
                break 'training;
            }
        }
    }
    let _ = stopped_early;
    // From here on the model holds its f32 masters (saved as they are).
    let model = optimizer.masters(model);

    // Final evaluation, unless one was just taken at this step.
    let predictions = if last_eval_step != Some(progress.step) || progress.evaluations.is_empty() {
        run_eval(&model, progress.step, &mut progress, observer, true)
    } else {
        Vec::new()
    };

    // Artifacts.
    let valid = model.valid();
    let save = &cfg.output.save;
    if save.contains(&Artifact::Adapters) {
        save_weights(&rundir.work, &valid, cfg, &config, &resolved)?;
    }
    if save.contains(&Artifact::Merged) {
        save_merged(
            &rundir.work.join("merged"),
            valid.clone(),
            cfg,
            &config,
            &resolved,
        )?;
    }
    if save.contains(&Artifact::Predictions) {
        for (split, predicted) in &predictions {
            let rows = &splits
                .iter()
                .find(|s| &s.name == split)
                .expect("split")
                .rows;
            let mut text = String::new();
            for (row, p) in rows.iter().zip(predicted) {
                text.push_str(
                    &serde_json::json!({
                        "line": row.line,
                        "label": cfg.model.labels[row.label as usize],
                        "predicted": cfg.model.labels[*p as usize],
                    })
                    .to_string(),
                );
                text.push('\n');
            }
            let path = rundir.work.join(format!("predictions.{split}.jsonl"));
            std::fs::write(&path, text).map_err(|e| RuntimeError::io(&path, "write", &e))?;
        }
    }
    if !save.contains(&Artifact::Checkpoints) {
        let _ = std::fs::remove_file(&checkpoint);
    } else {
        state::save_checkpoint::<AB, _>(&checkpoint, &model, &optimizer, &progress)?;
    }

    // Summary.
    let steps = rundir.steps();
    let losses: Vec<f64> = steps.iter().map(|s| s.loss).collect();
    let norms: Vec<f64> = steps.iter().map(|s| s.grad_norm).collect();
    let mut last: BTreeMap<String, Evaluation> = BTreeMap::new();
    for e in &progress.evaluations {
        last.insert(e.split.clone(), e.clone());
    }
    let mut sha256 = BTreeMap::new();
    // The weights actually read are hashed (a cached or local copy may differ
    // from what the stdlib pins, and loading does not check); a difference is
    // said in the notes.
    let weights = resolved.dir.join("model.safetensors");
    let model_sha =
        data::sha256_file(&weights).map_err(|e| RuntimeError::io(&weights, "read", &e))?;
    if let Some(pinned) = cfg.model.base.sha256.get("weights")
        && *pinned != model_sha
    {
        notes.push(format!(
            "the weights read ({}) are not the file the model declaration pins (sha256 {})",
            weights.display(),
            pinned
        ));
    }
    sha256.insert("model".into(), model_sha);
    for (role, file) in std::iter::once(("train", Some(&cfg.dataset.train))).chain(
        [("eval", &cfg.dataset.eval), ("test", &cfg.dataset.test)]
            .into_iter()
            .map(|(r, s)| {
                (
                    r,
                    match s {
                        Some(crate::config::Split::File { file }) => Some(file),
                        _ => None,
                    },
                )
            }),
    ) {
        let Some(file) = file else { continue };
        // A pinned data file was checked against its pin when it was loaded.
        let sum = match cfg.dataset.sha256.get(role) {
            Some(pinned) => pinned.clone(),
            None => {
                let path =
                    data::resolve(file, &job.project_root, &job.data_search).map_err(|e| {
                        RuntimeError::Data {
                            message: e.to_string(),
                        }
                    })?;
                data::sha256_file(&path).map_err(|e| RuntimeError::io(&path, "read", &e))?
            }
        };
        sha256.insert(format!("data.{role}"), sum);
    }
    let mut versions = BTreeMap::new();
    versions.insert("ftl".into(), env!("CARGO_PKG_VERSION").into());
    versions.insert("burn".into(), "0.21.0".into());
    let [load, warmup, train, eval] = progress.seconds;
    let summary = Summary {
        run: run.name.clone(),
        plan_hash: run.hash.clone(),
        method: cfg.method.name().into(),
        model: cfg.model.base.name.clone(),
        evaluations: last.into_values().collect(),
        peak_memory_bytes: progress.peak_memory_bytes,
        estimated_memory_bytes: run.memory.total,
        timing: Timing {
            load,
            warmup,
            train,
            eval,
        },
        stability: metrics::stability(&losses, &norms),
        trainable_parameters: trainable,
        // The base encoder plus what was added to it (head, adapters); under
        // full fine-tuning everything trains, so the trainable count is the total.
        total_parameters: match cfg.method {
            Method::Full => trainable,
            _ => run.parameters.base + trainable,
        },
        steps: progress.step,
        seed: t.seed,
        device: device_name,
        versions,
        sha256,
        skipped_rows,
        notes,
    };
    let dir = rundir.finish(&summary).map_err(|e| RuntimeError::RunDir {
        message: e.to_string(),
    })?;
    cleanup.armed = false;
    Ok(Outcome { dir, summary })
}

/// Removes a run's working folder when the run fails before it saved a
/// checkpoint (bad data, a broken model, a panic): nothing in it could be
/// resumed, and leaving it would make the next attempt stop at "an
/// interrupted run". A folder with a checkpoint (Ctrl-C, a failure after
/// one was saved) stays for `ftl run --resume`.
struct DiscardUnlessResumable {
    work: PathBuf,
    armed: bool,
}

impl Drop for DiscardUnlessResumable {
    fn drop(&mut self) {
        if self.armed && !self.work.join("checkpoint.safetensors").is_file() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

/// Saves what a run trained: PEFT adapters plus the head under `adapter/`,
/// or, for full fine-tuning, a Hugging Face model plus the head under `model/`.
pub fn save_weights<B: Backend>(
    dir: &Path,
    model: &Classifier<B>,
    cfg: &RunConfig,
    config: &EncoderConfig,
    resolved: &Resolved,
) -> RuntimeResult<()> {
    match &cfg.method {
        Method::Lora(lora) | Method::Qlora(lora) => {
            let out = dir.join("adapter");
            state::save_adapter(&out, model, &cfg.model.base, lora, config.architecture)?;
            state::save_head(&out.join("head.safetensors"), model, &cfg.model.labels)
        }
        Method::Full => save_hf_model(&dir.join("model"), model, cfg, config, resolved),
    }
}

/// Writes `model` (adapters already merged) as a Hugging Face model folder plus the head.
fn save_hf_model<B: Backend>(
    out: &Path,
    model: &Classifier<B>,
    cfg: &RunConfig,
    config: &EncoderConfig,
    resolved: &Resolved,
) -> RuntimeResult<()> {
    std::fs::create_dir_all(out).map_err(|e| RuntimeError::io(out, "create", &e))?;
    state::save_hf_encoder(&out.join("model.safetensors"), model, config)?;
    for file in ["config.json", "tokenizer.json"] {
        let from = resolved.dir.join(file);
        std::fs::copy(&from, out.join(file)).map_err(|e| RuntimeError::io(&from, "copy", &e))?;
    }
    state::save_head(&out.join("head.safetensors"), model, &cfg.model.labels)
}

/// Writes the model with its adapters folded into the base weights.
pub fn save_merged<B: Backend>(
    out: &Path,
    model: Classifier<B>,
    cfg: &RunConfig,
    config: &EncoderConfig,
    resolved: &Resolved,
) -> RuntimeResult<()> {
    // A frozen base kept in bf16 for training is merged from its f32 file,
    // so the merged weights are the base's own plus the update.
    let model = if model.base_in_half() {
        let device = model.head.classifier.weight.device();
        let (_, fresh, _) = load_model_dir::<B>(&resolved.dir, &device)?;
        model.with_full_base(fresh)
    } else {
        model
    };
    save_hf_model(out, &model.merged(), cfg, config, resolved)
}

/// A finished run's trained model, loaded for evaluation or prediction.
pub struct TrainedRun<B: Backend> {
    /// The run as planned.
    pub run: Run,
    /// The model with its trained weights.
    pub loaded: LoadedModel<B>,
}

/// Loads the model a finished run directory holds.
pub fn load_run<B: Backend>(
    dir: &Path,
    fetch_options: &FetchOptions,
    device: &B::Device,
) -> RuntimeResult<TrainedRun<B>> {
    let bad = |message: String| RuntimeError::BadRun {
        path: dir.to_path_buf(),
        message,
    };
    let plan = dir.join("plan.json");
    let text = std::fs::read_to_string(&plan)
        .map_err(|_| bad("no plan.json here; is this a run directory?".into()))?;
    let run: Run =
        serde_json::from_str(&text).map_err(|e| bad(format!("plan.json is not readable: {e}")))?;
    let cfg = &run.config;
    // The project root is where the pipeline was; a local model path was
    // made absolute by nothing, so resolve it against the run's grandparent.
    let root = dir
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let mut loaded = load_classifier::<B>(cfg, root, fetch_options, device)?;
    match &cfg.method {
        Method::Lora(lora) | Method::Qlora(lora) => {
            let adapter = dir.join("adapter");
            if !adapter.is_dir() {
                return Err(bad(
                    "the run saved no adapters (`output.save` lacks `adapters`)".into(),
                ));
            }
            loaded.model = state::load_adapter(
                &adapter,
                loaded.model,
                &cfg.model.base,
                lora,
                loaded.config.architecture,
                device,
            )?;
            loaded.model =
                state::load_head(&adapter.join("head.safetensors"), loaded.model, device)?;
        }
        Method::Full => {
            let model_dir = dir.join("model");
            if !model_dir.is_dir() {
                return Err(bad(
                    "the run saved no model (`output.save` lacks `adapters`)".into(),
                ));
            }
            let (encoder, _) = crate::runtime::model::load_encoder::<B>(
                &model_dir.join("model.safetensors"),
                &loaded.config,
                device,
            )?;
            loaded.model.encoder = encoder;
            loaded.model =
                state::load_head(&model_dir.join("head.safetensors"), loaded.model, device)?;
        }
    }
    Ok(TrainedRun { run, loaded })
}

/// Evaluates a finished run on a labeled file read with the run's dataset settings.
pub fn eval_file(
    dir: &Path,
    file: &Path,
    fetch_options: &FetchOptions,
) -> RuntimeResult<Evaluation> {
    let device = cpu_device();
    let trained = load_run::<Cpu>(dir, fetch_options, &device)?;
    let cfg = &trained.run.config;
    let mut dataset = cfg.dataset.clone();
    dataset.format = match file.extension().and_then(|e| e.to_str()) {
        Some("csv") => crate::config::Format::Csv,
        Some("jsonl") => crate::config::Format::Jsonl,
        Some("tsv") => crate::config::Format::Tsv,
        _ => dataset.format,
    };
    let table =
        data::read::read_table(file, &file.display().to_string(), &dataset).map_err(|e| {
            RuntimeError::Data {
                message: e.to_string(),
            }
        })?;
    let texts: Vec<&str> = table.examples.iter().map(|r| r.text.as_str()).collect();
    let tokens = tokenize_all(&trained.loaded.tokenizer, &texts)?;
    let labels: Vec<u32> = table.examples.iter().map(|r| r.label).collect();
    let (e, _) = evaluate(
        &trained.loaded.model,
        "file",
        0,
        &tokens,
        &labels,
        cfg.model.labels.len(),
        64,
        trained.loaded.config.pad_token_id as i64,
        cfg.dataset.max_tokens as usize,
        false,
        &device,
    );
    Ok(e)
}

/// Label and class probabilities for each text, from a finished run.
pub fn predict_texts(
    dir: &Path,
    texts: &[String],
    fetch_options: &FetchOptions,
) -> RuntimeResult<Vec<(String, HashMap<String, f32>)>> {
    let device = cpu_device();
    let trained = load_run::<Cpu>(dir, fetch_options, &device)?;
    let cfg = &trained.run.config;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = tokenize_all(&trained.loaded.tokenizer, &refs)?;
    let (predicted, probs) = predict(
        &trained.loaded.model,
        &tokens,
        64,
        trained.loaded.config.pad_token_id as i64,
        cfg.dataset.max_tokens as usize,
        false,
        &device,
    );
    Ok(predicted
        .iter()
        .zip(probs)
        .map(|(&p, probs)| {
            let by_label = cfg
                .model
                .labels
                .iter()
                .cloned()
                .zip(probs)
                .collect::<HashMap<_, _>>();
            (cfg.model.labels[p as usize].clone(), by_label)
        })
        .collect())
}

/// Merges a finished run's adapters into its base and writes a Hugging Face model to `out`.
pub fn merge_run(dir: &Path, out: &Path, fetch_options: &FetchOptions) -> RuntimeResult<()> {
    let device = cpu_device();
    let trained = load_run::<Cpu>(dir, fetch_options, &device)?;
    save_merged(
        out,
        trained.loaded.model,
        &trained.run.config,
        &trained.loaded.config,
        &trained.loaded.resolved,
    )
}
