"""Call control: the verbs an app (or the HTTP layer, or a vendor front-end) drives calls with.

:class:`CallControl` is mixed into :class:`switch.app.Switch`, so an embedding program holds
one object::

    async with Switch(config) as sw:
        ref = sw.originate("1001", then="+905321234567", caller_id="+902121234567")
        cdr = await sw.wait_call(ref.call_id)

Destinations are strings:

* ``"1001"`` an extension (every registered contact rings), or the number of a ring group,
  queue or call flow from the config;
* ``"group:sales"``, ``"queue:support"``, ``"flow:ivr"`` by name;
* ``"message:connecting"`` (play a prompt, then hang up; only as the second stage);
* an outside number, E.164 (``"+905321234567"``) or national (``"05321234567"``),
  normalised with ``phonenumbers`` and sent out the trunk the routes pick.

A comma-separated list means one call per entry (:meth:`CallControl.originate_many`). A
destination with any character that could smuggle a second target or a header into a SIP
message (``& ; < > " '`` CR, LF, blanks, or a comma where no list is allowed) is rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from media.playback import PlaybackHandle
from media.wav import Prompt
from switch.audit import AuditLog
from switch.b2bua import B2BUA, Call, CallEvent, ForkTarget, Group, Leg, LegState, Outcome
from switch.config import Config, Queue, RingGroup, Trunk
from switch.limits import LimitExceeded, Limits, Permit
from switch.policy import PolicyBook
from switch.registrar import LocationService
from switch.routing import ExtensionTarget, Router, TrunkTarget, Unroutable, to_e164

if TYPE_CHECKING:
    from switch.flows import Flow, FlowResult

log = logging.getLogger(__name__)

_ENTRY = re.compile(
    r"^(?:\+?[0-9*#]{1,32}|(?:group|queue|flow|message):[a-z0-9_-]{1,64}(?:/[a-z0-9_-]{1,64})?)$"
)
_UNSAFE = re.compile(r"[&;<>\"'\r\n\t\s\\]")
_CALLER_ID = re.compile(r"^\+?[0-9]{1,32}$")


class DestinationError(ValueError):
    """A destination string that is malformed, unsafe or has no route."""


class DestinationNotAllowed(DestinationError):
    """A valid destination the account's policy (``[policy.<tenant>]``) does not allow."""

    def __init__(self, tenant: str, destination: str, reason: str) -> None:
        super().__init__(f"{destination!r} is not allowed for {tenant!r}: {reason}")
        self.tenant = tenant
        self.destination = destination
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Destination:
    """A parsed destination."""

    kind: str  # extension | group | queue | flow | message | number
    value: str  # extension number, group/queue/flow name, prompt name, or E.164 number
    text: str  # as given
    trunk: Trunk | None = None  # for numbers: the trunk the routes picked


def split_destinations(text: str, *, allow_list: bool = True) -> list[str]:
    """Split and check a destination string; raises :class:`DestinationError`."""
    if not isinstance(text, str) or not text.strip():
        raise DestinationError("destination is empty")
    if _UNSAFE.search(text.strip()):
        raise DestinationError(f"destination contains a forbidden character: {text!r}")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and not allow_list:
        raise DestinationError("a list of destinations is not allowed here")
    if len(parts) > 100:
        raise DestinationError("at most 100 destinations in one request")
    for part in parts:
        if not _ENTRY.match(part):
            raise DestinationError(f"not a valid destination: {part!r}")
    return parts


def check_caller_id(number: str | None) -> str | None:
    """A caller ID number must be digits with an optional ``+``."""
    if number is None or number == "":
        return None
    if not _CALLER_ID.match(number):
        raise DestinationError(f"caller ID must be digits with an optional '+': {number!r}")
    return number


@dataclass(slots=True)
class CallRef:
    """What :meth:`CallControl.originate` returns at once, before anything rings."""

    call_id: str
    leg_id: str
    destination: str
    second_leg_id: str | None = None  # the id the second stage's leg will have (``then``)


@dataclass(slots=True)
class _Session:
    """Call-control state kept beside a B2BUA call."""

    call: Call
    tenant: str = "default"
    permit: Permit | None = None
    waited: float = 0.0
    done: asyncio.Future[dict[str, Any]] | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    caller_id: str | None = None
    caller_name: str | None = None


