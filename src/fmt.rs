//! The canonical formatting of `.ft` files.
//!
//! Two-space indents, one entry per line, `key { ... }` for blocks, lists and
//! calls on one line when they fit and hold no comment, one element per line
//! with a trailing comma otherwise. Comments are kept where they were
//! written; runs of blank lines shrink to one. Strings and numbers are
//! printed exactly as written. Formatting a formatted file changes nothing.

use crate::span::Span;
use crate::syntax::ast::*;
use crate::syntax::comments::{Comment, comments};

const WIDTH: usize = 100;

/// Formats a parsed file; `text` is the source it was parsed from.
pub fn format(file: &File, text: &str) -> String {
    let mut p = Printer {
        text,
        comments: comments(text),
        next: 0,
        out: String::new(),
        last_end: 0,
    };
    for (i, item) in file.items.iter().enumerate() {
        let span = item.span();
        let force_blank =
            i > 0 && (matches!(item, Item::Decl(_)) || matches!(file.items[i - 1], Item::Decl(_)));
        p.leading(span.start, 0, i == 0, force_blank);
        match item {
            Item::Import(im) => {
                p.out.push_str("import ");
                let path = p.slice(im.path_span).to_string();
                p.out.push_str(&path);
                if let Some(a) = &im.alias {
                    p.out.push_str(" as ");
                    p.out.push_str(&a.name);
                }
            }
            Item::Let(l) => {
                p.out.push_str(&format!("let {} = ", l.name.name));
                p.value(&l.value, 0);
            }
            Item::Decl(d) => {
                p.out
                    .push_str(&format!("{} {}", d.kind.keyword(), d.name.name));
                if let Some(ext) = &d.extends {
                    p.out.push_str(&format!(" extends {}", ext.text()));
                }
                p.out.push(' ');
                p.block(&d.body, 0);
            }
        }
        p.trailing(span.end);
    }
    p.leading(text.len(), 0, file.items.is_empty(), false);
    let mut out = p.out.trim_end().to_string();
    out.push('\n');
    if out.trim().is_empty() {
        String::new()
    } else {
        out
    }
}

struct Printer<'t> {
    text: &'t str,
    comments: Vec<Comment>,
    next: usize,
    out: String,
    last_end: usize,
}

