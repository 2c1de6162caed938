#!/usr/bin/env bash
# The whole test suite from a fresh machine: set up, then run every test and check the
# example notebooks with nbval. Extra arguments go to pytest (e.g. -k parsing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${AZPAR_VENV:-.venv}
export IPYTHONDIR="$(mktemp -d)"
# The notebooks' jobs go to a job store of their own, not to the store of whoever runs the tests.
export AZPAR_JOB_STORE="$(mktemp -d)/jobs"
mkdir -p test-artifacts
status=0
if [ "$#" -eq 0 ]; then bash scripts/lint.sh || status=$?; fi  # ruff, the import contracts, mypy
"$VENV/bin/python" -m pytest tests -p no:cacheprovider --junitxml=test-artifacts/junit.xml "$@" || status=$?
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ]; then
  "$VENV/bin/python" -m pytest --nbval notebooks -p no:cacheprovider -q || status=$?
fi
# The local pool again as Windows runs it (no fd passing, process groups or symlinks), since no
# Windows machine runs these tests: README "Platforms". About 4 minutes on 2 shared cores.
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ]; then
  AZPAR_PORTABLE=1 "$VENV/bin/python" -m pytest tests/test_local_pool.py tests/test_local_backend.py \
    tests/test_local_pool_kernel.py tests/test_data_local.py tests/test_portable.py tests/test_faults.py \
    -p no:cacheprovider -q --junitxml=test-artifacts/junit-portable.xml || status=$?
fi
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ]; then
  bash scripts/test_pythons.sh || status=$?
fi
# pytest exits 5 when it collected nothing: that is a failure of this script, not a pass.
exit "$status"
