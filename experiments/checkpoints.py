"""Run checkpoints: the server state, every client's local variables and the run's counters.

One `.npz` file per checkpoint, `ckpt-<round>.npz`, written to a temporary
name and renamed, so a run killed at any moment leaves either the previous
checkpoint or the new one, never half a file. Each file records the model's
signature (trainable variable names and shapes) and a digest of its run's identity (the flags and
data of run.json), and is refused by a run whose model or identity differs.
"""

import dataclasses
import glob
import hashlib
import json
import os
import re
import sys
from typing import Optional

import numpy as np
import tensorflow as tf

from experiments.data import common

_NAME = re.compile(r'ckpt-(\d{6})\.npz$')


class CheckpointMismatchError(ValueError):
  """The checkpoint was written by a run of another model or structure."""


class CheckpointDamagedError(ValueError):
  """The checkpoint file cannot be read (truncated, bad CRC, not a checkpoint)."""




@dataclasses.dataclass(frozen=True)
class Signature:
  """What a checkpoint must match: the model (`model_signature`) and the run (`run_digest` of
  its identity, the flags and data of its run.json; None: not checked). `history` ({round:
  wall_time_s}, the run folder's metrics.csv) vouches for a checkpoint written before
  checkpoints recorded their run: it is accepted only where the folder's own row of its round
  holds its wall time (to full precision, which another run does not repeat)."""
  model: list
  run: Optional[str] = None
  history: Optional[dict] = None


def _parts(signature):
  """`(model, run)` of a `Signature`, or of a bare `model_signature` list (no run)."""
  if isinstance(signature, Signature):
    return signature.model, signature.run
  return signature, None


def run_digest(identity):
  """A short digest of a run's identity (`run.json`'s content)."""
  return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def model_signature(keras_model):
  """`[[name, shape], ...]` of the trainable variables: what a checkpoint must match."""
  return [[v.name, list(v.shape)] for v in keras_model.trainable_variables]


# A run folder's checkpoints: `<output_dir>/checkpoints/ckpt-<round>.npz`.
DIR = 'checkpoints'


def directory_of(output_dir):
  return os.path.join(output_dir, DIR)


def kept_state(directory, found=None):
  """What a stopped run keeps, in words: `'the last checkpoint (round k) is kept'`, or, before
  the first checkpoint, that nothing is (a new run's folder is removed then). `found`: the
  directory's `latest`, when the caller has it."""
  found = found or latest(directory)
  if found is None:
    return 'no checkpoint was written yet, so nothing is kept'
  return f'the last checkpoint (round {found[0]}) is kept'


def kept_note(directory, fix=''):
  """`kept_state` and how to go on, for a stopped run's one-line message (`fix`: what to do
  first, e.g. `'fix that and '`)."""
  found = latest(directory)
  action = 'resume' if found is not None else 'start again'
  return f'{kept_state(directory, found)}: {fix}rerun the same command to {action}'


def path_for(directory, round_num):
  return os.path.join(directory, f'ckpt-{round_num:06d}.npz')


def latest(directory):
  """`(round, path)` of the newest checkpoint in `directory`, or None."""
  found = _all(directory)
  return found[-1] if found else None


def _all(directory):
  """Sorted `(round, path)` of the checkpoints in `directory`."""
  paths = glob.glob(os.path.join(directory, 'ckpt-*.npz'))
  return sorted((int(m.group(1)), p) for p in paths if (m := _NAME.search(p)))


def save(directory, round_num, state, signature, counters, local_store=None, keep=2):
  """Writes the checkpoint of `round_num` atomically and keeps the newest `keep`.

  Args:
    directory: the run's checkpoint folder (created if needed).
    round_num: rounds completed.
    state: the server state (any `tf.nest` structure of arrays).
    signature: `Signature` of the run (or a bare `model_signature`).
    counters: JSON-serialisable run counters (bytes so far, wall time, ...).
    local_store: optional `{client_id: [arrays]}` of stateful clients.
    keep: how many checkpoints to keep.
  """
  os.makedirs(directory, exist_ok=True)
  arrays = {f'state_{i:05d}': np.asarray(a) for i, a in enumerate(tf.nest.flatten(state))}
  clients = sorted(local_store or {})
  for i, client in enumerate(clients):
    for j, value in enumerate(local_store[client]):
      arrays[f'local_{i:06d}_{j:03d}'] = np.asarray(value)
  model, run = _parts(signature)
  meta = dict(round=round_num, signature=model, counters=counters, clients=clients,
              state_size=len(tf.nest.flatten(state)), run=run)
  path = path_for(directory, round_num)
  temporary = f'{path}.tmp.npz'
  try:
    with open(temporary, 'wb') as f:
      common.write_npz(f, dict(meta=np.asarray(json.dumps(meta)), **arrays))
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except OSError as e:
    _remove_quietly(temporary)   # a failed write (full disk) leaves no temporary file
    if e.filename is None:   # a write inside the archive names no file: name the checkpoint
      raise OSError(e.errno, e.strerror, path) from None
    raise
  except BaseException:
    _remove_quietly(temporary)
    raise
  _fsync_directory(directory)
  for _, old in _all(directory)[:-keep]:
    os.remove(old)
  return path


