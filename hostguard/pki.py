"""A development certificate authority for a consortium (`fedrisk pki init` / `fedrisk pki issue NAME`).

One CA, one certificate per institution and one for the coordinator, each naming its holder (CN and a DNS
subject alternative name), so a node can accept only the coordinator and the coordinator can tell one
institution's node from another's. ECDSA P-256 keys. For trying a consortium on one machine; production
consortia bring their own CA and certificates (same file layout: ca.crt, NAME.crt, NAME.key).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "ca"
VALID_DAYS = 365


class PkiError(ValueError):
    """A CA or certificate that cannot be created or read; the message names the file."""


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrisk consortium (development)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def init_ca(directory: Path, common_name: str = "fedrisk development CA") -> Path:
    """Create `directory/ca.crt` and `ca.key` (refuses to overwrite an existing CA)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{CA_NAME}.crt", directory / f"{CA_NAME}.key"
    if cert_path.exists() or key_path.exists():
        raise PkiError(f"{cert_path} already exists: a consortium keeps its CA (delete the directory to start over)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue(directory: Path, name: str, hosts: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Create `directory/NAME.crt` and `NAME.key`, signed by the CA there: CN and DNS name NAME, plus `hosts`
    (DNS names or IP addresses the holder is reached at). Usable as a TLS server and client certificate."""
    directory = Path(directory)
    try:
        ca_cert = x509.load_pem_x509_certificate((directory / f"{CA_NAME}.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((directory / f"{CA_NAME}.key").read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(f"no CA in {directory}: run `fedrisk pki init --dir {directory}` first") from None
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
