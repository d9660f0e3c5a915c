//! Elaboration: syntax values to [`Val`]s.
//!
//! Resolves names (`let`s, declarations, imported members, field access),
//! applies override blocks and `extends`, and reports unknown names, wrong
//! kinds and cycles. Bare names that are not bindings stay symbols (`full`,
//! `mean`); the section readers decide whether a symbol is valid where used.

use super::modules::Modules;
use super::value::{Field, Record, Val, ValKind, merge};
use crate::diagnostic::{Code, Diagnostic, closest, suggest};
use crate::span::Span;
use crate::syntax::ast::{self, DeclKind, Item};
use std::collections::BTreeMap;

/// Resolves and evaluates values of the loaded modules.
pub struct Elab<'a> {
    /// The modules.
    pub modules: &'a Modules,
    /// Problems found so far.
    pub errors: Vec<Diagnostic>,
    /// Spans of values whose resolution failed (see `read::Cx::poisoned`).
    pub poisoned: Vec<Span>,
    lets: BTreeMap<(usize, String), Option<Val>>,
    decls: BTreeMap<(usize, String), Option<Val>>,
    failed: std::collections::BTreeSet<(usize, String)>,
}

impl<'a> Elab<'a> {
    /// An elaborator over loaded modules.
    pub fn new(modules: &'a Modules) -> Elab<'a> {
        Elab {
            modules,
            errors: Vec::new(),
            poisoned: Vec::new(),
            lets: BTreeMap::new(),
            decls: BTreeMap::new(),
            failed: Default::default(),
        }
    }

    /// The value of the declaration `name` of module `m`, with `extends` applied.
    pub fn declaration(&mut self, m: usize, name: &str) -> Option<Val> {
        let key = (m, name.to_string());
        if let Some(done) = self.decls.get(&key) {
            if done.is_none() && !self.failed.contains(&key) {
                let decl = self.decl_ast(m, name)?;
                let span = decl.extends.as_ref().map_or(decl.name.span, |p| p.span);
                self.errors.push(
                    Diagnostic::error(Code::ExtendsCycle, span, format!("`{name}` extends itself"))
                        .label("this `extends` leads back to the same declaration")
                        .hint("a declaration cannot extend itself, directly or through others"),
                );
            }
            return done.clone();
        }
        self.decls.insert(key.clone(), None);
        let decl = self.decl_ast(m, name)?.clone();
        let body = self.block(m, &decl.body);
        let record = match &decl.extends {
            None => body,
            Some(path) => match self.path(m, path) {
                Some(Val {
                    kind: ValKind::Decl { kind, record, .. },
                    ..
                }) if kind == decl.kind => merge(&record, &body),
                Some(other) => {
                    if !matches!(other.kind, ValKind::Sym(_)) || !self.failed(&other) {
                        self.errors.push(
                            Diagnostic::error(
                                Code::WrongKind,
                                path.span,
                                format!(
                                    "a {} can only extend a {}",
                                    decl.kind.keyword(),
                                    decl.kind.keyword()
                                ),
                            )
                            .label(format!("this is {}", other.describe())),
                        );
                    }
                    self.failed.insert(key);
                    return None;
                }
                None => {
                    self.failed.insert(key);
                    return None;
                }
            },
        };
        let val = Val {
            kind: ValKind::Decl {
                kind: decl.kind,
                name: name.to_string(),
                record,
            },
            span: decl.name.span,
        };
        self.decls.insert(key, Some(val.clone()));
        Some(val)
    }

    /// Whether a symbol is the name of a declaration that failed (a cycle).
    fn failed(&self, val: &Val) -> bool {
        let ValKind::Sym(name) = &val.kind else {
            return false;
        };
        self.decls
            .iter()
            .any(|((_, n), v)| n == name && v.is_none())
            || self.failed.iter().any(|(_, n)| n == name)
    }

    fn decl_ast(&self, m: usize, name: &str) -> Option<&'a ast::Decl> {
        let module = &self.modules.list[m];
        match module.file.items.get(*module.names.get(name)?) {
            Some(Item::Decl(d)) => Some(d),
            _ => None,
        }
    }

    /// Elaborates a block into a record; dotted keys nest.
    pub fn block(&mut self, m: usize, block: &ast::Block) -> Record {
        let mut record = Record::default();
        for entry in &block.entries {
            let value = self.value(m, &entry.value);
            record.insert_path(&entry.key, value, &mut self.errors);
        }
        record
    }

