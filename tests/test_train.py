"""The training binary end to end: every parameterisation, outputs, resume, refusals, configs."""

import csv
import functools
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
import psutil
import pytest
import tensorflow as tf

import fedpara_tff
from fedpara_tff import client_store
import keras_layers
from experiments import checkpoints
from experiments import compare
from experiments import models
from experiments import plot
from experiments import round_loop
from experiments import run_config
from experiments import run_io
from experiments import runner
from experiments import train
from experiments.data import common
from tests import tff_support as ts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(dataset='mnist5k', model='mlp', clients=6, clients_per_round=2, rounds=2,
            batch_size=64, progress=False)


def _config(tmp_path, name='run', **overrides):
  return run_config.RunConfig(output_dir=str(tmp_path / name), cache_dir=str(tmp_path / 'cache'),
                          **{**TINY, **overrides})


def _rows(run_dir):
  with open(os.path.join(run_dir, run_io.METRICS_FILE), newline='') as f:
    return list(csv.DictReader(f))


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
  config = _config(tmp_path, parameterization=parameterization)
  summary = runner.run(config)
  rows = _rows(config.output_dir)
  assert [r['round'] for r in rows] == ['1', '2'] and summary['rounds'] == 2
  per_round = config.clients_per_round * 4 * _travelling_elements(config)
  for row in rows:
    assert int(row['bytes_uploaded']) == per_round and int(row['bytes_downloaded']) == per_round
    assert np.isfinite(float(row['train_loss'])) and 0 <= float(row['train_accuracy']) <= 1
  assert float(rows[-1]['cumulative_gb']) == pytest.approx(4 * per_round / 1e9, rel=1e-5)
  personalized = parameterization in run_config.PERSONALIZED
  assert (rows[-1]['personalized_accuracy'] != '') == personalized
  assert (rows[-1]['test_accuracy'] != '') == (not personalized)
  assert {'train_loss', 'bytes_uploaded', 'cumulative_gb'} <= _tensorboard_tags(config.output_dir)
  assert checkpoints.latest(os.path.join(config.output_dir, 'checkpoints'))[0] == 2
  with open(os.path.join(config.output_dir, run_io.PLOT_FILE), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(os.path.join(config.output_dir, run_io.SUMMARY_FILE)) as f:
    # Strict JSON: a metric that does not apply is null, never a bare NaN.
    summary = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f'non-strict JSON {c}'))
  assert summary['gb_total'] == pytest.approx(4 * per_round / 1e9)
  assert (summary['personalized_accuracy'] is None) == (not personalized)


def test_jacobian_correction_and_matched_scale_change_the_round_alike_on_both_backends(tmp_path):
  """The correction and the lr scale reach the client update (TFF and tf backends agree)."""
  # The MLP (Dense layers): the correction's math on every layer kind is test_jacobian.py's.
  base = dict(model='mlp', rounds=1, clients=4, clients_per_round=2, batch_size=64)
  plain = runner.run(_config(tmp_path, 'plain', **base))
  losses = {}
  for backend in ('tff', 'tf'):
    corrected = runner.run(_config(tmp_path, 'jc_' + backend, jacobian_correction=5.0,
                                   factor_lr_scale='matched', backend=backend, **base))
    losses[backend] = float(_rows(corrected['output_dir'])[0]['train_loss'])
  assert np.isfinite(losses['tff'])
  assert losses['tff'] == pytest.approx(losses['tf'], rel=1e-4)
  assert losses['tff'] != pytest.approx(float(_rows(plain['output_dir'])[0]['train_loss']),
                                        rel=1e-4)


def test_the_safe_step_rule_reaches_the_client_update_on_both_backends(tmp_path):
  """factor_lr_scale='safe' (alone and with the Jacobian correction, which differentiates
  through it) runs inside TFF's computation and on the tf backend alike, and changes the round."""
  # The MLP (Dense layers): the rule's math on every layer kind is test_step_rule.py's.
  base = dict(model='mlp', rounds=1, clients=4, clients_per_round=2, batch_size=64)
  plain = runner.run(_config(tmp_path, 'plain', backend='tf', **base))
  losses = {}
  for backend in ('tff', 'tf'):
    for name, extra in (('safe', {}), ('safe_jc', dict(jacobian_correction=50.0))):
      run = runner.run(_config(tmp_path, f'{name}_{backend}', factor_lr_scale='safe',
                               backend=backend, **extra, **base))
      losses[name, backend] = float(_rows(run['output_dir'])[-1]['train_loss'])
  for name in ('safe', 'safe_jc'):
    assert np.isfinite(losses[name, 'tff'])
    assert losses[name, 'tff'] == pytest.approx(losses[name, 'tf'], rel=1e-4)
  assert losses['safe', 'tf'] != pytest.approx(
      float(_rows(plain['output_dir'])[-1]['train_loss']), rel=1e-5)
  # The correction's gradient is second order in the step: a small but real change.
  assert abs(losses['safe_jc', 'tf'] - losses['safe', 'tf']) > 1e-6


