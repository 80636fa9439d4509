"""Tests for switch.flows: loading and validation of [[flows]], and running flows on a fake leg
against a real local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from switch.flows import (
    BranchStep,
    DialStep,
    Flow,
    FlowError,
    GatherStep,
    HttpStep,
    load_flows,
    run_flow,
)

PROMPTS = {"connecting", "enter_number", "invalid_number", "unavailable", "goodbye", "beep"}


def prompt_exists(name: str) -> bool:
    return name in PROMPTS


def load_toml(text: str, prompts: Callable[[str], bool] = prompt_exists) -> dict[str, Flow]:
    return load_flows(tomllib.loads(text)["flows"], prompts)


def load_one(text: str) -> Flow:
    (flow,) = load_toml(text).values()
    return flow


# ------------------------------------------------------------------------ fake leg


@dataclass
class FakeHost:
    """A scripted leg: gather answers come from ``digits``; every call is recorded."""

    digits: list[str] = field(default_factory=list)
    dial_results: list[str] = field(default_factory=list)
    # hang up (as the caller) while performing the n-th host call (1-based)
    caller_hangs_up_at: int | None = None
    fail_on: str | None = None  # host method that raises RuntimeError
    events: list[tuple[Any, ...]] = field(default_factory=list)
    up: bool = True

    def _record(self, *event: Any) -> None:
        self.events.append(event)
        if self.fail_on == event[0]:
            raise RuntimeError(f"{event[0]} exploded")
        if self.caller_hangs_up_at is not None and len(self.events) >= self.caller_hangs_up_at:
            self.up = False

    async def play(
        self, prompt: str, *, barge_in: bool = False, language: str | None = None
    ) -> None:
        self._record("play", prompt, barge_in, language)

    async def gather(
        self,
        *,
        prompt: str | None,
        min_digits: int,
        max_digits: int,
        first_timeout: float,
        inter_timeout: float,
        finish_key: str | None,
        language: str | None,
    ) -> str:
        self._record("gather", prompt, min_digits, max_digits, finish_key)
        return self.digits.pop(0) if self.digits else ""

    async def dial(self, destination: str, *, timeout: float, caller_id: str | None) -> str:
        self._record("dial", destination, timeout, caller_id)
        return self.dial_results.pop(0) if self.dial_results else "answered"

    async def hangup(self) -> None:
        self._record("hangup")
        self.up = False

    def alive(self) -> bool:
        return self.up

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


# ------------------------------------------------------------------------ HTTP server


@dataclass
class Recorded:
    method: str
    path: str  # raw, as sent (percent-escapes kept)
    query: str  # raw
    params: dict[str, str]  # decoded
    body: Any
    authorization: str | None


class LookupServer:
    """A real HTTP server on 127.0.0.1 (uvicorn) recording what it received."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.directory = {"1234": {"destination": "2001", "customer": {"name": "Ann", "id": 7}}}
        self.base = ""
        self.release = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/lookup", self.lookup, methods=["GET", "POST"]),
                Route("/echo/{rest:path}", self.echo, methods=["GET", "POST"]),
                Route("/echo", self.echo, methods=["GET", "POST"]),
                Route("/status/{code:int}", self.status, methods=["GET", "POST"]),
                Route("/slow", self.slow, methods=["GET", "POST"]),
                Route("/text", self.text, methods=["GET", "POST"]),
                Route("/array", self.array, methods=["GET", "POST"]),
                Route("/types", self.types, methods=["GET", "POST"]),
                Route("/big", self.big, methods=["GET"]),
            ]
        )

    async def record(self, request: Request) -> Recorded:
        raw = await request.body()
        rec = Recorded(
            method=request.method,
            path=request.scope["raw_path"].decode(),
            query=request.scope["query_string"].decode(),
            params=dict(request.query_params),
            body=json.loads(raw) if raw else None,
            authorization=request.headers.get("authorization"),
        )
        self.requests.append(rec)
        return rec

    async def lookup(self, request: Request) -> Response:
        rec = await self.record(request)
        digits = rec.body["digits"] if rec.body else rec.params.get("d", "")
        entry = self.directory.get(digits, {"destination": "", "customer": {"name": ""}})
        return JSONResponse(entry)

    async def echo(self, request: Request) -> Response:
        rec = await self.record(request)
        return JSONResponse({"path": rec.path, "query": rec.query, "params": rec.params})

    async def status(self, request: Request) -> Response:
        await self.record(request)
        return JSONResponse({"destination": "9999"}, status_code=request.path_params["code"])

    async def slow(self, request: Request) -> Response:
        await self.record(request)
        # held until the fixture tears down, so shutdown does not wait out a long sleep
        await self.release.wait()
        return JSONResponse({"destination": "9999"})

    async def text(self, request: Request) -> Response:
        await self.record(request)
        return PlainTextResponse("destination=9999")

    async def array(self, request: Request) -> Response:
        await self.record(request)
        return JSONResponse([{"destination": "9999"}])

    async def types(self, request: Request) -> Response:
        await self.record(request)
        return JSONResponse(
            {"n": 42, "f": 1.5, "t": True, "z": None, "o": {"a": [1, 2]}, "l": ["x", "y"]}
        )

    async def big(self, request: Request) -> Response:
        await self.record(request)
        return JSONResponse({"pad": "x" * (2 << 20)})