    /// Elaborates one value.
    pub fn value(&mut self, m: usize, value: &ast::Value) -> Val {
        let span = value.span;
        let kind = match &value.kind {
            ast::ValueKind::Str(s) => ValKind::Str(s.clone()),
            ast::ValueKind::Bool(b) => ValKind::Bool(*b),
            ast::ValueKind::Number { number, unit } => ValKind::Num {
                value: number.value,
                int: number.int,
                unit: unit.clone(),
                text: number.text.clone(),
            },
            ast::ValueKind::List(items) => {
                ValKind::List(items.iter().map(|v| self.value(m, v)).collect())
            }
            ast::ValueKind::Block(b) => ValKind::Record(self.block(m, b)),
            ast::ValueKind::Call { callee, args } => {
                if callee.segments.len() > 1 {
                    self.errors.push(
                        Diagnostic::error(Code::UnknownOption, callee.span, format!("`{}` is not a function", callee.text()))
                            .label("functions are built in and have plain names")
                            .hint("the functions are full, lora, qlora, constant, linear, cosine, adamw, data, holdout, pypi and pypi_zip_parts"),
                    );
                }
                let args = args
                    .iter()
                    .map(|a| (a.name.clone(), self.value(m, &a.value)))
                    .collect();
                ValKind::Call {
                    name: callee.segments[callee.segments.len() - 1].clone(),
                    args,
                }
            }
            ast::ValueKind::Ref { path, overrides } => {
                let base = self.path(m, path).unwrap_or_else(|| {
                    self.poisoned.push(span);
                    Val {
                        kind: ValKind::Record(Record::default()),
                        span,
                    }
                });
                return match overrides {
                    None => base,
                    Some(block) => self.override_with(m, base, block, span),
                };
            }
        };
        Val { kind, span }
    }

    fn override_with(&mut self, m: usize, base: Val, block: &ast::Block, span: Span) -> Val {
        let over = self.block(m, block);
        match base.kind {
            ValKind::Record(r) => Val {
                kind: ValKind::Record(merge(&r, &over)),
                span,
            },
            ValKind::Decl { kind, name, record } => Val {
                kind: ValKind::Decl {
                    kind,
                    name,
                    record: merge(&record, &over),
                },
                span,
            },
            _ => {
                self.errors.push(
                    Diagnostic::error(
                        Code::WrongKind,
                        block.span,
                        "only blocks and declarations take an override block",
                    )
                    .label("this block overrides fields")
                    .with_label(base.span, format!("but this is {}", base.describe())),
                );
                base
            }
        }
    }

    /// Resolves a dotted path in module `m`.
    fn path(&mut self, m: usize, path: &ast::Path) -> Option<Val> {
        let module = &self.modules.list[m];
        let first = &path.segments[0];
        let (mut val, rest) = if let Some(&(target, _)) = module.imports.get(&first.name) {
            let Some(member) = path.segments.get(1) else {
                self.errors.push(
                    Diagnostic::error(
                        Code::WrongKind,
                        path.span,
                        format!("`{}` is a module, not a value", first.name),
                    )
                    .label("name one of its members")
                    .maybe_hint(
                        self.member_list(target)
                            .map(|l| format!("`{}` has: {l}", first.name)),
                    ),
                );
                return None;
            };
            match self.item(target, &member.name, member.span) {
                Some(v) => (v, &path.segments[2..]),
                None => {
                    let names: Vec<&str> = self.modules.list[target]
                        .names
                        .keys()
                        .map(|s| s.as_str())
                        .collect();
                    self.errors.push(
                        Diagnostic::error(
                            Code::UnknownMember,
                            member.span,
                            format!("`{}` has no member `{}`", first.name, member.name),
                        )
                        .label("not defined there")
                        .maybe_hint(suggest(&member.name, &names)),
                    );
                    return None;
                }
            }
        } else if let Some(v) = self.item(m, &first.name, first.span) {
            (v, &path.segments[1..])
        } else if path.segments.len() == 1 {
            return Some(Val {
                kind: ValKind::Sym(first.name.clone()),
                span: path.span,
            });
        } else {
            self.errors.push(self.unknown_name(m, first));
            return None;
        };
        if let ValKind::Decl { .. } = val.kind {
            // A declaration used by name: errors about it point at the use.
            val.span = path.span;
        }
        for seg in rest {
            let record = match &val.kind {
                ValKind::Record(r) | ValKind::Decl { record: r, .. } => r,
                _ => {
                    self.errors.push(
                        Diagnostic::error(
                            Code::UnknownMember,
                            seg.span,
                            format!("cannot take `{}` of {}", seg.name, val.describe()),
                        )
                        .label("only blocks and declarations have fields"),
                    );
                    return None;
                }
            };
            match record.get(&seg.name) {
                Some(Field { value, .. }) => val = value.clone(),
                None => {
                    let keys: Vec<&str> = record.fields.iter().map(|f| f.key.as_str()).collect();
                    self.errors.push(
                        Diagnostic::error(
                            Code::UnknownMember,
                            seg.span,
                            format!("no field `{}` there", seg.name),
                        )
                        .label("not set")
                        .maybe_hint(suggest(&seg.name, &keys)),
                    );
                    return None;
                }
            }
        }
        Some(val)
    }

