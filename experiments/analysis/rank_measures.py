"""The rank a factorised kernel uses, and the energy a rank-r matrix holds of a trained kernel.

The measures of `experiments.analysis.rank_use` (which prints them for runs), on a kernel's matrix
unfolding, inputs x outputs (a convolution's `(k1 * k2 * I) x O`).
"""

import math
import os
import re
import statistics

import numpy as np

FACTORISED = ('fedpara', 'lowrank')


def unfold(kernel):
  """The kernel as an `(inputs, outputs)` matrix: a Keras kernel `(..., I, O)` -> `(prod, O)`."""
  return kernel.reshape(-1, kernel.shape[-1])


def singular_values(kernel):
  return np.linalg.svd(np.asarray(unfold(kernel), np.float64), compute_uv=False)


def numerical_rank(kernel, rtol):
  """How many singular values of `kernel`'s unfolding exceed `rtol` x the largest."""
  s = singular_values(kernel)
  return int((s > rtol * s[0]).sum()) if s[0] > 0 else 0


def energy_at_rank(kernel, rank):
  """`sum_{k < rank} s_k^2 / sum_k s_k^2` of `kernel`'s unfolding: what its best rank-`rank`
  approximation holds of its squared Frobenius norm."""
  s2 = singular_values(kernel) ** 2
  total = float(s2.sum())
  return float(s2[:rank].sum()) / total if total > 0 else math.nan


def rank_cap(scheme, rank, shape):
  """The largest rank of the unfolding of a `shape` kernel the scheme reaches at `rank`."""
  m, n = math.prod(shape[:-1]), shape[-1]
  return min(rank ** 2 if scheme == 'fedpara' else rank, m, n)


def original_of(run_dir):
  """`original` or `original_seed<N>` beside `run_dir`, matching its seed suffix (None: absent)."""
  name = os.path.basename(os.path.normpath(run_dir))
  seed = re.search(r'_seed\d+$', name)
  candidate = os.path.join(os.path.dirname(os.path.normpath(run_dir)),
                           'original' + (seed.group(0) if seed else ''))
  return candidate if os.path.isdir(candidate) else None


def kernel_rows(run_dir, original_dir, data, rtol):
  """One dict per factorised kernel of the run (see the module docstring for the columns)."""
  # pylint: disable=g-import-not-at-top  # TensorFlow loads after the flags parse
  from experiments import models
  from experiments import run_io
  from experiments.analysis import kernel_approx
  from experiments.analysis import run_tables
  from experiments.analysis import trained_model
  # pylint: enable=g-import-not-at-top
  run = run_io.read_run(run_dir)
  if run['parameterization'] not in FACTORISED:
    raise ValueError(f'{run_dir} is a {run["parameterization"]!r} run; rank_use reads '
                     f'{" or ".join(FACTORISED)} runs (pFedPara\'s local factors are not in its '
                     f'checkpoint).')
  label, model = trained_model.load(run_dir, data)
  original = (trained_model.load(original_dir, data)[1] if original_dir else
              models.build(run['model'], data.input_shape, data.num_classes))
  rows = []
  for layer_name, which, factorization, _, plain in kernel_approx.kernel_pairs(model, original):
    kernel = factorization.compose_unscaled().numpy()
    cap = rank_cap(factorization.scheme, factorization.rank, kernel.shape)
    rows.append(dict(
        run=label, name=run_tables.seed_group_name(run_dir),
        layer=layer_name, kernel=which, scheme=factorization.scheme,
        unfolding='x'.join(map(str, unfold(kernel).shape)), rank=factorization.rank, cap=cap,
        numerical_rank=numerical_rank(kernel, rtol),
        original=os.path.basename(os.path.normpath(original_dir)) if original_dir else None,
        energy_at_cap=round(energy_at_rank(plain, cap), 4) if original_dir else None))
  return rows


def _mean_std(values, digits):
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return '-'
  if len(values) == 1:
    return f'{values[0]:.{digits}f}'
  return f'{statistics.fmean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}'


def table_lines(rows):
  """Markdown lines: per run name and kernel, the rank, cap and mean +- std over seeds."""
  groups = {}
  for row in rows:
    groups.setdefault((row['name'], row['layer'], row['kernel']), []).append(row)
  lines = ['| run | kernel | unfolding | rank | cap | seeds | numerical rank | original\'s '
           'energy at cap |', '|---|---|---|---:|---:|---:|---:|---:|']
  for (name, layer, which), members in groups.items():
    kernel = layer if which == 'kernel' else f'{layer}/{which}'
    first = members[0]
    lines.append(f'| {name} | {kernel} | {first["unfolding"]} | {first["rank"]} | {first["cap"]} '
                 f'| {len(members)} | {_mean_std([m["numerical_rank"] for m in members], 1)} | '
                 f'{_mean_std([m["energy_at_cap"] for m in members], 4)} |')
  return lines
