"""The README's Python examples run as written."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def test_readme_python_examples_run():
  """Runs the blocks in order in one namespace, as a reader pasting them would."""
  blocks = re.findall(r'```python\n(.*?)```', README.read_text(encoding='utf-8'), re.S)
  assert len(blocks) >= 3, 'README lost its python examples'
  namespace = {}
  for block in blocks:
    exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used

  # The federated examples train on mixed clients: each holds several digits (one class per
  # client would make the printed per-client accuracy meaningless).
  for dataset in namespace['clients']:
    labels = np.concatenate([batch['y'].numpy() for batch in dataset])
    assert len(np.unique(labels)) >= 5, f'a README client holds only digits {np.unique(labels)}'