def test_fedprox_runs_on_the_shared_round_on_both_backends(tmp_path):
  """--algorithm=fedprox reaches the client update (its loss differs from FedAvg's) and the
  two backends agree; the numbers themselves are checked in test_round_equations.py."""
  base = dict(rounds=2, algorithm='fedprox', fedprox_mu=5.0)
  losses = {}
  for backend in ('tff', 'tf'):
    summary = runner.run(_config(tmp_path, 'prox_' + backend, backend=backend, **base))
    losses[backend] = [float(r['train_loss']) for r in _rows(summary['output_dir'])]
  fedavg = runner.run(_config(tmp_path, 'fedavg', rounds=2))
  np.testing.assert_allclose(losses['tff'], losses['tf'], rtol=1e-4)
  assert losses['tff'][1] != pytest.approx(float(_rows(fedavg['output_dir'])[1]['train_loss']),
                                           rel=1e-4)


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
    summary = runner.run(_config(tmp_path, backend, backend=backend, rounds=3, **base))
    losses[backend] = [float(r['train_loss']) for r in _rows(summary['output_dir'])]
  np.testing.assert_allclose(losses['tff'], losses['tf'], rtol=1e-4)
  runner.run(_config(tmp_path, 'resumed', rounds=2, **base))
  resumed = runner.run(_config(tmp_path, 'resumed', rounds=3, **base))
  rows = _rows(resumed['output_dir'])
  np.testing.assert_allclose([float(r['train_loss']) for r in rows], losses['tff'], rtol=1e-6)
  assert float(rows[-1]['test_accuracy']) == pytest.approx(
      float(_rows(str(tmp_path / 'tff'))[-1]['test_accuracy']), abs=1e-6)


def test_mimelite_runs_on_the_shared_round_and_sends_twice_the_bytes(tmp_path):
  """MIME-lite: clients receive the model and the server momentum, and send their update and
  their full-batch gradient: twice FedAvg's bytes each way."""
  config = _config(tmp_path, algorithm='mimelite', client_momentum=0.5)
  summary = runner.run(config)
  rows = _rows(config.output_dir)
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


@pytest.mark.parametrize('weight_norm', [False, True])
def test_lstm_on_the_plays_runs(tmp_path, weight_norm, small_lstm):
  config = _config(tmp_path, dataset='shakespeare', model='lstm', partition='natural',
                   sequence_length=12, clients=3, rounds=1, batch_size=16, max_test_examples=64,
                   client_learning_rate=0.5, weight_norm=weight_norm)
  summary = runner.run(config)
  assert summary['rounds'] == 1 and 0 <= summary['test_accuracy'] <= 1
  assert summary['parameters'] < summary['plain_parameters']
  saved = json.load(open(os.path.join(config.output_dir, run_io.RUN_FILE)))
  assert saved.get('weight_norm', False) is weight_norm


def test_jacobian_correction_reaches_the_lstm_on_both_backends(tmp_path, small_lstm):
  """Both kernels of the weight-normalised LSTMs are corrected in the client update (the math:
  test_jacobian.py); the TFF and tf backends agree."""
  base = dict(dataset='shakespeare', model='lstm', partition='natural', sequence_length=12,
              clients=3, rounds=1, batch_size=4, max_test_examples=64, client_learning_rate=0.5,
              weight_norm=True)
  plain = runner.run(_config(tmp_path, 'lstm_plain', **base))
  losses = {backend: float(_rows(runner.run(_config(
      tmp_path, 'lstm_jc_' + backend, jacobian_correction=1000.0, backend=backend,
      **base))['output_dir'])[0]['train_loss']) for backend in ('tff', 'tf')}
  assert np.isfinite(losses['tff'])
  assert losses['tff'] == pytest.approx(losses['tf'], rel=1e-4)
  assert losses['tff'] != pytest.approx(float(_rows(plain['output_dir'])[0]['train_loss']),
                                        rel=1e-4)


def _train_command(config):
  args = [sys.executable, '-m', 'experiments.train', '--progress=false']
  for key, value in vars(config).items():
    if key == 'progress' or value is None:
      continue
    if isinstance(value, bool):
      args.append(f'--{key}' if value else f'--no{key}')
    elif isinstance(value, tuple):
      args.append(f'--{key}={",".join(value)}')
    else:
      args.append(f'--{key}={value}')
  return args


