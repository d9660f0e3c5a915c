//! Diagnostics as plain data.
//!
//! A [`Diagnostic`] has a stable [`Code`], a message, a primary label with a
//! span, secondary labels, notes and hints. Nothing here knows how it will be
//! shown: `render.rs` is the one module that turns diagnostics into text.

use crate::span::Span;
use std::fmt;

/// Every stage returns either its output or all the diagnostics it collected.
pub type Result<T> = std::result::Result<T, Vec<Diagnostic>>;

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The file cannot be run.
    Error,
    /// The file runs, but probably not as meant.
    Warning,
}

macro_rules! codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $code:literal,)*) => {
        /// Stable diagnostic codes, documented in `docs/errors.md`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Code {
            /// Every code, in order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as written in messages, e.g. `E0201`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }
        }
    };
}

codes! {
    /// `pipeline p { model = }`: the text does not follow the grammar.
    Syntax = "E0001",
    /// `"a\q"`: an unknown escape sequence in a string.
    InvalidEscape = "E0002",
    /// `rank = 99999999999999999999`: a number that does not fit.
    InvalidNumber = "E0003",
    /// `import "std/modles"`: the imported module or file does not exist.
    ImportNotFound = "E0101",
    /// `a.ft` imports `b.ft`, which imports `a.ft`.
    ImportCycle = "E0102",
    /// `train = "/etc/passwd"` or `"../../x"`: a path that leaves the project.
    PathEscapesProject = "E0103",
    /// Two items in one file with the same name.
    DuplicateDefinition = "E0104",
    /// `base = minilm` where no `minilm` is defined or imported.
    UnknownName = "E0105",
    /// `models.minilm_l7`: the module has no such member.
    UnknownMember = "E0106",
    /// `pipeline b extends a` where `a` is a model, or a value of the wrong kind.
    WrongKind = "E0107",
    /// `pipeline a extends b`, `pipeline b extends a`.
    ExtendsCycle = "E0108",
    /// A `let` refers to itself, directly or through other `let`s.
    LetCycle = "E0109",
    /// `trian { ... }`: no section or field of that name here.
    UnknownField = "E0201",
    /// A required field is missing, e.g. a pipeline without `model.base`.
    MissingField = "E0202",
    /// The same field written twice in one block.
    DuplicateField = "E0203",
    /// `lora(rnk = 8)`: the function takes no argument of that name.
    UnknownArgument = "E0204",
    /// `lora(8)`: arguments are named.
    PositionalArgument = "E0205",
    /// `lroa(rank = 8)` or `schedule = linaer`: no function or option of that name.
    UnknownOption = "E0206",
    /// `lr = 8GiB`: a value of the wrong type or unit kind.
    TypeMismatch = "E0301",
    /// `budget.gpu_memory = 8gb`: a unit ftl does not know.
    UnknownUnit = "E0302",
    /// `rank = 0`, `dropout = 1.5`: a value outside its allowed range.
    OutOfRange = "E0303",
    /// `method = full` with `quantize.format = nf4`: a quantized base needs an adapter method.
    QuantizedFullFineTune = "E0401",
    /// `method = lora(...)` over a quantized base, or `qlora` with `quantize.format = none`.
    QuantizationMismatch = "E0402",
    /// `targets = ["dense_x"]`: the model has no such module.
    UnknownTargetModule = "E0403",
    /// `model.labels` and `dataset.labels` disagree.
    LabelMismatch = "E0404",
    /// Both `train.epochs` and `train.steps`, or a split given twice.
    ConflictingFields = "E0405",
    /// `evaluate.on = [test]` but the dataset has no `test` split.
    MissingSplit = "E0406",
    /// `max_tokens` longer than the model's position table.
    TooManyTokens = "E0407",
    /// The memory estimate for a run exceeds `budget.gpu_memory`.
    OverBudget = "E0408",
    /// `sweep { method = full }`: a sweep axis that is not a non-empty list, or a bad axis path.
    InvalidSweep = "E0501",
    /// Two sweep points or pipelines that would write the same run directory.
    DuplicateRunName = "E0502",
    /// A file with no pipeline to run.
    NoPipeline = "E0503",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A span with a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What is there (may be empty).
    pub message: String,
}

/// One problem found in the sources.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable code.
    pub code: Code,
    /// One line saying what is wrong.
    pub message: String,
    /// The place the problem is; its message says what is wrong there.
    pub primary: Label,
    /// Related places.
    pub labels: Vec<Label>,
    /// Context, e.g. which sweep point a problem belongs to.
    pub notes: Vec<String>,
    /// How to fix it.
    pub hints: Vec<String>,
}

impl Diagnostic {
    /// An error with a code and message at a span; the label repeats nothing.
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary: Label {
                span,
                message: String::new(),
            },
            labels: Vec::new(),
            notes: Vec::new(),
            hints: Vec::new(),
        }
    }

    /// Sets the primary label's message.
    pub fn label(mut self, message: impl Into<String>) -> Diagnostic {
        self.primary.message = message.into();
        self
    }

    /// Adds a secondary label.
    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hints.push(hint.into());
        self
    }

    /// Adds a hint when there is one.
    pub fn maybe_hint(self, hint: Option<String>) -> Diagnostic {
        match hint {
            Some(h) => self.hint(h),
            None => self,
        }
    }
}

/// The closest candidate to `word` by edit distance, if close enough to be a
/// plausible typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| {
            *d <= (word.len().max(c.len()) / 3).max(1) || c.starts_with(word) && word.len() >= 3
        })
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// `did you mean \`x\`?` for the closest candidate, else the list of candidates.
pub fn suggest(word: &str, candidates: &[&str]) -> Option<String> {
    if let Some(best) = closest(word, candidates.iter().copied()) {
        return Some(format!("did you mean `{best}`?"));
    }
    if candidates.is_empty() {
        return None;
    }
    Some(format!("expected one of {}", one_of(candidates)))
}

/// `` `a`, `b` or `c` ``
pub fn one_of(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => format!("`{one}`"),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|i| format!("`{i}`")).collect();
            format!("{} or `{last}`", init.join(", "))
        }
    }
}
