"""Certificates for the links between the tasks of a deployment (mutual TLS, tf_puma/tunnels.py).

Every task (the client and the three parties) holds a TLS directory with three PEM files:

    ca.pem    the deployment's CA certificate (the only issuer its peers accept)
    cert.pem  this task's certificate, issued by that CA, named for the task (TASK_NAMES)
    key.pem   this task's private key

A certificate names its task by a DNS subject alternative name, `tf-puma-client` or
`tf-puma-party0/1/2`: a peer is accepted only if its chain ends at ca.pem and its name is a task
of the cluster; a party's tunnel to party 0 accepts only party 0's name, so a party cannot
receive what is meant for another (with two parties' views it would hold every share).

`make_deployment` (`tf-puma certs`) makes a CA and the four directories for a first deployment;
production deployments bring their own CA and issue the same names. `check_tls_dir` reads a
directory before any tunnel starts and says what is wrong with it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from tf_puma.cluster import NUM_PARTIES

CLIENT_TASK = "client"
TASK_NAMES = (CLIENT_TASK, *(f"party{i}" for i in range(NUM_PARTIES)))
CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"
DEFAULT_DAYS = 365


class TlsSetupError(ValueError):
    """A TLS directory is missing a file or holds a certificate that cannot serve its task."""


def peer_name(task: str) -> str:
    """The DNS name a task's certificate carries ("party1" -> "tf-puma-party1")."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASK_NAMES)}")
    return f"tf-puma-{task}"


def _crypto():
    try:
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - cryptography is in requirements.txt
        raise TlsSetupError(f"the `cryptography` package is needed for certificates ({err}): "
                            "pip install cryptography") from None
    return x509, hashes, serialization, ec


def _write_private(path: str, data: bytes) -> None:
    """Writes `data` readable by its owner only (0600 from creation, never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _name(common_name: str):
    x509, *_ = _crypto()
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tf-puma deployment"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(days: int = DEFAULT_DAYS, common_name: str = "tf-puma deployment CA"):
    """A self-signed CA (EC P-256): returns (certificate, private key) objects."""
    x509, hashes, _, ec = _crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert, ca_key, name: str, days: int = DEFAULT_DAYS):
    """A certificate for DNS name `name` (client and server use: every task is both), signed by
    the CA: returns (certificate, private key) objects."""
    x509, hashes, _, ec = _crypto()
    from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def write_tls_dir(directory: str, ca_cert, cert, key) -> None:
    """Writes ca.pem, cert.pem and key.pem (0600) into `directory` (created 0700)."""
    _, _, serialization, _ = _crypto()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    pem = serialization.Encoding.PEM
    with open(os.path.join(directory, CA_FILE), "wb") as fh:
        fh.write(ca_cert.public_bytes(pem))
    with open(os.path.join(directory, CERT_FILE), "wb") as fh:
        fh.write(cert.public_bytes(pem))
    _write_private(os.path.join(directory, KEY_FILE), key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def make_deployment(out_dir: str, days: int = DEFAULT_DAYS) -> list[str]:
    """A new CA and one TLS directory per task: OUT/ca/{ca.pem,ca-key.pem} (keep the CA key
    offline; it issues certificates) and OUT/{client,party0,party1,party2}/ (copy each to its
    host). Refuses an existing OUT (certificates are not overwritten by accident). Returns the
    task directories."""
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise TlsSetupError(f"{out_dir} exists and is not empty: choose a new directory (existing "
                            "certificates are not overwritten)")
    _, _, serialization, _ = _crypto()
    ca_cert, ca_key = make_ca(days)
    ca_dir = os.path.join(out_dir, "ca")
    os.makedirs(ca_dir, mode=0o700, exist_ok=True)
    pem = serialization.Encoding.PEM
    with open(os.path.join(ca_dir, CA_FILE), "wb") as fh:
        fh.write(ca_cert.public_bytes(pem))
    _write_private(os.path.join(ca_dir, "ca-key.pem"), ca_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    directories = []
    for task in TASK_NAMES:
        cert, key = issue(ca_cert, ca_key, peer_name(task), days)
        directory = os.path.join(out_dir, task)
        write_tls_dir(directory, ca_cert, cert, key)
        directories.append(directory)
    return directories


@dataclass(frozen=True)
class TlsFiles:
    """A checked TLS directory's paths."""

    ca: str
    cert: str
    key: str


def check_tls_dir(directory: str, task: str) -> TlsFiles:
    """Checks `directory` can serve `task` before anything starts: the three files exist and
    parse, the certificate is signed by ca.pem, valid now, names `peer_name(task)`, and key.pem
    is its key. Raises TlsSetupError saying which file is wrong and what to do."""
    x509, _, serialization, _ = _crypto()
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

    paths = TlsFiles(*(os.path.join(directory, f) for f in (CA_FILE, CERT_FILE, KEY_FILE)))
    missing = [p for p in (paths.ca, paths.cert, paths.key) if not os.path.isfile(p)]
    if missing:
        raise TlsSetupError(f"TLS directory {directory} lacks {', '.join(missing)}: it needs "
                            f"{CA_FILE}, {CERT_FILE} and {KEY_FILE} (`tf-puma certs` makes them)")

    def load(path: str, reader):
        try:
            with open(path, "rb") as fh:
                return reader(fh.read())
        except (ValueError, TypeError) as err:
            raise TlsSetupError(f"{path} is not a PEM file of the expected kind ({err})") from None

    ca = load(paths.ca, x509.load_pem_x509_certificate)
    cert = load(paths.cert, x509.load_pem_x509_certificate)
    key = load(paths.key, lambda data: serialization.load_pem_private_key(data, password=None))
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:  # InvalidSignature: no message
        raise TlsSetupError(f"{paths.cert} was not issued by the CA in {paths.ca} "
                            f"({type(err).__name__}): use the deployment's CA and a certificate "
                            "it signed") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    for which, c in (("CA certificate " + paths.ca, ca), ("certificate " + paths.cert, cert)):
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            raise TlsSetupError(f"the {which} is valid from {c.not_valid_before_utc:%Y-%m-%d} "
                                f"to {c.not_valid_after_utc:%Y-%m-%d}, not now: issue a new one")
    want = peer_name(task)
    try:
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if want not in names:
        raise TlsSetupError(f"{paths.cert} names {names or 'no DNS name'}, not {want!r}: this "
                            f"process runs task {task}, so it needs {task}'s certificate")
    public = cert.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != public:
        raise TlsSetupError(f"{paths.key} is not the key of {paths.cert}: copy the pair issued "
                            "together")
    return paths
