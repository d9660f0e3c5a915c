//! Training on a tiny random encoder, on the CPU: what each method trains and
//! keeps frozen, that the loss goes down, that a resumed run ends exactly as
//! an uninterrupted one, and that saved adapters have PEFT's names.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use ftl::config::{AdamW as AdamWSettings, Lora, Method, Precision, QuantFormat, Quantize};
use ftl::runtime::backend::{Cpu, cpu_device};
use ftl::runtime::model::classifier::{Classifier, for_each_projection, projections};
use ftl::runtime::model::head::{ClassificationHeadConfig, Pooling};
use ftl::runtime::model::load_encoder;
use ftl::runtime::train::optim::AdamW;
use ftl::runtime::train::run::{Event, Job, Observer, Silent, execute, load_run};
use ftl::runtime::train::state::{named_params, param_values, read_safetensors};

type Train = Autodiff<Cpu>;

/// Dropout and random initialisation draw from the backend's one
/// generator: runs whose numbers are compared must not share it with
/// another test, so every test that draws from it (a model made with random
/// weights, a training run) takes this lock.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const WORDS: [&str; 16] = [
    "good", "great", "fine", "lovely", "bad", "awful", "poor", "dull", "the", "film", "was",
    "very", "plot", "acting", "really", "quite",
];

/// A tiny BERT folder (config, random weights, word-level tokenizer) in `dir`.
fn tiny_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = common::config(common::TINY_BERT);
    // Small weights, unit LayerNorms: a sane starting point, like a pretrained model's.
    common::write_weights(&dir.join("model.safetensors"), &config, |tensors| {
        for (t, (name, _, values)) in tensors.iter_mut().enumerate() {
            for (j, v) in values.iter_mut().enumerate() {
                *v = if name.ends_with("LayerNorm.weight") {
                    1.0
                } else if name.ends_with("LayerNorm.bias") {
                    0.0
                } else {
                    // SplitMix64 of (tensor, element) → uniform in ±0.2.
                    let mut z = ((t as u64) << 32 | j as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    ((z >> 11) as f64 / (1u64 << 53) as f64 * 0.4 - 0.2) as f32
                };
            }
        }
    });
    std::fs::write(dir.join("config.json"), common::TINY_BERT).unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tiny_wordpiece.json"),
    )
    .unwrap();
    let mut tokenizer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        .iter()
        .chain(WORDS.iter())
        .enumerate()
    {
        vocab.insert(w.to_string(), i.into());
    }
    tokenizer["model"]["vocab"] = vocab.into();
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

/// Sentences whose label is carried by one sentiment word among fillers.
fn toy_rows(n: usize, seed: usize) -> String {
    let mut csv = String::from("text,label\n");
    for i in 0..n {
        let k = i * 7 + seed * 13;
        let positive = (k / 3).is_multiple_of(2);
        let word = if positive {
            WORDS[k % 4]
        } else {
            WORDS[4 + k % 4]
        };
        let fill = |j: usize| WORDS[8 + (k * 5 + j * 3) % 8];
        let len = 2 + k % 5;
        let mut words: Vec<&str> = (0..len).map(fill).collect();
        words.insert(k % (len + 1), word);
        csv.push_str(&format!(
            "{},{}\n",
            words.join(" "),
            if positive { "pos" } else { "neg" }
        ));
    }
    csv
}

/// A project with the tiny model, toy data and one pipeline using `method`.
fn project(method: &str, extra: &str) -> (tempfile::TempDir, ftl::plan::Plan) {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(&dir.path().join("tiny"));
    std::fs::write(dir.path().join("train.csv"), toy_rows(192, 1)).unwrap();
    std::fs::write(dir.path().join("eval.csv"), toy_rows(64, 2)).unwrap();
    let source = format!(
        r#"model tiny {{
  path = "tiny"
  architecture = bert
  layers = 2
  hidden = 16
  heads = 4
  intermediate = 32
  vocab = 50
  max_positions = 40
  modules = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
  lora_targets = ["query", "value"]
}}

pipeline toy {{
  model.base = tiny
  dataset {{
    format = csv
    train = "train.csv"
    eval = "eval.csv"
    text = "text"
    label = "label"
    labels = ["neg", "pos"]
    max_tokens = 16
  }}
  method = {method}
  train {{
    steps = 60
    batch_size = 16
    lr = 3e-2
    seed = 5
  }}
  evaluate.every = end
  device.backend = cpu
  output {{
    dir = "out"
    checkpoint_every = 4
  }}
  {extra}
}}
"#
    );
    std::fs::write(dir.path().join("toy.ft"), &source).unwrap();
    let loader = ftl::project::FsLoader::new(dir.path().to_path_buf());
    let mut sources = ftl::span::Sources::new();
    let checked = ftl::check("toy.ft", &loader, &mut sources, "")
        .unwrap_or_else(|d| panic!("{}", ftl::render::render(&d, &sources, false)));
    let plan = ftl::lower(&checked, &sources)
        .unwrap_or_else(|d| panic!("{}", ftl::render::render(&d, &sources, false)));
    (dir, plan)
}

