"""The Hub's TLS files: the operator's, or a self-signed certificate made by ``host init``.

>>> names = certificate_names("hub.example.org")
>>> names[0]
'hub.example.org'
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path


def certificate_names(hostname: str | None = None) -> list[str]:
    """The names the self-signed certificate covers: this host's name, localhost, loopback."""
    first = hostname or socket.getfqdn() or "localhost"
    return list(dict.fromkeys([first, "localhost", "127.0.0.1", "::1"]))


def make_self_signed(cert: Path, key: Path, hostname: str | None = None, days: int = 825) -> None:
    """Write a P-256 key (0600 root) and a self-signed certificate for it (0644)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    names = certificate_names(hostname)
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp_key = key.with_name(key.name + ".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    tmp_cert = cert.with_name(cert.name + ".tmp")
    tmp_cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    os.chmod(tmp_cert, 0o644)
    os.replace(tmp_key, key)
    os.replace(tmp_cert, cert)
