#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine, idempotently:
# a virtual environment in .venv with the package (editable, with its azure extra) and the test
# dependency group (pyproject's [dependency-groups]: what developing needs, not in the wheel),
# the pinned npm packages (Azurite; configurable-http-proxy for the JupyterHub tests) from
# package-lock.json, and Debian's chromium for the
# JupyterLab browser tests (Playwright drives it; its own browser download is not used).
# Variables: PYTHON (interpreter to build the venv from, default python3),
#            AZPAR_VENV (default .venv), AZPAR_EXTRAS (default azure), AZPAR_GROUPS (dependency
#            groups, space-separated, default test; empty for none),
#            AZPAR_SETUP=light: only the Python environment (no npm, no apt-get, no root), which is
#            what scripts/quickstart.sh needs to run a notebook on the local pool.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${AZPAR_VENV:-.venv}
EXTRAS=${AZPAR_EXTRAS-azure}
DEP_GROUPS=${AZPAR_GROUPS-test}  # not GROUPS: bash sets that one to the user's group ids
SETUP=${AZPAR_SETUP:-full}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
GROUP_ARGS=()
for group in $DEP_GROUPS; do GROUP_ARGS+=(--group "$group"); done  # needs pip 25.1+, upgraded above
echo "setup: installing azpar-magic[$EXTRAS]${DEP_GROUPS:+ and the dependency groups: $DEP_GROUPS} into $VENV"
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]" "${GROUP_ARGS[@]}" 2>&1 | { grep -v "^WARNING: Location" || true; }
"$VENV/bin/python" -c "import azpar_magic, dill, IPython; print('setup: azpar_magic', azpar_magic.__version__, 'ready')"

if [ "$SETUP" = light ]; then
  exit 0
fi

if [ -f package-lock.json ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: npm not found; installing Node.js from Debian's packages"
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  if [ ! -x node_modules/.bin/azurite-blob ] || [ ! -x node_modules/.bin/configurable-http-proxy ] \
     || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "setup: npm ci (Azurite, configurable-http-proxy; pinned by package-lock.json)"
    npm ci --no-audit --no-fund --loglevel=error
  fi
fi

if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium (for tests/jupyterlab)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