class CallControl:
    """The call-control verbs (mixed into :class:`switch.app.Switch`)."""

    config: Config
    b2bua: B2BUA
    router: Router
    location: LocationService
    limits: Limits
    policy: PolicyBook  # [policy.<tenant>]: what each account may dial
    audit: AuditLog  # who asked for which call (logger "switch.audit")
    flows: dict[str, Flow]
    _sessions: dict[str, _Session]
    recent_cdrs: OrderedDict[str, dict[str, Any]]  # the last 1000 ended calls
    cdr_sinks: list[Callable[[dict[str, Any]], object]]

    # the composition root provides these
    def subscribe(self, callback: Callable[[CallEvent], object]) -> Callable[[], None]:
        raise NotImplementedError

    def play(self, leg_id: str, prompt: str | Path | Prompt, *, loop: bool = False,
             barge_in: bool = False, language: str | None = None) -> PlaybackHandle:
        raise NotImplementedError

    def _fork_targets(self, target: ExtensionTarget | TrunkTarget, now: float) -> list[ForkTarget]:
        raise NotImplementedError

    # ---- destinations ----------------------------------------------------------------------

    def resolve_destination(self, text: str) -> Destination:
        """Parse one destination and find where it goes (raises :class:`DestinationError`)."""
        (entry,) = split_destinations(text, allow_list=False)
        kind, sep, name = entry.partition(":")
        if sep:
            if kind == "group" and self._group(name) is None:
                raise DestinationError(f"no such ring group: {name!r}")
            if kind == "queue" and self._queue(name) is None:
                raise DestinationError(f"no such queue: {name!r}")
            if kind == "flow" and name not in self.flows:
                raise DestinationError(f"no such call flow: {name!r}")
            return Destination(kind, name, entry)
        if self.router.is_extension(entry):
            return Destination("extension", entry, entry)
        for group in self.config.groups:
            if group.number == entry:
                return Destination("group", group.name, entry)
        for queue in self.config.queues:
            if queue.number == entry:
                return Destination("queue", queue.name, entry)
        for name, flow in self.flows.items():
            if flow.number == entry:
                return Destination("flow", name, entry)
        routed = self.router.route_outbound(entry)
        if isinstance(routed, Unroutable):
            if to_e164(entry, self.config.calls.default_country) is None:
                raise DestinationError(f"not a valid phone number: {entry!r}")
            raise DestinationError(f"no route for {entry!r}")
        if isinstance(routed, ExtensionTarget):
            return Destination("extension", routed.number, entry)
        return Destination("number", routed.number, entry, trunk=routed.trunk)

    def check_policy(self, tenant: str, dest: Destination) -> None:
        """Raise :class:`DestinationNotAllowed` when ``tenant``'s destination policy refuses
        ``dest`` (outside numbers only; internal destinations are always allowed)."""
        reason = self.policy.check(tenant, dest.kind, dest.value)
        if reason is not None:
            raise DestinationNotAllowed(tenant, dest.text, reason)

    def audit_originate(self, result: str, *, tenant: str, destination: str,
                        tags: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """One audit entry for an originate: who asked (from ``tags``: the front-end, the
        scheduled job, and ``requested_by`` = ``{"via", "api_key", "client_ip"}`` from the
        HTTP API) and the result (``accepted`` / ``denied``)."""
        tags = tags or {}
        who = tags.get("requested_by")
        who = who if isinstance(who, Mapping) else {}
        self.audit.record(
            "originate", result=result, tenant=tenant, destination=destination,
            via=who.get("via") or ("frontend" if tags.get("frontend") else None),
            api_key=who.get("api_key"), client_ip=who.get("client_ip"),
            frontend=tags.get("frontend"), job_id=tags.get("job_id"),
            external_id=tags.get("external_id"), **fields)

    def _group(self, name: str) -> RingGroup | None:
        return next((g for g in self.config.groups if g.name == name), None)

    def _queue(self, name: str) -> Queue | None:
        return next((q for q in self.config.queues if q.name == name), None)

    def _targets(self, dest: Destination) -> list[ForkTarget]:
        now = asyncio.get_running_loop().time()
        if dest.kind == "extension":
            return self._fork_targets(ExtensionTarget(dest.value), now)
        if dest.kind == "group":
            group = self._group(dest.value)
            assert group is not None
            targets: list[ForkTarget] = []
            for member in group.members:
                targets.extend(self._fork_targets(ExtensionTarget(member), now))
            return targets
        if dest.kind == "number":
            assert dest.trunk is not None
            return self._fork_targets(TrunkTarget(dest.trunk, dest.value), now)
        raise DestinationError(f"{dest.kind} {dest.value!r} cannot be dialled directly")

    def busy_extensions(self) -> set[str]:
        """Extensions in a call now (a queue rings only free agents)."""
        busy: set[str] = set()
        for call in self.b2bua.calls.values():
            if call.a is not None and call.a.state != LegState.TERMINATED:
                busy.add(call.caller)
                if call.b is not None or any(
                        f.state != LegState.TERMINATED for f in call.forks if f.group is None):
                    busy.add(call.callee)
            for group in call.groups:
                alive = group.result is not None and not group.result.done()
                up = group.winner is not None and group.winner.state == LegState.CONFIRMED
                if alive or up:
                    busy.add(group.destination)
        return busy

    # ---- originate ---------------------------------------------------------------------------

    def originate(
        self,
        destination: str,
        *,
        then: str | None = None,
        flow: str | None = None,
        caller_id: str | None = None,
        caller_name: str | None = None,
        second_caller_id: str | None = None,
        ring_timeout: float | None = None,
        second_ring_timeout: float | None = None,
        variables: Mapping[str, str] | None = None,
        record: bool | None = None,
        answer_on_bridge: bool = False,
        tenant: str = "default",
        max_wait: float = 0.0,
        tags: Mapping[str, Any] | None = None,
        on_first_outcome: Callable[[Outcome], object] | None = None,
    ) -> CallRef:
        """Place a call from the switch to ``destination``; returns its ids at once.

        ``then``: once the first leg answers, connect it to this second destination (an
        extension, group, queue or number is dialled and bridged: the click-to-call
        primitive; a flow runs on the first leg; a message is played to it, then the call
        ends). ``flow``: run that call flow on the answered leg instead. ``max_wait``: how long
        the request may wait for the tenant's or trunk's limits (concurrent calls, calls per
        second) before it fails. ``record``: record the call (None: the config's default).
        ``answer_on_bridge``: the first leg hears the second leg's early media (ringback or
        announcements from the far end) while it rings, instead of silence.
        ``on_first_outcome`` is called once with the first leg's outcome.
        """
        dest = self.resolve_destination(destination)
        if dest.kind in ("flow", "message"):
            raise DestinationError(f"a {dest.kind} cannot be called; use it as the second stage")
        second = self.resolve_destination(then) if then is not None else None
        if flow is not None and flow not in self.flows:
            raise DestinationError(f"no such call flow: {flow!r}")
        if second is not None and flow is not None:
            raise DestinationError("give either a second destination or a flow, not both")
        try:
            self.check_policy(tenant, dest)
            if second is not None:
                self.check_policy(tenant, second)
        except DestinationNotAllowed as exc:
            self.audit_originate("denied", tenant=tenant, destination=destination, tags=tags,
                                 then=then, reason=exc.reason)
            raise
        caller_id = check_caller_id(caller_id)
        second_caller_id = check_caller_id(second_caller_id)
        for timeout in (ring_timeout, second_ring_timeout):
            if timeout is not None and not 0 < timeout <= 3600:
                raise ValueError("ring timeout must be between 0 and 3600 seconds")
        call = Call(caller=caller_id or "softswitch", callee=dest.value)
        call.max_forwards = self.config.sip.max_forwards
        call.variables.update({str(k): str(v) for k, v in (variables or {}).items()})
        call.tags.update(dict(tags or {}))
        call.tags["tenant"] = tenant
        call.tags["caller_id_number"] = caller_id
        call.tags["caller_id_name"] = caller_name
        if record is not None:
            call.tags["record"] = record
        self.b2bua.calls[call.id] = call
        session = self._session(call, tenant)
        session.caller_id, session.caller_name = caller_id, caller_name
        leg_id = str(uuid.uuid4())
        second_id = str(uuid.uuid4()) if second is not None else None
        self.b2bua.emit("initiated", call, None, caller=call.caller, callee=destination,
                         originated=True, leg_id=leg_id)
        self.audit_originate("accepted", tenant=tenant, destination=destination, tags=tags,
                             then=then, flow=flow, caller_id=caller_id, call_id=call.id)
        self._spawn(session, self._run_originate(
            session, dest, leg_id, second, second_id, flow,
            caller_id=caller_id, caller_name=caller_name,
            second_caller_id=second_caller_id or caller_id,
            ring_timeout=ring_timeout, second_ring_timeout=second_ring_timeout,
            answer_on_bridge=answer_on_bridge, max_wait=max_wait,
            on_first_outcome=on_first_outcome,
        ))
        return CallRef(call.id, leg_id, destination, second_id)

    def originate_many(self, destinations: str, **options: Any) -> list[CallRef]:
        """One call per entry of a comma-separated destination list (all checked first)."""
        entries = split_destinations(destinations)
        for entry in entries:
            self.resolve_destination(entry)
        return [self.originate(entry, **options) for entry in entries]

    def _session(self, call: Call, tenant: str = "default") -> _Session:
        session = self._sessions.get(call.id)
        if session is None:
            session = _Session(call=call, tenant=tenant)
            session.done = asyncio.get_running_loop().create_future()
            self._sessions[call.id] = session
        return session

    def _spawn(self, session: _Session, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)
        task.add_done_callback(_log_task_error)
        return task

    def _limit_keys(self, tenant: str, dest: Destination) -> list[str]:
        keys = [f"tenant:{tenant}"]
        if dest.trunk is not None:
            keys.append(f"trunk:{dest.trunk.name}")
        return keys

    async def _run_originate(
        self, session: _Session, dest: Destination, leg_id: str, second: Destination | None,
        second_id: str | None, flow: str | None, *, caller_id: str | None,
        caller_name: str | None, second_caller_id: str | None, ring_timeout: float | None,
        second_ring_timeout: float | None, answer_on_bridge: bool, max_wait: float,
        on_first_outcome: Callable[[Outcome], object] | None,
    ) -> None:
        call = session.call
        started = time.monotonic()
        try:
            session.permit = await self.limits.acquire(self._limit_keys(session.tenant, dest),
                                                       max_wait)
            session.waited = session.permit.waited
        except LimitExceeded as exc:
            session.waited = time.monotonic() - started
            call.tags["failure"] = f"limit {exc.reason}"
            self.b2bua.fail_unplaced(call, leg_id, dest.text, f"limit {exc.reason}")
            _notify(on_first_outcome, Outcome.FAILED)
            return
        if call.ended:
            session.permit.release()
            _notify(on_first_outcome, Outcome.CANCELED)
            return
        if session.waited:
            call.tags["waited"] = round(session.waited, 3)
        try:
            first = await self._dial(call, None, dest, leg_id, caller_id, caller_name,
                                     ring_timeout)
        except asyncio.CancelledError:
            # The call ended while the first leg was pending (its end cancels this task):
            # the leg's own outcome is still the answer.
            group = call.groups[0] if call.groups else None
            _notify(on_first_outcome,
                    group.outcome if group is not None and group.outcome else Outcome.CANCELED)
            raise
        outcome = first.outcome if first is not None and first.outcome else Outcome.FAILED
        _notify(on_first_outcome, outcome)
        if first is None or outcome != Outcome.ANSWERED or first.winner is None:
            return
        leg = first.winner
        if call.tags.get("record") and not call.recorders and self.b2bua.record_dir:
            self.b2bua.start_recording(call, self.b2bua.record_dir / f"{call.id}.wav")
        if flow is not None:
            await self.run_flow(leg, flow)
        elif second is not None:
            await self.connect(leg, second, leg_id=second_id, caller_id=second_caller_id,
                               ring_timeout=second_ring_timeout,
                               answer_on_bridge=answer_on_bridge)


    async def _dial(self, call: Call, caller_leg: Leg | None, dest: Destination,
                    leg_id: str | None, caller_id: str | None, caller_name: str | None,
                    ring_timeout: float | None) -> Group | None:
        """Ring a destination in ``call`` and wait for its outcome; the group is returned
        (None when nothing could be rung at all)."""
        if dest.kind == "queue":
            queue = self._queue(dest.value)
            assert queue is not None
            return await self._dial_queue(call, caller_leg, queue, leg_id, caller_id,
                                          caller_name)
        try:
            targets = self._targets(dest)
        except DestinationError as exc:
            log.info("call %s: %s", call.id, exc)
            targets = []
        if ring_timeout is None and dest.kind == "group":
            group_cfg = self._group(dest.value)
            ring_timeout = group_cfg.ring_timeout if group_cfg else None
        if call.ended:
            return None
        group = self.b2bua.originate(
            targets, destination=dest.value, caller=caller_id or call.caller,
            caller_name=caller_name, call=call, ring_timeout=ring_timeout, leg_id=leg_id,
        )
        assert group.result is not None
        await asyncio.shield(group.result)
        return group

    async def _dial_queue(self, call: Call, caller_leg: Leg | None, queue: Queue,
                          leg_id: str | None, caller_id: str | None,
                          caller_name: str | None) -> Group | None:
        """Ring the queue's free agents one at a time while the caller hears music on hold,
        until one answers or ``max_wait`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + queue.max_wait
        moh: PlaybackHandle | None = None
        if caller_leg is not None and caller_leg.media is not None:
            with contextlib.suppress(Exception):
                moh = self.play(caller_leg.id, queue.moh, loop=True)
        turn = 0
        last: Group | None = None
        try:
            while loop.time() < deadline and not call.ended:
                if caller_leg is not None and caller_leg.state != LegState.CONFIRMED:
                    return last
                busy = self.busy_extensions()
                now = loop.time()
                free = [a for a in queue.agents
                        if a not in busy and self.location.lookup(a, now)]
                if not free:
                    await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))
                    continue
                agent = free[turn % len(free)]
                turn += 1
                timeout = min(queue.agent_timeout, max(0.1, deadline - loop.time()))
                group = self.b2bua.originate(
                    self._fork_targets(ExtensionTarget(agent), now), destination=agent,
                    caller=caller_id or call.caller, caller_name=caller_name, call=call,
                    ring_timeout=timeout, leg_id=leg_id if last is None else None,
                )
                last = group
                assert group.result is not None
                if await asyncio.shield(group.result) == Outcome.ANSWERED:
                    return group
            return last
        finally:
            if moh is not None:
                moh.stop()

    async def connect(self, leg: Leg, dest: Destination | str, *, leg_id: str | None = None,
                      caller_id: str | None = None, caller_name: str | None = None,
                      ring_timeout: float | None = None,
                      answer_on_bridge: bool = False) -> Outcome:
        """Connect an answered leg to a destination: dial and bridge (extension, group,
        queue, number), run a flow, or play a message and hang up. Returns the outcome of the
        second stage."""
        if isinstance(dest, str):
            dest = self.resolve_destination(dest)
        call = leg.call
        session = self._sessions.get(call.id)
        tenant = session.tenant if session is not None else str(call.tags.get("tenant",
                                                                                "default"))
        try:
            self.check_policy(tenant, dest)
        except DestinationNotAllowed as exc:
            self.audit.record("connect", result="denied", tenant=tenant, call_id=call.id,
                              leg_id=leg.id, destination=dest.text, reason=exc.reason,
                              frontend=call.tags.get("frontend"))
            raise
        if dest.kind == "message":
            handle = self.play(leg.id, dest.value)
            await handle.wait()
            self.b2bua.hangup(leg.call)
            return Outcome.ANSWERED
        if dest.kind == "flow":
            result = await self.run_flow(leg, dest.value)
            return Outcome.ANSWERED if result.outcome != "error" else Outcome.FAILED
        unsubscribe: Callable[[], None] | None = None
        if answer_on_bridge:
            # The leg already up hears the new leg's early media (ringback, announcements)
            # as soon as there is any, instead of silence until the answer.
            def on_event(event: CallEvent) -> None:
                if event.name != "early-media" or event.call_id != call.id \
                        or event.leg_id == leg.id:
                    return
                early = self.b2bua.legs.get(event.leg_id or "")
                if early is None or early.rtp is None or leg.rtp is None \
                        or leg.state != LegState.CONFIRMED:
                    return
                self.b2bua.media.bridge(leg.rtp, early.rtp)
                if leg.media is not None and early.media is not None:
                    leg.media.stop_playback()
                    leg.media.peer, early.media.peer = early.media, leg.media

            unsubscribe = self.subscribe(on_event)
        try:
            group = await self._dial(call, leg, dest, leg_id, caller_id, caller_name,
                                     ring_timeout)
        finally:
            if unsubscribe is not None:
                unsubscribe()
        if group is None or group.winner is None or group.outcome != Outcome.ANSWERED:
            if answer_on_bridge and leg.rtp is not None:
                self.b2bua.media.unbridge(leg.rtp)
                if leg.media is not None:
                    leg.media.peer = None
            return group.outcome if group is not None and group.outcome else Outcome.FAILED
        if leg.state != LegState.CONFIRMED:
            self.b2bua.hangup_leg(group.winner)
            return Outcome.CANCELED
        self.b2bua.bridge(leg, group.winner)
        return Outcome.ANSWERED

    # ---- verbs on existing calls ---------------------------------------------------------------

    def active_call(self, call_id: str) -> Call | None:
        """The call in progress with this id, or None (ended, merged or unknown)."""
        return self.b2bua.calls.get(call_id)

    def active_calls(self) -> list[Call]:
        """Every call in progress."""
        return list(self.b2bua.calls.values())

    def end_call(self, call: Call) -> None:
        """Hang up a call (BYE answered legs, CANCEL ringing ones); nothing once it ended."""
        self.b2bua.hangup(call)

    def leg(self, leg_id: str) -> Leg:
        """The leg with this id (KeyError when unknown or ended)."""
        leg = self.b2bua.legs.get(leg_id)
        if leg is None:
            raise KeyError(f"no such leg: {leg_id}")
        return leg

    def bridge(self, leg_a: str, leg_b: str) -> None:
        """Bridge two answered legs (of one call or of two calls, which become one)."""
        self.b2bua.bridge(self.leg(leg_a), self.leg(leg_b))

    def hangup_leg(self, leg_id: str) -> None:
        """Hang up one leg; the call ends when no leg is left."""
        self.b2bua.hangup_leg(self.leg(leg_id))

    async def transfer(self, leg_id: str, destination: str, *,
                       ring_timeout: float | None = None) -> Outcome:
        """Blind transfer: the leg's current partner is hung up and the leg is connected to
        ``destination``."""
        leg = self.leg(leg_id)
        dest = self.resolve_destination(destination)
        partner = leg.bridged_to
        if partner is not None:
            self.b2bua.hangup_leg(partner)
        return await self.connect(leg, dest, ring_timeout=ring_timeout)

    async def play_and_wait(self, leg_id: str, prompt: str | Path | Prompt, *,
                            barge_in: bool = False, language: str | None = None) -> str:
        """Play a prompt and wait until it ends; returns the reason (finished, stopped,
        barge-in)."""
        handle = self.play(leg_id, prompt, barge_in=barge_in, language=language)
        return str(await handle.wait())

    async def gather(
        self, leg_id: str, *, prompt: str | None = None, min_digits: int = 1,
        max_digits: int = 20, first_timeout: float = 5.0, inter_timeout: float = 3.0,
        finish_key: str | None = "#", tries: int = 1, invalid_prompt: str | None = None,
        pattern: str | None = None, barge_in: bool = True, language: str | None = None,
    ) -> str:
        """Collect DTMF digits from a leg: play ``prompt`` (the first digit stops it when
        ``barge_in``), then wait ``first_timeout`` for the first digit and ``inter_timeout``
        between digits, until ``max_digits`` or ``finish_key`` (not included). A result shorter
        than ``min_digits`` or not matching ``pattern`` plays ``invalid_prompt`` and tries
        again, up to ``tries`` times. Returns "" when nothing valid was entered."""
        if not 1 <= min_digits <= max_digits <= 128:
            raise ValueError("need 1 <= min_digits <= max_digits <= 128")
        if first_timeout <= 0 or inter_timeout <= 0 or tries < 1:
            raise ValueError("timeouts must be positive and tries at least 1")
        if finish_key is not None and finish_key not in ("#", "*", ""):
            raise ValueError("finish_key must be '#', '*' or empty")
        regex = re.compile(pattern) if pattern else None
        leg = self.leg(leg_id)
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def on_event(event: CallEvent) -> None:
            if event.leg_id == leg.id and event.name == "dtmf":
                queue.put_nowait(str(event.data.get("digit", "")))
            elif event.call_id == leg.call.id and event.name in ("completed", "hangup"):
                queue.put_nowait(None)

        unsubscribe = self.subscribe(on_event)
        try:
            for attempt in range(tries):
                digits = await self._collect(leg, queue, prompt, max_digits, first_timeout,
                                             inter_timeout, finish_key or None, barge_in,
                                             language)
                if digits is None:
                    return ""
                if len(digits) >= min_digits and (regex is None or regex.fullmatch(digits)):
                    return digits
                if invalid_prompt is not None and attempt + 1 < tries:
                    await self.play_and_wait(leg.id, invalid_prompt, language=language)
            return ""
        finally:
            unsubscribe()

    async def _collect(self, leg: Leg, queue: asyncio.Queue[str | None], prompt: str | None,
                       max_digits: int, first_timeout: float, inter_timeout: float,
                       finish_key: str | None, barge_in: bool,
                       language: str | None) -> str | None:
        while not queue.empty():  # digits from before this attempt do not count
            queue.get_nowait()
        digits = ""
        if prompt is not None:
            handle = self.play(leg.id, prompt, barge_in=barge_in, language=language)
            waiter = asyncio.ensure_future(handle.wait())
            try:
                while not waiter.done():
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({waiter, getter},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        digit = getter.result()
                        if digit is None:
                            return None
                        if finish_key is not None and digit == finish_key:
                            handle.stop()
                            return digits
                        digits += digit
                        if len(digits) >= max_digits:
                            handle.stop()
                            return digits
                    else:
                        getter.cancel()
            finally:
                waiter.cancel()
        timeout = inter_timeout if digits else first_timeout
        while True:
            try:
                digit = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                return digits
            if digit is None:
                return None
            if finish_key is not None and digit == finish_key:
                return digits
            digits += digit
            if len(digits) >= max_digits:
                return digits
            timeout = inter_timeout

    async def run_flow(self, leg: Leg, name: str,
                       variables: Mapping[str, str] | None = None) -> FlowResult:
        """Run a configured call flow on an answered leg; the call is hung up when the flow
        ends (unless it ended by bridging and the bridged call is over already)."""
        from switch.flows import run_flow

        flow = self.flows[name]
        call = leg.call
        values = dict(call.variables)
        values.update(variables or {})
        values.setdefault("caller", call.caller)
        values.setdefault("callee", call.callee)
        values["call_id"] = call.id
        values["leg_id"] = leg.id
        host = LegFlowHost(self, leg, flow.language)
        result = await run_flow(flow, host, values)
        call.variables.update({k: v for k, v in result.variables.items()
                               if k not in ("call_id", "leg_id")})
        call.tags.setdefault("flows", []).append(
            {"flow": name, "outcome": result.outcome, "error": result.error})
        if not call.ended:
            self.b2bua.hangup(call)
        return result

    async def wait_call(self, call_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the call ends; returns its CDR."""
        session = self._sessions.get(call_id)
        if session is None or session.done is None:
            cdr = self.recent_cdrs.get(call_id)
            if cdr is not None:
                return cdr
            raise KeyError(f"no such call: {call_id}")
        return await asyncio.wait_for(asyncio.shield(session.done), timeout)

    # ---- the end of a call -----------------------------------------------------------------------

    def _call_ended(self, call: Call) -> None:
        """B2BUA hook: build the CDR, release limits, wake waiters, hand the CDR on."""
        session = self._sessions.pop(call.id, None)
        cdr = build_cdr(call, tenant=session.tenant if session else
                        str(call.tags.get("tenant", "default")))
        self.recent_cdrs[call.id] = cdr
        while len(self.recent_cdrs) > 1000:
            self.recent_cdrs.popitem(last=False)
        if session is not None:
            if session.permit is not None:
                session.permit.release()
            current = asyncio.current_task()
            for task in list(session.tasks):
                if task is not current and not task.done():
                    task.cancel()
            if session.done is not None and not session.done.done():
                session.done.set_result(cdr)
        for sink in list(self.cdr_sinks):
            try:
                sink(cdr)
            except Exception:
                log.exception("CDR sink failed")

    def inbound_session(self, call: Call) -> None:
        """Track an inbound call for wait_call() and limits."""
        self._session(call, str(call.tags.get("tenant", "default")))


class LegFlowHost:
    """Runs a call flow's steps on one leg (switch.flows.FlowHost)."""

    def __init__(self, control: CallControl, leg: Leg, language: str | None) -> None:
        self.control = control
        self.leg = leg
        self.language = language

    async def play(self, prompt: str, *, barge_in: bool = False,
                   language: str | None = None) -> None:
        await self.control.play_and_wait(self.leg.id, prompt, barge_in=barge_in,
                                         language=language or self.language)

    async def gather(self, *, prompt: str | None, min_digits: int, max_digits: int,
                     first_timeout: float, inter_timeout: float, finish_key: str | None,
                     language: str | None) -> str:
        # One try per call: the flow engine owns retries and the invalid prompt.
        return await self.control.gather(
            self.leg.id, prompt=prompt, min_digits=1, max_digits=max_digits,
            first_timeout=first_timeout, inter_timeout=inter_timeout, finish_key=finish_key,
            tries=1, language=language or self.language,
        )

    async def dial(self, destination: str, *, timeout: float, caller_id: str | None) -> str:
        try:
            outcome = await self.control.connect(self.leg, destination, ring_timeout=timeout,
                                                 caller_id=check_caller_id(caller_id))
        except DestinationNotAllowed as exc:
            # A refused destination is the flow's dial failing (its on_fail), not a crash.
            log.info("flow dial from leg %s: %s", self.leg.id, exc)
            return Outcome.REJECTED.value
        if outcome == Outcome.ANSWERED:
            # Stay in the flow until the bridged conversation is over.
            while self.leg.state == LegState.CONFIRMED and self.leg.bridged_to is not None:
                await asyncio.sleep(0.2)
        return outcome.value

    async def hangup(self) -> None:
        self.control.b2bua.hangup(self.leg.call)

    def alive(self) -> bool:
        return self.leg.state == LegState.CONFIRMED and not self.leg.call.ended


def build_cdr(call: Call, *, tenant: str = "default") -> dict[str, Any]:
    """One record for a whole call, linking every leg."""
    legs = B2BUA.leg_summaries(call)
    ended = call.ended_at or time.time()
    bridged_at = call.tags.get("bridged_at")
    answered = call.answered_at
    outcomes = [leg["outcome"] for leg in legs if leg["outcome"]]
    if call.a is not None:
        outcome = call.a.outcome.value if call.a.outcome else "failed"
        sip_status, q850 = call.a.final_status, call.a.q850
    elif call.groups:
        first = call.groups[0]
        outcome = first.outcome.value if first.outcome else "failed"
        sip_status, q850 = first.status, first.q850
    else:
        outcome = outcomes[0] if outcomes else "failed"
        sip_status, q850 = None, None
    billable_from = bridged_at or answered
    return {
        "call_id": call.id,
        "tenant": tenant,
        "caller": call.caller,
        "callee": call.callee,
        "caller_id_number": call.tags.get("caller_id_number") or call.caller,
        "caller_id_name": call.tags.get("caller_id_name"),
        "started_at": call.started_at,
        "answered_at": answered,
        "ended_at": ended,
        "duration": round(max(0.0, ended - call.started_at), 3),
        "billsec": round(max(0.0, ended - billable_from), 3) if billable_from else 0.0,
        "outcome": outcome,
        "sip_status": sip_status,
        "q850": q850,
        "legs": legs,
        "recording_ids": [str(r.get("id")) for r in call.recordings if r.get("id")],
        "recordings": [dict(r) for r in call.recordings],
        "frontend": call.tags.get("frontend"),
        "external_id": call.tags.get("external_id"),
        "variables": dict(call.variables),
        "waited": call.tags.get("waited", 0.0),
        "failure": call.tags.get("failure"),
        "flows": call.tags.get("flows", []),
    }


def _notify(callback: Callable[[Outcome], object] | None, outcome: Outcome) -> None:
    if callback is None:
        return
    try:
        callback(outcome)
    except Exception:
        log.exception("outcome callback failed")


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("call-control task failed", exc_info=task.exception())


__all__ = [
    "CallControl", "CallRef", "Destination", "DestinationError", "DestinationNotAllowed",
    "LegFlowHost", "build_cdr",
    "check_caller_id", "split_destinations",
]
