"""deploy/kubernetes, checked without a cluster: every pod passes the Pod Security "restricted"
standard's fields, the NetworkPolicies deny everything but the driver -> workers' TLS port (and
the driver's DNS), images are pinned by digest, and the image runs as a non-root user.

The restricted standard's checks are written out from the Kubernetes Pod Security Standards
(kubernetes.io/docs/concepts/security/pod-security-standards, the "baseline" and "restricted"
tables), field by field, as the admission controller applies them to a pod template."""

import os
import re

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(REPO, 'deploy', 'kubernetes', 'workers.yaml')
DOCKERFILE = os.path.join(REPO, 'deploy', 'kubernetes', 'Dockerfile')
RESTRICTED_VOLUMES = {'configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral',
                      'persistentVolumeClaim', 'projected', 'secret'}
WORKLOADS = {'Pod', 'Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job', 'CronJob'}


def _documents():
  with open(MANIFEST, encoding='utf-8') as f:
    return [d for d in yaml.safe_load_all(f) if d]


def _pod_specs(documents):
  """`(name, pod spec)` of every workload's pod template."""
  for doc in documents:
    if doc['kind'] == 'Pod':
      yield doc['metadata']['name'], doc['spec']
    elif doc['kind'] == 'CronJob':
      yield doc['metadata']['name'], doc['spec']['jobTemplate']['spec']['template']['spec']
    elif doc['kind'] in WORKLOADS:
      yield doc['metadata']['name'], doc['spec']['template']['spec']


def restricted_violations(pod):
  """What in a pod spec the Pod Security "restricted" standard (which includes "baseline")
  refuses, in words; empty when it passes."""
  found = []
  pod_context = pod.get('securityContext') or {}
  containers = pod.get('containers', []) + pod.get('initContainers', []) + pod.get(
      'ephemeralContainers', [])
  for field in ('hostNetwork', 'hostPID', 'hostIPC'):
    if pod.get(field):
      found.append(f'{field} is set')
  for volume in pod.get('volumes', []):
    kinds = set(volume) - {'name'}
    if not kinds <= RESTRICTED_VOLUMES:
      found.append(f'volume {volume["name"]} is of type {sorted(kinds)}')
  if pod_context.get('sysctls'):
    found.append('sysctls are set')
  for container in containers:
    name, context = container['name'], container.get('securityContext') or {}
    merged = {**pod_context, **context}
    if context.get('privileged'):
      found.append(f'{name}: privileged')
    if (context.get('windowsOptions') or {}).get('hostProcess'):
      found.append(f'{name}: hostProcess')
    if any(port.get('hostPort') for port in container.get('ports', [])):
      found.append(f'{name}: hostPort')
    if context.get('procMount', 'Default') != 'Default':
      found.append(f'{name}: procMount')
    if context.get('allowPrivilegeEscalation') is not False:
      found.append(f'{name}: allowPrivilegeEscalation is not false')
    if merged.get('runAsNonRoot') is not True:
      found.append(f'{name}: runAsNonRoot is not true')
    if merged.get('runAsUser') == 0:
      found.append(f'{name}: runAsUser is 0')
    if (merged.get('seccompProfile') or {}).get('type') not in ('RuntimeDefault', 'Localhost'):
      found.append(f'{name}: seccompProfile is not RuntimeDefault or Localhost')
    capabilities = context.get('capabilities') or {}
    if 'ALL' not in capabilities.get('drop', []):
      found.append(f'{name}: capabilities do not drop ALL')
    if set(capabilities.get('add', [])) - {'NET_BIND_SERVICE'}:
      found.append(f'{name}: adds capabilities {capabilities["add"]}')
  return found


def test_the_restricted_check_refuses_the_old_manifests_pod():
  """The check itself: the pod of the manifest before issue 37 (no securityContext) fails it."""
  old = {'containers': [{'name': 'worker', 'image': 'fedpara-tff:latest'}],
         'volumes': [{'name': 'tls', 'secret': {'secretName': 's'}},
                     {'name': 'host', 'hostPath': {'path': '/'}}]}
  assert restricted_violations(old) == [
      "volume host is of type ['hostPath']", 'worker: allowPrivilegeEscalation is not false',
      'worker: runAsNonRoot is not true',
      'worker: seccompProfile is not RuntimeDefault or Localhost',
      'worker: capabilities do not drop ALL']


