"""The training binary on a pretrained model: adapters, head-only fine-tuning, the weights file
in the run's identity. Bytes are counted by hand from the MLP's shapes (784 - 200 - 200 - 10)."""

import dataclasses
import hashlib
import json
import os

import pytest

from experiments import pretraining
from experiments import run_config
from experiments import runner
from tests import run_support as rs

RANK = 2
LOGITS = 200 * 10 + 10
# FedPara adapters on fc1 (784x200) and fc2 (200x200): x1, y1, x2, y2 of each; logits trains.
ADAPTER_ELEMENTS = 2 * RANK * (784 + 200) + 2 * RANK * (200 + 200) + LOGITS   # 7,546


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  """A plain MLP pretrained on digits 0-4 (one epoch), as `experiments.pretrain` writes it."""
  path = str(tmp_path_factory.mktemp('pretrained') / 'mlp.h5')
  summary = pretraining.pretrain('mnist5k', None, False, 'mlp', ['0', '1', '2', '3', '4'], 1, 64,
                              1e-3, 0, path, False)
  assert summary['classes'] == [0, 1, 2, 3, 4]
  assert summary['test_accuracy_pretraining_classes'] > 0.8
  return path


def test_a_failed_pretraining_write_leaves_no_file(tmp_path, monkeypatch):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def half_then_fail(self, path, *args, **kwargs):
    with open(path, 'wb') as f:
      f.write(b'half a file')
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(tf.keras.Model, 'save_weights', half_then_fail)
  with pytest.raises(OSError, match='No space left'):
    pretraining.pretrain('mnist5k', None, False, 'mlp', ['0'], 1, 64, 1e-3, 0,
                         str(tmp_path / 'w.h5'), False)
  assert list(tmp_path.iterdir()) == []


def _sha256(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _identity(run):
  with open(os.path.join(run.output_dir, 'run.json')) as f:
    return json.load(f)


def test_adapter_run_sends_the_adapters_and_the_head_only(tmp_path, weights):
  run = rs.config(tmp_path, parameterization='fedpara', rank=RANK, pretrained=weights,
                  adapters=True, trainable_layers=('logits',))
  runner.run(run)
  for row in rs.rows(run.output_dir):
    assert int(row['bytes_uploaded']) == run.clients_per_round * ADAPTER_ELEMENTS * 4
    assert int(row['bytes_downloaded']) == run.clients_per_round * ADAPTER_ELEMENTS * 4
  text = json.dumps(_identity(run))
  assert _sha256(weights) in text and weights not in text   # the weights, not where they lie
  # The same run on other weights does not resume it.
  changed = tmp_path / 'other.h5'
  changed.write_bytes(open(weights, 'rb').read() + b'\0')
  with pytest.raises(ValueError, match=r'pretrained_sha256'):
    runner.run(dataclasses.replace(run, pretrained=str(changed), rounds=3))


def test_head_only_fine_tuning_freezes_the_rest(tmp_path, weights):
  run = rs.config(tmp_path, parameterization='original', pretrained=weights,
                  trainable_layers=('logits',), backend='tf')
  runner.run(run)
  assert {int(row['bytes_uploaded']) for row in rs.rows(run.output_dir)} == {
      run.clients_per_round * LOGITS * 4}


@pytest.mark.parametrize('overrides, message', [
    (dict(adapters=True), r'^adapters=True trains adapters on a pretrained model: give '
                          r'pretrained=PATH'),
    (dict(adapters=True, pretrained='w.h5', parameterization='original'),
     r"^adapters take their delta from parameterization fedpara, pfedpara, lowrank; got "
     r"parameterization='original'"),
    (dict(adapter_alpha=4.0), r'^adapter_alpha=4.0 scales adapters; add adapters=True'),
    (dict(pretrained='w.h5'), r"^pretrained='w.h5' starts parameterization=original .* got "
                              r"parameterization='fedpara' without adapters"),
    (dict(trainable_layers=('logits',)), r"^trainable_layers=\['logits'\] picks what trains "
                                         r"of a pretrained model; give pretrained=PATH"),
    (dict(adapters=True, pretrained='w.h5', adapter_alpha=-1.0), r'adapter_alpha'),
    (dict(adapters=True, pretrained='w.h5', factor_lr_scale='safe'),
     r"^adapters take neither factor_lr_scale nor jacobian_correction .* got "
     r"factor_lr_scale='safe', jacobian_correction=0.0"),
    (dict(adapters=True, pretrained='w.h5', jacobian_correction=1.0),
     r'^adapters take neither factor_lr_scale nor jacobian_correction'),
])
def test_pretrained_settings_are_refused_in_one_line(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    rs.config(tmp_path, **{'parameterization': 'fedpara', **overrides})


def test_a_missing_or_foreign_weights_file_is_refused_in_one_line(tmp_path, weights):
  with pytest.raises(ValueError, match=r"^pretrained='[^']*nothing.h5': no such file"):
    runner.prepare(rs.config(tmp_path, parameterization='original',
                             pretrained=str(tmp_path / 'nothing.h5')))
  with pytest.raises(ValueError, match=r"does not hold the weights of model 'small_cnn'"):
    runner.prepare(rs.config(tmp_path, model='small_cnn', parameterization='original',
                             pretrained=weights))
  with pytest.raises(ValueError, match=r"^trainable_layers names layers not in the model: "
                                       r"\['nope'\]; the model has \["):
    runner.prepare(rs.config(tmp_path, parameterization='original', pretrained=weights,
                             trainable_layers=('nope',)))
  assert run_config.RunConfig.pretrained == ''


def test_pretraining_a_text_set_takes_no_classes(tmp_path):
  with pytest.raises(ValueError, match=r"^classes=0,1 picks labels of an image data set; "
                                       r"dataset='shakespeare' is text: leave classes out"):
    pretraining.pretrain('shakespeare', None, False, 'lstm', ['0', '1'], 1, 64, 1e-3, 0,
                         str(tmp_path / 'w.h5'), False)
  assert list(tmp_path.iterdir()) == []


def _warm_start_eval(*argv):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, '-m', 'experiments.analysis.warm_start_eval', *argv],
                        capture_output=True, text=True, timeout=300, check=False)


