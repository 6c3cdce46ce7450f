"""Seed -> noise: one counter-based generator shared by every backend.

Why this module exists
----------------------
Sampling in cvdvae takes all randomness as an explicit noise tensor. To make a
seed mean the same thing everywhere (numpy on CPU for the ONNX Runtime path,
torch on CPU, torch on CUDA), the noise is a pure function of
``(seed, sample index, element index)`` computed with a counter-based
generator instead of a stateful RNG. Consequences:

* the same seed gives the same noise on every backend (up to one float32 ulp
  where two libms round ``log``/``sin``/``cos`` differently);
* ``n=4`` is exactly the first 4 rows of ``n=8``;
* rows starting at sample ``k0`` can be produced without producing rows
  ``0 .. k0-1`` (``first_sample``);
* a shorter ``dim`` is a prefix of a longer one.

Specification (enough to re-implement it, e.g. in CUDA)
-------------------------------------------------------
All integer arithmetic is on unsigned 32-bit words, modulo 2**32.

1. Generator: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random
   numbers: as easy as 1, 2, 3", SC'11; the generator cuRAND and Random123
   ship). Counter ``(c0, c1, c2, c3)``, key ``(k0, k1)``.

   ``mulhilo(a, b)`` = (high 32 bits, low 32 bits) of the 64-bit product.
   One round::

       (hi0, lo0) = mulhilo(0xD2511F53, c0)
       (hi1, lo1) = mulhilo(0xCD9E8D57, c2)
       (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)

   Ten rounds; between consecutive rounds (9 times) the key is bumped:
   ``k0 += 0x9E3779B9``, ``k1 += 0xBB67AE85`` (mod 2**32). The output is the
   counter after round 10, words ``(x0, x1, x2, x3)``. Known answers
   (Random123)::

       ctr (0,0,0,0), key (0,0)               -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8
       ctr (ffffffff x4), key (ffffffff x2)   -> 408f276d 41c83b0e a20bc7c6 6d5451fd
       ctr (243f6a88 85a308d3 13198a2e 03707344),
       key (a4093822 299f31d0)                -> d16cfe09 94fdcceb 5001e420 24126ea1

2. Key from seed ``s`` (integer, ``0 <= s < 2**64``):
   ``k0 = s & 0xFFFFFFFF``, ``k1 = s >> 32``.

3. Counter: sample ``k`` (``0 <= k < 2**64``) has a noise vector of length
   ``D``. Block ``i`` covers elements ``e = 4i .. 4i+3`` and uses counter
   ``(c0, c1, c2, c3) = (i & 0xFFFFFFFF, i >> 32, k & 0xFFFFFFFF, k >> 32)``.
   Block count per sample is ``ceil(D / 4)``.

4. Words to uniforms, in float64: ``u = (x + 0.5) * 2**-32``. This is exact
   (33 significant bits) and lies strictly inside (0, 1).

5. Box-Muller, in float64, on the pairs ``(x0, x1)`` and ``(x2, x3)``::

       r = sqrt(-2 * ln(u_a)),  theta = 2 * pi * u_b
       element 4i   = r01 * cos(theta01)     (u_a = u(x0), u_b = u(x1))
       element 4i+1 = r01 * sin(theta01)
       element 4i+2 = r23 * cos(theta23)     (u_a = u(x2), u_b = u(x3))
       element 4i+3 = r23 * sin(theta23)

   (``2 * pi`` is the float64 constant 6.283185307179586, applied with one
   multiply; ``ln``, ``sqrt``, ``cos``, ``sin`` are the float64 functions.)
   Each value is then rounded to float32 (round to nearest). Elements
   ``e >= D`` of the last block are dropped.

Implementation notes
--------------------
The integer round function is written once, with Python operators only
(``*``, ``+``, ``^``, ``&``, ``>>``), so the very same code runs on numpy
``uint64`` arrays and on torch ``int64`` tensors (torch lacks full
uint32/uint64 arithmetic) and on plain Python ints. Blocks are generated in
chunks (``_CHUNK_BLOCKS`` on CPU) so the temporaries of a round stay in cache
and no Python work is done per element; on accelerators the chunks are much
larger (``_CHUNK_BLOCKS_ACCELERATOR``) to amortise kernel launches. Chunking
never changes values: every element is a function of (seed, k, e) alone.

Cost: a small share of a CPU inference (docs/concepts/explicit-noise.md,
the seeds paragraph). The torch CPU path issues many small elementwise ops per chunk, so
when the CPU is oversubscribed by other processes its intra-op thread pool can
make it many times slower; the numpy path is single-threaded and unaffected.

Only numpy is imported at module level: the ONNX Runtime path uses this
module without torch installed; torch is imported inside ``noise_torch``.
"""