fn job(dir: &Path, plan: &ftl::plan::Plan, output: &str, resume: bool) -> Job {
    Job {
        run: plan.runs[0].clone(),
        sources: vec![],
        project_root: dir.to_path_buf(),
        output: dir.join(output),
        resume,
        fetch: ftl::runtime::fetch::FetchOptions {
            allow_download: false,
            ..ftl::runtime::fetch::FetchOptions::from_env()
        },
        data_search: vec![],
    }
}

fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn lora_run_learns_and_saves_peft_adapters_with_exact_names() {
    let _serial = serial();
    let (dir, plan) = project("lora(rank = 4, alpha = 8, dropout = 0.0)", "");
    let outcome = execute(
        &job(dir.path(), &plan, "out", false),
        &mut Silent,
        &AtomicBool::new(false),
    )
    .expect("the run finishes");
    assert_eq!(outcome.dir, dir.path().join("out/toy/main"));
    let loss = losses(&outcome.dir);
    assert_eq!(loss.len(), 60);
    assert!(
        mean(&loss[50..]) < mean(&loss[..10]) * 0.8,
        "the loss goes down: {loss:?}"
    );
    let eval = outcome.summary.evaluation("eval").expect("evaluated");
    assert_eq!(eval.examples, 64);
    assert!(
        eval.accuracy > 0.8,
        "the toy task is learnt: {}",
        eval.accuracy
    );

    let (tensors, _) =
        read_safetensors(&outcome.dir.join("adapter/adapter_model.safetensors")).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.to_vec()))
        .collect();
    names.sort();
    let mut expected = Vec::new();
    for layer in 0..2 {
        for m in ["query", "value"] {
            let base = format!("base_model.model.encoder.layer.{layer}.attention.self.{m}");
            expected.push((format!("{base}.lora_A.weight"), vec![4, 16]));
            expected.push((format!("{base}.lora_B.weight"), vec![16, 4]));
        }
    }
    expected.sort();
    assert_eq!(names, expected);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(outcome.dir.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["query", "value"])
    );
    for file in [
        "plan.json",
        "summary.json",
        "report.md",
        "loss.svg",
        "adapter/head.safetensors",
    ] {
        assert!(outcome.dir.join(file).is_file(), "{file} is written");
    }
    assert!(!dir.path().join("out/toy/.main.partial").exists());

    // The saved run predicts as the trained model did.
    let device = cpu_device();
    let trained = load_run::<Cpu>(
        &outcome.dir,
        &job(dir.path(), &plan, "out", false).fetch,
        &device,
    )
    .expect("the run loads back");
    let e = ftl::runtime::train::run::eval_file(
        &outcome.dir,
        &dir.path().join("eval.csv"),
        &job(dir.path(), &plan, "out", false).fetch,
    )
    .unwrap();
    assert_eq!(
        e.accuracy, eval.accuracy,
        "ftl eval agrees with the run's own evaluation"
    );
    drop(trained);

    // A second `ftl run` leaves the finished run alone.
    let again = execute(
        &job(dir.path(), &plan, "out", false),
        &mut Silent,
        &AtomicBool::new(false),
    );
    assert!(matches!(
        again,
        Err(ftl::runtime::error::RuntimeError::RunDir { .. })
    ));
}

/// Stops the run (as Ctrl-C does) once a given step is done.
struct StopAt<'a>(u64, &'a AtomicBool);

