//! Reading `model` and `dataset` declarations (and a pipeline's `dataset`
//! section, which has the same fields): sizes and sources of a model, files,
//! splits and limits of a dataset.

use super::modules::{path_escape, project_path};
use super::read::*;
use super::value::{Val, ValKind};
use crate::config::*;
use crate::diagnostic::{Code, Diagnostic, one_of};
use crate::span::Span;
use crate::syntax::ast::DeclKind;

pub fn name_hint(name: &str) -> String {
    for (module, text) in crate::stdlib::MODULES {
        if text.contains(&format!("model {name} {{"))
            || text.contains(&format!("dataset {name} {{"))
        {
            return format!("{module}.{name}");
        }
    }
    name.to_string()
}

pub fn labels(cx: &mut Cx, val: &Val) -> Option<Vec<String>> {
    let labels = as_strings(cx, val, true)?;
    if labels.len() < 2 {
        cx.error(out_of_range(val, "a classifier needs at least 2 labels"));
        return None;
    }
    for (i, l) in labels.iter().enumerate() {
        if labels[..i].contains(l) || l.trim().is_empty() {
            cx.error(out_of_range(val, "labels must be distinct and not blank"));
            return None;
        }
    }
    Some(labels)
}

/// Reads a `model` declaration (the value of `model.base`).
pub fn model_decl(cx: &mut Cx, val: &Val) -> Option<ModelSpec> {
    let ValKind::Decl {
        kind: DeclKind::Model,
        name,
        record,
    } = &val.kind
    else {
        let mut d = mismatch(val, "a model declaration such as `models.minilm_l6`");
        if let ValKind::Sym(s) = &val.kind {
            let q = name_hint(s);
            if q != *s {
                d = d.hint(format!(
                    "did you mean `{q}`? (it needs `import \"std/{}\"`)",
                    q.split('.').next().unwrap_or("models")
                ));
            }
        }
        cx.error(d);
        return None;
    };
    let mut f = Fields::new("model.base", record, val.span);
    let str_field = |cx: &mut Cx, f: &mut Fields, k| f.get(cx, k).map(|v| as_str(cx, &v.value));
    let hub = str_field(cx, &mut f, "hub");
    let revision = str_field(cx, &mut f, "revision");
    let path = f.get(cx, "path").map(|p| project_file(cx, &p.value));
    let architecture = f
        .require(cx, "architecture", "the encoder family", "bert")
        .and_then(|a| {
            as_symbol(
                cx,
                &a.value,
                &[("bert", Architecture::Bert), ("mpnet", Architecture::Mpnet)],
            )
        });
    let mut dim = |cx: &mut Cx, k: &'static str, example: &str| {
        f.require(cx, k, "a size of the model", example)
            .and_then(|v| as_int(cx, &v.value, 1, 1 << 24))
            .map(|v| v as u32)
    };
    let layers = dim(cx, "layers", "6");
    let hidden = dim(cx, "hidden", "384");
    let heads = dim(cx, "heads", "12");
    let intermediate = dim(cx, "intermediate", "1536");
    let vocab = dim(cx, "vocab", "30522");
    let max_positions = dim(cx, "max_positions", "512");
    let modules = f
        .require(
            cx,
            "modules",
            "the linear modules of a layer",
            "[\"query\", \"value\"]",
        )
        .and_then(|m| as_strings(cx, &m.value, true));
    let lora_targets = f
        .require(
            cx,
            "lora_targets",
            "the default LoRA targets",
            "[\"query\", \"value\"]",
        )
        .map(|t| (t, as_strings(cx, &t.value, true)));
    let sha256 = f.get(cx, "sha256").map(|s| {
        sha256_block(
            cx,
            &s.value,
            "model.base.sha256",
            &["weights", "tokenizer", "config"],
        )
    });
    let mirror = f.get(cx, "mirror").map(|m| mirror_value(cx, &m.value));
    f.finish(cx);
    if hub.is_none() && path.is_none() && mirror.is_none() {
        cx.error(
            Diagnostic::error(Code::MissingField, val.span, format!("model `{name}` says nowhere to get it from"))
                .label("needs `hub`, `path` or `mirror`")
                .hint("add `hub = \"ORG/NAME\"` or `path = \"models/NAME\"` (a Hugging Face-format folder)"),
        );
        return None;
    }
    let (hidden, heads) = (hidden?, heads?);
    if hidden % heads != 0 {
        cx.error(out_of_range(
            val,
            &format!("`hidden` ({hidden}) must be a multiple of `heads` ({heads})"),
        ));
        return None;
    }
    let modules = modules?;
    let (targets_field, lora_targets) = lora_targets?;
    let lora_targets = lora_targets?;
    check_targets(cx, &targets_field.value, &lora_targets, &modules, name)?;
    Some(ModelSpec {
        name: name.clone(),
        hub: opt(hub)?,
        revision: opt(revision)?,
        path: opt(path)?,
        architecture: architecture?,
        dims: Dims {
            layers: layers?,
            hidden,
            heads,
            intermediate: intermediate?,
            vocab: vocab?,
            max_positions: max_positions?,
        },
        modules,
        lora_targets,
        sha256: opt(sha256)?.unwrap_or_default(),
        mirror: opt(mirror)?,
    })
}

