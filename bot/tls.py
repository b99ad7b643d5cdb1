"""Which TLS certificates the bot trusts: the system store, plus the CA bundles the operator names.

`SSL_CERT_FILE` and `REQUESTS_CA_BUNDLE` (read into `Config.ca_files`) are the standard ways to add a
corporate or test CA. OpenSSL itself treats `SSL_CERT_FILE` as a replacement for the system store, so
the system store's own paths are loaded explicitly: the named bundles are trusted in addition to it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable


def trust_context(ca_files: Iterable[str] = ()) -> ssl.SSLContext:
    """A client context that verifies peers against the system store and every bundle in `ca_files`."""
    context = ssl.create_default_context()
    system = ssl.get_default_verify_paths()
    if system.openssl_cafile and os.path.isfile(system.openssl_cafile):
        context.load_verify_locations(cafile=system.openssl_cafile)
    if system.openssl_capath and os.path.isdir(system.openssl_capath):
        context.load_verify_locations(capath=system.openssl_capath)
    for path in ca_files:
        if os.path.isdir(path):
            context.load_verify_locations(capath=path)
        else:
            context.load_verify_locations(cafile=path)
    return context
