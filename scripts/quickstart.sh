#!/usr/bin/env bash
# The main job: set up, then run the quick-start notebook headless in a real ipykernel
# on the local pool, printing each cell and its results. Sets up only what that needs
# (a venv with the package and its `examples` extra): no Node, no browser, no root.
set -euo pipefail
cd "$(dirname "$0")/.."
AZPAR_SETUP=light AZPAR_EXTRAS=${AZPAR_EXTRAS:-examples} AZPAR_GROUPS= bash scripts/setup.sh
exec "${AZPAR_VENV:-.venv}/bin/python" scripts/run_notebook.py notebooks/01-quickstart.ipynb
