"""Per-client state of stateful algorithms (pFedPara's local factors, FedPer's local layers).

Two stores behind one interface (docs/DESIGN.md, "Client-state store"):

* `get(ids)`: each client's list of arrays, or None for a client never stored;
* `put(ids, values)`: new state for those clients;
* `commit(round_num)`: makes everything put so far durable, together with the
  round number (`committed_round()` reads it back);
* `snapshot()`: `{client id: [arrays]}` of every stored client.

`MemoryClientStore` is a dict; its state reaches the disk only through the
run's checkpoints (`snapshot()` goes into each one), so it suits runs with few
clients. `SQLiteClientStore` keeps one row per client in an SQLite file (the
standard library's `sqlite3`, WAL journal): only the round's clients are read
and written, a bounded LRU cache holds the recently used ones, and `commit`
writes the round number in the same transaction as the clients' rows, so a
process killed at any moment leaves the store at its last committed round.
"""

import collections
import json
import os
import sqlite3
import sys

import numpy as np

KINDS = ('auto', 'memory', 'sqlite')
# `auto` picks SQLite for runs with more clients than this.
AUTO_SQLITE_ABOVE = 1000
FILE_NAME = 'client_state.sqlite'


class ClientStoreError(ValueError):
  """The store file is missing, damaged or belongs to another model."""


def _check_ids(ids, values=None):
  ids = [str(i) for i in ids]
  if len(set(ids)) != len(ids):
    raise ValueError(f'client ids must be distinct; got {ids}.')
  if values is not None and len(values) != len(ids):
    raise ValueError(f'{len(ids)} client ids but {len(values)} values.')
  return ids


class MemoryClientStore:
  """Client state in a dict (small runs); durable only through the run's checkpoints."""

  kind = 'memory'

  def __init__(self):
    self._state = {}
    self._round = 0

  def get(self, ids):
    return [self._state.get(i) for i in _check_ids(ids)]

  def put(self, ids, values):
    for client, value in zip(_check_ids(ids, values), values):
      self._state[client] = [np.asarray(v) for v in value]

  def commit(self, round_num):
    self._round = _next_round(self._round, round_num, 'the memory client store')

  def committed_round(self):
    return self._round

  def snapshot(self):
    return dict(self._state)

  def restore(self, state, round_num):
    """Replaces the content with `state` ({id: [arrays]}) as of `round_num` (from a checkpoint)."""
    self._state = {str(k): [np.asarray(v) for v in value] for k, value in state.items()}
    self._round = int(round_num)

  def __len__(self):
    return len(self._state)

  def __contains__(self, client):
    return str(client) in self._state

  def close(self):
    pass


def _next_round(committed, round_num, store):
  """`round_num` as an int, refused (ValueError, one line) when it goes back before the store's
  committed round: the state it holds is that round's, and a commit never rewinds it."""
  round_num = int(round_num)
  if round_num < committed:
    raise ValueError(f'{store}: commit({round_num}) goes back before the committed round '
                     f'{committed}; rounds are committed in order.')
  return round_num


