"""Runs stopped and resumed: SIGKILL at any moment resumes bit-exact, no TFF worker is left
behind, divergence stops a run, damaged files are named or recovered."""

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from fedpara_tff import client_store
from experiments import checkpoints
from experiments import round_loop
from experiments import run_config
from experiments import run_io
from experiments import runner
from tests import run_support as rs
from tests import tff_support as ts


# The fast tests below check the runner's run folder (checkpoints, metrics.csv, the client store,
# run identities, the partition cache), the same code on either backend: their tiny runs go on the
# TF backend, which builds no TFF computations (a tiny run there took 7 s against 10 s on TFF,
# measured once). The SIGKILL and killed-binary tests (slow) run the binary on TFF.
FAST = dict(backend='tf')


def _run_killed_at(config, after_rows, delay):
  """Starts the binary in its own process group and SIGKILLs the whole group (TFF's worker
  included) `delay` seconds after `metrics.csv` first holds `after_rows` rows.

  No hook in the binary: the moment is picked from outside, so it can fall anywhere in the next
  round, in its evaluation, or between a round's metrics row and its checkpoint.
  """
  process = subprocess.Popen(rs.train_command(config), cwd=rs.REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
  try:
    deadline = time.monotonic() + 240   # checked on every poll, whatever the child prints
    path = os.path.join(config.output_dir, run_io.METRICS_FILE)
    while not (os.path.exists(path) and len(rs.rows(config.output_dir)) >= after_rows):
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


def _whole_and_resumed(tmp_path_factory, tmp_path, common_flags, after_rows, delay):
  """An uninterrupted 3-round run (`_whole_run`), and the same run killed (`_run_killed_at`)
  then resumed by rerunning its command; returns both configs."""
  whole = rs.finished(tmp_path_factory, **common_flags)
  cut = rs.config(tmp_path, 'cut', **common_flags)
  _run_killed_at(cut, after_rows, delay)
  resumed = subprocess.run(rs.train_command(cut), cwd=rs.REPO, capture_output=True, text=True,
                           timeout=300, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert [r['round'] for r in rs.rows(cut.output_dir)] == ['1', '2', '3']
  return whole, cut


# (parameterization, rows seen before the kill, delay in s): 0.0 with checkpoint_every=2 kills
# right after round 1's metrics row, before any checkpoint exists (the window between a round's
# metrics write and its checkpoint); the seeded delays land at random moments of round 2.
_KILLS = [('fedpara', 1, 0.0), ('pfedpara', 1, 0.0)] + [
    (p, 1, float(d)) for p, d in zip(('fedpara', 'pfedpara'),
                                     np.random.default_rng(7).uniform(0.05, 1.5, size=2))]


@pytest.mark.slow
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
    assert ([r[column] for r in rs.rows(whole.output_dir)] ==
            [r[column] for r in rs.rows(cut.output_dir)])


@pytest.mark.slow
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


def test_sqlite_store_missing_or_damaged_stops_with_one_line(tmp_path_factory, tmp_path):
  config = rs.finished_copy(tmp_path_factory, tmp_path, parameterization='pfedpara', rounds=1,
                            client_store='sqlite', **FAST)
  path = os.path.join(config.output_dir, client_store.FILE_NAME)
  os.rename(path, path + '.away')
  config = dataclasses.replace(config, rounds=2)
  with pytest.raises(client_store.ClientStoreError, match=r'is missing, so the clients\' state is '
                                                          r'lost; start the run again'):
    runner.run(config)
  with open(path, 'wb') as f:
    f.write(b'garbage' * 1000)
  with pytest.raises(client_store.ClientStoreError, match=r'is damaged'):
    runner.run(config)
  assert os.path.exists(path + '.away')   # nothing of the user's removed


def test_a_torn_last_metrics_row_is_not_a_row(tmp_path_factory, tmp_path):
  """The issue's case: a short write left `...,7638` of 763872 and empty cells; the row was
  kept and rewritten with those values on resume. A last line without its newline is dropped,
  and the run rewrites that round from its checkpoint."""
  config = rs.finished_copy(tmp_path_factory, tmp_path, rounds=2, **FAST)
  whole = rs.rows(config.output_dir)
  path = os.path.join(config.output_dir, run_io.METRICS_FILE)
  with open(path) as f:
    text = f.read()
  with open(path, 'w') as f:
    f.write(text[:-len(text.splitlines()[-1]) - 1] + text.splitlines()[-1][:25])  # cut round 2
  assert [r['round'] for r in run_io.read_metrics(config.output_dir)] == [1.0]
  os.remove(checkpoints.path_for(os.path.join(config.output_dir, 'checkpoints'), 2))
  runner.run(config)   # resumes from round 1's checkpoint and writes round 2 again

  def timeless(rows):
    return [{k: v for k, v in row.items() if k != 'wall_time_s'} for row in rows]

  assert timeless(rs.rows(config.output_dir)) == timeless(whole)


def test_a_deleted_metrics_file_is_refused_not_restarted_at_the_resumed_round(tmp_path_factory,
                                                                             tmp_path):
  config = rs.finished_copy(tmp_path_factory, tmp_path, rounds=2, **FAST)
  os.remove(os.path.join(config.output_dir, run_io.METRICS_FILE))
  config = dataclasses.replace(config, rounds=3)
  with pytest.raises(run_io.DamagedFileError,
                     match=r'metrics.csv lacks the rows of rounds 1-2 that the checkpoint of '
                           r'round 2 follows'):
    runner.run(config)
  assert not os.path.exists(os.path.join(config.output_dir, run_io.METRICS_FILE))


@pytest.mark.parametrize('damage', ['deleted', 'a_file'])
def test_damaged_checkpoints_are_refused_before_training_and_the_history_kept(
    tmp_path_factory, tmp_path, damage):
  """Issue 38: with `checkpoints/` deleted the run restarted at round 0 and blanked round 2's
  evaluation in metrics.csv; with `checkpoints` a file it retrained and rewrote metrics.csv,
  then claimed "the last checkpoint (round 0) is kept". Both are refused before any training."""
  config = rs.finished_copy(tmp_path_factory, tmp_path, rounds=2, **FAST)
  directory = os.path.join(config.output_dir, 'checkpoints')
  shutil.rmtree(directory)
  if damage == 'a_file':
    with open(directory, 'w') as f:
      f.write('not checkpoints')
  metrics = os.path.join(config.output_dir, run_io.METRICS_FILE)
  with open(metrics, 'rb') as f:
    before = f.read()
  config = dataclasses.replace(config, rounds=3)
  expected = (rf'{directory} is a file, not the run\'s checkpoints folder' if damage == 'a_file'
              else rf'{directory} is missing while {metrics} records rounds 1-2, so the run '
                   rf'cannot continue its history; nothing was changed')
  with pytest.raises(run_io.DamagedFileError, match=expected):
    runner.run(config)
  with open(metrics, 'rb') as f:
    assert f.read() == before
  assert os.path.lexists(directory) == (damage == 'a_file')


def test_a_new_run_makes_its_checkpoints_folder_before_its_first_round(tmp_path, monkeypatch):
  """So that a resume can tell "killed before the first checkpoint" (an empty folder: resume
  from round 0, its rows dropped) from deleted checkpoints (refused)."""
  config = rs.config(tmp_path, rounds=1, checkpoint_every=1, **FAST)
  seen = []
  real = runner.round_loop.run_rounds

  def spy(config_, *args, **kwargs):
    seen.append(sorted(os.listdir(os.path.join(config_.output_dir, 'checkpoints'))))
    return real(config_, *args, **kwargs)

  monkeypatch.setattr(runner.round_loop, 'run_rounds', spy)
  runner.run(config)
  assert seen == [[]]


def test_state_of_another_run_is_refused(tmp_path_factory, tmp_path):
  """The issue's case: a seed-1 run's checkpoint, or its SQLite client store, copied into a
  seed-0 run folder was resumed without a word. Both carry the run's identity now."""
  flags = dict(parameterization='pfedpara', rounds=1, client_store='sqlite')
  runs = {0: rs.finished_copy(tmp_path_factory, tmp_path, 'seed0', **flags, **FAST),
          1: rs.finished(tmp_path_factory, seed=1, **flags, **FAST)}   # only read
  assert runs[0].seed == 0
  mine, theirs = runs[0].output_dir, runs[1].output_dir
  name = os.path.join('checkpoints', 'ckpt-000001.npz')
  os.replace(os.path.join(mine, name), os.path.join(tmp_path, 'mine.npz'))
  shutil.copy(os.path.join(theirs, name), os.path.join(mine, name))
  runs[0] = dataclasses.replace(runs[0], rounds=2)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'ckpt-000001.npz was written by another run \(run identity'):
    runner.run(runs[0])
  os.replace(os.path.join(tmp_path, 'mine.npz'), os.path.join(mine, name))
  store = os.path.join(mine, client_store.FILE_NAME)
  shutil.copy(os.path.join(theirs, client_store.FILE_NAME), store)
  with pytest.raises(client_store.ClientStoreError, match=r'belongs to another run'):
    runner.run(runs[0])


def _without_identity(path):
  """Rewrites the checkpoint at `path` as a version before run identities wrote it."""
  with np.load(path) as stored:
    arrays = {k: stored[k] for k in stored.files}
  meta = json.loads(str(arrays['meta']))
  del meta['run']
  arrays['meta'] = np.asarray(json.dumps(meta))
  with open(path, 'wb') as f:
    np.savez(f, **arrays)


def test_a_checkpoint_without_identity_resumes_only_where_the_folders_history_vouches(
    tmp_path_factory, tmp_path):
  """Issue 38: a checkpoint written before checkpoints recorded their run (no `run` key) was
  resumed by a run with another seed."""
  runs = {0: rs.finished_copy(tmp_path_factory, tmp_path, 'seed0', **FAST),
          1: rs.finished(tmp_path_factory, seed=1, **FAST)}   # only read
  mine = os.path.join(runs[0].output_dir, 'checkpoints', 'ckpt-000002.npz')
  theirs = os.path.join(tmp_path, 'theirs.npz')
  shutil.copy(os.path.join(runs[1].output_dir, 'checkpoints', 'ckpt-000002.npz'), theirs)
  _without_identity(theirs)
  os.replace(mine, os.path.join(tmp_path, 'mine.npz'))
  shutil.copy(theirs, mine)
  runs[0] = dataclasses.replace(runs[0], rounds=3)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'ckpt-000002.npz records no run identity .* metrics.csv does not '
                           r'vouch for it'):
    runner.run(runs[0])
  os.replace(os.path.join(tmp_path, 'mine.npz'), mine)
  _without_identity(mine)   # this run's own, from before identities: its history vouches
  runner.run(runs[0])
  assert [r['round'] for r in rs.rows(runs[0].output_dir)] == ['1', '2', '3']


