#!/usr/bin/env bash
# The package as a Keras user installs it: build the wheel, install it (not the source tree) into
# fresh venvs of Python 3.12 and 3.13 with Keras 3 on JAX (requirements-keras3.txt), and of 3.12
# with Keras 3 on TensorFlow 2.21 (requirements-keras3-tf.txt); in each, check that keras_layers
# comes from the installed wheel, that fedpara_tff and experiments refuse in one line naming
# their extra (no TFF there), and run the layer tests of `make test-keras3` (they include
# training a FedPara and a pFedPara model) against the installed package.
# Needs the project venv (make setup) for the build and pyenv's Python 3.12 and 3.13.
# Usage: scripts/install_test.sh   (make test-install; CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
# shellcheck source=scripts/venv_common.sh
source scripts/venv_common.sh

# pyenv_python X.Y: the interpreter of pyenv's newest X.Y (pyenv's shims need a selected version).
pyenv_python() {
  local root candidate
  root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
  candidate="$(ls -d "$root"/versions/"$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -n1)"
  [ -n "$candidate" ] || command -v "python$1" || {
    echo "install_test: no Python $1 (looked in $root/versions and PATH)" >&2; return 1; }
  echo "$candidate"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "== build the wheel (from a copy of the tracked files)"
mkdir "$work/source"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$work/source"
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/source" \
  >/dev/null
wheel="$(ls "$work"/dist/fedpara_tff-*.whl)"
echo "   $(basename "$wheel")"

# The layer tests of `make test-keras3` (and the modules they import), copied so that the
# package under test can only be the installed one.
mkdir -p "$work/tests/tests"
cp tests/__init__.py tests/numpy_reference.py "$work/tests/tests/"
cp README.md "$work/tests/"
cp -r tests/keras3 "$work/tests/tests/"
# shellcheck disable=SC2046
cp $(make -s -C "$repo" print-keras3-tests | tr ' ' '\n' | grep '\.py$') "$work/tests/tests/"

run_case() {   # run_case PYTHON_VERSION BACKEND LOCK_FILE
  local version="$1" backend="$2" lock="$3" venv="$work/venv-$1-$2"
  echo "== Python $version, Keras 3 on $backend"
  "$(pyenv_python "$version")" -m venv "$venv"
  venv_pip_install "$venv" -r "$lock" "$wheel"
  (
    cd "$work/tests"
    export KERAS_BACKEND="$backend" TF_CPP_MIN_LOG_LEVEL=3
    "$venv/bin/python" - <<'PY'
import importlib, importlib.metadata, sys
import keras_layers
assert '/site-packages/' in keras_layers.__file__, keras_layers.__file__
core = [r for r in importlib.metadata.requires('fedpara-tff') if 'extra ==' not in r]
assert core and not any('tensorflow' in r or '==' in r for r in core), core
for package, extra in (('fedpara_tff', '[tff]'), ('experiments', '[experiments]')):
  try:
    importlib.import_module(package)
  except ImportError as e:
    assert extra in str(e) and '\n' not in str(e), str(e)
  else:
    sys.exit(f'{package} imported without its extra')
print(f'   keras_layers {keras_layers.__version__} from {keras_layers.__file__}; '
      f'core requirements {core}')
PY
    tests=(tests/keras3)
    for module in tests/test_*.py; do tests+=("$module"); done
    "$venv/bin/python" -m pytest -q -p no:cacheprovider --confcutdir=tests/keras3 \
      -p tests.keras3.seeding "${tests[@]}"
  )
  rm -rf "$venv"
}

run_case 3.12 jax requirements-keras3.txt
run_case 3.13 jax requirements-keras3.txt
run_case 3.12 tensorflow requirements-keras3-tf.txt
echo "install_test: the wheel works on every case"
