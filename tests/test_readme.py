"""The README and docs/USAGE.md: their Python examples run as written, the README stays one
screen of quick start (under 250 lines) and its links resolve."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
USAGE = ROOT / 'docs' / 'USAGE.md'


def _blocks(path):
  return re.findall(r'```python\n(.*?)```', path.read_text(encoding='utf-8'), re.S)


def _run(blocks, name):
  """Runs the blocks in order in one namespace, as a reader pasting them would."""
  namespace = {}
  for block in blocks:
    exec(compile(block, name, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_readme_is_short_and_its_links_resolve():
  text = README.read_text(encoding='utf-8')
  assert len(text.splitlines()) < 250
  for target in re.findall(r'\]\(([^)#]+)(?:#[^)]*)?\)', text):
    if not target.startswith('http'):
      assert (ROOT / target).exists(), target


def test_readme_python_examples_run():
  blocks = _blocks(README)
  assert blocks, 'README lost its python example'
  namespace = _run(blocks, 'README.md')
  assert namespace['served'].count_params() == namespace['plain'].count_params()
  # Issue 38: the quick start showed a FedPara model larger than the plain one (374 vs 330).
  import keras_layers as kl  # pylint: disable=g-import-not-at-top
  assert kl.total_params(namespace['model']) == (28426, 8828)


@pytest.mark.slow
def test_usage_python_examples_run():
  blocks = _blocks(USAGE)
  assert len(blocks) >= 5, 'docs/USAGE.md lost its python examples'
  namespace = _run(blocks, 'docs/USAGE.md')
  # The federated examples train on mixed clients: each holds several digits (one class per
  # client would make the printed per-client accuracy meaningless).
  for dataset in namespace['clients']:
    labels = np.concatenate([batch['y'].numpy() for batch in dataset])
    assert len(np.unique(labels)) >= 5, f'a client holds only digits {np.unique(labels)}'
  # The quantization example quantizes something on its own model.
  assert namespace['q_bytes'] < 0.5 * namespace['plain_bytes']
  assert namespace['store'].committed_round() == 1


@pytest.mark.slow   # a binary in a subprocess, end to end (pytest.ini)
def test_the_tff_example_run_as_a_script_prints_no_tensorflow_log_noise(tmp_path):
  """The TFF pipeline block of docs/USAGE.md as a user's script: only its own print lines."""
  (block,) = [b for b in _blocks(USAGE) if 'build_weighted_fed_avg' in b]
  script = tmp_path / 'pipeline.py'
  script.write_text(block, encoding='utf-8')
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  env['PYTHONPATH'] = str(ROOT)
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = (result.stdout + result.stderr).strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('OrderedDict([(\'bytes_uploaded\''), lines
