#!/usr/bin/env bash
# One short GPU check of the layers on Keras 3 / JAX: the any-Keras layer tests and
# benchmarks/layer_speed.py, on a machine with Python 3.12 and JAX but no Keras and no internet.
# First, here, fetch the wheels it installs there (about 11 MB without numpy):
#   .venv-keras3/bin/pip download --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform any -d runs/gpu_wheels \
#     keras==3.15.1 absl-py==2.5.1 pytest==8.3.4 pytest-timeout==2.3.1 && rm runs/gpu_wheels/numpy-*
# then run `bash benchmarks/gpu_check.sh` there from the repository root, with runs/gpu_wheels.
# Output: $OUT/gpu_check.txt (docs/results/layer_speed_h200_keras3_jax.txt is one).
set -u
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
{
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python3 --version
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
  python3 -c "import keras; print('preinstalled keras', keras.__version__)" 2>/dev/null || echo "no keras"
  wheels=(keras==3.15.1 absl-py==2.5.1 pytest==8.3.4 pytest-timeout==2.3.1)
  python3 -m pip install -q --no-index --find-links runs/gpu_wheels "${wheels[@]}" 2>&1 | tail -2 ||
    true
  python3 -c "import keras" 2>/dev/null || python3 -m pip install -q --break-system-packages \
      --no-index --find-links runs/gpu_wheels "${wheels[@]}" 2>&1 | tail -2
  export KERAS_BACKEND=jax
  python3 -c "import keras; print('keras', keras.__version__, keras.backend.backend())"
  echo "== the any-Keras layer tests on the GPU"
  timeout 200 python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/keras3 tests/keras3 2>&1 |
    tail -2
  echo "== python -m benchmarks.layer_speed (full sizes)"
  timeout 300 python3 -m benchmarks.layer_speed 2>&1 | grep -v "Warning\|self\.\|^I1\|^W1\|INFO" |
    tail -7
} 2>&1 | tee "$out/gpu_check.txt"