def _run_killed_at(config, after_rows, delay):
  """Starts the binary in its own process group and SIGKILLs the whole group (TFF's worker
  included) `delay` seconds after `metrics.csv` first holds `after_rows` rows.

  No hook in the binary: the moment is picked from outside, so it can fall anywhere in the next
  round, in its evaluation, or between a round's metrics row and its checkpoint.
  """
  process = subprocess.Popen(_train_command(config), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
  try:
    deadline = time.monotonic() + 240   # checked on every poll, whatever the child prints
    path = os.path.join(config.output_dir, run_io.METRICS_FILE)
    while not (os.path.exists(path) and len(_rows(config.output_dir)) >= after_rows):
      assert process.poll() is None, f'the run ended (code {process.returncode}) before round ' \
                                     f'{after_rows}'
      assert time.monotonic() < deadline, f'round {after_rows} not reached within 240 s'
      time.sleep(0.05)
    time.sleep(delay)
  finally:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
  time.sleep(0.5)
  assert not [p for p in psutil.process_iter(['pid']) if _in_group(p, process.pid)]


def _in_group(proc, group):
  """True for a live (not zombie) process of process group `group`."""
  try:
    return os.getpgid(proc.pid) == group and proc.status() != psutil.STATUS_ZOMBIE
  except (ProcessLookupError, psutil.Error):
    return False


_WHOLE_RUNS = {}   # flags -> the config of an uninterrupted run with them (read only)


def _whole_run(tmp_path_factory, common_flags):
  """The uninterrupted run of `common_flags`, run once per test process and shared by the kill
  tests that compare with it (they only read it)."""
  key = tuple(sorted(common_flags.items()))
  if key not in _WHOLE_RUNS:
    whole = _config(tmp_path_factory.mktemp('whole'), 'whole', **common_flags)
    runner.run(whole)
    _WHOLE_RUNS[key] = whole
  return _WHOLE_RUNS[key]


def _whole_and_resumed(tmp_path_factory, tmp_path, common_flags, after_rows, delay):
  """An uninterrupted 3-round run (`_whole_run`), and the same run killed (`_run_killed_at`)
  then resumed by rerunning its command; returns both configs."""
  whole = _whole_run(tmp_path_factory, common_flags)
  cut = _config(tmp_path, 'cut', **common_flags)
  _run_killed_at(cut, after_rows, delay)
  resumed = subprocess.run(_train_command(cut), cwd=REPO, capture_output=True, text=True,
                           timeout=300, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert [r['round'] for r in _rows(cut.output_dir)] == ['1', '2', '3']
  return whole, cut


# (parameterization, rows seen before the kill, delay in s): 0.0 with checkpoint_every=2 kills
# right after round 1's metrics row, before any checkpoint exists (the window between a round's
# metrics write and its checkpoint); the seeded delays land at random moments of round 2.
_KILLS = [('fedpara', 1, 0.0), ('pfedpara', 1, 0.0)] + [
    (p, 1, float(d)) for p, d in zip(('fedpara', 'pfedpara'),
                                     np.random.default_rng(7).uniform(0.05, 1.5, size=2))]


@pytest.mark.parametrize('parameterization, after_rows, delay', _KILLS)
def test_sigkilled_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path_factory, tmp_path,
                                                                  parameterization, after_rows,
                                                                  delay):
  common_flags = dict(parameterization=parameterization, rounds=3, lr_decay=0.99,
                      checkpoint_every=2)
  whole, cut = _whole_and_resumed(tmp_path_factory, tmp_path, common_flags, after_rows, delay)
  final = {}
  for run in (whole, cut):
    with np.load(checkpoints.path_for(os.path.join(run.output_dir, 'checkpoints'), 3)) as stored:
      final[run.output_dir] = {k: stored[k] for k in stored.files if k != 'meta'}
  a, b = final[whole.output_dir], final[cut.output_dir]
  assert sorted(a) == sorted(b)
  if parameterization == 'pfedpara':
    assert any(k.startswith('local_') for k in a)  # every trained client's local factors
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
  for column in ('train_loss', 'bytes_uploaded', 'cumulative_gb'):
    assert ([r[column] for r in _rows(whole.output_dir)] ==
            [r[column] for r in _rows(cut.output_dir)])


@pytest.mark.parametrize('after_rows, delay', [(1, 0.0), (2, 0.0)] + [
    (1, float(d)) for d in np.random.default_rng(11).uniform(0.05, 1.5, size=2)])
def test_sigkilled_sqlite_store_run_resumes_exactly(tmp_path_factory, tmp_path, after_rows,
                                                    delay):
  """pFedPara with the SQLite client store, killed at seeded moments (in a round, between a
  metrics row and its checkpoint, in the checkpoint or the store's commit): the resumed run ends
  with every client's state and the weights of an uninterrupted run."""
  common_flags = dict(parameterization='pfedpara', rounds=3, checkpoint_every=1,
                      client_store='sqlite')
  whole, cut = _whole_and_resumed(tmp_path_factory, tmp_path, common_flags, after_rows, delay)
  (round_a, a), (round_b, b) = (ts.store_snapshot(r.output_dir) for r in (whole, cut))
  assert round_a == round_b == 3 and sorted(a) == sorted(b) and a
  for client in a:
    for x, y in zip(a[client], b[client]):
      np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=client)
  for run in (whole, cut):
    with np.load(checkpoints.path_for(os.path.join(run.output_dir, 'checkpoints'), 3)) as stored:
      assert not any(k.startswith('local_') for k in stored.files)   # not in the checkpoints
  with np.load(checkpoints.path_for(os.path.join(whole.output_dir, 'checkpoints'), 3)) as x, \
      np.load(checkpoints.path_for(os.path.join(cut.output_dir, 'checkpoints'), 3)) as y:
    for key in x.files:
      if key != 'meta':
        np.testing.assert_allclose(x[key], y[key], rtol=0, atol=1e-6, err_msg=key)


