//! The syntax tree of one `.ft` file, exactly as written.
//!
//! Every node carries the [`Span`] it was parsed from. Names are not resolved
//! and values are not typed here: that is the checker's work.

use crate::span::{SourceId, Span};

/// One parsed file.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    /// Which source it came from.
    pub source: SourceId,
    /// Imports, lets and declarations in source order.
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `import "std/models" as m`
    Import(Import),
    /// `let seed = 17`
    Let(Let),
    /// `pipeline name { ... }`, `model name { ... }`, `dataset name { ... }`
    Decl(Decl),
}

impl Item {
    /// The whole item's span.
    pub fn span(&self) -> Span {
        match self {
            Item::Import(i) => i.span,
            Item::Let(l) => l.span,
            Item::Decl(d) => d.span,
        }
    }
}

/// A name with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it was written.
    pub span: Span,
}

/// `import "PATH" (as NAME)?`
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    /// `std/NAME` or a path relative to the importing file.
    pub path: String,
    /// Span of the string literal.
    pub path_span: Span,
    /// `as NAME`, if written.
    pub alias: Option<Ident>,
    /// The whole item.
    pub span: Span,
}

/// `let NAME = VALUE`
#[derive(Clone, Debug, PartialEq)]
pub struct Let {
    /// The bound name.
    pub name: Ident,
    /// The bound value.
    pub value: Value,
    /// The whole item.
    pub span: Span,
}

/// What a declaration declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeclKind {
    /// A runnable experiment.
    Pipeline,
    /// A pretrained model description.
    Model,
    /// A dataset description.
    Dataset,
}

impl DeclKind {
    /// The keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            DeclKind::Pipeline => "pipeline",
            DeclKind::Model => "model",
            DeclKind::Dataset => "dataset",
        }
    }
}

/// `KIND NAME (extends PATH)? { ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct Decl {
    /// Pipeline, model or dataset.
    pub kind: DeclKind,
    /// The declared name.
    pub name: Ident,
    /// The declaration this one extends.
    pub extends: Option<Path>,
    /// The fields.
    pub body: Block,
    /// The whole item.
    pub span: Span,
}

/// `{ key = value ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Entries in source order.
    pub entries: Vec<Entry>,
    /// From `{` to `}`.
    pub span: Span,
}

/// `a.b = value` or `a.b { ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The key, one ident per dotted segment.
    pub key: Vec<Ident>,
    /// The value; `a { ... }` is stored as a block value.
    pub value: Value,
    /// The whole entry.
    pub span: Span,
}

impl Entry {
    /// The dotted key as written.
    pub fn key_text(&self) -> String {
        dotted(&self.key)
    }

    /// The span of the whole key.
    pub fn key_span(&self) -> Span {
        let first = self.key[0].span;
        first.to(self.key[self.key.len() - 1].span)
    }
}

/// A dotted name: `models.minilm_l6`.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    /// One ident per segment.
    pub segments: Vec<Ident>,
    /// The whole path.
    pub span: Span,
}

impl Path {
    /// The path as written.
    pub fn text(&self) -> String {
        dotted(&self.segments)
    }
}

fn dotted(idents: &[Ident]) -> String {
    idents
        .iter()
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// A named (or, in error, positional) call argument.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// `name =`, absent for a positional argument.
    pub name: Option<Ident>,
    /// The value.
    pub value: Value,
    /// The whole argument.
    pub span: Span,
}

/// A number as written and as parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Number {
    /// The digits as written (without the unit), kept for formatting.
    pub text: String,
    /// The value.
    pub value: f64,
    /// Set when written without a fraction or exponent and it fits an `i64`.
    pub int: Option<i64>,
}

/// A value with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// What kind of value.
    pub kind: ValueKind,
    /// Where.
    pub span: Span,
}

/// The shapes a value can take.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    /// `"text"` (escapes resolved).
    Str(String),
    /// `true` / `false`
    Bool(bool),
    /// `8`, `2e-4`, `6%`, `8GiB`, `90s`
    Number {
        /// The number.
        number: Number,
        /// The unit written right after it, with its span.
        unit: Option<Ident>,
    },
    /// `[a, b]`
    List(Vec<Value>),
    /// `f(name = value, ...)`
    Call {
        /// The function.
        callee: Path,
        /// Its arguments.
        args: Vec<Arg>,
    },
    /// `name`, `module.name`, optionally overridden: `name { ... }`.
    Ref {
        /// The referenced name.
        path: Path,
        /// Field overrides.
        overrides: Option<Block>,
    },
    /// `{ ... }`
    Block(Block),
}
