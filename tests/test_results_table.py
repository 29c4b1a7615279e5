"""experiments.analysis.run_tables (behind results_table and sweep_table): mean +- std over seeds, the
step-size sweep's cells; the results_table binary end to end."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.analysis import run_tables
from experiments import run_io


def _run(folder, seed, accuracies, losses, errors=None, **flags):
  """A run folder in the format experiments.train writes: run.json and metrics.csv (with the
  aggregation error of each round when `errors` gives it)."""
  os.makedirs(folder)
  with open(os.path.join(folder, run_io.RUN_FILE), 'w') as f:
    json.dump({'parameterization': 'fedpara', 'client_learning_rate': 0.1, **flags,
               'seed': seed, 'output_dir': str(folder)}, f)
  with open(os.path.join(folder, run_io.METRICS_FILE), 'w', newline='') as f:
    writer = csv.DictWriter(f, run_io.COLUMNS)
    writer.writeheader()
    for i, (accuracy, loss) in enumerate(zip(accuracies, losses)):
      writer.writerow(dict(round=i + 1, clients=2, diverged_clients=0, train_loss=loss,
                           train_accuracy=0.5, test_loss=1.0, test_accuracy=accuracy,
                           bytes_uploaded=100, bytes_downloaded=100,
                           cumulative_gb=(i + 1) * 2e-7, wall_time_s=i + 1.0,
                           aggregation_error_mean=errors[i] if errors else None))
  return str(folder)


def test_seeds_of_a_name_form_one_row_with_mean_and_sample_std(tmp_path):
  finals = [0.80, 0.84, 0.78]
  folders = [_run(tmp_path / 'fedpara', 0, [0.5, finals[0]], [1.0, 0.5]),
             _run(tmp_path / 'fedpara_seed1', 1, [0.9, finals[1]], [1.0, 0.4]),
             _run(tmp_path / 'fedpara_seed2', 2, [0.5, finals[2]], [1.0, 0.6]),
             _run(tmp_path / 'lowrank', 0, [0.5, 0.7], [1.0, 0.7])]
  groups = run_tables.seed_groups(folders)
  assert list(groups) == ['fedpara', 'lowrank']
  row = run_tables.seed_row(groups['fedpara'], 2)
  assert row['seeds'] == 3
  assert row['test_accuracy'] == pytest.approx((np.mean(finals), np.std(finals, ddof=1)))
  assert row['best_accuracy'] == pytest.approx((np.mean([0.8, 0.9, 0.78]),
                                                np.std([0.8, 0.9, 0.78], ddof=1)))
  assert row['train_loss'] == pytest.approx((0.5, np.std([0.5, 0.4, 0.6], ddof=1)))
  mean, std = run_tables.seed_row(groups['lowrank'], 2)['test_accuracy']
  assert mean == 0.7 and math.isnan(std)   # one seed has no spread (it printed +- 0.0000)


def test_runs_of_one_name_must_differ_only_in_the_seed(tmp_path):
  folders = [_run(tmp_path / 'fedpara', 0, [0.5], [1.0]),
             _run(tmp_path / 'fedpara_seed1', 1, [0.5], [1.0], client_learning_rate=0.3)]
  with pytest.raises(ValueError, match=r"fedpara_seed1 differs from .* in \['client_learning_rate'"):
    run_tables.seed_groups(folders)


def test_seeds_may_each_pretrain_their_own_weights(tmp_path):
  folders = [_run(tmp_path / 'head', 0, [0.5], [1.0], pretrained_sha256='aa'),
             _run(tmp_path / 'head_seed1', 1, [0.5], [1.0], pretrained_sha256='bb')]
  assert list(run_tables.seed_groups(folders)) == ['head']
  folders.append(_run(tmp_path / 'head_seed2', 2, [0.5], [1.0], pretrained_sha256='cc',
                      trainable_layers=['logits', 'fc1']))
  with pytest.raises(ValueError, match=r"head_seed2 differs from .* in \['trainable_layers'\]"):
    run_tables.seed_groups(folders)


def test_the_binary_prints_the_spread(tmp_path):
  _run(tmp_path / 'a', 0, [0.6], [1.0])
  _run(tmp_path / 'a_seed1', 1, [0.8], [1.0])
  _run(tmp_path / 'b', 0, [0.5], [1.0])
  result = subprocess.run([sys.executable, '-m', 'experiments.analysis.results_table', '--seeds',
                           f'--runs={tmp_path}/*'], capture_output=True, text=True, check=True)
  assert '| a | 2 | 1 | 1.0000 +- 0.0000 | 0.7000 +- 0.1414 |' in result.stdout
  assert '| b | 1 | 1 | 1.0000 | 0.5000 | 0.5000 |' in result.stdout


def test_the_sweep_table_marks_divergence_and_counts_it_where_the_original_trained(tmp_path):
  setting = tmp_path / 'fashion_cnn_iid'
  for name, accuracy in (('original_sgd0.1', 0.80), ('original_sgd0.3', 0.10),
                         ('fedpara_sgd0.1', 0.75), ('fedpara_sgd0.3', 0.78),
                         ('fedpara_safe_sgd0.1', 0.70), ('fedpara_adam0.001', 0.79)):
    _run(setting / name, 0, [0.5, accuracy], [1.0, 0.5])
    (setting / name / run_io.SUMMARY_FILE).write_text('{}')
  # Stopped by the runner on a non-finite loss: a note beside the folder, no summary.
  (setting / 'fedpara_safe_sgd0.3.diverged.txt').write_text('round 3: training diverged')
  _run(setting / 'lowrank_sgd0.1', 0, [0.5], [1.0])   # unfinished: no summary.json
  cells = run_tables.read_setting(str(setting), chance=0.2)
  assert ('lowrank', 'sgd', 0.1) not in cells
  assert cells['original', 'sgd', 0.3] == (0.10, True)       # at chance: diverged
  assert cells['fedpara_safe', 'sgd', 0.3][1] is True
  assert run_tables.table_lines(cells)[2:] == [
      '| original | 0.8000 | div | n/a |',
      '| fedpara | 0.7500 | 0.7800 | 0.7900 |',
      '| fedpara_safe | 0.7000 | div | n/a |']
  summary = run_tables.summary_lines(cells)[2:]
  # fedpara_safe diverged at sgd 0.3 where the original diverged too: 1 divergence, 0 of them
  # where the original trained.
  assert summary == ['| original | 0.1 (0.8000) | - | 1 | 0 |',
                     '| fedpara | 0.3 (0.7800) | 0.001 (0.7900) | 0 | 0 |',
                     '| fedpara_safe | 0.1 (0.7000) | - | 1 | 0 |']


def test_the_aggregation_error_is_averaged_over_rounds_and_seeds_and_plotted(tmp_path):
  """Issue 40: results_table and the plot tool show the aggregation error."""
  folders = [_run(tmp_path / 'fedpara', 0, [0.5, 0.8], [1.0, 0.5], errors=[0.02, 0.04]),
             _run(tmp_path / 'fedpara_seed1', 1, [0.5, 0.8], [1.0, 0.5], errors=[0.06, 0.08]),
             _run(tmp_path / 'old', 0, [0.5, 0.8], [1.0, 0.5])]   # written before it existed
  assert run_tables.row_at(folders[0], 2)['aggregation_error'] == pytest.approx(0.03)
  assert run_tables.row_at(folders[0], 1)['aggregation_error'] == pytest.approx(0.02)
  assert math.isnan(run_tables.row_at(folders[2], 2)['aggregation_error'])
  row = run_tables.seed_row(folders[:2], 2)
  assert row['aggregation_error'] == pytest.approx((0.05, np.std([0.03, 0.07], ddof=1)))
  result = subprocess.run([sys.executable, '-m', 'experiments.analysis.results_table',
                           f'--runs={",".join(folders)}'], capture_output=True, text=True,
                          timeout=120, check=True)
  lines = result.stdout.splitlines()
  assert '| agg. error |' in lines[0]
  assert lines[2].split(' | ')[5] == '0.0300' and lines[4].split(' | ')[5] == '-'
  from experiments import plot  # pylint: disable=g-import-not-at-top
  drawn = plot.plot_runs(folders, str(tmp_path / 'error.png'), y='aggregation_error')
  assert drawn == {folders[0]: ([1.0, 2.0], [0.02, 0.04]),
                   folders[1]: ([1.0, 2.0], [0.06, 0.08])}   # the old run has no curve


def test_error_course_prints_the_error_by_round_over_seeds(tmp_path):
  folders = [_run(tmp_path / 'fedpara', 0, [0.5, 0.8, 0.8], [1, 1, 1], errors=[0.02, 0.04, 0.06]),
             _run(tmp_path / 'fedpara_seed1', 1, [0.5, 0.8, 0.8], [1, 1, 1],
                  errors=[0.04, 0.08, 0.10])]
  result = subprocess.run([sys.executable, '-m', 'experiments.analysis.error_course',
                           f'--runs={tmp_path}/*', '--rounds=1,3'], capture_output=True,
                          text=True, timeout=120, check=True)
  lines = result.stdout.splitlines()
  assert lines[0] == '| run | round 1 | round 3 | largest kernel, round 3 |'
  # mean +- sample std over the two seeds (std of 0.02, 0.04 is 0.0141), the maximum not written
  assert lines[2] == ('| fedpara | 0.0300 +- 0.0141 (2 seeds) | 0.0800 +- 0.0283 (2 seeds) | - |')
