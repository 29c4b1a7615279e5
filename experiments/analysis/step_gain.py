r"""Per-layer step gain of original, low-rank and FedPara models on a real batch.

The step gain of a layer is `G = sum_f ||dL/df||^2 / ||dL/dW||^2` (factors
`f`, composed kernel `W`): one SGD step of size `eta` on the factors lowers the
loss, to first order, as much as a step of `G * eta` on a plain kernel would
(docs/DESIGN.md, "Effective step size"). Plain layers have `G = 1`. The sign-step gain
`G_sign = sum_f ||dL/df||_1 / ||dL/dW||_1` is the same ratio for Adam's first step, which moves
every coordinate by the learning rate in the direction of its gradient's sign. For each
parameterization this prints, per factorised layer, the gain expected from the
initial factor scales (`keras_layers.step_gain.step_gain`, isotropic gradient)
and the gain measured with the loss gradient of one real batch, plus the
gradient norms, and writes them as CSV. With `--runs`, the gains are measured
at the global weights of each run's latest checkpoint instead (the model
rebuilt from the run's `run.json`): how the gain has moved during training.

Three more columns measure what a safe step-size rule can get (docs/DESIGN.md, "Step-size
rule"), with `A` the Jacobian of the kernel's composition and `J = dL/dW`: `step_length`, the
length of the paper's first-order kernel step `A A^T J` over the plain step's `||J||` (above 1:
longer than the plain layer's step); `safe_gain`, the first-order loss decrease of
`factor_lr_scale='safe'` over the plain step's (`||P J||^2 / ||J||^2`, `P` its projection); and
`reachable_fraction`, the same after `--cgls_iterations` CGLS steps: a lower bound, rising with
the steps, of the projection on every direction the factors can move the kernel (the range of
`A`), which no rule that keeps the kernel's step a projection of the plain step exceeds. Two
more for client Adam: `inf_norm`, the kernel's `||A||_inf`, and `safe_sign_gain`, `G_sign /
||A||_inf`, the first-step decrease under the step-size rule for Adam over the plain layer's
(docs/DESIGN.md, "Step-size rule under Adam").

  python -m experiments.analysis.step_gain --dataset=fashion_mnist --model=vgg_narrow \
      --output=docs/results/step_gain_vgg_narrow.csv
  python -m experiments.analysis.step_gain --runs=runs/paper_claim/fashion_vgg_narrow_iid/fedpara
"""


from absl import flags
import numpy as np
import tensorflow as tf

from experiments import flagfiles
from experiments import models
from experiments import run_io
from experiments.analysis import step_measures
from experiments.analysis import trained_model
from experiments.data import registry
import keras_layers
from keras_layers import jacobian

flags.DEFINE_enum('dataset', 'fashion_mnist', registry.DATASETS, 'Data set (a batch of it).')
flags.DEFINE_string('data_dir', None, 'Where the data files are.')
flags.DEFINE_enum('model', 'vgg_narrow', models.MODELS, 'Model of the zoo.')
flags.DEFINE_float('gamma', 0.1, 'Rank knob of the factorised layers.')
flags.DEFINE_list('keep_plain', ['logits'], 'Layers left unfactorised.')
flags.DEFINE_list('variants', ['lowrank', 'fedpara', 'fedpara:tanh', 'fedpara:he_fan_out',
                               'fedpara:he_fan_in', 'lowrank:matched', 'fedpara:matched'],
                  'parameterization[:option...], options: tanh, matched, he_fan_in, he_fan_out.')
flags.DEFINE_integer('batch_size', 64, 'Examples in the batch the gradient is taken on.')
flags.DEFINE_integer('seeds', 3, 'Initialisations averaged per variant.')
flags.DEFINE_list('runs', [], 'Run folders: measure at their latest checkpoint (instead of '
                  '--variants at init).')
flags.DEFINE_string('output', None, 'CSV file to write (optional).')
flags.DEFINE_integer('cgls_iterations', 40, 'CGLS iterations for reachable_fraction.')

OPTIONS = ('tanh', 'matched', 'he_fan_in', 'he_fan_out')


def parse_variant(variant):
  """`'fedpara:tanh:matched'` -> `(parameterization, build kwargs)`."""
  name, *options = variant.split(':')
  if name not in ('lowrank', 'fedpara', 'pfedpara'):
    raise ValueError(f'variant {variant!r}: parameterization must be lowrank, fedpara or '
                     f'pfedpara; got {name!r}.')
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise ValueError(f'variant {variant!r}: unknown option(s) {unknown}; allowed {OPTIONS}.')
  kwargs = dict(nonlinearity='tanh' if 'tanh' in options else None,
                factor_lr_scale='matched' if 'matched' in options else None)
  for init in ('he_fan_in', 'he_fan_out'):
    if init in options:
      kwargs['factor_init'] = init
  return name, kwargs


