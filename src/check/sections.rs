//! Reading a pipeline's record into a [`RunConfig`]: one function per
//! section, defaults filled in, then the rules that span several sections.

use super::declarations::{
    check_targets, dataset_section, labels, model_decl, name_hint, project_file,
};
use super::read::*;
use super::value::{Record, Val, ValKind};
use crate::config::*;
use crate::diagnostic::{Code, Diagnostic};
use crate::span::Span;
use crate::syntax::ast::DeclKind;
/// Reads a whole pipeline record. `None` when anything was wrong (the
/// problems are in `cx.errors`).
pub fn run_config(cx: &mut Cx, record: &Record, span: Span) -> Option<RunConfig> {
    let before = cx.errors.len();
    let mut top = Fields::new("", record, span);
    let model_field = top.require(
        cx,
        "model",
        "the pretrained model",
        ".base = models.minilm_l6",
    );
    let dataset_field = top.require(cx, "dataset", "the data", "datasets.sst2");
    let method_field = top.get(cx, "method");
    let quantize_field = top.get(cx, "quantize");
    let train_field = top.get(cx, "train");
    let evaluate_field = top.get(cx, "evaluate");
    let budget_field = top.get(cx, "budget");
    let device_field = top.get(cx, "device");
    let output_field = top.get(cx, "output");
    top.finish(cx);

    let model = model_field.and_then(|f| model_section(cx, &f.value));
    let dataset = dataset_field.and_then(|f| dataset_section(cx, "dataset", &f.value));
    let method = match method_field {
        Some(f) => method_value(cx, &f.value, model.as_ref().map(|m| &m.base)),
        None => model.as_ref().map(|m| Method::Lora(default_lora(&m.base))),
    };
    let quantize = with_section(cx, "quantize", quantize_field, |cx, f| {
        quantize_section(cx, f, method.as_ref())
    });
    let train = with_section(cx, "train", train_field, |cx, f| {
        train_section(cx, f, method.as_ref())
    });
    let evaluate = with_section(cx, "evaluate", evaluate_field, |cx, f| {
        evaluate_section(cx, f, dataset.as_ref())
    });
    let budget = with_section(cx, "budget", budget_field, budget_section);
    let device = with_section(cx, "device", device_field, device_section);
    let output = with_section(cx, "output", output_field, output_section);

    let (mut model, dataset, method) = (model?, dataset?, method?);
    if model.labels.is_empty() {
        model.labels = dataset.labels.clone();
    }
    let config = RunConfig {
        model,
        dataset,
        method,
        quantize: quantize?,
        train: train?,
        evaluate: evaluate?,
        budget: budget?,
        device: device?,
        output: output?,
    };
    super::rules::cross_field(cx, record, &config);
    if cx.errors.len() > before {
        None
    } else {
        Some(config)
    }
}

/// Reads an optional section: absent means all defaults.
fn with_section<T>(
    cx: &mut Cx,
    name: &str,
    field: Option<&super::value::Field>,
    read: impl FnOnce(&mut Cx, &mut Fields) -> Option<T>,
) -> Option<T> {
    let empty = Record::default();
    let (record, span) = match field {
        None => (&empty, Span::new(crate::span::SourceId(0), 0, 0)),
        Some(f) => match &f.value.kind {
            ValKind::Record(r) => (r, f.value.span),
            _ => {
                cx.error(
                    mismatch(&f.value, &format!("a `{name} {{ ... }}` block"))
                        .hint(format!("write `{name} {{ FIELD = VALUE }}`")),
                );
                return None;
            }
        },
    };
    let mut fields = Fields::new(name, record, span);
    let out = read(cx, &mut fields);
    fields.finish(cx);
    out
}

