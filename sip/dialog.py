"""SIP dialogs (RFC 3261 section 12) and CANCEL construction (section 9.1).

A :class:`Dialog` holds the state of RFC 3261 section 12.1 (Call-ID, tags, local and remote
URIs, remote target, route set, sequence numbers) and builds in-dialog requests per
section 12.2.1.1. It is plain data: no I/O, no timers, no transactions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sip.errors import SipParseError
from sip.message import Headers, Request, Response
from sip.uri import NameAddr, parse_name_addr, split_list

# Methods whose requests carry a Contact and refresh the remote target (RFC 3261 section 12.2,
# RFC 3311, RFC 6665, RFC 3515).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})

DEFAULT_MAX_FORWARDS = 70


def _quote_display(display: str) -> str:
    escaped = display.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" '


def _party(uri: str, display: str | None, tag: str) -> str:
    """A From/To value: ["display"] <uri>[;tag=tag]."""
    head = _quote_display(display) if display else ""
    suffix = f";tag={tag}" if tag else ""
    return f"{head}<{uri}>{suffix}"


def _values(msg: Request | Response, name: str) -> list[str]:
    """Every element of a list header, split on top-level commas."""
    out: list[str] = []
    for value in msg.headers.get_all(name):
        out.extend(part for part in split_list(value) if part)
    return out


def _contact_uri(msg: Request | Response) -> str | None:
    """The URI of the first Contact of ``msg`` (RFC 3261 section 12.1.1/12.1.2), or None."""
    values = _values(msg, "Contact")
    if not values or values[0] == "*":
        return None
    return str(parse_name_addr(values[0]).uri)


@dataclass(slots=True)
class Dialog:
    """One dialog as seen from our side (RFC 3261 section 12).

    ``local_uri``/``remote_uri`` are the From/To URIs (without tags); ``route_set`` holds
    Route values (``<uri;lr>`` name-addr text) in the order they go into requests;
    ``local_seq`` is 0 while empty (section 12.1.1); ``remote_seq`` is None while empty.
    ``local_contact`` is the Contact value put into target-refresh requests.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    secure: bool = False
    local_contact: str | None = None
    local_display: str | None = None
    remote_display: str | None = None
    user_data: Any = None

    # ---- creation --------------------------------------------------------------------------

    @classmethod
    def uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog our ``request`` (INVITE) creates on a 1xx-with-tag or 2xx ``response``
        (RFC 3261 section 12.1.2): route set = Record-Route of the response reversed, remote
        target = Contact of the response, local sequence number = CSeq of the request."""
        local = parse_name_addr(request.first("From"))
        remote = parse_name_addr(request.first("To"))
        response_to = parse_name_addr(response.first("To"))
        route_set = _values(response, "Record-Route")
        route_set.reverse()
        target = _contact_uri(response) or request.uri
        contact = request.headers.get("Contact")
        return cls(
            call_id=request.call_id,
            local_tag=local.tag or "",
            # A response without a To tag has a null tag (RFC 3261 section 12.1.2).
            remote_tag=response_to.tag or "",
            local_uri=str(local.uri),
            remote_uri=str(remote.uri),
            remote_target=target,
            route_set=route_set,
            local_seq=request.cseq[0],
            remote_seq=None,
            secure=request.uri.lower().startswith("sips:"),
            local_contact=contact,
            local_display=local.display,
            remote_display=remote.display,
        )

    @classmethod
    def uas(cls, request: Request, local_tag: str, contact: str) -> Dialog:
        """The dialog we create answering ``request`` with ``local_tag`` (RFC 3261 section
        12.1.1): route set = Record-Route of the request in order, remote target = its Contact,
        remote sequence number = its CSeq. ``contact`` is our Contact header value
        (e.g. ``"<sip:switch@192.0.2.1:5060>"``)."""
        local = parse_name_addr(request.first("To"))
        remote = parse_name_addr(request.first("From"))
        target = _contact_uri(request) or str(remote.uri)
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote.tag or "",
            local_uri=str(local.uri),
            remote_uri=str(remote.uri),
            remote_target=target,
            route_set=_values(request, "Record-Route"),
            local_seq=0,
            remote_seq=request.cseq[0],
            secure=request.uri.lower().startswith("sips:"),
            local_contact=contact,
            local_display=local.display,
            remote_display=remote.display,
        )

    @property
    def id(self) -> tuple[str, str, str]:
        """The dialog ID (Call-ID, local tag, remote tag), RFC 3261 section 12."""
        return (self.call_id, self.local_tag, self.remote_tag)

    # ---- requests --------------------------------------------------------------------------

    def _first_route(self) -> NameAddr | None:
        if not self.route_set:
            return None
        return parse_name_addr(self.route_set[0])

    def request_uri_and_routes(self) -> tuple[str, list[str]]:
        """Request-URI and Route values for the next request (RFC 3261 section 12.2.1.1)."""
        first = self._first_route()
        if first is None:
            return self.remote_target, []
        if "lr" in first.uri.params:
            # Loose routing: Request-URI = remote target, Route = route set.
            return self.remote_target, list(self.route_set)
        # Strict routing: Request-URI = first route (minus parameters a Request-URI may not
        # carry, section 19.1.1 table 1), Route = the rest plus the remote target last.
        params = {k: v for k, v in first.uri.params.items() if k != "method"}
        uri = replace(first.uri, params=params, headers={})
        return str(uri), [*self.route_set[1:], f"<{self.remote_target}>"]

    def _build(
        self,
        method: str,
        seq: int,
        via: str,
        contact: str | None,
        body: bytes,
        content_type: str | None,
    ) -> Request:
        uri, routes = self.request_uri_and_routes()
        headers = Headers()
        headers.add("Via", via)
        headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
        for route in routes:
            headers.add("Route", route)
        headers.add("From", _party(self.local_uri, self.local_display, self.local_tag))
        headers.add("To", _party(self.remote_uri, self.remote_display, self.remote_tag))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{seq} {method}")
        if contact is None and method in TARGET_REFRESH_METHODS:
            contact = self.local_contact
        if contact is not None:
            headers.add("Contact", contact)
        if content_type is not None:
            headers.add("Content-Type", content_type)
        return Request(method=method, uri=uri, headers=headers, body=body)

    def create_request(
        self,
        method: str,
        *,
        via: str,
        contact: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """Build an in-dialog request (RFC 3261 section 12.2.1.1).

        ``via`` is the complete top Via value (with its branch). The local sequence number is
        incremented first, except for ACK and CANCEL which reuse it. Target-refresh methods
        get ``contact`` or the dialog's ``local_contact``; other methods only an explicit one.
        """
        if method not in ("ACK", "CANCEL"):
            # Section 12.2.1.1: an empty local sequence number starts from a chosen value
            # (we start at 1); otherwise it is incremented by one.
            self.local_seq += 1
        return self._build(method, self.local_seq, via, contact, body, content_type)

    def create_ack(
        self,
        invite_cseq: int,
        *,
        via: str,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK for a 2xx to the INVITE with CSeq number ``invite_cseq`` (RFC 3261 section
        13.2.2.4): built like any in-dialog request, CSeq ``invite_cseq ACK``. ``body`` is for
        an offer/answer in the ACK (RFC 3264 delayed offer)."""
        return self._build("ACK", invite_cseq, via, None, body, content_type)

    def next_hop(self) -> str:
        """The URI to resolve for the next in-dialog request: the first route's URI when a
        route set exists (loose or strict), else the remote target (RFC 3261 section 8.1.2)."""
        first = self._first_route()
        if first is None:
            return self.remote_target
        return str(first.uri)

    # ---- updates from the peer -------------------------------------------------------------

    def update_remote_target(self, msg: Request | Response) -> None:
        """Replace the remote target with ``msg``'s Contact, if it has a usable one (target
        refresh, RFC 3261 section 12.2). An unparsable Contact leaves the target unchanged."""
        try:
            target = _contact_uri(msg)
        except SipParseError:
            return
        if target is not None:
            self.remote_target = target

    def check_remote_cseq(self, request: Request) -> bool:
        """Section 12.2.2: record the CSeq of an in-dialog request; False when it is lower
        than the remote sequence number (out of order: answer 500)."""
        number = request.cseq[0]
        if self.remote_seq is not None and number < self.remote_seq:
            return False
        self.remote_seq = number
        return True


def create_cancel(invite: Request) -> Request:
    """The CANCEL for ``invite`` (RFC 3261 section 9.1): same Request-URI, Call-ID, To, From
    and CSeq number (method CANCEL), only the INVITE's top Via, and its Route values."""
    src = invite.headers
    headers = Headers()
    top = src.get("Via")
    if top is not None:
        headers.add("Via", top)
    headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
    for route in src.get_all("Route"):
        headers.add("Route", route)
    for name in ("From", "To", "Call-ID"):
        value = src.get(name)
        if value is not None:
            headers.add(name, value)
    headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
    return Request(method="CANCEL", uri=invite.uri, headers=headers)