def test_every_pod_passes_the_restricted_standard_and_more():
  pods = dict(_pod_specs(_documents()))
  assert sorted(pods) == ['fedpara-driver', 'fedpara-worker']
  for name, pod in pods.items():
    assert restricted_violations(pod) == [], name
    assert pod.get('automountServiceAccountToken') is False, name   # no API token in the pod
    for container in pod['containers']:
      assert container['securityContext'].get('readOnlyRootFilesystem') is True, name
      resources = container.get('resources', {})
      for kind in ('requests', 'limits'):
        assert set(resources.get(kind, {})) >= {'cpu', 'memory'}, (name, kind)
      # Pinned by tag and digest (a placeholder that cannot be pulled until replaced).
      assert re.fullmatch(r'[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}', container['image']), name


def test_the_worker_serves_tls_in_front_of_its_pod_isolated_worker_and_the_driver_uses_it():
  pods = dict(_pod_specs(_documents()))
  [worker] = pods['fedpara-worker']['containers']
  assert {'--tls_dir=/certs', '--isolation=pod', '--port=8000'} <= set(worker['args'])
  assert not any(a.startswith('--insecure') for a in worker['args'])
  [driver] = pods['fedpara-driver']['containers']
  assert '--workers_tls_dir=/certs' in driver['args']
  assert not any(a.startswith('--insecure') for a in driver['args'])
  # Keys come from Secrets only.
  for pod in pods.values():
    [tls] = [v for v in pod['volumes'] if v['name'] == 'tls']
    assert 'secret' in tls


def _policies():
  return {d['metadata']['name']: d['spec'] for d in _documents() if d['kind'] == 'NetworkPolicy'}


def _selects(selector, labels):
  return all(labels.get(k) == v for k, v in (selector.get('matchLabels') or {}).items())


def test_network_policies_deny_all_but_driver_to_worker_tls_and_driver_dns():
  policies = _policies()
  denies = [spec for spec in policies.values() if spec['podSelector'] == {}
            and set(spec['policyTypes']) == {'Ingress', 'Egress'}
            and not spec.get('ingress') and not spec.get('egress')]
  assert len(denies) == 1   # the namespace's default: nothing in, nothing out
  driver, worker = {'app': 'fedpara-driver'}, {'app': 'fedpara-worker'}
  ingress_to = lambda labels: [rule for spec in policies.values()
                               if 'Ingress' in spec['policyTypes']
                               and _selects(spec['podSelector'], labels)
                               for rule in spec.get('ingress', [])]
  egress_from = lambda labels: [rule for spec in policies.values()
                                if 'Egress' in spec['policyTypes']
                                and _selects(spec['podSelector'], labels)
                                for rule in spec.get('egress', [])]
  assert ingress_to(driver) == []   # nothing reaches the driver
  [rule] = ingress_to(worker)
  assert rule['from'] == [{'podSelector': {'matchLabels': driver}}]
  assert rule['ports'] == [{'protocol': 'TCP', 'port': 8000}]   # the TLS port, not TFF's
  assert egress_from(worker) == []
  to_workers, to_dns = egress_from(driver)
  assert to_workers == {'to': [{'podSelector': {'matchLabels': worker}}],
                        'ports': [{'protocol': 'TCP', 'port': 8000}]}
  assert {p['port'] for p in to_dns['ports']} == {53}
  assert to_dns['to'][0]['podSelector'] == {'matchLabels': {'k8s-app': 'kube-dns'}}


def test_every_document_is_a_well_formed_object():
  for doc in _documents():
    assert {'apiVersion', 'kind', 'metadata', 'spec'} <= set(doc), doc.get('kind')
    assert re.fullmatch(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?', doc['metadata']['name'])


def test_the_image_runs_as_the_pods_non_root_user():
  with open(DOCKERFILE, encoding='utf-8') as f:
    lines = [line.strip() for line in f]
  users = [line for line in lines if line.startswith('USER ')]
  assert users and users[-1] == 'USER 10001:10001'   # the pods' runAsUser / runAsGroup
  assert lines.index(users[-1]) > max(i for i, line in enumerate(lines) if line.startswith('RUN '))
