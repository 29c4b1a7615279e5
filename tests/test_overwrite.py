"""`--overwrite` removes only files a run wrote, judged by what they hold (its `run.json`, its
metrics header, its summary, checkpoints, the SQLite store, plots and TensorBoard files marked as
ours); a folder holding anything else, or no run at all, is refused and nothing is deleted."""

import json
import os
import sqlite3

import numpy as np
import pytest

from experiments import ownership
from experiments import plot
from experiments import run_io

FLAGS = {'dataset': 'mnist5k', 'model': 'small_cnn', 'parameterization': 'fedpara', 'seed': 0}
HEADER = 'round,clients,train_loss,test_accuracy,bytes_uploaded,bytes_downloaded\n'


def _fake_run(folder):
  """The files a finished run leaves, in the formats experiments.runner writes them."""
  folder.mkdir(exist_ok=True)
  (folder / run_io.RUN_FILE).write_text(json.dumps(FLAGS))
  (folder / run_io.METRICS_FILE).write_text(HEADER + '1,2,0.5,0.9,10,10\n')
  (folder / run_io.SUMMARY_FILE).write_text(json.dumps(dict(
      parameterization='fedpara', gb_total=1e-6, test_accuracy=0.9, output_dir=str(folder))))
  figure = plot.new_figure()
  figure.subplots().plot([0, 1], [0, 1])
  plot.save_figure(figure, str(folder / run_io.PLOT_FILE))
  (folder / 'checkpoints').mkdir()
  with open(folder / 'checkpoints' / 'ckpt-000001.npz', 'wb') as f:
    np.savez(f, meta='{}', state_00000=np.zeros(2))
  (folder / 'tensorboard').mkdir()
  (folder / 'tensorboard' / f'events.out.tfevents.1.host{ownership.EVENTS_SUFFIX}').write_bytes(b'x')
  store = sqlite3.connect(folder / 'client_state.sqlite')
  store.execute('CREATE TABLE clients (id TEXT, state BLOB)')
  store.execute('CREATE TABLE meta (key TEXT, value TEXT)')
  store.commit()
  store.close()


def _tree(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, files in os.walk(folder) for f in files)


def test_overwrite_replaces_a_run(tmp_path):
  run = tmp_path / 'run'
  _fake_run(run)
  assert ownership.foreign_entry(str(run)) is None
  assert run_io.prepare(str(run), FLAGS, overwrite=True) is False
  assert _tree(run) == [run_io.RUN_FILE]


@pytest.mark.parametrize('foreign, named', [
    ('data.csv', 'data.csv'), ('checkpoints/notes.txt', 'checkpoints/notes.txt'),
    ('tensorboard/x.png', 'tensorboard/x.png'), ('subdir/file', 'subdir')])
def test_overwrite_refuses_a_folder_with_other_files_and_deletes_nothing(tmp_path, foreign, named):
  run = tmp_path / 'run'
  _fake_run(run)
  (run / foreign).parent.mkdir(exist_ok=True)
  (run / foreign).write_text('user data')
  before = _tree(run)
  with pytest.raises(run_io.RunConflictError,
                     match=rf'--overwrite refused: .* holds {run}/{named}, which a run did not '
                           r'write; nothing was deleted'):
    run_io.prepare(str(run), FLAGS, overwrite=True)
  assert _tree(run) == before


@pytest.mark.parametrize('name, content', [
    ('metrics.csv', 'date,steps,loss\n2026-01-01,3,0.1\n'),         # the user's own metrics
    ('summary.json', '{"accuracy": 0.93}'),
    ('accuracy_vs_gb.png', b'\x89PNG\r\n\x1a\n another tool'),
    ('tensorboard/events.out.tfevents.1.host', b'another tool\'s events'),
    ('checkpoints/ckpt-000002.npz', b'not a zip'),
    ('client_state.sqlite', b'SQLite format 3\x00 but not a store'),
])
def test_a_file_with_a_run_files_name_but_not_its_content_is_not_removed(tmp_path, name, content):
  """The issue's case: files named as a run's but not written by one are the user's."""
  run = tmp_path / 'run'
  _fake_run(run)
  path = run / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(run_io.RunConflictError, match=rf'holds {path}, which a run did not write'):
    run_io.prepare(str(run), FLAGS, overwrite=True)
  assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())


