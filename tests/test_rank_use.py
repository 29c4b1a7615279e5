"""experiments.analysis.rank_use: numerical ranks, the rank caps and the original's energy."""

import numpy as np
import pytest

from experiments.analysis import rank_measures as rank_use


def test_numerical_rank_counts_singular_values_above_the_tolerance():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(20, 3)) @ rng.normal(size=(3, 12))   # rank 3 exactly
  assert rank_use.numerical_rank(kernel.astype(np.float32), 1e-3) == 3
  scaled = np.diag([1.0, 0.1, 0.01, 0.0005])
  assert rank_use.numerical_rank(scaled, 1e-3) == 3
  assert rank_use.numerical_rank(scaled, 1e-1) == 1   # 0.1 is not above 0.1 x 1


def test_energy_at_rank_is_the_share_of_the_top_singular_values():
  # Singular values 3, 2, 1 (an orthogonal change of basis keeps them): energy 9 + 4 + 1 = 14.
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))
  kernel = q[:, :3] @ np.diag([3.0, 2.0, 1.0])
  assert rank_use.energy_at_rank(kernel, 1) == pytest.approx(9 / 14)
  assert rank_use.energy_at_rank(kernel, 2) == pytest.approx(13 / 14)
  assert rank_use.energy_at_rank(kernel, 5) == pytest.approx(1.0)


def test_a_convolution_is_unfolded_inputs_by_outputs():
  kernel = np.arange(3 * 3 * 2 * 5, dtype=np.float64).reshape(3, 3, 2, 5)
  assert rank_use.unfold(kernel).shape == (18, 5)
  np.testing.assert_array_equal(rank_use.unfold(kernel)[:, 4], kernel[..., 4].ravel())


@pytest.mark.parametrize('scheme, rank, shape, cap', [
    ('fedpara', 2, (3, 3, 1, 32), 4),        # R^2 = 4 < 9
    ('fedpara', 4, (3, 3, 1, 32), 9),        # R^2 = 16, but the unfolding is 9 x 32
    ('fedpara', 8, (3, 3, 32, 64), 64),      # R^2 = 64 = the output side
    ('lowrank', 16, (1600, 128), 16),
    ('lowrank', 200, (1600, 128), 128),
])
def test_rank_cap(scheme, rank, shape, cap):
  assert rank_use.rank_cap(scheme, rank, shape) == cap


def test_original_of_matches_the_seed_suffix(tmp_path):
  for name in ('original', 'original_seed2', 'fedpara_r2', 'fedpara_r2_seed2', 'lowrank_r2_seed1'):
    (tmp_path / name).mkdir()
  assert rank_use.original_of(str(tmp_path / 'fedpara_r2')) == str(tmp_path / 'original')
  assert rank_use.original_of(str(tmp_path / 'fedpara_r2_seed2') + '/') == str(
      tmp_path / 'original_seed2')
  assert rank_use.original_of(str(tmp_path / 'lowrank_r2_seed1')) is None


@pytest.mark.slow
def test_kernel_rows_of_trained_runs_against_numpy(tmp_path):
  from experiments import run_config
  from experiments import runner
  from experiments.analysis import trained_model
  from experiments.data import registry

  def train(name, **kw):
    config = run_config.RunConfig(dataset='mnist5k', model='mlp', clients=4, clients_per_round=2,
                                  rounds=1, batch_size=64, progress=False, backend='tf',
                                  keep_plain=('logits',), output_dir=str(tmp_path / name), **kw)
    runner.run(config)
    return config.output_dir

  original = train('original', parameterization='original')
  fedpara = train('fedpara_r3', parameterization='fedpara', rank=3)
  data = registry.load('mnist5k', None)
  rows = rank_use.kernel_rows(fedpara, rank_use.original_of(fedpara), data, 1e-3)
  plain = {layer.name: layer for layer in trained_model.load(original, data)[1].layers}
  factorised = {layer.name: layer for layer in trained_model.load(fedpara, data)[1].layers}
  assert [(r['layer'], r['unfolding']) for r in rows] == [('fc1', '784x200'), ('fc2', '200x200')]
  for row in rows:
    (_, factorization), = factorised[row['layer']].labelled_factorizations()
    s = np.linalg.svd(factorization.compose_unscaled().numpy().astype(np.float64),
                      compute_uv=False)
    assert row['cap'] == 9 and row['rank'] == 3
    assert row['numerical_rank'] == int((s > 1e-3 * s[0]).sum()) <= 9
    t = np.linalg.svd(plain[row['layer']].kernel.numpy().astype(np.float64),
                      compute_uv=False) ** 2
    assert row['energy_at_cap'] == pytest.approx(t[:9].sum() / t.sum(), abs=1e-4)
    assert 0 < row['energy_at_cap'] < 1 and row['original'] == 'original'


def test_the_binary_refuses_runs_that_match_nothing_in_one_line(tmp_path):
  import subprocess
  import sys
  done = subprocess.run([sys.executable, '-m', 'experiments.analysis.rank_use',
                         f'--runs={tmp_path}/none*'], capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode != 0 and 'Traceback' not in done.stderr
  assert f"--runs matched no run folder: ['{tmp_path}/none*']" in done.stderr


def test_the_binary_leaves_out_a_run_that_has_not_finished(tmp_path):
  import subprocess
  import sys
  (tmp_path / 'fedpara_r2').mkdir()   # a run folder without summary.json: still running
  done = subprocess.run([sys.executable, '-m', 'experiments.analysis.rank_use',
                         f'--runs={tmp_path}/*'], capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'not finished, left out: fedpara_r2' in done.stdout