@pytest.fixture
async def server() -> AsyncIterator[LookupServer]:
    srv = LookupServer()
    config = uvicorn.Config(srv.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    userver = uvicorn.Server(config)
    task = asyncio.create_task(userver.serve())
    for _ in range(500):
        if userver.started:
            break
        await asyncio.sleep(0.01)
    assert userver.started, "test HTTP server did not start"
    port = userver.servers[0].sockets[0].getsockname()[1]
    srv.base = f"http://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        srv.release.set()
        userver.should_exit = True
        await task


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env off: a proxy configured in the environment must not intercept 127.0.0.1.
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


# ------------------------------------------------------------------------ loading

EXAMPLE = """
[[flows]]
name = "support"
number = "500"
params = ["customer"]
language = "en"
  [[flows.steps]]
  action = "play"
  prompt = "connecting"
  barge_in = true
  [[flows.steps]]
  action = "gather"
  var = "digits"
  prompt = "enter_number"
  min_digits = 1
  max_digits = 12
  first_timeout = 5.0
  inter_timeout = 3
  finish_key = "#"
  tries = 3
  invalid_prompt = "invalid_number"
  pattern = "^[0-9]+$"
  on_fail = "bye"
  [[flows.steps]]
  action = "http"
  url = "BASE/lookup?d=${digits}"
  method = "POST"
  json = { digits = "${digits}", customer = "${customer}", n = 3, tags = ["a", "${caller}"] }
  timeout = 5.0
  username = "u"
  password = "p"
  set = { dest = "destination", name = "customer.name" }
  on_error = "bye"
  [[flows.steps]]
  action = "branch"
  var = "dest"
  cases = { "" = "bye" }
  [[flows.steps]]
  action = "set"
  var = "x"
  value = "to ${dest}"
  [[flows.steps]]
  id = "dial"
  action = "dial"
  destination = "${dest}"
  timeout = 30.0
  caller_id = "${customer}"
  on_fail = "sorry"
  [[flows.steps]]
  action = "goto"
  target = "bye"
  [[flows.steps]]
  id = "sorry"
  action = "play"
  prompt = "unavailable"
  [[flows.steps]]
  id = "bye"
  action = "hangup"
"""


def example(base: str = "http://127.0.0.1:9000") -> str:
    return EXAMPLE.replace("BASE", base)


def test_example_loads_into_typed_steps() -> None:
    asked: list[str] = []

    def exists(name: str) -> bool:
        asked.append(name)
        return prompt_exists(name)

    flows = load_toml(example(), exists)
    flow = flows["support"]
    assert flow.number == "500"
    assert flow.params == ("customer",)
    assert flow.language == "en"
    assert [s.action for s in flow.steps] == [
        "play", "gather", "http", "branch", "set", "dial", "goto", "play", "hangup",
    ]  # fmt: skip
    assert dict(flow.labels) == {"dial": 5, "sorry": 7, "bye": 8}
    gather = flow.steps[1]
    assert isinstance(gather, GatherStep)
    assert (gather.min_digits, gather.max_digits, gather.tries) == (1, 12, 3)
    assert gather.inter_timeout == 3.0 and gather.finish_key == "#"
    assert gather.pattern is not None and gather.pattern.pattern == "^[0-9]+$"
    http = flow.steps[2]
    assert isinstance(http, HttpStep)
    assert http.method == "POST" and http.auth == ("u", "p")
    assert dict(http.set) == {"dest": ("destination",), "name": ("customer", "name")}
    branch = flow.steps[3]
    assert isinstance(branch, BranchStep)
    assert dict(branch.cases) == {"": "bye"} and branch.default is None
    dial = flow.steps[5]
    assert isinstance(dial, DialStep) and dial.on_fail == "sorry"
    # literal prompts are checked, in order
    assert asked == ["connecting", "enter_number", "invalid_number", "unavailable"]


def test_defaults() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "d"
        steps = [{ action = "gather", var = "v" }, { action = "dial", destination = "${v}" },
                 { action = "http", url = "https://example.com/x" }]
        """
    )
    gather, dial, http = flow.steps
    assert isinstance(gather, GatherStep)
    assert (gather.min_digits, gather.max_digits, gather.tries, gather.finish_key) == (
        1, 20, 3, "#",
    )  # fmt: skip
    assert gather.prompt is None and gather.on_fail is None
    assert isinstance(dial, DialStep) and dial.timeout == 30.0 and dial.caller_id is None
    assert isinstance(http, HttpStep) and http.method == "GET" and http.timeout == 5.0
    assert flow.number is None and flow.params == () and flow.language is None


def test_templated_prompt_not_checked_at_load() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "t"
        params = ["p"]
        steps = [{ action = "play", prompt = "${p}" }]
        """
    )
    assert flow.steps[0].action == "play"


