//! Typed reading of elaborated records.
//!
//! A [`Fields`] reads one block: each `get` names a field the block may
//! have, and `finish` reports every field that was not asked for, with a
//! "did you mean". The `as_*` functions turn one value into a typed value or
//! a diagnostic saying what was expected.

use super::value::{Field, Record, UNITS, UnitKind, Val, ValKind, unit_kind};
use crate::diagnostic::{Code, Diagnostic, closest, one_of, suggest};
use crate::span::Span;
use std::collections::BTreeMap;

/// Shared state while reading one run's configuration.
pub struct Cx<'e> {
    /// The loaded modules, to resolve paths relative to the file that wrote them.
    pub modules: &'e super::modules::Modules,
    /// Problems found.
    pub errors: &'e mut Vec<Diagnostic>,
    /// Where each field that was written came from, by dotted path.
    pub origins: BTreeMap<String, Span>,
    /// Values whose resolution already failed: problems inside them are
    /// consequences, not news, and are not reported again.
    pub poisoned: &'e [Span],
}

impl Cx<'_> {
    /// Records a problem, unless it is about a value already reported.
    pub fn error(&mut self, d: Diagnostic) {
        let p = d.primary.span;
        if self
            .poisoned
            .iter()
            .any(|s| s.source == p.source && s.start <= p.start && p.end <= s.end)
        {
            return;
        }
        self.errors.push(d);
    }
}

/// One block being read.
pub struct Fields<'r> {
    prefix: String,
    record: &'r Record,
    /// Where the block is, for "missing field" errors.
    pub span: Span,
    known: Vec<&'static str>,
}

