"""What the training binary refuses, in one line, before writing anything."""

import dataclasses
import glob
import json
import math
import os
import shutil
import subprocess
import sys

from absl import flags
import numpy as np
import pytest

import fedpara_tff
from experiments import checkpoints
from experiments import run_config
from experiments import run_io
from experiments import runner
from experiments import train
from experiments.data import common
from tests import run_support as rs


# ---- refusals ------------------------------------------------------------------------------

def _refused(make_config, match, error=ValueError):
  """Building the config (a `RunConfig` checks its settings when built) or running it is refused
  with `match`, and nothing is written."""
  built = []
  with pytest.raises(error, match=match):
    built.append(make_config())
    runner.run(built[0])
  if built:
    assert not os.path.exists(built[0].output_dir)  # nothing half-written


def test_inconsistent_settings_are_refused_before_writing(tmp_path):
  _refused(lambda: rs.config(tmp_path, clients=4, clients_per_round=5),
           'clients_per_round=5 exceeds clients=4')
  _refused(lambda: rs.config(tmp_path, clients=4001, clients_per_round=2),
           'clients=4001 exceeds the 4000 training examples')
  _refused(lambda: rs.config(tmp_path, partition='dirichlet', alpha=0.0),
           r'alpha must be a finite number > 0; got 0.0')
  # inf passes `> 0`; the library refuses it too, not only the flags.
  _refused(lambda: rs.config(tmp_path, partition='dirichlet', alpha=math.inf),
           r'alpha must be a finite number > 0; got inf')
  _refused(lambda: rs.config(tmp_path, client_learning_rate=math.inf),
           r'client_learning_rate must be a finite number > 0; got inf')
  _refused(lambda: rs.config(tmp_path, server_learning_rate=math.inf),
           r'server_learning_rate must be a finite number > 0; got inf')
  _refused(lambda: rs.config(tmp_path, weight_decay=math.inf),
           r'weight_decay must be a finite number >= 0; got inf')
  _refused(lambda: rs.config(tmp_path, algorithm='fedprox', fedprox_mu=math.inf),
           r'fedprox_mu must be a finite number >= 0; got inf')
  # Settings the run would ignore (yet freeze into its identity) are refused.
  _refused(lambda: rs.config(tmp_path, fedprox_mu=0.5),
           r"fedprox_mu applies to algorithm=fedprox; got fedprox_mu=0.5 with algorithm='fedavg'")
  _refused(lambda: rs.config(tmp_path, parameterization='original', factor_lr_scale='matched'),
           r"factor_lr_scale applies to factorised layers .*parameterization='original' has none")
  _refused(lambda: rs.config(tmp_path, parameterization='fedpara', client_store='sqlite'),
           r"client_store='sqlite' keeps clients' state between rounds; this run has none")
  _refused(lambda: rs.config(tmp_path, partition='natural'), "natural needs a naturally federated dataset")
  _refused(lambda: rs.config(tmp_path, algorithm='mimelite', server_momentum=0.9),
           'algorithm=mimelite takes server SGD without momentum; got server_momentum=0.9')
  _refused(lambda: rs.config(tmp_path, algorithm='mimelite', client_optimizer='adam'),
           "algorithm=mimelite corrects SGD steps; got client_optimizer='adam'")
  _refused(lambda: rs.config(tmp_path, parameterization='fedper', local_layers=('nope',)),
           r"local_layers=\['nope'\] must name layers")
  _refused(lambda: rs.config(tmp_path, factor_lr_scale='fast'),
           r"factor_lr_scale must be 'none', 'matched', 'safe' or a positive number; got 'fast'")
  _refused(lambda: rs.config(tmp_path, factor_lr_scale='-2'), r"factor_lr_scale must .*got '-2'")
  _refused(lambda: rs.config(tmp_path, jacobian_correction=1.0, algorithm='mimelite'),
           r"jacobian_correction=1.0 needs plain client SGD steps .*algorithm='mimelite'")
  _refused(lambda: rs.config(tmp_path, jacobian_correction=1.0, client_momentum=0.9),
           r'jacobian_correction=1.0 needs plain client SGD steps .*client_momentum=0.9')
  _refused(lambda: rs.config(tmp_path, algorithm='fedadam', server_momentum=0.9),
           r'server_momentum=0.9 applies to server SGD; algorithm=fedadam has its own moments')
  _refused(lambda: rs.config(tmp_path, algorithm='fedavg', server_beta_2=0.99),
           r'server_beta_2=0.99 applies to fedadam or fedyogi; got algorithm=fedavg')
  _refused(lambda: rs.config(tmp_path, algorithm='fedadam', server_beta_2=1.0),
           r'server_beta_2 must be a number in \(0, 1\); got 1.0')
  _refused(lambda: rs.config(tmp_path, algorithm='feddyn', feddyn_alpha=0.0),
           r'feddyn_alpha must be a finite number > 0; got 0.0')
  _refused(lambda: rs.config(tmp_path, algorithm='scaffold', client_optimizer='adam'),
           r"algorithm=scaffold corrects SGD steps; got client_optimizer='adam'")
  _refused(lambda: rs.config(tmp_path, algorithm='scaffold', parameterization='local'),
           r'algorithm=scaffold acts on the global variables; parameterization=local has none')
  _refused(lambda: rs.config(tmp_path, algorithm='scaffold', server_momentum=0.9),
           r'algorithm=scaffold runs without momentum; got client_momentum=0.0, '
           r'server_momentum=0.9')
  _refused(lambda: rs.config(tmp_path, algorithm='fedprox', parameterization='local'),
           r'algorithm=fedprox acts on the global variables; parameterization=local has none')
  _refused(lambda: rs.config(tmp_path, jacobian_correction=1.0, parameterization='original'),
           "jacobian_correction applies to factorised layers; parameterization='original'")
  _refused(lambda: rs.config(tmp_path, jacobian_correction=-1.0),
           'jacobian_correction must be a finite number >= 0; got -1.0')


