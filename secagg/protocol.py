"""The secure-aggregation protocol of Bonawitz et al. (CCS 2017), one session per sum, in its variant secure
against a coordinator that deviates from it (consistency round, signed views).

An institution's vectors are hidden by a self-mask (from a fresh seed b) and by pairwise masks (from an X25519
agreement with each other institution) that cancel in the sum. Both secrets are Shamir-shared among the
participants (threshold t), each share encrypted to its holder, so that the coordinator can remove the masks
of the sum, and of institutions that dropped, but of no single institution that sent its input:

1. advertise: fresh X25519 key pairs (one to encrypt shares, one for masks), signed with the institution's
   TLS key together with a digest of the session's public parameters (participants, threshold, encoding);
   each participant checks every signature against the consortium CA, the certificate's validity and the
   consortium's member list, and that every other participant was told the same parameters;
2. share: shares of b and of the mask key, encrypted (AES-GCM) to each other participant, relayed; the roster
   must be exactly the participants named when the session began;
3. mask: the masked vectors (pairwise masks with everyone whose shares arrived: U2);
4. consistency: the coordinator names who sent a masked vector (U3); each participant that sent one checks U3
   against its own view (U3 within U2, at least max(t, minimum inputs)) and signs it, once per session;
5. unmask: shown at least t valid signatures on the U3 it signed itself, each participant returns its share
   of b for those in U3, and of the mask key for those in its U2 that are not; never both for one institution.

What an institution accepts is its own (`Rules`, from its node's config): participants that are consortium
members (never the coordinator), a threshold no lower than its floor, at least its minimum of inputs in any
released sum. Keys are fresh per session (a sum), so rebuilding a dropped institution's mask key reveals
nothing about its earlier inputs. With t shares needed, the coordinator and up to t - 1 institutions together
learn nothing beyond the sum of the other institutions' vectors.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
from dataclasses import dataclass, field

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from secagg import ring, shamir
from secagg.ring import VectorSpec

MIN_INSTITUTIONS = 3  # a sum of two inputs reveals each to the other
PROTOCOL = b"fedrisk-secagg-v2"

# The rules an institution applies to every session; a refusal names the one it broke.
RULE_MEMBERS = "members only"
RULE_ROSTER = "roster is the participants"
RULE_THRESHOLD = "threshold floor"
RULE_MIN_INPUTS = "minimum inputs"
RULE_SAME_PARAMETERS = "same parameters for all"
RULE_CERTIFICATE = "consortium certificate"
RULE_CONSISTENCY = "consistency before unmasking"
RULE_ONE_SUM = "one sum per input"
RULE_ENCODING = "encoding belongs to the run"


class SecureAggregationError(RuntimeError):
    """A session that cannot go on: a forged key, too few participants, a bad share; the message says which,
    and `rule` names the rule a refusal applies (None for a fault)."""

    def __init__(self, message: str, rule: str | None = None):
        super().__init__(f"{message} (rule: {rule})" if rule else message)
        self.rule = rule


@dataclass(frozen=True)
class Identity:
    """An institution's TLS identity (PEM): its certificate and key sign its keys; the consortium CA checks
    everyone else's. The key never appears in a repr."""

    name: str
    certificate: bytes
    key: bytes = field(repr=False)
    ca: bytes = field(repr=False)

    def sign(self, payload: bytes) -> bytes:
        key = serialization.load_pem_private_key(self.key, password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(payload, ec.ECDSA(hashes.SHA256()))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        raise SecureAggregationError(f"institution '{self.name}': a {type(key).__name__} key cannot sign its keys")


def default_threshold(institutions: int) -> int:
    """A strict majority (at least 2): the sum survives up to n - t institutions dropping, and no two disjoint
    groups of t can each answer an unmasking."""
    return max(2, institutions // 2 + 1)


@dataclass(frozen=True)
class Rules:
    """What one institution accepts in any secure sum, whatever the coordinator asks (its node's config): who the
    consortium's members are (the coordinator is never one), the lowest threshold and the fewest inputs in a
    released sum, and optionally each member's pinned certificate (SHA-256 of its DER bytes, hex)."""

    members: frozenset[str]
    coordinator: str
    min_threshold: int
    min_inputs: int = MIN_INSTITUTIONS
    fingerprints: tuple[tuple[str, str], ...] = ()

    def check_session(self, me: str, participants: tuple[str, ...], threshold: int) -> None:
        """Refuse a session whose participants or threshold fall outside these rules."""
        if len(set(participants)) != len(participants):
            raise SecureAggregationError(
                f"the participants {list(participants)} name an institution twice", RULE_MEMBERS
            )
        if me not in participants:
            raise SecureAggregationError(f"'{me}' is not among the participants {list(participants)}", RULE_MEMBERS)
        strangers = sorted(p for p in participants if p not in self.members or p == self.coordinator)
        if strangers:
            raise SecureAggregationError(
                f"{strangers} {'is' if len(strangers) == 1 else 'are'} not a member of the consortium "
                f"{sorted(self.members)}; only members take part in a secure sum, never the coordinator",
                RULE_MEMBERS,
            )
        if len(participants) < self.min_inputs:
            raise SecureAggregationError(
                f"a sum of {len(participants)} inputs is asked for; a released sum holds at least {self.min_inputs}",
                RULE_MIN_INPUTS,
            )
        if not self.min_threshold <= threshold <= len(participants):
            raise SecureAggregationError(
                f"threshold {threshold} for {len(participants)} participants is asked for; the threshold must be at "
                f"least {self.min_threshold} (of {len(self.members)} members) and at most the participants",
                RULE_THRESHOLD,
            )

    def pinned(self, institution: str) -> str | None:
        return dict(self.fingerprints).get(institution)


def context_digest(parameters: dict) -> str:
    """The digest of a session's public parameters that every advertisement signs: institutions told different
    things by the coordinator (participants, threshold, encoding, the weights they train from) see it."""
    return hashlib.sha256(json.dumps(parameters, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Advertisement:
    """An institution's public keys for one session and the digest of the parameters it was given, signed with
    its TLS key."""

    institution: str
    session: str
    context: str
    encryption_key: bytes
    mask_key: bytes
    certificate: bytes
    signature: bytes

    def payload(self) -> bytes:
        return b"|".join(
            [
                PROTOCOL,
                b"keys",
                self.session.encode(),
                self.institution.encode(),
                self.context.encode(),
                self.encryption_key,
                self.mask_key,
            ]
        )

    def as_dict(self) -> dict:
        return {
            "institution": self.institution,
            "session": self.session,
            "context": self.context,
            "encryption_key": self.encryption_key.hex(),
            "mask_key": self.mask_key.hex(),
            "certificate": self.certificate.decode(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, plain: dict) -> Advertisement:
        return cls(
            plain["institution"],
            plain["session"],
            plain["context"],
            bytes.fromhex(plain["encryption_key"]),
            bytes.fromhex(plain["mask_key"]),
            plain["certificate"].encode(),
            bytes.fromhex(plain["signature"]),
        )


def _signed_by(certificate: x509.Certificate, signature: bytes, payload: bytes) -> bool:
    public = certificate.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def verify(
    advertisement: Advertisement,
    session: str,
    context: str,
    ca_pem: bytes,
    rules: Rules,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """That `advertisement` is for `session` and this institution's `context`, signed by a valid consortium
    certificate of a member it names; its certificate, or SecureAggregationError."""
    who = advertisement.institution
    if advertisement.session != session:
        raise SecureAggregationError(f"the keys of '{who}' are for another session", RULE_SAME_PARAMETERS)
    try:
        certificate = x509.load_pem_x509_certificate(advertisement.certificate)
        ca = x509.load_pem_x509_certificate(ca_pem)
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise SecureAggregationError(
            f"the certificate sent with the keys of '{who}' is not issued by the consortium CA: the coordinator "
            f"relayed keys that are not that institution's",
            RULE_CERTIFICATE,
        ) from None
    now = now or datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise SecureAggregationError(
            f"the certificate of '{who}' is valid from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now",
            RULE_CERTIFICATE,
        )
    names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [who]:
        raise SecureAggregationError(
            f"the keys said to be '{who}'s are signed by the certificate of {names}: the coordinator substituted them",
            RULE_CERTIFICATE,
        )
    if who not in rules.members or who == rules.coordinator:
        raise SecureAggregationError(
            f"keys from '{who}', who is not a member of the consortium {sorted(rules.members)}", RULE_MEMBERS
        )
    pinned = rules.pinned(who)
    if pinned and certificate.fingerprint(hashes.SHA256()).hex() != pinned.lower().replace(":", ""):
        raise SecureAggregationError(
            f"the certificate of '{who}' is not the one pinned for it in this institution's config", RULE_CERTIFICATE
        )
    if not _signed_by(certificate, advertisement.signature, advertisement.payload()):
        raise SecureAggregationError(
            f"the public keys relayed for '{who}' are not signed by '{who}': the coordinator substituted a key; "
            f"this institution sends nothing more in this session",
            RULE_CERTIFICATE,
        )
    if advertisement.context != context:
        raise SecureAggregationError(
            f"'{who}' was given other session parameters (participants, threshold, encoding or weights) than this "
            f"institution: the coordinator told the institutions different things",
            RULE_SAME_PARAMETERS,
        )
    return certificate


def consistency_payload(session: str, context: str, sent: tuple[str, ...]) -> bytes:
    """What a participant signs in the consistency round: the set of senders (U3) it agrees to unmask."""
    return b"|".join([PROTOCOL, b"consistency", session.encode(), context.encode(), ",".join(sent).encode()])


def _agree(private: x25519.X25519PrivateKey, public: bytes, purpose: bytes, session: str) -> bytes:
    shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(public))
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"fedrisk-secagg-" + purpose + b"|" + session.encode()).derive(
        shared
    )


def _raw(private: x25519.X25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _public(private: x25519.X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class Participant:
    """One institution's side of one session: its vectors stay here, masked before they leave. The participants
    and threshold are fixed when it begins (and checked against the institution's rules); no secret appears in
    a repr."""

    identity: Identity
    session: str
    participants: tuple[str, ...]
    threshold: int
    rules: Rules
    context: str
    vectors: dict[str, np.ndarray] = field(repr=False)  # ring elements
    specs: dict[str, VectorSpec]
    _encryption: x25519.X25519PrivateKey = field(default_factory=x25519.X25519PrivateKey.generate, repr=False)
    _mask: x25519.X25519PrivateKey = field(default_factory=x25519.X25519PrivateKey.generate, repr=False)
    _self_seed: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _roster: dict[str, Advertisement] = field(default_factory=dict, repr=False)
    _certificates: dict[str, x509.Certificate] = field(default_factory=dict, repr=False)
    _held: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # from -> (mask key, seed) shares
    _shared: tuple[str, ...] = ()  # U2: who sent this institution its shares (itself included)
    _signed: tuple[str, ...] | None = None  # U3 as this institution signed it

    def __post_init__(self) -> None:
        self.participants = tuple(sorted(self.participants))
        self.rules.check_session(self.name, self.participants, self.threshold)

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def least(self) -> int:
        """The fewest institutions any phase may go on with: the threshold, and never below the minimum inputs."""
        return max(self.threshold, self.rules.min_inputs)

    def advertise(self) -> Advertisement:
        unsigned = Advertisement(
            self.name,
            self.session,
            self.context,
            _public(self._encryption),
            _public(self._mask),
            self.identity.certificate,
            b"",
        )
        return Advertisement(**{**unsigned.__dict__, "signature": self.identity.sign(unsigned.payload())})

    def share(self, roster: dict[str, Advertisement]) -> dict[str, bytes]:
        """Check every relayed key, then share this institution's secrets: one encrypted share per participant."""
        if sorted(roster) != list(self.participants):
            raise SecureAggregationError(
                f"the coordinator relayed keys of {sorted(roster)}, but the session began with the participants "
                f"{list(self.participants)}",
                RULE_ROSTER,
            )
        mine = roster[self.name]
        if (mine.encryption_key, mine.mask_key) != (_public(self._encryption), _public(self._mask)):
            raise SecureAggregationError(
                f"the coordinator relayed keys for '{self.name}' that are not its own", RULE_CERTIFICATE
            )
        for name, advertisement in roster.items():
            if advertisement.institution != name:
                raise SecureAggregationError(
                    f"the keys listed for '{name}' are '{advertisement.institution}'s", RULE_ROSTER
                )
            self._certificates[name] = verify(advertisement, self.session, self.context, self.identity.ca, self.rules)
        self._roster = dict(sorted(roster.items()))
        holders = self._holders()
        mask_shares = shamir.split(_raw(self._mask), list(holders.values()), self.threshold)
        seed_shares = shamir.split(self._self_seed, list(holders.values()), self.threshold)
        sealed = {}
        for other, x in holders.items():
            shares = (mask_shares[x], seed_shares[x])
            if other == self.name:
                self._held[self.name] = shares
                continue
            key = _agree(self._encryption, self._roster[other].encryption_key, b"shares", self.session)
            nonce = secrets.token_bytes(12)
            plain = json.dumps([hex(shares[0]), hex(shares[1])]).encode()
            sealed[other] = nonce + AESGCM(key).encrypt(nonce, plain, self._aad(self.name, other))
        return sealed

    def _holders(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self._roster)}

    def _aad(self, sender: str, recipient: str) -> bytes:
        return f"{self.session}|{sender}|{recipient}".encode()

    def masked(self, inbox: dict[str, bytes]) -> dict[str, np.ndarray]:
        """Open the shares sent to this institution (U2: their senders), and mask its vectors: the self-mask
        plus a pairwise mask with each other member of U2 (added towards later names, subtracted towards earlier)."""
        if not self._roster:
            raise SecureAggregationError("asked for its masked input before the keys were shared", RULE_CONSISTENCY)
        senders = set(inbox) | {self.name}
        if len(senders) < self.least:
            raise SecureAggregationError(
                f"only {len(senders)} institution(s) shared their keys with '{self.name}'; "
                f"it masks its input only in a sum of at least {self.least} (threshold "
                f"{self.threshold})",
                RULE_MIN_INPUTS,
            )
        for sender, sealed in inbox.items():
            if sender not in self._roster or sender == self.name:
                raise SecureAggregationError(f"a share from '{sender}', who is not in this session", RULE_ROSTER)
            key = _agree(self._encryption, self._roster[sender].encryption_key, b"shares", self.session)
            try:
                plain = AESGCM(key).decrypt(sealed[:12], sealed[12:], self._aad(sender, self.name))
            except InvalidTag:
                raise SecureAggregationError(f"the share from '{sender}' was altered on its way") from None
            mask_share, seed_share = (int(v, 16) for v in json.loads(plain))
            self._held[sender] = (mask_share, seed_share)
        masked = {}
        for name, vector in self.vectors.items():
            spec = self.specs[name]
            value = ring.add(vector, ring.expand(self._self_seed, name, spec), spec)
            for other in sorted(senders - {self.name}):
                seed = _agree(self._mask, self._roster[other].mask_key, b"mask", self.session)
                mask = ring.expand(seed, name, spec)
                value = ring.add(value, mask, spec) if self.name < other else ring.subtract(value, mask, spec)
            masked[name] = value
        self._shared = tuple(sorted(senders))
        return masked

    def consistency(self, sent: list[str]) -> bytes:
        """Sign the coordinator's list of senders (U3) if it agrees with this institution's view: it sent its own
        masked input, every sender shared keys with it (U3 within U2), and there are enough of them. Once per
        session: a second, different list is refused."""
        sent_set = tuple(sorted(set(sent)))
        if not self._shared:
            raise SecureAggregationError(
                f"'{self.name}' sent no masked input in this session; it signs no list of senders", RULE_CONSISTENCY
            )
        if self._signed is not None and self._signed != sent_set:
            raise SecureAggregationError(
                f"asked to sign the senders {list(sent_set)} after signing "
                f"{list(self._signed)}: this institution signs one list per session",
                RULE_CONSISTENCY,
            )
        if self.name not in sent_set:
            raise SecureAggregationError(
                f"the senders {list(sent_set)} leave out '{self.name}', which sent its masked input", RULE_CONSISTENCY
            )
        unknown = sorted(set(sent_set) - set(self._shared))
        if unknown:
            raise SecureAggregationError(
                f"the senders named include {unknown}, whose keys '{self.name}' never "
                f"received: the coordinator shows the institutions different views",
                RULE_CONSISTENCY,
            )
        if len(sent_set) < self.least:
            raise SecureAggregationError(
                f"only {len(sent_set)} institution(s) sent masked inputs; a released sum "
                f"holds at least {self.least} (threshold {self.threshold})",
                RULE_MIN_INPUTS,
            )
        self._signed = sent_set
        return self.identity.sign(consistency_payload(self.session, self.context, sent_set))

    def unmask(self, sent: list[str], signatures: dict[str, bytes]) -> dict[str, dict[str, str]]:
        """Shares for the coordinator, only for the list of senders this institution signed and shown at least t
        valid signatures on it from those senders: of the self-seed of each sender, of the mask key of each that
        shared its keys but did not send (never both for one institution)."""
        sent_set = tuple(sorted(set(sent)))
        if self._signed is None or self._signed != sent_set:
            raise SecureAggregationError(
                f"asked to unmask the senders {list(sent_set)}; '{self.name}' signed "
                f"{list(self._signed) if self._signed else 'no list'}: it unmasks only the "
                f"list it signed",
                RULE_CONSISTENCY,
            )
        payload = consistency_payload(self.session, self.context, sent_set)
        valid = sorted(
            name
            for name, signature in signatures.items()
            if name in sent_set
            and name in self._certificates
            and _signed_by(self._certificates[name], signature, payload)
        )
        if len(valid) < self.threshold:
            raise SecureAggregationError(
                f"only {len(valid)} valid signature(s) on the senders {list(sent_set)} ({valid}); unmasking needs "
                f"{self.threshold} (the threshold) from the senders themselves",
                RULE_CONSISTENCY,
            )
        return {
            "self_seed": {name: hex(self._held[name][1]) for name in sent_set if name in self._held},
            "mask_key": {
                name: hex(self._held[name][0]) for name in self._shared if name not in sent_set and name in self._held
            },
        }


@dataclass
class Aggregator:
    """The coordinator's side of one session: relays keys and shares, adds the masked vectors, gathers the
    signatures on who sent, and removes the masks from the sum (it never holds one institution's vector
    unmasked)."""

    session: str
    threshold: int
    specs: dict[str, VectorSpec]
    min_inputs: int = MIN_INSTITUTIONS
    roster: dict[str, Advertisement] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)  # U2
    sent: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # U3 -> masked vectors
    signatures: dict[str, bytes] = field(default_factory=dict)  # U4 -> its signature on U3

    def _need(self, count: int, phase: str) -> None:
        if count < self.threshold:
            raise SecureAggregationError(
                f"{phase}: only {count} institution(s) completed; the secure sum needs {self.threshold} (its threshold)"
            )
        if count < self.min_inputs:
            raise SecureAggregationError(
                f"{phase}: only {count} institution(s) completed; a secure sum needs at "
                f"least {self.min_inputs} (a sum of two inputs reveals each to the other)"
            )

    def keys(self, advertisements: list[Advertisement]) -> dict[str, Advertisement]:
        self.roster = dict(sorted((a.institution, a) for a in advertisements))
        self._need(len(self.roster), "key exchange")
        return self.roster

    def inboxes(self, sealed: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """Shares regrouped by recipient; U2 is who sent them."""
        self.shared = sorted(sealed)
        self._need(len(self.shared), "sharing of keys")
        return {
            recipient: {sender: boxes[recipient] for sender, boxes in sealed.items() if recipient in boxes}
            for recipient in self.shared
        }

    def collect(self, masked: dict[str, dict[str, np.ndarray]]) -> list[str]:
        self.sent = {name: vectors for name, vectors in masked.items() if name in self.shared}
        self._need(len(self.sent), "masked inputs")
        return sorted(self.sent)

    def consistency(self, signatures: dict[str, bytes]) -> dict[str, bytes]:
        """The senders' signatures on U3 (each checked by every institution before it unmasks)."""
        self.signatures = {name: signature for name, signature in signatures.items() if name in self.sent}
        self._need(len(self.signatures), "consistency check")
        return self.signatures

    def total(self, answers: dict[str, dict[str, dict[str, str]]]) -> dict[str, np.ndarray]:
        """The decoded sum of the senders' vectors, from at least t institutions' shares."""
        self._need(len(answers), "unmasking")
        holders = {name: i + 1 for i, name in enumerate(self.roster)}
        sums = {}
        for vector, spec in self.specs.items():
            total = ring.zeros(spec)
            for values in self.sent.values():
                total = ring.add(total, values[vector], spec)
            sums[vector] = total
        for name in self.sent:
            seed = shamir.combine(
                {holders[h]: int(a["self_seed"][name], 16) for h, a in answers.items() if name in a["self_seed"]}
            )
            for vector, spec in self.specs.items():
                sums[vector] = ring.subtract(sums[vector], ring.expand(seed, vector, spec), spec)
        for dropped in sorted(set(self.shared) - set(self.sent)):
            key = x25519.X25519PrivateKey.from_private_bytes(
                shamir.combine(
                    {
                        holders[h]: int(a["mask_key"][dropped], 16)
                        for h, a in answers.items()
                        if dropped in a["mask_key"]
                    }
                )
            )
            if _public(key) != self.roster[dropped].mask_key:
                raise SecureAggregationError(f"the shares of '{dropped}'s mask key do not rebuild it")
            for name in self.sent:  # name's vector holds +mask towards later names, -mask towards earlier
                seed = _agree(key, self.roster[name].mask_key, b"mask", self.session)
                for vector, spec in self.specs.items():
                    mask = ring.expand(seed, vector, spec)
                    sums[vector] = (
                        ring.subtract(sums[vector], mask, spec)
                        if name < dropped
                        else ring.add(sums[vector], mask, spec)
                    )
        return {vector: ring.decode(total, self.specs[vector]) for vector, total in sums.items()}
