r"""Cross-device scale: pFedPara with many clients, SQLite vs in-memory client store.

pFedPara 2-layer MLP on Fashion-MNIST, N clients of 20 images each drawn with
replacement (`partition=sampled`, so N may exceed the 60,000 images and every
client holds as much data at every N), 10 clients a round, 5 rounds, a
checkpoint every round, the personalised evaluation of 300 sampled clients at
round 5; every sampled client gets state. For each N and
store, one fresh process runs `experiments.runner.run` and reports:

* setup_s: from the start of the run to its first round (data, partition,
  model, TFF computations);
* round_s: median seconds per round over rounds 2-5 (round 1 traces);
* peak_rss_mb: the driver's peak resident memory while the rounds run
  (sampled every 50 ms; TFF's worker process is not the driver);
* ckpt_s: median seconds of a checkpoint (server state + client store commit);
* ckpt_mb: bytes on disk of the newest checkpoint plus the store file(s).

Then it prints the ratios 1,000 -> largest N that the issue's targets are about.

  python -m benchmarks.scale [--clients=100,1000,10000,100000] [--stores=sqlite,memory]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
import psutil

from experiments import checkpoints
from experiments import run_config
from experiments import run_io
from experiments import runner
from fedpara_tff import client_store

_CLIENTS = flags.DEFINE_list('clients', ['100', '1000', '10000', '100000'], 'Client counts.')
_STORES = flags.DEFINE_list('stores', ['sqlite', 'memory'], 'Client stores to compare.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds per run.')
_ONE = flags.DEFINE_string('one', None, 'Internal: "CLIENTS,STORE,DIR" runs one configuration.')


def _measure(clients, store, directory):
  """Runs one configuration in this process; returns its measurements."""

  marks, ckpt_times, peak = {}, [], [0]
  started = time.perf_counter()
  writer_init = run_io.MetricsWriter.__init__

  def mark_setup(self, *args, **kwargs):
    marks['setup'] = time.perf_counter()
    writer_init(self, *args, **kwargs)
    threading.Thread(target=sample_rss, daemon=True).start()

  def sample_rss():
    me = psutil.Process()
    while 'done' not in marks:
      peak[0] = max(peak[0], me.memory_info().rss)
      time.sleep(0.05)

  save = checkpoints.save
  pending = {}

  def timed_save(*args, **kwargs):
    pending['t'] = time.perf_counter()
    return save(*args, **kwargs)

  def timed_commit(commit):
    def wrapped(self, round_num):
      result = commit(self, round_num)
      if 't' in pending:
        ckpt_times.append(time.perf_counter() - pending.pop('t'))
      return result
    return wrapped

  run_io.MetricsWriter.__init__ = mark_setup
  checkpoints.save = timed_save
  for cls in (client_store.MemoryClientStore, client_store.SQLiteClientStore):
    cls.commit = timed_commit(cls.commit)
  config = run_config.RunConfig(
      output_dir=os.path.join(directory, 'run'), cache_dir=os.path.join(directory, 'cache'),
      dataset='fashion_mnist', model='mlp', parameterization='pfedpara', gamma=0.1,
      partition='sampled', examples_per_client=20, clients=clients, clients_per_round=10,
      rounds=_ROUNDS.value, local_epochs=1, batch_size=32, checkpoint_every=1, eval_every=_ROUNDS.value,
      eval_clients=300, client_store=store, progress=False)
  runner.run(config)
  marks['done'] = True
  rows = run_io.read_metrics(config.output_dir)
  walls = [r['wall_time_s'] for r in rows]
  rounds = [b - a for a, b in zip(walls[:-1], walls[1:])]
  files = [os.path.join(config.output_dir, name) for name in os.listdir(config.output_dir)
           if name.startswith(client_store.FILE_NAME)]
  newest = checkpoints.latest(os.path.join(config.output_dir, 'checkpoints'))[1]
  return dict(clients=clients, store=store, setup_s=marks['setup'] - started,
              round_s=statistics.median(rounds), peak_rss_mb=peak[0] / 2**20,
              ckpt_s=statistics.median(ckpt_times),
              ckpt_mb=(os.path.getsize(newest) + sum(os.path.getsize(f) for f in files)) / 2**20,
              personalized_clients=int(rows[-1]['personalized_clients']))


def _run_one(clients, store):
  with tempfile.TemporaryDirectory() as directory:
    out = subprocess.run(
        [sys.executable, '-m', 'benchmarks.scale', f'--one={clients},{store},{directory}',
         f'--rounds={_ROUNDS.value}'], capture_output=True, text=True, check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  lines = [l for l in out.stdout.splitlines() if l.startswith('{')]
  if out.returncode or not lines:
    raise SystemExit(f'scale: the run with {clients} clients ({store}) failed:\n'
                     f'{out.stderr[-3000:]}')
  return json.loads(lines[-1])


def main(argv):
  del argv
  if _ONE.value:
    clients, store, directory = _ONE.value.split(',', 2)
    print(json.dumps(_measure(int(clients), store, directory)), flush=True)
    return
  results = []
  print(f'{"clients":>8} {"store":>7} {"setup s":>8} {"round s":>8} {"peak RSS MB":>11} '
        f'{"ckpt s":>7} {"ckpt MB":>8}')
  for store in _STORES.value:
    for clients in map(int, _CLIENTS.value):
      r = _run_one(clients, store)
      results.append(r)
      print(f'{r["clients"]:>8} {r["store"]:>7} {r["setup_s"]:>8.2f} {r["round_s"]:>8.3f} '
            f'{r["peak_rss_mb"]:>11.0f} {r["ckpt_s"]:>7.3f} {r["ckpt_mb"]:>8.2f}', flush=True)
  for store in _STORES.value:
    mine = {r['clients']: r for r in results if r['store'] == store}
    if 1000 in mine and len(mine) > 1:
      top = mine[max(mine)]
      base = mine[1000]
      print(f'{store}: 1,000 -> {top["clients"]:,} clients: round time x'
            f'{top["round_s"] / base["round_s"]:.2f}, peak RSS x'
            f'{top["peak_rss_mb"] / base["peak_rss_mb"]:.2f}, checkpoint time x'
            f'{top["ckpt_s"] / base["ckpt_s"]:.2f} (target <= 1.2 each)')


if __name__ == '__main__':
  app.run(main)