def test_missing_and_corrupt_data_are_refused_before_writing(tmp_path):
  _refused(lambda: rs.config(tmp_path, dataset='fashion_mnist', model='small_cnn',
                   data_dir=str(tmp_path / 'empty')),
           'apt-get install -y dataset-fashion-mnist', common.DataNotFoundError)
  broken = tmp_path / 'broken'
  broken.mkdir()
  real = run_config.registry.mnist5k.default_path()
  with open(real, 'rb') as f:
    (broken / 'mnist_5k.csv.gz').write_bytes(f.read()[:5000])
  _refused(lambda: rs.config(tmp_path, data_dir=str(broken)), 'corrupt or truncated')


def test_output_dir_of_another_run_needs_overwrite(tmp_path_factory, tmp_path):
  rs.finished_copy(tmp_path_factory, tmp_path, rounds=1)
  other = rs.config(tmp_path, rounds=1, client_learning_rate=0.05)
  with pytest.raises(run_io.RunConflictError,
                     match=r'different flags \(client_learning_rate: 0.1 -> 0.05\).*--overwrite'):
    runner.run(other)
  assert len(rs.rows(other.output_dir)) == 1  # the old run is untouched
  other = dataclasses.replace(other, overwrite=True)
  assert runner.run(other)['rounds'] == 1
  with open(os.path.join(other.output_dir, run_io.RUN_FILE)) as f:
    assert json.load(f)['client_learning_rate'] == 0.05


def test_checkpoint_of_another_model_is_refused(tmp_path_factory, tmp_path):
  fedpara_run = rs.finished(tmp_path_factory, rounds=1)   # only read
  lowrank_run = rs.finished_copy(tmp_path_factory, tmp_path, 'lowrank', rounds=1,
                                 parameterization='lowrank')
  source = checkpoints.path_for(os.path.join(fedpara_run.output_dir, 'checkpoints'), 1)
  shutil.copy(source, checkpoints.path_for(os.path.join(lowrank_run.output_dir, 'checkpoints'), 5))
  lowrank_run = dataclasses.replace(lowrank_run, rounds=6)
  with pytest.raises(checkpoints.CheckpointMismatchError, match='written for another model'):
    runner.run(lowrank_run)


def test_binary_refusals_are_one_line_and_exit_non_zero(tmp_path):
  out = tmp_path / 'out'
  result = rs.binary(f'--output_dir={out}', '--dataset=imagenet')
  assert result.returncode != 0
  assert 'flag --dataset=imagenet: value should be one of' in result.stderr
  # Past the flags, in process (the binary's `run_or_exit`): one line, which Python prints to
  # stderr with exit status 1.
  config = rs.config(tmp_path, 'out', dataset='fashion_mnist', model='small_cnn',
                     data_dir=str(tmp_path / 'none'))
  with pytest.raises(SystemExit) as exit_:
    train.run_or_exit(config)
  assert str(exit_.value).startswith('train: error: Fashion-MNIST not found')
  assert '\n' not in str(exit_.value)
  assert not out.exists()