impl Observer for StopAt<'_> {
    fn event(&mut self, event: Event<'_>) {
        if let Event::Step(m, _) = event
            && m.step == self.0
        {
            self.1.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one() {
    let _serial = serial();
    let (dir, plan) = project("lora(rank = 4, alpha = 8, dropout = 0.1)", "");
    let whole = execute(
        &job(dir.path(), &plan, "a", false),
        &mut Silent,
        &AtomicBool::new(false),
    )
    .expect("uninterrupted run");

    let stop = AtomicBool::new(false);
    let first = execute(
        &job(dir.path(), &plan, "b", false),
        &mut StopAt(10, &stop),
        &stop,
    );
    let Err(ftl::runtime::error::RuntimeError::Interrupted { dir: partial }) = first else {
        panic!("the run stops when asked: {first:?}")
    };
    assert!(partial.join("checkpoint.safetensors").is_file());
    // Without --resume the interrupted run is not overwritten.
    let refused = execute(
        &job(dir.path(), &plan, "b", false),
        &mut Silent,
        &AtomicBool::new(false),
    );
    assert!(matches!(
        refused,
        Err(ftl::runtime::error::RuntimeError::RunDir { .. })
    ));
    let resumed = execute(
        &job(dir.path(), &plan, "b", true),
        &mut Silent,
        &AtomicBool::new(false),
    )
    .expect("resumed run");

    assert_eq!(
        losses(&whole.dir),
        losses(&resumed.dir),
        "same loss at every step"
    );
    assert_eq!(whole.summary.evaluations, resumed.summary.evaluations);
    let adapter = |d: &PathBuf| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(
        adapter(&whole.dir),
        adapter(&resumed.dir),
        "bitwise equal adapters"
    );
    assert!(resumed.summary.notes.iter().any(|n| n.contains("resumed")));
}

#[test]
fn full_fine_tuning_saves_a_hugging_face_model_that_loads_back() {
    let _serial = serial();
    let (dir, plan) = project("full", "");
    let outcome = execute(
        &job(dir.path(), &plan, "out", false),
        &mut Silent,
        &AtomicBool::new(false),
    )
    .expect("the run finishes");
    let loss = losses(&outcome.dir);
    assert!(
        mean(&loss[50..]) < mean(&loss[..10]) * 0.8,
        "the loss goes down: {loss:?}"
    );
    let config = common::config(common::TINY_BERT);
    let device = cpu_device();
    let (trained, _) = load_encoder::<Cpu>(
        &outcome.dir.join("model/model.safetensors"),
        &config,
        &device,
    )
    .expect("the saved model is a valid HF BERT");
    let (base, _) =
        load_encoder::<Cpu>(&dir.path().join("tiny/model.safetensors"), &config, &device).unwrap();
    let w = |e: &ftl::runtime::model::Encoder<Cpu>| -> Vec<f32> {
        e.layers[0]
            .feed_forward
            .output
            .base_weight()
            .into_data()
            .to_vec()
            .unwrap()
    };
    assert_ne!(w(&trained), w(&base), "full fine-tuning changes the base");
    // Everything trains: the base the plan counts plus the head (16 × 2 + 2).
    assert_eq!(
        outcome.summary.trainable_parameters,
        plan.runs[0].parameters.base + 16 * 2 + 2
    );
    assert_eq!(
        outcome.summary.total_parameters,
        outcome.summary.trainable_parameters
    );
    // The tiny model is not a stdlib model: its own file is what is hashed.
    assert_eq!(
        outcome.summary.sha256["model"],
        ftl::data::sha256_file(&dir.path().join("tiny/model.safetensors")).unwrap()
    );
}

/// A random tiny classifier prepared for `method` on the autodiff CPU backend.
fn classifier(method: &Method, quantize: &Quantize) -> Classifier<Train> {
    let config = common::config(common::TINY_BERT);
    let device = cpu_device();
    let encoder = config.init::<Train>(&device);
    let head = ClassificationHeadConfig::new(16, 2, Pooling::Mean, 1).init(&device);
    Classifier { encoder, head }
        .prepare(config.architecture, method, quantize, 3)
        .unwrap()
}

fn lora() -> Lora {
    Lora {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec!["query".into(), "value".into()],
    }
}

fn no_quant() -> Quantize {
    Quantize {
        format: QuantFormat::None,
        block_size: 64,
        double_quant: false,
        compute: Precision::Fp32,
    }
}

/// Two sentences (the second padded) and their labels.
fn fixed_batch(
    device: &burn::prelude::Device<Train>,
) -> (
    Tensor<Train, 2, Int>,
    Tensor<Train, 2, Int>,
    Tensor<Train, 1, Int>,
) {
    let ids = Tensor::<Train, 2, Int>::from_data(
        TensorData::new(vec![2i64, 5, 6, 7, 3, 2, 9, 3, 0, 0], [2, 5]),
        device,
    );
    let mask = ids.clone().not_equal_elem(0).int();
    let targets = Tensor::<Train, 1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), device);
    (ids, mask, targets)
}

/// The logits and gradients of `model` on [`fixed_batch`], the backend
/// seeded the same way for every model (the same dropout masks).
fn fixed_backward(
    model: &Classifier<Train>,
) -> (
    Tensor<Train, 2>,
    <Train as burn::tensor::backend::AutodiffBackend>::Gradients,
) {
    let device = cpu_device();
    let (ids, mask, targets) = fixed_batch(&device);
    <Train as burn::tensor::backend::Backend>::seed(&device, 7);
    let logits = model.forward(ids, mask);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.clone(), targets);
    (logits, loss.backward())
}

/// Three AdamW steps on a fixed batch.
fn train_steps(mut model: Classifier<Train>) -> Classifier<Train> {
    let device = cpu_device();
    let mut optimizer = AdamW::new(AdamWSettings {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
    });
    let (ids, mask, targets) = fixed_batch(&device);
    for _ in 0..3 {
        let logits = model.forward(ids.clone(), mask.clone());
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(model, grads, 1e-2, None).0;
    }
    model
}

fn values(model: &Classifier<Train>) -> BTreeMap<String, Vec<f32>> {
    param_values(&model.valid(), &|_| true)
        .into_iter()
        .map(|(k, v)| (k, v.to_vec().unwrap()))
        .collect()
}

#[test]
fn lora_changes_only_adapters_and_head_and_the_base_stays_bitwise() {
    let _serial = serial();
    let model = classifier(&Method::Lora(lora()), &no_quant());
    let trainable: Vec<String> = named_params(&model)
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| p.path)
        .collect();
    assert!(
        trainable
            .iter()
            .all(|p| p.contains(".adapter.") || p.starts_with("head.")),
        "{trainable:?}"
    );
    assert_eq!(trainable.len(), 2 * 2 * 2 + 2);
    let before = values(&model);
    let after = values(&train_steps(model));
    for (path, v) in &before {
        let changed = after[path] != *v;
        let should = path.ends_with(".adapter.b")
            || path.ends_with(".adapter.a")
            || path.starts_with("head.");
        assert_eq!(changed, should, "{path}: changed = {changed}");
    }
}

