#!/usr/bin/env bash
# The static checks CI runs before the tests (scripts/test.sh calls this): ruff's lint rules,
# the architecture contracts (import-linter: layers, who may import IPython, ipywidgets and the
# Azure SDK, the worker's and the backends' isolation) and mypy. Settings are in pyproject.toml;
# the tools are pinned in its `test` extra. Every check runs; the script exits non-zero if any
# failed. tests/test_architecture.py holds the rules import-linter cannot state (no cycles).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${AZPAR_VENV:-.venv}
BIN="$VENV/bin"
status=0
failed=()

check() {  # check NAME COMMAND...: run one check, remember its failure, go on
  local name=$1
  shift
  echo "lint: $name"
  if ! "$@"; then
    status=1
    failed+=("$name")
  fi
}

# Lint rules on everything Python in the repository; the formatter's house style on the package.
check "ruff check" "$BIN/ruff" check --no-cache --output-format=concise azpar_magic scripts tests bench
check "ruff format" "$BIN/ruff" format --no-cache --check azpar_magic
check "import contracts" "$BIN/lint-imports" --no-cache
check "mypy" "$BIN/python" -m mypy --no-incremental --cache-dir=/dev/null

if [ "$status" -ne 0 ]; then
  echo "lint: failed: ${failed[*]}" >&2
fi
exit "$status"