def test_a_folder_without_run_json_is_nobodys_run_and_is_never_emptied(tmp_path):
  """Run-like files but no run.json (the issue's case): not the run's, with or without
  --overwrite, and the message does not invite deleting them."""
  folder = tmp_path / 'mine'
  _fake_run(folder)
  (folder / run_io.RUN_FILE).unlink()
  before = _tree(folder)
  for overwrite in (False, True):
    with pytest.raises(run_io.RunConflictError, match=r'holds no run \(no run\.json') as e:
      run_io.prepare(str(folder), FLAGS, overwrite=overwrite)
    assert 'pass --overwrite' not in str(e.value)
    assert _tree(folder) == before
  (folder / run_io.RUN_FILE).write_text('{"name": "my experiment"}')   # another tool's run.json
  with pytest.raises(run_io.RunConflictError, match=r'holds no run \(no run\.json'):
    run_io.prepare(str(folder), FLAGS, overwrite=True)
  assert _tree(folder) == sorted(before + [run_io.RUN_FILE])


def test_data_dir_as_output_dir_is_never_emptied(tmp_path, monkeypatch):
  # The case: --data_dir=d --output_dir=d --overwrite deleted the user's data file.
  data = tmp_path / 'd'
  data.mkdir()
  (data / 'mnist_5k.csv.gz').write_bytes(b'data')
  monkeypatch.chdir(tmp_path)
  with pytest.raises(run_io.RunConflictError, match='mnist_5k.csv.gz'):
    run_io.prepare('d', FLAGS, overwrite=True)
  with pytest.raises(run_io.RunConflictError, match=r'holds no run .*\./d'):
    run_io.prepare('.', FLAGS, overwrite=True)   # the working directory: refused, untouched
  assert (data / 'mnist_5k.csv.gz').read_bytes() == b'data'


def test_without_overwrite_a_foreign_folder_is_refused_without_suggesting_overwrite(tmp_path):
  folder = tmp_path / 'mine'
  folder.mkdir()
  (folder / 'thesis.tex').write_text('x')
  with pytest.raises(run_io.RunConflictError, match=r'holds no run \(.*thesis.tex\)') as e:
    run_io.prepare(str(folder), FLAGS, overwrite=False)
  assert '--overwrite' not in str(e.value)


def test_plots_never_replace_a_file_they_did_not_write(tmp_path):
  """The issue's case: `compare` replaced a user's accuracy_vs_gb.png in its --output_dir."""
  mine = tmp_path / run_io.PLOT_FILE
  mine.write_bytes(b'\x89PNG\r\n\x1a\n the user\'s own figure')
  with pytest.raises(ValueError, match=rf'^{mine} exists and is not a plot this program wrote'):
    plot.check_output(str(tmp_path))
  assert mine.read_bytes().endswith(b'own figure')
  ours = tmp_path / 'ours.png'
  figure = plot.new_figure()
  figure.subplots().plot([0, 1], [0, 1])
  plot.save_figure(figure, str(ours))
  plot.check_output(str(ours))   # ours: may be replaced


def test_compare_checks_its_plot_and_overwritten_folders_before_any_run_trains(tmp_path):
  import types  # pylint: disable=g-import-not-at-top
  from experiments import compare  # pylint: disable=g-import-not-at-top
  (tmp_path / run_io.PLOT_FILE).write_bytes(b'\x89PNG\r\n\x1a\n mine')
  with pytest.raises(SystemExit, match=r'compare: error: .*accuracy_vs_gb.png exists and is not'):
    compare._check_outputs(str(tmp_path), [])  # pylint: disable=protected-access
  (tmp_path / run_io.PLOT_FILE).unlink()
  run = tmp_path / 'fedpara'
  _fake_run(run)
  (run / 'notes.txt').write_text('mine')
  config = types.SimpleNamespace(overwrite=True, output_dir=str(run))
  with pytest.raises(SystemExit, match=r'--overwrite refused: .*holds .*notes.txt'):
    compare._check_outputs(str(tmp_path), [config])  # pylint: disable=protected-access
  assert (run / 'notes.txt').read_text() == 'mine'


def test_compare_never_takes_a_users_matplotlib_png_for_its_plot(tmp_path):
  """Issue 38: beside a run subfolder, an unmarked matplotlib PNG was taken for an older
  version's comparison plot and replaced (exit 0)."""
  import types  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  from experiments import compare  # pylint: disable=g-import-not-at-top
  _fake_run(tmp_path / 'fedpara')
  users = figure_lib.Figure()
  users.subplots().plot([0, 1], [1, 0])
  users.savefig(tmp_path / run_io.PLOT_FILE, format='png')   # matplotlib's own metadata
  before = (tmp_path / run_io.PLOT_FILE).read_bytes()
  assert b'Matplotlib' in before
  config = types.SimpleNamespace(overwrite=False, output_dir=str(tmp_path / 'fedpara'))
  with pytest.raises(SystemExit, match=r'compare: error: .*accuracy_vs_gb.png exists and is not '
                                       r'a plot this program wrote'):
    compare._check_outputs(str(tmp_path), [config])  # pylint: disable=protected-access
  assert (tmp_path / run_io.PLOT_FILE).read_bytes() == before
