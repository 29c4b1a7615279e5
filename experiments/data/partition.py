"""Splitting a training pool into clients: IID, Dirichlet label skew, shards, natural, sampled.

Every partitioner returns one int64 index array per client (indices into the
pool), is a pure function of its arguments and the seed, and raises ValueError
with the bad value when the request cannot be met.
"""

import math

import numpy as np

KINDS = ('iid', 'dirichlet', 'shards', 'natural', 'sampled')
MAX_DIRICHLET_DRAWS = 1000
# Below this, numpy's Dirichlet sampler takes about 0.5 s a draw (alpha 1e-9) and nearly every
# class lands on a single client, so the search for a split without empty clients would run for
# an hour before failing; such an alpha is refused at once.
MIN_DIRICHLET_ALPHA = 1e-3


def _check_clients(num_clients, num_examples):
  if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
    raise ValueError(f'clients must be an integer >= 1; got {num_clients!r}.')
  if num_clients > num_examples:
    raise ValueError(f'clients={num_clients} exceeds the {num_examples} training examples; '
                     f'every client needs at least one.')


def iid(num_examples, num_clients, seed):
  """A random permutation cut into `num_clients` near-equal parts."""
  _check_clients(num_clients, num_examples)
  order = np.random.default_rng(seed).permutation(num_examples)
  return [np.sort(part) for part in np.array_split(order, num_clients)]


def sampled(num_examples, num_clients, examples_per_client, seed):
  """Cross-device scale: each client draws `examples_per_client` examples uniformly with
  replacement, independently of the others, so there may be more clients than examples (e.g.
  100,000 clients over Fashion-MNIST's 60,000 images). One vectorised draw: seconds for 100,000
  clients."""
  if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
    raise ValueError(f'clients must be an integer >= 1; got {num_clients!r}.')
  if not isinstance(examples_per_client, (int, np.integer)) or examples_per_client < 1:
    raise ValueError(f'examples_per_client must be an integer >= 1; got '
                     f'{examples_per_client!r}.')
  draws = np.random.default_rng(seed).integers(0, num_examples,
                                               size=(num_clients, examples_per_client))
  return list(np.sort(draws, axis=1).astype(np.int64))


def dirichlet(labels, num_clients, alpha, seed):
  """Label skew: each class is split over clients by proportions ~ Dirichlet(alpha).

  Small `alpha` gives clients few classes; large `alpha` approaches IID. Draws
  are repeated (deterministically) until every client has an example.
  """
  if not (alpha > 0 and math.isfinite(alpha)):
    raise ValueError(f'alpha must be a finite number > 0; got {alpha!r}.')
  if alpha < MIN_DIRICHLET_ALPHA:
    raise ValueError(f'alpha must be >= {MIN_DIRICHLET_ALPHA} (smaller values put every class on '
                     f'one client and make the sampler very slow); got {alpha!r}.')
  _check_clients(num_clients, len(labels))
  rng = np.random.default_rng(seed)
  by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  for _ in range(MAX_DIRICHLET_DRAWS):
    cuts = [(np.cumsum(rng.dirichlet(np.full(num_clients, float(alpha))))[:-1]
             * len(members)).astype(int) for members in by_class]
    # Each client's size from the cuts alone: a draw that leaves one empty is dropped before
    # any client's indices are gathered.
    sizes = sum(np.diff(c, prepend=0, append=len(m)) for c, m in zip(cuts, by_class))
    if sizes.min() > 0:
      pieces = [np.split(members, c) for members, c in zip(by_class, cuts)]
      return [np.sort(np.concatenate([p[client] for p in pieces]))
              for client in range(num_clients)]
  raise ValueError(f'Dirichlet(alpha={alpha}) left a client empty in {MAX_DIRICHLET_DRAWS} draws '
                   f'for {num_clients} clients and {len(labels)} examples; use fewer clients or a '
                   f'larger alpha.')


def shards(labels, num_clients, shards_per_client, seed):
  """McMahan et al.'s pathological split: sort by label, cut into equal shards, deal them out.

  With `shards_per_client=2` and balanced classes each client sees at most 2 classes.
  """
  if not isinstance(shards_per_client, (int, np.integer)) or shards_per_client < 1:
    raise ValueError(f'shards_per_client must be an integer >= 1; got {shards_per_client!r}.')
  _check_clients(num_clients, len(labels))
  total = num_clients * shards_per_client
  if total > len(labels):
    raise ValueError(f'{num_clients} clients x {shards_per_client} shards = {total} shards exceed '
                     f'the {len(labels)} training examples.')
  rng = np.random.default_rng(seed)
  order = np.argsort(labels, kind='stable')
  pieces = np.array_split(order, total)
  dealt = rng.permutation(total).reshape(num_clients, shards_per_client)
  return [np.sort(np.concatenate([pieces[s] for s in row])) for row in dealt]


def natural(groups, num_clients, group_names=()):
  """The first `num_clients` natural groups (writers, roles), one client each."""
  if groups is None:
    raise ValueError('partition=natural needs a naturally federated dataset (writers or roles); '
                     'use iid, dirichlet or shards for this one.')
  available = int(groups.max()) + 1 if len(groups) else 0
  if not isinstance(num_clients, (int, np.integer)) or not 1 <= num_clients <= available:
    raise ValueError(f'clients must be in [1, {available}] (the natural clients of this dataset);'
                     f' got {num_clients!r}.')
  return [np.flatnonzero(groups == g) for g in range(num_clients)]


def split_each(parts, test_fraction, seed):
  """Per-client `(train, test)` index arrays, a seeded `test_fraction` of each held out.

  Every client keeps at least one example on each side (clients need two).
  """
  if not 0 < test_fraction < 1:
    raise ValueError(f'client_test_fraction must be in (0, 1); got {test_fraction!r}.')
  rng = np.random.default_rng(seed)
  train, test = [], []
  for i, part in enumerate(parts):
    if len(part) < 2:
      raise ValueError(f'client {i} has {len(part)} example(s); a personalised run needs at '
                       f'least 2 per client (one to train, one to test). Use fewer clients.')
    shuffled = rng.permutation(part)
    n_test = min(len(part) - 1, max(1, int(round(len(part) * test_fraction))))
    test.append(np.sort(shuffled[:n_test]))
    train.append(np.sort(shuffled[n_test:]))
  return train, test


def label_histograms(labels, parts, num_classes):
  """`(clients, classes)` array of label frequencies per client (rows sum to 1)."""
  counts = np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
  return counts / counts.sum(axis=1, keepdims=True)