from __future__ import annotations

import math
import operator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # annotations only; never imported at runtime here
    import torch

__all__ = [
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_W0",
    "PHILOX_W1",
    "PHILOX_ROUNDS",
    "philox4x32_10",
    "noise_numpy",
    "noise_torch",
]

PHILOX_M0 = 0xD2511F53  # multiplier applied to counter word 0
PHILOX_M1 = 0xCD9E8D57  # multiplier applied to counter word 2
PHILOX_W0 = 0x9E3779B9  # Weyl increment for key word 0 (golden ratio)
PHILOX_W1 = 0xBB67AE85  # Weyl increment for key word 1 (sqrt(3) - 1)
PHILOX_ROUNDS = 10

_MASK32 = 0xFFFFFFFF
_TWO_POW_M32 = 2.0**-32  # exact in float64
_TWO_PI = 2.0 * math.pi
_MAX_U64 = (1 << 64) - 1
MAX_SEED = _MAX_U64  # seeds are 0 .. 2^64-1: the Philox key

# Blocks per chunk: 2**16 blocks -> 512 KiB per 64-bit temporary, so the
# handful of live temporaries of a round fit in L2/L3 instead of streaming
# through DRAM 10 rounds x ~12 times.
_CHUNK_BLOCKS = 1 << 16
# On accelerators each elementwise op is a kernel launch; chunk so that one
# ~5.3M-value sample is a single chunk (32 MiB per temporary, ~150 launches).
_CHUNK_BLOCKS_ACCELERATOR = 1 << 22

Word = Any  # numpy uint64 array, torch int64 tensor, or Python int
Counter = Tuple[Word, Word, Word, Word]
Key = Tuple[Word, Word]


# ---------------------------------------------------------------------------
# Array-agnostic integer core
# ---------------------------------------------------------------------------


def _mulhilo(multiplier: int, word: Word) -> Tuple[Word, Word]:
    """(high, low) 32-bit halves of ``multiplier * word``.

    Why this is exact on every supported word type:

    * ``multiplier`` and ``word`` are both < 2**32, so the true product is
      < 2**64 and fits a 64-bit word without loss.
    * numpy ``uint64``: the product is exact; ``>> 32`` is a logical shift.
    * torch ``int64``: products >= 2**63 wrap to negative values in two's
      complement, but the 64 bits are still exactly those of the unsigned
      product. ``>> 32`` is then an arithmetic shift that copies the sign bit
      into the top 32 bits; ``& 0xFFFFFFFF`` removes them, leaving the true
      high word. ``& 0xFFFFFFFF`` on the product gives the low word directly.
    * Python int: arbitrary precision, trivially exact.
    """
    product = multiplier * word
    return (product >> 32) & _MASK32, product & _MASK32


def _philox_round(c0: Word, c1: Word, c2: Word, c3: Word, k0: Word, k1: Word) -> Counter:
    """One Philox4x32 round; XOR keeps every word < 2**32, no mask needed."""
    hi0, lo0 = _mulhilo(PHILOX_M0, c0)
    hi1, lo1 = _mulhilo(PHILOX_M1, c2)
    return hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0