#[test]
fn qlora_stores_the_base_in_four_bits_and_never_changes_it() {
    let _serial = serial();
    let quantize = Quantize {
        format: QuantFormat::Nf4,
        block_size: 64,
        double_quant: true,
        compute: Precision::Fp32,
    };
    let model = classifier(&Method::Qlora(lora()), &quantize);
    for layer in &model.encoder.layers {
        let a = &layer.attention;
        let f = &layer.feed_forward;
        for p in [
            &a.query,
            &a.key,
            &a.value,
            &a.output,
            &f.intermediate,
            &f.output,
        ] {
            assert!(
                p.weight.is_none() && p.packed.is_some(),
                "every base linear is packed"
            );
        }
    }
    // Eight 4-bit codes per 32-bit word: 16·16 weights in 32 words.
    let query = model.encoder.layers[0]
        .attention
        .query
        .packed
        .as_ref()
        .unwrap();
    assert_eq!(query.words.dims(), [32]);
    // 2 layers × (4·16·16 + 2·16·32) weights: under a byte each, with scales and code books.
    let weights = 2 * (4 * 16 * 16 + 2 * 16 * 32);
    let bytes = model.packed_bytes();
    assert!(bytes < weights, "{bytes} bytes for {weights} weights");
    let words = |m: &Classifier<Train>| -> Vec<i32> {
        m.encoder.layers[1]
            .attention
            .query
            .packed
            .as_ref()
            .unwrap()
            .words
            .val()
            .into_data()
            .to_vec()
            .unwrap()
    };
    let packed_before = words(&model);
    let before = values(&model);
    let trained = train_steps(model);
    assert_eq!(
        words(&trained),
        packed_before,
        "the 4-bit codes are unchanged"
    );
    let after = values(&trained);
    for (path, v) in &before {
        let should = path.contains(".adapter.") || path.starts_with("head.");
        assert_eq!(after[path] != *v, should, "{path}");
    }
}

#[test]
fn full_fine_tuning_trains_every_parameter() {
    let _serial = serial();
    let model = classifier(&Method::Full, &no_quant());
    assert!(named_params(&model).iter().all(|p| p.trainable));
    let before = values(&model);
    let after = values(&train_steps(model));
    let changed = before.iter().filter(|(k, v)| after[*k] != **v).count();
    assert!(
        changed > before.len() * 9 / 10,
        "{changed} of {} changed",
        before.len()
    );
}

/// bf16 products: the forward pass tracks fp32 closely without being fp32,
/// gradients reach the f32 master weights as f32, and training moves them.
#[test]
fn bf16_products_track_fp32_and_keep_f32_master_weights() {
    let _serial = serial();
    let fp32 = classifier(&Method::Full, &no_quant());
    let half = fp32.clone().compute_in_half(true, false);
    let run = |m: &Classifier<Train>| {
        let (logits, grads) = fixed_backward(m);
        assert_eq!(logits.dtype(), burn::tensor::DType::F32, "logits are f32");
        let weight = m.encoder.layers[0].attention.query.weight.as_ref().unwrap();
        let grad = weight
            .grad(&grads)
            .expect("the query weight has a gradient");
        assert_eq!(
            grad.dtype(),
            burn::tensor::DType::F32,
            "the gradient is f32"
        );
        let logits: Vec<f32> = logits.inner().into_data().to_vec().unwrap();
        let grad: Vec<f32> = grad.into_data().to_vec().unwrap();
        (logits, grad)
    };
    let (logits32, grad32) = run(&fp32);
    let (logits16, grad16) = run(&half);
    let diff = logits32
        .iter()
        .zip(&logits16)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff > 0.0, "bf16 products give different rounding");
    assert!(diff < 2e-2, "logits differ by {diff}");
    let dot: f32 = grad32.iter().zip(&grad16).map(|(a, b)| a * b).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cosine = dot / (norm(&grad32) * norm(&grad16));
    assert!(cosine > 0.99, "gradient cosine {cosine}");

    let before = values(&half);
    let trained = train_steps(half);
    let weight = trained.encoder.layers[1]
        .feed_forward
        .output
        .weight
        .as_ref();
    assert_eq!(weight.unwrap().val().dtype(), burn::tensor::DType::F32);
    let after = values(&trained);
    let changed = before.iter().filter(|(k, v)| after[*k] != **v).count();
    assert!(changed > before.len() * 9 / 10, "{changed} changed");
    assert!(after.values().flatten().all(|v| v.is_finite()));
}

