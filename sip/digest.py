"""SIP digest authentication, server and client side.

Implements the Digest scheme as used by SIP (RFC 3261 section 22.4, which builds on RFC 2617),
with the algorithm set of RFC 7616 (MD5, SHA-256 and their ``-sess`` variants) as adopted for
SIP by RFC 8760. ``qop=auth`` and ``qop=auth-int`` are verified; a response without ``qop``
(the RFC 2069 form ``H(HA1:nonce:HA2)``) is still accepted because older user agents send it.

Server nonces are stateless: each one carries its issue time and a random salt, authenticated
with an HMAC under the server secret, so any nonce this server issued can be checked without a
table lookup. The only state is a bounded table of the highest nonce-count seen per nonce, used
to reject replays (RFC 7616 section 3.4 / RFC 2617 section 4.5).

Everything here is sans-IO: time is passed in as ``now`` (seconds, any monotonic-enough clock,
as long as the same clock is used for :meth:`DigestServer.challenges` and
:meth:`DigestServer.verify`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "AuthResult",
    "DigestClient",
    "DigestServer",
    "StoredHA1",
    "choose_challenge",
    "hash_a1",
    "parse_auth_header",
]

# Canonical spellings of the algorithms we implement (RFC 7616 section 3.3, RFC 8760 section 2),
# strongest first; this order is also our preference order when several challenges are offered.
SUPPORTED_ALGORITHMS: tuple[str, ...] = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")
_CANONICAL_ALGORITHM: dict[str, str] = {name.lower(): name for name in SUPPORTED_ALGORITHMS}
_HASHLIB_NAME: dict[str, str] = {"SHA-256": "sha256", "MD5": "md5"}

# RFC 3261 section 25.1: token characters (used for parameter names and the auth scheme).
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_WS = " \t\r\n"
_HEX_RE = re.compile(r"[0-9a-fA-F]+", re.ASCII)
_NC_RE = re.compile(r"[0-9a-fA-F]{1,8}", re.ASCII)

# Nonce layout (before base64url): issue time in ms (signed 64-bit big-endian), random salt, MAC.
_NONCE_TS = struct.Struct(">q")
_SALT_LEN = 6
_MAC_LEN = 16
_NONCE_RAW_LEN = _NONCE_TS.size + _SALT_LEN + _MAC_LEN  # 30 bytes -> 40 base64 chars, no padding
_NONCE_LEN = 40
# A nonce stamped slightly in the future (clock stepped back) is tolerated by this much.
_FUTURE_SKEW_MS = 1000
# Nonce-count value recorded for a nonce that was used without qop: larger than any real nc, so
# the nonce cannot be used again in either form.
_CONSUMED = 1 << 32


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of :meth:`DigestServer.verify`.

    ``username`` is the claimed user name whenever the header could be parsed (also on failure,
    for logging); ``stale`` is true only when the credentials were correct but the nonce can no
    longer be used, in which case the caller re-challenges with ``stale=true`` (RFC 7616
    section 3.3) so the client retries without prompting its user. ``reason`` is a short
    human-readable explanation (``"ok"`` on success); it is meant for logs, never for the peer.
    """

    ok: bool
    username: str | None
    stale: bool
    reason: str


@dataclass(frozen=True, slots=True)
class StoredHA1:
    """A user's digest secret kept as HA1 values instead of the password.

    ``by_algorithm`` maps a base algorithm (``"MD5"``, ``"SHA-256"``) to lower-case hex
    ``H(username ":" realm ":" password)`` (RFC 7616 section 3.4.2). Digest needs no more than
    this to verify a response, so a server may store these instead of the password (they are
    still password-equivalent for this realm, but do not reveal a password reused elsewhere).
    The ``-sess`` variants are derived from their base algorithm's value.
    """

    by_algorithm: Mapping[str, str]

    def get(self, algorithm: str) -> str | None:
        """The HA1 for ``algorithm`` (or its base, for ``-sess``), or ``None`` if not stored."""
        return self.by_algorithm.get(algorithm.removesuffix("-sess"))


def hash_a1(algorithm: str, username: str, realm: str, password: str) -> str:
    """``H(username ":" realm ":" password)`` for a base algorithm: what :class:`StoredHA1`
    holds."""
    return _hash(algorithm, f"{username}:{realm}:{password}")


