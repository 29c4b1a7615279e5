"""The client half of the shared round: local training and evaluation on one client.

`build_client_train` is the one implementation of a client's round for every
algorithm of `fedpara_tff.algorithms` and every parameterisation (FedPara,
pFedPara, FedPer, local only): TFF's client computation wraps it
(`fedpara_tff.stateful_round`) and the in-process TensorFlow backend
(`fedpara_tff.tf_backend`) calls it on a model placed on a device.
"""

import collections
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

from fedpara_tff import algorithms
from fedpara_tff import client_optimizer as client_optimizer_lib
import keras_layers

Batch = Dict[str, tf.Tensor]   # a client batch: `x`, `y`
# `split(model) -> (global variables, local variables)`.
Split = Callable[[tf.keras.Model], Tuple[List[tf.Variable], List[tf.Variable]]]


def _assign(variables: Sequence[tf.Variable], values: Sequence[Any]) -> None:
  """Sets each variable to its value (inside a `tf.function`, in program order)."""
  for v, value in zip(variables, values):
    v.assign(value)


def _restore(frozen: Sequence[Tuple[tf.Variable, Any]]) -> None:
  """Sets each frozen variable to its pretrained value (inside a `tf.function`): a model built
  in TFF's graph holds its initializers' values, not the pretrained ones."""
  _assign([v for v, _ in frozen], [value for _, value in frozen])


def _batch_size(batch: Batch) -> tf.Tensor:
  return tf.cast(tf.shape(batch['y'])[0], tf.float32)


