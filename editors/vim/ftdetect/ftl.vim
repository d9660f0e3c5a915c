" ftl pipeline files. Vim knows `.ft` as Forth, so the filetype is set, not
" merely offered with :setfiletype.
autocmd BufRead,BufNewFile *.ft set filetype=ftl