/// LoRA's bf16 products give the adapters the gradients fp32 gives them:
/// A's and B's, of an adapter inside attention (its update added in the
/// query/key/value product) and of one on the feed-forward layer (added
/// after the bias), once training has made both A and B non-zero. Their
/// products run on the `[batch·seq, d]` rows, so each gradient sums over
/// every token of the batch at once.
#[test]
fn lora_bf16_products_give_the_adapters_fp32_gradients() {
    let _serial = serial();
    let method = Method::Lora(Lora {
        targets: vec!["query".into(), "value".into(), "intermediate.dense".into()],
        ..lora()
    });
    let fp32 = train_steps(classifier(&method, &no_quant()));
    let half = fp32.clone().compute_in_half(true, false);
    let run = |m: &Classifier<Train>| {
        let (_, grads) = fixed_backward(m);
        let layer = &m.encoder.layers[1];
        let adapters = [
            &layer.attention.query,
            &layer.attention.value,
            &layer.feed_forward.intermediate,
        ]
        .map(|p| p.adapter.as_ref().expect("adapted"));
        let mut out = Vec::new();
        for a in adapters {
            for param in [&a.a, &a.b] {
                let grad = param.grad(&grads).expect("the adapter trains");
                assert_eq!(grad.dtype(), burn::tensor::DType::F32);
                out.push(grad.into_data().to_vec::<f32>().unwrap());
            }
        }
        out
    };
    let (grads32, grads16) = (run(&fp32), run(&half));
    let names = [
        "query A",
        "query B",
        "value A",
        "value B",
        "intermediate A",
        "intermediate B",
    ];
    for ((name, g32), g16) in names.iter().zip(&grads32).zip(&grads16) {
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(norm(g32) > 0.0, "{name} has a gradient");
        assert_ne!(g32, g16, "{name}: bf16 products round differently");
        let dot: f32 = g32.iter().zip(g16).map(|(a, b)| a * b).sum();
        let cosine = dot / (norm(g32) * norm(g16));
        assert!(cosine > 0.99, "{name}: gradient cosine {cosine}");
        let ratio = norm(g16) / norm(g32);
        assert!((0.97..1.03).contains(&ratio), "{name}: norm ratio {ratio}");
    }
}

/// LoRA under bf16 keeps its frozen base in bf16 only. The products read the
/// same values as casting an f32 base every step (bitwise the same logits
/// and adapter gradients; with the base in bf16 the query, key and value
/// run as one product with the adapters' updates added in its head split,
/// and the layers one by one otherwise), the adapters and head stay f32,
/// and merging with the f32 base read again gives exactly that base plus
/// the update.
#[test]
fn lora_in_bf16_keeps_the_frozen_base_in_bf16_and_merges_from_the_f32_base() {
    let _serial = serial();
    let base = classifier(&Method::Lora(lora()), &no_quant());
    let mut cast_each_step = base.clone();
    for layer in &mut cast_each_step.encoder.layers {
        layer.attention.half = true;
        for_each_projection(layer, |p| p.half = true);
    }
    let kept = base.clone().compute_in_half(true, false);
    assert!(kept.base_in_half() && !cast_each_step.base_in_half());
    for layer in &kept.encoder.layers {
        for p in projections(layer) {
            let w = p.weight.as_ref().expect("a dense base").val();
            assert_eq!(
                w.dtype(),
                burn::tensor::DType::BF16,
                "the frozen base is bf16"
            );
            if let Some(adapter) = &p.adapter {
                assert_eq!(adapter.b.val().dtype(), burn::tensor::DType::F32);
            }
        }
    }
    let word = kept.encoder.embeddings.word.weight.val();
    assert_eq!(
        word.dtype(),
        burn::tensor::DType::F32,
        "embeddings stay f32"
    );

    let run = |m: &Classifier<Train>| {
        let (logits, grads) = fixed_backward(m);
        let adapter = m.encoder.layers[1]
            .attention
            .value
            .adapter
            .as_ref()
            .unwrap();
        let grad = adapter.b.grad(&grads).expect("B trains");
        let logits: Vec<f32> = logits.inner().into_data().to_vec().unwrap();
        let grad: Vec<f32> = grad.into_data().to_vec().unwrap();
        (logits, grad)
    };
    let (logits_cast, grad_cast) = run(&cast_each_step);
    let (logits_kept, grad_kept) = run(&kept);
    assert_eq!(logits_cast, logits_kept, "the same logits, bitwise");
    assert!(grad_kept.iter().any(|g| *g != 0.0), "B has a gradient");
    assert_eq!(grad_cast, grad_kept, "the same adapter gradient, bitwise");

    // Train the adapters so the merge has something to fold in.
    let trained = train_steps(kept).valid();
    let query = &trained.encoder.layers[0].attention.query;
    let update = query.adapter.as_ref().unwrap().delta();
    let f32_base = base.encoder.layers[0].attention.query.base_weight().inner();
    let expected: Vec<f32> = (f32_base + update).into_data().to_vec().unwrap();
    let merged_weight = |m: Classifier<Cpu>| -> Vec<f32> {
        let merged = m.merged();
        let w = merged.encoder.layers[0]
            .attention
            .query
            .weight
            .as_ref()
            .unwrap()
            .val();
        assert_eq!(w.dtype(), burn::tensor::DType::F32);
        w.into_data().to_vec().unwrap()
    };
    let from_file = trained.clone().with_full_base(base.encoder.clone().valid());
    assert!(!from_file.base_in_half());
    assert_eq!(
        merged_weight(from_file),
        expected,
        "merged from the f32 base"
    );
    assert_ne!(
        merged_weight(trained),
        expected,
        "merging the bf16 copy would round the base"
    );
}