/// Checks that every target names a module the model has.
pub fn check_targets(
    cx: &mut Cx,
    val: &Val,
    targets: &[String],
    modules: &[String],
    model: &str,
) -> Option<()> {
    let items: Vec<Span> = match &val.kind {
        ValKind::List(items) => items.iter().map(|i| i.span).collect(),
        _ => vec![val.span; targets.len()],
    };
    let mut ok = true;
    for (t, span) in targets.iter().zip(items) {
        if !modules.contains(t) {
            let names: Vec<&str> = modules.iter().map(|m| m.as_str()).collect();
            cx.error(
                Diagnostic::error(
                    Code::UnknownTargetModule,
                    span,
                    format!("model `{model}` has no module `{t}`"),
                )
                .label("not a module of this model")
                .hint(format!("its modules are {}", one_of(&names)))
                .maybe_hint(
                    crate::diagnostic::closest(t, names.iter().copied())
                        .map(|b| format!("did you mean `{b}`?")),
                ),
            );
            ok = false;
        }
    }
    ok.then_some(())
}

/// A `sha256 { ROLE = "..." }` block with the given roles.
fn sha256_block(
    cx: &mut Cx,
    val: &Val,
    prefix: &str,
    roles: &[&'static str],
) -> Option<std::collections::BTreeMap<String, String>> {
    let record = record_of(
        cx,
        val,
        "a block of sha256 digests",
        "write `sha256 { weights = \"...\" }`",
    )?;
    let mut f = Fields::new(prefix, record, val.span);
    let mut out = std::collections::BTreeMap::new();
    let mut ok = true;
    for &role in roles {
        if let Some(v) = f.get(cx, role) {
            match as_str(cx, &v.value) {
                Some(s)
                    if s.len() == 64
                        && s.chars()
                            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) =>
                {
                    out.insert(role.to_string(), s);
                }
                Some(_) => {
                    cx.error(out_of_range(
                        &v.value,
                        "a sha256 digest is 64 lowercase hex digits",
                    ));
                    ok = false;
                }
                None => ok = false,
            }
        }
    }
    f.finish(cx);
    ok.then_some(out)
}

fn mirror_value(cx: &mut Cx, val: &Val) -> Option<Mirror> {
    let (name, mut args) = as_call(cx, val, &["pypi", "pypi_zip_parts"])?;
    let packages = match args.get("packages") {
        Some(p) => as_strings(cx, p, true),
        None => missing_arg(cx, val, name, "packages"),
    };
    let parts = if name == "pypi_zip_parts" {
        match args.get("parts") {
            Some(p) => as_strings(cx, p, true).map(Some),
            None => missing_arg(cx, val, name, "parts"),
        }
    } else {
        Some(None)
    };
    let dir = match args.get("dir") {
        Some(d) => as_str(cx, d),
        None => missing_arg(cx, val, name, "dir"),
    };
    args.finish(cx);
    let (packages, dir) = (packages?, dir?);
    Some(match parts? {
        None => Mirror::Pypi { packages, dir },
        Some(parts) => Mirror::PypiZipParts {
            packages,
            parts,
            dir,
        },
    })
}

