"""Secure aggregation's protocol (secagg): the sum comes out exact to the quantization, a masked vector tells
nothing about the input, dropouts on either side of the masked input are survived down to the threshold and
refused below it, no unmasking hands over both secrets of one institution, and a coordinator that substitutes a
key, names a stranger, lowers the threshold or shows institutions different views is caught by them.
(tests/e2e/test_adversarial_coordinator.py runs the same attacks against real nodes.)"""

from __future__ import annotations

import datetime
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from hostguard.pki import init_ca, issue
from secagg import ring, shamir
from secagg.protocol import (
    RULE_CERTIFICATE,
    RULE_CONSISTENCY,
    RULE_MEMBERS,
    RULE_MIN_INPUTS,
    RULE_ROSTER,
    RULE_SAME_PARAMETERS,
    RULE_THRESHOLD,
    Aggregator,
    Identity,
    Participant,
    Rules,
    SecureAggregationError,
    _agree,
    verify,
)
from secagg.ring import VectorSpec

NAMES = ["alder", "birch", "cedar", "dogwood", "elm"]
RULES = Rules(frozenset(NAMES), "coordinator", min_threshold=2)


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
    return {
        n: {
            "update": rng.uniform(-5, 5, specs["update"].size) / len(names),
            "sums": rng.uniform(0, 1e10, specs["sums"].size),
        }
        for n in names
    }


def _session(identities, names, inputs, specs, threshold, session="s", rules=RULES, contexts=None):
    parts = {
        n: Participant(
            identities[n],
            session,
            tuple(names),
            threshold,
            rules,
            (contexts or {}).get(n, "c"),
            {k: ring.encode(v, specs[k]) for k, v in inputs[n].items()},
            specs,
        )
        for n in names
    }
    return parts, Aggregator(session, threshold, specs)


def _keys_and_shares(parts, aggregator):
    """Phases 1 and 2 with everyone taking part: each institution's inbox of shares."""
    roster = aggregator.keys([p.advertise() for p in parts.values()])
    return aggregator.inboxes({n: p.share(roster) for n, p in parts.items()})


def _unmask(parts, aggregator, sent: list[str], holders) -> dict:
    """Phases 4 and 5: the holders sign the senders, then answer with the signatures shown."""
    signatures = aggregator.consistency({n: parts[n].consistency(sent) for n in holders})
    return {n: parts[n].unmask(sent, signatures) for n in holders}


def test_the_unmasked_sum_is_the_plain_sum_within_the_quantization(identities):
    names, specs = NAMES[:4], _specs(4)
    inputs = _inputs(names, specs, np.random.default_rng(0))
    parts, aggregator = _session(identities, names, inputs, specs, threshold=3)
    inboxes = _keys_and_shares(parts, aggregator)
    sent = aggregator.collect({n: p.masked(inboxes[n]) for n, p in parts.items()})
    total = aggregator.total(_unmask(parts, aggregator, sent, names))
    for vector, spec in specs.items():
        plain = np.sum([inputs[n][vector] for n in names], axis=0)
        # each input is rounded (stochastically) to a neighbouring multiple of 1/scale: the sum is within n/scale
        assert np.max(np.abs(total[vector] - plain)) <= len(names) / spec.scale * (1 + 1e-9) + abs(plain).max() * 1e-15


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
    # Uniform top bits: over all 40 coordinates (600 degrees of freedom, p < 1e-5), and no single coordinate far off
    # (15 degrees of freedom each, p < 1e-6 for any of the 40). An unmasked or badly masked input fills a few buckets
    # (chi-square in the thousands). The per-coordinate bound was 45 (p 0.6 % that one of 40 exceeds it by chance:
    # it failed CI once, at 64, with uniform masks).
    assert chi2.sum() < 759.3, chi2.sum()
    assert np.all(chi2 < 65.8), chi2.max()
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
    answers = _unmask(parts, aggregator, sent, ("alder", "birch", "cedar"))  # elm is gone
    assert "dogwood" in answers["alder"]["mask_key"] and "dogwood" not in answers["alder"]["self_seed"]
    total = aggregator.total(answers)
    plain = np.sum([inputs[n]["update"] for n in senders], axis=0)
    assert np.max(np.abs(total["update"] - plain)) <= 5 / specs["update"].scale * 1.000001
    assert np.allclose(total["sums"], np.sum([inputs[n]["sums"] for n in senders], axis=0), rtol=1e-12, atol=1e-6)