fn model_section(cx: &mut Cx, val: &Val) -> Option<ModelConfig> {
    if let ValKind::Decl {
        kind: DeclKind::Model,
        name,
        ..
    } = &val.kind
    {
        cx.error(
            mismatch(val, "a `model { ... }` block")
                .hint(format!("the pretrained model goes in `base`: write `model.base = {}` or `model {{ base = ... }}`", name_hint(name))),
        );
        return None;
    }
    let record = record_of(
        cx,
        val,
        "a `model { ... }` block",
        "write `model { base = models.minilm_l6 }`",
    )?;
    let mut f = Fields::new("model", record, val.span);
    let base = f
        .require(cx, "base", "the pretrained model", "models.minilm_l6")
        .and_then(|b| model_decl(cx, &b.value));
    let pooling = f.get(cx, "pooling").map(|p| {
        as_symbol(
            cx,
            &p.value,
            &[("mean", Pooling::Mean), ("cls", Pooling::Cls)],
        )
    });
    let dropout = f
        .get(cx, "dropout")
        .map(|d| as_float(cx, &d.value, 0.0, 1.0, false, true));
    let labels = f.get(cx, "labels").map(|l| labels(cx, &l.value));
    f.finish(cx);
    Some(ModelConfig {
        base: base?,
        pooling: pooling.unwrap_or(Some(Pooling::Mean))?,
        dropout: dropout.unwrap_or(Some(0.1))?,
        labels: labels.unwrap_or(Some(Vec::new()))?,
    })
}

/// What `lora()` and `qlora()` mean with no arguments, for `model`.
pub(crate) fn default_lora(model: &ModelSpec) -> Lora {
    Lora {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        targets: model.lora_targets.clone(),
    }
}

fn method_value(cx: &mut Cx, val: &Val, model: Option<&ModelSpec>) -> Option<Method> {
    let (name, mut args) = as_call(cx, val, &["full", "lora", "qlora"])?;
    if name == "full" {
        args.finish(cx);
        return Some(Method::Full);
    }
    let rank = args
        .get("rank")
        .map(|r| as_int(cx, r, 1, 4096).map(|r| r as u32));
    let alpha = args
        .get("alpha")
        .map(|a| as_float(cx, a, 0.0, f64::INFINITY, true, false));
    let dropout = args
        .get("dropout")
        .map(|d| as_float(cx, d, 0.0, 1.0, false, true));
    let targets = args.get("targets").map(|t| (t, targets(cx, t, model)));
    args.finish(cx);
    let model = model?;
    let defaults = default_lora(model);
    let targets = match targets {
        Some((_, t)) => t?,
        None => defaults.targets,
    };
    let lora = Lora {
        rank: rank.unwrap_or(Some(defaults.rank))?,
        alpha: alpha.unwrap_or(Some(defaults.alpha))?,
        dropout: dropout.unwrap_or(Some(defaults.dropout))?,
        targets,
    };
    Some(if name == "lora" {
        Method::Lora(lora)
    } else {
        Method::Qlora(lora)
    })
}

fn targets(cx: &mut Cx, val: &Val, model: Option<&ModelSpec>) -> Option<Vec<String>> {
    if let ValKind::Sym(s) = &val.kind
        && s == "all"
    {
        return model.map(|m| m.modules.clone());
    }
    let targets = as_strings(cx, val, true)?;
    let model = model?;
    check_targets(cx, val, &targets, &model.modules, &model.name)?;
    Some(targets)
}

