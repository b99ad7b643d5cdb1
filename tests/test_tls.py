"""TLS trust: the system store, plus the bundles named by SSL_CERT_FILE / REQUESTS_CA_BUNDLE."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from bot.tls import trust_context


def test_named_bundles_are_trusted_besides_the_system_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    first, second = tmp_path / "corp.pem", tmp_path / "proxy.pem"
    trustme.CA().cert_pem.write_to_path(str(first))
    trustme.CA().cert_pem.write_to_path(str(second))
    monkeypatch.setenv("SSL_CERT_FILE", str(first))  # OpenSSL alone would trust this file *instead of* the store
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 1
    context = trust_context([str(first), str(second)])
    assert context.cert_store_stats()["x509_ca"] == system + 2
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