def _to_bytes(text: str) -> bytes:
    """Encode header text back to the bytes received (see sip.message: surrogateescape)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _hash(algorithm: str, data: str | bytes) -> str:
    """H() of RFC 7616 section 3.4.1: lower-case hex digest of the base algorithm."""
    base = algorithm.removesuffix("-sess")
    raw = data if isinstance(data, bytes) else _to_bytes(data)
    return hashlib.new(_HASHLIB_NAME[base], raw).hexdigest()


def compute_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str | None = None,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str | None,
    cnonce: str | None,
    body: bytes = b"",
    ha1: str | None = None,
) -> str:
    """Compute the ``response`` value of a Digest credential.

    ``algorithm`` is a canonical name from :data:`SUPPORTED_ALGORITHMS`; ``qop`` is ``None``
    (RFC 2069 form), ``"auth"`` or ``"auth-int"``; ``nc`` and ``cnonce`` are the strings as
    sent on the wire (they are hashed verbatim). Raises ``ValueError`` for an unknown algorithm
    or qop, or when ``nc``/``cnonce`` are missing where they are needed. Give either the
    ``password`` or the stored ``ha1`` (``H(username:realm:password)``, see :func:`hash_a1`).
    """
    if algorithm not in _CANONICAL_ALGORITHM.values():
        raise ValueError(f"unsupported algorithm {algorithm!r}")
    # RFC 7616 section 3.4.2: A1 (and for -sess, the hash of it combined with nonce and cnonce).
    if ha1 is None:
        if password is None:
            raise ValueError("either password or ha1 is needed")
        ha1 = hash_a1(algorithm, username, realm, password)
    if algorithm.endswith("-sess"):
        if cnonce is None:
            raise ValueError("-sess algorithm requires a cnonce")
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    # RFC 7616 section 3.4.3: A2 = Method ":" request-uri [":" H(entity-body)].
    qop_key = None if qop is None else qop.lower()
    if qop_key == "auth-int":
        ha2 = _hash(algorithm, f"{method}:{uri}:{_hash(algorithm, body)}")
    elif qop_key in (None, "auth"):
        ha2 = _hash(algorithm, f"{method}:{uri}")
    else:
        raise ValueError(f"unsupported qop {qop!r}")
    if qop is None:
        # RFC 2069 section 2.1.1 (kept by RFC 2617 section 3.2.2.1 for backward compatibility).
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ValueError("qop requires nc and cnonce")
    # RFC 7616 section 3.4.1.
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _skip_ws(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in _WS:
        pos += 1
    return pos


def _read_quoted(value: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote (RFC 3261 section 25.1).

    Returns the unescaped content and the position after the closing quote; a backslash
    escapes the following character (quoted-pair). ``ValueError`` if unterminated.
    """
    out: list[str] = []
    pos += 1
    while pos < len(value):
        char = value[pos]
        if char == "\\":
            if pos + 1 >= len(value):
                break
            out.append(value[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    raise ValueError("unterminated quoted-string")


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """Parse a WWW-/Proxy-Authenticate or (Proxy-)Authorization header value.

    Grammar (RFC 3261 section 25.1, RFC 7235 section 2.1): ``scheme LWS param *(COMMA param)``
    with ``param = token EQUAL (token / quoted-string)``. Returns ``(scheme, params)``: the
    scheme as received except that any spelling of ``digest`` becomes ``"Digest"``; parameter
    names lower-cased; quoted values unquoted with quoted-pairs resolved; unquoted values as
    written (they may contain ``=`` or ``/``, e.g. an unquoted base64 nonce). Empty list
    elements (``a=1,,b=2``) are tolerated.

    Raises ``ValueError`` (and nothing else) on unparseable input: empty value, a bad scheme
    token, a parameter without ``=`` or with an empty value, an unterminated quoted-string,
    junk after a value, or a parameter given twice.
    """
    pos = _skip_ws(value, 0)
    start = pos
    while pos < len(value) and value[pos] in _TOKEN_CHARS:
        pos += 1
    scheme = value[start:pos]
    if not scheme:
        raise ValueError("missing auth scheme")
    if pos < len(value) and value[pos] not in _WS:
        raise ValueError("invalid auth scheme")
    if scheme.lower() == "digest":
        scheme = "Digest"
    params: dict[str, str] = {}
    while True:
        pos = _skip_ws(value, pos)
        if pos >= len(value):
            break
        if value[pos] == ",":
            pos += 1
            continue
        start = pos
        while pos < len(value) and value[pos] in _TOKEN_CHARS:
            pos += 1
        name = value[start:pos].lower()
        if not name:
            raise ValueError(f"invalid character {value[pos]!r} in auth parameters")
        pos = _skip_ws(value, pos)
        if pos >= len(value) or value[pos] != "=":
            raise ValueError(f"auth parameter {name!r} has no value")
        pos = _skip_ws(value, pos + 1)
        if pos < len(value) and value[pos] == '"':
            param_value, pos = _read_quoted(value, pos)
        else:
            start = pos
            while pos < len(value) and value[pos] not in _WS and value[pos] not in ',"':
                pos += 1
            param_value = value[start:pos]
            if not param_value:
                raise ValueError(f"auth parameter {name!r} has an empty value")
        pos = _skip_ws(value, pos)
        if pos < len(value) and value[pos] != ",":
            raise ValueError(f"unexpected data after auth parameter {name!r}")
        if name in params:
            raise ValueError(f"auth parameter {name!r} given twice")
        params[name] = param_value
    return scheme, params


def _quote(text: str) -> str:
    """Render a quoted-string, escaping backslash and double quote (RFC 3261 section 25.1)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _qop_options(raw: str) -> list[str]:
    """Split the challenge's qop-options list (``"auth,auth-int"``) into lower-case tokens."""
    return [item.strip(_WS).lower() for item in raw.split(",") if item.strip(_WS)]


def _canonical_algorithm(raw: str | None) -> str | None:
    """Canonical algorithm name; absent means MD5 (RFC 3261 section 22.4, RFC 7616 3.3)."""
    if raw is None:
        return "MD5"
    return _CANONICAL_ALGORITHM.get(raw.lower())


def choose_challenge(values: Iterable[str]) -> str | None:
    """Pick the strongest Digest challenge we can answer from several header values.

    A UAC that receives several WWW-Authenticate / Proxy-Authenticate headers (RFC 8760
    section 2: one per algorithm, in the server's preference order) answers one it supports,
    preferring SHA-256 over MD5. Challenges that fail to parse, use another scheme or an
    unsupported algorithm or qop, or lack ``realm``/``nonce`` are ignored (RFC 8760 section 2:
    a UAC MUST ignore challenges with algorithms it does not support). Among equals the first
    one wins. Returns the chosen header value unchanged, or ``None``.
    """
    best: tuple[int, str] | None = None
    for value in values:
        try:
            scheme, params = parse_auth_header(value)
        except ValueError:
            continue
        if scheme != "Digest" or "realm" not in params or "nonce" not in params:
            continue
        algorithm = _canonical_algorithm(params.get("algorithm"))
        if algorithm is None:
            continue
        if "qop" in params and not {"auth", "auth-int"} & set(_qop_options(params["qop"])):
            continue
        rank = SUPPORTED_ALGORITHMS.index(algorithm)
        if best is None or rank < best[0]:
            best = (rank, value)
    return None if best is None else best[1]


class DigestClient:
    """UAC side: answer a Digest challenge (RFC 3261 section 22.2 / 22.3)."""

    @staticmethod
    def answer(
        challenge: str,
        *,
        method: str,
        uri: str,
        username: str,
        password: str,
        cnonce: str,
        nc: int = 1,
        body: bytes = b"",
    ) -> str:
        """Build the Authorization / Proxy-Authorization value answering ``challenge``.

        Honours the challenge's algorithm (MD5 when absent; the ``algorithm`` parameter is
        echoed only if the challenge carried one), uses ``qop=auth`` when offered
        (``auth-int`` over ``body`` only if it is the sole option), the RFC 2069 form when no
        qop was offered, and echoes ``opaque`` (RFC 7616 section 3.4). ``uri`` is the
        Request-URI of the request being authenticated; ``nc`` is the nonce count for this
        nonce (1 for the first use). Raises ``ValueError`` if the challenge is unparseable,
        not Digest, lacks realm/nonce, or asks for an algorithm or qop we do not support.
        """
        scheme, params = parse_auth_header(challenge)
        if scheme != "Digest":
            raise ValueError(f"unsupported auth scheme {scheme!r}")
        realm = params.get("realm")
        nonce = params.get("nonce")
        if realm is None or nonce is None:
            raise ValueError("challenge lacks realm or nonce")
        algorithm = _canonical_algorithm(params.get("algorithm"))
        if algorithm is None:
            raise ValueError(f"unsupported digest algorithm {params.get('algorithm')!r}")
        if not 1 <= nc <= 0xFFFFFFFF:
            raise ValueError("nonce count out of range")
        qop: str | None = None
        if "qop" in params:
            options = _qop_options(params["qop"])
            if "auth" in options:
                qop = "auth"
            elif "auth-int" in options:
                qop = "auth-int"
            else:
                raise ValueError(f"no supported qop in {params['qop']!r}")
        nc_text = f"{nc:08x}"
        # -sess without qop still needs a cnonce for A1 (RFC 2617 section 3.2.2.2).
        send_cnonce = qop is not None or algorithm.endswith("-sess")
        response = compute_response(
            algorithm=algorithm,
            username=username,
            realm=realm,
            password=password,
            method=method,
            uri=uri,
            nonce=nonce,
            qop=qop,
            nc=nc_text if qop is not None else None,
            cnonce=cnonce if send_cnonce else None,
            body=body,
        )
        parts = [
            f"username={_quote(username)}",
            f"realm={_quote(realm)}",
            f"nonce={_quote(nonce)}",
            f"uri={_quote(uri)}",
            f'response="{response}"',
        ]
        if "algorithm" in params:
            parts.append(f"algorithm={algorithm}")
        if send_cnonce:
            parts.append(f"cnonce={_quote(cnonce)}")
        if qop is not None:
            # RFC 3261 section 25.1: message-qop and nonce-count are unquoted tokens.
            parts.append(f"qop={qop}")
            parts.append(f"nc={nc_text}")
        if "opaque" in params:
            parts.append(f"opaque={_quote(params['opaque'])}")
        return "Digest " + ", ".join(parts)


def _fail(reason: str, username: str | None = None, *, stale: bool = False) -> AuthResult:
    return AuthResult(ok=False, username=username, stale=stale, reason=reason)


class DigestServer:
    """UAS / registrar side: issue challenges and verify credentials (RFC 3261 section 22).

    ``secret`` keys the nonce MAC; an empty secret is replaced by 32 random bytes (nonces then
    do not survive a restart, which merely makes clients re-authenticate). ``nonce_lifetime``
    is in seconds. ``algorithms`` lists the algorithms offered and accepted (any of
    :data:`SUPPORTED_ALGORITHMS`, case-insensitive) in the order the challenges are emitted:
    RFC 8760 section 2.4 has the UAS list them in its order of preference, and many UACs
    (SIPp 3.6 among them) only try the first one, so the operator chooses. The default puts
    SHA-256 first. ``max_tracked_nonces`` caps the replay table.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_lifetime: float = 300.0,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        max_tracked_nonces: int = 10000,
    ) -> None:
        if nonce_lifetime <= 0:
            raise ValueError("nonce_lifetime must be positive")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be positive")
        canonical: list[str] = []
        for name in algorithms:
            algorithm = _CANONICAL_ALGORITHM.get(name.lower())
            if algorithm is None:
                raise ValueError(f"unsupported digest algorithm {name!r}")
            if algorithm not in canonical:
                canonical.append(algorithm)
        if not canonical:
            raise ValueError("at least one digest algorithm is required")
        self.realm = realm
        self.nonce_lifetime = nonce_lifetime
        self.algorithms: tuple[str, ...] = tuple(canonical)
        self.max_tracked_nonces = max_tracked_nonces
        self._secret = secret or os.urandom(32)
        self._realm_bytes = _to_bytes(realm)
        self.opaque = self._b64(self._mac(b"opaque")[:12])
        # nonce -> (issue time in ms, highest nonce count accepted). Insertion order is the
        # order of first successful use, roughly issue order, so expired entries gather at the
        # front. Nonces issued at or before _floor_ms and not in the table were possibly
        # evicted while still fresh, so they are refused (as stale) rather than trusted anew.
        self._nc_seen: dict[str, tuple[int, int]] = {}
        self._floor_ms: int | None = None

    # -- nonces ---------------------------------------------------------------------------

    @staticmethod
    def _b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def _mac(self, label: bytes, *parts: bytes) -> bytes:
        msg = (
            b"softswitch-digest-" + label + b"\x00" + self._realm_bytes + b"\x00" + b"".join(parts)
        )
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def make_nonce(self, now: float) -> str:
        """Issue a fresh nonce: base64url(time_ms || salt || HMAC(secret, time, salt, realm))."""
        stamp = _NONCE_TS.pack(int(now * 1000))
        salt = os.urandom(_SALT_LEN)
        return self._b64(stamp + salt + self._mac(b"nonce", stamp, salt)[:_MAC_LEN])

    def _nonce_time(self, nonce: str) -> int | None:
        """Issue time (ms) of a nonce this server minted, or None if it is not authentic."""
        if len(nonce) != _NONCE_LEN or not nonce.isascii():
            return None
        try:
            raw = base64.b64decode(nonce, altchars=b"-_", validate=True)
        except ValueError:
            return None
        if len(raw) != _NONCE_RAW_LEN:
            return None
        stamp = raw[: _NONCE_TS.size]
        salt = raw[_NONCE_TS.size : _NONCE_TS.size + _SALT_LEN]
        expected = self._mac(b"nonce", stamp, salt)[:_MAC_LEN]
        if not hmac.compare_digest(expected, raw[-_MAC_LEN:]):
            return None
        return int(_NONCE_TS.unpack(stamp)[0])

    def _is_fresh(self, nonce: str, issued_ms: int, now_ms: int) -> bool:
        age = now_ms - issued_ms
        if age > self.nonce_lifetime * 1000 or age < -_FUTURE_SKEW_MS:
            return False
        return not (
            self._floor_ms is not None
            and issued_ms <= self._floor_ms
            and nonce not in self._nc_seen
        )

    def _record(self, nonce: str, issued_ms: int, nc: int, now_ms: int) -> None:
        """Remember the highest nonce count accepted for ``nonce``, keeping the table bounded."""
        table = self._nc_seen
        if nonce in table:
            table[nonce] = (issued_ms, nc)
            return
        table[nonce] = (issued_ms, nc)
        limit_ms = self.nonce_lifetime * 1000
        # Cheap incremental pruning from the (oldest) front.
        for _ in range(4):
            first = next(iter(table))
            if now_ms - table[first][0] <= limit_ms or first == nonce:
                break
            del table[first]
        if len(table) <= self.max_tracked_nonces:
            return
        # Hard cap: drop every expired entry, then evict the oldest live ones. Eviction only
        # ever makes us stricter, because evicted nonces fall under _floor_ms.
        for key in [k for k, (ts, _) in table.items() if now_ms - ts > limit_ms]:
            del table[key]
        target = max(1, self.max_tracked_nonces * 9 // 10)
        while len(table) > target:
            key = next(iter(table))
            if key == nonce and len(table) > 1:
                table[key] = table.pop(key)  # keep the entry just accepted; move it to the end
                continue
            issued, _ = table.pop(key)
            self._floor_ms = issued if self._floor_ms is None else max(self._floor_ms, issued)

    @property
    def tracked_nonces(self) -> int:
        """Number of nonces currently in the replay table (for stats and tests)."""
        return len(self._nc_seen)

    # -- challenges -----------------------------------------------------------------------

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        """Header values for WWW-Authenticate / Proxy-Authenticate, one per algorithm.

        Strongest algorithm first (RFC 8760 section 2, RFC 7616 section 3.7); all share one
        fresh nonce. ``stale=True`` adds ``stale=true`` (RFC 7616 section 3.3), used when
        :meth:`verify` returned a stale result.
        """
        nonce = self.make_nonce(now)
        values = []
        for algorithm in self.algorithms:
            value = (
                f'Digest realm={_quote(self.realm)}, nonce="{nonce}", opaque="{self.opaque}", '
                f'algorithm={algorithm}, qop="auth"'
            )
            if stale:
                value += ", stale=true"
            values.append(value)
        return values

    # -- verification ---------------------------------------------------------------------

    def verify(
        self,
        header_value: str,
        method: str,
        password_for: Callable[[str], str | StoredHA1 | None],
        now: float,
        *,
        body: bytes = b"",
    ) -> AuthResult:
        """Check an Authorization / Proxy-Authorization value (RFC 3261 section 22.4).

        ``password_for(username)`` returns the user's password, or their :class:`StoredHA1`,
        or ``None`` if there is no such user. ``body`` is the message body, used only for
        ``qop=auth-int``. The digest is computed over the ``uri`` parameter as the client sent
        it (not compared with the Request-URI: clients legitimately differ in how they write
        it).

        Never raises for any ``header_value``. Failure reasons include ``"malformed header"``,
        ``"missing parameter: X"``, ``"wrong realm"``, ``"unsupported algorithm"``,
        ``"invalid nonce"``, ``"unknown user"``, ``"bad credentials"``, ``"nonce count
        replay"``; with correct credentials but an expired (or already consumed, when used
        without qop) nonce the result is ``ok=False, stale=True, reason="stale nonce"``.
        A nonce used without qop (RFC 2069 form) is single-use, since there is no nonce count
        to detect a replay with.
        """
        try:
            scheme, params = parse_auth_header(header_value)
        except ValueError as exc:
            return _fail(f"malformed header: {exc}")
        if scheme != "Digest":
            return _fail("unsupported auth scheme")
        username = params.get("username")
        for name in ("username", "realm", "nonce", "uri", "response"):
            if name not in params:
                return _fail(f"missing parameter: {name}", username)
        assert username is not None
        if params["realm"] != self.realm:
            return _fail("wrong realm", username)
        algorithm = _canonical_algorithm(params.get("algorithm"))
        if algorithm is None or algorithm not in self.algorithms:
            return _fail("unsupported algorithm", username)
        if params.get("userhash", "false").lower() != "false":
            # RFC 7616 section 3.4.4 user hashing is not used by SIP (RFC 8760 section 2).
            return _fail("userhash not supported", username)
        nonce = params["nonce"]
        issued_ms = self._nonce_time(nonce)
        if issued_ms is None:
            return _fail("invalid nonce", username)
        if "opaque" in params and not hmac.compare_digest(
            _to_bytes(params["opaque"]), self.opaque.encode("ascii")
        ):
            return _fail("opaque mismatch", username)

        qop = params.get("qop")
        nc_text = params.get("nc")
        cnonce = params.get("cnonce")
        nc_value = _CONSUMED
        if qop is not None:
            if qop.lower() not in ("auth", "auth-int"):
                return _fail("unsupported qop", username)
            # RFC 7616 section 3.4: with qop, cnonce and nc are mandatory.
            if nc_text is None or cnonce is None:
                return _fail("missing parameter: nc/cnonce", username)
            if not _NC_RE.fullmatch(nc_text):
                return _fail("malformed nc", username)
            nc_value = int(nc_text, 16)
            if nc_value == 0:
                return _fail("malformed nc", username)
        else:
            nc_text = None
            if not algorithm.endswith("-sess"):
                cnonce = None
            elif cnonce is None:
                return _fail("missing parameter: cnonce", username)

        secret = password_for(username)
        stored = secret.get(algorithm) if isinstance(secret, StoredHA1) else None
        expected = compute_response(
            algorithm=algorithm,
            username=username,
            realm=params["realm"],
            password=secret if isinstance(secret, str) else "",
            ha1=stored,
            method=method,
            uri=params["uri"],
            nonce=nonce,
            qop=qop,
            nc=nc_text,
            cnonce=cnonce,
            body=body,
        )
        if secret is None:
            # Hash anyway (above) so the timing does not reveal which users exist.
            return _fail("unknown user", username)
        if isinstance(secret, StoredHA1) and stored is None:
            return _fail("no stored HA1 for the algorithm", username)
        response = params["response"]
        if not (len(response) == len(expected) and _HEX_RE.fullmatch(response)):
            return _fail("bad credentials", username)
        if not hmac.compare_digest(expected.encode("ascii"), response.lower().encode("ascii")):
            return _fail("bad credentials", username)

        # The credentials are right; now decide whether this nonce may still be used.
        now_ms = int(now * 1000)
        if not self._is_fresh(nonce, issued_ms, now_ms):
            return _fail("stale nonce", username, stale=True)
        seen = self._nc_seen.get(nonce)
        if seen is not None:
            if qop is None:
                # RFC 2069 form: no nonce count, so the nonce is single-use.
                return _fail("stale nonce", username, stale=True)
            if nc_value <= seen[1]:
                # RFC 7616 section 3.4 / RFC 2617 section 4.5: replayed nonce count.
                return _fail("nonce count replay", username)
        self._record(nonce, issued_ms, nc_value, now_ms)
        return AuthResult(ok=True, username=username, stale=False, reason="ok")
