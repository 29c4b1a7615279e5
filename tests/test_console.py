"""The binaries as console scripts (`fedpara-train`, ...) behave as `python -m`: `--help` lists the
binary's own flags, and no path through flag parsing ends in a TFF traceback at exit."""

import importlib.util
import os
import subprocess
import sys

import pytest

# How a console script runs a binary: a wrapper `__main__` without a docstring imports the module
# and calls its entry point, with sys.argv[0] the script's path.
_AS_CONSOLE_SCRIPT = ('import sys\n'
                      'sys.argv[0] = "/usr/local/bin/{name}"\n'
                      'from experiments.{module} import entry_point\n'
                      'entry_point()\n')


def _console(module, name, *args):
  return subprocess.run(
      [sys.executable, '-c', _AS_CONSOLE_SCRIPT.format(module=module, name=name), *args],
      capture_output=True, text=True, timeout=300)


# One binary in `make test`; the others (the same absl entry point, about 15 s each) in the slow
# suite, which CI runs.
@pytest.mark.parametrize('module, name, own_flag', [
    ('train', 'fedpara-train', '--client_learning_rate'),
    pytest.param('compare', 'fedpara-compare', '--parameterizations', marks=pytest.mark.slow),
    pytest.param('plot', 'fedpara-plot', '--runs', marks=pytest.mark.slow)])
def test_help_lists_the_binarys_own_flags_and_its_docstring(module, name, own_flag):
  result = _console(module, name, '--help')
  as_module = subprocess.run([sys.executable, '-m', f'experiments.{module}', '--help'],
                             capture_output=True, text=True, timeout=300)
  assert result.returncode == as_module.returncode   # absl's --help exits 1
  assert own_flag in result.stdout
  # The text of `python -m` (the module's docstring, then its flags under the module's name).
  path = importlib.util.find_spec(f'experiments.{module}').origin
  assert result.stdout.replace(f'/usr/local/bin/{name}:', 'MODULE:') == as_module.stdout.replace(
      f'{path}:', 'MODULE:')
  assert 'Traceback' not in result.stderr and 'ServiceManager' not in result.stderr


@pytest.mark.parametrize('args', [
    ['--bogus=1'], ['--client_learning_rate=-1', '--output_dir=x'],
    pytest.param(['--helpfull'], marks=pytest.mark.slow)])
def test_flag_errors_and_helpfull_end_without_a_traceback(args):
  for result in (_console('train', 'fedpara-train', *args),
                 subprocess.run([sys.executable, '-m', 'experiments.train', *args],
                                capture_output=True, text=True, timeout=300)):
    assert 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert 'ServiceManager' not in result.stderr
    if args != ['--helpfull']:
      assert result.returncode == 1
      assert 'Flags parsing error' in result.stderr


# Each binary's required flags, so that only the positional argument is wrong.
_REQUIRED = {'train': ['--output_dir=unused'], 'compare': ['--output_dir=unused'],
             'plot': ['--runs=unused', '--output=unused.png'], 'worker': ['--port=8123'],
             'launch_workers': []}


@pytest.mark.parametrize('module', [m if m == 'train' else pytest.param(m, marks=pytest.mark.slow)
                                    for m in sorted(_REQUIRED)])
def test_a_positional_argument_is_one_line_not_the_whole_help(module):
  result = subprocess.run(
      [sys.executable, '-m', f'experiments.{module}', 'stray', *_REQUIRED[module]],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"{module}: error: unexpected positional arguments ['stray']; every setting is a flag "
      f"(--name=value), see --help."]


def test_a_flagfile_path_elsewhere_is_never_swapped_for_the_packaged_one(tmp_path):
  from experiments import flagfiles   # pylint: disable=g-import-not-at-top
  packaged = os.path.join(flagfiles.CONFIG_DIR, 'mnist5k_quick.cfg')
  missing = str(tmp_path / 'no_such_folder' / 'mnist5k_quick.cfg')
  assert flagfiles.resolve(['--flagfile=mnist5k_quick.cfg', f'--flagfile={missing}']) == [
      f'--flagfile={packaged}', f'--flagfile={missing}']
