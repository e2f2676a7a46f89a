#!/usr/bin/env bash
# JupyterLab on the project's kernel (updetr-lite), opened on notebooks/.
# Caches and Jupyter's config/runtime folders stay in .cache/ (scripts/venv.sh sets them).
# Usage: bash scripts/lab.sh [extra jupyter lab arguments, e.g. --port 8899 --no-browser]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
# the kernel finds the kit even where it is not pip-installed (e.g. a copied checkout)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$JUPYTER_RUNTIME_DIR" "$MPLCONFIGDIR" "$IPYTHONDIR"
ARGS=(--notebook-dir "$ROOT/notebooks")
if [ "$(id -u)" = 0 ]; then
  ARGS+=(--allow-root)
fi
exec jupyter lab "${ARGS[@]}" "$@"