def test_sqlite_store_missing_or_damaged_stops_with_one_line(tmp_path):
  config = _config(tmp_path, parameterization='pfedpara', rounds=2, client_store='sqlite')
  runner.run(config)
  path = os.path.join(config.output_dir, client_store.FILE_NAME)
  os.rename(path, path + '.away')
  config.rounds = 3
  with pytest.raises(client_store.ClientStoreError, match=r'is missing, so the clients\' state is '
                                                          r'lost; start the run again'):
    runner.run(config)
  with open(path, 'wb') as f:
    f.write(b'garbage' * 1000)
  with pytest.raises(client_store.ClientStoreError, match=r'is damaged'):
    runner.run(config)
  assert os.path.exists(path + '.away')   # nothing of the user's removed


# ---- refusals ------------------------------------------------------------------------------

def _refused(config, match, error=ValueError):
  with pytest.raises(error, match=match):
    runner.run(config)
  assert not os.path.exists(config.output_dir)  # nothing half-written


def test_inconsistent_settings_are_refused_before_writing(tmp_path):
  _refused(_config(tmp_path, clients=4, clients_per_round=5),
           'clients_per_round=5 exceeds clients=4')
  _refused(_config(tmp_path, clients=4001, clients_per_round=2),
           'clients=4001 exceeds the 4000 training examples')
  _refused(_config(tmp_path, partition='dirichlet', alpha=0.0), r'alpha must be > 0; got 0.0')
  _refused(_config(tmp_path, partition='natural'), "natural needs a naturally federated dataset")
  _refused(_config(tmp_path, algorithm='mimelite', server_momentum=0.9),
           'algorithm=mimelite takes server SGD without momentum; got server_momentum=0.9')
  _refused(_config(tmp_path, algorithm='mimelite', client_optimizer='adam'),
           "algorithm=mimelite corrects SGD steps; got client_optimizer='adam'")
  _refused(_config(tmp_path, parameterization='fedper', local_layers=('nope',)),
           r"local_layers=\['nope'\] must name layers")
  _refused(_config(tmp_path, factor_lr_scale='fast'),
           r"factor_lr_scale must be 'none', 'matched', 'safe' or a positive number; got 'fast'")
  _refused(_config(tmp_path, factor_lr_scale='-2'), r"factor_lr_scale must .*got '-2'")
  _refused(_config(tmp_path, factor_lr_scale='safe', client_optimizer='adam'),
           r"factor_lr_scale='safe' rescales SGD gradients.*got client_optimizer='adam'")
  _refused(_config(tmp_path, jacobian_correction=1.0, algorithm='mimelite'),
           r"jacobian_correction=1.0 needs plain client SGD steps .*algorithm='mimelite'")
  _refused(_config(tmp_path, jacobian_correction=1.0, client_momentum=0.9),
           r'jacobian_correction=1.0 needs plain client SGD steps .*client_momentum=0.9')
  _refused(_config(tmp_path, algorithm='fedadam', server_momentum=0.9),
           r'server_momentum=0.9 applies to server SGD; algorithm=fedadam has its own moments')
  _refused(_config(tmp_path, algorithm='fedavg', server_beta_2=0.99),
           r'server_beta_2=0.99 applies to fedadam or fedyogi; got algorithm=fedavg')
  _refused(_config(tmp_path, algorithm='fedadam', server_beta_2=1.0),
           r'server_beta_2 must be a number in \(0, 1\); got 1.0')
  _refused(_config(tmp_path, algorithm='feddyn', feddyn_alpha=0.0),
           r'feddyn_alpha must be a finite number > 0; got 0.0')
  _refused(_config(tmp_path, algorithm='scaffold', client_optimizer='adam'),
           r"algorithm=scaffold corrects SGD steps; got client_optimizer='adam'")
  _refused(_config(tmp_path, algorithm='scaffold', parameterization='local'),
           r'algorithm=scaffold acts on the global variables; parameterization=local has none')
  _refused(_config(tmp_path, algorithm='scaffold', server_momentum=0.9),
           r'algorithm=scaffold runs without momentum; got client_momentum=0.0, '
           r'server_momentum=0.9')
  _refused(_config(tmp_path, algorithm='fedprox', parameterization='local'),
           r'algorithm=fedprox acts on the global variables; parameterization=local has none')
  _refused(_config(tmp_path, jacobian_correction=1.0, parameterization='original'),
           "jacobian_correction applies to factorised layers; parameterization='original'")
  _refused(_config(tmp_path, jacobian_correction=-1.0),
           'jacobian_correction must be a finite number >= 0; got -1.0')


