"""The experiment scripts' shared helpers (scripts/variants.sh): a variant's name gives its
flags, with the seed and learning-rate suffixes."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _variant_flags(name):
  script = ('source scripts/variants.sh; declare -A variants=([fedpara]="--rank=4"); '
            f'variant_flags {name}')
  return subprocess.run(['bash', '-c', script], cwd=ROOT, capture_output=True, text=True,
                        timeout=60, check=False)


@pytest.mark.parametrize('name, flags', [
    ('fedpara', '--rank=4'),
    ('fedpara_seed2', '--rank=4 --seed=2'),
    ('fedpara_lr0.3', '--rank=4 --client_learning_rate=0.3'),
    ('fedpara_lr1_seed1', '--rank=4 --client_learning_rate=1 --seed=1'),
])
def test_a_variants_name_gives_its_flags(name, flags):
  done = _variant_flags(name)
  assert (done.returncode, done.stdout.strip()) == (0, flags)


@pytest.mark.parametrize('name', ['lowrank', 'lowrank_seed1', 'fedpara_lrx', 'fedpara_lr0.3x'])
def test_an_unknown_variant_fails_naming_it(name):
  done = _variant_flags(name)
  assert done.returncode == 2
  assert f'unknown variant {name.split("_seed")[0]}' in done.stderr
