#!/usr/bin/env bash
# Creates the project's virtual environment and installs the pinned stack with the recipe that
# works here (STACK.md): pinned requirements, then TFF 0.87 with --no-deps, then this project.
# Idempotent: when the venv already matches the requirement files it returns at once.
# Usage: scripts/setup_env.sh [VENV_DIR]   (default: .venv, or $FEDPARA_VENV)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-${FEDPARA_VENV:-.venv}}"
# shellcheck source=scripts/venv_common.sh
source scripts/venv_common.sh
want="$(cat requirements.txt requirements-nodeps.txt setup.py | sha256sum | cut -d' ' -f1)"
venv_is_current "$venv" "$want" && exit 0

python="$(find_python 9 11 python3.11 python3.10 python3.9 python3)" || {
  echo "setup_env: need Python 3.9 to 3.11 (TensorFlow Federated 0.87 does not support 3.12+)" >&2
  exit 1
}

echo "setup_env: creating $venv with $("$python" --version) (first use only; a few minutes cold)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
venv_pip_install "$venv" -r requirements.txt
venv_pip_install "$venv" --no-deps -r requirements-nodeps.txt
venv_pip_install "$venv" --no-deps --no-build-isolation -e .
echo "$want" > "$venv/.fedpara-setup-stamp"
echo "setup_env: ready ($venv)"
