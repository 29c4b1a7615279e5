"""Data loaders of fedpara-tff. Each says what to install when its data is missing."""
