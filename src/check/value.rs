//! Elaborated values: what a `.ft` value means once names are resolved,
//! `let`s are substituted, and overrides and `extends` are merged.
//!
//! Each value keeps the span where it was written, so an error found while
//! reading a run's configuration points at the line that set the value, even
//! when that line is in a `let`, a parent pipeline or an imported file.

use crate::diagnostic::{Code, Diagnostic};
use crate::span::Span;
use crate::syntax::ast::{DeclKind, Ident};

/// A value with the span it was written at.
#[derive(Clone, Debug, PartialEq)]
pub struct Val {
    /// What it is.
    pub kind: ValKind,
    /// Where it was written.
    pub span: Span,
}

/// The shapes of elaborated values.
#[derive(Clone, Debug, PartialEq)]
pub enum ValKind {
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// A number with its unit as written.
    Num {
        /// The value.
        value: f64,
        /// Set for integers written without fraction or exponent.
        int: Option<i64>,
        /// The unit and its span.
        unit: Option<Ident>,
        /// The digits as written, for messages and run names.
        text: String,
    },
    /// A list.
    List(Vec<Val>),
    /// A bare name that is no binding: an option such as `full` or `mean`.
    Sym(String),
    /// A call to a built-in function.
    Call {
        /// Function name.
        name: Ident,
        /// Arguments; positional ones have no name.
        args: Vec<(Option<Ident>, Val)>,
    },
    /// A record of fields.
    Record(Record),
    /// A model, dataset or pipeline declaration, with overrides merged in.
    Decl {
        /// What it declares.
        kind: DeclKind,
        /// Its name.
        name: String,
        /// Its fields.
        record: Record,
    },
}

/// An ordered set of fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// Fields in the order first written.
    pub fields: Vec<Field>,
}

/// One field of a record.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// Its name.
    pub key: String,
    /// Where the name was written.
    pub key_span: Span,
    /// Its value.
    pub value: Val,
}

impl Record {
    /// The field called `key`.
    pub fn get(&self, key: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.key == key)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Field> {
        self.fields.iter_mut().find(|f| f.key == key)
    }

    /// Removes and returns the field called `key`.
    pub fn take(&mut self, key: &str) -> Option<Field> {
        let i = self.fields.iter().position(|f| f.key == key)?;
        Some(self.fields.remove(i))
    }

    /// Adds a field written at `path` in one block. Dotted keys make nested
    /// records; writing the same path twice, or a path under a non-record
    /// value, is an error.
    pub fn insert_path(&mut self, path: &[Ident], value: Val, errors: &mut Vec<Diagnostic>) {
        let (first, rest) = path.split_first().expect("keys have at least one segment");
        if rest.is_empty() {
            if let Some(existing) = self.get_mut(&first.name) {
                if let (ValKind::Record(old), ValKind::Record(new)) =
                    (&mut existing.value.kind, &value.kind)
                    && !new.fields.is_empty()
                    && no_overlap(old, new)
                {
                    old.fields.extend(new.fields.iter().cloned());
                    return;
                }
                errors.push(duplicate(first, existing.key_span));
                return;
            }
            self.fields.push(Field {
                key: first.name.clone(),
                key_span: first.span,
                value,
            });
            return;
        }
        match self.get_mut(&first.name) {
            Some(existing) => match &mut existing.value.kind {
                ValKind::Record(inner) => inner.insert_path(rest, value, errors),
                _ => errors.push(duplicate(first, existing.key_span)),
            },
            None => {
                let mut inner = Record::default();
                let span = first.span.to(value.span);
                inner.insert_path(rest, value, errors);
                self.fields.push(Field {
                    key: first.name.clone(),
                    key_span: first.span,
                    value: Val {
                        kind: ValKind::Record(inner),
                        span,
                    },
                });
            }
        }
    }

    /// Sets the field at a dotted path, replacing what is there and creating
    /// records on the way (used by sweeps).
    pub fn set_path(&mut self, path: &[(String, Span)], value: Val) {
        let ((first, span), rest) = path.split_first().expect("paths have at least one segment");
        if rest.is_empty() {
            match self.get_mut(first) {
                Some(f) => {
                    f.value = value;
                    f.key_span = *span;
                }
                None => self.fields.push(Field {
                    key: first.clone(),
                    key_span: *span,
                    value,
                }),
            }
            return;
        }
        if !matches!(
            self.get(first).map(|f| &f.value.kind),
            Some(ValKind::Record(_) | ValKind::Decl { .. })
        ) {
            self.take(first);
            self.fields.push(Field {
                key: first.clone(),
                key_span: *span,
                value: Val {
                    kind: ValKind::Record(Record::default()),
                    span: *span,
                },
            });
        }
        let field = self.get_mut(first).expect("just ensured");
        match &mut field.value.kind {
            ValKind::Record(r) | ValKind::Decl { record: r, .. } => r.set_path(rest, value),
            _ => unreachable!("just ensured a record"),
        }
    }
}

