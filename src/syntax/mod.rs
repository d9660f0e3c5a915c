//! Parsing: source text to [`ast::File`].
//!
//! pest does the recognising (grammar/ftl.pest); this module converts pest's
//! pairs into the AST with one function per grammar rule, and turns pest's
//! errors into diagnostics with friendly names for what was expected.

pub mod ast;
pub mod comments;

use crate::diagnostic::{Code, Diagnostic, Result};
use crate::span::{SourceId, Span};
use ast::*;
use pest::Parser;
use pest::iterators::Pair;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/ftl.pest"]
struct FtlParser;

/// Parses one file. All syntax errors are returned (pest stops at the first
/// one; escape and number errors are collected across the whole file).
pub fn parse(source: SourceId, text: &str) -> Result<File> {
    let mut pairs = match parse_with_detail(text, false) {
        Ok(pairs) => pairs,
        Err(quick) => {
            let err = parse_with_detail(text, true).err().unwrap_or(quick);
            return Err(vec![syntax_error(source, text, &err)]);
        }
    };
    let mut cx = Converter {
        source,
        errors: Vec::new(),
    };
    let file = pairs.next().map(|p| cx.file(p)).unwrap_or(File {
        source,
        items: Vec::new(),
    });
    if cx.errors.is_empty() {
        Ok(file)
    } else {
        Err(cx.errors)
    }
}

/// pest's error detail (what was expected where) is a process-wide switch
/// and makes parsing several times slower, so it is on only to explain a
/// failed parse; the lock keeps parallel parses from flipping it mid-parse.
static DETAIL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn parse_with_detail(
    text: &str,
    detail: bool,
) -> std::result::Result<pest::iterators::Pairs<'_, Rule>, pest::error::Error<Rule>> {
    let _guard = DETAIL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    pest::set_error_detail(detail);
    FtlParser::parse(Rule::file, text)
}

struct Converter {
    source: SourceId,
    errors: Vec<Diagnostic>,
}