class SQLiteClientStore:
  """Client state in an SQLite file, one row per client; bounded memory.

  Rows hold each client's arrays as one blob (raw bytes in the order and shapes
  of `layout`). Writes go into an open transaction that `commit(round_num)`
  closes together with the round number; a process killed before that leaves
  the file at the previous commit (SQLite rolls the rest back on the next open).

  Args:
    path: the database file (created when missing).
    layout: `[(shape, dtype), ...]` of one client's arrays; checked against a
      file that exists. None: the layout the file holds (to inspect a store).
    cache_clients: how many clients' decoded state to keep in memory (LRU).

  Raises:
    ClientStoreError: the file is not a readable store, or holds another layout.
  """

  kind = 'sqlite'

  def __init__(self, path, layout, cache_clients=256, run=None, must_exist=False):
    self.path = path
    self.layout = None if layout is None else [
        (tuple(int(d) for d in shape), np.dtype(dtype).str) for shape, dtype in layout]
    self._cache = collections.OrderedDict()
    self._cache_clients = int(cache_clients)
    try:
      self._db = _connect(path)
      self._db.execute('CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, state BLOB)')
      self._db.execute('CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)')
      stored = dict(self._db.execute('SELECT key, value FROM meta'))
    except sqlite3.DatabaseError as e:
      raise _store_error(path, e) from None
    if must_exist and 'layout' not in stored:
      raise ClientStoreError(f'client store {path} holds no clients\' state (it is empty or '
                             f'not a store) although the run resumes from a checkpoint: the '
                             f'clients\' state is lost; start the run again with --overwrite.')
    if layout is None:
      if 'layout' not in stored:
        raise ClientStoreError(f'client store {path} holds no layout; it is not a store.')
      self.layout = [(tuple(shape), dtype) for shape, dtype in json.loads(stored['layout'])]
    wanted = json.dumps(self.layout)
    if 'layout' not in stored:
      self._db.execute('INSERT INTO meta VALUES (?, ?)', ('layout', wanted))
    elif stored['layout'] != wanted:
      raise ClientStoreError(f'client store {path} holds the state of another model (layout '
                             f'{stored["layout"][:80]}...); use another --output_dir.')
    if run is not None and 'run' not in stored:
      self._db.execute('INSERT INTO meta VALUES (?, ?)', ('run', run))
    elif run is not None and stored['run'] != run:
      raise ClientStoreError(f'client store {path} belongs to another run (run identity '
                             f'{stored["run"]}, this run {run}: another seed, data or setting); '
                             f'move it out of the folder or use another --output_dir.')
    self._round = int(stored.get('round', 0))
    self._in_transaction = False
    self._inode = os.stat(path).st_ino

  def _encode(self, value):
    arrays = [np.ascontiguousarray(v, dtype=np.dtype(d)) for v, (_, d) in zip(value, self.layout)]
    if len(arrays) != len(self.layout) or any(
        a.shape != s for a, (s, _) in zip(arrays, self.layout)):
      raise ValueError(f'client state of shapes {[np.shape(v) for v in value]} does not match '
                       f'the store layout {[s for s, _ in self.layout]}.')
    return b''.join(a.tobytes() for a in arrays)

  def _decode(self, blob, client=None):
    sizes = [int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
             for shape, dtype in self.layout]
    if not isinstance(blob, bytes) or len(blob) != sum(sizes):
      kind = f'{len(blob)} bytes' if isinstance(blob, bytes) else f'a {type(blob).__name__}'
      raise ClientStoreError(f'client store {self.path}: the row of client {client!r} holds '
                             f'{kind}, not the {sum(sizes)} bytes of its state; the store is '
                             f'damaged: start the run again with --overwrite.')
    values, offset = [], 0
    for (shape, dtype), size in zip(self.layout, sizes):
      values.append(np.frombuffer(blob, np.dtype(dtype), size // np.dtype(dtype).itemsize,
                                  offset).reshape(shape).copy())
      offset += size
    return values

  def _remember(self, client, value):
    self._cache[client] = value
    self._cache.move_to_end(client)
    while len(self._cache) > self._cache_clients:
      self._cache.popitem(last=False)

  def get(self, ids):
    ids = _check_ids(ids)
    missing = [i for i in ids if i not in self._cache]
    found = {}
    for start in range(0, len(missing), 500):   # SQLite's bound-parameter limit
      chunk = missing[start:start + 500]
      marks = ','.join('?' * len(chunk))
      try:
        rows = self._db.execute(f'SELECT id, state FROM clients WHERE id IN ({marks})', chunk)
        found.update((client, self._decode(blob, client)) for client, blob in rows)
      except sqlite3.DatabaseError as e:
        raise _store_error(self.path, e) from None
    out = []
    for client in ids:
      value = self._cache.get(client, found.get(client))
      if value is not None:
        self._remember(client, value)
      out.append(value)
    return out

  def put(self, ids, values):
    ids = _check_ids(ids, values)
    rows = [(client, self._encode(value)) for client, value in zip(ids, values)]
    try:
      if not self._in_transaction:
        self._db.execute('BEGIN IMMEDIATE')
        self._in_transaction = True
      self._db.executemany('INSERT OR REPLACE INTO clients VALUES (?, ?)', rows)
    except sqlite3.DatabaseError as e:
      raise _store_error(self.path, e) from None
    for client, value in zip(ids, values):
      self._remember(client, [np.asarray(v) for v in value])

  def commit(self, round_num):
    """Makes every `put` since the last commit durable, with `round_num`, in one transaction."""
    _next_round(self._round, round_num, f'client store {self.path}')
    try:
      if not self._in_transaction:
        self._db.execute('BEGIN IMMEDIATE')
      self._db.execute('INSERT OR REPLACE INTO meta VALUES (?, ?)',
                       ('round', str(int(round_num))))
      self._db.execute('COMMIT')
    except sqlite3.DatabaseError as e:
      raise _store_error(self.path, e) from None
    self._in_transaction = False
    self._round = int(round_num)
    self._restore_if_deleted()

  def _restore_if_deleted(self):
    """After a commit: if the file was deleted under the run (the connection still holds it
    whole), writes it back from the open connection and continues on the new file."""
    try:
      if os.stat(self.path).st_ino == self._inode:
        return
      raise ClientStoreError(f'client store {self.path} was replaced by another file during '
                             f'the run; move that file away and rerun the same command.')
    except FileNotFoundError:
      pass
    copy = sqlite3.connect(self.path)
    try:
      self._db.backup(copy)
    finally:
      copy.close()
    self._db.close()
    self._db = _connect(self.path)
    self._inode = os.stat(self.path).st_ino
    print(f'client store {self.path} was deleted during the run; written back from the open '
          f'copy (round {self._round}).', file=sys.stderr, flush=True)

  def committed_round(self):
    return self._round

  def snapshot(self):
    return {client: self._decode(blob, client)
            for client, blob in self._db.execute('SELECT id, state FROM clients ORDER BY id')}

  def __len__(self):
    return self._db.execute('SELECT COUNT(*) FROM clients').fetchone()[0]

  def __contains__(self, client):
    return self.get([client])[0] is not None

  def close(self):
    """Closes the file; what was put after the last commit is discarded."""
    if self._in_transaction:
      self._db.execute('ROLLBACK')
      self._in_transaction = False
    self._db.close()