def test_below_the_threshold_nothing_is_unmasked(identities):
    names, specs = NAMES[:4], _specs(4)
    inputs = _inputs(names, specs, np.random.default_rng(3))
    parts, aggregator = _session(identities, names, inputs, specs, threshold=3)
    inboxes = _keys_and_shares(parts, aggregator)
    with pytest.raises(SecureAggregationError, match="masked inputs: only 2 institution"):
        aggregator.collect({n: parts[n].masked(inboxes[n]) for n in names[:2]})
    parts["cedar"].masked(inboxes["cedar"])
    with pytest.raises(SecureAggregationError, match=r"only 2 institution.*at least 3 \(threshold 3\) \(rule: minimum"):
        parts["cedar"].consistency(["birch", "cedar"])
    sent = aggregator.collect({n: parts[n].masked(inboxes[n]) for n in names[:3]})
    signatures = {n: parts[n].consistency(sent) for n in names[:2]}
    with pytest.raises(SecureAggregationError, match=r"only 2 valid signature.*needs 3 \(the threshold\)"):
        parts["alder"].unmask(sent, signatures)
    with pytest.raises(SecureAggregationError, match="unmasking: only 2 institution.*needs 3"):
        aggregator.total(
            {n: parts[n].unmask(sent, {**signatures, "cedar": parts["cedar"].consistency(sent)}) for n in names[:2]}
        )


def test_an_institution_signs_one_list_of_senders_and_unmasks_only_that_one(identities):
    """Asked again with another set of senders it refuses: answering both would hand the coordinator the
    self-mask and the mask key of one institution, hence its input."""
    names, specs = NAMES[:4], _specs(4)
    parts, aggregator = _session(identities, names, _inputs(names, specs, np.random.default_rng(4)), specs, 3)
    inboxes = _keys_and_shares(parts, aggregator)
    for n in names:
        parts[n].masked(inboxes[n])
    signatures = {n: parts[n].consistency(names) for n in names}
    parts["alder"].unmask(names, signatures)
    with pytest.raises(SecureAggregationError, match=r"signs one list per session \(rule: consistency"):
        parts["alder"].consistency(names[:3])
    with pytest.raises(SecureAggregationError, match="unmasks only the list it signed"):
        parts["alder"].unmask(names[:3], signatures)


def test_no_unmasking_answer_holds_both_secrets_of_one_institution(identities):
    """Whoever dropped and whenever, across every answer of a session an institution's self-seed and its mask key
    are never both shared: those who sent get self-seed shares only, those who dropped after sharing their keys
    get mask-key shares only."""
    names, specs = NAMES, _specs(5)
    parts, aggregator = _session(identities, names, _inputs(names, specs, np.random.default_rng(7)), specs, 3)
    inboxes = _keys_and_shares(parts, aggregator)
    senders = ["alder", "birch", "cedar", "elm"]  # dogwood drops after sharing its keys
    sent = aggregator.collect({n: parts[n].masked(inboxes[n]) for n in senders})
    answers = _unmask(parts, aggregator, sent, senders)
    seeds = {name for answer in answers.values() for name in answer["self_seed"]}
    keys = {name for answer in answers.values() for name in answer["mask_key"]}
    assert seeds == set(senders) and keys == {"dogwood"}
    assert not seeds & keys


