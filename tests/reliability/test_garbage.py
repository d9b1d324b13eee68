"""Damaged files fail with our own error, whatever the damage.

A decoder fed random bytes can raise almost anything (UnpicklingError, OverflowError, MemoryError,
UnicodeDecodeError, struct.error, ...). The bad-input tables try one damaged file each; here many
seeded ones, with both pure noise and a valid file with a stretch of it overwritten, so that a rare
exception type does not slip through as a traceback.
"""

from __future__ import annotations

import io
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.cifar10 import read_batch
from cnnlab.data.images import decode_rgb
from cnnlab.errors import CheckpointError, DataError
from cnnlab.files import load_checkpoint

N = 150


def _valid_batch() -> bytes:
    rng = np.random.default_rng(0)
    d = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
    return pickle.dumps(d, protocol=2)


def _valid_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.ones(4, 4)}, "epoch": 3}, buf)
    return buf.getvalue()


def _valid_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _damaged(valid: bytes, seed: int) -> bytes:
    """Half pure noise (sometimes after the valid header), half the valid file with a stretch overwritten."""
    rng = random.Random(seed)
    if seed % 2:
        keep = rng.choice([0, 2, 8])
        return valid[:keep] + rng.randbytes(rng.randrange(1, 3000))
    start = rng.randrange(len(valid))
    length = rng.randrange(1, 64)
    return valid[:start] + rng.randbytes(length) + valid[start + length:]


@pytest.mark.parametrize("kind", ["batch", "checkpoint", "image"])
def test_damaged_files_raise_our_error_naming_the_file(kind, tmp_path):
    valid, read, error = {
        "batch": (_valid_batch(), read_batch, DataError),
        "checkpoint": (_valid_checkpoint(), load_checkpoint, CheckpointError),
        "image": (_valid_png(), decode_rgb, DataError),
    }[kind]
    failed = 0
    for seed in range(N):
        path = tmp_path / f"{kind}-{seed}.bin"
        path.write_bytes(_damaged(valid, seed))
        try:
            read(path)
        except error as e:
            assert str(path) in str(e), f"seed {seed}: message does not name the file: {e}"
            failed += 1
        # a damage that leaves a readable file (a flipped pixel) is fine: no exception at all
    assert failed > N // 3, f"only {failed} of {N} damaged {kind} files were refused; the damage is too mild"
