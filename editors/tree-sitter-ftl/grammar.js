/**
 * Tree-sitter grammar for ftl pipeline files (`.ft`).
 *
 * It mirrors grammar/ftl.pest rule for rule and accepts the same language;
 * the comments name the pest rule each rule stands for. Where pest is
 * compound-atomic (`key`, `path`, `quantity`, `string`), the parts here are
 * immediate tokens, so no whitespace or comment may come between them.
 *
 * Keywords are reserved at the top level only (pest's `ident`): a binding or
 * declaration name cannot be a keyword, while field names, path segments and
 * argument names (pest's `name`) can be any word.
 */

// pest: keyword. Kept in the same order; tests/editor_keywords.rs checks it.
const KEYWORDS = ['import', 'as', 'let', 'pipeline', 'model', 'dataset', 'extends', 'true', 'false'];

const NAME = /[A-Za-z_][A-Za-z0-9_]*/;

// Any name after a `.` of a key or path: glued to the dot, keywords allowed.
const segment = $ => alias(token.immediate(NAME), $.name);

module.exports = grammar({
  name: 'ftl',

  // pest: WHITESPACE and COMMENT.
  extras: $ => [/[ \t\r\n]/, $.comment],

  word: $ => $.name,

  reserved: {
    // pest: ident (a name that is not a keyword).
    global: _ => KEYWORDS,
    // pest: name (any name, keywords included).
    any_name: _ => [],
  },

  rules: {
    // pest: file
    source_file: $ => repeat($._item),

    // pest: item
    _item: $ => choice($.import, $.let_binding, $.declaration),

    // pest: import
    import: $ => seq(
      'import',
      field('source', $.string),
      optional(seq('as', field('alias', $.name))),
    ),

    // pest: let_binding
    let_binding: $ => seq('let', field('name', $.name), '=', field('value', $._value)),

    // pest: declaration, decl_kind
    declaration: $ => seq(
      field('kind', choice('pipeline', 'model', 'dataset')),
      field('name', $.name),
      optional(seq('extends', field('parent', $.path))),
      field('body', $.block),
    ),

    // pest: block
    block: $ => seq('{', repeat(seq($.entry, optional(','))), '}'),

    // pest: entry
    entry: $ => seq(
      field('key', $.key),
      choice(seq('=', field('value', $._value)), field('value', $.block)),
    ),

    // pest: key
    key: $ => seq(reserved('any_name', $.name), repeat(seq(token.immediate('.'), segment($)))),

    // pest: value (its alternatives, in pest's order)
    _value: $ => choice($.list, $.boolean, $.call, $.reference, $.block, $.string, $.quantity),

    // pest: list
    list: $ => seq('[', optional(seq($._value, repeat(seq(',', $._value)), optional(','))), ']'),

    // pest: call
    call: $ => seq(
      field('function', $.path),
      '(',
      optional(seq($.argument, repeat(seq(',', $.argument)), optional(','))),
      ')',
    ),

    // pest: argument. `true` and `false` are names here when `=` follows
    // them, as in pest, where `name ~ "="` is tried before the value.
    argument: $ => choice(
      seq(
        field('name', choice(
          reserved('any_name', $.name),
          alias('true', $.name),
          alias('false', $.name),
        )),
        '=',
        field('value', $._value),
      ),
      field('value', $._value),
    ),

    // pest: path_value
    reference: $ => seq(field('path', $.path), optional(field('override', $.block))),

    // pest: path
    path: $ => seq(reserved('any_name', $.name), repeat(seq(token.immediate('.'), segment($)))),

    // pest: boolean
    boolean: _ => choice('true', 'false'),

    // pest: quantity, number, unit
    quantity: $ => seq(field('number', $.number), optional(field('unit', $.unit))),
    number: _ => token(/-?[0-9][0-9_]*(\.[0-9]+)?([eE][+-]?[0-9]+)?/),
    unit: _ => token.immediate(prec(1, /%|[A-Za-z]+/)),

    // pest: string, string_inner
    string: $ => seq(
      '"',
      repeat(choice($.string_content, $.escape_sequence)),
      token.immediate('"'),
    ),
    string_content: _ => token.immediate(prec(1, /[^"\\\n]+/)),
    escape_sequence: _ => token.immediate(prec(1, choice(/\\u\{[0-9A-Fa-f]*\}/, /\\[^\n]/))),

    // pest: COMMENT
    comment: _ => token(seq('#', /[^\n]*/)),

    // pest: name / ident (see `reserved` above)
    name: _ => NAME,
  },
});
