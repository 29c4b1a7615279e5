"""The round loop of a run: sampling, one round after another, evaluation, checkpoints.

Rounds are deterministic given the seed (client sampling and each client's shuffling are pure
functions of the seed and the round), so a run killed after round k and restarted continues at
round k + 1 from its latest checkpoint and ends where an uninterrupted run ends.
"""

import dataclasses
import math
import sys
import time

import numpy as np
import tensorflow as tf
import tqdm

from fedpara_tff import client_work
from fedpara_tff import distributed
from experiments import checkpoints
from experiments import run_config
from experiments import run_io
from experiments.data import clients as clients_lib


class RunInterruptedError(RuntimeError):
  """The run stopped mid-way (e.g. a worker died); its last checkpoint is kept."""


class RunDivergedError(RunInterruptedError):
  """Training diverged: no client's update was finite, or the model or test loss is not finite."""


def divergence(row, clients, weights):
  """What diverged in a round, in words, or None when the round is sound.

  Args:
    row: the round's metrics (`diverged_clients`, optional `test_loss`).
    clients: the round's client count.
    weights: the global model's variables after the round (numpy arrays).
  """
  if row['diverged_clients'] >= clients:
    return f'every client\'s update was non-finite ({clients} of {clients} clients)'
  bad = [i for i, w in enumerate(weights) if not np.all(np.isfinite(w))]
  if bad:
    return f'the server model has non-finite values (variable {bad[0]} of {len(weights)})'
  if 'test_loss' in row and not math.isfinite(row['test_loss']):
    return f'the test loss is {row["test_loss"]}'
  return None


def divergence_hint(config, diverged):
  """What to change after `divergence` said `diverged`: the flag whose step blew up, named.

  The clients' updates: with client SGD, a weight decay or proximal term whose own step
  `lr x strength` reaches 1 flips and grows the weights every step, whatever the loss does: that
  flag; else the client learning rate (and the factor step rule, when one is on). The server model with finite client
  updates: the server step (its momentum, when on). A non-finite test loss on finite weights:
  logits grown too large, the client learning rate.
  """
  lr = config.client_learning_rate
  if diverged.startswith('the server model'):
    if config.server_momentum:
      return (f'server_momentum={config.server_momentum} with server_learning_rate='
              f'{config.server_learning_rate} overshoots: try --server_momentum=0 or '
              f'--server_learning_rate={config.server_learning_rate / 10:g}.')
    return (f'the server step overshoots at server_learning_rate={config.server_learning_rate}: '
            f'try --server_learning_rate={config.server_learning_rate / 10:g}.')
  sgd = config.client_optimizer == 'sgd'   # Adam normalises its step: no such factor
  if sgd and config.weight_decay and lr * config.weight_decay >= 1:
    return (f'weight_decay={config.weight_decay} at client_learning_rate={lr} makes each step '
            f'scale the weights by {1 - lr * config.weight_decay:g}: try '
            f'--weight_decay={0.5 / lr:g} or less.')
  if sgd and config.algorithm == 'fedprox' and lr * config.fedprox_mu >= 1:
    return (f'fedprox_mu={config.fedprox_mu} at client_learning_rate={lr} overshoots the '
            f'proximal pull every step: try --fedprox_mu={0.5 / lr:g} or less.')
  furthest = _furthest_step_size(config)
  if furthest == 'server_learning_rate':
    return (f'the server step overshoots at server_learning_rate={config.server_learning_rate} '
            f'(its default: {_default_step_sizes(config)[furthest]:g}): try '
            f'--server_learning_rate={config.server_learning_rate / 10:g}.')
  if furthest == 'factor_lr_scale':
    scale = float(config.factor_lr_scale)
    return (f'factor_lr_scale={config.factor_lr_scale} multiplies the client step on the '
            f'factors {scale:g} times: try --factor_lr_scale={scale / 10:g} or '
            f'--factor_lr_scale=none.')
  scale = f' (with --factor_lr_scale={config.factor_lr_scale})' if config.factor_lr_scale else ''
  return (f'the client step overshoots at client_learning_rate={lr}{scale}: try '
          f'--client_learning_rate={lr / 10:g}.')