def test_missing_and_corrupt_data_are_refused_before_writing(tmp_path):
  _refused(_config(tmp_path, dataset='fashion_mnist', model='small_cnn',
                   data_dir=str(tmp_path / 'empty')),
           'apt-get install -y dataset-fashion-mnist', common.DataNotFoundError)
  broken = tmp_path / 'broken'
  broken.mkdir()
  real = run_config.registry.mnist5k.default_path()
  with open(real, 'rb') as f:
    (broken / 'mnist_5k.csv.gz').write_bytes(f.read()[:5000])
  _refused(_config(tmp_path, data_dir=str(broken)), 'corrupt or truncated')


def test_output_dir_of_another_run_needs_overwrite(tmp_path):
  runner.run(_config(tmp_path, rounds=1))
  other = _config(tmp_path, rounds=1, client_learning_rate=0.05)
  with pytest.raises(run_io.RunConflictError,
                     match=r'different flags \(client_learning_rate: 0.1 -> 0.05\).*--overwrite'):
    runner.run(other)
  assert len(_rows(other.output_dir)) == 1  # the old run is untouched
  other.overwrite = True
  assert runner.run(other)['rounds'] == 1
  with open(os.path.join(other.output_dir, run_io.RUN_FILE)) as f:
    assert json.load(f)['client_learning_rate'] == 0.05


def test_checkpoint_of_another_model_is_refused(tmp_path):
  mlp_run = _config(tmp_path, 'mlp', rounds=1)
  runner.run(mlp_run)
  cnn_run = _config(tmp_path, 'cnn', model='small_cnn', rounds=1)
  runner.run(cnn_run)
  source = checkpoints.path_for(os.path.join(mlp_run.output_dir, 'checkpoints'), 1)
  shutil.copy(source, checkpoints.path_for(os.path.join(cnn_run.output_dir, 'checkpoints'), 5))
  cnn_run.rounds = 6
  with pytest.raises(checkpoints.CheckpointMismatchError, match='written for another model'):
    runner.run(cnn_run)


def _binary(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.train', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)


def test_binary_refusals_are_one_line_and_exit_non_zero(tmp_path):
  out = tmp_path / 'out'
  result = _binary(f'--output_dir={out}', '--dataset=imagenet')
  assert result.returncode != 0
  assert 'flag --dataset=imagenet: value should be one of' in result.stderr
  result = _binary(f'--output_dir={out}', '--dataset=fashion_mnist',
                   f'--data_dir={tmp_path / "none"}', f'--cache_dir={tmp_path / "cache"}')
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if 'error' in line.lower()]
  assert len(errors) == 1 and errors[0].startswith('train: error: Fashion-MNIST not found')
  assert not out.exists()


@pytest.mark.parametrize('argv, match', [
    (['--alpha=0'], '--alpha must be > 0'),
    (['--clients=3', '--clients_per_round=4'], 'clients_per_round must not exceed --clients'),
    (['--partition=random'], 'value should be one of'),
    (['--model=resnet'], 'value should be one of'),
    (['--gamma=1.5'], r'--gamma must be in \[0, 1\]'),
    (['--seed=-1'], r'--seed must be in \[0, 2\*\*31\)'),
    (['--worker_connect_timeout=inf'], '--worker_connect_timeout must be a finite number > 0'),
    (['--worker_failure_timeout=nan'], '--worker_failure_timeout must be a finite number > 0'),
    (['--jacobian_correction=-1'], '--jacobian_correction must be a finite number >= 0'),
])
def test_flag_validators(argv, match):
  try:
    with pytest.raises(flags.Error, match=match):
      flags.FLAGS(['train', '--output_dir=unused', *argv])
  finally:
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'experiments', 'configs',
                                                               '*.cfg'))))
def test_every_flagfile_parses_and_is_consistent(path):
  try:
    flags.FLAGS(['train', f'--flagfile={path}'])
    config = train.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  run_config.check(config)
  assert config.output_dir.startswith('runs/')


# ---- zoo and plot --------------------------------------------------------------------------

@pytest.mark.parametrize('model, shape, classes', [('vgg16', (32, 32, 3), 10),
                                                    ('small_cnn', (28, 28, 1), 10),
                                                    ('mlp', (28, 28, 1), 62),
                                                    ('lstm', (20,), 98)])
def test_zoo_builds_every_parameterization(model, shape, classes):
  counts = {}
  for parameterization in ('original', 'lowrank', 'fedpara', 'pfedpara'):
    keras_model = models.build(model, shape, classes, parameterization, gamma=0.1, keep_plain=())
    counts[parameterization] = int(sum(np.prod(v.shape) for v in keras_model.trainable_variables))
    assert keras_model.output_shape[-1] == classes
  # Low-rank baselines take FedPara's count exactly (dense) or the most that fits in it (conv).
  assert counts['fedpara'] < counts['original'] and counts['lowrank'] <= counts['fedpara']
  assert counts['lowrank'] > 0.95 * counts['fedpara'] and counts['pfedpara'] == counts['fedpara']
  if model == 'vgg16':
    assert counts['original'] == 15_253_578


