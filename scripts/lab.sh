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
# Lab opens working copies in notebooks/work/ (git-ignored), never the committed notebooks:
# autosave and saved outputs would otherwise rewrite them and dirty `git status`. Copies are
# made once (your edits stay); delete notebooks/work/ to start again from the committed ones.
# The committed source is notebooks/NN_*.py (jupytext); the .ipynb is its output-free pair.
WORK="$ROOT/notebooks/work"
mkdir -p "$WORK"
for nb in "$ROOT"/notebooks/[0-9][0-9]_*.ipynb; do
  [ -e "$WORK/$(basename "$nb")" ] || cp "$nb" "$WORK/"
done
echo "JupyterLab on working copies in $WORK (git-ignored)"
ARGS=(--notebook-dir "$WORK")
if [ "$(id -u)" = 0 ]; then
  ARGS+=(--allow-root)
fi
exec jupyter lab "${ARGS[@]}" "$@"
