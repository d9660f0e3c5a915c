//! Training memory, counted by a global allocator on the CPU:
//! - what attention keeps until the backward pass: ftl's attention keeps its
//!   one-byte dropout mask besides its inputs, where burn's composition
//!   keeps the shifted scores, their exponentials, the mask and the dropped
//!   probabilities, all `[batch, heads, seq, seq]`;
//! - what the optimizer step adds to what the backward pass left: one copy
//!   of the trained parameters' size (the gradients laid out flat), no more;
//! - what a whole forward pass keeps, against the estimator's activation
//!   term (`ftl estimate`), for full fine-tuning and LoRA in fp32 and with
//!   bf16 products.
//!
//! Its own test binary, with one test, so that nothing else allocates while
//! it counts.

use std::path::Path;

use burn::backend::Autodiff;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;
use ftl::config::{AdamW as AdamWSettings, Method, Precision};
use ftl::runtime::backend::{Cpu, cpu_device};
use ftl::runtime::model::EncoderConfig;
use ftl::runtime::model::attention_core::{attention, composed};
use ftl::runtime::model::classifier::Classifier;
use ftl::runtime::model::dropout::Dropout;
use ftl::runtime::model::head::{ClassificationHeadConfig, Pooling};
use ftl::runtime::train::optim::AdamW;
use ftl::runtime::train::state::named_params;
use ftl::span::Sources;

#[path = "../bench/counting.rs"]
mod counting;

type Train = Autodiff<Cpu>;
type Attention = fn(
    Tensor<Train, 4>,
    Tensor<Train, 4>,
    Tensor<Train, 4>,
    Tensor<Train, 4>,
    &Dropout,
    bool,
) -> Tensor<Train, 4>;

const B: usize = 4;
const H: usize = 4;
const S: usize = 64;
const D: usize = 16;

/// Bytes alive after the forward pass that were not alive before it, less
/// the result itself, and whether the gradients still arrive.
fn kept(f: Attention, half: bool) -> isize {
    let device = cpu_device();
    let input = || {
        let t = Tensor::<Train, 4>::random([B, H, S, D], Distribution::Normal(0.0, 1.0), &device);
        if half {
            t.cast(burn::tensor::FloatDType::BF16)
        } else {
            t
        }
        .require_grad()
    };
    let (q, k, v) = (input(), input(), input());
    let bias =
        Tensor::<Train, 4>::zeros([B, 1, 1, S], &device).expand([B as i64, -1, S as i64, S as i64]);
    let dropout = Dropout::new(0.1);
    let before = counting::live();
    let out = f(q.clone(), k.clone(), v.clone(), bias, &dropout, half);
    let width = if half { 2 } else { 4 };
    let kept = counting::live() - before - (B * H * S * D * width) as isize;
    let grads = out.sum().backward();
    for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
        let g = t.grad(&grads).expect("a gradient");
        let norm: f32 = g
            .cast(burn::tensor::FloatDType::F32)
            .powi_scalar(2)
            .sum()
            .into_scalar();
        assert!(norm > 0.0, "∂{name} is zero");
    }
    kept
}

#[test]
fn training_memory() {
    attention_keeps_only_its_dropout_mask();
    the_optimizer_step_adds_one_parameter_size();
    the_estimate_counts_what_the_forward_pass_keeps();
}

fn attention_keeps_only_its_dropout_mask() {
    let scores = (B * H * S * S) as isize;
    for half in [false, true] {
        // The first calls set up thread pools and the products' scratch
        // space, which stay.
        kept(attention, half);
        kept(composed, half);
        let ours = kept(attention, half);
        let burns = kept(composed, half);
        let precision = if half { "bf16 products" } else { "f32" };
        eprintln!(
            "{precision}: kept until the backward pass, per [batch, heads, seq, seq] value: \
             ftl {:.2} bytes, burn's composition {:.2} bytes",
            ours as f64 / scores as f64,
            burns as f64 / scores as f64
        );
        // The mask, one byte per score, and bookkeeping.
        assert!(
            ours <= scores + 64 * 1024,
            "{precision}: ftl's attention kept {ours} bytes for {scores} scores"
        );
        // The shifted scores and the exponentials in f32, the mask, and the
        // dropped probabilities in the products' dtype.
        let composition = 4 + 4 + 1 + if half { 2 } else { 4 };
        assert!(
            burns >= composition * scores,
            "{precision}: burn's composition kept {burns} bytes for {scores} scores"
        );
    }
}