impl Converter {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.source, s.start(), s.end())
    }

    fn file(&mut self, pair: Pair<Rule>) -> File {
        let mut items = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::import => items.push(Item::Import(self.import(p))),
                Rule::let_binding => items.push(Item::Let(self.let_binding(p))),
                Rule::declaration => items.push(Item::Decl(self.declaration(p))),
                Rule::EOI => {}
                r => unreachable!("file holds items only, got {r:?}"),
            }
        }
        File {
            source: self.source,
            items,
        }
    }

    fn import(&mut self, pair: Pair<Rule>) -> Import {
        let span = self.span(&pair);
        let mut inner = pair
            .into_inner()
            .filter(|p| p.as_rule() != Rule::kw_import && p.as_rule() != Rule::kw_as);
        let string = inner.next().expect("import has a string");
        let path_span = self.span(&string);
        let path = self.string(string);
        let alias = inner.next().map(|p| self.ident(p));
        Import {
            path,
            path_span,
            alias,
            span,
        }
    }

    fn let_binding(&mut self, pair: Pair<Rule>) -> Let {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let name = self.ident(inner.next().expect("let has a name"));
        let value = self.value(inner.next().expect("let has a value"));
        Let { name, value, span }
    }

    fn declaration(&mut self, pair: Pair<Rule>) -> Decl {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let kind_pair = inner.next().expect("declaration has a kind");
        let kind = match kind_pair.into_inner().next().map(|p| p.as_rule()) {
            Some(Rule::kw_pipeline) => DeclKind::Pipeline,
            Some(Rule::kw_model) => DeclKind::Model,
            Some(Rule::kw_dataset) => DeclKind::Dataset,
            r => unreachable!("declaration kinds are keywords, got {r:?}"),
        };
        let name = self.ident(inner.next().expect("declaration has a name"));
        let mut extends = None;
        let mut body = None;
        for p in inner {
            match p.as_rule() {
                Rule::kw_extends => {}
                Rule::path => extends = Some(self.path(p)),
                Rule::block => body = Some(self.block(p)),
                r => unreachable!("unexpected {r:?} in declaration"),
            }
        }
        Decl {
            kind,
            name,
            extends,
            body: body.expect("declaration has a body"),
            span,
        }
    }

    fn block(&mut self, pair: Pair<Rule>) -> Block {
        let span = self.span(&pair);
        let entries = pair.into_inner().map(|p| self.entry(p)).collect();
        Block { entries, span }
    }

    fn entry(&mut self, pair: Pair<Rule>) -> Entry {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let key_pair = inner.next().expect("entry has a key");
        let key = key_pair.into_inner().map(|p| self.ident(p)).collect();
        let value_pair = inner.next().expect("entry has a value");
        let value = match value_pair.as_rule() {
            Rule::block => {
                let block = self.block(value_pair);
                Value {
                    span: block.span,
                    kind: ValueKind::Block(block),
                }
            }
            _ => self.value(value_pair),
        };
        Entry { key, value, span }
    }

    fn value(&mut self, pair: Pair<Rule>) -> Value {
        let inner = pair.into_inner().next().expect("value has one alternative");
        let span = self.span(&inner);
        let kind = match inner.as_rule() {
            Rule::list => ValueKind::List(inner.into_inner().map(|p| self.value(p)).collect()),
            Rule::boolean => ValueKind::Bool(inner.as_str() == "true"),
            Rule::call => self.call(inner),
            Rule::path_value => {
                let mut parts = inner.into_inner();
                let path = self.path(parts.next().expect("path_value has a path"));
                let overrides = parts.next().map(|b| self.block(b));
                ValueKind::Ref { path, overrides }
            }
            Rule::block => ValueKind::Block(self.block(inner)),
            Rule::string => ValueKind::Str(self.string(inner)),
            Rule::quantity => self.quantity(inner),
            r => unreachable!("unexpected {r:?} in value"),
        };
        Value { kind, span }
    }

    fn call(&mut self, pair: Pair<Rule>) -> ValueKind {
        let mut inner = pair.into_inner();
        let callee = self.path(inner.next().expect("call has a callee"));
        let args = inner
            .map(|arg| {
                let span = self.span(&arg);
                let mut parts = arg.into_inner().peekable();
                let name = match parts.peek().map(|p| p.as_rule()) {
                    Some(Rule::name) => parts.next().map(|p| self.ident(p)),
                    _ => None,
                };
                let value = self.value(parts.next().expect("argument has a value"));
                Arg { name, value, span }
            })
            .collect();
        ValueKind::Call { callee, args }
    }

    fn quantity(&mut self, pair: Pair<Rule>) -> ValueKind {
        let mut inner = pair.into_inner();
        let num = inner.next().expect("quantity has a number");
        let span = self.span(&num);
        let text = num.as_str().to_string();
        let clean = text.replace('_', "");
        let is_int = !clean.contains(['.', 'e', 'E']);
        let value = clean.parse::<f64>().unwrap_or(f64::NAN);
        let int = if is_int {
            match clean.parse::<i64>() {
                Ok(i) => Some(i),
                Err(_) => {
                    self.errors.push(
                        Diagnostic::error(
                            Code::InvalidNumber,
                            span,
                            format!("`{text}` is too large"),
                        )
                        .label("does not fit in a 64-bit integer")
                        .hint("integers range from -9223372036854775808 to 9223372036854775807"),
                    );
                    None
                }
            }
        } else {
            if !value.is_finite() {
                self.errors.push(
                    Diagnostic::error(
                        Code::InvalidNumber,
                        span,
                        format!("`{text}` is not a finite number"),
                    )
                    .label("out of range for a 64-bit float"),
                );
            }
            None
        };
        let unit = inner.next().map(|u| self.ident(u));
        ValueKind::Number {
            number: Number { text, value, int },
            unit,
        }
    }

    fn path(&mut self, pair: Pair<Rule>) -> Path {
        let span = self.span(&pair);
        Path {
            segments: pair.into_inner().map(|p| self.ident(p)).collect(),
            span,
        }
    }

    fn ident(&mut self, pair: Pair<Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    /// Resolves the escapes of a `string` pair, reporting unknown ones.
    fn string(&mut self, pair: Pair<Rule>) -> String {
        let inner = pair.into_inner().next().expect("string has contents");
        let base = inner.as_span().start();
        let raw = inner.as_str();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some((_, e)) = chars.next() else { break };
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'u' => match unicode_escape(&raw[i + 2..]) {
                    Some((ch, len)) => {
                        out.push(ch);
                        for _ in 0..len {
                            chars.next();
                        }
                    }
                    None => self.bad_escape(base + i, 2),
                },
                other => self.bad_escape(base + i, 1 + other.len_utf8()),
            }
        }
        out
    }

    fn bad_escape(&mut self, at: usize, len: usize) {
        let span = Span::new(self.source, at, at + len);
        self.errors.push(
            Diagnostic::error(
                Code::InvalidEscape,
                span,
                "unknown escape sequence in a string",
            )
            .label("not a valid escape")
            .hint(r#"the escapes are \" \\ \n \t \r and \u{HEX}; write \\ for a backslash"#),
        );
    }
}

