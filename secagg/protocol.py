"""The secure-aggregation protocol of Bonawitz et al. (CCS 2017), one session per sum, semi-honest coordinator.

An institution's vectors are hidden by a self-mask (from a fresh seed b) and by pairwise masks (from an X25519
agreement with each other institution) that cancel in the sum. Both secrets are Shamir-shared among the
participants (threshold t), each share encrypted to its holder, so that the coordinator can remove the masks
of the sum, and of institutions that dropped, but of no single institution that sent its input:

1. advertise: fresh X25519 key pairs (one to encrypt shares, one for masks), signed with the institution's
   TLS key; the coordinator relays them with the certificates, and each participant checks every signature
   against the consortium CA (a coordinator that substitutes a key is detected);
2. share: shares of b and of the mask key, encrypted (AES-GCM) to each other participant, relayed;
3. mask: the masked vectors (pairwise masks with everyone whose shares arrived: U2);
4. unmask: given who sent a masked vector (U3, at least t), each participant returns its share of b for
   those, and of the mask key for those in U2 that did not; never both for one institution.

Keys are fresh per session (a sum), so rebuilding a dropped institution's mask key reveals nothing about
its earlier inputs. With t shares needed, the coordinator and up to t - 1 institutions together learn
nothing beyond the sum of the other institutions' vectors.
"""

from __future__ import annotations

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


class SecureAggregationError(RuntimeError):
    """A session that cannot go on: a forged key, too few participants, a bad share; the message says which."""


@dataclass(frozen=True)
class Identity:
    """An institution's TLS identity (PEM): its certificate and key sign its keys; the consortium CA checks
    everyone else's."""

    name: str
    certificate: bytes
    key: bytes
    ca: bytes

    def sign(self, payload: bytes) -> bytes:
        key = serialization.load_pem_private_key(self.key, password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(payload, ec.ECDSA(hashes.SHA256()))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        raise SecureAggregationError(f"institution '{self.name}': a {type(key).__name__} key cannot sign its keys")


@dataclass(frozen=True)
class Advertisement:
    """An institution's public keys for one session, signed with its TLS key."""

    institution: str
    session: str
    encryption_key: bytes
    mask_key: bytes
    certificate: bytes
    signature: bytes

    def payload(self) -> bytes:
        return b"|".join([b"fedrisk-secagg-v1", self.session.encode(), self.institution.encode(),
                          self.encryption_key, self.mask_key])

    def as_dict(self) -> dict:
        return {"institution": self.institution, "session": self.session, "encryption_key": self.encryption_key.hex(),
                "mask_key": self.mask_key.hex(), "certificate": self.certificate.decode(),
                "signature": self.signature.hex()}

    @classmethod
    def from_dict(cls, plain: dict) -> Advertisement:
        return cls(plain["institution"], plain["session"], bytes.fromhex(plain["encryption_key"]),
                   bytes.fromhex(plain["mask_key"]), plain["certificate"].encode(), bytes.fromhex(plain["signature"]))


def verify(advertisement: Advertisement, session: str, ca_pem: bytes) -> None:
    """That `advertisement` is for `session` and signed by the consortium certificate of the institution it
    names; SecureAggregationError otherwise."""
    who = advertisement.institution
    if advertisement.session != session:
        raise SecureAggregationError(f"the keys of '{who}' are for another session")
    try:
        certificate = x509.load_pem_x509_certificate(advertisement.certificate)
        ca = x509.load_pem_x509_certificate(ca_pem)
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise SecureAggregationError(
            f"the certificate sent with the keys of '{who}' is not issued by the consortium CA: the coordinator "
            f"relayed keys that are not that institution's") from None
    names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [who]:
        raise SecureAggregationError(f"the keys said to be '{who}'s are signed by the certificate of {names}: the "
                                     f"coordinator substituted them")
    public = certificate.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(advertisement.signature, advertisement.payload(), ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(advertisement.signature, advertisement.payload(), padding.PKCS1v15(), hashes.SHA256())
        else:
            raise InvalidSignature()
    except InvalidSignature:
        raise SecureAggregationError(
            f"the public keys relayed for '{who}' are not signed by '{who}': the coordinator substituted a key; "
            f"this institution sends nothing more in this session") from None


def _agree(private: x25519.X25519PrivateKey, public: bytes, purpose: bytes, session: str) -> bytes:
    shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(public))
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"fedrisk-secagg-" + purpose + b"|" + session.encode()).derive(
        shared)


def _raw(private: x25519.X25519PrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())


