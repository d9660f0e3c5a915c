; Scopes and definitions for ftl pipeline files (.ft).
; `let` bindings and import aliases are visible in the whole file; a bare
; reference such as `seed = seed` refers to them.

(source_file) @local.scope

(let_binding
  name: (name) @local.definition.constant)

(import
  alias: (name) @local.definition.import)

(reference
  path: (path
    .
    (name) @local.reference))