fn no_overlap(a: &Record, b: &Record) -> bool {
    b.fields.iter().all(|f| a.get(&f.key).is_none())
}

fn duplicate(key: &Ident, first: Span) -> Diagnostic {
    Diagnostic::error(Code::DuplicateField, key.span, format!("`{}` is set twice", key.name))
        .label("set again here")
        .with_label(first, "first set here")
        .hint("keep one of them; to change a field of a parent or a `let`, use `extends` or an override block")
}

/// Merges `over` into `base`: fields of `over` replace those of `base`,
/// except that two records merge field by field.
pub fn merge(base: &Record, over: &Record) -> Record {
    let mut out = base.clone();
    for f in &over.fields {
        match out.get_mut(&f.key) {
            Some(existing) => match (&mut existing.value.kind, &f.value.kind) {
                (ValKind::Record(a), ValKind::Record(b)) => {
                    *a = merge(a, b);
                    existing.key_span = f.key_span;
                }
                (ValKind::Decl { record: a, .. }, ValKind::Record(b)) => {
                    *a = merge(a, b);
                    existing.key_span = f.key_span;
                }
                _ => *existing = f.clone(),
            },
            None => out.fields.push(f.clone()),
        }
    }
    out
}

impl Val {
    /// What kind of value this is, for messages: "a number", "a list", ...
    pub fn describe(&self) -> String {
        match &self.kind {
            ValKind::Str(_) => "a string".into(),
            ValKind::Bool(_) => "a boolean".into(),
            ValKind::Num {
                unit: None,
                int: Some(_),
                ..
            } => "an integer".into(),
            ValKind::Num { unit: None, .. } => "a number".into(),
            ValKind::Num { unit: Some(u), .. } => match unit_kind(&u.name) {
                Some(UnitKind::Percent) => "a percentage".into(),
                Some(UnitKind::Bytes(_)) => "a byte size".into(),
                Some(UnitKind::Seconds(_)) => "a duration".into(),
                None => format!("a number with unit `{}`", u.name),
            },
            ValKind::List(_) => "a list".into(),
            ValKind::Sym(s) => format!("`{s}`"),
            ValKind::Call { name, .. } => format!("`{}(...)`", name.name),
            ValKind::Record(_) => "a block".into(),
            ValKind::Decl { kind, name, .. } => format!("{} `{name}`", kind.keyword()),
        }
    }
}

/// What a unit measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnitKind {
    /// `%`
    Percent,
    /// A byte size: bytes per unit.
    Bytes(f64),
    /// A duration: seconds per unit.
    Seconds(f64),
}

/// Every unit ftl accepts, with what it measures.
pub const UNITS: &[(&str, UnitKind)] = &[
    ("%", UnitKind::Percent),
    ("B", UnitKind::Bytes(1.0)),
    ("KB", UnitKind::Bytes(1e3)),
    ("MB", UnitKind::Bytes(1e6)),
    ("GB", UnitKind::Bytes(1e9)),
    ("TB", UnitKind::Bytes(1e12)),
    ("KiB", UnitKind::Bytes(1024.0)),
    ("MiB", UnitKind::Bytes(1024.0 * 1024.0)),
    ("GiB", UnitKind::Bytes(1024.0 * 1024.0 * 1024.0)),
    ("TiB", UnitKind::Bytes(1024.0 * 1024.0 * 1024.0 * 1024.0)),
    ("ms", UnitKind::Seconds(0.001)),
    ("s", UnitKind::Seconds(1.0)),
    ("min", UnitKind::Seconds(60.0)),
    ("h", UnitKind::Seconds(3600.0)),
    ("d", UnitKind::Seconds(86400.0)),
];

/// What `unit` measures, if ftl knows it.
pub fn unit_kind(unit: &str) -> Option<UnitKind> {
    UNITS.iter().find(|(u, _)| *u == unit).map(|(_, k)| *k)
}
