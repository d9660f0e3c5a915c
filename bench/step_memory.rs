//! Host memory of full fine-tuning on the CPU, counted by a global allocator,
//! in units of the trained parameters' f32 size P: before a step, after its
//! backward pass, the highest point during the optimizer step, and after it.
//! On the GPU ftl samples its allocator only after the forward pass and
//! after the step; this shows on the CPU what the step itself adds.
//!
//! `cargo run --release --example step_memory`

use std::path::Path;

use burn::backend::Autodiff;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use ftl::config::{AdamW as AdamWSettings, Method};
use ftl::runtime::backend::{Cpu, cpu_device};
use ftl::runtime::model::EncoderConfig;
use ftl::runtime::train::optim::AdamW;
use ftl::runtime::train::state::named_params;

#[path = "counting.rs"]
mod counting;

type Train = Autodiff<Cpu>;

fn main() {
    let config = EncoderConfig::from_json(counting::SMALL_BERT, Path::new("config.json"))
        .expect("a valid config");
    let device = cpu_device();
    let mut model = counting::classifier(&config, &Method::Full, None);
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
        let before = counting::live();
        let logits = model.forward(ids.clone(), mask.clone());
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let after_backward = counting::live();
        counting::reset_peak();
        model = optimizer.step(model, grads, 1e-3, None).0;
        let in_step = counting::peak();
        println!(
            "step {step}: before {:.2}P, after backward {:.2}P, highest in the optimizer step {:.2}P \
             (+{:.2}P), after {:.2}P",
            p(before),
            p(after_backward),
            p(in_step),
            p(in_step - after_backward),
            p(counting::live()),
        );
    }
}