fn quantize_section(cx: &mut Cx, f: &mut Fields, method: Option<&Method>) -> Option<Quantize> {
    let format_options = [
        ("none", QuantFormat::None),
        ("nf4", QuantFormat::Nf4),
        ("int4", QuantFormat::Int4),
        ("int8", QuantFormat::Int8),
    ];
    let format = f
        .get(cx, "format")
        .map(|v| as_symbol(cx, &v.value, &format_options));
    let block_size = f.get(cx, "block_size").map(|v| {
        let b = as_int(cx, &v.value, 16, 4096)?;
        if (b as u64).is_power_of_two() {
            Some(b as u32)
        } else {
            cx.error(out_of_range(
                &v.value,
                "must be a power of two from 16 to 4096",
            ));
            None
        }
    });
    let double_quant = f.get(cx, "double_quant").map(|v| as_bool(cx, &v.value));
    let compute = f.get(cx, "compute").map(|v| {
        as_symbol(
            cx,
            &v.value,
            &[("fp32", Precision::Fp32), ("bf16", Precision::Bf16)],
        )
    });
    let default_format = if matches!(method, Some(Method::Qlora(_))) {
        QuantFormat::Nf4
    } else {
        QuantFormat::None
    };
    let format = format.unwrap_or(Some(default_format))?;
    let defaults = default_quantize(format);
    Some(Quantize {
        format,
        block_size: block_size.unwrap_or(Some(defaults.block_size))?,
        double_quant: double_quant.unwrap_or(Some(defaults.double_quant))?,
        compute: compute.unwrap_or(Some(defaults.compute))?,
    })
}

/// What a `quantize` section holding only `format` means: blocks of 64,
/// double quantization for NF4, bf16 compute.
pub(crate) fn default_quantize(format: QuantFormat) -> Quantize {
    Quantize {
        format,
        block_size: 64,
        double_quant: format == QuantFormat::Nf4,
        compute: Precision::Bf16,
    }
}

fn warmup(cx: &mut Cx, val: &Val) -> Option<Warmup> {
    match &val.kind {
        ValKind::Num {
            unit: None,
            int: Some(_),
            ..
        } => as_int(cx, val, 0, i64::MAX).map(|s| Warmup::Steps(s as u64)),
        _ => as_fraction(cx, val, false, true).map(Warmup::Fraction),
    }
}

fn train_section(cx: &mut Cx, f: &mut Fields, method: Option<&Method>) -> Option<Train> {
    let epochs = f
        .get(cx, "epochs")
        .map(|v| (v, as_int(cx, &v.value, 1, 100_000)));
    let steps = f
        .get(cx, "steps")
        .map(|v| (v, as_int(cx, &v.value, 1, i64::MAX)));
    let length = match (epochs, steps) {
        (Some((e, _)), Some((s, _))) => {
            cx.error(
                Diagnostic::error(
                    Code::ConflictingFields,
                    s.key_span,
                    "`train.epochs` and `train.steps` are both set",
                )
                .label("steps set here")
                .with_label(e.key_span, "epochs set here")
                .hint("training runs for epochs or for steps: keep one"),
            );
            None
        }
        (Some((_, e)), None) => e.map(|e| Length::Epochs(e as u32)),
        (None, Some((_, s))) => s.map(|s| Length::Steps(s as u64)),
        (None, None) => Some(Length::Epochs(1)),
    };
    let batch_size = f
        .get(cx, "batch_size")
        .map(|v| as_int(cx, &v.value, 1, 65_536).map(|b| b as u32));
    let grad_accum = f
        .get(cx, "grad_accum")
        .map(|v| as_int(cx, &v.value, 1, 65_536).map(|b| b as u32));
    let lr = f
        .get(cx, "lr")
        .map(|v| as_float(cx, &v.value, 0.0, 1.0, true, false));
    let schedule = f.get(cx, "schedule").map(|v| {
        let (name, mut args) = as_call(cx, &v.value, &["constant", "linear", "cosine"])?;
        let w = args.get("warmup").map(|w| warmup(cx, w));
        args.finish(cx);
        let warmup = w.unwrap_or(Some(Warmup::Fraction(0.0)))?;
        Some(match name {
            "constant" => Schedule::Constant { warmup },
            "linear" => Schedule::Linear { warmup },
            _ => Schedule::Cosine { warmup },
        })
    });
    let optimizer = f.get(cx, "optimizer").map(|v| {
        let (_, mut args) = as_call(cx, &v.value, &["adamw"])?;
        let betas = args.get("betas").map(|b| betas(cx, b));
        let eps = args
            .get("eps")
            .map(|e| as_float(cx, e, 0.0, 1.0, true, true));
        let wd = args
            .get("weight_decay")
            .map(|w| as_float(cx, w, 0.0, 1.0, false, false));
        args.finish(cx);
        Some(AdamW {
            betas: betas.unwrap_or(Some([0.9, 0.999]))?,
            eps: eps.unwrap_or(Some(1e-8))?,
            weight_decay: wd.unwrap_or(Some(0.01))?,
        })
    });
    let clip = f.get(cx, "clip_grad_norm").map(|v| match &v.value.kind {
        ValKind::Sym(s) if s == "none" => Some(None),
        _ => as_float(cx, &v.value, 0.0, f64::INFINITY, true, false).map(Some),
    });
    let precision = f.get(cx, "precision").map(|v| {
        as_symbol(
            cx,
            &v.value,
            &[("fp32", Precision::Fp32), ("bf16", Precision::Bf16)],
        )
    });
    let seed = f
        .get(cx, "seed")
        .map(|v| as_int(cx, &v.value, 0, i64::MAX).map(|s| s as u64));
    let default_lr = if matches!(method, Some(Method::Full)) {
        2e-5
    } else {
        2e-4
    };
    Some(Train {
        length: length?,
        batch_size: batch_size.unwrap_or(Some(32))?,
        grad_accum: grad_accum.unwrap_or(Some(1))?,
        lr: lr.unwrap_or(Some(default_lr))?,
        schedule: schedule.unwrap_or(Some(Schedule::Linear {
            warmup: Warmup::Fraction(0.06),
        }))?,
        optimizer: optimizer.unwrap_or(Some(AdamW {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
        }))?,
        clip_grad_norm: clip.unwrap_or(Some(Some(1.0)))?,
        precision: precision.unwrap_or(Some(Precision::Fp32))?,
        seed: seed.unwrap_or(Some(42))?,
    })
}