def test_an_emptied_store_is_not_silently_a_new_one(tmp_path_factory, tmp_path):
  """The issue's case: a store truncated to 0 bytes became a new, empty store."""
  config = rs.finished_copy(tmp_path_factory, tmp_path, parameterization='pfedpara', rounds=1,
                            client_store='sqlite', **FAST)
  with open(os.path.join(config.output_dir, client_store.FILE_NAME), 'wb'):
    pass
  config = dataclasses.replace(config, rounds=2)
  with pytest.raises(client_store.ClientStoreError, match=r'holds no clients\' state .* resumes'):
    runner.run(config)


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


@pytest.mark.slow
@pytest.mark.parametrize('target,signum', [('binary', signal.SIGTERM),
                                            ('binary', signal.SIGKILL),
                                            ('group', signal.SIGTERM),
                                            ('group', signal.SIGINT)])
def test_killed_binary_leaves_no_worker(tmp_path, target, signum):
  """`binary`: the signal reaches the binary alone (the watchdog cleans up after SIGKILL);
  `group`: its whole process group, workers included, as Ctrl-C in a terminal or
  `kill -TERM -PGID` do (a dead worker must not make the exit print gRPC tracebacks)."""
  config = rs.config(tmp_path, rounds=500, checkpoint_every=1)
  process = subprocess.Popen(rs.train_command(config), cwd=rs.REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
  workers = []
  try:
    deadline = time.monotonic() + 240
    metrics = os.path.join(config.output_dir, run_io.METRICS_FILE)
    # A finished round: its metrics row and its checkpoint (written after the row).
    while not (os.path.exists(metrics) and len(rs.rows(config.output_dir)) >= 1
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


def test_resume_on_other_data_or_evaluation_set_is_refused(tmp_path_factory, tmp_path):
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
  rs.finished_copy(tmp_path_factory, tmp_path, rounds=1, **FAST)
  # The same data from another folder resumes.
  assert runner.run(rs.config(tmp_path, rounds=2, data_dir=str(same), **FAST))['rounds'] == 2
  with pytest.raises(run_io.RunConflictError, match=r'different flags \(data_sha256: '):
    runner.run(rs.config(tmp_path, rounds=3, data_dir=str(other), **FAST))
  with pytest.raises(run_io.RunConflictError, match=r'different flags \(max_test_examples: 0 -> 50'):
    runner.run(rs.config(tmp_path, rounds=3, max_test_examples=50, **FAST))
  assert [r['round'] for r in rs.rows(str(tmp_path / 'run'))] == ['1', '2']


# ---- damaged files read back -----------------------------------------------------------------

@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
  whole = rs.config(tmp_path, 'whole', rounds=3)
  runner.run(whole)
  cut = rs.config(tmp_path, 'cut', rounds=2)
  runner.run(cut)
  newest = checkpoints.path_for(os.path.join(cut.output_dir, 'checkpoints'), 2)
  with open(newest, 'rb') as f:
    content = f.read()
  with open(newest, 'wb') as f:
    f.write(content[:len(content) // 2])   # truncated
  cut = dataclasses.replace(cut, rounds=3)
  runner.run(cut)
  err = capfd.readouterr().err
  assert f'checkpoint {newest} is damaged' in err and 'resuming from round 1 instead' in err
  assert [r['round'] for r in rs.rows(cut.output_dir)] == ['1', '2', '3']
  for column in ('train_loss', 'bytes_uploaded', 'test_accuracy'):
    assert ([r[column] for r in rs.rows(whole.output_dir)] ==
            [r[column] for r in rs.rows(cut.output_dir)])


def test_damaged_partition_cache_is_recomputed(tmp_path_factory, tmp_path):
  config = rs.finished(tmp_path_factory, rounds=1, **FAST)   # only read; its cache is copied
  shutil.copytree(config.cache_dir, tmp_path / 'cache')
  (entry,) = glob.glob(os.path.join(tmp_path, 'cache', '*.npz'))
  with open(entry, 'r+b') as f:
    f.seek(40)
    f.write(b'\xff' * 64)   # bad CRC / header
  again = rs.config(tmp_path, 'again', rounds=1, **FAST)
  runner.run(again)
  assert rs.rows(again.output_dir)[0]['train_loss'] == rs.rows(config.output_dir)[0]['train_loss']


@pytest.mark.parametrize('name, content, message', [
    (run_io.RUN_FILE, '{"dataset": "mnist', r'run.json is damaged .*--overwrite'),
    (run_io.METRICS_FILE, 'round,clients\n1,2,3,4\n', r'metrics.csv is damaged \(its header'),
    pytest.param(run_io.METRICS_FILE, ','.join(run_io.COLUMNS) + '\n1,x\n',
                 r'metrics.csv is damaged', marks=pytest.mark.slow),
])
def test_damaged_run_files_are_named(tmp_path_factory, tmp_path, name, content, message):
  config = rs.finished_copy(tmp_path_factory, tmp_path, rounds=1, **FAST)
  with open(os.path.join(config.output_dir, name), 'w') as f:
    f.write(content)
  config = dataclasses.replace(config, rounds=2)
  with pytest.raises(run_io.DamagedFileError, match=message):
    runner.run(config)


def test_failed_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(np.lib.format, 'write_array', full_disk)   # inside the archive
  with pytest.raises(OSError, match='No space left'):
    checkpoints.save(str(tmp_path), 1, [np.ones(2)], [], {})
  assert os.listdir(tmp_path) == []


def test_metrics_keep_full_precision_on_resume(tmp_path):
  config = rs.config(tmp_path, model='small_cnn', parameterization='original', rounds=1, **FAST)
  runner.run(config)
  before = rs.rows(config.output_dir)[0]
  config = dataclasses.replace(config, rounds=2)
  runner.run(config)
  after = rs.rows(config.output_dir)[0]
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
      cwd=rs.REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(
      'compare: error: parameterization=local: algorithm=scaffold acts on the global variables')
  assert not (tmp_path / 'cmp').exists()


def test_output_and_cache_paths_that_are_files_are_refused(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('mine')
  with pytest.raises(run_io.RunConflictError, match=r'output_dir .*a_file is a file, not a folder'):
    runner.run(rs.config(tmp_path, 'a_file', rounds=1, **FAST))
  with pytest.raises(run_io.RunConflictError, match=r'output_dir .*cannot be written \(Not a '):
    runner.run(rs.config(tmp_path, 'a_file/run', rounds=1, **FAST))
  config = dataclasses.replace(rs.config(tmp_path, 'cached', rounds=1, **FAST),
                               cache_dir=str(a_file / 'cache'))
  with pytest.raises(ValueError, match=r'partition cache .*cannot be written \(Not a directory'):
    runner.run(config)
  assert a_file.read_text() == 'mine'


def test_rerun_with_fewer_rounds_says_that_more_were_done(tmp_path_factory, tmp_path, capfd):
  finished = rs.finished_copy(tmp_path_factory, tmp_path, 'run', rounds=2, **FAST)
  capfd.readouterr()
  summary = runner.run(rs.config(tmp_path, 'run', rounds=1, **FAST))
  err = capfd.readouterr().err
  assert (f'note: output_dir {finished.output_dir} holds 2 rounds of this run, more than '
          f'--rounds=1: nothing was trained, and the summary is of round 2.') in err
  assert summary['rounds'] == 2
  assert [r['round'] for r in rs.rows(finished.output_dir)] == ['1', '2']
