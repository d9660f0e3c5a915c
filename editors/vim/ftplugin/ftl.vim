" Filetype plugin for ftl pipeline files (.ft).
if exists('b:did_ftplugin')
  finish
endif
let b:did_ftplugin = 1

setlocal commentstring=#\ %s
setlocal iskeyword=@,48-57,_
setlocal comments=:#
setlocal formatoptions-=t formatoptions+=croql
setlocal expandtab shiftwidth=2 softtabstop=2 tabstop=2
setlocal autoindent
setlocal indentexpr=FtlIndent()
setlocal indentkeys=0},0],0),!^F,o,O
" The syntax file marks every { ... } block as a fold.
setlocal foldmethod=syntax

let b:undo_ftplugin = 'setlocal commentstring< iskeyword< comments< formatoptions< expandtab< shiftwidth<'
      \ . ' softtabstop< tabstop< autoindent< indentexpr< indentkeys< foldmethod<'

if exists('*FtlIndent')
  finish
endif

" One level deeper after a line that opens a bracket, one level back on a
" line that starts by closing one.
function! FtlIndent() abort
  let l:prev = prevnonblank(v:lnum - 1)
  if l:prev == 0
    return 0
  endif
  let l:ind = indent(l:prev)
  let l:line = substitute(getline(l:prev), '\v\s*#[^"]*$', '', '')
  if l:line =~# '[{[(]\s*$'
    let l:ind += shiftwidth()
  endif
  if getline(v:lnum) =~# '^\s*[}\])]'
    let l:ind -= shiftwidth()
  endif
  return max([l:ind, 0])
endfunction
