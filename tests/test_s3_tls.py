"""S3 over TLS with a private CA (``DIGITS_S3_CA_BUNDLE``), against a real ``weed``.

A throwaway CA signs the store's certificate: with the CA bundle the registry's
round trip works (with and without the serving timeouts); without it, or with
another CA, the client refuses the certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from minio.error import InvalidResponseError
from pydantic import ValidationError
from urllib3.exceptions import MaxRetryError, SSLError

from components.identities import PIPELINE, SERVING
from components.registry import Registry
from components.s3local import LocalS3, TLSFiles
from components.settings import StoreSettings


def _name(common_name: str):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: Path, name: str):
    """A self-signed CA: its key, its certificate, and the PEM bundle file."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    bundle = directory / f"{name}.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, bundle


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and an unrelated CA."""
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert, ca_bundle = make_ca(directory, "digits-test-ca")
    _, _, other_bundle = make_ca(directory, "some-other-ca")
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return {"cert": directory / "server.pem", "key": directory / "server.key",
            "ca": ca_bundle, "other_ca": other_bundle}


@pytest.fixture(scope="module")
def tls_store(certificates, tmp_path_factory):
    """A ``weed`` whose S3 port speaks only TLS, with a registry bucket granted."""
    store = LocalS3(tmp_path_factory.mktemp("s3-tls"), tls=TLSFiles(
        certificates["cert"], certificates["key"], certificates["ca"])).start()
    store.bucket = f"tls-{uuid.uuid4().hex[:12]}"
    store.grant(store.bucket)
    yield store
    store.stop()


def settings_for(store, identity: str, **overrides) -> StoreSettings:
    env = store.environ(identity)
    assert env["DIGITS_S3_SECURE"] == "true"
    values = {key.removeprefix("DIGITS_").lower(): value for key, value in env.items()}
    return StoreSettings(**{**values, "bucket": store.bucket, **overrides})


@pytest.fixture
def model_dir(tmp_path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "model.json").write_text('{"kind": "baseline"}')
    (directory / "weights.npz").write_bytes(bytes(range(256)) * 64)
    return directory


@pytest.mark.parametrize("timeout_s", [None, 5.0], ids=["pipeline-defaults", "server-timeouts"])
def test_a_registry_round_trip_over_tls_with_the_ca_bundle(tls_store, certificates, model_dir,
                                                           tmp_path, timeout_s):
    settings = settings_for(tls_store, PIPELINE)
    assert settings.s3_ca_bundle == certificates["ca"]
    pipeline = Registry.from_settings(settings, timeout_s=timeout_s)
    version = pipeline.promote(model_dir, {"kind": "baseline"}, "over TLS")
    serving = Registry.from_settings(settings_for(tls_store, SERVING), timeout_s=timeout_s)
    pointer = serving.production()
    assert pointer.version == version
    serving.download_production(pointer, tmp_path / "download")
    assert (tmp_path / "download" / "weights.npz").read_bytes() == (
        model_dir / "weights.npz").read_bytes()


@pytest.mark.parametrize("bundle", ["none", "other_ca"])
def test_without_the_right_ca_the_certificate_is_refused(tls_store, certificates, bundle):
    ca = None if bundle == "none" else certificates[bundle]
    registry = Registry.from_settings(settings_for(tls_store, SERVING, s3_ca_bundle=ca),
                                      timeout_s=2.0)
    with pytest.raises(MaxRetryError) as error:
        registry.production()
    assert isinstance(error.value.reason, SSLError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error.value.reason)


def test_plain_http_to_the_tls_port_fails(tls_store):
    registry = Registry.from_settings(settings_for(tls_store, SERVING, s3_secure=False),
                                      timeout_s=2.0)
    with pytest.raises(InvalidResponseError, match="HTTP request to an HTTPS server"):
        registry.production()


def test_the_ca_bundle_setting_comes_from_the_environment(certificates, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITS_S3_CA_BUNDLE", str(certificates["ca"]))
    assert StoreSettings().s3_ca_bundle == certificates["ca"]
    monkeypatch.setenv("DIGITS_S3_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match="s3_ca_bundle"):
        StoreSettings()