def _philox_rounds(counter: Sequence[Word], key: Sequence[Word]) -> Counter:
    """Ten rounds with the key bumped in between (no argument checks)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(PHILOX_ROUNDS):
        if r:
            # Mask after every add: a 64-bit word would otherwise carry the
            # overflow into bit 32 and poison the next XOR.
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    return c0, c1, c2, c3


def _check_word(word: Word, what: str) -> None:
    """Refuse word types on which the 32x32->64 product would overflow."""
    if isinstance(word, bool):
        raise TypeError(f"{what}: expected an integer word, got bool")
    if isinstance(word, int):
        if not 0 <= word <= _MASK32:
            raise ValueError(f"{what}: {word} is not a 32-bit unsigned word")
        return
    dtype = getattr(word, "dtype", None)
    itemsize = getattr(dtype, "itemsize", None)
    is_float = getattr(dtype, "is_floating_point", None)
    if is_float is None and dtype is not None:
        is_float = getattr(dtype, "kind", "") not in "iu"
    if itemsize != 8 or is_float:
        raise TypeError(
            f"{what}: expected a 64-bit integer array (numpy uint64/int64 or torch int64) "
            f"holding values < 2**32, got dtype {dtype!r}; narrower types would "
            "overflow in the 32x32-bit product"
        )


def philox4x32_10(counter: Sequence[Word], key: Sequence[Word]) -> Counter:
    """Philox4x32-10 on 4 counter words and 2 key words, elementwise.

    Array-agnostic so that numpy (ONNX Runtime path) and torch (CPU/CUDA)
    share one implementation and cannot drift apart. Each word may be a
    Python int in [0, 2**32) or a 64-bit integer array / tensor holding such
    values (numpy uint64 or int64, torch int64); words broadcast. Returns the
    four output words with the same representation.
    """
    if len(counter) != 4 or len(key) != 2:
        raise ValueError("philox4x32_10 needs a 4-word counter and a 2-word key")
    for j, w in enumerate(counter):
        _check_word(w, f"counter[{j}]")
    for j, w in enumerate(key):
        _check_word(w, f"key[{j}]")
    return _philox_rounds(counter, key)


# ---------------------------------------------------------------------------
# Argument checks and index bookkeeping (shared)
# ---------------------------------------------------------------------------


def _as_int(value: Any, name: str) -> int:
    """Accept Python/numpy integers, refuse bools and floats (silent truncation)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _validate(seed: Any, n: Any, dim: Any, first_sample: Any) -> Tuple[int, int, int, int]:
    """Check arguments once so both backends refuse the same inputs."""
    seed = _as_int(seed, "seed")
    n = _as_int(n, "n")
    dim = _as_int(dim, "dim")
    first_sample = _as_int(first_sample, "first_sample")
    if not 0 <= seed <= _MAX_U64:
        raise ValueError(f"seed must satisfy 0 <= seed < 2**64, got {seed}")
    if n < 0:
        raise ValueError(f"n (number of samples) must be >= 0, got {n}")
    if dim < 1:
        raise ValueError(f"dim (noise values per sample) must be >= 1, got {dim}")
    if first_sample < 0:
        raise ValueError(f"first_sample must be >= 0, got {first_sample}")
    if n and first_sample + n - 1 > _MAX_U64:
        raise ValueError(
            f"sample indices first_sample .. first_sample + n - 1 must be < 2**64, "
            f"got first_sample={first_sample}, n={n}"
        )
    return seed, n, dim, first_sample


def _chunk_counter(g: Word, blocks_per_sample: int, first_sample: int) -> Counter:
    """Counter words for flat block indices ``g`` = sample_offset * B + block.

    Flattening (sample, block) lets one chunk span many short samples or part
    of one long sample with the same code. The sample index is added in
    32-bit halves so it never exceeds int64 range on torch even when
    ``first_sample`` is close to 2**64.
    """
    rel = g // blocks_per_sample
    block = g - rel * blocks_per_sample
    lo_sum = rel + (first_sample & _MASK32)
    c2 = lo_sum & _MASK32
    c3 = ((lo_sum >> 32) + (first_sample >> 32)) & _MASK32
    return block & _MASK32, block >> 32, c2, c3


# ---------------------------------------------------------------------------
# numpy backend
# ---------------------------------------------------------------------------


def _box_muller(ua: Any, ub: Any, xp: Any) -> Tuple[Any, Any]:
    """Two float64 normals from two float64 uniforms (module spec, step 5); ``xp`` is numpy
    or torch, whose sqrt/log/cos/sin share names."""
    r = xp.sqrt(-2.0 * xp.log(ua))
    theta = _TWO_PI * ub
    return r * xp.cos(theta), r * xp.sin(theta)