@pytest.mark.parametrize('argv, match', [
    (['--alpha=0'], r'flag --alpha=0.0: alpha must be a finite number > 0; got 0.0\.'),
    # inf passes `> 0`: every float flag is also finite (issue 25).
    (['--alpha=inf'], 'alpha must be a finite number > 0'),
    (['--client_learning_rate=inf'], 'client_learning_rate must be a finite number > 0'),
    (['--server_learning_rate=inf'], 'server_learning_rate must be a finite number > 0'),
    (['--weight_decay=inf'], 'weight_decay must be a finite number >= 0'),
    (['--fedprox_mu=inf'], 'fedprox_mu must be a finite number >= 0'),
    (['--clients=3', '--clients_per_round=4'], 'clients_per_round must not exceed --clients'),
    (['--partition=random'], 'value should be one of'),
    (['--model=resnet'], 'value should be one of'),
    (['--gamma=1.5'], r'gamma must be a number in \[0, 1\]; got 1.5'),
    (['--seed=-1'], r'seed must be an integer in \[0, 2147483648\); got -1'),
    (['--worker_connect_timeout=inf'], 'worker_connect_timeout must be a finite number > 0'),
    (['--worker_failure_timeout=nan'], 'worker_failure_timeout must be a finite number > 0'),
    (['--jacobian_correction=-1'], 'jacobian_correction must be a finite number >= 0'),
    (['--lr_decay=2'], r'lr_decay must be a number in \(0, 1\]; got 2.0'),
    (['--eval_every=0'], 'eval_every must be an integer >= 1; got 0'),
])
def test_flag_validators(argv, match):
  try:
    with pytest.raises(flags.Error, match=match):
      flags.FLAGS(['train', '--output_dir=unused', *argv])
  finally:
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(rs.REPO, 'experiments', 'configs',
                                                               '*.cfg'))))
def test_every_flagfile_parses_and_is_consistent(path):
  try:
    flags.FLAGS(['train', f'--flagfile={path}'])
    config = train.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  run_config.check(config)
  assert config.output_dir.startswith('runs/')


def test_workers_on_another_host_need_tls_or_an_explicit_opt_out(tmp_path):
  _refused(lambda: rs.config(tmp_path, workers='10.9.8.7:8000'),
           r'worker 10.9.8.7:8000 is not on this host: pass --workers_tls_dir=DIR')
  _refused(lambda: rs.config(tmp_path, workers='127.0.0.1:8000,worker-2:8000'),
           r'worker worker-2:8000 is not on this host')
  _refused(lambda: rs.config(tmp_path, workers='10.9.8.7:8000', workers_tls_dir=str(tmp_path)),
           r'TLS folder .* lacks .*ca.pem, .*driver.pem, .*driver.key; make the files with '
           r'scripts/make_worker_certs.sh')
  _refused(lambda: rs.config(tmp_path, workers='10.9.8.7:8000', workers_tls_dir=str(tmp_path),
                     insecure_workers=True), 'not both')
  _refused(lambda: rs.config(tmp_path, insecure_workers=True), 'give --workers too')


def test_output_dir_empty_is_refused_and_tilde_is_expanded(tmp_path):
  with pytest.raises(ValueError, match=r"output_dir must name a folder; got ''"):
    runner.run(run_config.RunConfig(**{**rs.TINY, 'output_dir': ''}))
  try:
    flags.FLAGS(['train', '--output_dir=~/fedpara-runs/x', '--cache_dir=~/cache'])
    config = train.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  # A flagfile's `~` is not expanded by a shell; a folder literally named `~` is never made.
  assert config.output_dir == os.path.join(os.path.expanduser('~'), 'fedpara-runs', 'x')
  assert config.cache_dir == os.path.join(os.path.expanduser('~'), 'cache')


@pytest.mark.parametrize('value', ['', 'none', ' '])
def test_an_empty_factor_lr_scale_is_recorded_as_none(value):
  """Issue 38: `--factor_lr_scale=` trained as none but recorded "" in run.json, so a later
  `=none` was refused as different flags."""
  try:
    flags.FLAGS(['train', '--output_dir=unused', f'--factor_lr_scale={value}'])
    config = train.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert config.factor_lr_scale is None
  assert config.identity()['factor_lr_scale'] is None


