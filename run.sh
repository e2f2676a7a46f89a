#!/usr/bin/env bash
# The main job on the embedded data: builds the data, pre-trains UP-DETR, fine-tunes
# DETR from it and from scratch transformers, and writes the report into runs/main/.
# Usage: bash run.sh [extra arguments for `updetr-lite main`]
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
exec updetr-lite main --preset lite --out runs/main "$@"
