"""Package boundaries: keras_layers never imports TFF; every layer is registered serializable."""

import subprocess
import sys

import pytest
import tensorflow as tf

import keras_layers as kl


def test_keras_layers_imports_tensorflow_only():
  code = ('import sys, keras_layers; '
          'sys.exit(1 if "tensorflow_federated" in sys.modules else 0)')
  assert subprocess.run([sys.executable, '-c', code], check=False).returncode == 0


def test_every_layer_is_registered_for_deserialization():
  layers = [kl.FedParaDense, kl.PFedParaDense, kl.LowRankDense, kl.FedParaConv1D,
            kl.PFedParaConv1D, kl.LowRankConv1D, kl.FedParaConv2D, kl.PFedParaConv2D,
            kl.LowRankConv2D, kl.FedParaLSTMCell, kl.PFedParaLSTMCell, kl.LowRankLSTMCell,
            kl.FedParaLSTM, kl.PFedParaLSTM, kl.LowRankLSTM, kl.WeightNormLSTMCell,
            kl.WeightNormLSTM]
  for cls in layers:
    assert tf.keras.utils.get_registered_object(f'fedpara>{cls.__name__}') is cls


@pytest.mark.slow
def test_installed_package_has_console_scripts_and_finds_its_flagfiles(tmp_path):
  """`pip install --no-deps .` into a clean venv: four console scripts; `fedpara-train
  --flagfile=NAME.cfg` runs from an unrelated folder with the packaged flagfile."""
  import os  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import site  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
  # The stack itself (TensorFlow, TFF, ...; setuptools and wheel for the build) comes from this
  # environment's site-packages; nothing is downloaded.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(site.getsitepackages()))
  # Built from a copy: an in-tree build would leave build/ and *.egg-info in the repository.
  source = tmp_path / 'source'
  shutil.copytree(repo, source, ignore=shutil.ignore_patterns(
      '.git', '.venv', 'runs', 'build', '*.egg-info', 'bazel-*', '__pycache__'))
  subprocess.run([str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '-q', '--no-deps',
                  '--no-build-isolation', '--no-index', str(source)], check=True,
                 capture_output=True, timeout=300, env=env)
  for script in ('fedpara-train', 'fedpara-compare', 'fedpara-plot', 'fedpara-worker'):
    assert (venv / 'bin' / script).exists(), script
  licenses = list(venv.glob('lib/python*/site-packages/fedpara_tff-*.dist-info/**/LICENSE'))
  assert licenses and 'Apache License' in licenses[0].read_text(), 'the wheel carries no LICENSE'
  installed = subprocess.run(
      [str(venv / 'bin' / 'python'), '-c', 'import experiments.flagfiles as f, keras_layers as k; '
       'print(f.CONFIG_DIR, len(f.names()), k.__version__)'],
      capture_output=True, text=True, check=True, env=env, cwd=tmp_path).stdout.split()
  assert installed[0].startswith(str(venv)) and int(installed[1]) >= 15
  work = tmp_path / 'elsewhere'
  work.mkdir()
  result = subprocess.run(
      [str(venv / 'bin' / 'fedpara-train'), '--flagfile=mnist5k_quick.cfg', '--rounds=1',
       '--clients=4', '--clients_per_round=2', '--output_dir=run', '--progress=false',
       f'--cache_dir={tmp_path / "cache"}'], cwd=work, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  with open(work / 'run' / 'run.json') as f:
    assert '"model": "small_cnn"' in f.read()   # from the packaged mnist5k_quick.cfg