def layer_gains(model, x, y, cgls_iterations=0):
  """Per factorised kernel (`jacobian.corrected_factorizations`): (label, expected G, measured G,
  ||J_W||, sum ||g_f||^2, measured G_sign, (step_length, safe_gain, reachable_fraction) or None
  without `cgls_iterations`, ||A||_inf of the composition)."""
  loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  pairs = jacobian.corrected_factorizations(model)
  factorizations = [f for _, f in pairs]
  variables = [v for f in factorizations for v in f.factors.values()]
  with jacobian.recording_kernels(factorizations) as recorded:
    with tf.GradientTape() as tape:
      value = loss(y, model(x, training=True))
  kernels = [uses[0] for uses in recorded]
  grads = tape.gradient(value, kernels + variables)
  j_kernels, g_factors = grads[:len(kernels)], grads[len(kernels):]
  rows, position = [], 0
  for (label, f), j in zip(pairs, j_kernels):
    count = len(f.factors)
    g = g_factors[position:position + count]
    position += count
    j_sq = float(tf.reduce_sum(j * j))
    g_sq = sum(float(tf.reduce_sum(v * v)) for v in g)
    rows.append((label, f.initial_step_gain * f.lr_scale, g_sq / j_sq, np.sqrt(j_sq), g_sq,
                 keras_layers.step_gain.sign_step_gain(j, g),
                 step_measures.step_rule_measures(f, j, cgls_iterations) if cgls_iterations else None,
                 float(f.sign_step_bound())))
  return rows


def _rule_columns(measures):
  """The step-rule columns, averaged over seeds; none when they were not measured."""
  if not measures or measures[0] is None:
    return {}
  names = ('step_length', 'safe_gain', 'reachable_fraction')
  return {n: round(float(np.mean([m[i] for m in measures])), 4) for i, n in enumerate(names)}


def _sign_rule_columns(sign_gains, bounds):
  """`inf_norm` (`||A||_inf`) and `safe_sign_gain` (`G_sign / ||A||_inf`: the first-order loss
  decrease of Adam's first step under the rule over the plain layer's; docs/DESIGN.md, "Step-size
  rule under Adam"), averaged over seeds."""
  return dict(inf_norm=round(float(np.mean(bounds)), 4),
              safe_sign_gain=round(float(np.mean([g / b for g, b in zip(sign_gains, bounds)])), 4))


def main(argv):
  flagfiles.no_positional(argv, 'step_gain')
  flags_ = flags.FLAGS
  variants = [(v, *parse_variant(v)) for v in flags_.variants]
  data = registry.load(flags_.dataset, flags_.data_dir)
  x = tf.constant(data.x_train[:flags_.batch_size])
  y = tf.constant(data.y_train[:flags_.batch_size].astype(np.int32))
  table = []
  for run_dir in flags_.runs:
    label, model = trained_model.load(run_dir, data)
    for name, expected, measured, j_norm, _, sign_gain, rule, bound in layer_gains(
        model, x, y, flags_.cgls_iterations):
      table.append(dict(variant=label, layer=name, expected_gain=round(expected, 4),
                        measured_gain=round(float(measured), 4),
                        grad_norm_kernel=round(float(j_norm), 5),
                        measured_sign_gain=round(sign_gain, 4), **_rule_columns([rule]),
                        **_sign_rule_columns([sign_gain], [bound])))
  for variant, parameterization, kwargs in ([] if flags_.runs else variants):
    per_seed = []
    for seed in range(flags_.seeds):
      tf.keras.utils.set_random_seed(seed)
      model = models.build(flags_.model, data.input_shape, data.num_classes, parameterization,
                           gamma=flags_.gamma, keep_plain=flags_.keep_plain, **kwargs)
      per_seed.append(layer_gains(model, x, y, flags_.cgls_iterations))
    for i, (name, expected, *_) in enumerate(per_seed[0]):
      measured = np.mean([rows[i][2] for rows in per_seed])
      table.append(dict(variant=variant, layer=name, expected_gain=round(expected, 4),
                        measured_gain=round(float(measured), 4),
                        grad_norm_kernel=round(float(np.mean([r[i][3] for r in per_seed])), 5),
                        measured_sign_gain=round(float(np.mean([r[i][5] for r in per_seed])),
                                                 4),
                        **_rule_columns([r[i][6] for r in per_seed]),
                        **_sign_rule_columns([r[i][5] for r in per_seed],
                                             [r[i][7] for r in per_seed])))
  width = max(len(r['variant']) for r in table)
  print(f'{"variant":<{width}}  layer    G expected  G measured  ||dL/dW||  G_sign measured'
        f'  step length  safe gain  reachable  ||A||_inf  safe G_sign')
  for r in table:
    print(f'{r["variant"]:<{width}}  {r["layer"]:<7}  {r["expected_gain"]:>10.4f}  '
          f'{r["measured_gain"]:>10.4f}  {r["grad_norm_kernel"]:>9.5f}  '
          f'{r["measured_sign_gain"]:>15.4f}  {r.get("step_length", np.nan):>11.4f}  '
          f'{r.get("safe_gain", np.nan):>9.4f}  {r.get("reachable_fraction", np.nan):>9.4f}  '
          f'{r["inf_norm"]:>9.4f}  {r["safe_sign_gain"]:>11.4f}')
  if flags_.output:
    run_io.write_table(flags_.output, table)
    print(f'wrote {flags_.output}')


if __name__ == '__main__':
  flagfiles.run_main(main)
