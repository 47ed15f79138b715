#!/usr/bin/env bash
# Make the two virtual environments this repo runs in, cached outside the clone
# and keyed by the lock files, then point ./.venv and ./.venv-labelstudio at them.
#
#   main venv          cxrkit + torch/ultralytics/pydicom/prefect/dvc/label-studio-ml   (requirements.lock)
#   labelstudio venv   the Label Studio server alone (requirements-labelstudio.lock):
#                      its Django-era pins (redis<5.3, pytz<2023) cannot share a venv with Prefect 3.9.
#
# A cached venv is reused only if it finished installing (marker file .complete),
# so a killed install is redone, never half-used.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (torch wheels on disk are cp311)"'
CACHE=${CXR_CACHE_DIR:-$HOME/.cache/cxrkit}
mkdir -p "$CACHE"

LABEL_STUDIO_ML=label-studio-ml==1.0.9  # installed --no-deps on top of requirements.lock (see README)
key() { { cat "$@"; echo "$LABEL_STUDIO_ML"; } | sha256sum | cut -c1-16; }

pip_quiet() {  # pip_quiet <venv> <pip args...>: pip's output goes to a log, shown only on failure
  local dir=$1; shift
  if ! "$dir/bin/pip" install --quiet "$@" >"$dir.pip.log" 2>&1; then
    grep -v '^WARNING: Location' "$dir.pip.log" | tail -40
    echo "bootstrap: pip install $* failed (full log: $dir.pip.log)" >&2
    return 1
  fi
}

make_venv() {  # make_venv <dir> <pip install args...>
  local dir=$1; shift
  echo "bootstrap: creating $dir (first run only; a few minutes)"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  pip_quiet "$dir" --upgrade pip setuptools wheel
  pip_quiet "$dir" "$@"
}

MAIN="$CACHE/venv-$(key requirements.lock)"
if [ ! -f "$MAIN/.complete" ]; then
  make_venv "$MAIN" -r requirements.lock
  # label-studio-ml 1.0.9 pins Flask 1.1.2 / Werkzeug 2.0.2 (known CVEs). We install it
  # without those pins; requirements.lock carries current Flask/Werkzeug, which it runs on.
  pip_quiet "$MAIN" --no-deps "$LABEL_STUDIO_ML"
  touch "$MAIN/.complete"
fi

LS="$CACHE/labelstudio-$(key requirements-labelstudio.lock)"
if [ ! -f "$LS/.complete" ]; then
  make_venv "$LS" -r requirements-labelstudio.lock
  touch "$LS/.complete"
fi

# The project itself: an editable install of this clone (seconds; re-pointed every run,
# so a cached venv always runs the clone it was called from).
pip_quiet "$MAIN" --no-deps --no-build-isolation -e .

ln -sfn "$MAIN" .venv
ln -sfn "$LS" .venv-labelstudio
echo "bootstrap: ready (.venv -> $MAIN)"