/// A project file written as a string, resolved against the file that wrote it.
pub fn project_file(cx: &mut Cx, val: &Val) -> Option<String> {
    let raw = as_str(cx, val)?;
    let module = cx.modules.by_source(val.span.source)?;
    if module.is_std {
        cx.error(path_escape(
            val.span,
            &raw,
            "stdlib files cannot name project paths",
        ));
        return None;
    }
    match project_path(module.dir(), &raw) {
        Ok(p) => Some(p),
        Err(why) => {
            cx.error(path_escape(val.span, &raw, &why));
            None
        }
    }
}

/// `"file.tsv"` (project) or `data("name")` (data search path).
fn file_ref(cx: &mut Cx, val: &Val) -> Option<FileRef> {
    match &val.kind {
        ValKind::Str(_) => project_file(cx, val).map(|path| FileRef::Project { path }),
        ValKind::Call { .. } | ValKind::Sym(_) => {
            let (_, mut args) = as_call(cx, val, &["data"])?;
            let name = args.get("name");
            args.finish(cx);
            let Some(name) = name else {
                return missing_arg(cx, val, "data", "name");
            };
            let raw = as_str(cx, name)?;
            match project_path("", &raw) {
                Ok(n) if n == raw.trim_start_matches("./") => Some(FileRef::DataPath { name: n }),
                Ok(_) | Err(_) => {
                    cx.error(path_escape(
                        name.span,
                        &raw,
                        "data names are plain relative names, without `..`",
                    ));
                    None
                }
            }
        }
        _ => {
            cx.error(mismatch(
                val,
                "a file: \"path/to/file.tsv\" or data(name = \"...\")",
            ));
            None
        }
    }
}

fn split(cx: &mut Cx, val: &Val, default_seed: u64) -> Option<Split> {
    if let ValKind::Call { name, .. } = &val.kind
        && name.name == "holdout"
    {
        let (_, mut args) = as_call(cx, val, &["holdout"])?;
        let fraction = args.get("fraction");
        let seed = args.get("seed").map(|s| as_int(cx, s, 0, i64::MAX));
        args.finish(cx);
        let Some(fraction) = fraction else {
            return missing_arg(cx, val, "holdout", "fraction");
        };
        let fraction = as_fraction(cx, fraction, true, true)?;
        return Some(Split::Holdout {
            fraction,
            seed: seed.unwrap_or(Some(default_seed as i64))? as u64,
        });
    }
    file_ref(cx, val).map(|file| Split::File { file })
}

