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


def test_nothing_is_overwritten_without_force(tmp_path):
    init_ca(tmp_path)
    cert_path, key_path = issue(tmp_path, "bank_a")
    before = key_path.read_bytes()
    with pytest.raises(PkiError, match=r"bank_a.crt, .*bank_a.key already exist: pass --force to replace them"):
        issue(tmp_path, "bank_a")
    assert key_path.read_bytes() == before
    issue(tmp_path, "bank_a", force=True)
    assert key_path.read_bytes() != before and oct(key_path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("host", ["10.77.0.1b", "10.77.0", "bank a.example", "-bad.example", "a:b", ""])
def test_a_host_is_an_ip_address_or_a_dns_name(tmp_path, host):
    init_ca(tmp_path)
    with pytest.raises(PkiError, match=rf"--host '{host}' is neither an IP address nor a DNS name"):
        issue(tmp_path, "bank_a", (host,))
    assert not (tmp_path / "bank_a.key").exists()  # refused before any key is made


def test_a_key_is_never_readable_by_others_not_even_for_a_moment(tmp_path, monkeypatch):
    """The key file is created with mode 0600 (no chmod after a world-readable write): a umask of 0 changes
    nothing."""
    import os

    old = os.umask(0)
    try:
        modes = []
        real_open = os.open

        def watching(path, flags, mode=0o777, *args, **kwargs):
            handle = real_open(path, flags, mode, *args, **kwargs)
            if str(path).endswith(".key"):
                modes.append(oct(os.fstat(handle).st_mode & 0o777))
            return handle

        monkeypatch.setattr(os, "open", watching)
        init_ca(tmp_path)
        from hostguard.pki import request

        request(tmp_path / "bank", "bank_a")
    finally:
        os.umask(old)
    assert modes == ["0o600", "0o600"]


def test_an_institution_requests_and_the_ca_signs_without_the_key_leaving_it(tmp_path):
    from hostguard.pki import request, sign

    ca, bank = tmp_path / "ca", tmp_path / "bank"
    init_ca(ca)
    csr_path, key_path = request(bank, "bank_a", ("10.0.3.4", "node-a.example"))
    cert_path = sign(ca, csr_path)
    assert not (ca / "bank_a.key").exists() and key_path.exists()
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["bank_a", "node-a.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.3.4"]
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # its own key, certified
    with pytest.raises(PkiError, match="bank_a.crt already exists: pass --force"):
        sign(ca, csr_path)
    tampered = tmp_path / "tampered.csr"
    tampered.write_bytes(csr_path.read_bytes().replace(b"A", b"B", 1))
    with pytest.raises(PkiError, match="tampered.csr"):
        sign(ca, tampered, force=True)


def test_a_node_does_not_start_with_a_certificate_that_is_not_valid_now(tmp_path):
    import datetime

    from typer.testing import CliRunner

    from flows.cli import app
    from hostguard.pki import validity

    init_ca(tmp_path)
    now = datetime.datetime.now(datetime.UTC)
    expired, _ = issue(tmp_path, "old_bank", days=30, start=now - datetime.timedelta(days=40))
    future, _ = issue(tmp_path, "new_bank", start=now + datetime.timedelta(days=2))
    soon, _ = issue(tmp_path, "soon_bank", days=20)
    with pytest.raises(PkiError, match=r"old_bank.crt expired on .* request a new one"):
        validity(expired)
    with pytest.raises(PkiError, match=r"new_bank.crt is not valid yet"):
        validity(future)
    assert "expires on" in validity(soon) and validity(issue(tmp_path, "bank_a")[0]) is None

    config = tmp_path / "node.yaml"
    config.write_text(
        "institution: old_bank\nschema: credit_default\nextract: {path: x.csv}\n"
        "tls: {ca: ca.crt, cert: old_bank.crt, key: old_bank.key}\n"
    )
    result = CliRunner().invoke(app, ["node", "serve", "--config", str(config)], env={"COLUMNS": "250"})
    assert result.exit_code == 1
    assert "node old_bank does not start: certificate" in result.output and "expired on" in result.output