def _remove_quietly(path):
  try:
    os.remove(path)
  except OSError:
    pass


def _fsync_directory(directory):
  """Makes the rename durable (the directory entry reaches the disk)."""
  descriptor = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def load_latest(directory, template_state, signature, log=None):
  """`(round, state, counters, local_store)` of the newest intact checkpoint, or None.

  A damaged checkpoint is skipped with one line on `log` (default stderr) naming it and the
  round resumed from instead.

  Raises:
    CheckpointMismatchError: a readable checkpoint of another model or structure.
  """
  found = _all(directory)
  for index in range(len(found) - 1, -1, -1):
    round_num, path = found[index]
    try:
      return load(path, template_state, signature)
    except CheckpointDamagedError as e:
      fallback = found[index - 1][0] if index else 0
      print(f'{e}; resuming from round {fallback} instead.', file=log or sys.stderr, flush=True)
  return None


def load_round(directory, template_state, signature, round_num):
  """`(round, state, counters, local_store)` of the checkpoint of exactly `round_num`; None
  for round 0 (nothing to resume).

  Raises:
    CheckpointDamagedError: that checkpoint is missing or damaged (no other one will do: the
      run's client store is at that round).
    CheckpointMismatchError: as `load`.
  """
  if not round_num:
    return None
  path = path_for(directory, round_num)
  if not os.path.exists(path):
    raise CheckpointDamagedError(f'checkpoint {path} is missing, but the client store is at round '
                                 f'{round_num}; start the run again with --overwrite.')
  try:
    return load(path, template_state, signature)
  except CheckpointDamagedError as e:
    raise CheckpointDamagedError(f'{e}; the client store is at round {round_num}, so no older '
                                 f'checkpoint will do: start the run again with --overwrite.'
                                 ) from None


def load(path, template_state, signature):
  """`(round, state, counters, local_store)` from `path`, checked against this run.

  Args:
    path: a checkpoint file.
    template_state: a freshly initialised state of this run (gives the structure).
    signature: `Signature` of this run (or a bare `model_signature`).

  Raises:
    CheckpointMismatchError: another model, or a state of another structure.
  """
  try:
    with np.load(path) as stored:
      meta = json.loads(str(stored['meta']))
      arrays = {k: stored[k] for k in stored.files if k != 'meta'}
    for key in ('round', 'signature', 'counters', 'clients', 'state_size'):
      meta[key]   # pylint: disable=pointless-statement
  except common.NPZ_READ_ERRORS as e:
    raise CheckpointDamagedError(f'checkpoint {path} is damaged ({type(e).__name__}: {e})') from e
  model, run = _parts(signature)
  if meta['signature'] != model:
    theirs = {n: s for n, s in meta['signature']}
    ours = {n: s for n, s in model}
    diff = sorted(set(map(str, theirs.items())) ^ set(map(str, ours.items())))[:3]
    raise CheckpointMismatchError(
        f'checkpoint {path} was written for another model ({len(theirs)} trainable variables '
        f'vs {len(ours)} here; first differences: {", ".join(diff)}); use another --output_dir.')
  if run is not None and meta.get('run') not in (None, run):
    raise CheckpointMismatchError(
        f'checkpoint {path} was written by another run (run identity {meta["run"]}, this run '
        f'{run}: another seed, data or setting); move it out of the folder or use another '
        f'--output_dir.')
  if run is not None and meta.get('run') is None:
    history = getattr(signature, 'history', None) or {}
    if history.get(meta['round']) != meta['counters'].get('wall_time_s'):
      raise CheckpointMismatchError(
          f'checkpoint {path} records no run identity (written before checkpoints did), and '
          f'this folder\'s metrics.csv does not vouch for it (its round {meta["round"]} row '
          f'does not hold the checkpoint\'s wall time): it may be another run\'s; move it out of '
          f'the folder, or pass --overwrite to start the run again.')
  named = _NAME.search(path)
  if named and int(named.group(1)) != meta['round']:
    raise CheckpointDamagedError(f'checkpoint {path} is damaged (it holds round {meta["round"]}, '
                                 f'not the round its name says)')
  template = tf.nest.flatten(template_state)
  values = [arrays[f'state_{i:05d}'] for i in range(meta['state_size'])]
  if len(values) != len(template) or any(
      np.shape(a) != np.shape(b) for a, b in zip(values, template)):
    raise CheckpointMismatchError(f'checkpoint {path} holds a server state of another structure '
                                  f'(another algorithm or aggregator); use another --output_dir.')
  bad = next((k for k in sorted(arrays) if np.issubdtype(arrays[k].dtype, np.floating)
              and not np.all(np.isfinite(arrays[k]))), None)
  if bad is not None:   # no run writes one: a diverged round stops before its checkpoint
    raise CheckpointDamagedError(f'checkpoint {path} is damaged (non-finite values in {bad})')
  state = tf.nest.pack_sequence_as(template_state, values)
  local_store = {}
  for i, client in enumerate(meta['clients']):
    keys = sorted(k for k in arrays if k.startswith(f'local_{i:06d}_'))
    local_store[client] = [arrays[k] for k in keys]
  return meta['round'], state, meta['counters'], local_store
