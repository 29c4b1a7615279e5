"""Set-up of the any-Keras layer tests (`tests/keras3/seeding.py`): seeded randomness and a clean
Keras state, through whichever Keras `keras_layers.backend` picked."""

from tests.keras3.seeding import _seeded_clean_keras  # pylint: disable=unused-import
