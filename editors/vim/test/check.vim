" Headless check of syntax/ftl.vim and ftplugin/ftl.vim:
"   vim -Nu NONE -i NONE -es -S editors/vim/test/check.vim
" Prints one line per failed check (or one line saying all passed) and exits
" non-zero (:cquit) when any check fails.
let s:here = expand('<sfile>:p:h')
let s:root = fnamemodify(s:here, ':h')
let &runtimepath = s:root . ',' . &runtimepath
filetype plugin on
syntax on
let s:failures = []

" Silent Ex mode prints nothing, so results go to stdout, or to the file
" named by $FTL_VIM_OUT (test.sh uses one, since stdout may be a log file).
function! s:say(lines) abort
  let l:out = empty($FTL_VIM_OUT) ? '/dev/stdout' : $FTL_VIM_OUT
  call writefile(a:lines, l:out, 'a')
endfunction

" Any error while loading the syntax or ftplugin files is a failure too.
let v:errors = []

let v:errmsg = ''
execute 'edit ' . fnameescape(s:here . '/sample.ft')
if &filetype !=# 'ftl'
  call add(s:failures, 'filetype is "' . &filetype . '", expected "ftl"')
endif

" [line, text on that line, expected syntax group (innermost)]
let s:expect = [
      \ [1, '#', 'ftlComment'],
      \ [2, 'import', 'ftlKeywordImport'],
      \ [2, '"std', 'ftlString'],
      \ [2, 'as', 'ftlKeywordImport'],
      \ [3, 'let', 'ftlKeywordLet'],
      \ [3, 'seed', 'ftlBindingName'],
      \ [3, '17', 'ftlNumber'],
      \ [4, 'pipeline', 'ftlKeywordDecl'],
      \ [4, 'sentiment', 'ftlDeclName'],
      \ [4, 'extends', 'ftlKeywordExtends'],
      \ [5, 'model', 'ftlSection'],
      \ [6, 'base', 'ftlField'],
      \ [6, 'models', 'ftlModule'],
      \ [7, 'mean', 'ftlBuiltinSymbol'],
      \ [9, 'dataset', 'ftlSection'],
      \ [9, 'max_tokens', 'ftlField'],
      \ [9, 'true', 'ftlKeywordBoolean'],
      \ [10, 'lora', 'ftlBuiltinFunction'],
      \ [10, 'rank', 'ftlArgName'],
      \ [10, '0.1', 'ftlFloat'],
      \ [11, 'train', 'ftlSection'],
      \ [11, '2e-4', 'ftlFloat'],
      \ [12, '6%', 'ftlPercent'],
      \ [13, '8GiB', 'ftlSize'],
      \ [14, '20min', 'ftlDuration'],
      \ [15, '\t', 'ftlEscape'],
      \ [15, '\d', 'ftlBadEscape'],
      \ [16, '3parsecs', 'ftlUnknownUnit'],
      \ ]
for [s:lnum, s:text, s:group] in s:expect
  let s:col = stridx(getline(s:lnum), s:text) + 1
  if s:col == 0
    call add(s:failures, printf('line %d: "%s" not found', s:lnum, s:text))
    continue
  endif
  let s:got = synIDattr(synID(s:lnum, s:col, 1), 'name')
  if s:got !=# s:group
    call add(s:failures, printf('line %d col %d "%s": expected %s, got %s', s:lnum, s:col, s:text, s:group, s:got))
  endif
endfor

" ftplugin settings
if &l:commentstring !=# '# %s'
  call add(s:failures, 'commentstring is "' . &l:commentstring . '"')
endif
if &l:shiftwidth != 2 || !&l:expandtab
  call add(s:failures, 'indentation is not 2 spaces')
endif
" Re-indent the sample and compare with the original indentation.
let s:before = getline(1, '$')
silent normal! gg=G
if getline(1, '$') != s:before
  call add(s:failures, 'gg=G changed the indentation of sample.ft')
endif

if v:errmsg !=# ''
  call add(s:failures, 'error message while loading: ' . v:errmsg)
endif
if empty(s:failures)
  call s:say(['vim: ' . len(s:expect) . ' syntax checks and the ftplugin passed'])
  qall!
endif
call s:say(map(copy(s:failures), '"vim: FAIL " . v:val'))
cquit!
