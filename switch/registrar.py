"""Registrar and location service (RFC 3261 section 10).

Phones REGISTER their contacts for an address-of-record (an extension number); calls to the
extension ring every live contact. Bindings live in memory: a restart asks phones to register
again, which they do on their refresh interval.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sip.errors import SipParseError
from sip.message import Request, Response, build_response
from sip.uri import parse_name_addr, split_list

log = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass(slots=True)
class Binding:
    """One registered contact of an address-of-record."""

    aor: str
    contact: str  # the Contact URI as the phone sent it
    expires_at: float
    call_id: str
    cseq: int
    source: Address
    transport: str
    q: float = 1.0
    user_agent: str = ""


@dataclass(slots=True)
class _Aor:
    bindings: dict[str, Binding] = field(default_factory=dict)


class LocationService:
    """Bindings per extension, expired lazily on lookup."""

    def __init__(self) -> None:
        self._aors: dict[str, _Aor] = {}

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings of ``aor``, highest q first (RFC 3261 section 16.6 ordering hint)."""
        entry = self._aors.get(aor)
        if entry is None:
            return []
        for key in [k for k, b in entry.bindings.items() if b.expires_at <= now]:
            del entry.bindings[key]
        return sorted(entry.bindings.values(), key=lambda b: -b.q)

    def all(self, now: float) -> list[Binding]:
        """Every live binding (for listings and metrics)."""
        result: list[Binding] = []
        for aor in list(self._aors):
            result.extend(self.lookup(aor, now))
        return result

    def count(self, now: float) -> int:
        """Number of live bindings."""
        return len(self.all(now))

    def _entry(self, aor: str) -> _Aor:
        entry = self._aors.get(aor)
        if entry is None:
            entry = self._aors[aor] = _Aor()
        return entry


def _contact_key(uri: str) -> str:
    # RFC 3261 section 10.3 step 7: contacts are compared with URI equality; case-folding
    # the scheme/host part is a close, cheap approximation for phones re-sending their own URI.
    return uri.strip().lower()


class Registrar:
    """Processes REGISTER requests for the configured extensions.

    ``authenticate(request, now)`` returns the authenticated username, or a ready response
    (401 challenge, 403) to send instead.
    """

    def __init__(
        self,
        location: LocationService,
        *,
        is_extension: Callable[[str], bool],
        authenticate: Callable[[Request, float], str | Response],
        min_expires: int,
        max_expires: int,
        default_expires: int,
        max_contacts: int,
        new_tag: Callable[[], str],
    ) -> None:
        self.location = location
        self._is_extension = is_extension
        self._authenticate = authenticate
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.max_contacts = max_contacts
        self._new_tag = new_tag

    def handle(self, request: Request, source: Address, transport: str, now: float) -> Response:
        """Answer one REGISTER (RFC 3261 section 10.3, steps 1-8)."""
        tag = self._new_tag()
        try:
            to = parse_name_addr(request.first("To"))
        except SipParseError as exc:
            # 416 when the To URI has a scheme we do not serve (RFC 4475 section 3.3.4).
            return build_response(request, exc.status, exc.reason, to_tag=tag)
        aor = to.uri.user or ""
        # Authenticate before saying anything about the AOR, so unknown and known users get
        # the same answer (no extension enumeration).
        auth = self._authenticate(request, now)
        if isinstance(auth, Response):
            return auth
        if not self._is_extension(aor) or auth != aor:
            # Step 6: the authenticated user must be allowed to modify this AOR.
            return build_response(request, 403, "Forbidden", to_tag=tag)

        contacts_raw: list[str] = []
        for value in request.headers.get_all("Contact"):
            contacts_raw.extend(split_list(value))
        header_expires = request.headers.get("Expires")
        try:
            default = int(header_expires) if header_expires is not None else self.default_expires
        except ValueError:
            return build_response(request, 400, "Bad Expires", to_tag=tag)
        call_id = request.call_id
        cseq, _ = request.cseq
        entry = self.location._entry(aor)

        if any(c.strip() == "*" for c in contacts_raw):
            # Step 6: "*" only alone and only with Expires: 0.
            if len(contacts_raw) != 1 or header_expires is None or default != 0:
                return build_response(request, 400, "Invalid wildcard", to_tag=tag)
            for key, binding in list(entry.bindings.items()):
                if binding.call_id == call_id and cseq <= binding.cseq:
                    return build_response(request, 500, "Out of order", to_tag=tag)
                del entry.bindings[key]
            return self._ok(request, aor, now, tag)

        updates: list[tuple[str, str, int, float]] = []
        for raw in contacts_raw:
            try:
                contact = parse_name_addr(raw)
            except SipParseError as exc:
                return build_response(request, 400, exc.reason, to_tag=tag)
            expires = default
            param = contact.params.get("expires")
            if param is not None:
                try:
                    expires = int(param)
                except ValueError:
                    return build_response(request, 400, "Bad expires parameter", to_tag=tag)
            if expires < 0:
                return build_response(request, 400, "Bad expires", to_tag=tag)
            if 0 < expires < self.min_expires:
                # RFC 3261 section 10.3 step 7 / 20.23: 423 with Min-Expires.
                return build_response(
                    request, 423, extra=[("Min-Expires", str(self.min_expires))], to_tag=tag
                )
            expires = min(expires, self.max_expires)
            q = 1.0
            qparam = contact.params.get("q")
            if qparam:
                try:
                    q = max(0.0, min(1.0, float(qparam)))
                except ValueError:
                    q = 1.0
            updates.append((_contact_key(str(contact.uri)), str(contact.uri), expires, q))

        for key, _uri, _expires, _q in updates:
            existing = entry.bindings.get(key)
            if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
                return build_response(request, 500, "Out of order", to_tag=tag)
        live = {k for k, b in entry.bindings.items() if b.expires_at > now}
        added = {key for key, _u, exp, _q in updates if exp > 0} - live
        if len(live) + len(added) > self.max_contacts:
            return build_response(request, 403, "Too many contacts", to_tag=tag)
        user_agent = request.headers.get("User-Agent") or ""
        for key, uri, expires, q in updates:
            if expires == 0:
                entry.bindings.pop(key, None)
                continue
            entry.bindings[key] = Binding(
                aor=aor,
                contact=uri,
                expires_at=now + expires,
                call_id=call_id,
                cseq=cseq,
                source=source,
                transport=transport,
                q=q,
                user_agent=user_agent,
            )
        if updates:
            log.info("REGISTER %s from %s:%s: %d contact(s)", aor, *source, len(updates))
        return self._ok(request, aor, now, tag)

    def _ok(self, request: Request, aor: str, now: float, tag: str) -> Response:
        # Step 8: the 200 lists every current binding with its remaining expiry.
        extra = [
            ("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}")
            for b in self.location.lookup(aor, now)
        ]
        extra.append(("Date", email.utils.formatdate(usegmt=True)))
        return build_response(request, 200, extra=extra, to_tag=tag)