    /// A `let` or declaration named `name` in module `m`.
    fn item(&mut self, m: usize, name: &str, use_span: Span) -> Option<Val> {
        let module = &self.modules.list[m];
        match module.file.items.get(*module.names.get(name)?)? {
            Item::Let(l) => self.let_value(m, l, use_span),
            Item::Decl(_) => self.declaration(m, name),
            Item::Import(_) => None,
        }
    }

    fn let_value(&mut self, m: usize, l: &'a ast::Let, use_span: Span) -> Option<Val> {
        let key = (m, l.name.name.clone());
        match self.lets.get(&key) {
            Some(Some(v)) => return Some(v.clone()),
            Some(None) => {
                self.errors.push(
                    Diagnostic::error(
                        Code::LetCycle,
                        use_span,
                        format!("`{}` is defined in terms of itself", l.name.name),
                    )
                    .label("used here while it is being defined")
                    .with_label(l.name.span, "defined here"),
                );
                return None;
            }
            None => {}
        }
        self.lets.insert(key.clone(), None);
        let v = self.value(m, &l.value);
        self.lets.insert(key, Some(v.clone()));
        Some(v)
    }

    fn member_list(&self, m: usize) -> Option<String> {
        let names: Vec<String> = self.modules.list[m]
            .names
            .keys()
            .map(|n| format!("`{n}`"))
            .collect();
        if names.is_empty() {
            None
        } else {
            Some(names.join(", "))
        }
    }

    /// The diagnostic for a name that is bound nowhere.
    pub fn unknown_name(&self, m: usize, name: &ast::Ident) -> Diagnostic {
        let module = &self.modules.list[m];
        let mut candidates: Vec<&str> = module.names.keys().map(|s| s.as_str()).collect();
        candidates.extend(module.imports.keys().map(|s| s.as_str()));
        let mut diag = Diagnostic::error(
            Code::UnknownName,
            name.span,
            format!("`{}` is not defined", name.name),
        )
        .label("unknown name");
        if let Some(best) = closest(&name.name, candidates.iter().copied()) {
            diag = diag.hint(format!("did you mean `{best}`?"));
        } else if let Some(module) = closest(&name.name, crate::stdlib::names()) {
            diag = diag.hint(format!("did you mean the stdlib module `{module}`? add `import \"std/{module}\"` at the top of the file"));
        }
        diag
    }

    /// Every declaration reachable as `alias.name` from module `m`, plus every
    /// stdlib declaration, for "did you mean" hints on bare names.
    pub fn qualified_decls(&self, m: usize) -> Vec<(String, DeclKind, bool)> {
        let module = &self.modules.list[m];
        let mut out = Vec::new();
        for (alias, (target, _)) in &module.imports {
            for item in &self.modules.list[*target].file.items {
                if let Item::Decl(d) = item {
                    out.push((format!("{alias}.{}", d.name.name), d.kind, true));
                }
            }
        }
        for item in &module.file.items {
            if let Item::Decl(d) = item {
                out.push((d.name.name.clone(), d.kind, true));
            }
        }
        for (std_name, text) in crate::stdlib::MODULES {
            if module
                .imports
                .values()
                .any(|(t, _)| self.modules.list[*t].path == format!("std/{std_name}"))
            {
                continue;
            }
            let mut scratch = crate::span::Sources::new();
            let id = scratch.add("", *text);
            if let Ok(file) = crate::syntax::parse(id, text) {
                for item in file.items {
                    if let Item::Decl(d) = item {
                        out.push((format!("{std_name}.{}", d.name.name), d.kind, false));
                    }
                }
            }
        }
        out
    }
}