fn betas(cx: &mut Cx, val: &Val) -> Option<[f64; 2]> {
    match &val.kind {
        ValKind::List(items) if items.len() == 2 => {
            let b1 = as_float(cx, &items[0], 0.0, 1.0, false, true);
            let b2 = as_float(cx, &items[1], 0.0, 1.0, false, true);
            Some([b1?, b2?])
        }
        _ => {
            cx.error(mismatch(val, "a list of two numbers").hint("write `betas = [0.9, 0.999]`"));
            None
        }
    }
}

fn every(cx: &mut Cx, val: &Val, named: &[(&str, Every)]) -> Option<Every> {
    match &val.kind {
        ValKind::Num { .. } => as_int(cx, val, 1, i64::MAX).map(|s| Every::Steps(s as u64)),
        _ => as_symbol(cx, val, named),
    }
}

fn evaluate_section(
    cx: &mut Cx,
    f: &mut Fields,
    dataset: Option<&DatasetConfig>,
) -> Option<Evaluate> {
    let on = f.get(cx, "on").map(|v| {
        (
            v,
            as_symbols(cx, &v.value, &[("eval", "eval"), ("test", "test")]),
        )
    });
    let metrics = f.get(cx, "metrics").map(|v| {
        as_symbols(
            cx,
            &v.value,
            &[
                ("accuracy", Metric::Accuracy),
                ("macro_f1", Metric::MacroF1),
            ],
        )
    });
    let every = f.get(cx, "every").map(|v| {
        every(
            cx,
            &v.value,
            &[("epoch", Every::Epoch), ("end", Every::End)],
        )
    });
    let on = match on {
        Some((field, list)) => {
            let list = list?;
            if let Some(ds) = dataset {
                for (split, items) in list.iter().zip(list_spans(&field.value)) {
                    let has = if *split == "eval" {
                        ds.eval.is_some()
                    } else {
                        ds.test.is_some()
                    };
                    if !has {
                        cx.error(
                            Diagnostic::error(Code::MissingSplit, items, format!("the dataset has no `{split}` split"))
                                .label("nothing to evaluate on")
                                .hint(format!("add `dataset.{split} = \"FILE\"` or `dataset.{split} = holdout(fraction = 10%)`")),
                        );
                    }
                }
            }
            list.into_iter().map(String::from).collect()
        }
        None => match dataset {
            Some(ds) => {
                let mut on = Vec::new();
                if ds.eval.is_some() {
                    on.push("eval".to_string());
                }
                on
            }
            None => Vec::new(),
        },
    };
    Some(Evaluate {
        on,
        metrics: metrics.unwrap_or(Some(vec![Metric::Accuracy, Metric::MacroF1]))?,
        every: every.unwrap_or(Some(Every::Epoch))?,
    })
}