def _box_muller_numpy(xa: np.ndarray, xb: np.ndarray, cos_out: np.ndarray, sin_out: np.ndarray,
                      work: Tuple[np.ndarray, np.ndarray]) -> None:
    """``_box_muller`` on two uint64 words (module spec, steps 4-5), written into the float32
    ``cos_out`` and ``sin_out``: the same float64 operations in the same order, in place in the
    two float64 ``work`` arrays, without the plain expression's temporaries."""
    ua, ub = work
    np.add(xa, 0.5, out=ua, dtype=np.float64, casting="unsafe")  # exact: x < 2**32
    np.multiply(ua, _TWO_POW_M32, out=ua)
    np.add(xb, 0.5, out=ub, dtype=np.float64, casting="unsafe")
    np.multiply(ub, _TWO_POW_M32, out=ub)
    np.log(ua, out=ua)
    np.multiply(ua, -2.0, out=ua)
    r = np.sqrt(ua, out=ua)
    theta = np.multiply(ub, _TWO_PI, out=ub)
    trig = np.cos(theta)
    cos_out[...] = np.multiply(r, trig, out=trig)
    np.sin(theta, out=trig)
    sin_out[...] = np.multiply(r, trig, out=trig)


def noise_numpy(seed: int, n: int, dim: int, first_sample: int = 0, workers: int = 1) -> np.ndarray:
    """float32 [n, dim] standard normals for samples first_sample .. +n-1.

    Pure numpy so the ONNX Runtime deployment reproduces torch's noise
    without torch. Element [j, e] depends only on (seed, first_sample + j, e).
    ``workers`` threads share the chunks (numpy's loops release the GIL);
    the values do not depend on it.
    """
    seed, n, dim, first_sample = _validate(seed, n, dim, first_sample)
    blocks = -(-dim // 4)
    total = n * blocks
    out = np.empty((total, 4), dtype=np.float32)
    key = (seed & _MASK32, seed >> 32)

    def fill(g0: int) -> None:
        g = np.arange(g0, min(g0 + _CHUNK_BLOCKS, total), dtype=np.uint64)
        x0, x1, x2, x3 = _philox_rounds(_chunk_counter(g, blocks, first_sample), key)
        chunk = out[g0 : g0 + g.shape[0]]
        work = (np.empty(g.shape[0]), np.empty(g.shape[0]))
        _box_muller_numpy(x0, x1, chunk[:, 0], chunk[:, 1], work)
        _box_muller_numpy(x2, x3, chunk[:, 2], chunk[:, 3], work)

    starts = range(0, total, _CHUNK_BLOCKS)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(workers, len(starts))) as pool:
            list(pool.map(fill, starts))
    else:
        for g0 in starts:
            fill(g0)
    flat = out.reshape(n, blocks * 4)
    return flat if blocks * 4 == dim else np.ascontiguousarray(flat[:, :dim])


# ---------------------------------------------------------------------------
# torch backend
# ---------------------------------------------------------------------------


def noise_torch(seed: int, n: int, dim: int, first_sample: int = 0, device: Any = "cpu") -> torch.Tensor:
    """float32 [n, dim] tensor on ``device``, equal to ``noise_numpy`` (to 1 ulp).

    Generated directly on ``device`` (no host round trip on CUDA). torch is
    imported here, not at module level, so numpy-only deployments can import
    this module.
    """
    import torch

    seed, n, dim, first_sample = _validate(seed, n, dim, first_sample)
    blocks = -(-dim // 4)
    total = n * blocks
    out = torch.empty((total, 4), dtype=torch.float32, device=device)
    key = (seed & _MASK32, seed >> 32)
    step = _CHUNK_BLOCKS if out.device.type == "cpu" else _CHUNK_BLOCKS_ACCELERATOR

    def box_muller(xa: torch.Tensor, xb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return _box_muller((xa.to(torch.float64) + 0.5) * _TWO_POW_M32, (xb.to(torch.float64) + 0.5) * _TWO_POW_M32,
                           torch)

    for g0 in range(0, total, step):
        g1 = min(g0 + step, total)
        g = torch.arange(g0, g1, dtype=torch.int64, device=out.device)
        x0, x1, x2, x3 = _philox_rounds(_chunk_counter(g, blocks, first_sample), key)
        chunk = out[g0:g1]
        a, b = box_muller(x0, x1)
        chunk[:, 0] = a
        chunk[:, 1] = b
        a, b = box_muller(x2, x3)
        chunk[:, 2] = a
        chunk[:, 3] = b
    flat = out.reshape(n, blocks * 4)
    return flat if blocks * 4 == dim else flat[:, :dim].contiguous()