/// QLoRA's `quantize.compute = bf16` alone: only packed layers use bf16.
#[test]
fn qlora_compute_dtype_applies_to_the_packed_layers_only() {
    let _serial = serial();
    let quantize = Quantize {
        format: QuantFormat::Nf4,
        block_size: 64,
        double_quant: false,
        compute: Precision::Bf16,
    };
    let lora_q = Lora {
        targets: vec!["query".into()],
        ..lora()
    };
    let model = classifier(&Method::Lora(lora_q), &no_quant()).compute_in_half(false, true);
    assert!(!model.encoder.layers[0].attention.query.half);
    let model = classifier(&Method::Qlora(lora()), &quantize).compute_in_half(false, true);
    for layer in &model.encoder.layers {
        assert!(layer.attention.query.half && layer.feed_forward.output.half);
        assert!(!layer.attention.half, "attention products stay fp32");
    }
    let trained = train_steps(model);
    assert!(values(&trained).values().flatten().all(|v| v.is_finite()));
}

/// `ftl ARGS` run in `dir` with no data search path, no downloads (an empty
/// FTL_HOME) and no colour: (exit code, stderr with `dir` replaced by `[project]`).
fn ftl_in(dir: &Path, args: &[&str]) -> (i32, String) {
    let home = dir.join(".ftl-home");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(args)
        .current_dir(dir)
        .env("FTL_HOME", &home)
        .env("HF_HOME", &home)
        .env_remove("FTL_DATA_PATH")
        .env("NO_COLOR", "1")
        .output()
        .expect("ftl runs");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&*dir.to_string_lossy(), "[project]");
    (out.status.code().unwrap_or(-1), stderr)
}

/// Files under `dir`, relative, sorted, each with its bytes.
fn snapshot_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn run_errors_name_the_place_and_the_fix_and_keep_finished_runs() {
    let _serial = serial();
    let (dir, _) = project("lora(rank = 4, alpha = 8, dropout = 0.0)", "");
    let d = dir.path();
    // `--only` that selects nothing is an error, before anything is loaded.
    let (code, stderr) = ftl_in(d, &["run", "toy.ft", "--only", "nothing"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no run's name contains `nothing`"),
        "{stderr}"
    );
    insta::assert_snapshot!("run_error_only_matches_nothing", stderr);
    assert!(!d.join("out").exists());
    let (code, stderr) = ftl_in(d, &["run", "toy.ft", "--quiet", "--only", "toy/ma"]);
    assert_eq!(code, 0, "{stderr}");
    let finished = d.join("out/toy/main");
    let before = snapshot_files(&finished);
    assert!(before.contains_key(Path::new("summary.json")));

    // The same run name with another configuration does not replace it.
    let ft = std::fs::read_to_string(d.join("toy.ft")).unwrap();
    std::fs::write(d.join("toy.ft"), ft.replace("seed = 5", "seed = 6")).unwrap();
    let (code, stderr) = ftl_in(d, &["run", "toy.ft", "--quiet"]);
    assert_eq!(code, 1, "{stderr}");
    // (Plan hashes depend only on the configuration: the same everywhere.)
    insta::assert_snapshot!("run_error_finished_run_kept", stderr);

    // A row with a label the pipeline does not know: file and line, and the fix.
    let good_eval = std::fs::read_to_string(d.join("eval.csv")).unwrap();
    std::fs::write(
        d.join("eval.csv"),
        good_eval.replacen(",pos\n", ",maybe\n", 1),
    )
    .unwrap();
    let elsewhere = ["run", "toy.ft", "--quiet", "--output", "elsewhere"];
    let (code, stderr) = ftl_in(d, &elsewhere);
    assert_eq!(code, 1, "{stderr}");
    insta::assert_snapshot!("run_error_bad_row", stderr);
    std::fs::write(d.join("eval.csv"), &good_eval).unwrap();

    // Weights cut short: the file is named.
    let weights = d.join("tiny/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let (code, stderr) = ftl_in(d, &elsewhere);
    assert_eq!(code, 1, "{stderr}");
    insta::assert_snapshot!("run_error_corrupt_weights", stderr);

    // No weights at all: every place looked at is listed.
    std::fs::remove_file(&weights).unwrap();
    let (code, stderr) = ftl_in(d, &elsewhere);
    assert_eq!(code, 1, "{stderr}");
    insta::assert_snapshot!("run_error_missing_model", stderr);

    // None of the failed attempts left a folder behind.
    let elsewhere_left = std::fs::read_dir(d.join("elsewhere/toy"))
        .map(|entries| entries.flatten().count())
        .unwrap_or(0);
    assert_eq!(elsewhere_left, 0, "failed runs leave nothing behind");

    // A folder that is not a run, for eval and predict.
    let (code, stderr) = ftl_in(d, &["eval", "tiny", "--data", "eval.csv"]);
    assert_eq!(code, 1, "{stderr}");
    insta::assert_snapshot!("eval_error_not_a_run", stderr);

    // The finished run is exactly as it was, and no partial folder is left.
    assert_eq!(snapshot_files(&finished), before);
    let left: Vec<String> = std::fs::read_dir(d.join("out/toy"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["main"], "only the finished run remains");
}

/// `ftl ARGS` in `dir`: (exit code, stdout), asserting it succeeded.
fn ftl_ok(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftl"))
        .args(args)
        .current_dir(dir)
        .env("FTL_HOME", dir.join(".ftl-home"))
        .env("NO_COLOR", "1")
        .output()
        .expect("ftl runs");
    assert!(
        out.status.success(),
        "ftl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn eval_predict_and_merge_from_the_command_line() {
    let _serial = serial();
    let (dir, _) = project("lora(rank = 4, alpha = 8, dropout = 0.0)", "");
    let d = dir.path();
    ftl_ok(d, &["run", "toy.ft", "--quiet"]);
    let run = "out/toy/main";
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join(run).join("summary.json")).unwrap())
            .unwrap();

    // `eval --json` on the pipeline's own eval file reproduces the run's figures.
    let eval: serde_json::Value =
        serde_json::from_str(&ftl_ok(d, &["eval", run, "--data", "eval.csv", "--json"])).unwrap();
    let last = &summary["evaluations"][0];
    assert_eq!(eval["examples"], 64);
    assert!((eval["accuracy"].as_f64().unwrap() - last["accuracy"].as_f64().unwrap()).abs() < 1e-9);
    assert!((eval["macro_f1"].as_f64().unwrap() - last["macro_f1"].as_f64().unwrap()).abs() < 1e-9);
    assert!(eval["accuracy"].as_f64().unwrap() > 0.8, "{eval}");

    // `predict --json --file`: one line per text, a label and probabilities
    // summing to 1, and the labels agree with what `eval` scored.
    let eval_csv = std::fs::read_to_string(d.join("eval.csv")).unwrap();
    let rows: Vec<(&str, &str)> = eval_csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit_once(',').unwrap())
        .collect();
    let texts: String = rows.iter().map(|(t, _)| format!("{t}\n")).collect();
    std::fs::write(d.join("texts.txt"), texts).unwrap();
    let out = ftl_ok(d, &["predict", run, "--file", "texts.txt", "--json"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), rows.len());
    let mut correct = 0;
    for (line, (text, label)) in lines.iter().zip(&rows) {
        assert_eq!(line["text"], *text);
        correct += usize::from(line["label"] == *label);
        let total: f64 = line["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{line}");
    }
    assert_eq!(
        correct as f64 / rows.len() as f64,
        eval["accuracy"].as_f64().unwrap(),
        "predict and eval disagree"
    );
    // Texts as arguments, in the plain format: label, probability, text.
    let plain = ftl_ok(d, &["predict", run, rows[0].0, rows[1].0]);
    assert_eq!(plain.lines().count(), 2);
    assert!(
        plain.starts_with(&format!("{}\t", lines[0]["label"].as_str().unwrap())),
        "{plain}"
    );

    // `merge`: a plain HF model folder (weights with the adapters folded in,
    // config, tokenizer, head) that the loader takes as any other model.
    ftl_ok(d, &["merge", run, "--output", "merged"]);
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "head.safetensors",
    ] {
        assert!(d.join("merged").join(file).is_file(), "merged/{file}");
    }
    let config = common::config(common::TINY_BERT);
    load_encoder::<Cpu>(&d.join("merged/model.safetensors"), &config, &cpu_device())
        .expect("the merged model is a valid HF BERT");
}

