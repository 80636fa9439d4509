"""TLS contexts for SIP over TLS (RFC 3261 section 26.2.1, RFC 5630), built from ``[sip]``.

:func:`server_context` holds the switch's certificate and key (what phones and trunks that
connect to ``tls_port`` see); :func:`client_context` verifies trunks the switch connects to
(``tls_ca_file``, or the system CA store; ``tls_verify_peer = false`` for lab use only).

Both raise :class:`~switch.config.ConfigError` naming the ``[sip]`` key at fault, so a bad
certificate stops ``softswitch check-config`` and the start with the key path and the reason.
The config loader builds both once to validate the files; :class:`switch.app.Switch` builds
them again at start (the files are read at that moment).
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from switch.config import ConfigError, SipConfig

__all__ = ["client_context", "server_context"]

# RFC 8996 deprecates TLS 1.0 and 1.1.
_MIN_VERSION = ssl.TLSVersion.TLSv1_2


def _read(key: str, path: str) -> bytes:
    """The file's bytes, or a ConfigError on ``sip.<key>`` saying why it cannot be read."""
    if not path:
        raise ConfigError(f"sip.{key}", 'is required when sip.transports includes "tls"')
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"sip.{key}", f"no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"sip.{key}", f"cannot read {path}: {exc.strerror or exc}") from None


def _no_passphrase() -> bytes:
    # Called by OpenSSL only for an encrypted key; never prompt on a terminal.
    raise ConfigError("sip.tls_private_key", "encrypted private keys are not supported")


_CERT_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----", re.DOTALL)


def _load_chain(context: ssl.SSLContext, sip: SipConfig) -> None:
    """Load ``tls_certificate`` (+ ``tls_private_key``) into ``context``, blaming the right key."""
    cert = _read("tls_certificate", sip.tls_certificate)
    blocks = _CERT_BLOCK.findall(cert)
    if not blocks:
        raise ConfigError("sip.tls_certificate", f"no PEM certificate in {sip.tls_certificate}")
    try:
        # Parse the certificates on their own first, so a broken one is not blamed on the key.
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.load_verify_locations(cadata=b"\n".join(blocks).decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError("sip.tls_certificate",
                          f"cannot load {sip.tls_certificate}: {_reason(exc)}") from None
    key_path = sip.tls_private_key or sip.tls_certificate
    key_name = "tls_private_key" if sip.tls_private_key else "tls_certificate"
    key = _read(key_name, key_path)
    if b"PRIVATE KEY-----" not in key:
        raise ConfigError(f"sip.{key_name}", f"no PEM private key in {key_path}")
    try:
        context.load_cert_chain(sip.tls_certificate, key_path, password=_no_passphrase)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"sip.{key_name}",
                              f"does not match the certificate in {sip.tls_certificate}") from None
        raise ConfigError(f"sip.{key_name}", f"cannot load {key_path}: {_reason(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"sip.{key_name}",
                          f"cannot load {key_path}: {exc.strerror or exc}") from None


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else str(exc)


def server_context(sip: SipConfig) -> ssl.SSLContext:
    """The server-side context for the TLS listener: our certificate chain and key.

    Phones are not asked for client certificates (they authenticate with digest, RFC 3261
    section 22; RFC 5630 section 3.1.2 leaves mutual TLS to policy).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MIN_VERSION
    _load_chain(context, sip)
    return context


def client_context(sip: SipConfig) -> ssl.SSLContext:
    """The client-side context for connections the switch opens (to ``transport = "tls"``
    trunks, or back to a phone whose connection is gone).

    Verifies the server certificate and its name (RFC 3261 section 26.3.1; RFC 5922 section 7)
    against ``tls_ca_file``, or the system store when it is empty. ``tls_verify_peer = false``
    turns verification off (lab use: anyone on the path can then read and change the calls).
    Our own certificate, when configured, is offered for trunks that ask for one.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = _MIN_VERSION
    if sip.tls_ca_file:
        data = _read("tls_ca_file", sip.tls_ca_file)
        try:
            context.load_verify_locations(cadata=data.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError("sip.tls_ca_file",
                              f"no usable PEM CA certificate in {sip.tls_ca_file}: {exc}") from None
    if not sip.tls_verify_peer:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if sip.tls_certificate:
        _load_chain(context, sip)
    return context
