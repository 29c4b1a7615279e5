"""The in-process TensorFlow backend: same numbers as the TFF backend, clients spread over devices."""

import json
import os
import subprocess
import sys

import pytest

from experiments import run_config
import fedpara_tff
from fedpara_tff import tf_backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(dataset='mnist5k', model='mlp', clients=8, clients_per_round=4, rounds=3,
            batch_size=64, progress=False, lr_decay=0.9)


AGREEMENT_SCRIPT = """
import json, os, sys
import numpy as np
from experiments import checkpoints, run_config, run_io, runner
tiny = json.loads(sys.argv[1])
out = {}
for parameterization in ('fedpara', 'pfedpara'):
  runs = {}
  for backend in run_config.BACKENDS:
    summary = runner.run(run_config.RunConfig(
        output_dir=os.path.join(sys.argv[2], parameterization, backend),
        cache_dir=os.path.join(sys.argv[2], 'cache'), backend=backend,
        parameterization=parameterization, **tiny))
    path = checkpoints.path_for(os.path.join(summary['output_dir'], 'checkpoints'), 3)
    with np.load(path) as stored:
      arrays = {k: stored[k] for k in stored.files if k != 'meta'}
    rows = run_io.read_metrics(summary['output_dir'])
    runs[backend] = (arrays, [(r['bytes_uploaded'], r['bytes_downloaded']) for r in rows],
                     [r['train_loss'] for r in rows])
  (a, bytes_a, loss_a), (b, bytes_b, loss_b) = runs['tff'], runs['tf']
  out[parameterization] = dict(
      same_keys=sorted(a) == sorted(b), locals=sum(k.startswith('local_') for k in a),
      gap=max(float(np.max(np.abs(a[k] - b[k]))) for k in a), same_bytes=bytes_a == bytes_b,
      loss_gap=max(abs(x - y) for x, y in zip(loss_a, loss_b)))
print(json.dumps(out))
"""