def base_flow() -> dict[str, Any]:
    """A valid flow, each bad case below breaks one thing in a copy of it."""
    return {
        "name": "t",
        "number": "700",
        "params": ["who"],
        "steps": [
            {"action": "play", "prompt": "connecting"},
            {"id": "ask", "action": "gather", "var": "d", "prompt": "enter_number"},
            {"action": "http", "url": "http://127.0.0.1:1/x?d=${d}", "set": {"dest": "a.b"}},
            {"action": "branch", "var": "dest", "cases": {"": "ask", "*": "go"}},
            {"id": "go", "action": "dial", "destination": "${dest}"},
            {"action": "hangup"},
        ],
    }


def step(i: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(flow: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is None:
                flow["steps"][i].pop(key, None)
            else:
                flow["steps"][i][key] = value

    return mutate


def flow_key(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(flow: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is None:
                flow.pop(key, None)
            else:
                flow[key] = value

    return mutate


BAD_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown action", step(0, action="jump"), r"^flows\.t\.steps\[0\]: unknown action 'jump'"),
    ("action missing", step(0, action=None), r"^flows\.t\.steps\[0\]: missing string key 'action'"),
    ("missing key", step(1, var=None), r"^flows\.t\.steps\[1\]: missing key 'var'$"),
    ("extra key", step(0, loop=True), r"^flows\.t\.steps\[0\]: unknown key 'loop'$"),
    ("mistyped bool", step(0, barge_in="yes"), r"steps\[0\]: 'barge_in' must be true or false"),
    ("mistyped prompt", step(0, prompt=5), r"steps\[0\]: 'prompt' must be a string, not a number"),
    ("mistyped int", step(1, max_digits="4"), r"steps\[1\]: 'max_digits' must be an integer"),
    ("bool as int", step(1, tries=True), r"steps\[1\]: 'tries' must be an integer"),
    ("float as int", step(1, tries=2.5), r"steps\[1\]: 'tries' must be an integer"),
    (
        "min > max",
        step(1, min_digits=5, max_digits=3),
        r"^flows\.t\.steps\[1\]: 'min_digits' \(5\) must not exceed 'max_digits' \(3\)$",
    ),
    ("zero tries", step(1, tries=0), r"steps\[1\]: 'tries' must be between 1 and 20, not 0"),
    ("negative timeout", step(1, first_timeout=-1), r"steps\[1\]: 'first_timeout' must be more"),
    ("zero timeout", step(4, timeout=0), r"steps\[4\]: 'timeout' must be more than 0"),
    ("infinite timeout", step(2, timeout=float("inf")), r"steps\[2\]: 'timeout' must be more"),
    ("bool timeout", step(2, timeout=True), r"steps\[2\]: 'timeout' must be a number of seconds"),
    ("huge timeout", step(2, timeout=1e9), r"steps\[2\]: 'timeout' must be more than 0 and at"),
    ("bad regex", step(1, pattern="[0-9"), r"steps\[1\]: 'pattern' is not a valid regular expr"),
    ("bad finish key", step(1, finish_key="##"), r"steps\[1\]: 'finish_key' must be one DTMF"),
    ("ftp url", step(2, url="ftp://h/x"), r"steps\[2\]: 'url' must be an http:// or https://"),
    ("relative url", step(2, url="/x?d=${d}"), r"steps\[2\]: 'url' must be an http:// or https"),
    ("templated host", step(2, url="http://${d}/x"), r"steps\[2\]: 'url' must have a literal host"),
    (
        "templated port",
        step(2, url="http://h:${d}/x"),
        r"steps\[2\]: 'url' must have a literal host",
    ),
    ("bad method", step(2, method="PUT"), r"steps\[2\]: 'method' must be GET or POST, not 'PUT'"),
    ("json with GET", step(2, json={"a": "b"}), r"steps\[2\]: 'json' needs method = \"POST\""),
    ("json not table", step(2, method="POST", json="x"), r"steps\[2\]: 'json' must be a table"),
    ("user no password", step(2, username="u"), r"steps\[2\]: 'username' and 'password' go"),
    ("set not table", step(2, set=["dest"]), r"steps\[2\]: 'set' must be a table"),
    ("bad dotted path", step(2, set={"dest": "a..b"}), r"steps\[2\]: 'set.dest': invalid dotted"),
    (
        "assign builtin",
        step(2, set={"caller": "a"}),
        r"steps\[2\]: 'set': cannot assign built-in variable 'caller'",
    ),
    ("bad var name", step(1, var="1x"), r"steps\[1\]: 'var': invalid variable name '1x'"),
    (
        "duplicate id",
        step(4, id="ask"),
        r"^flows\.t\.steps\[4\]: duplicate id 'ask' \(also steps\[1\]\)$",
    ),
    ("bad id", step(0, id="a b"), r"steps\[0\]: 'id': invalid label 'a b'"),
    (
        "branch to unknown",
        step(3, cases={"1": "nowhere"}),
        r"^flows\.t\.steps\[3\]: 'cases\.1': unknown label 'nowhere'$",
    ),
    (
        "branch default unknown",
        step(3, cases={"*": "nowhere"}),
        r"^flows\.t\.steps\[3\]: 'cases\.\*': unknown label 'nowhere'$",
    ),
    (
        "on_fail unknown",
        step(1, on_fail="nowhere"),
        r"^flows\.t\.steps\[1\]: 'on_fail': unknown label 'nowhere'$",
    ),
    (
        "on_error unknown",
        step(2, on_error="nowhere"),
        r"^flows\.t\.steps\[2\]: 'on_error': unknown label 'nowhere'$",
    ),
    (
        "dial on_fail unknown",
        step(4, on_fail="x"),
        r"^flows\.t\.steps\[4\]: 'on_fail': unknown label 'x'$",
    ),
    (
        "unknown variable",
        step(4, destination="${dst}"),
        r"^flows\.t\.steps\[4\]: unknown variable 'dst'$",
    ),
    ("branch unknown var", step(3, var="dst"), r"^flows\.t\.steps\[3\]: unknown variable 'dst'$"),
    (
        "unknown var in json",
        step(2, method="POST", json={"a": {"b": ["${nope}"]}}),
        r"^flows\.t\.steps\[2\]: unknown variable 'nope'$",
    ),
    (
        "malformed template",
        step(4, destination="${dest"),
        r"steps\[4\]: 'destination': malformed variable reference",
    ),
    (
        "unknown prompt",
        step(0, prompt="welcome"),
        r"^flows\.t\.steps\[0\]: 'prompt': unknown promp",
    ),
    (
        "unknown invalid_prompt",
        step(1, invalid_prompt="oops"),
        r"^flows\.t\.steps\[1\]: 'invalid_prompt': unknown prompt 'oops'$",
    ),
    (
        "pause zero",
        lambda f: f["steps"].insert(0, {"action": "pause", "seconds": 0}),
        r"^flows\.t\.steps\[0\]: 'seconds' must be more than 0",
    ),
    (
        "pause missing",
        lambda f: f["steps"].insert(0, {"action": "pause"}),
        r"^flows\.t\.steps\[0\]: missing key 'seconds'$",
    ),
    ("step not table", lambda f: f["steps"].append("hangup"), r"steps\[6\]: must be a table"),
    ("bad name", flow_key(name="Support!"), r"^flows\[0\]: 'name' must match"),
    ("missing name", flow_key(name=None), r"^flows\[0\]: missing key 'name'$"),
    ("unknown flow key", flow_key(prompt="x"), r"^flows\.t: unknown key 'prompt'$"),
    ("bad number", flow_key(number="5a"), r"^flows\.t: 'number' must be digits"),
    ("number as int", flow_key(number=500), r"^flows\.t: 'number' must be a string"),
    ("bad language", flow_key(language="English"), r"^flows\.t: 'language' is not a language"),
    ("params not list", flow_key(params="who"), r"^flows\.t: 'params' must be an array"),
    ("duplicate param", flow_key(params=["a", "a"]), r"^flows\.t: 'params': duplicate 'a'$"),
    ("builtin param", flow_key(params=["leg_id"]), r"cannot assign built-in variable 'leg_id'"),
    ("empty steps", flow_key(steps=[]), r"^flows\.t: 'steps' must be a non-empty array"),
]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [pytest.param(m, msg, id=name) for name, m, msg in BAD_CASES],
)
def test_invalid_flow_rejected(mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    good = base_flow()
    load_flows([copy.deepcopy(good)], prompt_exists)  # the base is valid...
    mutate(good)
    with pytest.raises(FlowError) as info:  # ...and the mutation alone breaks it
        load_flows([good], prompt_exists)
    assert re.search(message, str(info.value)), str(info.value)
    assert isinstance(info.value, ValueError)


def test_duplicate_flow_names_and_numbers() -> None:
    one, two = base_flow(), base_flow()
    two["number"] = "701"
    with pytest.raises(FlowError, match=r"^flows\.t: duplicate flow name 't'$"):
        load_flows([one, two], prompt_exists)
    two["name"] = "u"
    two["number"] = "700"
    with pytest.raises(FlowError, match=r"^flows\.u: number '700' is already used by flow 't'$"):
        load_flows([one, two], prompt_exists)
    two["number"] = "701"
    assert set(load_flows([one, two], prompt_exists)) == {"t", "u"}


def test_flows_must_be_a_list_of_tables() -> None:
    with pytest.raises(FlowError, match=r"^flows: must be an array of tables"):
        load_flows({"name": "t"}, prompt_exists)  # type: ignore[arg-type]
    with pytest.raises(FlowError, match=r"^flows\[0\]: must be a table, not a string$"):
        load_flows(["t"], prompt_exists)  # type: ignore[list-item]


def test_variables_defined_anywhere_are_accepted() -> None:
    # A variable read before the step that writes it is accepted at load time (the simple,
    # flow-insensitive rule) and caught at run time.
    flow = load_one(
        """
        [[flows]]
        name = "late"
        steps = [{ action = "dial", destination = "${caller}${later}" },
                 { action = "set", var = "later", value = "1" }]
        """
    )
    assert len(flow.steps) == 2


# ------------------------------------------------------------------------ running


async def test_ivr_gather_http_branch_dial(server: LookupServer, client: httpx.AsyncClient) -> None:
    flow = load_toml(example(server.base))["support"]
    host = FakeHost(digits=["1234#"])
    steps: list[tuple[int, str]] = []
    result = await run_flow(
        flow,
        host,
        {"customer": "C-9", "caller": "1001", "call_id": "abc", "leg_id": "L1"},
        http=client,
        on_step=lambda i, a: steps.append((i, a)),
    )
    assert result.outcome == "hangup", result
    assert result.error is None
    assert result.variables["digits"] == "1234"  # finish key stripped
    assert result.variables["dest"] == "2001"
    assert result.variables["name"] == "Ann"
    assert result.variables["x"] == "to 2001"
    assert host.events == [
        ("play", "connecting", True, "en"),
        ("gather", "enter_number", 1, 12, "#"),
        ("dial", "2001", 30.0, "C-9"),
        ("hangup",),
    ]
    assert steps == [(0, "play"), (1, "gather"), (2, "http"), (3, "branch"), (4, "set"),
                     (5, "dial"), (6, "goto"), (8, "hangup")]  # fmt: skip
    assert result.steps == 8
    (req,) = server.requests
    assert req.method == "POST"
    assert req.params == {"d": "1234"}
    assert req.body == {"digits": "1234", "customer": "C-9", "n": 3, "tags": ["a", "1001"]}
    assert req.authorization == "Basic " + base64.b64encode(b"u:p").decode()


async def test_ivr_unknown_number_branches_to_bye(
    server: LookupServer, client: httpx.AsyncClient
) -> None:
    flow = load_toml(example(server.base))["support"]
    host = FakeHost(digits=["5555"])
    result = await run_flow(flow, host, {"customer": "C", "caller": "1"}, http=client)
    # the server answers destination "" -> branch "" -> bye, no dial
    assert result.outcome == "hangup"
    assert result.variables["dest"] == ""
    assert host.of("dial") == []
    assert host.events[-1] == ("hangup",)


async def test_dial_failure_takes_on_fail(server: LookupServer, client: httpx.AsyncClient) -> None:
    flow = load_toml(example(server.base))["support"]
    host = FakeHost(digits=["1234"], dial_results=["busy"])
    result = await run_flow(flow, host, {"customer": "C", "caller": "1"}, http=client)
    assert result.outcome == "hangup"
    assert host.events[-3:] == [
        ("dial", "2001", 30.0, "C"),
        ("play", "unavailable", False, "en"),
        ("hangup",),
    ]


async def test_dial_without_on_fail_continues() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "d"
        params = ["cid"]
        steps = [{ action = "dial", destination = "2001", caller_id = "${cid}" },
                 { action = "play", prompt = "goodbye" }]
        """
    )
    host = FakeHost(dial_results=["no-answer"])
    result = await run_flow(flow, host, {})
    assert result.outcome == "completed"
    # an empty caller id means "none"
    assert host.events == [("dial", "2001", 30.0, None), ("play", "goodbye", False, None)]


GATHER_FLOW = """
[[flows]]
name = "pin"
  [[flows.steps]]
  action = "gather"
  var = "pin"
  prompt = "enter_number"
  min_digits = 2
  max_digits = 4
  tries = 3
  invalid_prompt = "invalid_number"
  pattern = "9+"
  ON_FAIL
  [[flows.steps]]
  action = "play"
  prompt = "connecting"
  [[flows.steps]]
  id = "fail"
  action = "play"
  prompt = "unavailable"
"""


async def test_gather_retries_with_invalid_prompt() -> None:
    flow = load_one(GATHER_FLOW.replace("ON_FAIL", ""))
    # nothing, pattern mismatch ("123" is not all nines), then valid on the last try
    host = FakeHost(digits=["", "123", "999#"])
    result = await run_flow(flow, host, {}, max_steps=2)
    assert result.variables["pin"] == "999"
    assert [e[0] for e in host.events] == ["gather", "play"] * 3 + ["hangup"]
    assert host.of("play")[:2] == [("play", "invalid_number", False, None)] * 2
    assert host.events[-2] == ("play", "connecting", False, None)
    assert result.outcome == "error"  # max_steps=2 stops before the "fail" play
    assert "step limit of 2" in (result.error or "")


async def test_gather_fullmatch_and_too_many_digits() -> None:
    flow = load_one(GATHER_FLOW.replace("ON_FAIL", 'on_fail = "fail"'))
    # "9999" followed by a non-finish character, too many digits, non-DTMF garbage
    host = FakeHost(digits=["99a", "99999", "9 9"])
    result = await run_flow(flow, host, {})
    assert result.variables["pin"] == ""
    assert host.of("play") == [
        ("play", "invalid_number", False, None),
        ("play", "invalid_number", False, None),
        ("play", "unavailable", False, None),  # on_fail, no invalid prompt after the last try
    ]
    assert result.outcome == "completed"


async def test_gather_exhausted_hangs_up_by_default() -> None:
    flow = load_one(GATHER_FLOW.replace("ON_FAIL", ""))
    host = FakeHost(digits=["1", "2", "3"])
    result = await run_flow(flow, host, {})
    assert result.outcome == "hangup"
    assert "no valid input after 3 tries" in (result.error or "")
    assert len(host.of("gather")) == 3
    assert host.events[-1] == ("hangup",)
    assert ("play", "connecting", False, None) not in host.events


async def test_loop_guard() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "loop"
        steps = [{ id = "top", action = "play", prompt = "beep" },
                 { action = "goto", target = "top" }]
        """
    )
    host = FakeHost()
    result = await run_flow(flow, host, {}, max_steps=7)
    assert result.outcome == "error"
    assert result.steps == 7
    assert len(host.of("play")) == 4
    assert host.events[-1] == ("hangup",)
    assert "loop" in (result.error or "")
    default = await run_flow(flow, FakeHost(), {})
    assert default.outcome == "error" and default.steps == 1000


async def test_caller_hangs_up_mid_flow() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "h"
        steps = [{ action = "play", prompt = "beep" }, { action = "play", prompt = "connecting" },
                 { action = "dial", destination = "2001" }, { action = "hangup" }]
        """
    )
    host = FakeHost(caller_hangs_up_at=2)  # gone during the second play
    result = await run_flow(flow, host, {})
    assert result.outcome == "caller-hangup"
    assert result.steps == 2
    assert [e[0] for e in host.events] == ["play", "play"]  # no dial, no hang-up of a dead leg


async def test_caller_hangs_up_during_gather() -> None:
    flow = load_one(GATHER_FLOW.replace("ON_FAIL", ""))
    host = FakeHost(digits=["1"], caller_hangs_up_at=1)
    result = await run_flow(flow, host, {})
    assert result.outcome == "caller-hangup"
    assert host.events == [("gather", "enter_number", 2, 4, "#")]  # no invalid prompt, no retry
    assert "pin" not in result.variables


async def test_caller_hangs_up_during_last_step() -> None:
    flow = load_one('[[flows]]\nname = "x"\nsteps = [{ action = "play", prompt = "beep" }]')
    result = await run_flow(flow, FakeHost(caller_hangs_up_at=1), {})
    assert result.outcome == "caller-hangup"


URL_FLOW = """
[[flows]]
name = "enc"
params = ["q"]
  [[flows.steps]]
  action = "http"
  url = "URL"
  set = { path = "path", query = "query", got = "params.v", other = "params.x" }
  on_error = "err"
  [[flows.steps]]
  action = "hangup"
  [[flows.steps]]
  id = "err"
  action = "play"
  prompt = "unavailable"
"""


@pytest.mark.parametrize(
    "value", ["a&x=evil#frag", "../../status/500", "sp ace/+%2F?", "..", "ü€", ""]
)
async def test_url_values_are_percent_encoded(
    server: LookupServer, client: httpx.AsyncClient, value: str
) -> None:
    flow = load_one(URL_FLOW.replace("URL", server.base + "/echo/seg/${q}?v=${q}&x=1"))
    host = FakeHost()
    result = await run_flow(flow, host, {"q": value}, http=client)
    assert result.outcome == "hangup", result
    # the value stayed one path segment and one query value, and decodes back to itself
    assert result.variables["got"] == value
    assert result.variables["other"] == "1"
    (req,) = server.requests
    assert req.path.startswith("/echo/seg/")
    assert "/" not in req.path.removeprefix("/echo/seg/")
    assert req.query.count("&") == 1


async def test_http_value_conversions(server: LookupServer, client: httpx.AsyncClient) -> None:
    flow = load_one(
        f"""
        [[flows]]
        name = "types"
        [[flows.steps]]
        action = "http"
        url = "{server.base}/types"
        set = {{ n = "n", f = "f", t = "t", z = "z", o = "o", l1 = "l.1", a0 = "o.a.0" }}
        """
    )
    result = await run_flow(flow, FakeHost(), {}, http=client)
    assert result.outcome == "completed", result
    v = result.variables
    assert (v["n"], v["f"], v["t"], v["z"]) == ("42", "1.5", "true", "")
    assert json.loads(v["o"]) == {"a": [1, 2]}
    assert (v["l1"], v["a0"]) == ("y", "1")


@pytest.mark.parametrize(
    ("path", "timeout", "reason"),
    [
        ("/status/500", 5.0, "HTTP 500"),
        ("/status/404", 5.0, "HTTP 404"),
        ("/status/302", 5.0, "HTTP 302"),
        ("/text", 5.0, "not JSON"),
        ("/array", 5.0, "not a JSON object"),
        ("/types", 5.0, "no field 'destination'"),
        ("/slow", 0.3, "timed out"),
        ("/big", 5.0, "too large"),
    ],
)
async def test_http_errors_go_to_on_error(
    server: LookupServer, client: httpx.AsyncClient, path: str, timeout: float, reason: str
) -> None:
    text = f"""
        [[flows]]
        name = "err"
        [[flows.steps]]
        action = "set"
        var = "dest"
        value = "before"
        [[flows.steps]]
        action = "http"
        url = "{server.base}{path}"
        timeout = {timeout}
        set = {{ n = "n", dest = "destination" }}
        ON_ERROR
        [[flows.steps]]
        action = "dial"
        destination = "${{dest}}"
        [[flows.steps]]
        id = "oops"
        action = "play"
        prompt = "unavailable"
    """
    flow = load_one(text.replace("ON_ERROR", 'on_error = "oops"'))
    host = FakeHost()
    result = await run_flow(flow, host, {}, http=client)
    assert result.outcome == "completed"
    assert host.events == [("play", "unavailable", False, None)]
    assert result.variables["dest"] == "before"  # nothing half-applied
    assert "n" not in result.variables

    # without on_error the flow hangs up and says why
    flow = load_one(text.replace("ON_ERROR", ""))
    host = FakeHost()
    result = await run_flow(flow, host, {}, http=client)
    assert result.outcome == "hangup"
    assert host.events == [("hangup",)]
    assert reason in (result.error or ""), result.error


async def test_http_connection_refused_goes_to_on_error() -> None:
    # a port that was free a moment ago: nothing listens there
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    flow = load_one(
        f"""
        [[flows]]
        name = "refused"
        steps = [{{ action = "http", url = "http://127.0.0.1:{port}/x", on_error = "e" }},
                 {{ action = "hangup" }}, {{ id = "e", action = "play", prompt = "beep" }}]
        """
    )
    host = FakeHost()
    async with httpx.AsyncClient(trust_env=False) as client:
        result = await run_flow(flow, host, {}, http=client)
    assert host.events == [("play", "beep", False, None)]
    assert result.outcome == "completed"


async def test_default_http_client(server: LookupServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    flow = load_one(
        f"""
        [[flows]]
        name = "g"
        params = ["d"]
        [[flows.steps]]
        action = "http"
        url = "{server.base}/lookup?d=${{d}}"
        set = {{ dest = "destination" }}
        """
    )
    result = await run_flow(flow, FakeHost(), {"d": "1234"})
    assert result.outcome == "completed", result
    assert result.variables["dest"] == "2001"
    assert server.requests[0].method == "GET" and server.requests[0].body is None


async def test_missing_variable_at_run_time_is_an_error() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "late"
        steps = [{ action = "play", prompt = "beep" },
                 { action = "dial", destination = "${later}" },
                 { action = "set", var = "later", value = "1" }]
        """
    )
    host = FakeHost()
    result = await run_flow(flow, host, {})
    assert result.outcome == "error"
    assert result.error == "flow late, step 1: variable 'later' has no value"
    assert host.events == [("play", "beep", False, None), ("hangup",)]


async def test_missing_builtin_is_an_error_and_branch_reads_too() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "b"
        steps = [{ action = "branch", var = "caller", cases = { "1" = "x" } },
                 { id = "x", action = "hangup" }]
        """
    )
    result = await run_flow(flow, FakeHost(), {"callee": "2"})
    assert result.outcome == "error"
    assert "'caller' has no value" in (result.error or "")
    ok = await run_flow(flow, FakeHost(), {"caller": "7"})
    assert ok.outcome == "hangup" and ok.steps == 2


async def test_branch_cases_default_and_fallthrough() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "menu"
        params = ["choice"]
        [[flows.steps]]
        action = "branch"
        var = "choice"
        cases = { "1" = "one", "2" = "two" }
        [[flows.steps]]
        action = "branch"
        var = "choice"
        cases = { "3" = "two", "*" = "one" }
        [[flows.steps]]
        id = "one"
        action = "play"
        prompt = "beep"
        [[flows.steps]]
        action = "hangup"
        [[flows.steps]]
        id = "two"
        action = "play"
        prompt = "goodbye"
        """
    )

    async def plays(choice: str) -> list[str]:
        host = FakeHost()
        await run_flow(flow, host, {"choice": choice})
        return [e[1] for e in host.of("play")]

    assert await plays("1") == ["beep"]
    assert await plays("2") == ["goodbye"]
    assert await plays("3") == ["goodbye"]
    assert await plays("9") == ["beep"]