def test_warm_start_eval_converts_a_weights_file(weights, tmp_path):
  import csv  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from experiments import models  # pylint: disable=g-import-not-at-top
  from experiments.data import registry  # pylint: disable=g-import-not-at-top
  table = tmp_path / 'fit.csv'
  done = _warm_start_eval(f'--pretrained={weights}', '--dataset=mnist5k', '--model=mlp',
                          '--variants=lowrank:4', f'--output={table}')
  assert done.returncode == 0, done.stderr[-2000:]
  with open(table, newline='') as f:
    rows = {(r['variant'], r['init']): r for r in csv.DictReader(f)}
  # Independently: the weights file's model, its test accuracy, and the rank-4 truncated SVD's
  # relative error of each hidden kernel (Eckart-Young), logits kept plain.
  data = registry.load('mnist5k', None)
  model = models.plain_model('mlp', data.input_shape, data.num_classes)
  model.load_weights(weights)
  predicted = model.predict(data.x_test, verbose=0).argmax(axis=-1)
  assert float(rows[('original', '-')]['test_accuracy']) == pytest.approx(
      np.mean(predicted == data.y_test), abs=1e-4)
  want = []
  for name in ('fc1', 'fc2'):
    singular = np.linalg.svd(model.get_layer(name).kernel.numpy().astype(np.float64),
                             compute_uv=False)
    want.append(np.sqrt(np.sum(singular[4:] ** 2) / np.sum(singular ** 2)))
  got = [float(e) for e in rows[('lowrank:4', 'fit')]['fit_errors'].split()]
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert int(rows[('lowrank:4', 'fit')]['parameters']) == 4 * (784 + 200) + 200 + 4 * (
      200 + 200) + 200 + LOGITS


def test_warm_start_eval_needs_what_a_weights_file_was_trained_as(weights):
  done = _warm_start_eval(f'--pretrained={weights}', '--model=mlp')
  assert done.returncode != 0 and 'Traceback' not in done.stderr
  assert '--pretrained needs --dataset and --model' in done.stderr
