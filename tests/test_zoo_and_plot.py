"""The model zoo, the plots and the comparison lines."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_layers
from experiments import compare
from experiments import models
from experiments import plot
from experiments import run_io
from tests import run_support as rs


# ---- zoo and plot --------------------------------------------------------------------------

@pytest.mark.parametrize('model, shape, classes', [pytest.param('vgg16', (32, 32, 3), 10,
                                                                 marks=pytest.mark.slow),
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
                             f'--output={output}'], cwd=rs.REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == f'wrote {written} (2 curves)', result.stderr[-1000:]
    assert written.read_bytes()[:4] == b'\x89PNG'


def test_importing_plot_leaves_the_matplotlib_backend_alone():
  """A notebook's backend survives `import experiments.plot` (it draws with Agg directly)."""
  probe = ('import matplotlib; import experiments.plot; from matplotlib import pyplot; '
           'print(matplotlib.get_backend())')
  done = subprocess.run([sys.executable, '-c', probe], cwd=rs.REPO, capture_output=True, text=True,
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


@pytest.mark.parametrize('in_run_folder', [True, False])
def test_a_plot_killed_while_written_leaves_the_previous_one(tmp_path, monkeypatch, in_run_folder):
  """A run killed while its plot was written (found by the slow SIGKILL test) resumed into a
  torn PNG that it refused as not its own; the write is now atomic."""
  path = str(tmp_path / run_io.PLOT_FILE)
  figure = plot.new_figure()
  figure.subplots().plot([0, 1], [0, 1])
  plot.save_figure(figure, path, in_run_folder)
  previous = open(path, 'rb').read()

  def torn(self, target, **kwargs):
    with open(target, 'wb') as f:
      f.write(previous[:16])   # the PNG signature, then the process dies
    raise KeyboardInterrupt

  monkeypatch.setattr(type(figure), 'savefig', torn)
  with pytest.raises(KeyboardInterrupt):
    plot.save_figure(figure, path, in_run_folder)
  assert open(path, 'rb').read() == previous
  plot.check_output(path, in_run_folder)   # the resumed run takes it as its own
  assert sorted(os.listdir(tmp_path)) == [run_io.PLOT_FILE]
