"""A certificate authority for a consortium (`fedrisk pki init`, `issue`, `request`, `sign`).

One CA, one certificate per institution and one for the coordinator, each naming its holder (CN and a DNS
subject alternative name), so a node can accept only the coordinator and the coordinator can tell one
institution's node from another's. ECDSA P-256 keys, written with mode 0600 from their creation. `issue` makes
key and certificate where the CA is (trying a consortium on one machine); `request` makes an institution's key
and a certificate signing request at the institution, and `sign` turns the request into a certificate at the
CA, so that no private key ever leaves its holder. Production consortia may bring their own CA and
certificates (same file layout: ca.crt, NAME.crt, NAME.key).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "ca"
VALID_DAYS = 365
WARN_DAYS = 30  # a node warns this long before its certificate expires
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_HOLDER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class PkiError(ValueError):
    """A CA or certificate that cannot be created or read; the message names the file."""


def _write_key(path: Path, key: PrivateKeyTypes, force: bool = False) -> None:
    """The key in PEM, readable by its owner only from the moment the file exists (never world-readable)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        handle = os.open(path, flags, 0o600)
    except FileExistsError:
        raise PkiError(f"{path} already exists: a key is never overwritten without --force") from None
    os.fchmod(handle, 0o600)  # an existing file keeps its old mode on O_TRUNC
    with os.fdopen(handle, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def _refuse_overwrite(force: bool, *paths: Path) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise PkiError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: pass --force to "
            f"replace {'it' if len(existing) == 1 else 'them'}"
        )


def holder_name(name: str) -> str:
    """A certificate holder's name: an institution's name (lowercase letters, digits, _ and -) or coordinator."""
    if not _HOLDER.match(name):
        raise PkiError(f"{name!r} is not a holder name: lowercase letters, digits, _ and -, at most 63 characters")
    return name


def host_name(host: str) -> x509.GeneralName:
    """A host a holder is reached at: an IP address, or a DNS name (letters, digits and hyphens in dot-separated
    labels). Something that starts like an IPv4 address but is not one ('10.77.0.1b') is refused."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.lower().rstrip(".").split(".")
    if (
        re.match(r"^\d+\.\d+", host)
        or ":" in host
        or len(host) > 253
        or not all(_DNS_LABEL.match(label) for label in labels)
    ):
        raise PkiError(f"--host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.lower().rstrip("."))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrisk consortium (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def init_ca(directory: Path, common_name: str = "fedrisk development CA") -> Path:
    """Create `directory/ca.crt` and `ca.key` (refuses to overwrite an existing CA)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{CA_NAME}.crt", directory / f"{CA_NAME}.key"
    if cert_path.exists() or key_path.exists():
        raise PkiError(f"{cert_path} already exists: a consortium keeps its CA (delete the directory to start over)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def _ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        ca_cert = x509.load_pem_x509_certificate((directory / f"{CA_NAME}.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((directory / f"{CA_NAME}.key").read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(f"no CA in {directory}: run `fedrisk pki init --dir {directory}` first") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{directory / (CA_NAME + '.key')} is not an elliptic-curve key (fedrisk pki init makes one)")
    return ca_cert, ca_key


def _certificate(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    name: str,
    public_key: CertificatePublicKeyTypes,
    names: list[x509.GeneralName],
    days: int = VALID_DAYS,
    start: datetime.datetime | None = None,
) -> x509.Certificate:
    start = start or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def issue(
    directory: Path,
    name: str,
    hosts: tuple[str, ...] = (),
    force: bool = False,
    days: int = VALID_DAYS,
    start: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """Create `directory/NAME.crt` and `NAME.key`, signed by the CA there: CN and DNS name NAME, plus `hosts`
    (DNS names or IP addresses the holder is reached at). Usable as a TLS server and client certificate. Refuses
    to replace an existing certificate or key unless `force`."""
    directory = Path(directory)
    names = [x509.DNSName(holder_name(name)), *(host_name(h) for h in hosts)]
    ca_cert, ca_key = _ca(directory)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    _refuse_overwrite(force, cert_path, key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(ca_cert, ca_key, name, key.public_key(), names, days, start)
    _write_key(key_path, key, force)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def request(directory: Path, name: str, hosts: tuple[str, ...] = (), force: bool = False) -> tuple[Path, Path]:
    """At the institution: its key `directory/NAME.key` (mode 0600, it never leaves) and a certificate signing
    request `NAME.csr` naming NAME and `hosts`, to send to the consortium's CA."""
    directory = Path(directory)
    names = [x509.DNSName(holder_name(name)), *(host_name(h) for h in hosts)]
    csr_path, key_path = directory / f"{name}.csr", directory / f"{name}.key"
    _refuse_overwrite(force, csr_path, key_path)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key, force)
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return csr_path, key_path


def sign(directory: Path, csr_path: Path, force: bool = False) -> Path:
    """At the CA: the certificate for a signing request (its holder's name and hosts checked again), written as
    `directory/NAME.crt`; the holder's key stays where it was made."""
    directory, csr_path = Path(directory), Path(csr_path)
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{csr_path} not found") from None
    except ValueError:
        raise PkiError(f"{csr_path} is not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise PkiError(f"{csr_path}: its signature does not match its key (altered on its way?)")
    common = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common) != 1:
        raise PkiError(f"{csr_path} names no single holder (CN)")
    name = holder_name(str(common[0].value))
    try:
        requested = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        requested = x509.SubjectAlternativeName([])
    hosts = [str(v) for v in requested.get_values_for_type(x509.DNSName) if v != name]
    hosts += [str(v) for v in requested.get_values_for_type(x509.IPAddress)]
    names = [x509.DNSName(name), *(host_name(h) for h in hosts)]
    ca_cert, ca_key = _ca(directory)
    cert_path = directory / f"{name}.crt"
    _refuse_overwrite(force, cert_path)
    cert_path.write_bytes(
        _certificate(ca_cert, ca_key, name, csr.public_key(), names).public_bytes(serialization.Encoding.PEM)
    )
    return cert_path


def validity(cert_path: Path, now: datetime.datetime | None = None) -> str | None:
    """Refuse (PkiError) a certificate that is not valid now; a warning when it expires within WARN_DAYS."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as error:
        raise PkiError(f"certificate {cert_path} cannot be read: {error}") from None
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise PkiError(f"certificate {cert_path} is not valid yet: from {start:%Y-%m-%d %H:%M} UTC")
    if now > end:
        raise PkiError(f"certificate {cert_path} expired on {end:%Y-%m-%d %H:%M} UTC: request a new one")
    if end - now < datetime.timedelta(days=WARN_DAYS):
        return f"certificate {cert_path} expires on {end:%Y-%m-%d} ({(end - now).days} days): request a new one"
    return None