@pytest.mark.slow   # the slow suite also has every algorithm on both backends (below)
def test_tf_and_tff_backends_agree(tmp_path):
  """FedAvg (FedPara model) and pFedPara, 3 rounds each way, in a fresh process.

  With oneDNN off in both processes the two backends run the same kernels; with
  it on, the in-process and worker kernels round differently in the last bits,
  which a ReLU flip can grow over rounds (docs/DESIGN.md, "Decisions where the paper is silent").
  """
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS='0')
  result = subprocess.run([sys.executable, '-c', AGREEMENT_SCRIPT, json.dumps(TINY),
                           str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'tf backend: no GPU requested or found; clients train on the CPU' in result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for parameterization, figures in report.items():
    assert figures['same_keys'] and figures['same_bytes'], (parameterization, figures)
    assert figures['gap'] <= 1e-5 and figures['loss_gap'] <= 1e-5, (parameterization, figures)
  assert report['fedpara']['locals'] == 0 and report['pfedpara']['locals'] > 0


EVERY_ALGORITHM_SCRIPT = """
import json
import numpy as np
import fedpara_tff
from fedpara_tff import tf_backend
from tests import tff_support as ts
fedpara_tff.runtime.install()   # TFF's worker must not outlive this script (it holds our pipes)
ALGORITHMS = dict(
    fedavg={}, momentum=dict(client_momentum=0.5, server_momentum=0.9),
    fedprox=dict(algorithm='fedprox', proximal_strength=0.1),
    scaffold=dict(algorithm='scaffold', num_clients=4),
    feddyn=dict(algorithm='feddyn', feddyn_alpha=0.1, num_clients=4),
    mimelite=dict(algorithm='mimelite', client_momentum=0.9),
    fedadam=dict(server_optimizer='adam', server_learning_rate=0.01, server_beta_2=0.99),
    fedyogi=dict(server_optimizer='yogi', server_learning_rate=0.01),
    fedadagrad=dict(server_optimizer='adagrad', server_learning_rate=0.01))
data = [ts.to_dataset(*a) for a in ts.client_arrays([20, 30, 25, 15])]
ids = ['a', 'b', 'c', 'd']
sampled = [[0, 1, 2], [1, 2, 3], [3, 0, 1]]   # clients come back: their stored state is used
out = {}
for name, options in ALGORITHMS.items():
  for parameterization in ('fedpara', 'pfedpara'):
    build = (fedpara_tff.build_pfedpara_driver if parameterization == 'pfedpara'
             else fedpara_tff.build_fedavg_driver)
    initial = [np.random.default_rng(i).normal(scale=0.3, size=v.shape).astype(np.float32)
               for i, v in enumerate(ts.keras_model(parameterization).trainable_variables)]
    runs = {}
    for backend in ('tff', 'tf'):
      runner = build(lambda: ts.keras_model(parameterization), ts.ELEMENT_SPEC,
                     client_learning_rate=0.1,
                     client_executor=None if backend == 'tff' else tf_backend.on_devices(),
                     **options)
      state = runner.initialize(initial)
      sent = []
      for chosen in sampled:
        state, metrics = runner.next(state, [ids[i] for i in chosen], [data[i] for i in chosen])
        sent.append((int(metrics['aggregator']['communication']['bytes_uploaded']),
                     int(metrics['train']['bytes_downloaded'])))
      server = [np.asarray(a) for a in state['global_weights']] + [
          np.asarray(a) for a in state.get('control', [])]
      clients = [np.asarray(a) for c in ids for a in runner.local_state(c)]
      runs[backend] = (server, clients, sent)
    (server_a, clients_a, sent_a), (server_b, clients_b, sent_b) = runs['tff'], runs['tf']
    out[name + '/' + parameterization] = dict(
        server_gap=max(float(np.max(np.abs(a - b))) for a, b in zip(server_a, server_b)),
        client_gap=max([float(np.max(np.abs(a - b))) for a, b in zip(clients_a, clients_b)]
                       or [0.0]),
        server_arrays=len(server_a), client_arrays=len(clients_a),
        same_bytes=sent_a == sent_b, sent=sent_a)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_algorithm_agrees_across_backends_with_fedpara_and_pfedpara():
  """Every algorithm of the shared round x {FedPara, pFedPara}: `backend=tff` and `backend=tf`
  give the same server state (weights and the algorithm's arrays), the same client states and
  the same bytes after 3 rounds in which clients come back (oneDNN off in the fresh process)."""
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS='0')
  result = subprocess.run([sys.executable, '-c', EVERY_ALGORITHM_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert len(report) == 18
  for case, figures in report.items():
    assert figures['same_bytes'], (case, figures)
    assert figures['server_gap'] <= 1e-5 and figures['client_gap'] <= 1e-5, (case, figures)
  # The per-client state is really compared: SCAFFOLD's c_i and FedDyn's g_k (one array per
  # global variable, 10 of them, for each of 4 clients) and pFedPara's local factors.
  assert report['scaffold/fedpara']['client_arrays'] == 4 * 10
  assert report['fedavg/fedpara']['client_arrays'] == 0
  assert report['fedavg/pfedpara']['client_arrays'] == 4 * 4
  assert report['feddyn/pfedpara']['client_arrays'] == 4 * (4 + 6)
  # SCAFFOLD and MIME-lite send twice FedAvg's bytes each way.
  for doubled in ('scaffold', 'mimelite'):
    assert report[doubled + '/fedpara']['sent'] == [
        [2 * up, 2 * down] for up, down in report['fedavg/fedpara']['sent']]


PLACEMENT_SCRIPT = """
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
import numpy as np
import fedpara_tff
from fedpara_tff import tf_backend
from tests import tff_support as ts
fedpara_tff.runtime.install()   # TFF's worker must not outlive this script (it holds our pipes)
data = [ts.to_dataset(*a) for a in ts.client_arrays([30] * 5)]
ids = ['a', 'b', 'c', 'd', 'e']
finals = []
for devices in (['/CPU:0', '/CPU:1', '/CPU:2'], ['/CPU:0']):
  backend = fedpara_tff.build_pfedpara_driver(lambda: ts.keras_model('pfedpara'), ts.ELEMENT_SPEC,
                                              client_executor=tf_backend.on_devices(devices))
  state = backend.initialize([np.full(v.shape, 0.1, np.float32) for v in
                              ts.keras_model('pfedpara').trainable_variables])
  state, _ = backend.next(state, ids, data)
  finals.append([np.asarray(w).tolist() for w in state['global_weights']])
  if len(devices) == 3:
    clients = backend.client_executor
    report = dict(placements=clients.placements,
                  variables=[m.trainable_variables[0].device for m, _ in clients._clients])
gap = max(float(np.max(np.abs(np.array(a) - np.array(b)))) for a, b in zip(*finals))
print(json.dumps(dict(report, gap=gap)))
"""


@pytest.mark.slow
def test_clients_are_spread_over_logical_devices_round_robin():
  result = subprocess.run([sys.executable, '-c', PLACEMENT_SCRIPT], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['placements'] == [['a', '/CPU:0'], ['b', '/CPU:1'], ['c', '/CPU:2'],
                                   ['d', '/CPU:0'], ['e', '/CPU:1']]
  assert [d.rsplit('/', 1)[-1] for d in report['variables']] == [
      'device:CPU:0', 'device:CPU:1', 'device:CPU:2']
  assert report['gap'] < 1e-6  # three devices or one: the same round


def test_gpu_and_device_refusals():
  with pytest.raises(ValueError, match=r"gpus='0' names GPU 0, but this machine has 0 GPU\(s\)"):
    tf_backend.resolve_devices('0')
  with pytest.raises(ValueError, match=r'gpus must be "all" or distinct GPU indices'):
    tf_backend.resolve_devices('0,0')
  with pytest.raises(ValueError, match=r'gpus must be "all" or distinct GPU indices'):
    tf_backend.resolve_devices('gpu0')
  devices, note = tf_backend.resolve_devices('')
  assert devices == ['/CPU:0'] and 'no GPU' in note
  with pytest.raises(ValueError, match=r"device '/GPU:3' does not exist here"):
    tf_backend.DeviceClients(object(), ['/GPU:3'])


def test_backend_options_are_checked(tmp_path):
  base = dict(TINY, output_dir=str(tmp_path / 'x'))
  for algorithm in fedpara_tff.ALGORITHMS:   # every algorithm runs on backend=tf
    run_config.check(run_config.RunConfig(**dict(base, backend='tf', algorithm=algorithm)))
  with pytest.raises(ValueError, match='needs backend=tf'):
    run_config.check(run_config.RunConfig(**dict(base, gpus='0')))
  with pytest.raises(ValueError, match='does not take --workers'):
    run_config.check(run_config.RunConfig(**dict(base, backend='tf', workers='h:1')))
