//! Host memory of full fine-tuning on the CPU, counted by a global allocator,
//! in units of the trained parameters' f32 size P: before a step, after its
//! backward pass, the highest point during the optimizer step, and after it.
//! On the GPU ftl samples its allocator only after the forward pass and
//! after the step; this shows on the CPU what the step itself adds.
//!
//! `cargo run --release --example step_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};

use burn::backend::Autodiff;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use ftl::config::{AdamW as AdamWSettings, Method, Precision, QuantFormat, Quantize};
use ftl::runtime::backend::{Cpu, cpu_device};
use ftl::runtime::model::EncoderConfig;
use ftl::runtime::model::classifier::Classifier;
use ftl::runtime::model::head::{ClassificationHeadConfig, Pooling};
use ftl::runtime::train::optim::AdamW;
use ftl::runtime::train::state::named_params;

/// Counts the bytes the process holds and the highest count since reset.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn moved(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        moved(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        moved(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        moved(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

type Train = Autodiff<Cpu>;

/// A small BERT: big enough that its parameters dwarf bookkeeping.
const BERT: &str = r#"{
  "model_type": "bert", "vocab_size": 4000, "hidden_size": 128, "num_hidden_layers": 2,
  "num_attention_heads": 4, "intermediate_size": 512, "max_position_embeddings": 40,
  "type_vocab_size": 2, "pad_token_id": 0, "layer_norm_eps": 1e-12, "hidden_act": "gelu"
}"#;

fn main() {
    let config = EncoderConfig::from_json(BERT, Path::new("config.json")).expect("a valid config");
    let device = cpu_device();
    let encoder = config.init::<Train>(&device);
    let head = ClassificationHeadConfig::new(128, 2, Pooling::Mean, 1).init(&device);
    let quantize = Quantize {
        format: QuantFormat::None,
        block_size: 64,
        double_quant: false,
        compute: Precision::Fp32,
    };
    let mut model = Classifier { encoder, head }
        .prepare(config.architecture, &Method::Full, &quantize, 3)
        .expect("full fine-tuning prepares");
    let trained: usize = named_params(&model)
        .iter()
        .filter(|p| p.trainable)
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    let unit = (trained * 4) as f64;
    println!(
        "P = {trained} trained parameters, {:.2} MiB in f32",
        unit / 1048576.0
    );
    let mut optimizer = AdamW::new(AdamWSettings {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
    });
    let (batch, seq) = (8, 16);
    let ids: Vec<i64> = (0..batch * seq).map(|i| (i % 3999 + 1) as i64).collect();
    let ids = Tensor::<Train, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
    let mask = Tensor::<Train, 2, Int>::ones([batch, seq], &device);
    let labels: Vec<i64> = (0..batch).map(|i| (i % 2) as i64).collect();
    let targets = Tensor::<Train, 1, Int>::from_data(TensorData::new(labels, [batch]), &device);
    let p = |bytes: isize| bytes as f64 / unit;
    for step in 1..=4 {
        let before = LIVE.load(Ordering::SeqCst);
        let logits = model.forward(ids.clone(), mask.clone());
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let after_backward = LIVE.load(Ordering::SeqCst);
        PEAK.store(after_backward, Ordering::SeqCst);
        model = optimizer.step(model, grads, 1e-3, None).0;
        let in_step = PEAK.load(Ordering::SeqCst);
        println!(
            "step {step}: before {:.2}P, after backward {:.2}P, highest in the optimizer step {:.2}P \
             (+{:.2}P), after {:.2}P",
            p(before),
            p(after_backward),
            p(in_step),
            p(in_step - after_backward),
            p(LIVE.load(Ordering::SeqCst)),
        );
    }
}
