"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def test_readme_python_examples_run():
  """Runs the blocks in order in one namespace, as a reader pasting them would."""
  blocks = re.findall(r'```python\n(.*?)```', README.read_text(encoding='utf-8'), re.S)
  assert len(blocks) >= 3, 'README lost its python examples'
  namespace = {}
  for block in blocks:
    exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
