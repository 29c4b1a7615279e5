"""The step-size rule's solver: CGLS on a composition's Jacobian, and the gradient it replaces.

`cgls` runs conjugate gradients on the normal equations of `min ||A d - J||` for the Jacobian
`A = dW/dF` of a kernel's composition, given its products `c -> A^T c` and `t -> A t`;
`tensorflow_cgls` builds those products with TensorFlow's reverse- and forward-mode derivatives
(used by the kernel-mean refit, `fedpara_tff.kernel_mean`, and the step measures of
`experiments.analysis`); `projected_step` puts the solution in place of a composition's gradient
on the TensorFlow or JAX backend (`factor_lr_scale='safe'`, docs/DESIGN.md, "Step-size rule").
"""

from keras_layers.backend import IS_KERAS_3
from keras_layers.backend import keras
from keras_layers.backend import ops


def projected_step(fn, values, steps):
  """`fn(values)`, whose gradient with respect to `values` is the step-size rule's.

  For a kernel `W = fn(F)` with Jacobian `A = dW/dF` and the loss gradient `J = dL/dW`
  arriving from above, the chain rule gives the factors `g = A^T J`. This returns instead the
  `d` that `steps` iterations of CGLS (conjugate gradients on the normal equations, from 0)
  reach for `min ||A d - J||` over the Krylov space of `A^T A` and `g`: `A d` is the orthogonal
  projection of `J` on `A` times that space (`cgls`). An SGD step of size `eta` on the factors
  then moves `W`, to first order, by minus `eta` times that projection of the plain kernel's step
  `J` (docs/DESIGN.md, "Step-size rule"). With `steps=1`, `d = ||g||^2 / ||A g||^2 g`. Each
  iteration costs one forward-mode and one reverse-mode derivative of `fn` (kernel-sized work).

  Args:
    fn: function of a list of tensors, returning one tensor (the composition).
    values: the list of tensors (the factors' values) to call it with.
    steps: CGLS iterations, a positive integer.

  Returns:
    `fn(values)`, with that gradient.
  """
  name = keras.backend.backend() if IS_KERAS_3 else 'tensorflow'
  if name == 'tensorflow':
    return _tensorflow_projected_step(fn, values, steps)
  if name == 'jax':
    return _jax_projected_step(fn, values, steps)
  raise ValueError(f"factor_lr_scale='safe' needs the TensorFlow or JAX backend; "
                   f'the Keras backend is {name!r}.')


def cgls(vjp, jvp, j, steps, dot, where):
  """The rule's factor gradient: `steps` CGLS iterations for `min ||A d - J||` from `d = 0`,
  then `d` rescaled so that `A d` is exactly the projection of `J` on its own line.

  In exact arithmetic the rescaling multiplies by 1 (CGLS's `A d` already is the projection of
  `J` on `A` times the Krylov space); in floating point it keeps the bound of docs/DESIGN.md
  ("Step-size rule") exact whatever the iterations' rounding.

  Args:
    vjp: `c -> A^T c` (a list of tensors shaped like the factors).
    jvp: `list t -> A t` (a tensor shaped like the kernel).
    j: `J`, shaped like the kernel.
    steps: iterations.
    dot: `(list, list) -> scalar` inner product of two lists of tensors.
    where: `(condition, x, y)` elementwise select on scalars.
  """
  residual = j
  g = vjp(residual)
  s, p = g, g
  gamma = dot(s, s)
  floor = 1e-12 * gamma
  d = [0.0 * si for si in s]
  for step in range(steps):
    q = jvp(p)
    q_sq = dot([q], [q])
    # Stop (alpha = 0) once the normal-equation residual has vanished or A p = 0.
    live = (gamma > floor) & (q_sq > 0)
    alpha = where(live, gamma / where(live, q_sq, 1.0), 0.0)
    d = [di + alpha * pi for di, pi in zip(d, p)]
    if step == steps - 1:
      break
    residual = residual - alpha * q
    s = vjp(residual)
    gamma_next = dot(s, s)
    beta = where(live, gamma_next / where(live, gamma, 1.0), 0.0)
    p = [si + beta * pi for si, pi in zip(s, p)]
    gamma = gamma_next
  # J . A d = (A^T J) . d = g . d.
  u = jvp(d)
  u_sq = dot([u], [u])
  scale = where(u_sq > 0, dot(g, d) / where(u_sq > 0, u_sq, 1.0), 0.0)
  return [scale * di for di in d]