impl<'r> Fields<'r> {
    /// Reads `record`, whose fields have paths `prefix.NAME`.
    pub fn new(prefix: &str, record: &'r Record, span: Span) -> Fields<'r> {
        Fields {
            prefix: prefix.to_string(),
            record,
            span,
            known: Vec::new(),
        }
    }

    /// The dotted path of field `key`.
    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// The field `key`, if written; records its origin.
    pub fn get(&mut self, cx: &mut Cx, key: &'static str) -> Option<&'r Field> {
        self.known.push(key);
        let f = self.record.get(key)?;
        // Blocks are containers: their fields record their own origins.
        if !matches!(
            f.value.kind,
            ValKind::Record(_)
                | ValKind::Decl {
                    kind: crate::syntax::ast::DeclKind::Dataset,
                    ..
                }
        ) {
            cx.origins.insert(self.path(key), f.value.span);
        }
        Some(f)
    }

    /// The field `key`, or a "missing field" error.
    pub fn require(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        what: &str,
        example: &str,
    ) -> Option<&'r Field> {
        let f = self.get(cx, key);
        if f.is_none() {
            cx.error(
                Diagnostic::error(
                    Code::MissingField,
                    self.span,
                    format!("`{}` is missing", self.path(key)),
                )
                .label(format!("this needs `{key}`: {what}"))
                .hint(match example.strip_prefix('.') {
                    Some(rest) => format!("add `{key}.{rest}`"),
                    None => format!("add `{key} = {example}`"),
                }),
            );
        }
        f
    }

    /// Reports the fields no `get` asked for.
    pub fn finish(self, cx: &mut Cx) {
        for f in &self.record.fields {
            if self.known.contains(&f.key.as_str()) {
                continue;
            }
            let place = if self.prefix.is_empty() {
                "a pipeline".to_string()
            } else {
                format!("`{}`", self.prefix)
            };
            let hint = match closest(&f.key, self.known.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!("{place} has: {}", one_of(&self.known)),
            };
            cx.error(
                Diagnostic::error(
                    Code::UnknownField,
                    f.key_span,
                    format!("{place} has no field `{}`", f.key),
                )
                .label("unknown field")
                .hint(hint),
            );
        }
    }
}

/// A "wrong type" diagnostic.
pub fn mismatch(val: &Val, expected: &str) -> Diagnostic {
    let mut d = Diagnostic::error(
        Code::TypeMismatch,
        val.span,
        format!("expected {expected}, found {}", val.describe()),
    )
    .label(format!("expected {expected}"));
    if let ValKind::Sym(s) = &val.kind {
        d.code = Code::UnknownName;
        d.message = format!("`{s}` is not defined");
        d.primary.message = format!("expected {expected}");
    }
    d
}

/// An "out of range" diagnostic.
pub fn out_of_range(val: &Val, rule: &str) -> Diagnostic {
    Diagnostic::error(
        Code::OutOfRange,
        val.span,
        format!("value out of range: {rule}"),
    )
    .label(rule.to_string())
}

fn plain_number(cx: &mut Cx, val: &Val, expected: &str) -> Option<(f64, Option<i64>)> {
    match &val.kind {
        ValKind::Num {
            value,
            int,
            unit: None,
            ..
        } => Some((*value, *int)),
        ValKind::Num { unit: Some(u), .. } if unit_kind(&u.name).is_none() => {
            cx.error(unknown_unit(u.span, &u.name));
            None
        }
        _ => {
            cx.error(mismatch(val, expected));
            None
        }
    }
}

/// An integer in `min..=max`.
pub fn as_int(cx: &mut Cx, val: &Val, min: i64, max: i64) -> Option<i64> {
    let (value, int) = plain_number(cx, val, "an integer")?;
    let Some(i) = int else {
        cx.error(
            Diagnostic::error(
                Code::TypeMismatch,
                val.span,
                format!("expected an integer, found {value}"),
            )
            .label("not a whole number")
            .hint(format!(
                "write a whole number, e.g. `{}`",
                value.round() as i64
            )),
        );
        return None;
    };
    if i < min || i > max {
        let rule = if max == i64::MAX {
            format!("must be at least {min}")
        } else {
            format!("must be from {min} to {max}")
        };
        cx.error(out_of_range(val, &rule));
        return None;
    }
    Some(i)
}

/// A number in a range; `open_min` excludes the minimum, `open_max` the maximum.
pub fn as_float(
    cx: &mut Cx,
    val: &Val,
    min: f64,
    max: f64,
    open_min: bool,
    open_max: bool,
) -> Option<f64> {
    let (v, _) = plain_number(cx, val, "a number")?;
    let low_ok = if open_min { v > min } else { v >= min };
    let high_ok = if open_max { v < max } else { v <= max };
    if !(low_ok && high_ok) {
        let lo = if open_min {
            format!("greater than {min}")
        } else {
            format!("at least {min}")
        };
        let rule = if max.is_infinite() {
            format!("must be {lo}")
        } else {
            let hi = if open_max {
                format!("less than {max}")
            } else {
                format!("at most {max}")
            };
            format!("must be {lo} and {hi}")
        };
        cx.error(out_of_range(val, &rule));
        return None;
    }
    Some(v)
}

/// `true` or `false`.
pub fn as_bool(cx: &mut Cx, val: &Val) -> Option<bool> {
    match val.kind {
        ValKind::Bool(b) => Some(b),
        _ => {
            cx.error(mismatch(val, "`true` or `false`"));
            None
        }
    }
}

/// A string.
pub fn as_str(cx: &mut Cx, val: &Val) -> Option<String> {
    match &val.kind {
        ValKind::Str(s) => Some(s.clone()),
        _ => {
            cx.error(mismatch(val, "a string"));
            None
        }
    }
}

/// A list of strings, non-empty when `non_empty`.
pub fn as_strings(cx: &mut Cx, val: &Val, non_empty: bool) -> Option<Vec<String>> {
    let ValKind::List(items) = &val.kind else {
        cx.error(mismatch(val, "a list of strings").hint("write a list: [\"a\", \"b\"]"));
        return None;
    };
    if non_empty && items.is_empty() {
        cx.error(out_of_range(val, "must not be empty"));
        return None;
    }
    let out: Vec<Option<String>> = items.iter().map(|i| as_str(cx, i)).collect();
    out.into_iter().collect()
}

/// A value with a unit of the given kind, converted to bytes or seconds.
fn as_measure(
    cx: &mut Cx,
    val: &Val,
    want: &str,
    pick: fn(UnitKind) -> Option<f64>,
    example: &str,
) -> Option<f64> {
    match &val.kind {
        ValKind::Num {
            value,
            unit: Some(u),
            ..
        } => match unit_kind(&u.name) {
            Some(kind) => match pick(kind) {
                Some(scale) => {
                    if *value <= 0.0 {
                        cx.error(out_of_range(val, "must be greater than 0"));
                        return None;
                    }
                    Some(value * scale)
                }
                None => {
                    cx.error(mismatch(val, want));
                    None
                }
            },
            None => {
                cx.error(unknown_unit(u.span, &u.name));
                None
            }
        },
        ValKind::Num { unit: None, .. } => {
            cx.error(
                Diagnostic::error(
                    Code::TypeMismatch,
                    val.span,
                    format!("expected {want}, found a number without a unit"),
                )
                .label("add a unit")
                .hint(format!("write e.g. `{example}`")),
            );
            None
        }
        _ => {
            cx.error(mismatch(val, want));
            None
        }
    }
}

/// A byte size such as `8GiB`.
pub fn as_bytes(cx: &mut Cx, val: &Val) -> Option<u64> {
    as_measure(
        cx,
        val,
        "a byte size",
        |k| {
            if let UnitKind::Bytes(s) = k {
                Some(s)
            } else {
                None
            }
        },
        "8GiB",
    )
    .map(|b| b.round() as u64)
}

/// A duration such as `90min`, in seconds.
pub fn as_seconds(cx: &mut Cx, val: &Val) -> Option<f64> {
    as_measure(
        cx,
        val,
        "a duration",
        |k| {
            if let UnitKind::Seconds(s) = k {
                Some(s)
            } else {
                None
            }
        },
        "2h",
    )
}

/// A share: `10%` or a plain number in [0, 1]; returned as a fraction.
pub fn as_fraction(cx: &mut Cx, val: &Val, open_min: bool, open_max: bool) -> Option<f64> {
    let v = match &val.kind {
        ValKind::Num {
            value,
            unit: Some(u),
            ..
        } if u.name == "%" => value / 100.0,
        ValKind::Num {
            unit: None, value, ..
        } => *value,
        ValKind::Num { unit: Some(u), .. } if unit_kind(&u.name).is_none() => {
            cx.error(unknown_unit(u.span, &u.name));
            return None;
        }
        _ => {
            cx.error(mismatch(val, "a percentage such as `10%`"));
            return None;
        }
    };
    let ok =
        (if open_min { v > 0.0 } else { v >= 0.0 }) && (if open_max { v < 1.0 } else { v <= 1.0 });
    if !ok {
        let rule = match (open_min, open_max) {
            (false, false) => "must be from 0% to 100%",
            (true, true) => "must be between 0% and 100%, both excluded",
            (true, false) => "must be greater than 0% and at most 100%",
            (false, true) => "must be at least 0% and less than 100%",
        };
        cx.error(out_of_range(val, rule));
        return None;
    }
    Some(v)
}

/// One of a fixed set of symbols.
pub fn as_symbol<T: Copy>(cx: &mut Cx, val: &Val, options: &[(&str, T)]) -> Option<T> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    match &val.kind {
        ValKind::Sym(s) => match options.iter().find(|(n, _)| n == s) {
            Some((_, t)) => Some(*t),
            None => {
                cx.error(
                    Diagnostic::error(
                        Code::UnknownOption,
                        val.span,
                        format!("`{s}` is not an option here"),
                    )
                    .label(format!("expected {}", one_of(&names)))
                    .maybe_hint(suggest(s, &names).filter(|h| h.starts_with("did"))),
                );
                None
            }
        },
        ValKind::Str(s) if names.contains(&s.as_str()) => {
            cx.error(mismatch(val, &one_of(&names)).hint(format!("write `{s}` without quotes")));
            None
        }
        _ => {
            cx.error(mismatch(val, &one_of(&names)));
            None
        }
    }
}