def _public(private: x25519.X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def default_threshold(institutions: int) -> int:
    """A majority (at least 2): the sum survives up to n - t institutions dropping."""
    return max(2, institutions // 2 + 1)


@dataclass
class Participant:
    """One institution's side of one session: its vectors stay here, masked before they leave."""

    identity: Identity
    session: str
    vectors: dict[str, np.ndarray]  # ring elements
    specs: dict[str, VectorSpec]
    threshold: int
    _encryption: x25519.X25519PrivateKey = field(default_factory=x25519.X25519PrivateKey.generate)
    _mask: x25519.X25519PrivateKey = field(default_factory=x25519.X25519PrivateKey.generate)
    _self_seed: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _roster: dict[str, Advertisement] = field(default_factory=dict)
    _held: dict[str, tuple[int, int]] = field(default_factory=dict)  # from -> (mask key share, self seed share)
    _shared: tuple[str, ...] = ()  # U2: who sent this institution its shares (itself included)
    _unmasked: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return self.identity.name

    def advertise(self) -> Advertisement:
        unsigned = Advertisement(self.name, self.session, _public(self._encryption), _public(self._mask),
                                 self.identity.certificate, b"")
        return Advertisement(**{**unsigned.__dict__, "signature": self.identity.sign(unsigned.payload())})

    def share(self, roster: dict[str, Advertisement]) -> dict[str, bytes]:
        """Check every relayed key, then share this institution's secrets: one encrypted share per participant."""
        if len(roster) < max(self.threshold, MIN_INSTITUTIONS):
            raise SecureAggregationError(
                f"only {len(roster)} institution(s) took part; a secure sum needs at least "
                f"{max(self.threshold, MIN_INSTITUTIONS)}")
        mine = roster.get(self.name)
        if mine is None or (mine.encryption_key, mine.mask_key) != (_public(self._encryption), _public(self._mask)):
            raise SecureAggregationError(f"the coordinator relayed keys for '{self.name}' that are not its own")
        for advertisement in roster.values():
            verify(advertisement, self.session, self.identity.ca)
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
        senders = set(inbox) | {self.name}
        if len(senders) < self.threshold:
            raise SecureAggregationError(f"only {len(senders)} institution(s) shared their keys; the threshold is "
                                         f"{self.threshold}")
        for sender, sealed in inbox.items():
            if sender not in self._roster or sender == self.name:
                raise SecureAggregationError(f"a share from '{sender}', who is not in this session")
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

    def unmask(self, sent: list[str]) -> dict[str, dict[str, str]]:
        """Shares for the coordinator: of the self-seed of each institution that sent its masked vectors, of
        the mask key of each that shared its keys but did not. Answered for one set of senders only."""
        sent = tuple(sorted(sent))
        if self._unmasked is not None and self._unmasked != sent:
            raise SecureAggregationError("asked again with other senders: this institution answers one unmasking")
        if len(sent) < self.threshold:
            raise SecureAggregationError(f"only {len(sent)} institution(s) sent masked vectors; the threshold is "
                                         f"{self.threshold}: nothing is unmasked")
        if not set(sent) <= set(self._shared):
            raise SecureAggregationError("the coordinator named senders that never shared their keys")
        self._unmasked = sent
        return {"self_seed": {name: hex(self._held[name][1]) for name in sent if name in self._held},
                "mask_key": {name: hex(self._held[name][0]) for name in self._shared
                             if name not in sent and name in self._held}}


@dataclass
class Aggregator:
    """The coordinator's side of one session: relays keys and shares, adds the masked vectors, and removes the
    masks from the sum (it never holds one institution's vector unmasked)."""

    session: str
    threshold: int
    specs: dict[str, VectorSpec]
    roster: dict[str, Advertisement] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)  # U2
    sent: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # U3 -> masked vectors

    def _need(self, count: int, phase: str) -> None:
        if count < self.threshold:
            raise SecureAggregationError(f"{phase}: only {count} institution(s) completed; the secure sum needs "
                                         f"{self.threshold} (its threshold)")

    def keys(self, advertisements: list[Advertisement]) -> dict[str, Advertisement]:
        self.roster = dict(sorted((a.institution, a) for a in advertisements))
        self._need(len(self.roster), "key exchange")
        if len(self.roster) < MIN_INSTITUTIONS:
            raise SecureAggregationError(f"key exchange: only {len(self.roster)} institution(s) completed; a secure "
                                         f"sum needs at least {MIN_INSTITUTIONS} (a sum of two inputs reveals each to "
                                         f"the other)")
        return self.roster

    def inboxes(self, sealed: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """Shares regrouped by recipient; U2 is who sent them."""
        self.shared = sorted(sealed)
        self._need(len(self.shared), "sharing of keys")
        return {recipient: {sender: boxes[recipient] for sender, boxes in sealed.items() if recipient in boxes}
                for recipient in self.shared}

    def collect(self, masked: dict[str, dict[str, np.ndarray]]) -> list[str]:
        self.sent = {name: vectors for name, vectors in masked.items() if name in self.shared}
        self._need(len(self.sent), "masked inputs")
        return sorted(self.sent)

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
            seed = shamir.combine({holders[h]: int(a["self_seed"][name], 16) for h, a in answers.items()
                                   if name in a["self_seed"]})
            for vector, spec in self.specs.items():
                sums[vector] = ring.subtract(sums[vector], ring.expand(seed, vector, spec), spec)
        for dropped in sorted(set(self.shared) - set(self.sent)):
            key = x25519.X25519PrivateKey.from_private_bytes(shamir.combine(
                {holders[h]: int(a["mask_key"][dropped], 16) for h, a in answers.items() if dropped in a["mask_key"]}))
            if _public(key) != self.roster[dropped].mask_key:
                raise SecureAggregationError(f"the shares of '{dropped}'s mask key do not rebuild it")
            for name in self.sent:  # name's vector holds +mask towards later names, -mask towards earlier
                seed = _agree(key, self.roster[name].mask_key, b"mask", self.session)
                for vector, spec in self.specs.items():
                    mask = ring.expand(seed, vector, spec)
                    sums[vector] = ring.subtract(sums[vector], mask, spec) if name < dropped else ring.add(
                        sums[vector], mask, spec)
        return {vector: ring.decode(total, self.specs[vector]) for vector, total in sums.items()}