def test_a_folder_in_use_by_a_run_is_refused_naming_its_pid(tmp_path):
  """Two runs in one folder would interleave their metrics and checkpoints, and an --overwrite
  would delete a live run's files: the folder is held for the run's lifetime."""
  out = tmp_path / 'run'
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys\nfrom experiments import run_io\n'
       'with run_io.locked(sys.argv[1]):\n  print("held", flush=True)\n  sys.stdin.read()\n',
       str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=rs.REPO)
  try:
    assert holder.stdout.readline().strip() == 'held'
    (out / 'metrics.csv').write_text('the live run\n')
    for overwrite in (False, True):
      with pytest.raises(run_io.RunConflictError,
                         match=rf'output_dir {out} is in use by another run \(pid {holder.pid}\)'):
        runner.run(rs.config(tmp_path, overwrite=overwrite))
    assert (out / 'metrics.csv').read_text() == 'the live run\n'
  finally:
    holder.stdin.close()
    holder.wait(60)
  # Released with its holder: the folder is usable again (here it refuses for its stray file).
  with pytest.raises(run_io.RunConflictError, match=r'holds no run \(no run\.json'):
    runner.run(rs.config(tmp_path))


def test_fedadam_gets_a_server_learning_rate_that_works(tmp_path):
  """The issue's case: --algorithm=fedadam with the default --server_learning_rate (1.0, FedAvg's)
  diverged at round 2. The default is now the algorithm's: 0.01 for the adaptive server
  optimizers (the paper's FedAdam), 1.0 for server SGD; run.json records the number."""
  assert fedpara_tff.RoundSettings(algorithm='fedadam').server_learning_rate == 0.01
  assert fedpara_tff.RoundSettings(algorithm='fedyogi').server_learning_rate == 0.01
  assert fedpara_tff.RoundSettings().server_learning_rate == 1.0
  assert run_config.RunConfig(output_dir='x', algorithm='fedadagrad').server_learning_rate == 0.01
  config = rs.config(tmp_path, algorithm='fedadam', rounds=3)
  summary = runner.run(config)
  assert summary['rounds'] == 3 and math.isfinite(summary['train_loss'])
  with open(os.path.join(config.output_dir, run_io.RUN_FILE)) as f:
    assert json.load(f)['server_learning_rate'] == 0.01


@pytest.mark.parametrize('diverged, settings, hint', [
    ("every client's update was non-finite (2 of 2 clients)", {},
     'the client step overshoots at client_learning_rate=0.1: try --client_learning_rate=0.01.'),
    ("every client's update was non-finite (2 of 2 clients)", dict(weight_decay=20.0),
     'weight_decay=20.0 at client_learning_rate=0.1 makes each step scale the weights by -1: '
     'try --weight_decay=5 or less.'),
    ("every client's update was non-finite (2 of 2 clients)",
     dict(algorithm='fedprox', fedprox_mu=10.0),
     'fedprox_mu=10.0 at client_learning_rate=0.1 overshoots the proximal pull every step: try '
     '--fedprox_mu=5 or less.'),
    ('the server model has non-finite values (variable 0 of 4)', dict(server_learning_rate=5.0),
     'the server step overshoots at server_learning_rate=5.0: try --server_learning_rate=0.5.'),
    ('the server model has non-finite values (variable 0 of 4)', dict(server_momentum=0.9),
     'server_momentum=0.9 with server_learning_rate=1.0 overshoots: try --server_momentum=0 or '
     '--server_learning_rate=0.1.'),
    # Issue 38: the clients diverge the round after a server step of 1e7; the hint blamed the
    # client learning rate. It names the step size furthest above its default.
    ("every client's update was non-finite (2 of 2 clients)", dict(server_learning_rate=1e7),
     'the server step overshoots at server_learning_rate=10000000.0 (its default: 1): try '
     '--server_learning_rate=1e+06.'),
    ('the test loss is nan', dict(factor_lr_scale='1e300'),
     'factor_lr_scale=1e300 multiplies the client step on the factors 1e+300 times: try '
     '--factor_lr_scale=1e+299 or --factor_lr_scale=none.'),
    ("every client's update was non-finite (2 of 2 clients)",
     dict(client_learning_rate=50.0, server_learning_rate=10.0),
     'the client step overshoots at client_learning_rate=50.0: try --client_learning_rate=5.'),
])
def test_the_divergence_hint_names_the_flag_that_caused_it(diverged, settings, hint):
  """The issue's case: the hint always suggested a smaller client learning rate, also when the
  server learning rate or the weight decay caused it."""
  from experiments import round_loop  # pylint: disable=g-import-not-at-top
  config = run_config.RunConfig(output_dir='x', **settings)
  assert round_loop.divergence_hint(config, diverged) == hint