/// A list of symbols from a fixed set, without repeats.
pub fn as_symbols<T: Copy + PartialEq>(
    cx: &mut Cx,
    val: &Val,
    options: &[(&str, T)],
) -> Option<Vec<T>> {
    let ValKind::List(items) = &val.kind else {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        cx.error(mismatch(val, "a list").hint(format!(
            "write a list of {}, e.g. `[{}]`",
            one_of(&names),
            names[0]
        )));
        return None;
    };
    let mut out = Vec::new();
    for item in items {
        let t = as_symbol(cx, item, options)?;
        if out.contains(&t) {
            cx.error(
                Diagnostic::error(Code::DuplicateField, item.span, "listed twice")
                    .label("already in the list")
                    .hint("remove the repeat"),
            );
            return None;
        }
        out.push(t);
    }
    Some(out)
}

/// A call to one of the functions in `names`; a bare symbol counts as a
/// call without arguments. Returns the function name and its arguments.
pub fn as_call<'v>(
    cx: &mut Cx,
    val: &'v Val,
    names: &[&'static str],
) -> Option<(&'static str, Args<'v>)> {
    let (name, name_span, args): (&str, Span, &'v [(Option<crate::syntax::ast::Ident>, Val)]) =
        match &val.kind {
            ValKind::Call { name, args } => (&name.name, name.span, args.as_slice()),
            ValKind::Sym(s) => (s.as_str(), val.span, &[]),
            _ => {
                cx.error(mismatch(val, &one_of(names)));
                return None;
            }
        };
    let Some(known) = names.iter().find(|n| **n == name) else {
        cx.error(
            Diagnostic::error(
                Code::UnknownOption,
                name_span,
                format!("`{name}` is not an option here"),
            )
            .label(format!("expected {}", one_of(names)))
            .maybe_hint(suggest(name, names).filter(|h| h.starts_with("did"))),
        );
        return None;
    };
    let mut named = Vec::new();
    let mut positional: Vec<(&'static str, &'v Val)> = Vec::new();
    let mut positional_seen = false;
    for (arg_name, value) in args {
        match arg_name {
            Some(n) => {
                if let Some((_, first)) = named
                    .iter()
                    .find(|(k, _): &&(&crate::syntax::ast::Ident, &Val)| k.name == n.name)
                {
                    let first: &&Val = first;
                    cx.error(
                        Diagnostic::error(
                            Code::DuplicateField,
                            n.span,
                            format!("argument `{}` is given twice", n.name),
                        )
                        .label("given again here")
                        .with_label(first.span, "first given here"),
                    );
                    continue;
                }
                named.push((n, value));
            }
            None => match PRIMARY.iter().find(|(f, _)| *f == name) {
                Some((_, primary)) if named.is_empty() && !positional_seen => {
                    positional_seen = true;
                    positional.push((*primary, value));
                }
                _ => cx.error(
                    Diagnostic::error(
                        Code::PositionalArgument,
                        value.span,
                        format!("arguments of `{name}` are named"),
                    )
                    .label("give this argument a name")
                    .hint(match PRIMARY.iter().find(|(f, _)| *f == name) {
                        Some((_, p)) => format!(
                            "only the first argument of `{name}` (`{p}`) may go without a name"
                        ),
                        None => format!("write `{name}(NAME = ...)`"),
                    }),
                ),
            },
        }
    }
    Some((
        known,
        Args {
            function: known,
            args: named,
            positional,
            used: Vec::new(),
        },
    ))
}

/// Functions whose first argument may go without its name: `data("x.tsv")`,
/// `holdout(10%)`.
const PRIMARY: &[(&str, &str)] = &[("data", "name"), ("holdout", "fraction")];

/// The named arguments of a call being read.
pub struct Args<'v> {
    function: &'static str,
    positional: Vec<(&'static str, &'v Val)>,
    args: Vec<(&'v crate::syntax::ast::Ident, &'v Val)>,
    used: Vec<&'static str>,
}