def _default_step_sizes(config):
  """The defaults of the step sizes a run sets (a numeric factor_lr_scale's: 1, none)."""
  from fedpara_tff import settings as settings_lib  # pylint: disable=g-import-not-at-top
  return dict(client_learning_rate=run_config.RunConfig.client_learning_rate,
              server_learning_rate=settings_lib.default_server_learning_rate(config.algorithm),
              factor_lr_scale=1.0)


def _furthest_step_size(config):
  """The step-size setting furthest above its default (by ratio; the client learning rate on a
  tie), the likeliest cause of a divergence that the clients' updates show."""
  scale = run_config.factor_lr_scale(config.factor_lr_scale)
  values = dict(client_learning_rate=config.client_learning_rate,
                server_learning_rate=config.server_learning_rate,
                # none, 'matched', 'safe': no multiplier the user chose
                factor_lr_scale=scale if isinstance(scale, float) else 1.0)
  defaults = _default_step_sizes(config)
  ratios = {name: values[name] / defaults[name] for name in values}
  return max(ratios, key=lambda name: (ratios[name], name == 'client_learning_rate'))


def shuffle_seed(seed, round_num, client):
  return int((seed * 1_000_003 + round_num * 10_007 + client) % (2**31 - 1))


def sample_clients(seed, round_num, clients, per_round):
  """The clients of round `round_num` (1-based): a pure function of the seed and the round."""
  rng = np.random.default_rng([seed, round_num])
  return np.sort(rng.choice(clients, size=per_round, replace=False))


def sample_eval_clients(seed, ids, count):
  """The clients of the personalised evaluation: every one (`count` 0 or >= len(ids)), or a
  seeded sample of `count`, the same at every evaluation of the run."""
  if not count or count >= len(ids):
    return list(ids)
  chosen = np.random.default_rng([seed, 7_919]).choice(len(ids), size=count, replace=False)
  return [ids[i] for i in np.sort(chosen)]


class Evaluator:
  """Loss and accuracy of the global model on the held-out pool (global runs only)."""

  def __init__(self, keras_model_fn, x, y, max_examples):
    if max_examples:
      x, y = x[:max_examples], y[:max_examples]
    self._model = keras_model_fn()
    self._dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(256)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction='sum')
    model = self._model

    def add_batch(totals, batch):
      batch_x, batch_y = batch
      logits = model(batch_x, training=False)
      correct, total = client_work.correct_and_total(logits, batch_y)
      return (totals[0] + loss(batch_y, logits), totals[1] + correct, totals[2] + total)

    # `Dataset.reduce`, not a Python loop: the loop needs AutoGraph, which reads the source file
    # again and silently falls back to an endless graph-mode loop if it was edited meanwhile.
    @tf.function(autograph=False)
    def evaluate():
      totals = self._dataset.reduce(
          (tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)), add_batch)
      return totals[0] / totals[2], totals[1] / totals[2]

    self._evaluate = evaluate

  def __call__(self, weights):
    for variable, value in zip(self._model.trainable_variables, weights):
      variable.assign(value)
    loss, accuracy = self._evaluate()
    return float(loss), float(accuracy)


def resume_point(checkpoint_dir, state, signature, store):
  """The checkpoint to resume from: the newest intact one, or, with an SQLite client store,
  the one of the store's committed round (a checkpoint newer than the store was written just
  before a kill, and its clients' state never committed)."""
  if store is None or store.kind == 'memory':
    return checkpoints.load_latest(checkpoint_dir, state, signature)
  return checkpoints.load_round(checkpoint_dir, state, signature, store.committed_round())


