"""Characters to ids, and text to next-character sequences (the LEAF / TFF Shakespeare task).

Id 0 is padding, 1 an out-of-vocabulary character; then the 96 printable
ASCII characters (space and newline included). A client's text is cut into
non-overlapping chunks of `sequence_length + 1` ids; the input is a chunk
without its last id, the target the chunk without its first (the next
character at every position).
"""

import string

import numpy as np

PAD_ID, OOV_ID = 0, 1
CHARACTERS = ''.join(c for c in string.printable if c not in '\t\r\x0b\x0c')
VOCAB_SIZE = 2 + len(CHARACTERS)
_LOOKUP = np.full(256, OOV_ID, np.int32)
for _i, _c in enumerate(CHARACTERS):
  _LOOKUP[ord(_c)] = 2 + _i


def encode(text):
  """int32 ids of `text` (characters outside ASCII map to the out-of-vocabulary id)."""
  codes = np.frombuffer(text.encode('utf-32-le'), np.uint32)
  return np.where(codes < 256, _LOOKUP[np.minimum(codes, 255)], OOV_ID).astype(np.int32)


def decode(ids):
  """The text of `ids` (padding dropped, out-of-vocabulary shown as '?')."""
  return ''.join('?' if i == OOV_ID else CHARACTERS[i - 2] for i in ids if i != PAD_ID)


def to_sequences(text, sequence_length):
  """`(x, y)`: int32 `(n, sequence_length)` inputs and next-character targets.

  A trailing piece shorter than `sequence_length + 1` characters is dropped.
  """
  ids = encode(text)
  n = len(ids) // (sequence_length + 1)
  chunks = ids[:n * (sequence_length + 1)].reshape(n, sequence_length + 1)
  return chunks[:, :-1].copy(), chunks[:, 1:].copy()
