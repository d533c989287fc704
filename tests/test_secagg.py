"""Secure aggregation's protocol (secagg): the sum comes out exact to the quantization, a masked vector tells
nothing about the input, dropouts on either side of the masked input are survived down to the threshold and
refused below it, and a coordinator that substitutes a key is caught by the institutions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from hostguard.pki import init_ca, issue
from secagg import ring, shamir
from secagg.protocol import Aggregator, Identity, Participant, SecureAggregationError
from secagg.ring import VectorSpec

NAMES = ["alder", "birch", "cedar", "dogwood", "elm"]


@pytest.fixture(scope="module")
def identities(tmp_path_factory) -> dict[str, Identity]:
    pki = tmp_path_factory.mktemp("pki")
    init_ca(pki)
    found = {}
    for name in [*NAMES, "coordinator"]:
        cert, key = issue(pki, name)
        found[name] = Identity(name, Path(cert).read_bytes(), Path(key).read_bytes(), (pki / "ca.crt").read_bytes())
    return found


def _specs(n: int, size: int = 300) -> dict[str, VectorSpec]:
    return {"update": VectorSpec(size, 32, ring.scale_for(5.0, n, 32)), "sums": VectorSpec(6, 128, 2.0**24)}


def _inputs(names, specs, rng):
    return {n: {"update": rng.uniform(-5, 5, specs["update"].size) / len(names),
                "sums": rng.uniform(0, 1e10, specs["sums"].size)} for n in names}


def _session(identities, names, inputs, specs, threshold, session="s"):
    parts = {n: Participant(identities[n], session, {k: ring.encode(v, specs[k]) for k, v in inputs[n].items()},
                            specs, threshold) for n in names}
    return parts, Aggregator(session, threshold, specs)


def _keys_and_shares(parts, aggregator):
    """Phases 1 and 2 with everyone taking part: each institution's inbox of shares."""
    roster = aggregator.keys([p.advertise() for p in parts.values()])
    return aggregator.inboxes({n: p.share(roster) for n, p in parts.items()})


def test_the_unmasked_sum_is_the_plain_sum_within_the_quantization(identities):
    names, specs = NAMES[:4], _specs(4)
    inputs = _inputs(names, specs, np.random.default_rng(0))
    parts, aggregator = _session(identities, names, inputs, specs, threshold=3)
    inboxes = _keys_and_shares(parts, aggregator)
    sent = aggregator.collect({n: p.masked(inboxes[n]) for n, p in parts.items()})
    total = aggregator.total({n: parts[n].unmask(sent) for n in names})
    for vector, spec in specs.items():
        plain = np.sum([inputs[n][vector] for n in names], axis=0)
        # each input is rounded to the nearest 1/scale: the sum is within n/(2 scale)
        assert np.max(np.abs(total[vector] - plain)) <= len(names) / (2 * spec.scale) * (1 + 1e-9) + abs(
            plain).max() * 1e-15


def test_a_masked_vector_is_indistinguishable_from_uniform(identities):
    """Over 300 sessions one institution sends its (changing) update masked: every coordinate's top bits are
    uniform, and no coordinate correlates with the update it hides."""
    names, specs = NAMES[:3], _specs(3, size=40)
    rng = np.random.default_rng(1)
    sessions, masked, hidden = 300, [], []
    for s in range(sessions):
        inputs = _inputs(names, specs, rng)
        inputs["alder"]["update"] = np.linspace(-1.6, 1.6, 40) * rng.uniform(0.1, 1.0)  # structured, shifting
        parts, aggregator = _session(identities, names, inputs, specs, 2, session=f"s{s}")
        inboxes = _keys_and_shares(parts, aggregator)
        masked.append(parts["alder"].masked(inboxes["alder"])["update"])
        hidden.append(inputs["alder"]["update"])
    masked, hidden = np.array(masked, dtype=np.float64), np.array(hidden)
    top = (masked / 2**28).astype(int)  # the top 4 bits: 16 buckets of 300 draws per coordinate
    counts = np.stack([np.bincount(top[:, c], minlength=16) for c in range(40)])
    chi2 = ((counts - sessions / 16) ** 2 / (sessions / 16)).sum(axis=1)
    assert np.all(chi2 < 45), chi2.max()  # 15 degrees of freedom: p < 2e-4 each
    for c in range(40):
        assert abs(np.corrcoef(masked[:, c], hidden[:, c])[0, 1]) < 0.25
        assert abs(np.corrcoef(masked[:, c].astype(np.uint64) % 2**31, hidden[:, c])[0, 1]) < 0.25


def test_institutions_that_drop_before_or_after_their_masked_input_are_survived(identities):
    """Five institutions, threshold 3: dogwood shares its keys then drops before masking (its pairwise masks are
    rebuilt from its key's shares), elm sends its masked input then drops (its self-mask is rebuilt). The sum is
    of the four that sent, from three institutions' shares."""
    names, specs = NAMES, _specs(5)
    inputs = _inputs(names, specs, np.random.default_rng(2))
    parts, aggregator = _session(identities, names, inputs, specs, threshold=3)
    inboxes = _keys_and_shares(parts, aggregator)
    senders = [n for n in names if n != "dogwood"]
    sent = aggregator.collect({n: parts[n].masked(inboxes[n]) for n in senders})
    assert sent == sorted(senders)
    answers = {n: parts[n].unmask(sent) for n in ("alder", "birch", "cedar")}  # elm is gone
    assert "dogwood" in answers["alder"]["mask_key"] and "dogwood" not in answers["alder"]["self_seed"]
    total = aggregator.total(answers)
    plain = np.sum([inputs[n]["update"] for n in senders], axis=0)
    assert np.max(np.abs(total["update"] - plain)) <= 5 / (2 * specs["update"].scale) * 1.000001
    assert np.allclose(total["sums"], np.sum([inputs[n]["sums"] for n in senders], axis=0), rtol=1e-12, atol=1e-6)


