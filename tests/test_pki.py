"""hostguard.pki: a development CA whose certificates name their holders."""

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from hostguard.pki import PkiError, init_ca, issue


def test_certificates_name_their_holder_and_chain_to_the_ca(tmp_path):
    init_ca(tmp_path)
    cert_path, key_path = issue(tmp_path, "bank_a", ("127.0.0.1", "node-a.example"))
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bank_a"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["bank_a", "node-a.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    cert.verify_directly_issued_by(ca)
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"


def test_a_consortium_keeps_its_ca_and_a_certificate_needs_one(tmp_path):
    with pytest.raises(PkiError, match="no CA in"):
        issue(tmp_path, "bank_a")
    init_ca(tmp_path)
    with pytest.raises(PkiError, match="already exists: a consortium keeps its CA"):
        init_ca(tmp_path)
