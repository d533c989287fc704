"""Shamir secret sharing of 32-byte secrets over GF(2^521 - 1): any `threshold` shares rebuild the secret;
fewer reveal nothing about it."""

from __future__ import annotations

import secrets

PRIME = 2**521 - 1  # a Mersenne prime, larger than any 32-byte secret


class ShareError(ValueError):
    """Shares that do not rebuild a secret (too few, or not of one sharing)."""


def split(secret: bytes, holders: list[int], threshold: int) -> dict[int, int]:
    """One share per holder (a non-zero x coordinate): points of a random polynomial of degree threshold - 1
    whose value at 0 is the secret."""
    if not 1 <= threshold <= len(holders):
        raise ShareError(f"a threshold of {threshold} needs between 1 and {len(holders)} holders")
    if 0 in holders or len(set(holders)) != len(holders):
        raise ShareError("holders must be distinct and non-zero")
    coefficients = [int.from_bytes(secret, "big"), *(secrets.randbelow(PRIME) for _ in range(threshold - 1))]
    return {x: _evaluate(coefficients, x) for x in holders}


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value


def combine(shares: dict[int, int], length: int = 32) -> bytes:
    """The secret from `shares` (x -> y), by Lagrange interpolation at 0. With fewer shares than the
    threshold the result is a random number, not the secret (or ShareError if it does not fit `length`)."""
    secret = 0
    for xi, yi in shares.items():
        numerator, denominator = 1, 1
        for xj in shares:
            if xj != xi:
                numerator = numerator * -xj % PRIME
                denominator = denominator * (xi - xj) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    try:
        return secret.to_bytes(length, "big")
    except OverflowError:
        raise ShareError("the shares do not rebuild a secret (too few, or from different sharings)") from None