async def test_inputs_only_declared_params_and_builtins() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "in"
        params = ["a", "b"]
        steps = [{ action = "set", var = "out", value = "${a}|${b}|${leg_id}" },
                 { action = "gather", var = "secret", min_digits = 0 }]
        """
    )
    host = FakeHost(digits=["42"])
    result = await run_flow(flow, host, {"a": "x", "leg_id": "L", "secret": "preset", "zz": "1"})
    assert result.variables["out"] == "x||L"  # missing param b is empty
    assert result.variables["secret"] == "42"
    assert "zz" not in result.variables


async def test_templated_prompt_checked_at_run_time() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "tp"
        params = ["p"]
        language = "es"
        steps = [{ action = "play", prompt = "${p}" }]
        """
    )
    host = FakeHost()
    result = await run_flow(flow, host, {"p": "es/connecting"})
    assert result.outcome == "completed"
    assert host.events == [("play", "es/connecting", False, "es")]
    for bad in ("../../etc/passwd", "/tmp/x.wav", "x.wav", ""):
        host = FakeHost()
        result = await run_flow(flow, host, {"p": bad})
        assert result.outcome == "error", bad
        assert "invalid name" in (result.error or "")
        assert host.events == [("hangup",)]


async def test_host_exception_ends_run_with_error(caplog: pytest.LogCaptureFixture) -> None:
    flow = load_one(
        """
        [[flows]]
        name = "x"
        steps = [{ action = "dial", destination = "1" }, { action = "play", prompt = "beep" }]
        """
    )
    host = FakeHost(fail_on="dial")
    result = await run_flow(flow, host, {})
    assert result.outcome == "error"
    assert "RuntimeError: dial exploded" in (result.error or "")
    assert host.events[-1] == ("hangup",)  # best-effort hang-up
    assert any("failed at step 0" in r.getMessage() for r in caplog.records)

    # even the hang-up failing does not escape
    host = FakeHost(fail_on="hangup")
    result = await run_flow(
        load_one('[[flows]]\nname = "h"\nsteps = [{ action = "hangup" }]'), host, {}
    )
    assert result.outcome == "error"


async def test_on_step_exception_is_contained() -> None:
    flow = load_one('[[flows]]\nname = "x"\nsteps = [{ action = "play", prompt = "beep" }]')

    def boom(index: int, action: str) -> None:
        raise KeyError(action)

    result = await run_flow(flow, FakeHost(), {}, on_step=boom)
    assert result.outcome == "error"


async def test_cancellation_propagates() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "p"
        steps = [{ action = "pause", seconds = 30 }, { action = "hangup" }]
        """
    )
    host = FakeHost()
    task = asyncio.create_task(run_flow(flow, host, {}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert host.events == []


async def test_pause() -> None:
    flow = load_one(
        """
        [[flows]]
        name = "p"
        steps = [{ action = "pause", seconds = 0.05 }, { action = "play", prompt = "beep" }]
        """
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await run_flow(flow, FakeHost(), {})
    assert loop.time() - start >= 0.04
    assert result.outcome == "completed" and result.steps == 2


def test_max_steps_must_be_positive() -> None:
    flow = load_one('[[flows]]\nname = "x"\nsteps = [{ action = "hangup" }]')
    with pytest.raises(ValueError, match="max_steps"):
        asyncio.run(run_flow(flow, FakeHost(), {}, max_steps=0))