def test_narrow_vgg_counts_of_the_results_page():
  # docs/RESULTS.md: 72,890 plain; every conv at gamma 0.1 (classifier plain): FedPara 13,518 with
  # ranks 2, 5, 5, 8, 9, 11; low-rank 12,845 with inner ranks 3, 7, 7, 12, 14, 17.
  expected = {'original': (72_890, None), 'fedpara': (13_518, [2, 5, 5, 8, 9, 11]),
              'lowrank': (12_845, [3, 7, 7, 12, 14, 17])}
  for parameterization, (count, ranks) in expected.items():
    model = models.build('vgg_narrow', (28, 28, 1), 10, parameterization, gamma=0.1,
                         keep_plain=('logits',))
    assert model.count_params() == count
    if ranks:
      assert [l.ranks[0] for l in model.layers if keras_layers.is_factorized(l)] == ranks


def test_weight_decay_adds_half_l2_of_every_trainable_variable():
  model = models.build('mlp', (4,), 3, 'fedpara', rank=1, keep_plain=(), weight_decay=0.1)
  expected = 0.05 * sum(float(np.sum(v.numpy() ** 2)) for v in model.trainable_variables)
  assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_plot_draws_one_curve_per_run_from_the_csv(tmp_path):
  runs = []
  for name, accuracies in (('a', [0.5, 0.7]), ('b', [0.4, 0.8])):
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / run_io.RUN_FILE).write_text(json.dumps(dict(parameterization=name,
                                                           dataset='d', model='m')))
    with open(run_dir / run_io.METRICS_FILE, 'w', newline='') as f:
      writer = csv.DictWriter(f, run_io.COLUMNS)
      writer.writeheader()
      for i, accuracy in enumerate(accuracies):
        writer.writerow(dict(round=i + 1, test_accuracy=accuracy, cumulative_gb=0.1 * (i + 1)))
    runs.append(str(run_dir))
  drawn = plot.plot_runs(runs, str(tmp_path / 'figure.png'))
  assert drawn[runs[1]] == ([0.1, 0.2], [0.4, 0.8])
  assert (tmp_path / 'figure.png').read_bytes()[:4] == b'\x89PNG'
  with pytest.raises(ValueError, match='holds no run'):
    plot.plot_runs([str(tmp_path)], str(tmp_path / 'x.png'))
  # The binary says which file it wrote: an existing folder gets accuracy_vs_gb.png inside it,
  # a name without extension gets .png (it used to write DIR.png and say DIR).
  folder = tmp_path / 'figures'
  folder.mkdir()
  for output, written in ((folder, folder / run_io.PLOT_FILE),
                          (tmp_path / 'noext', tmp_path / 'noext.png')):
    result = subprocess.run([sys.executable, '-m', 'experiments.plot', f'--runs={",".join(runs)}',
                             f'--output={output}'], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == f'wrote {written} (2 curves)', result.stderr[-1000:]
    assert written.read_bytes()[:4] == b'\x89PNG'


def test_importing_plot_leaves_the_matplotlib_backend_alone():
  """A notebook's backend survives `import experiments.plot` (it draws with Agg directly)."""
  probe = ('import matplotlib; import experiments.plot; from matplotlib import pyplot; '
           'print(matplotlib.get_backend())')
  done = subprocess.run([sys.executable, '-c', probe], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, 'MPLBACKEND': 'svg'}, timeout=120, check=True)
  assert done.stdout.strip() == 'svg'


@pytest.mark.parametrize('gb', [[0.000123], [0.0012345, 0.0012346, 0.0012347], [0.1, 0.2, 0.3]])
def test_single_run_plot_has_readable_communication_ticks(gb):
  """One run's narrow GB range: ticks from 0, at most 6, distinct short labels, no offset text
  (matplotlib's default labelled one point at 1.23e-4 as '+1.23e-4' offsets)."""
  figure = plot.new_figure()
  axes = figure.subplots()
  axes.plot(gb, [0.5] * len(gb), marker='o')
  plot.format_gb_axis(axes)
  figure.canvas.draw()
  labels = [t.get_text() for t in axes.get_xticklabels()
            if axes.get_xlim()[0] <= t.get_position()[0] <= axes.get_xlim()[1]]
  assert axes.get_xlim()[0] == 0
  assert 2 <= len(labels) <= 6 and len(set(labels)) == len(labels), labels
  assert all(len(label) <= 8 and 'e' not in label for label in labels), labels
  assert axes.xaxis.get_offset_text().get_text() == ''


def test_compare_lines_state_the_ratio():
  base = dict(parameterization='original', test_accuracy=0.95, personalized_accuracy=float('nan'),
              gb_total=0.72, parameters=225_034)
  other = dict(base, parameterization='fedpara', test_accuracy=0.93, gb_total=0.18,
               parameters=63_656)
  assert compare.comparison_lines([base, other]) == [
      'fedpara vs original: accuracy 0.9300 vs 0.9500, communication 0.1800 GB vs 0.7200 GB '
      '(4.00x less), parameters 63,656 vs 225,034']
  lowrank = dict(base, parameterization='lowrank', test_accuracy=0.92, gb_total=0.1801,
                 parameters=63_554)
  assert compare.comparison_lines([base, lowrank, other])[1:] == [
      'fedpara vs original: accuracy 0.9300 vs 0.9500, communication 0.1800 GB vs 0.7200 GB '
      '(4.00x less), parameters 63,656 vs 225,034',
      'fedpara vs lowrank: accuracy 0.9300 vs 0.9200, communication 0.1800 GB vs 0.1801 GB '
      '(1.00x less), parameters 63,656 vs 63,554']


