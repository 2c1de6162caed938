#!/usr/bin/env bash
# Run the core tests under every other CPython from 3.10 to 3.13 this machine has (on PATH
# as python3.X, or under pyenv), each in its own venv (.venv-3.X), to keep the supported
# range honest. Versions that are not installed are skipped and named.
set -euo pipefail
cd "$(dirname "$0")/.."
CORE_TESTS="tests/test_parsing.py tests/test_capture.py tests/test_worker.py tests/test_merge.py tests/test_magic.py
  tests/test_environment.py tests/test_mapping.py tests/test_notebook_types.py tests/test_bad_input.py"
status=0
for minor in 3.10 3.11 3.12 3.13; do
  py=""
  # pyenv puts shims on PATH for versions it will then refuse to run: try each for real.
  for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$minor".*/bin/python 2>/dev/null | sort -V | tail -1) "python$minor"; do
    if "$candidate" -c 'import sys' >/dev/null 2>&1; then py=$(command -v "$candidate"); break; fi
  done
  if [ -z "$py" ]; then echo "python $minor: not installed here, skipped"; continue; fi
  if [ "$("$py" -c 'import sys; print(sys.prefix)')" = "$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')" ]; then
    continue  # the main suite already ran on this one
  fi
  venv=".venv-$minor"
  echo "python $minor: $py"
  PYTHON="$py" AZPAR_VENV="$venv" bash scripts/setup.sh >/dev/null
  IPYTHONDIR="$(mktemp -d)" "$venv/bin/python" -m pytest $CORE_TESTS -q -p no:cacheprovider || status=$?
done
exit "$status"
