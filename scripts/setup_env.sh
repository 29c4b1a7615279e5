#!/usr/bin/env bash
# Creates the project's virtual environment and installs the pinned stack with the recipe that
# works here (STACK.md): pinned requirements, then TFF 0.87 with --no-deps, then this project.
# Idempotent: when the venv already matches the requirement files it returns at once.
# Usage: scripts/setup_env.sh [VENV_DIR]   (default: .venv, or $FEDPARA_VENV)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-${FEDPARA_VENV:-.venv}}"
stamp="$venv/.fedpara-setup-stamp"
want="$(cat requirements.txt requirements-nodeps.txt setup.py | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

python=""
for candidate in python3.11 python3.10 python3.9 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 11)))'; then
    python="$candidate"; break
  fi
done
if [ -z "$python" ]; then
  echo "setup_env: need Python 3.9 to 3.11 (TensorFlow Federated 0.87 does not support 3.12+)" >&2
  exit 1
fi

echo "setup_env: creating $venv with $("$python" --version) (first use only; a few minutes cold)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# pip install, without the registry mirror's "Location ... is ignored" warnings.
pip_install() {
  "$venv/bin/python" -m pip --disable-pip-version-check -q install "$@" \
    2> >(grep -v 'is ignored: it is neither' >&2)
}
pip_install -r requirements.txt
pip_install --no-deps -r requirements-nodeps.txt
pip_install --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "setup_env: ready ($venv)"