#[test]
fn a_cpu_run_that_asks_for_bf16_says_it_computed_in_fp32() {
    let _serial = serial();
    // QLoRA's dequantized compute defaults to bf16; precision is set here too.
    let (dir, plan) = project(
        "qlora(rank = 4, alpha = 8, dropout = 0.0)",
        "train.precision = bf16",
    );
    let mut notices = Vec::new();
    struct Collect<'a>(&'a mut Vec<String>);
    impl Observer for Collect<'_> {
        fn event(&mut self, event: Event<'_>) {
            if let Event::Notice(n) = event {
                self.0.push(n);
            }
        }
    }
    let outcome = execute(
        &job(dir.path(), &plan, "out", false),
        &mut Collect(&mut notices),
        &AtomicBool::new(false),
    )
    .expect("the run finishes");
    for field in ["train.precision", "quantize.compute"] {
        let said = format!("{field} = bf16 applies on CUDA only");
        assert!(
            outcome.summary.notes.iter().any(|n| n.starts_with(&said)),
            "{:?}",
            outcome.summary.notes
        );
        assert!(notices.iter().any(|n| n.contains(&said)), "{notices:?}");
    }
    let report = std::fs::read_to_string(outcome.dir.join("report.md")).unwrap();
    assert!(report.contains("train.precision = bf16 applies on CUDA only"));
}

/// CUDA batches are padded to `max_tokens` (one shape to compile for); the
/// CPU's to the next multiple of 16. Either way the mask marks real tokens.
#[test]
fn batches_pad_to_buckets_or_to_max_tokens() {
    use ftl::runtime::train::run::batch_tensors;
    let rows: Vec<&[i64]> = vec![&[2, 5, 3], &[2, 5, 6, 7, 3]];
    let (ids, mask, tokens) = batch_tensors::<Cpu>(&rows, 0, 64, false, &cpu_device());
    assert_eq!((ids.dims(), tokens), ([2, 16], 8));
    let (ids, mask64, _) = batch_tensors::<Cpu>(&rows, 0, 64, true, &cpu_device());
    assert_eq!(ids.dims(), [2, 64]);
    let real = |m: Tensor<Cpu, 2, Int>| m.sum().into_scalar();
    assert_eq!(real(mask), 8);
    assert_eq!(real(mask64), 8);
}

