#!/usr/bin/env bash
# Create or reuse .venv in the project root and install the kit with its extras.
# Sourced by run.sh and test.sh. Re-installs only when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
# Keep every cache inside the project, never in $HOME.
export XDG_CACHE_HOME="$ROOT/.cache/xdg"
export MPLCONFIGDIR="$ROOT/.cache/matplotlib"
export TORCH_HOME="$ROOT/.cache/torch"
export JUPYTER_CONFIG_DIR="$ROOT/.cache/jupyter/config"
export JUPYTER_DATA_DIR="$ROOT/.cache/jupyter/data"
export JUPYTER_RUNTIME_DIR="$ROOT/.cache/jupyter/runtime"
export IPYTHONDIR="$ROOT/.cache/ipython"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# IPython and matplotlib warn (and fall back to a temp dir) when their folder is missing
mkdir -p "$MPLCONFIGDIR" "$IPYTHONDIR" "$JUPYTER_RUNTIME_DIR"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[updetr-lite] creating $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.updetr-lite-installed"
HASH="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$HASH" ]; then
  echo "[updetr-lite] installing the kit into $VENV (torch first: about a minute where wheels are local)"
  "$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/pip" install -q -e "$ROOT[notebooks,dev]"
  # The project kernel that every notebook names (metadata.kernelspec).
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name updetr-lite \
    --display-name "Python (updetr-lite)" >/dev/null
  echo "$HASH" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
