; Highlights for ftl pipeline files (.ft).
;
; The patterns never capture the same node twice, so editors that let the
; first match win (tree-sitter CLI, Helix) and editors that let the last match
; win (Neovim) show the same colours.

(comment) @comment

; Keywords (pest: keyword). tests/editor_keywords.rs checks that the words
; quoted outside predicates here are exactly the grammar's keywords.
[
  "import"
  "as"
] @keyword.import

"let" @keyword

[
  "pipeline"
  "model"
  "dataset"
] @keyword.type

"extends" @keyword.modifier

[
  "true"
  "false"
] @boolean

; Strings
(string) @string

(escape_sequence) @string.escape

(import
  source: (string
    (string_content) @string.special.path))

; Numbers, by the unit glued to them (the units that src/check knows). The
; patterns look at the text of the whole quantity, so each one is captured once.
((quantity) @number
  (#match? @number "^-?[0-9][0-9_]*$"))

((quantity) @number.float
  (#match? @number.float "^-?[0-9][0-9_]*([.][0-9]+([eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+)$"))

((quantity) @number.percentage
  (#match? @number.percentage "%$"))

((quantity) @number.size
  (#match? @number.size "[0-9](B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"))

((quantity) @number.duration
  (#match? @number.duration "[0-9](ms|s|min|h|d)$"))

; A unit that ftl does not know: `ftl check` reports it.
((quantity) @number
  (#match? @number "[0-9][A-Za-z]+$")
  (#not-match? @number "[0-9](B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|ms|s|min|h|d)$"))

; Declarations and bindings
(declaration
  name: (name) @type.definition)

(declaration
  parent: (path
    .
    (name) @module
    "."))

(declaration
  parent: (path
    (name) @type .))

(let_binding
  name: (name) @constant)

(import
  alias: (name) @module)

; Keys: a known section name at the start of a key is a section; every other
; segment is a field name.
((key
  .
  (name) @type.section)
  (#any-of? @type.section
    "model" "dataset" "method" "quantize" "train" "evaluate" "budget" "device" "output" "sweep"))

((key
  .
  (name) @property)
  (#not-any-of? @property
    "model" "dataset" "method" "quantize" "train" "evaluate" "budget" "device" "output" "sweep"))

(key
  "."
  .
  (name) @property)

; Calls
(argument
  name: (name) @variable.parameter)

((call
  function: (path
    .
    (name) @function.builtin .))
  (#any-of? @function.builtin
    "full" "lora" "qlora" "linear" "cosine" "constant" "adamw" "data" "holdout" "pypi" "pypi_zip_parts"))

((call
  function: (path
    .
    (name) @function.call .))
  (#not-any-of? @function.call
    "full" "lora" "qlora" "linear" "cosine" "constant" "adamw" "data" "holdout" "pypi" "pypi_zip_parts"))

(call
  function: (path
    .
    (name) @module
    "."))

(call
  function: (path
    "."
    .
    (name) @function.call .))

; References: `models.minilm_l6` is a member of an imported module; a bare
; word is a let binding or one of ftl's symbols.
(reference
  path: (path
    .
    (name) @module
    "."))

(reference
  path: (path
    "."
    .
    (name) @variable.member))

((reference
  path: (path
    .
    (name) @constant.builtin .))
  (#any-of? @constant.builtin
    "none" "nf4" "int4" "int8" "fp32" "bf16" "mean" "cls"
    "auto" "cpu" "cuda" "accuracy" "macro_f1" "epoch" "end" "never"
    "error" "skip" "tsv" "csv" "jsonl" "bert" "mpnet" "adapters"
    "head" "merged" "checkpoints" "predictions"))

((reference
  path: (path
    .
    (name) @variable .))
  (#not-any-of? @variable
    "full" "lora" "qlora" "linear" "cosine" "constant" "adamw" "data" "holdout" "pypi" "pypi_zip_parts"
    "none" "nf4" "int4" "int8" "fp32" "bf16" "mean" "cls"
    "auto" "cpu" "cuda" "accuracy" "macro_f1" "epoch" "end" "never"
    "error" "skip" "tsv" "csv" "jsonl" "bert" "mpnet" "adapters"
    "head" "merged" "checkpoints" "predictions"))

; A built-in function named without a call: `method = full`.
((reference
  path: (path
    .
    (name) @function.builtin .))
  (#any-of? @function.builtin
    "full" "lora" "qlora" "linear" "cosine" "constant" "adamw" "data" "holdout" "pypi" "pypi_zip_parts"))

; Punctuation
"=" @operator

[
  "{"
  "}"
  "["
  "]"
  "("
  ")"
] @punctuation.bracket

[
  ","
  "."
] @punctuation.delimiter
