#!/usr/bin/env bash
# Make the two virtual environments this repo runs in, cached outside the clone
# and keyed by the lock files, then point ./.venv and ./.venv-labelstudio at them.
#
#   main venv          cxrkit + torch/ultralytics/pydicom/prefect/dvc/label-studio-ml   (requirements.lock)
#   labelstudio venv   the Label Studio server alone (requirements-labelstudio.lock):
#                      its Django-era pins (redis<5.3, pytz<2023) cannot share a venv with Prefect 3.9.
#   s3 venv            moto's S3 server alone (requirements-s3.lock), the scale-out stack's object
#                      store: a server process of its own, whose boto3 need not match DVC's botocore.
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

S3="$CACHE/s3-$(key requirements-s3.lock)"
if [ ! -f "$S3/.complete" ]; then
  make_venv "$S3" -r requirements-s3.lock
  touch "$S3/.complete"
fi

# The project itself: a per-clone layer over the cached environment. Several clones share one
# cached venv, so nothing of a clone is installed into it (an editable install there made every
# clone's `cxr` run the clone that bootstrapped last). Instead ./.venv is a small venv of this
# clone's own, without packages: a .pth file puts this clone's root on sys.path, then adds the
# cached venv's site-packages; its bin/ holds the cached venv's commands (gunicorn, dvc,
# prefect, pytest, ...) with this venv's python in their #! line, and `cxr`. Whatever a command
# typed in this clone starts, it imports this clone's cxrkit, flows and ml_backend.
if compgen -G "$MAIN/lib/python3.11/site-packages/__editable__*cxrkit*" >/dev/null; then
  "$MAIN/bin/pip" uninstall --quiet --yes cxrkit >/dev/null 2>&1 || true  # left by an older bootstrap
fi
VENV="$PWD/.venv"
if [ -L "$VENV" ]; then rm "$VENV"; fi  # an older bootstrap linked .venv to the cache
if [ ! -x "$VENV/bin/python" ]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv --without-pip "$VENV"
fi
site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
LAYER_SITE=$(site_of "$VENV")
printf '%s\n' "$PWD" >"$LAYER_SITE/00-cxrkit-checkout.pth"
printf "import site; site.addsitedir('%s')\n" "$(site_of "$MAIN")" >"$LAYER_SITE/01-cxrkit-environment.pth"
for script in "$MAIN"/bin/*; do
  name=$(basename "$script")
  case "$name" in python* | pip* | activate* | Activate*) continue ;; esac
  [ -f "$script" ] || continue
  first=$(head -c 300 "$script" | head -n 1 | tr -d '\0')  # binaries (docker-compose) have no #! line
  case "$first" in
    "#!$MAIN/bin/python"*) ;;
    *) ln -sfn "$script" "$VENV/bin/$name"; continue ;;  # not Python: the cache's own file
  esac
  sed "1s|^#!.*|#!$VENV/bin/python|" "$script" >"$VENV/bin/.$name.tmp"
  chmod +x "$VENV/bin/.$name.tmp"
  mv "$VENV/bin/.$name.tmp" "$VENV/bin/$name"
done
# The __main__ guard: the ingest and generator workers start by forkserver, which imports this file.
printf '#!%s\nimport sys\n\nfrom cxrkit.cli import app\n\nif __name__ == "__main__":\n    sys.exit(app())\n' \
  "$VENV/bin/python" >"$VENV/bin/.cxr.tmp"
chmod +x "$VENV/bin/.cxr.tmp"
mv "$VENV/bin/.cxr.tmp" "$VENV/bin/cxr"

ln -sfn "$LS" .venv-labelstudio
ln -sfn "$S3" .venv-s3
echo "bootstrap: ready (.venv: this clone over $MAIN)"