impl<'v> Args<'v> {
    /// Argument `name`, if given.
    pub fn get(&mut self, name: &'static str) -> Option<&'v Val> {
        self.used.push(name);
        let named = self
            .args
            .iter()
            .find(|(n, _)| n.name == name)
            .map(|(_, v)| *v);
        named.or_else(|| {
            self.positional
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        })
    }

    /// Reports arguments no `get` asked for.
    pub fn finish(self, cx: &mut Cx) {
        for (n, _) in &self.args {
            if self.used.contains(&n.name.as_str()) {
                continue;
            }
            let hint = match closest(&n.name, self.used.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None if self.used.is_empty() => format!("`{}` takes no arguments", self.function),
                None => format!("`{}` takes {}", self.function, one_of(&self.used)),
            };
            cx.error(
                Diagnostic::error(
                    Code::UnknownArgument,
                    n.span,
                    format!("`{}` has no argument `{}`", self.function, n.name),
                )
                .label("unknown argument")
                .hint(hint),
            );
        }
    }
}

/// The diagnostic for a unit ftl does not know.
pub fn unknown_unit(span: Span, unit: &str) -> Diagnostic {
    let names: Vec<&str> = UNITS.iter().map(|(u, _)| *u).collect();
    let lower = unit.to_ascii_lowercase();
    let best = names
        .iter()
        .find(|n| n.to_ascii_lowercase() == lower)
        .copied()
        .or_else(|| closest(unit, names.iter().copied()));
    Diagnostic::error(Code::UnknownUnit, span, format!("unknown unit `{unit}`"))
        .label("not a unit ftl knows")
        .maybe_hint(best.map(|b| format!("did you mean `{b}`?")))
        .note(
            "sizes: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB; durations: ms, s, min, h, d; shares: %",
        )
}

/// The record of a block or declaration value, or a "wrong type" error.
pub fn record_of<'v>(cx: &mut Cx, val: &'v Val, what: &str, hint: &str) -> Option<&'v Record> {
    match &val.kind {
        ValKind::Record(r) | ValKind::Decl { record: r, .. } => Some(r),
        _ => {
            cx.error(mismatch(val, what).hint(hint.to_string()));
            None
        }
    }
}

/// A "missing argument" error.
pub fn missing_arg<T>(cx: &mut Cx, val: &Val, function: &str, arg: &str) -> Option<T> {
    cx.error(
        Diagnostic::error(
            Code::MissingField,
            val.span,
            format!("`{function}` needs the argument `{arg}`"),
        )
        .label(format!("`{arg}` is missing"))
        .hint(format!("add `{arg} = ...` inside the parentheses")),
    );
    None
}

/// Absent stays absent (`Some(None)`); a field that failed to read fails the
/// whole section (`None`).
pub fn opt<T>(x: Option<Option<T>>) -> Option<Option<T>> {
    match x {
        None => Some(None),
        Some(None) => None,
        Some(Some(v)) => Some(Some(v)),
    }
}
