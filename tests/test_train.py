"""The training binary's runs end to end: every parameterisation and its outputs, both
backends, the algorithms through the runner, the LSTM."""

import functools
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import fedpara_tff
from experiments import checkpoints
from experiments import models
from experiments import run_config
from experiments import run_io
from experiments import runner
from tests import run_support as rs


def _travelling_elements(config):
  """Trainable elements that travel each way, from the model itself (factors + globals)."""
  summary_model = models.build(config.model, (28, 28, 1), 10, config.parameterization,
                               gamma=config.gamma, keep_plain=config.keep_plain)
  if config.parameterization == 'local':
    return 0
  local_layers = config.local_layers if config.parameterization == 'fedper' else ()
  kinds = fedpara_tff.classify_variables(summary_model, local_layers)
  sizes = {v.name: int(np.prod(v.shape)) for v in summary_model.variables}
  return sum(sizes[name] for name, kind in kinds.items() if kind in ('factor', 'global'))


def _tensorboard_tags(run_dir):
  tags = set()
  for path in glob.glob(os.path.join(run_dir, 'tensorboard', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  return tags


@pytest.mark.parametrize('parameterization', models.PARAMETERIZATIONS)
def test_two_rounds_write_csv_tensorboard_checkpoint_and_plot(tmp_path, parameterization):
  config = rs.config(tmp_path, parameterization=parameterization)
  summary = runner.run(config)
  rows = rs.rows(config.output_dir)
  assert [r['round'] for r in rows] == ['1', '2'] and summary['rounds'] == 2
  per_round = config.clients_per_round * 4 * _travelling_elements(config)
  for row in rows:
    assert int(row['bytes_uploaded']) == per_round and int(row['bytes_downloaded']) == per_round
    assert np.isfinite(float(row['train_loss'])) and 0 <= float(row['train_accuracy']) <= 1
  assert float(rows[-1]['cumulative_gb']) == pytest.approx(4 * per_round / 1e9, rel=1e-5)
  personalized = parameterization in run_config.PERSONALIZED
  assert (rows[-1]['personalized_accuracy'] != '') == personalized
  assert (rows[-1]['test_accuracy'] != '') == (not personalized)
  tags = _tensorboard_tags(config.output_dir)
  assert {'train_loss', 'bytes_uploaded', 'cumulative_gb'} <= tags
  # Issue 40: every factorised run records its aggregation error; a plain or all-local one none.
  if parameterization in ('fedpara', 'lowrank', 'pfedpara'):
    for row in rows:
      for column in run_io.AGGREGATION_ERROR_COLUMNS:
        assert 0 < float(row[column]) < 10, (column, row[column])
      assert float(row['aggregation_error_max']) >= float(row['aggregation_error_mean'])
    assert {'aggregation_error_mean', 'aggregation_error/fc1',
            'aggregation_error_kernel/fc2'} <= tags, sorted(tags)   # the MLP's hidden layers
  elif parameterization in ('original', 'local'):
    assert all(row[c] == '' for row in rows for c in run_io.AGGREGATION_ERROR_COLUMNS)
  assert checkpoints.latest(os.path.join(config.output_dir, 'checkpoints'))[0] == 2
  with open(os.path.join(config.output_dir, run_io.PLOT_FILE), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(os.path.join(config.output_dir, run_io.SUMMARY_FILE)) as f:
    # Strict JSON: a metric that does not apply is null, never a bare NaN.
    summary = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f'non-strict JSON {c}'))
  assert summary['gb_total'] == pytest.approx(4 * per_round / 1e9)
  assert (summary['personalized_accuracy'] is None) == (not personalized)


def test_a_second_run_in_the_same_process_evaluates(tmp_path_factory, tmp_path):
  """Runs one after another in one process (the tests, `experiments.compare`): the second one's
  evaluation model stays usable. It did not when TFF's client update was traced lazily, between
  rounds ("Your Layer or Model is in an invalid state": a Keras 2 model made before a TFF trace;
  docs/DESIGN.md, "TFF runtime facts")."""
  first = rs.finished(tmp_path_factory, rounds=1)   # run by this process, or by this test
  second = rs.config(tmp_path, rounds=1, seed=1)
  runner.run(second)
  for run in (first, second):
    assert 0 <= float(rs.rows(run.output_dir)[-1]['test_accuracy']) <= 1


@pytest.mark.slow
def test_jacobian_correction_and_matched_scale_change_the_round_alike_on_both_backends(tmp_path):
  """The correction and the lr scale reach the client update (TFF and tf backends agree)."""
  # The MLP (Dense layers): the correction's math on every layer kind is test_jacobian.py's.
  base = dict(model='mlp', rounds=1, clients=4, clients_per_round=2, batch_size=64)
  plain = runner.run(rs.config(tmp_path, 'plain', **base))
  losses = {}
  for backend in ('tff', 'tf'):
    corrected = runner.run(rs.config(tmp_path, 'jc_' + backend, jacobian_correction=5.0,
                                   factor_lr_scale='matched', backend=backend, **base))
    losses[backend] = float(rs.rows(corrected['output_dir'])[0]['train_loss'])
  assert np.isfinite(losses['tff'])
  assert losses['tff'] == pytest.approx(losses['tf'], rel=1e-4)
  assert losses['tff'] != pytest.approx(float(rs.rows(plain['output_dir'])[0]['train_loss']),
                                        rel=1e-4)


@pytest.mark.slow
def test_the_safe_step_rule_reaches_the_client_update_on_both_backends(tmp_path):
  """factor_lr_scale='safe' (alone and with the Jacobian correction, which differentiates
  through it) runs inside TFF's computation and on the tf backend alike, and changes the round."""
  # The MLP (Dense layers) on 128 digits a client: the rule's math on every layer kind is
  # test_step_rule.py's.
  base = dict(model='mlp', rounds=1, clients=4, clients_per_round=2, batch_size=64,
              partition='sampled', examples_per_client=128)
  plain = runner.run(rs.config(tmp_path, 'plain', backend='tf', **base))
  losses = {}
  for backend in ('tff', 'tf'):
    for name, extra in (('safe', {}), ('safe_jc', dict(jacobian_correction=50.0))):
      run = runner.run(rs.config(tmp_path, f'{name}_{backend}', factor_lr_scale='safe',
                               backend=backend, **extra, **base))
      losses[name, backend] = float(rs.rows(run['output_dir'])[-1]['train_loss'])
  for name in ('safe', 'safe_jc'):
    assert np.isfinite(losses[name, 'tff'])
    assert losses[name, 'tff'] == pytest.approx(losses[name, 'tf'], rel=1e-4)
  assert losses['safe', 'tf'] != pytest.approx(
      float(rs.rows(plain['output_dir'])[-1]['train_loss']), rel=1e-5)
  # The correction's gradient is second order in the step: a small but real change.
  assert abs(losses['safe_jc', 'tf'] - losses['safe', 'tf']) > 1e-6


@pytest.mark.slow
def test_the_kernel_mean_runs_on_both_backends_and_lowers_the_aggregation_error(
    tmp_path_factory, tmp_path):
  """Issue 40: --aggregation=kernel_mean through the binary's runner, SCAFFOLD's extra uploads
  included: both backends give the same rounds, the same bytes as the factor mean, and a smaller
  aggregation error in every round; the run records its aggregation in its identity."""
  base = dict(rounds=2, aggregation='kernel_mean', algorithm='scaffold')
  rows = {}
  for backend in ('tff', 'tf'):
    summary = runner.run(rs.config(tmp_path, 'kernel_' + backend, backend=backend, **base))
    rows[backend] = rs.rows(summary['output_dir'])
  factor = rs.rows(runner.run(rs.config(tmp_path, 'factor', rounds=2,
                                        algorithm='scaffold'))['output_dir'])
  for a, b, f in zip(rows['tff'], rows['tf'], factor):
    assert float(a['train_loss']) == pytest.approx(float(b['train_loss']), rel=1e-4)
    assert float(a['aggregation_error_mean']) == pytest.approx(
        float(b['aggregation_error_mean']), rel=1e-3)
    assert a['bytes_uploaded'] == f['bytes_uploaded']
  # Round 1 starts from the same model: the refit can only lower the error there.
  assert float(rows['tf'][0]['aggregation_error_mean']) < 0.9 * float(
      factor[0]['aggregation_error_mean'])
  with open(os.path.join(str(tmp_path / 'kernel_tf'), run_io.RUN_FILE)) as f:
    assert json.load(f)['aggregation'] == 'kernel_mean'
  with open(os.path.join(str(tmp_path / 'factor'), run_io.RUN_FILE)) as f:
    assert 'aggregation' not in json.load(f)   # the default: runs of 0.3 resume


@pytest.mark.slow   # with test_every_algorithm_agrees_across_backends_with_fedpara_and_pfedpara
def test_fedprox_runs_on_the_shared_round_on_both_backends(tmp_path_factory, tmp_path):
  """--algorithm=fedprox reaches the client update (its loss differs from FedAvg's) and the
  two backends agree; the numbers themselves are checked in test_round_equations.py."""
  base = dict(rounds=2, algorithm='fedprox', fedprox_mu=5.0)
  losses = {}
  for backend in ('tff', 'tf'):
    summary = runner.run(rs.config(tmp_path, 'prox_' + backend, backend=backend, **base))
    losses[backend] = [float(r['train_loss']) for r in rs.rows(summary['output_dir'])]
  fedavg = rs.finished(tmp_path_factory, rounds=2)
  np.testing.assert_allclose(losses['tff'], losses['tf'], rtol=1e-4)
  assert losses['tff'][1] != pytest.approx(float(rs.rows(fedavg.output_dir)[1]['train_loss']),
                                           rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('algorithm', ['scaffold', 'feddyn', 'fedadam'])
def test_stateful_algorithms_agree_across_backends_and_resume_exactly(tmp_path, algorithm):
  """SCAFFOLD / FedDyn / FedAdam through the binary's runner: both backends give the same
  rounds, and a run stopped after round 2 and extended to 3 (client states and the server's
  control, Adam's moments for FedAdam, from the checkpoint) ends as the uninterrupted 3-round
  run. The equations: test_round_equations.py, test_algorithm_equations.py."""
  base = dict(algorithm=algorithm, clients=4, clients_per_round=2, checkpoint_every=1,
              server_learning_rate=0.01 if algorithm == 'fedadam' else 1.0)
  losses = {}
  for backend in ('tff', 'tf'):
    summary = runner.run(rs.config(tmp_path, backend, backend=backend, rounds=3, **base))
    losses[backend] = [float(r['train_loss']) for r in rs.rows(summary['output_dir'])]
  np.testing.assert_allclose(losses['tff'], losses['tf'], rtol=1e-4)
  runner.run(rs.config(tmp_path, 'resumed', rounds=2, **base))
  resumed = runner.run(rs.config(tmp_path, 'resumed', rounds=3, **base))
  rows = rs.rows(resumed['output_dir'])
  np.testing.assert_allclose([float(r['train_loss']) for r in rows], losses['tff'], rtol=1e-6)
  assert float(rows[-1]['test_accuracy']) == pytest.approx(
      float(rs.rows(str(tmp_path / 'tff'))[-1]['test_accuracy']), abs=1e-6)


def test_mimelite_runs_on_the_shared_round_and_sends_twice_the_bytes(tmp_path):
  """MIME-lite: clients receive the model and the server momentum, and send their update and
  their full-batch gradient: twice FedAvg's bytes each way."""
  config = rs.config(tmp_path, algorithm='mimelite', client_momentum=0.5)
  summary = runner.run(config)
  rows = rs.rows(config.output_dir)
  per_round = 2 * config.clients_per_round * 4 * _travelling_elements(config)
  assert [r['round'] for r in rows] == ['1', '2'] and summary['rounds'] == 2
  assert all(int(r['bytes_uploaded']) == per_round == int(r['bytes_downloaded']) for r in rows)
  assert all(np.isfinite(float(r['train_loss'])) for r in rows)
  assert 0 <= float(rows[-1]['test_accuracy']) <= 1


@pytest.fixture
def small_lstm(monkeypatch):
  """The zoo's Shakespeare LSTM with 16 units instead of 256: the same layers and code paths,
  a fraction of the tracing and training time (the 256-unit model: test_zoo_builds_...)."""
  monkeypatch.setattr(models, 'shakespeare_lstm',
                      functools.partial(models.shakespeare_lstm, units=16))


@pytest.mark.slow
@pytest.mark.parametrize('weight_norm', [False, True])
def test_lstm_on_the_plays_runs(tmp_path, weight_norm, small_lstm):
  config = rs.config(tmp_path, dataset='shakespeare', model='lstm', partition='natural',
                   sequence_length=12, clients=3, rounds=1, batch_size=16, max_test_examples=64,
                   client_learning_rate=0.5, weight_norm=weight_norm)
  summary = runner.run(config)
  assert summary['rounds'] == 1 and 0 <= summary['test_accuracy'] <= 1
  assert summary['parameters'] < summary['plain_parameters']
  saved = json.load(open(os.path.join(config.output_dir, run_io.RUN_FILE)))
  assert saved.get('weight_norm', False) is weight_norm


@pytest.mark.slow
def test_jacobian_correction_reaches_the_lstm_on_both_backends(tmp_path, small_lstm):
  """Both kernels of the weight-normalised LSTMs are corrected in the client update (the math:
  test_jacobian.py); the TFF and tf backends agree."""
  base = dict(dataset='shakespeare', model='lstm', partition='natural', sequence_length=12,
              clients=3, rounds=1, batch_size=64, max_test_examples=64, client_learning_rate=0.5,
              weight_norm=True)
  plain = runner.run(rs.config(tmp_path, 'lstm_plain', **base))
  losses = {backend: float(rs.rows(runner.run(rs.config(
      tmp_path, 'lstm_jc_' + backend, jacobian_correction=1000.0, backend=backend,
      **base))['output_dir'])[0]['train_loss']) for backend in ('tff', 'tf')}
  assert np.isfinite(losses['tff'])
  assert losses['tff'] == pytest.approx(losses['tf'], rel=1e-4)
  assert losses['tff'] != pytest.approx(float(rs.rows(plain['output_dir'])[0]['train_loss']),
                                        rel=1e-4)