def tensorflow_products(fn, xs):
  """`(vjp, jvp)` for `A = d fn / d xs` at the TensorFlow tensors `xs`: `c -> A^T c` and
  `list t -> A t`, each recomposing `fn`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  zero = tf.UnconnectedGradients.ZERO

  def vjp(cotangent):
    with tf.GradientTape() as tape:
      tape.watch(xs)
      w = fn(xs)
    return tape.gradient(w, xs, output_gradients=cotangent, unconnected_gradients=zero)

  def jvp(tangents):
    with tf.autodiff.ForwardAccumulator(xs, list(tangents)) as accumulator:
      w = fn(xs)
    return accumulator.jvp(w, unconnected_gradients=zero)

  return vjp, jvp


def tensorflow_cgls(fn, xs, j, steps):
  """`cgls` for `A = d fn / d xs` at the TensorFlow tensors `xs`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  vjp, jvp = tensorflow_products(fn, xs)
  return cgls(vjp, jvp, j, steps,
              lambda a, b: tf.add_n([tf.reduce_sum(x * y) for x, y in zip(a, b)]), tf.where)


def _tensorflow_projected_step(fn, values, steps):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.custom_gradient
  def projected(*xs):
    xs = list(xs)
    return fn(xs), lambda upstream: tensorflow_cgls(fn, xs, upstream, steps)

  return projected(*[tf.convert_to_tensor(v) for v in values])


def _jax_projected_step(fn, values, steps):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def call(*xs):
    return fn(list(xs))

  projected = jax.custom_vjp(call)

  def forward(*xs):
    return call(*xs), xs

  def backward(xs, upstream):
    _, vjp_fn = jax.vjp(call, *xs)
    _, jvp_fn = jax.linearize(call, *xs)
    d = cgls(lambda c: list(vjp_fn(c)), lambda t: jvp_fn(*t), upstream, steps,
             lambda a, b: sum(jnp.sum(x * y) for x, y in zip(a, b)), jnp.where)
    return tuple(d)

  projected.defvjp(forward, backward)
  return projected(*[ops.convert_to_tensor(v) for v in values])


# The fractions of each Gauss-Newton step tried (the one that lowers the residual most is kept,
# none if none does).
STEP_FRACTIONS = (1.0, 0.5, 0.25, 0.125)


def gauss_newton_fit(compose, target, factors, steps, cg_steps):
  """`factors` (TensorFlow tensors) after `steps` Gauss-Newton steps on `||compose(F) - target||`:
  each solves the linearised problem by `cg_steps` CGLS iterations from 0 (`tensorflow_cgls`) and
  keeps the fraction of the step (`STEP_FRACTIONS`) that lowers the residual most, none if none
  does. Fixed counts and no randomness: the same inputs give the same factors. Used by the
  kernel-mean aggregation (`fedpara_tff.kernel_mean`, inside TFF's graphs) and, through
  `gauss_newton_fits`, the warm-start conversion (`keras_layers.warm_start`)."""
  return gauss_newton_fits(compose, target, [factors], steps, cg_steps)[0]


def gauss_newton_fits(compose, target, starts, steps, cg_steps):
  """`gauss_newton_fit` from each list of factors in `starts` (shaped alike), in order. Run
  eagerly, one step is traced once as a `tf.function` and run `steps` times from every start:
  op by op a step cost about 0.2 s whatever the kernel's size, and its trace a few seconds."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def step(factors):
    return _gauss_newton_step(compose, target, list(factors), cg_steps)

  if tf.executing_eagerly():
    step = tf.function(step)
  fitted = []
  for factors in starts:
    factors = list(factors)
    for _ in range(steps):
      factors = list(step(factors))
    fitted.append(factors)
  return fitted


def _gauss_newton_step(compose, target, factors, cg_steps):
  """One step of `gauss_newton_fit`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  residual = target - compose(factors)
  step = tensorflow_cgls(compose, factors, residual, cg_steps)
  best, best_norm = factors, tf.norm(residual)
  for fraction in STEP_FRACTIONS:
    candidate = [f + fraction * d for f, d in zip(factors, step)]
    norm = tf.norm(target - compose(candidate))
    better = norm < best_norm
    best = [tf.where(better, c, b) for c, b in zip(candidate, best)]
    best_norm = tf.where(better, norm, best_norm)
  return best