def test_a_sender_declared_dropped_stays_hidden_by_its_self_mask(identities):
    """A coordinator keeps alder's masked input but tells the others alder dropped, so that they hand over alder's
    mask key and it removes every pairwise mask. What is left is still hidden by alder's self-mask, fresh and
    secret in every session: the difference of two sessions' remainders is not the difference of the two inputs
    (with a constant self-seed it would be, to the quantization, 2/scale)."""
    names, specs = NAMES[:4], _specs(4, size=50)
    remainders, hidden = [], []
    for session in ("first", "second"):
        inputs = _inputs(names, specs, np.random.default_rng(len(session)))
        parts, aggregator = _session(identities, names, inputs, specs, 3, session=session)
        inboxes = _keys_and_shares(parts, aggregator)
        masked = {n: parts[n].masked(inboxes[n]) for n in names}
        others = [n for n in names if n != "alder"]
        aggregator.collect({n: masked[n] for n in others})
        answers = _unmask(parts, aggregator, others, others)
        holders = {name: i + 1 for i, name in enumerate(aggregator.roster)}
        key = x25519.X25519PrivateKey.from_private_bytes(
            shamir.combine({holders[h]: int(a["mask_key"]["alder"], 16) for h, a in answers.items()})
        )
        assert (
            key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            == aggregator.roster["alder"].mask_key
        )  # the coordinator does hold alder's mask key
        value = masked["alder"]["update"]
        for other in others:  # alder added its pairwise masks towards the later names
            mask = ring.expand(
                _agree(key, aggregator.roster[other].mask_key, b"mask", session), "update", specs["update"]
            )
            value = ring.subtract(value, mask, specs["update"])
        remainders.append(ring.decode(value, specs["update"]))
        hidden.append(inputs["alder"]["update"])
    assert np.max(np.abs(remainders[0] - hidden[0])) > 1.0  # not the input itself
    gap = np.abs((remainders[0] - remainders[1]) - (hidden[0] - hidden[1]))
    assert np.median(gap) > 1e5 * 2 / specs["update"].scale


@pytest.mark.parametrize(
    "participants, threshold, rule, refusal",
    [
        (("alder", "birch", "coordinator"), 2, RULE_MEMBERS, r"\['coordinator'\] is not a member"),
        (("alder", "birch", "mallory"), 2, RULE_MEMBERS, r"\['mallory'\] is not a member"),
        (("alder", "birch"), 2, RULE_MIN_INPUTS, "a sum of 2 inputs is asked for; a released sum holds at least 3"),
        (("alder", "birch", "cedar", "dogwood", "elm"), 2, RULE_THRESHOLD, "threshold 2 for 5 participants"),
    ],
)
def test_a_session_outside_the_institutions_rules_is_refused_at_its_start(
    identities, participants, threshold, rule, refusal
):
    rules = Rules(frozenset(NAMES), "coordinator", min_threshold=3)
    with pytest.raises(SecureAggregationError, match=refusal) as refused:
        Participant(identities["alder"], "s", participants, threshold, rules, "c", {}, _specs(5))
    assert refused.value.rule == rule


def test_a_roster_other_than_the_participants_or_other_parameters_are_refused_at_sharing(identities):
    """The coordinator adds its own keys to the roster (its certificate is the consortium's), leaves a participant
    out, or told one institution something else (its signed parameters differ): each is refused."""
    names, specs = NAMES[:3], _specs(3)
    inputs = _inputs(names, specs, np.random.default_rng(8))
    parts, aggregator = _session(identities, names, inputs, specs, 2, contexts={"cedar": "threshold 3"})
    roster = aggregator.keys([p.advertise() for p in parts.values()])
    own = Participant(
        identities["coordinator"],
        "s",
        ("coordinator", "alder", "birch"),
        2,
        Rules(frozenset([*NAMES, "coordinator"]), "nobody", 2),
        "c",
        {},
        specs,
    ).advertise()
    with pytest.raises(
        SecureAggregationError,
        match=r"keys of \['alder', 'birch', 'cedar', 'coordinator'\], but the "
        r"session began with the participants",
    ) as refused:
        parts["alder"].share({**roster, "coordinator": own})
    assert refused.value.rule == RULE_ROSTER
    with pytest.raises(SecureAggregationError, match="relayed keys of") as refused:
        parts["alder"].share({n: roster[n] for n in ("alder", "birch")})
    assert refused.value.rule == RULE_ROSTER
    with pytest.raises(SecureAggregationError, match="'cedar' was given other session parameters") as refused:
        parts["alder"].share(roster)
    assert refused.value.rule == RULE_SAME_PARAMETERS