def run_rounds(config, data, parts, keras_model_fn, signature, resuming, driver, state, store):
  """Runs the rounds of a prepared run folder from its resume point to `config.rounds`.

  Args:
    config: the run's `experiments.run_config.RunConfig`.
    data, parts: the dataset and its client partition.
    keras_model_fn: builds the run's Keras model (the evaluator's copy).
    signature: the model's checkpoint signature (`experiments.checkpoints`).
    resuming: whether the folder holds this run already (resume from its checkpoints).
    driver: the run's round driver (`next`, `global_weights`, `evaluate`).
    state: the driver's initial server state.
    store: the clients' state store, or None for stateless clients.

  Returns:
    The counters after the last round: `bytes_uploaded`, `bytes_downloaded`, `wall_time_s`.
  """
  personalized = config.parameterization in run_config.PERSONALIZED
  stateful = store is not None
  counters = dict(bytes_uploaded=0, bytes_downloaded=0, wall_time_s=0.0)
  start_round = 0
  checkpoint_dir = checkpoints.directory_of(config.output_dir)
  if resuming:   # the folder's own history vouches for checkpoints without a run identity
    signature = dataclasses.replace(signature, history={
        int(row['round']): row['wall_time_s'] for row in run_io.read_metrics(config.output_dir)})
  found = resume_point(checkpoint_dir, state, signature, store) if resuming else None
  if found:
    start_round, state, counters, local_store = found
    if stateful and store.kind == 'memory':
      store.restore(local_store, start_round)
    if start_round > config.rounds:
      print(f'note: output_dir {config.output_dir} holds {start_round} rounds of this run, more '
            f'than --rounds={config.rounds}: nothing was trained, and the summary is of round '
            f'{start_round}.', file=sys.stderr, flush=True)
  train_cd = clients_lib.to_client_data(data.x_train, data.y_train, parts.train)
  ids = train_cd.client_ids
  test_cd = (clients_lib.to_client_data(data.x_train, data.y_train, parts.test)
             if personalized else None)
  eval_ids = sample_eval_clients(config.seed, ids, config.eval_clients)
  evaluator = None if personalized else Evaluator(
      keras_model_fn, data.x_test, data.y_test, config.max_test_examples)

  writer = run_io.MetricsWriter(config.output_dir, start_round)
  bar = tqdm.tqdm(range(start_round + 1, config.rounds + 1), initial=start_round,
                  total=config.rounds, disable=None if config.progress else True,
                  desc=config.parameterization, unit='round', leave=False)
  try:
    for round_num in bar:
      began = time.perf_counter()
      chosen = sample_clients(config.seed, round_num, len(ids), config.clients_per_round)
      # The client work repeats each dataset local_epochs times itself.
      datasets = [train_cd.create_tf_dataset_for_client(ids[c]).shuffle(
          len(parts.train[c]), seed=shuffle_seed(config.seed, round_num, c),
          reshuffle_each_iteration=True).batch(config.batch_size) for c in chosen]
      try:
        state, row = driver.next(state, [ids[c] for c in chosen], datasets)
      except distributed.WorkerUnavailableError as e:
        raise RunInterruptedError(
            f'round {round_num}: {e}; '
            f'{checkpoints.kept_note(checkpoint_dir, "start the worker again and ")}.') from None
      diverged = divergence(row, len(chosen), [np.asarray(w) for w in
                                               driver.global_weights(state)])
      if diverged is None and evaluator and (round_num % config.eval_every == 0
                                             or round_num == config.rounds):
        row['test_loss'], row['test_accuracy'] = evaluator(driver.global_weights(state))
        diverged = divergence(row, len(chosen), [])
      if diverged:
        raise RunDivergedError(
            f'round {round_num}: training diverged: {diverged}; '
            f'{checkpoints.kept_state(checkpoint_dir)}. {divergence_hint(config, diverged)}')
      counters['bytes_uploaded'] += row['bytes_uploaded']
      counters['bytes_downloaded'] += row['bytes_downloaded']
      counters['wall_time_s'] += time.perf_counter() - began
      row.update(round=round_num, clients=len(chosen),
                 cumulative_gb=(counters['bytes_uploaded'] + counters['bytes_downloaded']) / 1e9,
                 wall_time_s=counters['wall_time_s'])
      if round_num % config.eval_every == 0 or round_num == config.rounds:
        if personalized:
          row['personalized_accuracy'] = driver.evaluate(
              state, eval_ids, (test_cd.create_tf_dataset_for_client(i).batch(256)
                                for i in eval_ids))
          row['personalized_clients'] = len(eval_ids)
      writer.write(row)
      bar.set_postfix(loss=f'{row["train_loss"]:.3f}', gb=f'{row["cumulative_gb"]:.4f}')
      if round_num % config.checkpoint_every == 0 or round_num == config.rounds:
        # The server state first, then the clients' (one SQLite transaction with the round):
        # a kill between the two resumes from the previous checkpoint (`_resume_point`).
        checkpoints.save(checkpoint_dir, round_num, state, signature, counters,
                         store.snapshot() if stateful and store.kind == 'memory' else None)
        if stateful:
          store.commit(round_num)
  finally:
    bar.close()
    writer.close()
  return counters