def _connect(path):
  db = sqlite3.connect(path, isolation_level=None)
  db.execute('PRAGMA journal_mode=WAL')
  db.execute('PRAGMA synchronous=FULL')
  return db


def _store_error(path, error):
  """The one-line error for an SQLite `error` on the store at `path`: a store that cannot be
  written (read-only file or folder, no permission) is not a damaged one."""
  text = str(error)
  if any(s in text for s in ('readonly', 'read-only', 'unable to open', 'access permission')):
    return ClientStoreError(f'client store {path} cannot be written ({text}); nothing was lost: '
                            f'make the file and its folder writable and rerun the same command '
                            f'to resume.')
  return ClientStoreError(f'client store {path} is damaged ({text}); start the run again with '
                          f'--overwrite (the clients\' state cannot be recovered).')


def resolve_kind(kind, clients):
  """`memory` or `sqlite` for `kind` (one of `KINDS`) and a run with `clients` clients."""
  if kind not in KINDS:
    raise ValueError(f'client_store must be one of {KINDS}; got {kind!r}.')
  if kind == 'auto':
    return 'sqlite' if clients > AUTO_SQLITE_ABOVE else 'memory'
  return kind


def open_store(kind, clients, directory, layout, resuming, run=None):
  """The store of a run: `kind` resolved for `clients`; SQLite in `directory/FILE_NAME`,
  stamped with the run's identity digest `run` (a store of another run is refused).

  Raises:
    ClientStoreError: a resumed SQLite run whose store file is missing or empty, or a store of
      another run.
  """
  kind = resolve_kind(kind, clients)
  if kind == 'memory':
    return MemoryClientStore()
  path = os.path.join(directory, FILE_NAME)
  if resuming and not os.path.exists(path):
    raise ClientStoreError(f'client store {path} is missing, so the clients\' state is lost; '
                           f'start the run again with --overwrite.')
  return SQLiteClientStore(path, layout, run=run, must_exist=resuming)
