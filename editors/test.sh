#!/usr/bin/env bash
# Tests of the editor integrations in editors/. Run from anywhere:
#
#   bash editors/test.sh
#
# It installs what it needs (tree-sitter CLI from crates.io, npm packages from
# editors/package-lock.json, vim from apt when missing), then runs:
#   1. tree-sitter generate: the committed parser matches grammar.js
#   2. tree-sitter test: corpus and highlight tests
#   3. every .ft file of the project parses without ERROR or MISSING nodes
#   4. vscode-tmgrammar-test unit tests and snapshot tests
#   5. a headless vim check of syntax/ftl.vim and ftplugin/ftl.vim
# and exits non-zero when any of them fails.
#
# Environment: FTL_EDITOR_TOOLS (where the tree-sitter CLI is installed,
# default ~/.cache/ftl-editors), FTL_TREE_SITTER (use this tree-sitter binary
# instead; the generate check is skipped when its version is not the pinned one).

set -uo pipefail

TS_VERSION=0.27.1

ED=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$ED/.." && pwd)
TOOLS=${FTL_EDITOR_TOOLS:-$HOME/.cache/ftl-editors}
GRAMMAR=$ED/tree-sitter-ftl
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS

RESULTS=()
FAILED=0
pass() { RESULTS+=("PASS  $1"); }
fail() { RESULTS+=("FAIL  $1"); FAILED=$((FAILED + 1)); }
skip() { RESULTS+=("SKIP  $1"); }
log()  { printf '\n=== %s\n' "$*"; }

# Runs "$@" and records the step as passed or failed.
step() {
  local name=$1 t0=$SECONDS
  shift
  log "$name"
  if "$@"; then pass "$name ($((SECONDS - t0))s)"; else fail "$name ($((SECONDS - t0))s)"; fi
}

# ---------------------------------------------------------------- installs

install_tree_sitter() {
  if [ -n "${FTL_TREE_SITTER:-}" ]; then
    TS=$FTL_TREE_SITTER
  elif [ -x "$TOOLS/bin/tree-sitter" ] && [ "$("$TOOLS/bin/tree-sitter" --version 2>/dev/null)" = "tree-sitter $TS_VERSION" ]; then
    TS=$TOOLS/bin/tree-sitter
  else
    # The npm package tree-sitter-cli downloads its binary from GitHub at
    # install time, which this project's machines cannot reach; crates.io has
    # the same CLI as source (about 5 minutes to build on 2 cores).
    echo "building tree-sitter-cli $TS_VERSION from crates.io into $TOOLS"
    nice -n 10 cargo install tree-sitter-cli --version "$TS_VERSION" --locked --root "$TOOLS" --quiet || return 1
    TS=$TOOLS/bin/tree-sitter
  fi
  "$TS" --version
}

install_npm() {
  if ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null || return 1
  fi
  (cd "$ED" && npm ci --no-audit --no-fund --loglevel=error)
}

install_vim() {
  if ! command -v vim >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq vim >/dev/null || return 1
  fi
  vim --version | head -1
}

# ------------------------------------------------------------------ checks

# Regenerates the parser in a scratch copy and compares it with src/.
check_generated() {
  cp -r "$GRAMMAR/grammar.js" "$GRAMMAR/tree-sitter.json" "$GRAMMAR/package.json" "$WORK/" || return 1
  mkdir -p "$WORK/gen" && mv "$WORK/grammar.js" "$WORK/tree-sitter.json" "$WORK/package.json" "$WORK/gen/"
  (cd "$WORK/gen" && "$TS" generate) || return 1
  local f bad=0
  for f in parser.c grammar.json node-types.json tree_sitter/parser.h tree_sitter/alloc.h tree_sitter/array.h; do
    if ! cmp -s "$WORK/gen/src/$f" "$GRAMMAR/src/$f"; then
      echo "src/$f is out of date: run 'tree-sitter generate' in editors/tree-sitter-ftl (CLI $TS_VERSION)"
      bad=1
    fi
  done
  [ $bad = 0 ] && echo "the committed parser is what tree-sitter $TS_VERSION generates"
}

run_ts_test() {
  (cd "$GRAMMAR" && "$TS" test 2>&1 | grep -v -e 'parser directories' -e 'tree-sitter init-config' -e 'configuration file to indicate' -e '^language grammars' -e '^$'
   exit "${PIPESTATUS[0]}")
}

# Parses the files listed in $1 and prints those whose tree has an error.
ts_errors() {
  [ -s "$1" ] || return 0
  (cd "$GRAMMAR" && "$TS" parse -q --paths "$1" 2>/dev/null) | grep -E '\((ERROR|MISSING)' || true
}

