"""The points of a capacity map: FedPara against the same-size low-rank model at each budget.

The library behind `experiments.analysis.capacity_map` (no flags, so that tests can import it).
A setting's folder holds runs named `fedpara_<budget>`, `lowrank_<budget>` and `original`, each
with optional `_seed<N>` (as `scripts/capacity_map.sh` writes them). At each budget the two models
are paired by seed (same partition, client sample and data order), so the difference's spread is
that of the paired differences.
"""

import json
import math
import os
import re
import statistics
from typing import Dict, List, NamedTuple

from experiments import run_io
from experiments.analysis import run_tables

NAME = re.compile(r'^(?P<model>fedpara|lowrank|original)(?:_(?P<budget>[a-z][0-9.]*))?'
                  r'(?:_seed(?P<seed>\d+))?$')


class SeedRun(NamedTuple):
  """One finished run of a map point: its test accuracy at the round compared, its aggregation
  error (mean over kernels and rounds up to there), its `metrics.csv` rows up to there, and its
  parameter counts."""
  accuracy: float
  aggregation_error: float
  rows: List[Dict[str, float]]
  parameters: int
  plain_parameters: int


def finished_rows(run_dir, round_num):
  """The run's `metrics.csv` rows up to `round_num` when it evaluated at `round_num`, else None
  (not run that far: still running, stopped or diverged)."""
  rows = [r for r in run_io.read_metrics(run_dir) if int(r['round']) <= round_num]
  if not rows or int(rows[-1]['round']) != round_num or math.isnan(rows[-1]['test_accuracy']):
    return None
  return rows


def _parameters(run_dir):
  """`(parameters, plain parameters)` from the run's summary, or None before it ends."""
  path = os.path.join(run_dir, run_io.SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  return summary['parameters'], summary['plain_parameters']


def read_runs(setting_dir, round_num):
  """`{(model, budget): {seed: SeedRun}}` of the runs in `setting_dir` that reached `round_num`
  (`budget` None for the original), and the names of those that did not."""
  runs, unfinished = {}, []
  for entry in sorted(os.listdir(setting_dir)):
    match = NAME.match(entry)
    folder = os.path.join(setting_dir, entry)
    if not match or not os.path.isdir(folder) or (match['model'] == 'original') != (
        match['budget'] is None):
      continue
    rows = finished_rows(folder, round_num)
    counts = _parameters(folder)
    if rows is None or counts is None:
      unfinished.append(entry)
      continue
    runs.setdefault((match['model'], match['budget']), {})[int(match['seed'] or 0)] = SeedRun(
        rows[-1]['test_accuracy'], run_tables.mean_aggregation_error(rows), rows, *counts)
  return runs, unfinished


def mean_std(values):
  """`(mean, sample std, n)`; the std of fewer than two values is NaN."""
  if not values:
    return math.nan, math.nan, 0
  return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan,
          len(values))


def _gb_cell(seeds: Dict[int, SeedRun], target: float):
  """`(mean GB over the seeds that reached target, how many did, how many seeds)`."""
  found = [run_tables.first_reaching_in(run.rows, target) for run in seeds.values()]
  reached = [gb for _, gb in filter(None, found)]
  return (statistics.fmean(reached) if reached else math.nan, len(reached), len(seeds))


def budget_points(runs, target=None):
  """One dict per budget, smallest FedPara first: both models' parameter shares, accuracies and
  aggregation errors (mean, std, n over their seeds), the paired difference FedPara - low-rank
  (over the seeds both finished) and, with a `target` accuracy, each model's GB to reach it
  (`gb_to_target`: mean over the seeds that did, how many did, of how many)."""
  points = []
  for budget in sorted({b for m, b in runs if b is not None}):
    fedpara, lowrank = runs.get(('fedpara', budget), {}), runs.get(('lowrank', budget), {})
    if not fedpara or not lowrank:
      continue
    paired = sorted(set(fedpara) & set(lowrank))
    one = lambda seeds: next(iter(seeds.values()))
    points.append(dict(
        budget=budget,
        fedpara_share=one(fedpara).parameters / one(fedpara).plain_parameters,
        lowrank_share=one(lowrank).parameters / one(lowrank).plain_parameters,
        fedpara_parameters=one(fedpara).parameters, lowrank_parameters=one(lowrank).parameters,
        fedpara=mean_std([r.accuracy for r in fedpara.values()]),
        lowrank=mean_std([r.accuracy for r in lowrank.values()]),
        fedpara_error=mean_std([r.aggregation_error for r in fedpara.values()]),
        lowrank_error=mean_std([r.aggregation_error for r in lowrank.values()]),
        difference=mean_std([fedpara[s].accuracy - lowrank[s].accuracy for s in paired]),
        gb_to_target=None if target is None else (_gb_cell(fedpara, target),
                                                   _gb_cell(lowrank, target))))
  return sorted(points, key=lambda p: p['fedpara_parameters'])


def original_point(runs):
  """`(mean, std, n)` of the original's accuracy over its seeds (n = 0 when none finished)."""
  return mean_std([r.accuracy for r in runs.get(('original', None), {}).values()])


def original_gb_to(runs, target):
  """The original's `(mean GB to reach target, how many seeds did, of how many)`."""
  return _gb_cell(runs.get(('original', None), {}), target)


def _cell(stats, digits=4, scale=1.0):
  mean, std, n = stats
  if n == 0:
    return '-'
  text = f'{mean * scale:.{digits}f}'
  if n > 1:
    text += f' +- {std * scale:.{digits}f}'
  return text if n == 3 else f'{text} ({n} seed{"s" if n > 1 else ""})'


def _gb_text(cell):
  mean, reached, seeds = cell
  return '-' if not reached else f'{mean:.3f}' + ('' if reached == seeds else
                                                  f' ({reached} of {seeds})')


def table_lines(points, original, original_gb=None):
  """The markdown table of one setting (differences in accuracy points); with `original_gb`
  (the original's `original_gb_to`), the GB each model needed to reach the target."""
  gb = original_gb is not None
  lines = ['| budget | FedPara params (share) | low-rank params (share) | FedPara | low-rank | '
           'FedPara - low-rank, points | agg. error FedPara / low-rank |'
           + (' GB to target FedPara / low-rank |' if gb else ''),
           '|---|---:|---:|---:|---:|---:|---:|' + ('---:|' if gb else '')]
  for p in points:
    lines.append(
        f'| {p["budget"]} | {p["fedpara_parameters"]:,} ({p["fedpara_share"]:.1%}) | '
        f'{p["lowrank_parameters"]:,} ({p["lowrank_share"]:.1%}) | {_cell(p["fedpara"])} | '
        f'{_cell(p["lowrank"])} | {_cell(p["difference"], 2, 100.0)} | '
        f'{_cell(p["fedpara_error"], 3)} / {_cell(p["lowrank_error"], 3)} |'
        + (f' {_gb_text(p["gb_to_target"][0])} / {_gb_text(p["gb_to_target"][1])} |'
           if gb else ''))
  lines.append(f'| original | 100% | | {_cell(original)} | | | |'
               + (f' {_gb_text(original_gb)} |' if gb else ''))
  return lines
