#!/usr/bin/env bash
# The main job: set up, then run the quick-start notebook headless in a real ipykernel
# on the local pool, printing each cell and its results.
set -euo pipefail
cd "$(dirname "$0")/.."
AZPAR_EXTRAS=test bash scripts/setup.sh
exec "${AZPAR_VENV:-.venv}/bin/python" scripts/run_notebook.py notebooks/01-quickstart.ipynb