impl Printer<'_> {
    fn slice(&self, span: Span) -> &str {
        &self.text[span.start..span.end]
    }

    fn indent(&mut self, level: usize) {
        for _ in 0..level {
            self.out.push_str("  ");
        }
    }

    fn blank_between(&self, from: usize, to: usize) -> bool {
        let gap = &self.text[from.min(to)..to];
        let lines: Vec<&str> = gap.split('\n').collect();
        lines.len() >= 3
            && lines[1..lines.len() - 1]
                .iter()
                .any(|l| l.trim().is_empty())
    }

    /// Starts a new line for something at `pos`: comments before it, blank
    /// lines kept from the source, then the indent.
    fn leading(&mut self, pos: usize, level: usize, first: bool, force_blank: bool) {
        let (mut first, mut force_blank) = (first, force_blank);
        while self.next < self.comments.len() && self.comments[self.next].start < pos {
            let c = self.comments[self.next].clone();
            self.next += 1;
            self.newline(c.start, level, first, force_blank);
            self.out.push_str(&c.text);
            self.last_end = c.end;
            first = false;
            force_blank = false;
        }
        if pos < self.text.len() || !first {
            if pos >= self.text.len() {
                return;
            }
            self.newline(pos, level, first, force_blank);
        }
    }

    fn newline(&mut self, pos: usize, level: usize, first: bool, force_blank: bool) {
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
        if !first && !self.out.is_empty() && (force_blank || self.blank_between(self.last_end, pos))
        {
            self.out.push('\n');
        }
        self.indent(level);
    }

    /// A comment on the same line right after `end`.
    fn trailing(&mut self, end: usize) {
        self.last_end = end;
        if let Some(c) = self.comments.get(self.next)
            && !c.own_line
            && c.start >= end
            && !self.text[end..c.start].contains('\n')
        {
            self.out.push_str("  ");
            self.out.push_str(&c.text);
            self.last_end = c.end;
            self.next += 1;
        }
    }

    fn has_comment(&self, span: Span) -> bool {
        self.comments[self.next..]
            .iter()
            .any(|c| c.start >= span.start && c.start < span.end)
    }

    fn block(&mut self, block: &Block, level: usize) {
        if block.entries.is_empty() && !self.has_comment(block.span) {
            self.out.push_str("{}");
            self.last_end = block.span.end;
            return;
        }
        self.out.push('{');
        self.last_end = block.span.start + 1;
        self.trailing(block.span.start + 1);
        for (i, entry) in block.entries.iter().enumerate() {
            self.leading(entry.span.start, level + 1, i == 0, false);
            self.out.push_str(&entry.key_text());
            match &entry.value.kind {
                ValueKind::Block(b) => {
                    self.out.push(' ');
                    self.block(b, level + 1);
                }
                _ => {
                    self.out.push_str(" = ");
                    self.value(&entry.value, level + 1);
                }
            }
            self.trailing(entry.span.end);
        }
        let close = block.span.end - 1;
        while self.next < self.comments.len() && self.comments[self.next].start < close {
            let c = self.comments[self.next].clone();
            self.next += 1;
            self.newline(c.start, level + 1, false, false);
            self.out.push_str(&c.text);
            self.last_end = c.end;
        }
        self.out.push('\n');
        self.indent(level);
        self.out.push('}');
        self.last_end = block.span.end;
    }

    fn value(&mut self, value: &Value, level: usize) {
        match &value.kind {
            ValueKind::Str(_) | ValueKind::Bool(_) | ValueKind::Number { .. } => {
                let s = self.slice(value.span).to_string();
                self.out.push_str(&s);
            }
            ValueKind::Ref { path, overrides } => {
                self.out.push_str(&path.text());
                if let Some(b) = overrides {
                    self.out.push(' ');
                    self.block(b, level);
                }
            }
            ValueKind::Block(b) => self.block(b, level),
            ValueKind::List(items) => {
                let parts: Vec<&Value> = items.iter().collect();
                self.sequence("[", "]", &parts, &[], value.span, level);
            }
            ValueKind::Call { callee, args } => {
                let values: Vec<&Value> = args.iter().map(|a| &a.value).collect();
                let names: Vec<Option<&Ident>> = args.iter().map(|a| a.name.as_ref()).collect();
                let open = format!("{}(", callee.text());
                self.sequence(&open, ")", &values, &names, value.span, level);
            }
        }
        self.last_end = value.span.end;
    }

    /// A list or an argument list: inline when short and comment-free.
    fn sequence(
        &mut self,
        open: &str,
        close: &str,
        items: &[&Value],
        names: &[Option<&Ident>],
        span: Span,
        level: usize,
    ) {
        let name_of = |i: usize| {
            names
                .get(i)
                .copied()
                .flatten()
                .map(|n| format!("{} = ", n.name))
                .unwrap_or_default()
        };
        if !self.has_comment(span) {
            let mut inline = String::from(open);
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    inline.push_str(", ");
                }
                inline.push_str(&name_of(i));
                match self.inline(item) {
                    Some(s) => inline.push_str(&s),
                    None => ok = false,
                }
            }
            inline.push_str(close);
            let line_len = self.out.rsplit('\n').next().map_or(0, str::len);
            if ok && line_len + inline.len() <= WIDTH {
                self.out.push_str(&inline);
                return;
            }
        }
        self.out.push_str(open);
        for (i, item) in items.iter().enumerate() {
            self.leading(item.span.start, level + 1, i == 0, false);
            self.out.push_str(&name_of(i));
            self.value(item, level + 1);
            self.out.push(',');
            self.trailing(item.span.end);
        }
        let end = span.end - 1;
        while self.next < self.comments.len() && self.comments[self.next].start < end {
            let c = self.comments[self.next].clone();
            self.next += 1;
            self.newline(c.start, level + 1, false, false);
            self.out.push_str(&c.text);
            self.last_end = c.end;
        }
        self.out.push('\n');
        self.indent(level);
        self.out.push_str(close);
    }

    /// A value on one line, if it has no block and no comment.
    fn inline(&self, value: &Value) -> Option<String> {
        match &value.kind {
            ValueKind::Str(_) | ValueKind::Bool(_) | ValueKind::Number { .. } => {
                Some(self.slice(value.span).to_string())
            }
            ValueKind::Ref {
                path,
                overrides: None,
            } => Some(path.text()),
            ValueKind::List(items) => {
                let parts: Option<Vec<String>> = items.iter().map(|i| self.inline(i)).collect();
                Some(format!("[{}]", parts?.join(", ")))
            }
            ValueKind::Call { callee, args } => {
                let parts: Option<Vec<String>> = args
                    .iter()
                    .map(|a| {
                        let v = self.inline(&a.value)?;
                        Some(match &a.name {
                            Some(n) => format!("{} = {v}", n.name),
                            None => v,
                        })
                    })
                    .collect();
                Some(format!("{}({})", callee.text(), parts?.join(", ")))
            }
            ValueKind::Ref {
                overrides: Some(_), ..
            }
            | ValueKind::Block(_) => None,
        }
    }
}
