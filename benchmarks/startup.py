r"""CPU seconds a binary takes before it answers, beside the floor of absl alone, in one run.

Each case runs in a fresh interpreter `--repeats` times; the CPU time (user + system) of the
child is read from `resource.getrusage(RUSAGE_CHILDREN)` around it, and the median is reported.
The floor is `python -c "import absl.flags, absl.app"`: what any absl binary pays. The target
(docs/DESIGN.md, "Fast start"): `--help` and a flag error within half a second of CPU above the
floor; `import fedpara_tff` loads neither TensorFlow nor TFF, and `keras_layers` loads Keras only
where it registers its layers (a plain `import keras_layers`), not in the binaries.
For reference, the last case imports TensorFlow and TFF, what every binary paid before.

  python -m benchmarks.startup --repeats=5
"""

import resource
import statistics
import subprocess
import sys

from absl import app
from absl import flags

_REPEATS = flags.DEFINE_integer('repeats', 5, 'Runs of each case (the median is reported).')
_TARGET_ABOVE_FLOOR = 0.5   # CPU seconds

# name -> the interpreter's arguments, and whether the case counts against the target.
_CASES = (
    ('floor: import absl.flags, absl.app', ['-c', 'import absl.flags, absl.app'], False),
    ('fedpara-train --help', ['-m', 'experiments.train', '--help'], True),
    ('fedpara-train flag error', ['-m', 'experiments.train', '--rounds=0', '--output_dir=x'],
     True),
    ('fedpara-compare --help', ['-m', 'experiments.compare', '--help'], True),
    ('fedpara-plot --help', ['-m', 'experiments.plot', '--help'], True),
    ('fedpara-worker --help', ['-m', 'experiments.worker', '--help'], True),
    ('launch_workers --help', ['-m', 'experiments.launch_workers', '--help'], True),
    ('results_table --help', ['-m', 'experiments.analysis.results_table', '--help'], True),
    ('import fedpara_tff', ['-c', 'import fedpara_tff'], True),
    ('import experiments, keras_layers (layers on first use)',
     ['-c', 'import experiments, keras_layers'], True),
    ('import keras_layers (registers the layers: loads Keras)', ['-c', 'import keras_layers'],
     False),
    ('reference: import tensorflow, tensorflow_federated',
     ['-c', 'import tensorflow, tensorflow_federated'], False),
)


def cpu_seconds(args):
  """The CPU seconds (user + system) of one `python ARGS` child, and its exit code."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  result = subprocess.run([sys.executable, *args], capture_output=True, check=False)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
          result.returncode)


def measure(args, repeats):
  """Median CPU seconds over `repeats` runs, and the exit codes seen."""
  runs = [cpu_seconds(args) for _ in range(repeats)]
  return statistics.median(r[0] for r in runs), sorted({r[1] for r in runs})


def main(argv):
  del argv
  rows = [(name, *measure(args, _REPEATS.value), counted) for name, args, counted in _CASES]
  floor = rows[0][1]
  print(f'{"case":<52} {"CPU s":>7} {"above floor":>12} {"x floor":>8}  exit')
  for name, seconds, codes, counted in rows:
    print(f'{name:<52} {seconds:>7.3f} {seconds - floor:>12.3f} {seconds / floor:>8.1f}  '
          f'{",".join(map(str, codes))}')
  over = [name for name, seconds, _, counted in rows
          if counted and seconds - floor > _TARGET_ABOVE_FLOOR]
  print(f'target: within {_TARGET_ABOVE_FLOOR} CPU s of the floor: '
        f'{"met by every counted case" if not over else "missed by " + ", ".join(over)}')


if __name__ == '__main__':
  app.run(main)