def test_below_the_threshold_nothing_is_unmasked(identities):
    names, specs = NAMES[:4], _specs(4)
    inputs = _inputs(names, specs, np.random.default_rng(3))
    parts, aggregator = _session(identities, names, inputs, specs, threshold=3)
    inboxes = _keys_and_shares(parts, aggregator)
    with pytest.raises(SecureAggregationError, match="masked inputs: only 2 institution"):
        aggregator.collect({n: parts[n].masked(inboxes[n]) for n in names[:2]})
    parts["cedar"].masked(inboxes["cedar"])
    with pytest.raises(SecureAggregationError, match="only 2 institution.*threshold is 3: nothing is unmasked"):
        parts["cedar"].unmask(["alder", "birch"])
    aggregator.collect({n: parts[n].masked(inboxes[n]) for n in names[:3]})
    with pytest.raises(SecureAggregationError, match="unmasking: only 2 institution.*needs 3"):
        aggregator.total({n: parts[n].unmask(["alder", "birch", "cedar"]) for n in names[:2]})


def test_an_institution_answers_one_unmasking_only(identities):
    """Asked again with another set of senders it refuses: answering both would hand the coordinator the
    self-mask and the mask key of one institution, hence its input."""
    names, specs = NAMES[:4], _specs(4)
    parts, aggregator = _session(identities, names, _inputs(names, specs, np.random.default_rng(4)), specs, 2)
    inboxes = _keys_and_shares(parts, aggregator)
    for n in names:
        parts[n].masked(inboxes[n])
    parts["alder"].unmask(names)
    with pytest.raises(SecureAggregationError, match="answers one unmasking"):
        parts["alder"].unmask(names[:3])


def test_a_coordinator_that_substitutes_a_public_key_is_detected(identities):
    """The coordinator swaps cedar's mask key for one it holds (so it could unmask cedar): the others see that
    the key is not signed by cedar. Re-signing it with its own certificate, or with a certificate named cedar
    from another CA, is caught too; so is a change to an institution's own keys."""
    names, specs = NAMES[:3], _specs(3)
    parts, aggregator = _session(identities, names, _inputs(names, specs, np.random.default_rng(5)), specs, 2)
    roster = aggregator.keys([p.advertise() for p in parts.values()])
    mine = x25519.X25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                         serialization.PublicFormat.Raw)
    forged = replace(roster["cedar"], mask_key=mine)
    with pytest.raises(SecureAggregationError, match="relayed for 'cedar' are not signed by 'cedar'"):
        parts["alder"].share({**roster, "cedar": forged})
    coordinator = identities["coordinator"]
    resigned = replace(forged, certificate=coordinator.certificate, signature=coordinator.sign(forged.payload()))
    with pytest.raises(SecureAggregationError, match=r"signed by the certificate of \['coordinator'\]"):
        parts["alder"].share({**roster, "cedar": resigned})
    with pytest.raises(SecureAggregationError, match="relayed keys for 'cedar' that are not its own"):
        parts["cedar"].share({**roster, "cedar": forged})


def test_a_key_signed_under_another_ca_is_refused(identities, tmp_path):
    other = tmp_path / "rogue"
    init_ca(other, "rogue CA")
    cert, key = issue(other, "cedar")
    rogue = Identity("cedar", Path(cert).read_bytes(), Path(key).read_bytes(), (other / "ca.crt").read_bytes())
    assert x509.load_pem_x509_certificate(rogue.certificate).subject == x509.load_pem_x509_certificate(
        identities["cedar"].certificate).subject
    names, specs = NAMES[:3], _specs(3)
    inputs = _inputs(names, specs, np.random.default_rng(6))
    parts, aggregator = _session({**identities, "cedar": rogue}, names, inputs, specs, 2)
    roster = aggregator.keys([p.advertise() for p in parts.values()])
    with pytest.raises(SecureAggregationError, match="'cedar' is not issued by the consortium CA"):
        parts["alder"].share(roster)


def test_shamir_needs_the_threshold():
    secret = bytes(range(32))
    shares = shamir.split(secret, [1, 2, 3, 4, 5], threshold=3)
    assert shamir.combine({x: shares[x] for x in (1, 4, 5)}) == secret
    assert shamir.combine({x: shares[x] for x in (2, 3, 5)}) == secret
    try:  # two points of a degree-2 polynomial give a random number, not the secret
        rebuilt = shamir.combine({x: shares[x] for x in (1, 2)})
    except shamir.ShareError:
        rebuilt = None
    assert rebuilt != secret


def test_the_bit_width_follows_from_the_bound_and_the_institutions():
    assert ring.bits_for(10.0, 3, 1e-6) == 32
    assert ring.bits_for(1e6, 10, 1e-6) == 64
    assert ring.bits_for(1e16, 10, 1e-6) == 128
    spec = VectorSpec(3, 32, ring.scale_for(10.0, 3, 32))
    worst = np.array([10.0, -10.0, 10.0])
    total = ring.add(ring.add(ring.encode(worst, spec), ring.encode(worst, spec), spec), ring.encode(worst, spec), spec)
    assert np.allclose(ring.decode(total, spec), 3 * worst)  # the worst case does not wrap
