//! The editor integrations in `editors/` keep their own lists of the reserved
//! words. This test reads the `keyword` rule of `grammar/ftl.pest` and checks
//! that each editor lists exactly those words, so that they cannot drift from
//! the grammar:
//!
//! - tree-sitter: the `KEYWORDS` array and the quoted words of the rules in
//!   `grammar.js`, and the quoted words of `queries/highlights.scm` (outside
//!   predicates);
//! - VS Code: the words that `syntaxes/ftl.tmLanguage.json` matches between
//!   `(?<![\w.])(` and `)(?!\w)`, the form it keeps for reserved words;
//! - Vim: the words of the `syn keyword ftlKeyword...` groups of
//!   `syntax/ftl.vim`.

use std::collections::BTreeSet;
use std::path::Path;

type Words = BTreeSet<String>;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase())
}

/// The strings between `quote` characters in `text` that are plain lowercase words.
fn quoted_words(text: &str, quote: char) -> Words {
    text.split(quote)
        .skip(1)
        .step_by(2)
        .filter(|s| is_word(s))
        .map(str::to_string)
        .collect()
}

/// The keywords of the pest grammar: the literals of its `keyword` rule.
fn pest_keywords() -> Words {
    let pest = read("grammar/ftl.pest");
    let rule = pest
        .lines()
        .find(|l| l.trim_start().starts_with("keyword") && l.contains('='))
        .expect("grammar/ftl.pest has no `keyword` rule");
    let words = quoted_words(rule, '"');
    assert!(
        words.len() >= 5,
        "too few keywords read from the `keyword` rule: {words:?}"
    );
    words
}

/// Compares an editor's words with the grammar's, naming the editor and
/// every missing or extra word.
fn compare(editor: &str, found: &Words, expected: &Words) -> Vec<String> {
    let mut problems = Vec::new();
    for w in expected.difference(found) {
        problems.push(format!("{editor}: missing keyword `{w}`"));
    }
    for w in found.difference(expected) {
        problems.push(format!(
            "{editor}: extra reserved word `{w}` (not a keyword of grammar/ftl.pest)"
        ));
    }
    problems
}

fn tree_sitter_grammar_array() -> Words {
    let js = read("editors/tree-sitter-ftl/grammar.js");
    let line = js
        .lines()
        .find(|l| l.trim_start().starts_with("const KEYWORDS"))
        .expect("grammar.js has no `const KEYWORDS = [...]` line");
    quoted_words(line, '\'')
}

fn tree_sitter_grammar_rules() -> Words {
    let js = read("editors/tree-sitter-ftl/grammar.js");
    let rules = js
        .split_once("rules:")
        .expect("grammar.js has no `rules:`")
        .1;
    // Drop `//` comments, which may quote words.
    let code: String = rules
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    // The quoted words of the rules, less field names (`field('name', ...)`)
    // and reserved-set names (`reserved('set', ...)`).
    let mut words = Words::new();
    let mut rest = code.as_str();
    while let Some(start) = rest.find('\'') {
        let before = &rest[..start];
        let after = &rest[start + 1..];
        let Some(end) = after.find('\'') else { break };
        let word = &after[..end];
        if is_word(word) && !before.ends_with("field(") && !before.ends_with("reserved(") {
            words.insert(word.to_string());
        }
        rest = &after[end + 1..];
    }
    words
}

/// Removes `; comments` and predicate forms `(#...)` from a query.
fn strip_query(query: &str) -> String {
    let mut out = String::new();
    for line in query.lines() {
        let mut in_string = false;
        let mut kept = String::new();
        for c in line.chars() {
            if c == '"' {
                in_string = !in_string;
            }
            if c == ';' && !in_string {
                break;
            }
            kept.push(c);
        }
        out.push_str(&kept);
        out.push('\n');
    }
    let mut result = String::new();
    let chars: Vec<char> = out.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '(' && chars.get(i + 1) == Some(&'#') {
            let mut depth = 0;
            let mut in_string = false;
            while i < chars.len() {
                match chars[i] {
                    '"' if i == 0 || chars[i - 1] != '\\' => in_string = !in_string,
                    '(' if !in_string => depth += 1,
                    ')' if !in_string => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            result.push(chars[i]);
        }
        i += 1;
    }
    result
}

fn tree_sitter_highlights() -> Words {
    let query = read("editors/tree-sitter-ftl/queries/highlights.scm");
    quoted_words(&strip_query(&query), '"')
}

fn textmate() -> Words {
    let json = read("editors/vscode/syntaxes/ftl.tmLanguage.json");
    // In the JSON text the backslashes are doubled.
    let (open, close) = (r"(?<![\\w.])(", r")(?!\\w)");
    let mut words = Words::new();
    for part in json.split(open).skip(1) {
        if let Some((group, _)) = part.split_once(close)
            && group.split('|').all(is_word)
        {
            words.extend(group.split('|').map(str::to_string));
        }
    }
    words
}

fn vim() -> Words {
    let vim = read("editors/vim/syntax/ftl.vim");
    let mut words = Words::new();
    for line in vim.lines() {
        let mut parts = line.split_whitespace();
        let (Some(cmd), Some("keyword"), Some(group)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !matches!(cmd, "syn" | "synt" | "synta" | "syntax") || !group.starts_with("ftlKeyword") {
            continue;
        }
        for w in parts {
            let option = w.contains('=')
                || matches!(
                    w,
                    "contained"
                        | "transparent"
                        | "skipwhite"
                        | "skipnl"
                        | "skipempty"
                        | "conceal"
                        | "display"
                );
            if !option {
                words.insert(w.to_string());
            }
        }
    }
    words
}

#[test]
fn editors_list_exactly_the_grammar_keywords() {
    let expected = pest_keywords();
    let checks = [
        (
            "tree-sitter (editors/tree-sitter-ftl/grammar.js, KEYWORDS)",
            tree_sitter_grammar_array(),
        ),
        (
            "tree-sitter (editors/tree-sitter-ftl/grammar.js, rules)",
            tree_sitter_grammar_rules(),
        ),
        (
            "tree-sitter (editors/tree-sitter-ftl/queries/highlights.scm)",
            tree_sitter_highlights(),
        ),
        (
            "VS Code (editors/vscode/syntaxes/ftl.tmLanguage.json)",
            textmate(),
        ),
        ("Vim (editors/vim/syntax/ftl.vim)", vim()),
    ];
    let problems: Vec<String> = checks
        .iter()
        .flat_map(|(editor, found)| compare(editor, found, &expected))
        .collect();
    assert!(
        problems.is_empty(),
        "the editors' keywords differ from grammar/ftl.pest ({:?}):\n{}",
        expected,
        problems.join("\n")
    );
}

#[test]
fn the_extractors_see_what_they_should() {
    // Guards against a check that passes because it reads nothing: the
    // non-keyword words of each file must not leak into the keyword lists.
    assert!(
        !tree_sitter_highlights().contains("mean"),
        "predicate words leaked into highlights.scm keywords"
    );
    assert!(
        !textmate().contains("lora"),
        "built-in functions leaked into tmLanguage keywords"
    );
    assert!(
        !vim().contains("base"),
        "field names leaked into vim keywords"
    );
    assert!(
        !vim().contains("contained"),
        "vim options leaked into vim keywords"
    );
}
