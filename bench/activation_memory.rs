//! What a training forward pass keeps for the backward pass, counted by a
//! global allocator on the CPU, at the benchmarks' shapes (batch 32, 64
//! tokens, dropout 0.1, bf16 products or fp32): the bytes alive after the
//! forward pass that were not alive before it. burn's autodiff keeps the same
//! tensors on every backend, except the dropout masks that ftl's CUDA
//! kernels draw again instead of keeping (`ftl::estimate::dropout_masks`):
//! this count less those is what the estimator's activation term (`ftl
//! estimate`, "activations") should match on CUDA for full fine-tuning and
//! LoRA. QLoRA differs on the CPU: a packed base dequantizes again in the
//! backward pass there.
//!
//! `cargo run --release --example activation_memory -- MODEL_DIR METHOD PRECISION`
//! with METHOD `full` or `lora` (rank 8 on query and value, as
//! `bench/pipelines/speed.ft`) and PRECISION `bf16` or `fp32`.

use std::path::Path;

use burn::backend::Autodiff;
use burn::prelude::*;
use ftl::config::{Lora, Method};
use ftl::runtime::backend::{Cpu, cpu_device};

#[path = "counting.rs"]
mod counting;
use ftl::runtime::model::{Architecture, EncoderConfig};

type Train = Autodiff<Cpu>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, method, precision] = &args[..] else {
        eprintln!("usage: activation_memory MODEL_DIR full|lora bf16|fp32");
        std::process::exit(2);
    };
    let half = match precision.as_str() {
        "bf16" => true,
        "fp32" => false,
        other => {
            eprintln!("unknown precision {other}: bf16 or fp32");
            std::process::exit(2);
        }
    };
    let path = Path::new(dir).join("config.json");
    let config = EncoderConfig::from_file(&path).expect("a readable config.json");
    let method = match method.as_str() {
        "full" => Method::Full,
        "lora" => Method::Lora(Lora {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: match config.architecture {
                Architecture::Bert => vec!["query".into(), "value".into()],
                Architecture::MpNet => vec!["q".into(), "v".into()],
            },
        }),
        other => {
            eprintln!("unknown method {other}: full or lora");
            std::process::exit(2);
        }
    };
    let device = cpu_device();
    let mut model = counting::classifier(&config, &method, Some(0.1));
    if half {
        model = model.compute_in_half(true, false);
    }
    let (batch, seq) = (32, 64);
    let ids: Vec<i64> = (0..batch * seq).map(|i| (i % 997 + 5) as i64).collect();
    let ids = Tensor::<Train, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
    let mask = Tensor::<Train, 2, Int>::ones([batch, seq], &device);
    let mib = |bytes: isize| bytes as f64 / 1048576.0;
    for pass in 1..=2 {
        let before = counting::live();
        let logits = model.forward(ids.clone(), mask.clone());
        let kept = counting::live() - before;
        println!(
            "pass {pass}: kept after the forward pass {:.1} MiB",
            mib(kept)
        );
        let grads = logits.sum().backward();
        drop(grads);
    }
}
