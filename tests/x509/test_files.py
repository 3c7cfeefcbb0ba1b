"""The broker's own TLS files are parsed before gRPC sees them; each problem names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certbroker.x509.files import PemFileError, check_server_tls
from tests.tls import MtlsFiles


@pytest.fixture
def mtls(tmp_path: Path) -> tuple[MtlsFiles, Path, Path]:
    files = MtlsFiles(tmp_path)
    server = files.issue("broker", server=True)
    return files, server.cert, server.key


def test_a_good_identity_passes(mtls: tuple[MtlsFiles, Path, Path]) -> None:
    files, cert, key = mtls
    check_server_tls(str(cert), str(key), str(files.ca))


def test_each_bad_file_names_its_variable(
    tmp_path: Path, mtls: tuple[MtlsFiles, Path, Path]
) -> None:
    files, cert, key = mtls
    garbage = tmp_path / "garbage"
    garbage.write_text("garbage")
    cases = [
        ((garbage, key, files.ca), f"CERTBROKER_TLS_CERT={garbage}: not a PEM certificate"),
        ((cert, garbage, files.ca), f"CERTBROKER_TLS_KEY={garbage}: not a PEM private key"),
        ((cert, key, garbage), f"CERTBROKER_TLS_CLIENT_CA={garbage}: not a PEM certificate"),
        ((cert, tmp_path / "absent", files.ca), "CERTBROKER_TLS_KEY=.*: cannot read"),
    ]
    for (c, k, ca), message in cases:
        with pytest.raises(PemFileError, match=f"^{message}"):
            check_server_tls(str(c), str(k), str(ca))


def test_a_key_of_another_certificate(mtls: tuple[MtlsFiles, Path, Path]) -> None:
    files, cert, _ = mtls
    other = files.issue("someone-else").key
    with pytest.raises(PemFileError, match=r"^CERTBROKER_TLS_KEY=.*does not belong to the cert"):
        check_server_tls(str(cert), str(other), str(files.ca))


def test_an_encrypted_key(tmp_path: Path, mtls: tuple[MtlsFiles, Path, Path]) -> None:
    files, cert, _ = mtls
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(PemFileError, match="is encrypted"):
        check_server_tls(str(cert), str(locked), str(files.ca))