/// Full fine-tuning steps: the highest count during the optimizer step,
/// above the count after the backward pass, in units of the trained
/// parameters' f32 size. The flat gradients are that one unit (the
/// per-parameter gradients are still alive while they are gathered); the
/// moments and the parameters update in place.
fn the_optimizer_step_adds_one_parameter_size() {
    let config = EncoderConfig::from_json(counting::SMALL_BERT, Path::new("config.json"))
        .expect("a valid config");
    let device = cpu_device();
    let mut model = counting::classifier(&config, &Method::Full, None);
    let mut optimizer = AdamW::new(AdamWSettings {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
    });
    let trained: usize = named_params(&model)
        .iter()
        .filter(|p| p.trainable)
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    let unit = (trained * 4) as f64;
    let (batch, seq) = (8, 16);
    let ids: Vec<i64> = (0..batch * seq).map(|i| (i % 3999 + 1) as i64).collect();
    let ids = Tensor::<Train, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
    let mask = Tensor::<Train, 2, Int>::ones([batch, seq], &device);
    let labels: Vec<i64> = (0..batch).map(|i| (i % 2) as i64).collect();
    let targets = Tensor::<Train, 1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let mut added = Vec::new();
    let mut losses = Vec::new();
    for _ in 0..4 {
        let logits = model.forward(ids.clone(), mask.clone());
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, targets.clone());
        losses.push(loss.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let after_backward = counting::live();
        counting::reset_peak();
        model = optimizer.step(model, grads, 1e-3, None).0;
        added.push((counting::peak() - after_backward) as f64 / unit);
    }
    eprintln!("optimizer steps added {added:.2?} parameter sizes; losses {losses:?}");
    assert!(losses[3] < losses[0], "the steps train: {losses:?}");
    // The first step lays the buffers out; after it, one unit.
    for (step, a) in added.iter().enumerate().skip(1) {
        assert!(
            (0.9..1.1).contains(a),
            "step {}: the optimizer added {a:.2} parameter sizes",
            step + 1
        );
    }
}

/// Four runs of a small BERT (batch 32, 32 tokens, dropout 0.1; LoRA rank 8
/// on query and value with dropout 0.05): full and LoRA, fp32 and bf16.
const PIPELINE: &str = r#"
import "std/datasets"

model tiny {
  path = "models/tiny"
  architecture = bert
  layers = 2
  hidden = 128
  heads = 4
  intermediate = 512
  vocab = 4000
  max_positions = 40
  modules = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
  lora_targets = ["query", "value"]
}

pipeline p {
  model.base = tiny
  dataset = datasets.sst2 {
    max_tokens = 32
  }
  train {
    steps = 1
    batch_size = 32
  }
  sweep {
    method = [full, lora(rank = 8)]
    train.precision = [fp32, bf16]
  }
}
"#;

fn the_estimate_counts_what_the_forward_pass_keeps() {
    let loader = ftl::project::MemoryLoader::new([("memory.ft", PIPELINE)]);
    let mut sources = Sources::new();
    let checked = ftl::check("memory.ft", &loader, &mut sources, "").expect("checks");
    let plan = ftl::lower(&checked, &sources).expect("lowers");
    assert_eq!(plan.runs.len(), 4);
    let device = cpu_device();
    for run in &plan.runs {
        let c = &run.config;
        let config = EncoderConfig::from_json(counting::SMALL_BERT, Path::new("config.json"))
            .expect("a valid config");
        let mut encoder = config.init::<Train>(&device);
        encoder.set_dropout(c.model.dropout);
        let head = ClassificationHeadConfig::new(128, c.model.labels.len(), Pooling::Mean, 1)
            .init(&device);
        let mut model = Classifier { encoder, head }
            .prepare(config.architecture, &c.method, &c.quantize, 3)
            .expect("the method prepares");
        if c.train.precision == Precision::Bf16 {
            model = model.compute_in_half(true, false);
        }
        let (batch, seq) = (c.train.batch_size as usize, c.dataset.max_tokens as usize);
        let ids: Vec<i64> = (0..batch * seq).map(|i| (i % 3999 + 1) as i64).collect();
        let ids = Tensor::<Train, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
        let mask = Tensor::<Train, 2, Int>::ones([batch, seq], &device);
        // Once to set up scratch space that stays, then counted.
        let mut kept = 0;
        for _ in 0..2 {
            let before = counting::live();
            let logits = model.forward(ids.clone(), mask.clone());
            kept = counting::live() - before;
            drop(logits.sum().backward());
        }
        // The CPU's dropouts are tensor operations that keep their masks.
        let estimate = (ftl::estimate::activations(c) + ftl::estimate::dropout_masks(c)) as f64;
        let error = kept as f64 / estimate - 1.0;
        eprintln!(
            "{}: kept {kept} bytes, estimated {estimate}, {:+.1}%",
            run.name,
            error * 100.0
        );
        // What is not counted is the autodiff graph's own bookkeeping, about
        // 100 KB here whatever the shapes.
        assert!(
            error.abs() < 0.03,
            "{}: the forward pass kept {kept} bytes, the estimate says {estimate}",
            run.name
        );
    }
}
