//! Sweeps: one pipeline, several runs.
//!
//! `sweep { AXIS = [v1, v2] ... }` sets the field at each axis path to each
//! value in turn; the runs are the cartesian product, first axis outermost.
//! Each run is named after its values (`minilm_l6-lora`), and an error that
//! only some points have says which point and which value caused it.

use super::CheckedRun;
use super::read::Cx;
use super::sections::run_config;
use super::value::{Record, Val, ValKind};
use crate::diagnostic::{Code, Diagnostic};
use crate::span::Span;

/// One axis: the field path it sets and its values with their labels.
struct Axis {
    path: Vec<(String, Span)>,
    values: Vec<(Val, String)>,
}

impl Axis {
    fn text(&self) -> String {
        self.path
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Expands one pipeline into its runs, reporting problems into `cx`.
pub fn expand(cx: &mut Cx, name: &str, name_span: Span, record: &Record) -> Vec<CheckedRun> {
    let mut base = record.clone();
    let axes = match base.take("sweep") {
        None => Vec::new(),
        Some(field) => match axes(cx, &field.value) {
            Some(a) => a,
            None => return Vec::new(),
        },
    };
    let mut points: Vec<Vec<usize>> = vec![Vec::new()];
    for axis in &axes {
        points = points
            .into_iter()
            .flat_map(|p| (0..axis.values.len()).map(move |i| [p.clone(), vec![i]].concat()))
            .collect();
    }
    let mut runs = Vec::new();
    let mut per_point: Vec<(Vec<Diagnostic>, String, Vec<Span>)> = Vec::new();
    for point in &points {
        let mut record = base.clone();
        let mut labels = Vec::new();
        let mut spans = Vec::new();
        let mut shown = Vec::new();
        for (axis, &i) in axes.iter().zip(point) {
            let (val, label) = &axis.values[i];
            record.set_path(&axis.path, val.clone());
            labels.push((axis.text(), label.clone()));
            shown.push(format!("{} = {}", axis.text(), display(val)));
            spans.push(val.span);
        }
        let mut errors = Vec::new();
        let mut point_cx = Cx {
            modules: cx.modules,
            errors: &mut errors,
            origins: Default::default(),
            poisoned: cx.poisoned,
        };
        let config = run_config(&mut point_cx, &record, name_span);
        let origins = std::mem::take(&mut point_cx.origins);
        let described = shown.join(", ");
        per_point.push((errors, described, spans));
        if let Some(config) = config {
            runs.push(CheckedRun {
                pipeline: name.to_string(),
                pipeline_span: name_span,
                point: labels,
                config,
                origins,
            });
        }
    }
    report(cx, per_point);
    runs
}

/// Reports point errors: those every point shares once, plainly; the others
/// with the point that has them.
fn report(cx: &mut Cx, per_point: Vec<(Vec<Diagnostic>, String, Vec<Span>)>) {
    let key = |d: &Diagnostic| (d.code, d.primary.span, d.message.clone());
    let total = per_point.len();
    let mut shared_done = Vec::new();
    for (errors, described, spans) in &per_point {
        for d in errors {
            let k = key(d);
            let count = per_point
                .iter()
                .filter(|(e, _, _)| e.iter().any(|x| key(x) == k))
                .count();
            if count == total {
                if !shared_done.contains(&k) {
                    shared_done.push(k);
                    cx.error(d.clone());
                }
                continue;
            }
            let mut d = d.clone().note(format!("in sweep point {described}"));
            let cause = spans.iter().find(|s| {
                s.source == d.primary.span.source
                    && s.start <= d.primary.span.start
                    && d.primary.span.end <= s.end
            });
            if cause.is_none() {
                for s in spans {
                    if !d.labels.iter().any(|l| l.span == *s) {
                        d = d.with_label(*s, "this sweep value is part of the failing point");
                    }
                }
            }
            cx.error(d);
        }
    }
}

fn axes(cx: &mut Cx, val: &Val) -> Option<Vec<Axis>> {
    let ValKind::Record(record) = &val.kind else {
        cx.error(
            Diagnostic::error(
                Code::InvalidSweep,
                val.span,
                "`sweep` must be a block of axes",
            )
            .label(format!("found {}", val.describe()))
            .hint("write `sweep { method = [full, lora(rank = 8)] }`"),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    flatten(cx, record, &mut Vec::new(), &mut out, &mut ok);
    if out.is_empty() && ok {
        cx.error(
            Diagnostic::error(Code::InvalidSweep, val.span, "`sweep` has no axes")
                .label("empty")
                .hint("add an axis such as `method = [full, lora]`, or remove `sweep`"),
        );
        return None;
    }
    ok.then_some(out)
}

fn flatten(
    cx: &mut Cx,
    record: &Record,
    prefix: &mut Vec<(String, Span)>,
    out: &mut Vec<Axis>,
    ok: &mut bool,
) {
    for f in &record.fields {
        prefix.push((f.key.clone(), f.key_span));
        match &f.value.kind {
            ValKind::Record(inner) => flatten(cx, inner, prefix, out, ok),
            ValKind::List(items) if !items.is_empty() => {
                if prefix[0].0 == "sweep" {
                    cx.error(
                        Diagnostic::error(
                            Code::InvalidSweep,
                            f.key_span,
                            "a sweep cannot sweep itself",
                        )
                        .label("not an axis"),
                    );
                    *ok = false;
                } else {
                    match labels(prefix.last().map_or("", |(k, _)| k), items) {
                        Ok(labels) => out.push(Axis {
                            path: prefix.clone(),
                            values: items.iter().cloned().zip(labels).collect(),
                        }),
                        Err((a, b)) => {
                            cx.error(
                                Diagnostic::error(Code::DuplicateRunName, items[b].span, "this sweep value repeats an earlier one")
                                    .label("same value")
                                    .with_label(items[a].span, "first here")
                                    .hint("each value of an axis must differ, so each run has its own name and directory"),
                            );
                            *ok = false;
                        }
                    }
                }
            }
            _ => {
                let path = prefix
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                cx.error(
                    Diagnostic::error(
                        Code::InvalidSweep,
                        f.value.span,
                        format!("sweep axis `{path}` must be a non-empty list"),
                    )
                    .label(format!("found {}", f.value.describe()))
                    .hint(format!(
                        "list the values to try: `{path} = [a, b]`; fixed values go outside `sweep`"
                    )),
                );
                *ok = false;
            }
        }
        prefix.pop();
    }
}

/// Point labels for an axis: short (`lora`) when they are distinct, long
/// (`lora-rank8`) otherwise. On a repeat, the indices of the two values.
fn labels(key: &str, items: &[Val]) -> Result<Vec<String>, (usize, usize)> {
    for long in [false, true] {
        let labels: Vec<String> = items
            .iter()
            .enumerate()
            .map(|(i, v)| label(key, v, i, long))
            .collect();
        if let Some(dup) = first_repeat(&labels) {
            if long {
                return Err(dup);
            }
            continue;
        }
        return Ok(labels);
    }
    unreachable!("the long pass returns")
}

/// A sweep value as a person would write it, for notes.
fn display(v: &Val) -> String {
    match &v.kind {
        ValKind::Sym(s) => s.clone(),
        ValKind::Decl { name, .. } => name.clone(),
        ValKind::Num { text, unit, .. } => {
            format!("{text}{}", unit.as_ref().map_or("", |u| u.name.as_str()))
        }
        ValKind::Str(s) => format!("{s:?}"),
        ValKind::Bool(b) => b.to_string(),
        ValKind::Call { name, args } => {
            let args: Vec<String> = args
                .iter()
                .map(|(n, a)| match n {
                    Some(n) => format!("{} = {}", n.name, display(a)),
                    None => display(a),
                })
                .collect();
            format!("{}({})", name.name, args.join(", "))
        }
        ValKind::List(items) => format!(
            "[{}]",
            items.iter().map(display).collect::<Vec<_>>().join(", ")
        ),
        ValKind::Record(_) => "{ ... }".into(),
    }
}

fn first_repeat(labels: &[String]) -> Option<(usize, usize)> {
    for (j, l) in labels.iter().enumerate() {
        if let Some(i) = labels[..j].iter().position(|x| x == l) {
            return Some((i, j));
        }
    }
    None
}

fn label(key: &str, v: &Val, index: usize, long: bool) -> String {
    let raw = match &v.kind {
        ValKind::Sym(s) => s.clone(),
        ValKind::Decl { name, .. } => name.clone(),
        ValKind::Call { name, args } if long => {
            let mut s = name.name.clone();
            for (n, a) in args {
                s.push('-');
                if let Some(n) = n {
                    s.push_str(&n.name);
                }
                s.push_str(&label("", a, 0, true));
            }
            s
        }
        ValKind::Call { name, .. } => name.name.clone(),
        ValKind::Num { text, unit, .. } => {
            format!(
                "{key}{text}{}",
                unit.as_ref().map_or("", |u| if u.name == "%" {
                    "pct"
                } else {
                    u.name.as_str()
                })
            )
        }
        ValKind::Str(s) => s.clone(),
        ValKind::Bool(b) => format!("{key}-{b}"),
        ValKind::List(_) | ValKind::Record(_) => format!("{key}{}", index + 1),
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
