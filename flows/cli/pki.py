"""`fedrisk pki`: a development certificate authority for a consortium's mutual TLS."""

from __future__ import annotations

from pathlib import Path

import typer

from errors import ExitCode
from flows.cli.common import print_error
from flows.terminal import console

app = typer.Typer(help="A development certificate authority for a consortium (mutual TLS).", no_args_is_help=True)


def _pki(action):
    """A PKI step's result; its PkiError (an existing file, a bad name or host, no CA) is one red line, exit 1."""
    from hostguard.pki import PkiError

    try:
        return action()
    except PkiError as error:
        print_error(error)
        raise typer.Exit(ExitCode.FAILED) from None


@app.command("init")
def init(
    directory: Path = typer.Option(Path("pki"), "--dir", metavar="DIR", help="Where the CA's files go."),
) -> None:
    """Create a development consortium CA (ca.crt, ca.key)."""
    from hostguard.pki import init_ca

    console.print(f"CA: {_pki(lambda: init_ca(directory))}")


@app.command("issue")
def issue_certificate(
    name: str = typer.Argument(..., help="The holder: an institution's name, or coordinator."),
    directory: Path = typer.Option(
        Path("pki"), "--dir", metavar="DIR", help="The CA's directory (certificates go there too)."
    ),
    host: list[str] = typer.Option(
        [], "--host", metavar="HOST", help="A DNS name or IP the holder is reached at (repeatable)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing certificate and key."),
) -> None:
    """Issue NAME.crt and NAME.key where the CA is (one machine; across institutions use request and sign)."""
    from hostguard.pki import issue

    cert, key = _pki(lambda: issue(directory, name, tuple(host), force))
    console.print(f"{name}: {cert} (key {key})")


@app.command("request")
def request_certificate(
    name: str = typer.Argument(..., help="This institution's name (or coordinator)."),
    directory: Path = typer.Option(Path("tls"), "--dir", metavar="DIR", help="Where its key and request go."),
    host: list[str] = typer.Option(
        [], "--host", metavar="HOST", help="A DNS name or IP it is reached at (repeatable)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing key and request."),
) -> None:
    """At the institution: make its private key (mode 0600; it never leaves) and NAME.csr to send to the CA."""
    from hostguard.pki import request

    csr, key = _pki(lambda: request(directory, name, tuple(host), force))
    console.print(
        f"{name}: key {key} (keep it here), request {csr}: send it to the consortium's CA, which runs "
        f"`fedrisk pki sign {csr.name}` and sends back {name}.crt and ca.crt",
        highlight=False,
    )


@app.command("sign")
def sign_request(
    csr: Path = typer.Argument(..., metavar="CSR", help="A holder's certificate signing request (NAME.csr)."),
    directory: Path = typer.Option(Path("pki"), "--dir", metavar="DIR", help="The CA's directory."),
    force: bool = typer.Option(False, "--force", help="Replace an existing certificate of that holder."),
) -> None:
    """At the CA: sign a holder's request into NAME.crt (the holder's key never comes here)."""
    from hostguard.pki import sign

    cert = _pki(lambda: sign(directory, csr, force))
    console.print(f"{cert}: send it with {directory / 'ca.crt'} back to its holder", highlight=False)
