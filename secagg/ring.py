"""Vectors of integers modulo 2^bits: fixed-point encoding of real values, the masks that hide them (a
ChaCha20 keystream expanded from a 32-byte seed through HKDF), and their bytes on the wire.

32 and 64 bits are numpy unsigned arrays (arithmetic wraps modulo 2^bits by itself); 128 bits, for sums of
large values such as sums of squares, are numpy arrays of Python integers reduced explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

BITS = (32, 64, 128)


@dataclass(frozen=True)
class VectorSpec:
    """How one vector of a secure sum is encoded: its length, the ring's bit width, and the fixed-point scale
    (a real value v is sent as v * scale, rounded stochastically, modulo 2^bits; the sum decodes as a signed
    integer / scale)."""

    size: int
    bits: int
    scale: float

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"bit width must be one of {BITS}, not {self.bits}")

    def as_dict(self) -> dict:
        return {"size": self.size, "bits": self.bits, "scale": self.scale}


def scale_for(bound: float, institutions: int, bits: int) -> float:
    """The largest fixed-point scale at which the sum of `institutions` values, each within +-`bound`, plus
    their rounding, never wraps around the ring (a wrapped sum would decode as a wrong number)."""
    room = 2 ** (bits - 1) - 1 - institutions
    return float(np.floor(room / (institutions * bound)))


def bits_for(bound: float, institutions: int, resolution: float) -> int:
    """The smallest bit width whose ring holds the sum of `institutions` values within +-`bound` at `resolution`."""
    for bits in BITS:
        if scale_for(bound, institutions, bits) * resolution >= 1.0:
            return bits
    raise ValueError(f"values up to {bound:g} at resolution {resolution:g} need more than {BITS[-1]} bits")


def zeros(spec: VectorSpec) -> np.ndarray:
    return np.zeros(spec.size, dtype=object) if spec.bits > 64 else np.zeros(spec.size, dtype=f"uint{spec.bits}")


def encode(values: np.ndarray, spec: VectorSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """Real values as ring elements (two's complement for negatives), rounded stochastically: v * scale goes to
    its floor or ceiling with the probabilities that make the expected value exact, so that a small
    institution's small coordinates are not rounded away (as Flower's SecAgg+ quantization does)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size != spec.size:
        raise ValueError(f"expected {spec.size} values, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise ValueError("cannot encode a non-finite value")
    scaled = values * spec.scale
    low = np.floor(scaled)
    rng = rng if rng is not None else np.random.default_rng()
    rounded = low + (rng.random(values.size) < (scaled - low))
    if spec.bits > 64:
        modulus = 1 << spec.bits
        return np.array([int(v) % modulus for v in rounded], dtype=object)
    return rounded.astype(np.int64).astype(f"uint{spec.bits}")


def decode(ring: np.ndarray, spec: VectorSpec) -> np.ndarray:
    """Ring elements (a sum) as real values."""
    if spec.bits > 64:
        half, modulus = 1 << (spec.bits - 1), 1 << spec.bits
        return np.array([(int(v) - modulus if int(v) >= half else int(v)) / spec.scale for v in ring])
    return ring.astype(f"uint{spec.bits}").view(f"int{spec.bits}").astype(np.float64) / spec.scale


def add(a: np.ndarray, b: np.ndarray, spec: VectorSpec) -> np.ndarray:
    if spec.bits > 64:
        modulus = 1 << spec.bits
        return np.array([(int(x) + int(y)) % modulus for x, y in zip(a, b, strict=True)], dtype=object)
    return a + b


def subtract(a: np.ndarray, b: np.ndarray, spec: VectorSpec) -> np.ndarray:
    if spec.bits > 64:
        modulus = 1 << spec.bits
        return np.array([(int(x) - int(y)) % modulus for x, y in zip(a, b, strict=True)], dtype=object)
    return a - b


def expand(seed: bytes, label: str, spec: VectorSpec) -> np.ndarray:
    """A mask: `spec.size` uniform ring elements from a 32-byte seed, distinct for each `label`."""
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"fedrisk-secagg-prg|" + label.encode()).derive(seed)
    stream = (
        Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor().update(bytes(spec.size * spec.bits // 8))
    )
    return from_bytes(np.frombuffer(stream, dtype=np.uint8), spec)


def to_bytes(ring: np.ndarray, spec: VectorSpec) -> np.ndarray:
    """Ring elements as little-endian bytes (uint8), for the wire."""
    if spec.bits > 64:
        width = spec.bits // 8
        return np.frombuffer(b"".join(int(v).to_bytes(width, "little") for v in ring), dtype=np.uint8).copy()
    return np.frombuffer(ring.astype(f"<u{spec.bits // 8}").tobytes(), dtype=np.uint8).copy()


def from_bytes(data: np.ndarray, spec: VectorSpec) -> np.ndarray:
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    width = spec.bits // 8
    if len(raw) != spec.size * width:
        raise ValueError(
            f"expected {spec.size * width} bytes for {spec.size} values of {spec.bits} bits, got {len(raw)}"
        )
    if spec.bits > 64:
        return np.array([int.from_bytes(raw[i : i + width], "little") for i in range(0, len(raw), width)], dtype=object)
    return np.frombuffer(raw, dtype=f"<u{width}").astype(f"uint{spec.bits}")
