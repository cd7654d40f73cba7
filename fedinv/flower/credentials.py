"""Credentials for trying an encrypted, authenticated Flower deployment on one machine: a local
certificate authority, the SuperLink's TLS certificate signed by it, and one key pair per SuperNode
for SuperNode authentication (`flower-superlink --enable-supernode-auth`, `flwr supernode register`).

    python -m fedinv.flower.credentials OUT --nodes 2 [--host HOST ...]

writes OUT/ca.crt (every machine gets it: it verifies the SuperLink), OUT/ca.key (keep it off the
network), OUT/server.pem and OUT/server.key (the SuperLink's), and OUT/node-K / OUT/node-K.pub (node K's
private key, on node K only, and its public key, registered with the SuperLink). The server
certificate is valid for localhost, 127.0.0.1, ::1 and every --host. For a real federation use the
certificates and keys your organization issues; these are for trying the recipe.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Sequence

import click

VALIDITY_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def make_credentials(out: str | Path, nodes: int, hosts: Sequence[str] = ()) -> list[Path]:
    """Write the CA, the SuperLink's certificate and `nodes` SuperNode key pairs into `out`; returns
    the files written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    def certificate(subject, issuer, public_key, signing_key, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS)))
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedinv local CA"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "fedinv local CA")])
    ca = certificate(ca_name, ca_name, ca_key.public_key(), ca_key,
                     [(x509.BasicConstraints(ca=True, path_length=None), True)])
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]),
                         ca_name, server_key.public_key(), ca_key,
                         [(x509.SubjectAlternativeName(names), False),
                          (x509.BasicConstraints(ca=False, path_length=None), True)])
    written = [out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key"]
    _write(written[0], ca.public_bytes(serialization.Encoding.PEM))
    _write(written[1], pem_key(ca_key), private=True)
    _write(written[2], server.public_bytes(serialization.Encoding.PEM))
    _write(written[3], pem_key(server_key), private=True)
    for k in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())  # what Flower's SuperNode authentication takes
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(out / f"node-{k}", private, private=True)
        _write(out / f"node-{k}.pub", public + b"\n")
        written += [out / f"node-{k}", out / f"node-{k}.pub"]
    return written


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--nodes", type=click.IntRange(1, 10_000), default=2, show_default=True,
              help="how many SuperNode key pairs to make (node-0, node-1, ...)")
@click.option("--host", "hosts", multiple=True, metavar="NAME_OR_IP",
              help="a name or address the SuperLink is reached at, besides localhost (repeatable)")
def main(out: Path, nodes: int, hosts: tuple[str, ...]) -> None:
    """Make a local CA, a SuperLink certificate and SuperNode key pairs in OUT (for trying the
    encrypted, authenticated deployment; see the README)."""
    if out.exists() and any(out.iterdir()):
        raise click.BadParameter(f"{out} is not empty; choose a new folder (credentials are never overwritten)",
                                 param_hint="OUT")
    for path in make_credentials(out, nodes, hosts):
        click.echo(path)


if __name__ == "__main__":
    main()
