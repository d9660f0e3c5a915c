" Vim syntax file
" Language:    ftl pipeline files (.ft)
" Mirrors:     grammar/ftl.pest (tests/editor_keywords.rs checks the keywords)

if exists('b:current_syntax')
  finish
endif
let s:cpo_save = &cpo
set cpo&vim

syn case match
syn iskeyword @,48-57,_
syn sync fromstart

" Comments
syn keyword ftlTodo contained TODO FIXME XXX NOTE
syn match ftlComment /#.*$/ contains=ftlTodo,@Spell

" Keywords (pest: keyword). They are reserved at the top level only: inside a
" block `model` and `dataset` are section names. Every reserved word is in a
" group whose name starts with ftlKeyword.
syn keyword ftlKeywordImport import
syn keyword ftlKeywordImport as nextgroup=ftlAlias skipwhite skipnl
syn keyword ftlKeywordLet let nextgroup=ftlBindingName skipwhite skipnl
syn keyword ftlKeywordDecl pipeline model dataset nextgroup=ftlDeclName skipwhite skipnl
syn keyword ftlKeywordExtends extends nextgroup=ftlParent skipwhite skipnl
syn keyword ftlKeywordBoolean true false

syn match ftlAlias /\h\w*/ contained
syn match ftlBindingName /\h\w*/ contained
syn match ftlDeclName /\h\w*/ contained
syn match ftlParent /\h\w*\%(\.\h\w*\)*/ contained

" Strings, with the escapes that ftl knows and the others marked as errors.
syn region ftlString start=/"/ skip=/\\\\\|\\"/ end=/"/ end=/$/ oneline contains=ftlBadEscape,ftlEscape
syn match ftlBadEscape /\\./ contained
syn match ftlEscape /\v\\(["\\ntr]|u\{\x{1,6}\})/ contained

" Numbers with the unit glued to them. Later items win at the same column.
let s:num = '\v%(-?<\d[0-9_]*%(\.\d+)?%([eE][+-]?\d+)?)@>'
exe 'syn match ftlNumber /\v-?<\d[0-9_]*/'
exe 'syn match ftlFloat /\v-?<\d[0-9_]*%(\.\d+%([eE][+-]?\d+)?|[eE][+-]?\d+)/'
exe 'syn match ftlUnknownUnit /' . s:num . '\a+/'
exe 'syn match ftlPercent /' . s:num . '\%/'
exe 'syn match ftlSize /' . s:num . '%(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\a@!/'
exe 'syn match ftlDuration /' . s:num . '%(ms|s|min|h|d)\a@!/'
unlet s:num

" Built-in functions and symbols.
syn keyword ftlBuiltinFunction full lora qlora linear cosine constant adamw data holdout pypi pypi_zip_parts
syn keyword ftlBuiltinSymbol none nf4 int4 int8 fp32 bf16 mean cls auto cpu cuda accuracy macro_f1
syn keyword ftlBuiltinSymbol epoch end never error skip tsv csv jsonl bert mpnet adapters head merged
syn keyword ftlBuiltinSymbol checkpoints predictions

" Calls and references.
syn match ftlFunction /\v<\h\w*%(\.\h\w*)*\ze\s*\(/ contains=ftlBuiltinFunction,ftlModule
syn match ftlModule /\v<\h\w*\ze\.\h/ contained
syn match ftlReference /\v<\h\w*%(\.\h\w*)+/ contains=ftlModule

" Keys: `train.lr = ...`, `model { ... }`. A known section name at the start
" of a key is a section (`train` included); known field names are fields.
syn match ftlKey /\v%(^|[{,])@<=\s*\zs\h\w*%(\.\h\w*)*\ze\s*[={]/ contained contains=ftlSection,ftlField
syn match ftlSection /\v%(^|\s|[{,])@<=%(model|dataset|method|quantize|train|evaluate|budget|device|output|sweep)>/ contained
syn keyword ftlField contained base pooling dropout labels format eval test text label limit
syn keyword ftlField contained max_tokens shuffle seed bad_rows rank alpha targets block_size
syn keyword ftlField contained double_quant compute epochs steps batch_size grad_accum lr schedule
syn keyword ftlField contained warmup optimizer betas eps weight_decay clip_grad_norm precision on
syn keyword ftlField contained metrics every gpu_memory time backend gpus dir save checkpoint_every
syn keyword ftlField contained hub revision architecture layers hidden heads intermediate vocab
syn keyword ftlField contained max_positions modules lora_targets files mirror path exceed sha256
syn keyword ftlField contained weights tokenizer config packages parts fraction name

syn match ftlArgName /\v<\h\w*\ze\s*\=/ contained

syn match ftlOperator /=/
syn match ftlDelimiter /[,.]/

syn cluster ftlValue contains=ftlComment,ftlString,ftlKeywordBoolean,ftlNumber,ftlFloat,ftlUnknownUnit,ftlPercent,ftlSize,ftlDuration,ftlBuiltinFunction,ftlBuiltinSymbol,ftlFunction,ftlReference,ftlOperator,ftlDelimiter,ftlBlock,ftlList,ftlArgs

" Blocks, lists and argument lists. Top-level keywords are not matched inside.
syn region ftlBlock matchgroup=ftlBrace start=/{/ end=/}/ contains=ftlKey,@ftlValue fold
syn region ftlList matchgroup=ftlBracket start=/\[/ end=/\]/ contains=@ftlValue
syn region ftlArgs matchgroup=ftlParen start=/(/ end=/)/ contains=ftlArgName,@ftlValue

hi def link ftlTodo            Todo
hi def link ftlComment         Comment
hi def link ftlKeywordImport   Include
hi def link ftlKeywordLet      Keyword
hi def link ftlKeywordDecl     Structure
hi def link ftlKeywordExtends  Keyword
hi def link ftlKeywordBoolean  Boolean
hi def link ftlAlias           Identifier
hi def link ftlBindingName     Identifier
hi def link ftlDeclName        Type
hi def link ftlParent          Type
hi def link ftlString          String
hi def link ftlEscape          SpecialChar
hi def link ftlBadEscape       Error
hi def link ftlNumber          Number
hi def link ftlFloat           Float
hi def link ftlUnknownUnit     Number
hi def link ftlPercent         Number
hi def link ftlSize            Number
hi def link ftlDuration        Number
hi def link ftlBuiltinFunction Function
hi def link ftlBuiltinSymbol   Constant
hi def link ftlFunction        Function
hi def link ftlModule          PreProc
hi def link ftlSection         Type
hi def link ftlField           Identifier
hi def link ftlArgName         Identifier
hi def link ftlOperator        Operator
hi def link ftlDelimiter       Delimiter
hi def link ftlBrace           Delimiter
hi def link ftlBracket         Delimiter
hi def link ftlParen           Delimiter

let b:current_syntax = 'ftl'
let &cpo = s:cpo_save
unlet s:cpo_save