def correct_and_total(logits: tf.Tensor, labels: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Correct arg-max predictions and the number of labels, as float32 scalars."""
  predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
  correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32))
  return correct, tf.cast(tf.size(labels), tf.float32)


class ClientResult(NamedTuple):
  """What one client's round returns (`build_client_train`), or, from `gather`, the round's
  clients' results field by field (each a list, one entry per client, in order).

  `upload`: the FedAvg update and the algorithm's extra values; `new_local`: the client's new
  local values; `weight`: its weight in the mean; `examples`, `loss_sum`, `correct`: over the
  local epochs; `diverged`: 1 if its training diverged (then the upload is zero, the weight 0).
  """
  upload: Any
  new_local: Any
  weight: Any
  examples: Any
  loss_sum: Any
  correct: Any
  diverged: Any

  def for_server(self) -> Tuple[Any, ...]:
    """The fields the server half takes after the state, in its order: `finish_round(state,
    upload, weight, examples, loss_sum, correct, diverged)` (the new local values stay)."""
    return (self.upload, self.weight, self.examples, self.loss_sum, self.correct, self.diverged)


def gather(results: Sequence[ClientResult]) -> ClientResult:
  """The clients' results field by field: each field a list, one entry per client, in order."""
  return ClientResult(*[list(field) for field in zip(*results)])


def build_client_train(model: tf.keras.Model, loss: Callable[..., tf.Tensor], split: Split,
                       local_epochs: int, jacobian_correction: float = 0.0,
                       client_optimizer: str = 'sgd',
                       algorithm: Optional[algorithms.Algorithm] = None,
                       client_momentum: float = 0.0,
                       frozen: Sequence[Tuple[tf.Variable, Any]] = ()
                       ) -> Callable[..., ClientResult]:
  """The client half of a round, as a `tf.function` over `model` (the one implementation).

  TFF's client computation wraps it (inside `tff.tensorflow.computation`) and
  the in-process TensorFlow backend (`fedpara_tff.tf_backend`) calls it on a
  model placed on a device: same code, same numbers.

  Args:
    model: a Keras model; its variables are overwritten by each call.
    loss: a Keras loss.
    split: function of the model returning `(global variables, local variables)`.
    local_epochs: passes over the dataset.
    jacobian_correction: strength lambda of the paper's Jacobian correction
      (`keras_layers.jacobian`, with the round's client learning rate as
      `eta`); 0 trains on the plain gradients.
    client_optimizer: `'sgd'` or `'adam'` (`fedpara_tff.client_optimizer`; its
      state starts from zero every round). With `'adam'`, the model's kernels built
      with `factor_lr_scale='safe'` get the step-size rule under Adam
      (`keras_layers.sign_rule`; it changes `model`).
    client_momentum: SGD momentum of the client steps (0: none).
    algorithm: a `fedpara_tff.algorithms` client piece (FedAvg / FedProx,
      SCAFFOLD, FedDyn, MIME-lite): the correction of the global variables' gradients and
      what the client sends and keeps besides (default plain FedAvg).
    frozen: `(variable, value)` pairs: the model's frozen variables (an adapter's pretrained
      kernel, a frozen layer), set to their values at the start of each call; they neither
      train nor travel (docs/DESIGN.md, "Adapters").

  Returns:
    `train(global_values, local_values, dataset, learning_rate)` returning a `ClientResult`.
    `global_values`: the global variables, then the server's control when the
    algorithm broadcasts one (SCAFFOLD's `c`, MIME-lite's momentum).
    `local_values`: the model's local variables, then the client's algorithm
    state when it has one (SCAFFOLD's `c_i`, FedDyn's `g_k`, one per global
    variable). `upload`: the FedAvg update (initial minus trained global
    values), then the algorithm's extra values (SCAFFOLD's `c_i+ - c_i`,
    MIME-lite's full-batch gradient at `x`); `new_local` is laid out as
    `local_values`; `weight` is the example count (1 for the unweighted
    algorithms); then the example count, summed loss and correct predictions
    over the local epochs, and 1 if training diverged (then the upload is zero,
    the weight 0 and the local values unchanged, as TFF's client work does).
  """
  global_vars, local_vars = split(model)
  algorithm = algorithm or algorithms.FedAvg()
  # Under Adam, kernels built with factor_lr_scale='safe' take the sign-step rule: their
  # update is scaled instead of their gradient projected (keras_layers.sign_rule).
  update_scales = None
  if client_optimizer == 'adam':
    update_scales = keras_layers.sign_rule.prepare(model, model.trainable_variables)
  optimizer = client_optimizer_lib.LocalOptimizer(client_optimizer, model.trainable_variables,
                                                  client_momentum, update_scales)
  n_global, n_local = len(global_vars), len(local_vars)

  # Variable assignments inside a TFF computation are only ordered inside a
  # tf.function (docs/DESIGN.md, "TFF runtime facts").
  @tf.function
  def train(global_values: Sequence[tf.Tensor], local_values: Sequence[tf.Tensor],
            dataset: tf.data.Dataset, learning_rate: tf.Tensor) -> ClientResult:
    global_values, local_values = list(global_values), list(local_values)
    x = [tf.convert_to_tensor(v) for v in global_values[:n_global]]
    c_server = global_values[n_global:] or [None] * n_global
    c_client = local_values[n_local:] or [None] * n_global
    _restore(frozen)
    _assign(global_vars + local_vars, x + local_values[:n_local])
    optimizer.reset()
    index = {v.ref(): i for i, v in enumerate(global_vars)}

    def correct_gradient(v, g):
      i = index.get(v.ref())
      return g if i is None else algorithm.gradient(g, v, x[i], c_server[i], c_client[i])

    def step(totals, batch):
      def objective_fn():
        return _objective(model, loss, batch)

      objective, logits, grads = keras_layers.jacobian.loss_and_gradients(
          model, objective_fn, model.trainable_variables, learning_rate, jacobian_correction)
      grads = [correct_gradient(v, g) for v, g in zip(model.trainable_variables, grads)]
      optimizer.apply(grads, learning_rate)
      size = _batch_size(batch)
      correct, _ = correct_and_total(logits, batch['y'])
      return (totals[0] + size, totals[1] + objective * size, totals[2] + correct,
              totals[3] + 1)

    # An iterator loop, like TFF's DATASET_ITERATOR (faster here than dataset.reduce).
    totals = (tf.constant(0.0), tf.constant(0.0), tf.constant(0.0), tf.constant(0))
    for batch in iter(dataset.repeat(local_epochs)):
      totals = step(totals, batch)
    seen, loss_sum, correct, steps = totals
    y = [tf.identity(v) for v in global_vars]
    trained_local = [tf.identity(v) for v in local_vars]
    full_gradient = None
    if algorithm.full_gradient:
      # At the round's starting point, after training, so that training reads the dataset's
      # first iteration as every other algorithm does: a reshuffling dataset orders each
      # iteration differently, and in a graph nothing else orders two iterators of one dataset
      # (TFF's local and remote runtimes picked differently). The full gradient does not depend
      # on the order.
      with tf.control_dependencies(y + trained_local + [loss_sum]):
        _assign(global_vars + local_vars, x + local_values[:n_local])
        full_gradient = _full_gradient(model, loss, global_vars, dataset)
    extra, client_state = algorithm.client_finish(x, y, c_server, c_client, steps,
                                                  learning_rate, full_gradient)
    upload = [a - b for a, b in zip(x, y)] + extra
    new_local = trained_local + client_state
    finite = tf.reduce_all([tf.math.is_finite(loss_sum)] + [
        tf.reduce_all(tf.math.is_finite(t)) for t in upload + new_local])
    examples = seen / float(local_epochs)
    weight = tf.cast(examples > 0, tf.float32) if algorithm.uniform else examples
    return ClientResult(
        upload=[tf.where(finite, u, tf.zeros_like(u)) for u in upload],
        new_local=[tf.where(finite, n, o) for n, o in zip(new_local, local_values)],
        weight=tf.where(finite, weight, 0.0), examples=tf.where(finite, examples, 0.0),
        loss_sum=tf.where(finite, loss_sum, 0.0), correct=tf.where(finite, correct, 0.0),
        diverged=tf.cast(tf.logical_not(finite), tf.int32))

  return train


def _objective(model: tf.keras.Model, loss: Callable[..., tf.Tensor],
               batch: Batch) -> Tuple[tf.Tensor, tf.Tensor]:
  """The training loss of one batch, with the model's regularisation terms (as TFF adds them)."""
  logits = model(batch['x'], training=True)
  batch_loss = loss(batch['y'], logits)
  return (tf.add_n([batch_loss] + model.losses) if model.losses else batch_loss), logits


def _full_gradient(model: tf.keras.Model, loss: Callable[..., tf.Tensor],
                   variables: Sequence[tf.Variable], dataset: tf.data.Dataset) -> List[tf.Tensor]:
  """The gradient of the mean loss over one pass of `dataset` at the current values (MIME-lite):
  the example-weighted mean of the minibatch gradients of `variables`."""
  totals = [tf.zeros_like(v) for v in variables]
  seen = tf.constant(0.0)
  for batch in iter(dataset):
    with tf.GradientTape() as tape:
      objective, _ = _objective(model, loss, batch)
    size = _batch_size(batch)
    grads = tape.gradient(objective, variables,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    totals = [t + size * tf.convert_to_tensor(g) for t, g in zip(totals, grads)]
    seen += size
  return [tf.math.divide_no_nan(t, seen) for t in totals]


def build_client_eval(
    model: tf.keras.Model, split: Split, n_model_local: int,
    frozen: Sequence[Tuple[tf.Variable, Any]] = ()
) -> Callable[..., 'collections.OrderedDict[str, tf.Tensor]']:
  """Accuracy of `model` on one client's data with given global and local values.

  Args:
    model: a Keras model; its variables are overwritten by each call.
    split: function of the model returning `(global variables, local variables)`.
    n_model_local: how many of the local values are the model's (the rest, an
      algorithm's client state, are ignored).
    frozen: the model's frozen variables and their values (`build_client_train`).

  Returns:
    `evaluate(global_values, local_values, dataset)` returning
    `OrderedDict(accuracy, num_examples)`.
  """
  global_vars, local_vars = split(model)

  @tf.function
  def evaluate(global_values: Sequence[tf.Tensor], local_values: Sequence[tf.Tensor],
               dataset: tf.data.Dataset) -> 'collections.OrderedDict[str, tf.Tensor]':
    _restore(frozen)
    _assign(global_vars + local_vars,
            list(global_values) + list(local_values)[:n_model_local])

    def step(totals, batch):
      correct, total = correct_and_total(model(batch['x'], training=False), batch['y'])
      return totals[0] + correct, totals[1] + total

    correct, total = dataset.reduce((tf.constant(0.0), tf.constant(0.0)), step)
    return collections.OrderedDict(accuracy=tf.math.divide_no_nan(correct, total),
                                   num_examples=total)

  return evaluate