# The project's valid files must parse cleanly.
check_project_files() {
  local list=$WORK/valid.txt dir
  : > "$list"
  for dir in pipelines stdlib tests/cases/valid; do
    [ -d "$ROOT/$dir" ] && find "$ROOT/$dir" -name '*.ft' -type f >> "$list"
  done
  [ -d "$ROOT/tests/cases" ] && find "$ROOT/tests/cases" -name 'ok_*.ft' -type f >> "$list"
  sort -u -o "$list" "$list"
  local n errors
  n=$(wc -l < "$list")
  errors=$(ts_errors "$list")
  if [ -n "$errors" ]; then
    echo "$errors"
    echo "$(echo "$errors" | wc -l) of $n files have syntax errors in the tree-sitter parser"
    return 1
  fi
  echo "$n files parsed without ERROR or MISSING nodes"
}

# tests/cases holds one mistake per file; the header comment names the
# diagnostic code. The tree-sitter parser must reject exactly the syntax
# errors (E0001) and accept the others, as the pest grammar does.
check_cases_agree() {
  [ -d "$ROOT/tests/cases" ] || { echo "no tests/cases"; return 0; }
  local f syntax=$WORK/syntax.txt other=$WORK/other.txt
  : > "$syntax"; : > "$other"
  while IFS= read -r f; do
    if head -n 3 "$f" | grep -q 'E0001'; then echo "$f" >> "$syntax"; else echo "$f" >> "$other"; fi
  done < <(find "$ROOT/tests/cases" -name '*.ft' -type f | sort)
  local bad=0 errors missed
  errors=$(ts_errors "$other")
  if [ -n "$errors" ]; then echo "rejected, but not a syntax error (E0001) for ftl:"; echo "$errors"; bad=1; fi
  missed=$(comm -23 "$syntax" <(ts_errors "$syntax" | awk '{print $1}' | sort))
  if [ -n "$missed" ]; then echo "accepted, but a syntax error (E0001) for ftl:"; echo "$missed"; bad=1; fi
  [ $bad = 0 ] && echo "$(wc -l < "$syntax") syntax-error cases rejected, $(wc -l < "$other") other cases accepted"
  return $bad
}

run_vscode_unit() {
  (cd "$ED" && npx --no-install vscode-tmgrammar-test --config vscode/package.json 'vscode/test/unit/*.ft')
}

run_vscode_snap() {
  (cd "$ED" && npx --no-install vscode-tmgrammar-snap --config vscode/package.json 'vscode/test/snap/*.ft')
}

run_vim() {
  local out=$WORK/vim.txt rc
  : > "$out"
  (cd "$ROOT" && FTL_VIM_OUT=$out vim -Nu NONE -i NONE -es -S editors/vim/test/check.vim </dev/null)
  rc=$?
  cat "$out"
  [ -s "$out" ] || echo "vim printed no result"
  return $rc
}

# ------------------------------------------------------------------- main

if step "install tree-sitter CLI $TS_VERSION" install_tree_sitter; then
  if [ "$("$TS" --version 2>/dev/null)" = "tree-sitter $TS_VERSION" ]; then
    step "tree-sitter generate: committed parser is up to date" check_generated
  else
    log "tree-sitter generate"
    echo "$("$TS" --version) is not the pinned $TS_VERSION: generated files differ between versions"
    skip "tree-sitter generate: CLI is not $TS_VERSION"
  fi
  step "tree-sitter test: corpus and highlights" run_ts_test
  step "project .ft files parse without errors" check_project_files
  step "tests/cases: syntax errors agree with the pest grammar" check_cases_agree
else
  fail "tree-sitter checks (no CLI)"
fi

if step "install npm packages (npm ci)" install_npm; then
  step "vscode-tmgrammar-test unit tests" run_vscode_unit
  step "vscode-tmgrammar-snap snapshot tests" run_vscode_snap
else
  fail "vscode grammar tests (no npm packages)"
fi

if step "install vim" install_vim; then
  step "vim syntax and ftplugin check" run_vim
else
  fail "vim check (no vim)"
fi

printf '\n=== editors/test.sh summary (%ss)\n' "$((SECONDS - START))"
printf '%s\n' "${RESULTS[@]}"
n_pass=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^PASS' || true)
n_skip=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^SKIP' || true)
echo "editors: $n_pass passed, $FAILED failed, $n_skip skipped"
[ "$FAILED" = 0 ]
