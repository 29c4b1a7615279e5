"""absl-flag binaries, data loaders and the model zoo of fedpara-tff."""
