#!/usr/bin/env bash
# Creates the optional Keras 3 environment (Keras 3 on JAX, no TensorFlow, no TFF) in which the
# layers of keras_layers are tested (make test-keras3) and benchmarked
# (KERAS_BACKEND=jax python -m benchmarks.layer_speed). Idempotent, like scripts/setup_env.sh.
# The project itself is not installed there: run from the repository root (it is on sys.path).
# Usage: scripts/setup_keras3_env.sh [VENV_DIR]   (default: .venv-keras3)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-keras3}"
# shellcheck source=scripts/venv_common.sh
source scripts/venv_common.sh
want="$(sha256sum requirements-keras3.txt | cut -d' ' -f1)"
venv_is_current "$venv" "$want" && exit 0

python="$(find_python 10 12 python3.12 python3.11 python3.10 python3)" || {
  echo "setup_keras3_env: need Python 3.10 to 3.12 (Keras 3.15 with JAX 0.4.38)" >&2
  exit 1
}
echo "setup_keras3_env: creating $venv with $("$python" --version)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
venv_pip_install "$venv" -r requirements-keras3.txt
echo "$want" > "$venv/.fedpara-setup-stamp"
echo "setup_keras3_env: ready ($venv); it has no TensorFlow: run it with KERAS_BACKEND=jax"