fn list_spans(val: &Val) -> Vec<Span> {
    match &val.kind {
        ValKind::List(items) => items.iter().map(|i| i.span).collect(),
        _ => vec![val.span],
    }
}

fn budget_section(cx: &mut Cx, f: &mut Fields) -> Option<Budget> {
    let gpu_memory = f.get(cx, "gpu_memory").map(|v| as_bytes(cx, &v.value));
    let time = f.get(cx, "time").map(|v| as_seconds(cx, &v.value));
    let exceed = f.get(cx, "exceed").map(|v| {
        as_symbol(
            cx,
            &v.value,
            &[("error", Exceed::Error), ("skip", Exceed::Skip)],
        )
    });
    Some(Budget {
        gpu_memory: opt(gpu_memory)?,
        time: opt(time)?,
        exceed: exceed.unwrap_or(Some(Exceed::Error))?,
    })
}

fn device_section(cx: &mut Cx, f: &mut Fields) -> Option<Device> {
    let backend = f.get(cx, "backend").map(|v| {
        as_symbol(
            cx,
            &v.value,
            &[
                ("auto", Backend::Auto),
                ("cpu", Backend::Cpu),
                ("cuda", Backend::Cuda),
            ],
        )
    });
    let gpus = f.get(cx, "gpus").map(|v| match &v.value.kind {
        ValKind::List(items) if !items.is_empty() => items
            .iter()
            .map(|i| as_int(cx, i, 0, 255).map(|g| g as u32))
            .collect::<Option<Vec<_>>>(),
        _ => {
            cx.error(
                mismatch(&v.value, "a non-empty list of GPU numbers").hint("write `gpus = [0]`"),
            );
            None
        }
    });
    Some(Device {
        backend: backend.unwrap_or(Some(Backend::Auto))?,
        gpus: gpus.unwrap_or(Some(vec![0]))?,
    })
}

fn output_section(cx: &mut Cx, f: &mut Fields) -> Option<Output> {
    let dir = f.get(cx, "dir").map(|v| project_file(cx, &v.value));
    let save = f.get(cx, "save").map(|v| {
        as_symbols(
            cx,
            &v.value,
            &[
                ("adapters", Artifact::Adapters),
                ("merged", Artifact::Merged),
                ("checkpoints", Artifact::Checkpoints),
                ("predictions", Artifact::Predictions),
            ],
        )
    });
    let checkpoint_every = f.get(cx, "checkpoint_every").map(|v| match &v.value.kind {
        ValKind::Num { .. } => {
            as_int(cx, &v.value, 1, i64::MAX).map(|s| CheckpointEvery::Steps(s as u64))
        }
        _ => as_symbol(
            cx,
            &v.value,
            &[
                ("epoch", CheckpointEvery::Epoch),
                ("end", CheckpointEvery::End),
            ],
        ),
    });
    let mut save = save.unwrap_or(Some(vec![Artifact::Adapters, Artifact::Checkpoints]))?;
    save.sort();
    Some(Output {
        dir: dir.unwrap_or(Some("runs".into()))?,
        save,
        checkpoint_every: checkpoint_every.unwrap_or(Some(CheckpointEvery::Epoch))?,
    })
}
