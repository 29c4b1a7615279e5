"""The client-state stores: round trips, bounded cache, damaged files, atomic commits."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fedpara_tff import client_store

LAYOUT = [((2, 3), np.float32), ((4,), np.float32)]


def _value(number):
  return [np.full((2, 3), number, np.float32), np.arange(4, dtype=np.float32) + number]


@pytest.fixture(params=['memory', 'sqlite'])
def store(request, tmp_path):
  if request.param == 'memory':
    made = client_store.MemoryClientStore()
  else:
    made = client_store.SQLiteClientStore(str(tmp_path / 'store.sqlite'), LAYOUT)
  yield made
  made.close()


def test_get_put_commit_snapshot(store):
  assert store.get(['a', 'b']) == [None, None] and len(store) == 0
  store.put(['a', 'b'], [_value(1), _value(2)])
  a, b = store.get(['a', 'b'])
  np.testing.assert_array_equal(a[1], [1, 2, 3, 4])
  np.testing.assert_array_equal(b[0], np.full((2, 3), 2))
  store.commit(5)
  assert store.committed_round() == 5 and len(store) == 2 and 'a' in store and 'c' not in store
  assert sorted(store.snapshot()) == ['a', 'b']
  with pytest.raises(ValueError, match=r'client ids must be distinct'):
    store.put(['a', 'a'], [_value(1), _value(1)])


def test_a_commit_never_goes_back_before_the_committed_round(store):
  """Issue 38: `commit(5)` then `commit(3)` silently rewound the store's round."""
  store.put(['a'], [_value(1)])
  store.commit(5)
  store.put(['a'], [_value(2)])
  with pytest.raises(ValueError, match=r'commit\(3\) goes back before the committed round 5; '
                                       r'rounds are committed in order\.$'):
    store.commit(3)
  assert store.committed_round() == 5
  store.commit(5)   # the same round again: its state, made durable
  store.commit(6)
  assert store.committed_round() == 6


def test_sqlite_keeps_committed_state_and_drops_the_rest(tmp_path):
  path = str(tmp_path / 'store.sqlite')
  first = client_store.SQLiteClientStore(path, LAYOUT)
  first.put(['a'], [_value(1)])
  first.commit(1)
  first.put(['a', 'b'], [_value(9), _value(9)])   # never committed
  first.close()
  again = client_store.SQLiteClientStore(path, LAYOUT)
  assert again.committed_round() == 1
  a, b = again.get(['a', 'b'])
  np.testing.assert_array_equal(a[0], np.full((2, 3), 1)) and b is None
  assert b is None
  again.close()


def test_sqlite_cache_is_bounded_and_reads_only_what_is_asked(tmp_path):
  store = client_store.SQLiteClientStore(str(tmp_path / 's.sqlite'), LAYOUT, cache_clients=8)
  ids = [f'c{i}' for i in range(100)]
  store.put(ids, [_value(i) for i in range(100)])
  store.commit(1)
  for start in range(0, 100, 10):
    chunk = store.get(ids[start:start + 10])
    assert [float(v[0][0, 0]) for v in chunk] == list(range(start, start + 10))
  assert len(store._cache) <= 8   # pylint: disable=protected-access
  store.close()


def test_sqlite_refuses_other_layouts_damaged_and_missing_files(tmp_path):
  path = str(tmp_path / 's.sqlite')
  client_store.SQLiteClientStore(path, LAYOUT).close()
  with pytest.raises(client_store.ClientStoreError, match=r'holds the state of another model'):
    client_store.SQLiteClientStore(path, [((3, 3), np.float32)])
  damaged = tmp_path / 'damaged.sqlite'
  damaged.write_bytes(b'not a database at all' * 100)
  with pytest.raises(client_store.ClientStoreError,
                     match=r'client store .*damaged.sqlite is damaged \(file is not a database\); '
                           r'start the run again with --overwrite'):
    client_store.SQLiteClientStore(str(damaged), LAYOUT)
  with pytest.raises(client_store.ClientStoreError, match=r'is missing, so the clients\' state'):
    client_store.open_store('sqlite', 10, str(tmp_path / 'nowhere'), LAYOUT, resuming=True)
  with pytest.raises(ValueError, match=r"client_store must be one of \('auto', 'memory', "
                                       r"'sqlite'\); got 'disk'"):
    client_store.resolve_kind('disk', 10)
  assert client_store.resolve_kind('auto', 1000) == 'memory'
  assert client_store.resolve_kind('auto', 1001) == 'sqlite'


