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


# Every binary: each parses its flags before TensorFlow loads, so this takes a second.
@pytest.mark.parametrize('module, name, own_flag', [
    ('train', 'fedpara-train', '--client_learning_rate'),
    ('compare', 'fedpara-compare', '--parameterizations'),
    ('plot', 'fedpara-plot', '--runs'), ('worker', 'fedpara-worker', '--port')])
def test_help_lists_the_binarys_own_flags_and_its_docstring(module, name, own_flag):
  result = _console(module, name, '--help')
  as_module = subprocess.run([sys.executable, '-m', f'experiments.{module}', '--help'],
                             capture_output=True, text=True, timeout=300)
  assert result.returncode == as_module.returncode == 0   # absl's own --help exits 1
  assert own_flag in result.stdout
  # The text of `python -m` (the module's docstring, then its flags under the module's name).
  path = importlib.util.find_spec(f'experiments.{module}').origin
  assert result.stdout.replace(f'/usr/local/bin/{name}:', 'MODULE:') == as_module.stdout.replace(
      f'{path}:', 'MODULE:')
  assert 'Traceback' not in result.stderr and 'ServiceManager' not in result.stderr


@pytest.mark.parametrize('args', [
    ['--bogus=1'], ['--client_learning_rate=-1', '--output_dir=x'], ['--helpfull']])
def test_flag_errors_and_helpfull_end_without_a_traceback(args):
  for result in (_console('train', 'fedpara-train', *args),
                 subprocess.run([sys.executable, '-m', 'experiments.train', *args],
                                capture_output=True, text=True, timeout=300)):
    assert 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert 'ServiceManager' not in result.stderr
    if args != ['--helpfull']:
      assert result.returncode == 1
      assert 'Flags parsing error' in result.stderr
    else:
      assert result.returncode == 0 and '--client_learning_rate' in result.stdout


# Each binary's required flags, so that only the positional argument is wrong.
_REQUIRED = {'train': ['--output_dir=unused'], 'compare': ['--output_dir=unused'],
             'plot': ['--runs=unused', '--output=unused.png'], 'worker': ['--port=8123'],
             'launch_workers': []}


@pytest.mark.parametrize('module', sorted(_REQUIRED))
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


@pytest.mark.parametrize('binary', ['train', 'compare', 'plot', 'worker', 'launch_workers', 'demo'])
def test_a_binary_answers_help_and_flag_errors_before_tensorflow_loads(binary):
  """Flags first: nothing heavy loads before they are parsed (`benchmarks/startup.py` times it)."""
  probe = ('import sys\n'
           f'sys.argv = ["{binary}", "--help"]\n'
           f'from experiments import {binary}\n'
           'heavy = sorted(m for m in ("tensorflow", "tensorflow_federated", "keras", "matplotlib")'
           ' if m in sys.modules)\n'
           'assert not heavy, heavy\n'
           'try:\n'
           f'  {binary}.flagfiles.run_main({binary}.main)\n'
           'except SystemExit as e:\n'
           '  code = e.code\n'
           'heavy = sorted(m for m in ("tensorflow", "tensorflow_federated", "keras", "matplotlib")'
           ' if m in sys.modules)\n'
           'assert not heavy, heavy\n'
           'sys.exit(code)\n')
  result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip()


def test_packages_import_without_keras_tensorflow_or_tff():
  """What the binaries' flags need loads nothing heavy; `keras_layers` defers its layers in a
  program that imported `experiments` (a plain `import keras_layers` registers them: test_deploy)."""
  probe = ('import sys, experiments, keras_layers, fedpara_tff\n'
           'from fedpara_tff import choices, client_store, settings\n'
           'from keras_layers import factor_options\n'
           'from experiments import run_config, plot, ownership, run_io\n'
           'from experiments.data import registry\n'
           'print(sorted(m for m in ("tensorflow", "tensorflow_federated", "keras", "matplotlib")'
           ' if m in sys.modules))\n')
  result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'


def test_every_public_name_of_the_lazy_packages_resolves():
  import fedpara_tff   # pylint: disable=g-import-not-at-top
  import keras_layers   # pylint: disable=g-import-not-at-top
  assert keras_layers._deferred()   # pylint: disable=protected-access  # this process: experiments
  for package in (fedpara_tff, keras_layers):
    for name in package.__all__:
      assert getattr(package, name) is not None, name
      assert name in dir(package)
  with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
    getattr(fedpara_tff, 'no_such_name')
  assert fedpara_tff.__version__ == keras_layers.__version__


# A console script run where the [experiments] extra is missing: `find_spec` says so for tqdm.
_WITHOUT_THE_EXTRA = ('import importlib.util, sys\n'
                      'real = importlib.util.find_spec\n'
                      'importlib.util.find_spec = lambda name, *a: None if name == "tqdm" '
                      'else real(name, *a)\n'
                      'sys.argv = ["/usr/local/bin/{name}", "--help"]\n'
                      'from experiments.{module} import entry_point\n')


@pytest.mark.parametrize('module, name', [('train', 'fedpara-train'), ('plot', 'fedpara-plot')])
def test_a_console_script_without_its_extra_says_so_in_one_line(module, name):
  result = subprocess.run(
      [sys.executable, '-c', _WITHOUT_THE_EXTRA.format(module=module, name=name)],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f'{name}: error: experiments needs the [experiments] extra, which is not installed '
      f'(missing: tqdm): pip install "fedpara-tff[experiments]" on Python 3.9-3.11 (this is '
      f'Python {sys.version_info[0]}.{sys.version_info[1]}).']


def test_the_console_scripts_known_to_the_package_are_setup_pys():
  import experiments   # pylint: disable=g-import-not-at-top
  setup = open(os.path.join(os.path.dirname(__file__), '..', 'setup.py')).read()
  declared = sorted(line.strip().strip("',").split('=')[0]
                    for line in setup.splitlines() if '=experiments.' in line)
  assert declared == sorted(experiments._CONSOLE_SCRIPTS)  # pylint: disable=protected-access


def test_a_binary_flagfile_is_one_line(tmp_path):
  """Issue 38: random bytes as --flagfile ended in a 30-line UnicodeDecodeError."""
  path = tmp_path / 'random.cfg'
  path.write_bytes(bytes(range(256)) * 4)
  result = subprocess.run([sys.executable, '-m', 'experiments.train', f'--flagfile={path}'],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f'train: error: --flagfile={path} is not a text file (invalid start byte at byte 128); a '
      f'flagfile holds --name=value lines.']


@pytest.mark.slow   # a binary in a subprocess, end to end (pytest.ini)
def test_the_training_binary_builds_and_trains_a_convolutional_model(tmp_path):
  """Found while making the binaries answer at once: with TensorFlow first imported inside
  absl's `app.run`, Keras 2.14 refused every functional model ("Output tensors of a Sequential
  model must be the output of a TensorFlow `Layer`"), so `make demo` failed; the test suite's
  runs, on the MLP and in process, did not see it."""
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--dataset=mnist5k', '--model=small_cnn',
       '--parameterization=fedpara', '--clients=4', '--clients_per_round=2', '--rounds=1',
       '--batch_size=64', '--progress=false', f'--output_dir={tmp_path / "run"}',
       f'--cache_dir={tmp_path / "cache"}'], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'metrics, checkpoints and plot:' in result.stdout
