#!/usr/bin/env bash
# Creates the optional Keras 3 environment (Keras 3 on JAX, no TensorFlow, no TFF) in which the
# layers of keras_layers are tested (make test-keras3) and benchmarked
# (KERAS_BACKEND=jax python -m benchmarks.layer_speed). Idempotent, like scripts/setup_env.sh.
# The project itself is not installed there: run from the repository root (it is on sys.path).
# Usage: scripts/setup_keras3_env.sh [VENV_DIR]   (default: .venv-keras3)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-keras3}"
stamp="$venv/.fedpara-setup-stamp"
want="$(sha256sum requirements-keras3.txt | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
python=""
for candidate in python3.12 python3.11 python3.10 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
    python="$candidate"; break
  fi
done
if [ -z "$python" ]; then
  echo "setup_keras3_env: need Python 3.10 to 3.12 (Keras 3.15 with JAX 0.4.38)" >&2
  exit 1
fi
echo "setup_keras3_env: creating $venv with $("$python" --version)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip --disable-pip-version-check -q install -r requirements-keras3.txt \
    2> >(grep -v 'is ignored: it is neither' >&2)
echo "$want" > "$stamp"
echo "setup_keras3_env: ready ($venv)"