/// Parses `{HEX}` after `\u`; returns the char and how many chars it used.
fn unicode_escape(rest: &str) -> Option<(char, usize)> {
    let body = rest.strip_prefix('{')?;
    let close = body.find('}')?;
    let hex = &body[..close];
    if hex.is_empty() || hex.len() > 6 {
        return None;
    }
    let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
    Some((ch, close + 2))
}

/// Friendly names for the rules pest may say it expected.
fn rule_name(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::import | Rule::kw_import => "`import`",
        Rule::let_binding | Rule::kw_let => "`let`",
        Rule::declaration | Rule::decl_kind => "a declaration (`pipeline`, `model` or `dataset`)",
        Rule::kw_pipeline => "`pipeline`",
        Rule::kw_model => "`model`",
        Rule::kw_dataset => "`dataset`",
        Rule::kw_extends => "`extends`",
        Rule::kw_as => "`as`",
        Rule::block => "a block `{ ... }`",
        Rule::entry | Rule::key => "a field name",
        Rule::value | Rule::list | Rule::call | Rule::path_value | Rule::quantity => "a value",
        Rule::argument => "an argument",
        Rule::path => "a name",
        Rule::string | Rule::string_inner => "a string",
        Rule::number => "a number",
        Rule::unit => "a unit",
        Rule::boolean => "`true` or `false`",
        Rule::ident | Rule::name => "a name",
        Rule::EOI => "end of file",
        _ => return None,
    })
}

fn syntax_error(source: SourceId, text: &str, err: &pest::error::Error<Rule>) -> Diagnostic {
    let at = match err.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !expected.contains(&s) {
            expected.push(s);
        }
    };
    if let Some(attempts) = err.parse_attempts() {
        for token in attempts.expected_tokens() {
            let token = token.to_string();
            if ["=", "{", "}", "[", "]", "(", ")", ",", "."].contains(&token.as_str()) {
                push(format!("`{token}`"));
            }
        }
        for stack in &attempts.call_stacks {
            if let Some(name) = stack.deepest.get_rule().and_then(|r| rule_name(*r)) {
                push(name.to_string());
            }
        }
    }
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &err.variant {
        for r in positives {
            if let Some(name) = rule_name(*r) {
                push(name.to_string());
            }
        }
    }
    expected.retain(|e| e != "`#`");
    expected.sort();
    let found = found_at(text, at);
    let end = (at + found.len()).min(text.len()).max(at);
    let span = Span::new(source, at, end);
    let message = if found.is_empty() {
        "unexpected end of file".to_string()
    } else {
        format!("unexpected `{found}`")
    };
    let label = if expected.is_empty() {
        "not valid here".to_string()
    } else {
        format!("expected {}", join_or(&expected))
    };
    let mut diag = Diagnostic::error(Code::Syntax, span, message).label(label);
    if let Some(hint) = syntax_hint(text, at, &expected) {
        diag = diag.hint(hint);
    }
    diag
}

/// The token-ish text at `at`, for the message.
fn found_at(text: &str, at: usize) -> &str {
    let rest = &text[at.min(text.len())..];
    let first = match rest.chars().next() {
        None => return "",
        Some(c) => c,
    };
    let len = if first.is_alphanumeric() || first == '_' {
        rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len())
    } else {
        first.len_utf8()
    };
    &rest[..len]
}

fn syntax_hint(text: &str, at: usize, expected: &[String]) -> Option<String> {
    let rest = &text[at.min(text.len())..];
    if rest.starts_with(':') {
        return Some("fields are set with `=`, as in `lr = 2e-4`".into());
    }
    if rest.starts_with("//") {
        return Some("comments start with `#`".into());
    }
    if rest.starts_with('\'') {
        return Some("strings use double quotes: \"text\"".into());
    }
    if rest.is_empty() && expected.iter().any(|e| e == "`}`") {
        return Some("a block is not closed: add `}`".into());
    }
    let line_start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    if let Some(q) = line.find('"')
        && !line[q + 1..].lines().next().unwrap_or("").contains('"')
    {
        return Some("a string is not closed on its line: add `\"`".into());
    }
    None
}

fn join_or(items: &[String]) -> String {
    let refs: Vec<&str> = items.iter().map(|s| s.as_str()).collect();
    match refs.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}
