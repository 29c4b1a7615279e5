"""experiments.analysis.capacity_map: paired differences by budget, from hand-written runs."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from experiments import ownership
from experiments import run_io
from experiments.analysis import capacity_points


def _write_run(folder, accuracies, errors, parameters, finished=True):
  """A run folder whose metrics.csv has rounds 1..len(errors), accuracy at rounds 20 and 40."""
  os.makedirs(folder)
  with open(os.path.join(folder, run_io.METRICS_FILE), 'w', newline='') as f:
    writer = csv.DictWriter(f, run_io.COLUMNS)
    writer.writeheader()
    for round_num, error in enumerate(errors, start=1):
      row = {'round': round_num, 'aggregation_error_mean': error,
             'cumulative_gb': round_num * parameters / 1e5}
      row['test_accuracy'] = accuracies.get(round_num, '')
      writer.writerow(row)
  with open(os.path.join(folder, run_io.RUN_FILE), 'w') as f:
    json.dump({'seed': 0}, f)
  if finished:
    with open(os.path.join(folder, run_io.SUMMARY_FILE), 'w') as f:
      json.dump({'parameters': parameters, 'plain_parameters': 1000}, f)


@pytest.fixture(name='setting')
def _setting(tmp_path):
  """Budget r2 (FedPara 40, low-rank 41 parameters) over three seeds, budget g0 over two (the
  third low-rank seed stopped at round 30), and two seeds of the original."""
  fedpara = {0: 0.70, 1: 0.72, 2: 0.68}
  lowrank = {0: 0.71, 1: 0.70, 2: 0.66}
  for seed in range(3):
    suffix = f'_seed{seed}' if seed else ''
    _write_run(tmp_path / f'fedpara_r2{suffix}', {40: fedpara[seed]}, [0.1] * 39 + [0.3], 40)
    _write_run(tmp_path / f'lowrank_r2{suffix}', {40: lowrank[seed]}, [0.05] * 40, 41)
    _write_run(tmp_path / f'fedpara_g0{suffix}', {40: 0.80 + seed / 100}, [0.2] * 40, 200)
  _write_run(tmp_path / 'lowrank_g0', {40: 0.81}, [0.1] * 40, 199)
  _write_run(tmp_path / 'lowrank_g0_seed1', {40: 0.83}, [0.1] * 40, 199)
  _write_run(tmp_path / 'lowrank_g0_seed2', {20: 0.5}, [0.1] * 30, 199, finished=False)
  _write_run(tmp_path / 'original', {40: 0.90}, [math.nan] * 40, 1000)
  _write_run(tmp_path / 'original_seed1', {40: 0.86}, [math.nan] * 40, 1000)
  (tmp_path / 'notes').mkdir()   # not a run name: ignored
  return tmp_path


def test_budget_points_pair_the_seeds_both_models_finished(setting):
  runs, unfinished = capacity_points.read_runs(str(setting), 40)
  assert unfinished == ['lowrank_g0_seed2']
  small, large = capacity_points.budget_points(runs)
  assert (small['budget'], large['budget']) == ('r2', 'g0')   # ordered by FedPara's parameters
  assert small['fedpara_share'] == pytest.approx(0.040)
  assert small['lowrank_share'] == pytest.approx(0.041)
  # Differences 0.70-0.71, 0.72-0.70, 0.68-0.66 = -0.01, 0.02, 0.02: mean 0.01, std sqrt(0.0003).
  mean, std, n = small['difference']
  assert (mean, std, n) == (pytest.approx(0.01), pytest.approx(math.sqrt(0.0003)), 3)
  assert small['fedpara'][:2] == (pytest.approx(0.70), pytest.approx(0.02))
  # The aggregation error: mean over rounds 1-40 of each run, then over seeds.
  assert small['fedpara_error'][0] == pytest.approx((39 * 0.1 + 0.3) / 40)
  # g0: FedPara 0.80, 0.81 against low-rank 0.81, 0.83 on the two paired seeds.
  assert large['difference'][0] == pytest.approx(-0.015) and large['difference'][2] == 2
  assert large['fedpara'][2] == 3 and large['lowrank'][2] == 2
  assert capacity_points.original_point(runs)[:2] == (pytest.approx(0.88),
                                                      pytest.approx(math.sqrt(0.0008)))


def test_gb_to_a_target_counts_the_seeds_that_reached_it(setting):
  runs, _ = capacity_points.read_runs(str(setting), 40)
  small, _ = capacity_points.budget_points(runs, target=0.705)
  # FedPara reaches 0.705 on seed 1 only (0.72), low-rank on seed 0 only (0.71), both at round 40:
  # 40 rounds x parameters / 1e5 GB.
  assert small['gb_to_target'] == ((pytest.approx(40 * 40 / 1e5), 1, 3),
                                   (pytest.approx(40 * 41 / 1e5), 1, 3))
  assert capacity_points.original_gb_to(runs, 0.88) == (pytest.approx(40 * 1000 / 1e5), 1, 2)
  lines = capacity_points.table_lines([small], capacity_points.original_point(runs),
                                      capacity_points.original_gb_to(runs, 0.88))
  assert lines[2].endswith('| 0.016 (1 of 3) / 0.016 (1 of 3) |')
  assert lines[3].endswith('| 0.400 (1 of 2) |')


def test_table_lines_state_shares_spread_and_seed_counts(setting):
  runs, _ = capacity_points.read_runs(str(setting), 40)
  lines = capacity_points.table_lines(capacity_points.budget_points(runs),
                                      capacity_points.original_point(runs))
  assert lines[2] == ('| r2 | 40 (4.0%) | 41 (4.1%) | 0.7000 +- 0.0200 | 0.6900 +- 0.0265 | '
                      '1.00 +- 1.73 | 0.105 +- 0.000 / 0.050 +- 0.000 |')
  assert '| g0 | 200 (20.0%) | 199 (19.9%) |' in lines[3]
  assert '-1.50 +- 0.71 (2 seeds)' in lines[3]
  assert lines[4] == '| original | 100% | | 0.8800 +- 0.0283 (2 seeds) | | | |'


def test_the_binary_prints_the_map_and_draws_a_marked_figure(setting, tmp_path_factory):
  out = tmp_path_factory.mktemp('out')
  figure = out / 'map.png'
  done = subprocess.run([sys.executable, '-m', 'experiments.analysis.capacity_map',
                         f'--settings=IID={setting}', f'--figure={figure}',
                         f'--copy_to={out / "copied"}'], capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert '| r2 | 40 (4.0%) |' in done.stdout
  assert 'GB to target FedPara / low-rank' in done.stdout   # 0.95 of the original's 0.88
  assert 'not at round 40 (running, stopped or diverged): lowrank_g0_seed2' in done.stdout
  assert ownership.is_plot(str(figure))
  copied = sorted(os.listdir(out / 'copied' / os.path.basename(setting)))
  assert 'fedpara_r2.metrics.csv' in copied and 'lowrank_g0_seed2.metrics.csv' not in copied


def test_the_binary_never_replaces_a_file_it_did_not_write(setting, tmp_path_factory):
  users = tmp_path_factory.mktemp('user') / 'map.png'
  users.write_bytes(b'\x89PNG not ours')
  done = subprocess.run([sys.executable, '-m', 'experiments.analysis.capacity_map',
                         f'--settings=IID={setting}', f'--figure={users}'],
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode != 0 and 'Traceback' not in done.stderr
  assert f'{users} exists and is not a plot this program wrote' in done.stderr
  assert users.read_bytes() == b'\x89PNG not ours'
  bad = subprocess.run([sys.executable, '-m', 'experiments.analysis.capacity_map',
                        '--settings=IID'], capture_output=True, text=True, timeout=300,
                       check=False)
  assert bad.stderr.strip().splitlines() == [
      "capacity_map: error: --settings entry 'IID' is not LABEL=FOLDER."]
