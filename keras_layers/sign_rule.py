"""The step-size rule under Adam: each factorised kernel's update scaled by `1 / ||A||_inf`.

Adam moves every variable coordinate by about the learning rate whatever its gradient's scale,
so rescaling the factors' gradient (the SGD rule, `factor_lr_scale='safe'`) cannot bound its
step: the rule scales the optimizer's update instead. For one kernel `W = C(F)` with Jacobian
`A = dW / dF`, a factor step `delta` moves each kernel entry, to first order, by `(A delta)[e]`,
at most `||A||_inf ||delta||_inf` (`||A||_inf`, the largest absolute row sum of `A`, is
`KernelFactorization.sign_step_bound`). Dividing the factors' update by `||A||_inf`, recomputed
from the current factors before every step, keeps every kernel entry's first-order step within
the bound the plain kernel's own Adam step has, and is the largest scalar that does for every
update direction (docs/DESIGN.md, "Step-size rule under Adam"). It depends only on the weights,
so nothing extra is stored or sent.

The rule applies to the kernels built with `factor_lr_scale='safe'`; `prepare` switches their
gradient back to the chain rule's (the SGD rule's projected gradient is not a descent direction
for a sign step) and returns the scales an optimizer multiplies its update by
(`fedpara_tff.client_optimizer.LocalOptimizer` does).
"""

from typing import Any, Callable, List, Optional, Sequence

from keras_layers import base
from keras_layers.backend import ops


def rule_factorizations(model: Any) -> list:
  """The kernels of `model` built with `factor_lr_scale='safe'` (`KernelFactorization`s)."""
  return [f for layer in base.factorized_layers(model) for f in layer.factorizations if f.safe]


def prepare(model: Any, variables: Sequence[Any]) -> Optional[Callable[[], List[Any]]]:
  """Sets `model`'s `'safe'` kernels up for Adam and returns their update scales.

  Changes `model` in place: those kernels' factors get the chain rule's gradient again. Call it
  on a model whose training the optimizer owns, before its training step is traced.

  Args:
    model: a Keras model with factorised layers.
    variables: the variables the optimizer updates, in its order.

  Returns:
    None when `model` has no `'safe'` kernel; else `scales()`, a function returning one scalar
    tensor per entry of `variables`: `1 / ||A||_inf` of the kernel the variable is a factor of
    (1 when that norm is 0), and 1 for every other variable. It reads the current factors, so
    call it at every step before the update.
  """
  kernels = rule_factorizations(model)
  if not kernels:
    return None
  owner = {}
  for index, kernel in enumerate(kernels):
    kernel.projected = False
    for v in kernel.factors.values():
      owner[id(v)] = index
  slots = [owner.get(id(v)) for v in variables]

  def scales():
    bounds = [kernel.sign_step_bound() for kernel in kernels]
    per_kernel = [ops.where(b > 0, 1.0 / ops.where(b > 0, b, 1.0), 1.0) for b in bounds]
    return [1.0 if slot is None else per_kernel[slot] for slot in slots]

  return scales