/// Rows of four lengths for the filling tests (ids under the tiny vocab).
fn short_rows() -> Vec<Vec<i64>> {
    vec![
        vec![2, 5, 6, 7, 3],
        vec![2, 9, 3],
        vec![2, 11, 12, 13, 14, 15, 3],
        vec![2, 8, 3],
    ]
}

/// The loss and every parameter's gradient of one batch of `rows` (the
/// first `real` of them real), with dropout off.
fn loss_and_gradients(
    model: &Classifier<Train>,
    rows: &[&[i64]],
    labels: &[i64],
    real: usize,
) -> (f32, BTreeMap<String, Vec<f32>>) {
    use ftl::runtime::train::run::{batch_loss, batch_tensors};
    let device = cpu_device();
    let (ids, mask, _) = batch_tensors::<Train>(rows, 0, 16, true, &device);
    let targets =
        Tensor::<Train, 1, Int>::from_data(TensorData::new(labels.to_vec(), [rows.len()]), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let loss = batch_loss(&loss_fn, model.forward(ids, mask), targets, real, real);
    let value = loss.clone().into_scalar();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let mut out = BTreeMap::new();
    for p in named_params(model) {
        let g = match p.shape.len() {
            1 => grads.get::<Cpu, 1>(p.id).map(|g| g.into_data()),
            2 => grads.get::<Cpu, 2>(p.id).map(|g| g.into_data()),
            3 => grads.get::<Cpu, 3>(p.id).map(|g| g.into_data()),
            _ => grads.get::<Cpu, 4>(p.id).map(|g| g.into_data()),
        };
        if let Some(g) = g {
            out.insert(p.path, g.to_vec().unwrap());
        }
    }
    (value, out)
}

/// On CUDA an epoch's short last batch is filled to the batch size by
/// repeating its last row, so that no step has a shape of its own to
/// compile for. The filled batch must train exactly as the short one:
/// the same loss, and the same gradient for every parameter.
#[test]
fn a_short_batch_filled_to_the_batch_size_trains_as_itself() {
    use ftl::runtime::train::run::filled;
    let _serial = serial();
    let rows = short_rows();
    let short: Vec<&[i64]> = rows[..3].iter().map(Vec::as_slice).collect();
    let full = filled(&short, 8);
    assert_eq!(full.len(), 8);
    assert!(full[3..].iter().all(|r| *r == short[2]));
    let labels = [1i64, 0, 1];
    let mut filled_labels = labels.to_vec();
    filled_labels.resize(8, 1);

    let device = cpu_device();
    let mut encoder = common::config(common::TINY_BERT).init::<Train>(&device);
    encoder.set_dropout(0.0);
    let head = ClassificationHeadConfig::new(16, 2, Pooling::Mean, 1)
        .with_dropout(0.0)
        .init(&device);
    let model = Classifier { encoder, head };

    let (loss, grads) = loss_and_gradients(&model, &short, &labels, 3);
    let (filled_loss, filled_grads) = loss_and_gradients(&model, &full, &filled_labels, 3);
    assert!(
        (loss - filled_loss).abs() < 1e-6,
        "{loss} against {filled_loss}"
    );
    assert!(grads.len() > 10, "{:?}", grads.keys());
    assert_eq!(
        grads.keys().collect::<Vec<_>>(),
        filled_grads.keys().collect::<Vec<_>>()
    );
    for (name, g) in &grads {
        let f = &filled_grads[name];
        let worst = g
            .iter()
            .zip(f)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = g.iter().map(|a| a.abs()).fold(0f32, f32::max).max(1e-6);
        assert!(
            worst <= 1e-5 * scale.max(1.0),
            "{name}: {worst} (largest {scale})"
        );
    }
    // Counting the repeated rows would change both.
    let (counted, counted_grads) = loss_and_gradients(&model, &full, &filled_labels, 8);
    assert!((loss - counted).abs() > 1e-4, "{loss} against {counted}");
    assert!(grads.iter().any(|(name, g)| {
        g.iter()
            .zip(&counted_grads[name])
            .any(|(a, b)| (a - b).abs() > 1e-4)
    }));
}

/// Predictions in batches filled to one shape are those of the unfilled
/// batches, for every row, and none of the filler rows comes back.
#[test]
fn filled_prediction_batches_return_each_row_once_unchanged() {
    use ftl::runtime::train::run::predict;
    let _serial = serial();
    let device = cpu_device();
    let config = common::config(common::TINY_BERT);
    let encoder = config.init::<Cpu>(&device);
    let head = ClassificationHeadConfig::new(16, 2, Pooling::Mean, 1).init(&device);
    let model = Classifier { encoder, head };
    let mut rows = short_rows();
    rows.extend(short_rows().into_iter().map(|mut r| {
        r[1] += 20;
        r
    }));
    rows.pop();
    // Seven rows in batches of three: the last holds one real row.
    let (fixed, fixed_probs) = predict(&model, &rows, 3, 0, 16, true, &device);
    let (plain, plain_probs) = predict(&model, &rows, 64, 0, 16, false, &device);
    assert_eq!(fixed.len(), 7);
    assert_eq!(fixed, plain);
    for (a, b) in fixed_probs.iter().zip(&plain_probs) {
        assert_eq!(a.len(), 2);
        assert!(
            a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5),
            "{a:?} {b:?}"
        );
    }
}