/// Reads a dataset section or declaration.
pub fn dataset_section(cx: &mut Cx, prefix: &str, val: &Val) -> Option<DatasetConfig> {
    let name = match &val.kind {
        ValKind::Decl {
            kind: DeclKind::Dataset,
            name,
            ..
        } => Some(name.clone()),
        ValKind::Decl { kind, name, .. } => {
            cx.error(mismatch(val, "a dataset").hint(format!("`{name}` is a {}", kind.keyword())));
            return None;
        }
        _ => None,
    };
    let record = record_of(
        cx,
        val,
        "a dataset: `datasets.sst2` or a `dataset { ... }` block",
        "write `dataset = datasets.sst2`",
    )?;
    let mut f = Fields::new(prefix, record, val.span);
    let seed = f
        .get(cx, "seed")
        .map(|s| as_int(cx, &s.value, 0, i64::MAX).map(|s| s as u64));
    let seed_value = seed.unwrap_or(Some(42)).unwrap_or(42);
    let train = f
        .require(cx, "train", "the training file", "\"data/train.tsv\"")
        .map(|t| (file_ref(cx, &t.value), t.value.span));
    let eval = f.get(cx, "eval").map(|e| split(cx, &e.value, seed_value));
    let test = f.get(cx, "test").map(|e| split(cx, &e.value, seed_value));
    let format = f.get(cx, "format").map(|v| {
        as_symbol(
            cx,
            &v.value,
            &[
                ("tsv", Format::Tsv),
                ("csv", Format::Csv),
                ("jsonl", Format::Jsonl),
            ],
        )
    });
    let text = f.get(cx, "text").map(|v| as_str(cx, &v.value));
    let label = f.get(cx, "label").map(|v| as_str(cx, &v.value));
    let labels = f
        .require(
            cx,
            "labels",
            "the class names in label-id order",
            "[\"negative\", \"positive\"]",
        )
        .and_then(|v| labels(cx, &v.value));
    let limit = f.get(cx, "limit").map(|l| limits(cx, prefix, &l.value));
    let max_tokens = f
        .get(cx, "max_tokens")
        .map(|v| as_int(cx, &v.value, 4, 1 << 16).map(|v| v as u32));
    let shuffle = f.get(cx, "shuffle").map(|v| as_bool(cx, &v.value));
    let sha256 = f.get(cx, "sha256").map(|s| {
        sha256_block(
            cx,
            &s.value,
            &format!("{prefix}.sha256"),
            &["train", "eval", "test"],
        )
    });
    let bad_rows = f.get(cx, "bad_rows").map(|v| {
        as_symbol(
            cx,
            &v.value,
            &[("error", BadRows::Error), ("skip", BadRows::Skip)],
        )
    });
    f.finish(cx);
    let (train, train_span) = train?;
    let train = train?;
    let format = match format {
        Some(f) => f?,
        None => match format_from_name(&train) {
            Some(f) => f,
            None => {
                cx.error(
                    Diagnostic::error(
                        Code::MissingField,
                        train_span,
                        "cannot tell the data format from the file name",
                    )
                    .label("not .tsv, .csv or .jsonl")
                    .hint(format!("add `{prefix}.format = tsv` (or csv, jsonl)")),
                );
                return None;
            }
        },
    };
    Some(DatasetConfig {
        name,
        format,
        train,
        eval: opt(eval)?,
        test: opt(test)?,
        text: text.unwrap_or(Some("text".into()))?,
        label: label.unwrap_or(Some("label".into()))?,
        labels: labels?,
        limit: limit.unwrap_or(Some(Limits::default()))?,
        max_tokens: max_tokens.unwrap_or(Some(128))?,
        shuffle: shuffle.unwrap_or(Some(true))?,
        seed: seed.unwrap_or(Some(42))?,
        sha256: opt(sha256)?.unwrap_or_default(),
        bad_rows: bad_rows.unwrap_or(Some(BadRows::Error))?,
    })
}

fn format_from_name(file: &FileRef) -> Option<Format> {
    let name = match file {
        FileRef::Project { path } => path,
        FileRef::DataPath { name } => name,
    };
    match name.rsplit('.').next()? {
        "tsv" => Some(Format::Tsv),
        "csv" => Some(Format::Csv),
        "jsonl" => Some(Format::Jsonl),
        _ => None,
    }
}

fn limits(cx: &mut Cx, prefix: &str, val: &Val) -> Option<Limits> {
    let record = record_of(
        cx,
        val,
        "a block of row limits",
        "write `limit { train = 8_000 }`",
    )?;
    let mut f = Fields::new(&format!("{prefix}.limit"), record, val.span);
    let mut read = |cx: &mut Cx, k| {
        f.get(cx, k)
            .map(|v| as_int(cx, &v.value, 1, i64::MAX).map(|v| v as u64))
    };
    let (train, eval, test) = (read(cx, "train"), read(cx, "eval"), read(cx, "test"));
    f.finish(cx);
    Some(Limits {
        train: opt(train)?,
        eval: opt(eval)?,
        test: opt(test)?,
    })
}

/// Reads a `dataset` declaration on its own, for its errors.
pub fn dataset_decl(cx: &mut Cx, val: &Val) -> Option<DatasetConfig> {
    dataset_section(cx, "dataset", val)
}
