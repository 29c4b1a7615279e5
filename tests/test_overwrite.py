"""`--overwrite` removes only what a run wrote; a folder holding anything else is refused."""

import os

import pytest

from experiments import run_io

FLAGS = {'dataset': 'mnist5k', 'seed': 0}


def _fake_run(folder):
  """The files a finished run leaves (names as experiments.runner writes them)."""
  folder.mkdir(exist_ok=True)
  for name in (run_io.RUN_FILE, run_io.METRICS_FILE, run_io.SUMMARY_FILE, run_io.PLOT_FILE):
    (folder / name).write_text('{}' if name.endswith('.json') else 'x')
  (folder / 'checkpoints').mkdir()
  (folder / 'checkpoints' / 'ckpt-000001.npz').write_bytes(b'x')
  (folder / 'tensorboard').mkdir()
  (folder / 'tensorboard' / 'events.out.tfevents.1.host').write_bytes(b'x')


def _tree(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, files in os.walk(folder) for f in files)


def test_overwrite_replaces_a_run(tmp_path):
  run = tmp_path / 'run'
  _fake_run(run)
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


def test_data_dir_as_output_dir_is_never_emptied(tmp_path, monkeypatch):
  # The case: --data_dir=d --output_dir=d --overwrite deleted the user's data file.
  data = tmp_path / 'd'
  data.mkdir()
  (data / 'mnist_5k.csv.gz').write_bytes(b'data')
  monkeypatch.chdir(tmp_path)
  with pytest.raises(run_io.RunConflictError, match='mnist_5k.csv.gz'):
    run_io.prepare('d', FLAGS, overwrite=True)
  with pytest.raises(run_io.RunConflictError, match=r'holds \./d, which a run did not write'):
    run_io.prepare('.', FLAGS, overwrite=True)   # the working directory: refused, untouched
  assert (data / 'mnist_5k.csv.gz').read_bytes() == b'data'


def test_without_overwrite_a_foreign_folder_is_refused_without_suggesting_overwrite(tmp_path):
  folder = tmp_path / 'mine'
  folder.mkdir()
  (folder / 'thesis.tex').write_text('x')
  with pytest.raises(run_io.RunConflictError, match=r'holds no run \(it holds .*thesis.tex\)') as e:
    run_io.prepare(str(folder), FLAGS, overwrite=False)
  assert '--overwrite' not in str(e.value)