def test_tensorboard_replaced_by_a_file_is_one_line(tmp_path_factory, tmp_path):
  config = rs.finished_copy(tmp_path_factory, tmp_path, rounds=1)
  board = os.path.join(config.output_dir, 'tensorboard')
  shutil.rmtree(board)
  with open(board, 'w') as f:
    f.write('x')
  config = dataclasses.replace(config, rounds=2)
  with pytest.raises(SystemExit, match=rf'^train: error: {board} is a file, not the run\'s '
                                       r'TensorBoard folder; move it away') as e:
    train.run_or_exit(config)
  assert '\n' not in str(e.value)


def test_a_full_disk_is_one_line_naming_the_path_and_the_kept_checkpoint(tmp_path_factory,
                                                                          tmp_path, monkeypatch):
  config = rs.finished_copy(tmp_path_factory, tmp_path, rounds=1)
  metrics = os.path.join(config.output_dir, run_io.METRICS_FILE)

  def full_disk(self, row):
    raise OSError(28, 'No space left on device', metrics)

  monkeypatch.setattr(run_io.MetricsWriter, 'write', full_disk)
  config = dataclasses.replace(config, rounds=2)
  with pytest.raises(SystemExit) as e:
    train.run_or_exit(config)
  assert str(e.value) == (f'train: error: cannot write the run (No space left on device: '
                          f'{metrics}); the last checkpoint (round 1) is kept: fix that and '
                          f'rerun the same command to resume.')


@pytest.mark.parametrize('what', ['checkpoint', 'partition_cache'])
def test_a_disk_full_while_an_archive_is_written_names_it_without_a_zipfile_traceback(
    tmp_path_factory, tmp_path, monkeypatch, capfd, what):
  """Issue 38: a full disk inside a checkpoint's archive gave a message without the path, then a
  `ZipFile.__del__` traceback; the partition cache's said "No space left on device: None"."""
  import gc  # pylint: disable=g-import-not-at-top
  config = rs.config(tmp_path, rounds=1)
  if what == 'checkpoint':   # the partition cache is there: only the checkpoint is written
    shutil.copytree(rs.finished(tmp_path_factory, rounds=1).cache_dir, config.cache_dir)
  real = np.lib.format.write_array

  def full_disk(member, array, **kwargs):
    real(member, array[:0] if array.ndim else array, **kwargs)
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(np.lib.format, 'write_array', full_disk)
  with pytest.raises(SystemExit) as e:
    train.run_or_exit(config)
  if what == 'checkpoint':
    checkpoint = os.path.join(config.output_dir, 'checkpoints', 'ckpt-000001.npz')
    assert str(e.value) == (f'train: error: cannot write the run (No space left on device: '
                            f'{checkpoint}); no checkpoint was written yet, so nothing is kept: '
                            f'fix that and rerun the same command to start again.')
  else:
    assert str(e.value).startswith(f'train: error: the partition cache {tmp_path}/cache cannot be '
                                   f'written (No space left on device: {tmp_path}/cache/')
    assert str(e.value).endswith('.npz); pass another --cache_dir.')
  gc.collect()
  assert 'Exception ignored' not in capfd.readouterr().err
  assert not os.path.exists(config.output_dir)   # a new run without a checkpoint leaves nothing


@pytest.mark.parametrize('field, value, match', [
    ('eval_every', 0, 'eval_every must be an integer >= 1; got 0'),
    ('batch_size', 0, 'batch_size must be an integer >= 1; got 0'),
    ('rounds', 0, 'rounds must be an integer >= 1; got 0'),
    ('gamma', 7, r'gamma must be a number in \[0, 1\]; got 7'),
    ('alpha', -1.0, 'alpha must be a finite number > 0; got -1.0'),
])
def test_the_library_path_checks_the_fields_the_flags_check(tmp_path, field, value, match):
  """Issue 36: `run_config.check` accepted eval_every=0 (then a division by zero in round_loop),
  batch_size=0, rounds=0, gamma=7, alpha=-1; the flags refused them, the library did not. Each
  rule is now defined once (`run_config.FIELD_CHECKS`) and applied at both doors."""
  with pytest.raises(ValueError, match=rf'^{match}\.$'):
    run_config.check(rs.config(tmp_path, **{field: value}))