def test_a_list_of_senders_outside_an_institutions_view_is_not_signed(identities):
    """The coordinator delivers to alder every share but cedar's, then names cedar a sender: alder never masked
    towards cedar, so it refuses to sign (the inconsistent-views attack)."""
    names, specs = NAMES[:4], _specs(4)
    parts, aggregator = _session(identities, names, _inputs(names, specs, np.random.default_rng(9)), specs, 2)
    inboxes = _keys_and_shares(parts, aggregator)
    parts["alder"].masked({"birch": inboxes["alder"]["birch"], "dogwood": inboxes["alder"]["dogwood"]})
    with pytest.raises(SecureAggregationError, match=r"include \['cedar'\], whose keys 'alder' never received") as no:
        parts["alder"].consistency(["alder", "birch", "cedar"])
    assert no.value.rule == RULE_CONSISTENCY


def test_an_expired_or_not_yet_valid_certificate_is_refused(identities):
    advertisement = Participant(identities["alder"], "s", tuple(NAMES[:3]), 2, RULES, "c", {}, _specs(3)).advertise()
    verify(advertisement, "s", "c", identities["alder"].ca, RULES)  # valid now
    for when in (
        datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC),
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20 * 365),
    ):
        with pytest.raises(SecureAggregationError, match="the certificate of 'alder' is valid from .* not now") as no:
            verify(advertisement, "s", "c", identities["alder"].ca, RULES, now=when)
        assert no.value.rule == RULE_CERTIFICATE


def test_a_pinned_certificate_is_the_only_one_accepted(identities):
    advertisement = Participant(identities["alder"], "s", tuple(NAMES[:3]), 2, RULES, "c", {}, _specs(3)).advertise()
    with pytest.raises(SecureAggregationError, match="not the one pinned for it"):
        verify(advertisement, "s", "c", identities["alder"].ca, replace(RULES, fingerprints=(("alder", "ab" * 32),)))
    right = x509.load_pem_x509_certificate(identities["alder"].certificate).fingerprint(hashes.SHA256()).hex()
    verify(advertisement, "s", "c", identities["alder"].ca, replace(RULES, fingerprints=(("alder", right),)))


def test_no_key_or_seed_appears_in_a_repr(identities):
    specs = _specs(3)
    part = Participant(
        identities["alder"],
        "s",
        tuple(NAMES[:3]),
        2,
        RULES,
        "c",
        {"update": ring.encode(np.full(300, 0.123456), specs["update"])},
        specs,
    )
    shown = repr(part) + repr(identities["alder"])
    assert "PRIVATE KEY" not in shown and identities["alder"].key.decode()[40:80] not in shown
    assert part._self_seed.hex() not in shown and repr(part._self_seed) not in shown
    assert "X25519PrivateKey" not in shown and "array" not in shown


def test_stochastic_rounding_is_unbiased_where_nearest_rounding_is_not():
    """A small institution's coordinate of a quarter step: rounded to nearest it would always vanish; rounded
    stochastically its mean over many encodings is the value (within 4 standard errors)."""
    spec = VectorSpec(20_000, 32, 1000.0)
    value = np.full(spec.size, 0.00025)  # a quarter of 1/scale
    decoded = ring.decode(ring.encode(value, spec), spec)
    assert set(np.unique(decoded)) == {0.0, 0.001}
    standard_error = np.sqrt(0.25 * 0.75 / spec.size) / spec.scale
    assert abs(decoded.mean() - 0.00025) < 4 * standard_error
    negative = ring.decode(ring.encode(-value, spec), spec)
    assert abs(negative.mean() + 0.00025) < 4 * standard_error


def test_a_coordinator_that_substitutes_a_public_key_is_detected(identities):
    """The coordinator swaps cedar's mask key for one it holds (so it could unmask cedar): the others see that
    the key is not signed by cedar. Re-signing it with its own certificate, or with a certificate named cedar
    from another CA, is caught too; so is a change to an institution's own keys."""
    names, specs = NAMES[:3], _specs(3)
    parts, aggregator = _session(identities, names, _inputs(names, specs, np.random.default_rng(5)), specs, 2)
    roster = aggregator.keys([p.advertise() for p in parts.values()])
    mine = (
        x25519.X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
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
    assert (
        x509.load_pem_x509_certificate(rogue.certificate).subject
        == x509.load_pem_x509_certificate(identities["cedar"].certificate).subject
    )
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
