"""The suite's own guards: a hung test fails alone; an empty collection is not a pass."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pytest(tmp_path, source, *args):
  (tmp_path / 'test_probe.py').write_text(textwrap.dedent(source))
  return subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                         '-c', os.path.join(REPO, 'pytest.ini'), '--rootdir', str(tmp_path),
                         str(tmp_path), *args], capture_output=True, text=True, timeout=120)


def test_a_hung_test_fails_alone_and_the_session_goes_on(tmp_path):
  result = _pytest(tmp_path, '''
      import time
      import pytest

      @pytest.mark.timeout(2)
      def test_hangs():
        time.sleep(60)

      def test_after_it():
        assert True
  ''')
  assert '1 failed, 1 passed' in result.stdout, result.stdout[-2000:]
  assert 'Timeout' in result.stdout


def test_the_suite_has_a_default_per_test_timeout():
  with open(os.path.join(REPO, 'pytest.ini')) as f:
    text = f.read()
  assert 'timeout = 600' in text and 'timeout_method = signal' in text
