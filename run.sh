#!/usr/bin/env bash
# The main job on the embedded data: builds the data, pre-trains UP-DETR, fine-tunes
# DETR from it and from scratch transformers, and writes the report into runs/main/
# (the lite runs of Table 1, Figures 1, 5 and 6: reproduce.plan.MAIN_ARTEFACTS).
# Usage: bash run.sh [extra arguments for `python -m reproduce.run`, e.g. --set ...]
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
exec python -m reproduce.run --scale lite --only table1,fig1,fig5,fig6 --out runs/main "$@"