# A writer that rewrites every client with the round number, committing each round, forever
# (the module is loaded from its file: importing the package would load TFF, seconds per run).
_WRITER = '''
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location('client_store', 'fedpara_tff/client_store.py')
client_store = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client_store)
store = client_store.SQLiteClientStore(sys.argv[1], [((64,), np.float32)])
ids = [str(i) for i in range(3000)]
round_num = store.committed_round()
print(round_num, flush=True)
while True:
  round_num += 1
  for start in range(0, len(ids), 500):
    chunk = ids[start:start + 500]
    store.put(chunk, [[np.full(64, round_num, np.float32)] for _ in chunk])
  store.commit(round_num)
'''


@pytest.mark.parametrize('delay', list(np.random.default_rng(3).uniform(0.05, 1.5, size=4)))
def test_sigkill_at_any_moment_leaves_the_last_commit_whole(tmp_path, delay):
  """Killed during puts or inside the commit, the store reopens at one committed round with
  every client at that round: no client lost, none applied twice."""
  path = str(tmp_path / 'store.sqlite')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for _ in range(2):   # kill, reopen and continue, kill again
    writer = subprocess.Popen([sys.executable, '-c', _WRITER, path], cwd=repo,
                              stdout=subprocess.PIPE, text=True)
    started = int(writer.stdout.readline())
    time.sleep(delay)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    store = client_store.SQLiteClientStore(path, [((64,), np.float32)])
    committed = store.committed_round()
    assert committed >= started
    print(f'delay {delay:.2f} s: started at round {started}, committed {committed}')
    values = store.snapshot()
    if committed:
      assert len(values) == 3000
      assert {float(v[0][0]) for v in values.values()} == {float(committed)}
    else:
      assert not values
    store.close()


def _state(seed):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=s).astype(d) for s, d in LAYOUT]


def test_a_corrupt_row_is_named_with_its_store_and_client(tmp_path):
  """The issue's case: a corrupt row gave an error naming neither the store nor the client."""
  import sqlite3  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 's.sqlite')
  store = client_store.SQLiteClientStore(path, LAYOUT)
  store.put(['c1'], [_state(1)])
  store.commit(1)
  store.close()
  db = sqlite3.connect(path)
  db.execute("UPDATE clients SET state = ? WHERE id = 'c1'", (b'short',))
  db.commit()
  db.close()
  store = client_store.SQLiteClientStore(path, LAYOUT)
  with pytest.raises(client_store.ClientStoreError,
                     match=rf"^client store {path}: the row of client 'c1' holds 5 bytes, not "
                           r'the 40 bytes of its state'):
    store.get(['c1'])
  store.close()


def test_a_read_only_store_is_not_called_damaged(tmp_path, monkeypatch):
  """The issue's cases: a read-only store gave a 30-line traceback, a read-only run folder "the
  store is damaged, start again with --overwrite", which would destroy recoverable state."""
  import sqlite3  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 's.sqlite')
  store = client_store.SQLiteClientStore(path, LAYOUT)
  store.put(['c1'], [_state(1)])
  store.commit(1)
  store.close()
  real = sqlite3.connect
  # Root ignores file modes: open the file read-only through SQLite itself instead.
  monkeypatch.setattr(client_store.sqlite3, 'connect',
                      lambda p, **kw: real(f'file:{p}?mode=ro', uri=True, **kw))
  with pytest.raises(client_store.ClientStoreError) as e:
    store = client_store.SQLiteClientStore(path, LAYOUT)
    store.put(['c2'], [_state(2)])
    store.commit(2)
  assert str(e.value).startswith(f'client store {path} cannot be written (')
  assert 'nothing was lost' in str(e.value) and '--overwrite' not in str(e.value)


def test_a_store_deleted_during_the_run_is_written_back(tmp_path, capsys):
  """The issue's case: the run wrote into the unlinked file to the end and lost every client's
  state. The next commit writes the file back from the open connection."""
  path = str(tmp_path / 's.sqlite')
  store = client_store.SQLiteClientStore(path, LAYOUT)
  store.put(['c1'], [_state(1)])
  store.commit(1)
  for suffix in ('', '-wal', '-shm'):
    if os.path.exists(path + suffix):
      os.remove(path + suffix)
  store.put(['c2'], [_state(2)])
  store.commit(2)
  assert 'was deleted during the run; written back' in capsys.readouterr().err
  store.put(['c3'], [_state(3)])
  store.commit(3)
  store.close()
  reopened = client_store.SQLiteClientStore(path, LAYOUT)
  assert reopened.committed_round() == 3
  for client, seed in (('c1', 1), ('c2', 2), ('c3', 3)):
    for got, want in zip(reopened.get([client])[0], _state(seed)):
      np.testing.assert_array_equal(got, want)
  reopened.close()
