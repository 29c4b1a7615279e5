r"""How much of a trained original model's kernels a same-size factorisation can express.

For every factorised layer of the model rebuilt with each `--variants` entry, the best relative
error `||W(F) - T|| / ||T||` of its kernel to the trained original kernel `T` (the run's latest
checkpoint), found by `experiments.analysis.kernel_approx.fit_error`; weight-normalised LSTM kernels are
compared by column direction. Lower is better: the parameterisation can reproduce more of what the
original learned. The low-rank rows of matrix kernels also print the Eckart-Young optimum
(`svd_error`), a check of the fit.

  python -m experiments.analysis.kernel_fit \
      --run=runs/paper_claim/fashion_vgg_narrow_iid/original_lr0.1 \
      --variants=lowrank,fedpara --output=docs/results/kernel_fit_vgg_narrow.csv
  python -m experiments.analysis.kernel_fit \
      --run=runs/paper_claim/shakespeare_plays_natural_fast0.003/original \
      --variants=lowrank:28,fedpara:14 --output=docs/results/kernel_fit_lstm.csv
"""


from absl import app
from absl import flags
import tensorflow as tf

from experiments import flagfiles
from experiments.analysis import kernel_approx
from experiments import models
from experiments import run_io
from experiments.analysis import trained_model
from experiments.data import registry

flags.DEFINE_string('run', None, 'Run folder of a trained original model (its latest checkpoint).')
flags.DEFINE_string('data_dir', None, 'Where the run\'s data files are.')
flags.DEFINE_list('variants', ['lowrank', 'fedpara'],
                  'parameterization[:rank]; without a rank, the run\'s gamma sets it.')
flags.DEFINE_integer('steps', 3000, 'Adam steps per fit.')
flags.DEFINE_integer('starts', 3, 'Initialisations per fit (the best is kept).')
flags.DEFINE_string('output', None, 'CSV file to write (optional).')
flags.mark_flag_as_required('run')


def parse_variant(variant):
  """`'fedpara:14'` -> `('fedpara', 14)`; `'lowrank'` -> `('lowrank', None)`."""
  name, _, rank = variant.partition(':')
  if name not in ('lowrank', 'fedpara'):
    raise ValueError(f'variant {variant!r}: parameterization must be lowrank or fedpara; '
                     f'got {name!r}.')
  if rank and not (rank.isdigit() and int(rank) > 0):
    raise ValueError(f'variant {variant!r}: the rank must be a positive integer; got {rank!r}.')
  return name, int(rank) if rank else None


def main(argv):
  flagfiles.no_positional(argv, 'kernel_fit')
  flags_ = flags.FLAGS
  variants = [parse_variant(v) for v in flags_.variants]
  tf.get_logger().setLevel('ERROR')   # one traced fit per kernel shape: retracing is expected
  try:
    run = run_io.read_run(flags_.run)
  except (run_io.NoRunError, run_io.DamagedFileError) as e:
    raise app.UsageError(f'--run={flags_.run}: {e}') from None
  data = registry.load(run['dataset'], flags_.data_dir, sequence_length=run['sequence_length'])
  label, original = trained_model.load(flags_.run, data)
  table = []
  for name, rank in variants:
    factorised = models.build(run['model'], data.input_shape, data.num_classes, name,
                              gamma=None if rank else run['gamma'], rank=rank,
                              keep_plain=run['keep_plain'],
                              weight_norm=run.get('weight_norm', False))
    pairs = kernel_approx.kernel_pairs(factorised, original)
    if not pairs:
      raise app.UsageError(f'model {run["model"]!r} has no layer that {name} factorises '
                           f'(keep_plain={run["keep_plain"]}).')
    for layer, kernel, factorization, normalised, target in pairs:
      error = kernel_approx.fit_error(factorization, target, normalised, steps=flags_.steps,
                                      starts=flags_.starts)
      svd = (kernel_approx.svd_error(target, factorization.rank)
             if name == 'lowrank' and target.ndim == 2 and not normalised else None)
      table.append(dict(original=label, variant=name, layer=layer, kernel=kernel,
                        shape='x'.join(map(str, target.shape)), rank=factorization.rank,
                        params=factorization.param_count, fit_error=round(error, 4),
                        svd_error=None if svd is None else round(svd, 4)))
      print(f'{name:<8} {layer:<7} {kernel:<9} rank {factorization.rank:>3}  params '
            f'{factorization.param_count:>7}  relative error {error:.4f}'
            + ('' if svd is None else f'  (SVD optimum {svd:.4f})'), flush=True)
  if flags_.output:
    run_io.write_table(flags_.output, table)
    print(f'wrote {flags_.output}')


if __name__ == '__main__':
  flagfiles.run_main(main)