# ---- no orphaned worker, divergence is a failure ---------------------------------------------

def _worker_children(pid):
  try:
    children = psutil.Process(pid).children(recursive=True)
  except psutil.NoSuchProcess:
    return []
  out = []
  for child in children:
    try:
      if any('data/worker_binary' in part for part in child.cmdline()):
        out.append(child)
    except psutil.NoSuchProcess:
      continue
  return out


@pytest.mark.parametrize('target,signum', [('binary', signal.SIGTERM),
                                            ('binary', signal.SIGKILL),
                                            ('group', signal.SIGTERM),
                                            ('group', signal.SIGINT)])
def test_killed_binary_leaves_no_worker(tmp_path, target, signum):
  """`binary`: the signal reaches the binary alone (the watchdog cleans up after SIGKILL);
  `group`: its whole process group, workers included, as Ctrl-C in a terminal or
  `kill -TERM -PGID` do (a dead worker must not make the exit print gRPC tracebacks)."""
  config = _config(tmp_path, rounds=500, checkpoint_every=1)
  process = subprocess.Popen(_train_command(config), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
  workers = []
  try:
    deadline = time.monotonic() + 240
    metrics = os.path.join(config.output_dir, run_io.METRICS_FILE)
    # A finished round: its metrics row and its checkpoint (written after the row).
    while not (os.path.exists(metrics) and len(_rows(config.output_dir)) >= 1
               and checkpoints.latest(os.path.join(config.output_dir, 'checkpoints'))):
      assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
      time.sleep(0.5)
    workers = _worker_children(process.pid)
    assert workers, 'the run should have started a TFF worker'
    if target == 'group':
      os.killpg(process.pid, signum)
    else:
      process.send_signal(signum)
    process.wait(timeout=60)
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f'worker(s) left after {signum.name}: {[w.pid for w in alive]}'
    if signum != signal.SIGKILL:
      stderr = process.stderr.read()
      assert process.returncode == 128 + signum, stderr
      assert 'Traceback' not in stderr and f'stopped by {signum.name}' in stderr, stderr
      assert checkpoints.latest(os.path.join(config.output_dir, 'checkpoints')) is not None
  finally:
    if process.poll() is None:
      process.kill()
    for worker in workers + _worker_children(process.pid):
      try:
        worker.kill()
      except psutil.NoSuchProcess:
        pass


def test_a_round_without_a_finite_client_stops_the_run(tmp_path):
  config = _config(tmp_path, rounds=3, client_learning_rate=1e6)
  with pytest.raises(round_loop.RunDivergedError,
                     match=r'round 1: training diverged: every client\'s update was non-finite '
                           r'\(2 of 2 clients\) at client_learning_rate=1000000.0, '
                           r'server_learning_rate=1.0; the last checkpoint \(round 0\) is kept'):
    runner.run(config)
  # A new run that stopped before its first checkpoint leaves nothing that blocks the fix.
  assert not os.path.exists(config.output_dir)
  config.client_learning_rate = 0.1
  config.rounds = 1
  assert runner.run(config)['rounds'] == 1


def test_divergence_checks():
  fine = np.ones(3)
  assert round_loop.divergence({'diverged_clients': 1}, 2, [fine]) is None
  assert 'variable 1 of 2' in round_loop.divergence({'diverged_clients': 0}, 2,
                                                [fine, np.array([np.nan])])
  assert 'test loss is inf' in round_loop.divergence({'diverged_clients': 0, 'test_loss': math.inf},
                                                 2, [])


def test_diverged_binary_exits_non_zero_with_one_line(tmp_path):
  config = _config(tmp_path, rounds=2, client_learning_rate=1e6)
  result = subprocess.run(_train_command(config), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode != 0
  lines = [l for l in result.stderr.splitlines() if l.startswith('train: error:')]
  assert len(lines) == 1 and 'training diverged' in lines[0], result.stderr[-2000:]


def test_resume_on_other_data_or_evaluation_set_is_refused(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  real = run_config.registry.mnist5k.default_path()
  same, other = tmp_path / 'same', tmp_path / 'other'
  same.mkdir()
  other.mkdir()
  shutil.copy(real, same / 'mnist_5k.csv.gz')
  with gzip.open(real, 'rt') as f:
    lines = f.read().splitlines()
  first = lines[0].split(',')
  first[300] = '0' if first[300] != '0' else '17'   # one pixel of one image differs
  lines[0] = ','.join(first)
  with gzip.open(other / 'mnist_5k.csv.gz', 'wt') as f:
    f.write('\n'.join(lines) + '\n')
  runner.run(_config(tmp_path, rounds=1))
  # The same data from another folder resumes.
  assert runner.run(_config(tmp_path, rounds=2, data_dir=str(same)))['rounds'] == 2
  with pytest.raises(run_io.RunConflictError, match=r'different flags \(data_sha256: '):
    runner.run(_config(tmp_path, rounds=3, data_dir=str(other)))
  with pytest.raises(run_io.RunConflictError, match=r'different flags \(max_test_examples: 0 -> 50'):
    runner.run(_config(tmp_path, rounds=3, max_test_examples=50))
  assert [r['round'] for r in _rows(str(tmp_path / 'run'))] == ['1', '2']


# ---- damaged files read back -----------------------------------------------------------------

def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
  whole = _config(tmp_path, 'whole', rounds=3)
  runner.run(whole)
  cut = _config(tmp_path, 'cut', rounds=2)
  runner.run(cut)
  newest = checkpoints.path_for(os.path.join(cut.output_dir, 'checkpoints'), 2)
  with open(newest, 'rb') as f:
    content = f.read()
  with open(newest, 'wb') as f:
    f.write(content[:len(content) // 2])   # truncated
  cut.rounds = 3
  runner.run(cut)
  err = capfd.readouterr().err
  assert f'checkpoint {newest} is damaged' in err and 'resuming from round 1 instead' in err
  assert [r['round'] for r in _rows(cut.output_dir)] == ['1', '2', '3']
  for column in ('train_loss', 'bytes_uploaded', 'test_accuracy'):
    assert ([r[column] for r in _rows(whole.output_dir)] ==
            [r[column] for r in _rows(cut.output_dir)])


def test_damaged_partition_cache_is_recomputed(tmp_path):
  config = _config(tmp_path, rounds=1)
  runner.run(config)
  (entry,) = glob.glob(os.path.join(config.cache_dir, '*.npz'))
  with open(entry, 'r+b') as f:
    f.seek(40)
    f.write(b'\xff' * 64)   # bad CRC / header
  again = _config(tmp_path, 'again', rounds=1)
  runner.run(again)
  assert _rows(again.output_dir)[0]['train_loss'] == _rows(config.output_dir)[0]['train_loss']


@pytest.mark.parametrize('name, content, message', [
    (run_io.RUN_FILE, '{"dataset": "mnist', r'run.json is damaged .*--overwrite'),
    (run_io.METRICS_FILE, 'round,clients\n1,2,3,4\n', r'metrics.csv is damaged \(its header'),
    (run_io.METRICS_FILE, ','.join(run_io.COLUMNS) + '\n1,x\n', r'metrics.csv is damaged'),
])
def test_damaged_run_files_are_named(tmp_path, name, content, message):
  config = _config(tmp_path, rounds=1)
  runner.run(config)
  with open(os.path.join(config.output_dir, name), 'w') as f:
    f.write(content)
  config.rounds = 2
  with pytest.raises(run_io.DamagedFileError, match=message):
    runner.run(config)


def test_failed_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(checkpoints.np, 'savez', full_disk)
  with pytest.raises(OSError, match='No space left'):
    checkpoints.save(str(tmp_path), 1, [np.ones(2)], [], {})
  assert os.listdir(tmp_path) == []


def test_metrics_keep_full_precision_on_resume(tmp_path):
  config = _config(tmp_path, model='small_cnn', parameterization='original', rounds=1)
  runner.run(config)
  before = _rows(config.output_dir)[0]
  config.rounds = 2
  runner.run(config)
  after = _rows(config.output_dir)[0]
  assert after == before
  assert int(after['bytes_uploaded']) > 1_000_000 and after['bytes_uploaded'].isdigit()
  assert float(after['train_loss']) == float(repr(float(after['train_loss'])))


def test_compare_checks_every_parameterization_before_running_any(tmp_path):
  # local-only has no global variable for SCAFFOLD: refused before the original run starts.
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.compare', f'--output_dir={tmp_path / "cmp"}',
       '--dataset=mnist5k', '--model=mlp', '--clients=6', '--clients_per_round=2',
       '--algorithm=scaffold', '--parameterizations=original,local',
       f'--cache_dir={tmp_path / "cache"}', '--progress=false'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(
      'compare: error: parameterization=local: algorithm=scaffold acts on the global variables')
  assert not (tmp_path / 'cmp').exists()


def test_output_and_cache_paths_that_are_files_are_refused(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('mine')
  with pytest.raises(run_io.RunConflictError, match=r'output_dir .*a_file is a file, not a folder'):
    runner.run(_config(tmp_path, 'a_file', rounds=1))
  with pytest.raises(run_io.RunConflictError, match=r'output_dir .*cannot be written \(Not a '):
    runner.run(_config(tmp_path, 'a_file/run', rounds=1))
  config = run_config.RunConfig(**{**vars(_config(tmp_path, 'cached', rounds=1)),
                               'cache_dir': str(a_file / 'cache')})
  with pytest.raises(ValueError, match=r'partition cache .*cannot be written \(Not a directory'):
    runner.run(config)
  assert a_file.read_text() == 'mine'
