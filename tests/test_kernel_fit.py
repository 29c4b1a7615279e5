"""Fitting factorisations to trained kernels: the optimum it finds and the analysis binary."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.analysis import kernel_approx
from experiments import models
from experiments import run_config
from experiments import runner
from keras_layers import factors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lowrank_fit_reaches_the_eckart_young_optimum():
  target = np.random.default_rng(0).normal(0.0, 0.1, size=(20, 14))
  singular = np.linalg.svd(target, compute_uv=False)
  optimum = np.sqrt(np.sum(singular[3:] ** 2) / np.sum(singular ** 2))
  fitted = kernel_approx.fit_error(factors.KernelFactorization('lowrank', (20, 14), 3), target,
                                   starts=1)
  assert fitted == pytest.approx(optimum, rel=1e-3)
  assert kernel_approx.svd_error(target, 3) == pytest.approx(optimum, rel=1e-9)


def test_fedpara_fit_recovers_an_exact_hadamard_product():
  rng = np.random.default_rng(1)
  # Keras layout (in, out): each term is Y X^T with Y (in, R), X (out, R); R = 2 reaches rank 4.
  terms = [rng.normal(size=(24, 2)) @ rng.normal(size=(16, 2)).T for _ in range(2)]
  target = terms[0] * terms[1]
  target *= 0.2 / target.std()
  assert np.linalg.matrix_rank(target) == 4
  fitted = kernel_approx.fit_error(factors.KernelFactorization('fedpara', (24, 16), 2), target)
  assert fitted < 1e-2
  # A low-rank kernel of rank 2 cannot: Eckart-Young bounds it away from zero.
  assert kernel_approx.fit_error(factors.KernelFactorization('lowrank', (24, 16), 2), target,
                                 starts=1) >= kernel_approx.svd_error(target, 2) - 1e-4 > 0.5


def test_shape_mismatch_is_refused():
  with pytest.raises(ValueError, match=r'target shape \(3, 4\) differs from the kernel shape'):
    kernel_approx.fit_error(factors.KernelFactorization('lowrank', (4, 3), 1), np.ones((3, 4)))


@pytest.mark.parametrize('weight_norm', [False, True])
def test_lstm_pairs_input_and_recurrent_kernels_with_the_trained_ones(weight_norm):
  build = lambda p, **kw: models.build('lstm', (80,), 98, p, keep_plain=['logits'],
                                       weight_norm=weight_norm, **kw)
  original, factorised = build('original'), build('fedpara', rank=4)
  pairs = kernel_approx.kernel_pairs(factorised, original)
  assert [(p[0], p[1], p[3]) for p in pairs] == [
      (layer, kernel, weight_norm) for layer in ('lstm1', 'lstm2')
      for kernel in ('kernel', 'recurrent')]
  cells = {layer.name: layer.cell for layer in original.layers if hasattr(layer, 'cell')}
  for layer, kernel, factorization, _, target in pairs:
    cell = cells[layer]
    raw = cell.kernel if kernel == 'kernel' else cell.recurrent_kernel
    if weight_norm:   # the trained kernel is the normalised one: columns of length g
      g = cell.kernel_g if kernel == 'kernel' else cell.recurrent_g
      raw = raw.numpy() * g.numpy() / np.linalg.norm(raw.numpy(), axis=0)
    np.testing.assert_allclose(target, np.asarray(raw), rtol=1e-5, atol=1e-6)
    assert factorization.kernel_shape == target.shape and factorization.rank == 4


@pytest.mark.slow
def test_binary_fits_each_factorised_kernel_of_a_trained_run(tmp_path):
  config = run_config.RunConfig(dataset='mnist5k', model='mlp', parameterization='original', clients=4,
                            clients_per_round=2, rounds=1, batch_size=64, progress=False,
                            output_dir=str(tmp_path / 'original'))
  runner.run(config)
  output = tmp_path / 'fit.csv'
  done = subprocess.run([sys.executable, '-m', 'experiments.analysis.kernel_fit',
                         f'--run={config.output_dir}', '--variants=lowrank,fedpara:4',
                         '--steps=300', '--starts=1', f'--output={output}'],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(output, newline='') as f:
    rows = list(csv.DictReader(f))
  assert [(r['variant'], r['layer']) for r in rows] == [
      ('lowrank', 'fc1'), ('lowrank', 'fc2'), ('fedpara', 'fc1'), ('fedpara', 'fc2')]
  assert all(r['original'] == 'original@round1' for r in rows)
  assert [int(r['rank']) for r in rows[2:]] == [4, 4]
  for row in rows:
    assert 0.0 < float(row['fit_error']) < 1.0
  for row in rows[:2]:   # no fit beats the Eckart-Young optimum
    assert float(row['fit_error']) >= float(row['svd_error']) - 1e-3


def test_binary_refuses_a_bad_variant(tmp_path):
  done = subprocess.run([sys.executable, '-m', 'experiments.analysis.kernel_fit', f'--run={tmp_path}',
                         '--variants=fedpara:0'], cwd=REPO, capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode != 0
  assert "variant 'fedpara:0': the rank must be a positive integer; got '0'." in done.stderr


def test_binary_refuses_a_folder_without_a_run(tmp_path):
  done = subprocess.run([sys.executable, '-m', 'experiments.analysis.kernel_fit', f'--run={tmp_path}'],
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode != 0
  assert f'--run={tmp_path}: {tmp_path} holds no run (no run.json).' in done.stderr
  assert 'Traceback' not in done.stderr
