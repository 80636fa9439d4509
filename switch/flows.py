"""Call flows: small declarative scripts (IVRs, rule groups) run on one answered call leg.

Flows come from the ``[[flows]]`` array of the switch's TOML configuration. :func:`load_flows`
validates the already-loaded list of tables into immutable :class:`Flow` objects, rejecting
every mistake it can see at load time with a :class:`FlowError` that names the flow, the step
and the reason (``flows.support.steps[3]: unknown variable 'dst'``).

:func:`run_flow` then executes a flow against a :class:`FlowHost`, the call-control facade of
one leg (play a prompt, collect digits, bridge to a destination, hang up). A run never raises
except :class:`asyncio.CancelledError`: whatever happens ends in a :class:`FlowResult`.

Steps (``action``): ``play``, ``gather``, ``http``, ``branch``, ``set``, ``dial``, ``goto``,
``hangup`` and ``pause``. Any step may carry an ``id``, the label that ``goto``, ``branch``,
``on_fail`` and ``on_error`` refer to. String values marked as templates may use
``${name}`` to substitute a variable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol, TypeAlias
from urllib.parse import quote, urlsplit

import httpx

__all__ = [
    "BUILTIN_VARIABLES",
    "BranchStep",
    "DialStep",
    "Flow",
    "FlowError",
    "FlowHost",
    "FlowResult",
    "GatherStep",
    "GotoStep",
    "HangupStep",
    "HttpStep",
    "Outcome",
    "PauseStep",
    "PlayStep",
    "SetStep",
    "Step",
    "Template",
    "load_flows",
    "run_flow",
]

log = logging.getLogger(__name__)

#: Variables the switch supplies to every run (when it knows them); flows may read them
#: without declaring them but never assign them, so a flow cannot forge the caller's identity.
BUILTIN_VARIABLES = frozenset({"caller", "callee", "call_id", "leg_id"})

_FLOW_NAME = re.compile(r"^[a-z0-9_-]+$")
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Same shape as what a phone may dial (switch.routing): a flow number is dialled like one.
_NUMBER = re.compile(r"^\+?[0-9*#]{1,32}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{1,8})?$")
# re.split with one capturing group alternates literal text and variable names.
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")
# A prompt name produced by a template at run time: plain names only, optionally qualified by a
# language ("es/connecting"). Anything else (a path, "x.wav") could make the host load an
# arbitrary file chosen by a caller or a web service.
_SAFE_PROMPT = re.compile(r"^(?:[a-z]{2,3}/)?[A-Za-z0-9_-]{1,64}$")
_DTMF = frozenset("0123456789*#ABCD")

_MAX_DIGITS = 64
_MAX_TRIES = 20
_MAX_GATHER_TIMEOUT = 300.0
_MAX_HTTP_TIMEOUT = 120.0
_MAX_DIAL_TIMEOUT = 3600.0
_MAX_PAUSE = 3600.0
# A lookup answer is a small JSON object; a bigger body is a misconfigured or hostile server.
_MAX_HTTP_BODY = 1 << 20

Outcome: TypeAlias = Literal["completed", "hangup", "caller-hangup", "error"]


class FlowError(ValueError):
    """A flow definition is invalid. ``where`` is the config path (``flows.support.steps[3]``),
    ``reason`` what is wrong; ``str()`` gives both."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class _MissingVariable(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# ------------------------------------------------------------------------------ templates


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``${name}`` references. ``parts`` alternates literal text (even indexes)
    and variable names (odd indexes)."""

    source: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        """Parse ``source``; raises ``ValueError`` on a ``${`` that is not a valid reference
        (an unclosed brace or a bad name is almost certainly a typo, not literal text)."""
        parts = tuple(_REFERENCE.split(source))
        for literal in parts[::2]:
            if "${" in literal:
                raise ValueError(f"malformed variable reference in {source!r}")
        return cls(source, parts)

    @property
    def names(self) -> tuple[str, ...]:
        """The variables referenced, in order of appearance."""
        return self.parts[1::2]

    @property
    def is_literal(self) -> bool:
        """True when the template references no variable."""
        return len(self.parts) == 1

    def render(
        self, variables: Mapping[str, str], encode: Callable[[str], str] | None = None
    ) -> str:
        """Substitute the variables, passing each value through ``encode`` if given. Raises
        ``_MissingVariable`` (internal) for a variable without a value."""
        out: list[str] = []
        for i, part in enumerate(self.parts):
            if i % 2 == 0:
                out.append(part)
                continue
            try:
                value = variables[part]
            except KeyError:
                raise _MissingVariable(part) from None
            out.append(encode(value) if encode is not None else value)
        return "".join(out)


def _quote_url_value(value: str) -> str:
    """Percent-encode a value substituted into a URL so it stays one path segment or query
    value: ``/ ? & = #`` and friends are all escaped. Dots are escaped too because httpx
    removes ``.``/``..`` path segments, which would let a value walk up the path."""
    return quote(value, safe="").replace(".", "%2E")


# ------------------------------------------------------------------------------ steps


@dataclass(frozen=True, slots=True)
class PlayStep:
    """Play a prompt (a name or a template yielding one) to the leg."""

    action: ClassVar[str] = "play"
    id: str | None
    prompt: Template
    barge_in: bool = False


@dataclass(frozen=True, slots=True)
class GatherStep:
    """Collect DTMF digits into ``var``, with retries and an optional validity pattern."""

    action: ClassVar[str] = "gather"
    id: str | None
    var: str
    prompt: Template | None = None
    min_digits: int = 1
    max_digits: int = 20
    first_timeout: float = 5.0
    inter_timeout: float = 3.0
    finish_key: str | None = "#"
    tries: int = 3
    invalid_prompt: Template | None = None
    pattern: re.Pattern[str] | None = None
    on_fail: str | None = None


#: A JSON body template: string leaves are templates, other scalars are sent as they are.
JsonTemplate: TypeAlias = (
    "Template | int | float | bool | tuple[JsonTemplate, ...] | Mapping[str, JsonTemplate]"
)


@dataclass(frozen=True, slots=True)
class HttpStep:
    """Call a web service; copy fields of its JSON object answer into variables."""

    action: ClassVar[str] = "http"
    id: str | None
    url: Template
    method: Literal["GET", "POST"] = "GET"
    json: Mapping[str, JsonTemplate] | None = None
    timeout: float = 5.0
    auth: tuple[str, str] | None = None
    # variable -> dotted path in the response, split into its keys
    set: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    on_error: str | None = None


@dataclass(frozen=True, slots=True)
class BranchStep:
    """Jump on the value of ``var``: ``cases`` maps values to labels, ``default`` (``"*"``)
    catches the rest; with no match and no default the flow goes on to the next step."""

    action: ClassVar[str] = "branch"
    id: str | None
    var: str
    cases: Mapping[str, str]
    default: str | None = None


@dataclass(frozen=True, slots=True)
class SetStep:
    """Assign a rendered template to a variable."""

    action: ClassVar[str] = "set"
    id: str | None
    var: str
    value: Template


@dataclass(frozen=True, slots=True)
class DialStep:
    """Bridge the leg to a destination; ``on_fail`` is taken unless the call was answered."""

    action: ClassVar[str] = "dial"
    id: str | None
    destination: Template
    timeout: float = 30.0
    caller_id: Template | None = None
    on_fail: str | None = None


@dataclass(frozen=True, slots=True)
class GotoStep:
    """Continue at a label."""

    action: ClassVar[str] = "goto"
    id: str | None
    target: str


@dataclass(frozen=True, slots=True)
class HangupStep:
    """Hang the leg up and end the run."""

    action: ClassVar[str] = "hangup"
    id: str | None


@dataclass(frozen=True, slots=True)
class PauseStep:
    """Wait a number of seconds."""

    action: ClassVar[str] = "pause"
    id: str | None
    seconds: float


Step: TypeAlias = (
    PlayStep
    | GatherStep
    | HttpStep
    | BranchStep
    | SetStep
    | DialStep
    | GotoStep
    | HangupStep
    | PauseStep
)


@dataclass(frozen=True, slots=True)
class Flow:
    """A validated flow. ``labels`` maps step ids to step indexes."""

    name: str
    steps: tuple[Step, ...]
    labels: Mapping[str, int]
    params: tuple[str, ...] = ()
    number: str | None = None
    language: str | None = None


# ------------------------------------------------------------------------------ loading


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class _Keys:
    """Typed access to one TOML table, naming ``where`` in every error. Construction rejects
    unknown keys and missing required ones."""

    def __init__(
        self, data: Mapping[str, Any], where: str, required: Sequence[str], optional: Sequence[str]
    ) -> None:
        self.data = data
        self.where = where
        allowed = set(required) | set(optional)
        extra = sorted(str(k) for k in data if k not in allowed)
        if extra:
            raise FlowError(where, f"unknown key {extra[0]!r}")
        for key in required:
            if key not in data:
                raise FlowError(where, f"missing key {key!r}")

    def error(self, reason: str) -> FlowError:
        return FlowError(self.where, reason)

    def string(self, key: str, default: str | None = None, *, nonempty: bool = True) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(f"{key!r} must be a string, not {_type_name(value)}")
        if nonempty and not value:
            raise self.error(f"{key!r} must not be empty")
        return value

    def required_string(self, key: str) -> str:
        value = self.string(key)
        assert value is not None  # required keys were checked in __init__
        return value

    def template(self, key: str) -> Template | None:
        source = self.string(key)
        if source is None:
            return None
        try:
            return Template.parse(source)
        except ValueError as exc:
            raise self.error(f"{key!r}: {exc}") from None

    def required_template(self, key: str) -> Template:
        value = self.template(key)
        assert value is not None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"{key!r} must be true or false, not {_type_name(value)}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{key!r} must be an integer, not {_type_name(value)}")
        if not low <= value <= high:
            raise self.error(f"{key!r} must be between {low} and {high}, not {value}")
        return value

    def seconds(self, key: str, default: float | None, high: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"{key!r} must be a number of seconds, not {_type_name(value)}")
        seconds = float(value)
        # TOML allows inf and nan; neither is a usable timeout.
        if not math.isfinite(seconds) or seconds <= 0 or seconds > high:
            raise self.error(f"{key!r} must be more than 0 and at most {high:g} seconds")
        return seconds

    def label(self, key: str) -> str | None:
        value = self.string(key)
        if value is not None and not _LABEL.match(value):
            raise self.error(f"{key!r}: invalid label {value!r}")
        return value

    def variable(self, key: str) -> str:
        return _check_variable(self, key, self.required_string(key))


def _check_variable(keys: _Keys, key: str, name: str, *, assigned: bool = True) -> str:
    if not _VARIABLE.match(name):
        raise keys.error(f"{key!r}: invalid variable name {name!r}")
    if assigned and name in BUILTIN_VARIABLES:
        raise keys.error(f"{key!r}: cannot assign built-in variable {name!r}")
    return name


def _parse_url(keys: _Keys) -> Template:
    url = keys.required_template("url")
    source = url.source
    # The scheme and host must be literal: a variable there could send the request (and its
    # credentials) anywhere, whatever the encoding of its value.
    first_ref = source.find("${")
    fixed = source if first_ref < 0 else source[:first_ref]
    parts = urlsplit(fixed)
    if parts.scheme not in ("http", "https"):
        raise keys.error(f"'url' must be an http:// or https:// URL, not {source!r}")
    if not parts.netloc or (first_ref >= 0 and not re.match(r"^https?://[^/?#]+[/?#]", fixed)):
        raise keys.error(f"'url' must have a literal host before any variable: {source!r}")
    try:
        httpx.URL(url.render(dict.fromkeys(url.names, "x")))
    except (httpx.InvalidURL, ValueError) as exc:
        raise keys.error(f"'url' is not a valid URL: {exc}") from None
    return url


def _parse_json(value: object, keys: _Keys, path: str) -> JsonTemplate:
    if isinstance(value, str):
        try:
            return Template.parse(value)
        except ValueError as exc:
            raise keys.error(f"{path!r}: {exc}") from None
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise keys.error(f"{path!r}: JSON has no inf or nan")
        return value
    if isinstance(value, list):
        return tuple(_parse_json(v, keys, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        return MappingProxyType(
            {str(k): _parse_json(v, keys, f"{path}.{k}") for k, v in value.items()}
        )
    raise keys.error(f"{path!r}: {_type_name(value)} cannot be sent as JSON")


def _json_templates(value: JsonTemplate) -> list[Template]:
    if isinstance(value, Template):
        return [value]
    if isinstance(value, tuple):
        return [t for v in value for t in _json_templates(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _json_templates(v)]
    return []


def _parse_step(keys: _Keys, action: str, step_id: str | None) -> Step:
    """Build one step; ``keys`` has already been checked for unknown/missing keys."""
    if action == "play":
        return PlayStep(step_id, keys.required_template("prompt"), keys.boolean("barge_in", False))
    if action == "gather":
        min_digits = keys.integer("min_digits", 1, 0, _MAX_DIGITS)
        max_digits = keys.integer("max_digits", 20, 1, _MAX_DIGITS)
        if min_digits > max_digits:
            raise keys.error(
                f"'min_digits' ({min_digits}) must not exceed 'max_digits' ({max_digits})"
            )
        finish_key = keys.string("finish_key", "#", nonempty=False) or None
        if finish_key is not None and (len(finish_key) != 1 or finish_key not in _DTMF):
            raise keys.error(f"'finish_key' must be one DTMF key (0-9 * # A-D), not {finish_key!r}")
        pattern_source = keys.string("pattern")
        pattern = None
        if pattern_source is not None:
            try:
                pattern = re.compile(pattern_source)
            except re.error as exc:
                raise keys.error(f"'pattern' is not a valid regular expression: {exc}") from None
        return GatherStep(
            step_id,
            var=keys.variable("var"),
            prompt=keys.template("prompt"),
            min_digits=min_digits,
            max_digits=max_digits,
            first_timeout=keys.seconds("first_timeout", 5.0, _MAX_GATHER_TIMEOUT),
            inter_timeout=keys.seconds("inter_timeout", 3.0, _MAX_GATHER_TIMEOUT),
            finish_key=finish_key,
            tries=keys.integer("tries", 3, 1, _MAX_TRIES),
            invalid_prompt=keys.template("invalid_prompt"),
            pattern=pattern,
            on_fail=keys.label("on_fail"),
        )
    if action == "http":
        method = (keys.string("method", "GET") or "GET").upper()
        if method not in ("GET", "POST"):
            raise keys.error(f"'method' must be GET or POST, not {method!r}")
        body = keys.data.get("json")
        json_body: Mapping[str, JsonTemplate] | None = None
        if body is not None:
            if not isinstance(body, dict):
                raise keys.error(f"'json' must be a table, not {_type_name(body)}")
            if method != "POST":
                raise keys.error("'json' needs method = \"POST\"")
            parsed = _parse_json(body, keys, "json")
            assert isinstance(parsed, Mapping)
            json_body = parsed
        username = keys.string("username", nonempty=False)
        password = keys.string("password", nonempty=False)
        if (username is None) != (password is None):
            raise keys.error("'username' and 'password' go together")
        raw_set = keys.data.get("set", {})
        if not isinstance(raw_set, dict):
            raise keys.error(f"'set' must be a table, not {_type_name(raw_set)}")
        assignments: dict[str, tuple[str, ...]] = {}
        for var, path in raw_set.items():
            _check_variable(keys, "set", str(var))
            if not isinstance(path, str) or not path:
                raise keys.error(f"'set.{var}' must be a non-empty dotted path string")
            fields = tuple(path.split("."))
            if not all(fields):
                raise keys.error(f"'set.{var}': invalid dotted path {path!r}")
            assignments[str(var)] = fields
        return HttpStep(
            step_id,
            url=_parse_url(keys),
            method="POST" if method == "POST" else "GET",
            json=json_body,
            timeout=keys.seconds("timeout", 5.0, _MAX_HTTP_TIMEOUT),
            auth=None if username is None or password is None else (username, password),
            set=MappingProxyType(assignments),
            on_error=keys.label("on_error"),
        )
    if action == "branch":
        var = _check_variable(keys, "var", keys.required_string("var"), assigned=False)
        raw_cases = keys.data["cases"]
        if not isinstance(raw_cases, dict):
            raise keys.error(f"'cases' must be a table, not {_type_name(raw_cases)}")
        cases: dict[str, str] = {}
        for value, label in raw_cases.items():
            if not isinstance(label, str) or not _LABEL.match(label):
                raise keys.error(f"'cases.{value}': invalid label {label!r}")
            cases[str(value)] = label
        default = cases.pop("*", None)
        return BranchStep(step_id, var, MappingProxyType(cases), default)
    if action == "set":
        return SetStep(step_id, keys.variable("var"), keys.required_template("value"))
    if action == "dial":
        return DialStep(
            step_id,
            destination=keys.required_template("destination"),
            timeout=keys.seconds("timeout", 30.0, _MAX_DIAL_TIMEOUT),
            caller_id=keys.template("caller_id"),
            on_fail=keys.label("on_fail"),
        )
    if action == "goto":
        target = keys.label("target")
        assert target is not None
        return GotoStep(step_id, target)
    if action == "hangup":
        return HangupStep(step_id)
    assert action == "pause"
    return PauseStep(step_id, keys.seconds("seconds", None, _MAX_PAUSE))


# action -> (required keys, optional keys), besides "action" and "id"
_STEP_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "play": (("prompt",), ("barge_in",)),
    "gather": (
        ("var",),
        (
            "prompt",
            "min_digits",
            "max_digits",
            "first_timeout",
            "inter_timeout",
            "finish_key",
            "tries",
            "invalid_prompt",
            "pattern",
            "on_fail",
        ),
    ),
    "http": (
        ("url",),
        ("method", "json", "timeout", "username", "password", "set", "on_error"),
    ),
    "branch": (("var", "cases"), ()),
    "set": (("var", "value"), ()),
    "dial": (("destination",), ("timeout", "caller_id", "on_fail")),
    "goto": (("target",), ()),
    "hangup": ((), ()),
    "pause": (("seconds",), ()),
}


def _step_labels(step: Step) -> list[tuple[str, str]]:
    """(key, label) pairs a step jumps to."""
    if isinstance(step, GatherStep | DialStep) and step.on_fail is not None:
        return [("on_fail", step.on_fail)]
    if isinstance(step, HttpStep) and step.on_error is not None:
        return [("on_error", step.on_error)]
    if isinstance(step, GotoStep):
        return [("target", step.target)]
    if isinstance(step, BranchStep):
        pairs = [(f"cases.{value}", label) for value, label in step.cases.items()]
        if step.default is not None:
            pairs.append(("cases.*", step.default))
        return pairs
    return []


def _step_reads(step: Step) -> list[str]:
    """Every variable a step reads."""
    templates: list[Template | None] = []
    if isinstance(step, PlayStep):
        templates = [step.prompt]
    elif isinstance(step, GatherStep):
        templates = [step.prompt, step.invalid_prompt]
    elif isinstance(step, HttpStep):
        templates = [step.url, *(_json_templates(step.json) if step.json else [])]
    elif isinstance(step, SetStep):
        templates = [step.value]
    elif isinstance(step, DialStep):
        templates = [step.destination, step.caller_id]
    elif isinstance(step, BranchStep):
        return [step.var]
    return [name for t in templates if t is not None for name in t.names]


def _step_writes(step: Step) -> list[str]:
    if isinstance(step, GatherStep | SetStep):
        return [step.var]
    if isinstance(step, HttpStep):
        return list(step.set)
    return []


def _step_prompts(step: Step) -> list[tuple[str, Template]]:
    if isinstance(step, PlayStep):
        return [("prompt", step.prompt)]
    if isinstance(step, GatherStep):
        pairs = [("prompt", step.prompt), ("invalid_prompt", step.invalid_prompt)]
        return [(key, t) for key, t in pairs if t is not None]
    return []


def _load_flow(data: object, where: str, prompt_exists: Callable[[str], bool]) -> Flow:
    if not isinstance(data, dict):
        raise FlowError(where, f"must be a table, not {_type_name(data)}")
    name = data.get("name")
    if isinstance(name, str) and _FLOW_NAME.match(name):
        where = f"flows.{name}"
    keys = _Keys(data, where, ("name", "steps"), ("number", "params", "language"))
    if not isinstance(name, str) or not _FLOW_NAME.match(name):
        raise keys.error(f"'name' must match [a-z0-9_-]+, not {name!r}")
    number = keys.string("number")
    if number is not None and not _NUMBER.match(number):
        raise keys.error(f"'number' must be digits, * or # (up to 32), not {number!r}")
    language = keys.string("language")
    if language is not None and not _LANGUAGE.match(language):
        raise keys.error(f"'language' is not a language code: {language!r}")
    raw_params = data.get("params", [])
    if not isinstance(raw_params, list):
        raise keys.error(f"'params' must be an array of names, not {_type_name(raw_params)}")
    params: list[str] = []
    for param in raw_params:
        if not isinstance(param, str):
            raise keys.error(f"'params' must hold strings, not {_type_name(param)}")
        _check_variable(keys, "params", param)
        if param in params:
            raise keys.error(f"'params': duplicate {param!r}")
        params.append(param)
    raw_steps = data["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise keys.error("'steps' must be a non-empty array of tables")

    steps: list[Step] = []
    labels: dict[str, int] = {}
    for index, raw in enumerate(raw_steps):
        step_where = f"{where}.steps[{index}]"
        if not isinstance(raw, dict):
            raise FlowError(step_where, f"must be a table, not {_type_name(raw)}")
        action = raw.get("action")
        if not isinstance(action, str):
            raise FlowError(step_where, "missing string key 'action'")
        if action not in _STEP_KEYS:
            raise FlowError(step_where, f"unknown action {action!r} (have {', '.join(_STEP_KEYS)})")
        required, optional = _STEP_KEYS[action]
        step_keys = _Keys(raw, step_where, ("action", *required), ("id", *optional))
        step_id = step_keys.label("id")
        if step_id is not None:
            if step_id in labels:
                raise step_keys.error(f"duplicate id {step_id!r} (also steps[{labels[step_id]}])")
            labels[step_id] = index
        steps.append(_parse_step(step_keys, action, step_id))

    # Checks needing the whole flow. The variable rule is deliberately flow-insensitive: a
    # variable is known if any step (or the caller) can define it; a read before the write on
    # some path is caught at run time.
    defined = set(BUILTIN_VARIABLES) | set(params)
    for step in steps:
        defined.update(_step_writes(step))
    for index, step in enumerate(steps):
        step_where = f"{where}.steps[{index}]"
        for key, label in _step_labels(step):
            if label not in labels:
                raise FlowError(step_where, f"{key!r}: unknown label {label!r}")
        for var in _step_reads(step):
            if var not in defined:
                raise FlowError(step_where, f"unknown variable {var!r}")
        for key, prompt in _step_prompts(step):
            if prompt.is_literal and not prompt_exists(prompt.source):
                raise FlowError(step_where, f"{key!r}: unknown prompt {prompt.source!r}")
    return Flow(
        name=name,
        steps=tuple(steps),
        labels=MappingProxyType(labels),
        params=tuple(params),
        number=number,
        language=language,
    )


def load_flows(
    config_list: Sequence[Mapping[str, Any]], prompt_exists: Callable[[str], bool]
) -> dict[str, Flow]:
    """Validate the ``[[flows]]`` array of a loaded TOML config into flows keyed by name.

    ``prompt_exists`` is asked about every literal prompt name; a templated prompt can only be
    checked when it is rendered at run time. Raises :class:`FlowError` for the first problem.
    """
    if not isinstance(config_list, list):
        raise FlowError("flows", f"must be an array of tables, not {_type_name(config_list)}")
    flows: dict[str, Flow] = {}
    numbers: dict[str, str] = {}
    for index, data in enumerate(config_list):
        flow = _load_flow(data, f"flows[{index}]", prompt_exists)
        where = f"flows.{flow.name}"
        if flow.name in flows:
            raise FlowError(where, f"duplicate flow name {flow.name!r}")
        if flow.number is not None:
            if flow.number in numbers:
                raise FlowError(
                    where,
                    f"number {flow.number!r} is already used by flow {numbers[flow.number]!r}",
                )
            numbers[flow.number] = flow.name
        flows[flow.name] = flow
    return flows


# ------------------------------------------------------------------------------ running


class FlowHost(Protocol):
    """Call control of the one answered leg a flow runs on (the switch's facade)."""

    async def play(
        self, prompt: str, *, barge_in: bool = False, language: str | None = None
    ) -> None:
        """Play a prompt; return when it ends (or a digit cut it short with ``barge_in``)."""
        ...

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
        """Collect digits, playing ``prompt`` first (barge-in on the first digit); ``""`` when
        the first digit timed out."""
        ...

    async def dial(self, destination: str, *, timeout: float, caller_id: str | None) -> str:
        """Bridge the leg. Returns ``"answered"`` once the bridged call ends, or why it did not
        connect (``"busy"``, ``"no-answer"``, ``"failed"``, ...)."""
        ...

    async def hangup(self) -> None:
        """Hang the leg up."""
        ...

    def alive(self) -> bool:
        """False once the leg has hung up."""
        ...


@dataclass(frozen=True, slots=True)
class FlowResult:
    """How a run ended.

    ``outcome``: ``"completed"`` (ran past the last step; the leg is left up for the caller of
    :func:`run_flow` to deal with), ``"hangup"`` (the flow hung up: a ``hangup`` step, or the
    default action of a failed ``gather``/``http``), ``"caller-hangup"`` (the leg went away) or
    ``"error"`` (a missing variable, the step limit, a host exception; the leg was hung up).
    ``error`` explains an ``"error"`` outcome and a failure that made the flow hang up.
    """

    variables: dict[str, str]
    outcome: Outcome
    steps: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _End:
    outcome: Outcome
    error: str | None = None


class _RunError(Exception):
    """Ends the run with outcome "error"."""


class _HttpFailure(Exception):
    """An http step failed: goes to on_error."""


def _lookup(data: object, path: tuple[str, ...]) -> object:
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        else:
            raise _HttpFailure(f"response has no field {'.'.join(path)!r}")
    return data


def _as_variable(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | dict | list):
        # JSON spelling ("true", '{"a": 1}'), not Python's ("True", "{'a': 1}").
        return json.dumps(value)
    return str(value)


def _render_json(value: JsonTemplate, variables: Mapping[str, str]) -> object:
    if isinstance(value, Template):
        return value.render(variables)
    if isinstance(value, tuple):
        return [_render_json(v, variables) for v in value]
    if isinstance(value, Mapping):
        return {k: _render_json(v, variables) for k, v in value.items()}
    return value


class _Run:
    def __init__(
        self,
        flow: Flow,
        host: FlowHost,
        variables: Mapping[str, str],
        http: httpx.AsyncClient | None,
    ) -> None:
        self.flow = flow
        self.host = host
        self.http = http
        self.owned_http: httpx.AsyncClient | None = None
        # Only declared inputs get in: an API caller must not pre-set a variable the flow
        # expects a gather or a web service to fill.
        self.vars: dict[str, str] = {}
        for name in (*BUILTIN_VARIABLES, *flow.params):
            if name in variables:
                self.vars[name] = str(variables[name])
        for name in flow.params:
            self.vars.setdefault(name, "")
        ignored = sorted(set(variables) - set(self.vars))
        if ignored:
            log.warning("flow %s: ignoring undeclared variables %s", flow.name, ignored)

    def render(self, template: Template) -> str:
        return template.render(self.vars)

    def prompt(self, template: Template) -> str:
        name = self.render(template)
        if not template.is_literal and not _SAFE_PROMPT.match(name):
            raise _RunError(f"prompt {template.source!r} rendered to invalid name {name!r}")
        return name

    def jump(self, label: str) -> int:
        return self.flow.labels[label]

    async def hangup(self) -> None:
        await self.host.hangup()

    async def execute(self, index: int, step: Step) -> int | _End:
        """Run one step; return the index of the next one or how the run ends."""
        host, lang = self.host, self.flow.language
        if isinstance(step, PlayStep):
            await host.play(self.prompt(step.prompt), barge_in=step.barge_in, language=lang)
        elif isinstance(step, GatherStep):
            return await self.gather(index, step)
        elif isinstance(step, HttpStep):
            try:
                await self.http_request(step)
            except _HttpFailure as exc:
                message = f"http step {index}: {exc}"
                log.info("flow %s: %s", self.flow.name, message)
                if step.on_error is not None:
                    return self.jump(step.on_error)
                await self.hangup()
                return _End("hangup", message)
        elif isinstance(step, BranchStep):
            try:
                value = self.vars[step.var]
            except KeyError:
                raise _MissingVariable(step.var) from None
            label = step.cases.get(value, step.default)
            if label is not None:
                return self.jump(label)
        elif isinstance(step, SetStep):
            self.vars[step.var] = self.render(step.value)
        elif isinstance(step, DialStep):
            destination = self.render(step.destination)
            caller_id = self.render(step.caller_id) if step.caller_id is not None else None
            status = await host.dial(destination, timeout=step.timeout, caller_id=caller_id or None)
            if status != "answered" and step.on_fail is not None:
                return self.jump(step.on_fail)
        elif isinstance(step, GotoStep):
            return self.jump(step.target)
        elif isinstance(step, HangupStep):
            await self.hangup()
            return _End("hangup")
        else:
            await asyncio.sleep(step.seconds)
        return index + 1

    async def gather(self, index: int, step: GatherStep) -> int | _End:
        lang = self.flow.language
        for attempt in range(1, step.tries + 1):
            prompt = self.prompt(step.prompt) if step.prompt is not None else None
            digits = await self.host.gather(
                prompt=prompt,
                min_digits=step.min_digits,
                max_digits=step.max_digits,
                first_timeout=step.first_timeout,
                inter_timeout=step.inter_timeout,
                finish_key=step.finish_key,
                language=lang,
            )
            if not self.host.alive():
                return _End("caller-hangup")
            if step.finish_key is not None and digits.endswith(step.finish_key):
                digits = digits[:-1]
            if (
                step.min_digits <= len(digits) <= step.max_digits
                and set(digits) <= _DTMF
                and (step.pattern is None or step.pattern.fullmatch(digits))
            ):
                self.vars[step.var] = digits
                return index + 1
            # The invalid prompt introduces a retry; after the last try on_fail speaks.
            if attempt < step.tries and step.invalid_prompt is not None:
                await self.host.play(self.prompt(step.invalid_prompt), language=lang)
                if not self.host.alive():
                    return _End("caller-hangup")
        # Defined but empty, so that the on_fail path may still mention the variable.
        self.vars[step.var] = ""
        message = f"gather step {index}: no valid input after {step.tries} tries"
        if step.on_fail is not None:
            return self.jump(step.on_fail)
        await self.hangup()
        return _End("hangup", message)

    async def http_request(self, step: HttpStep) -> None:
        url = step.url.render(self.vars, _quote_url_value)
        body = _render_json(step.json, self.vars) if step.json is not None else None
        client = self.http
        if client is None:
            if self.owned_http is None:
                self.owned_http = httpx.AsyncClient()
            client = self.owned_http
        auth = httpx.BasicAuth(*step.auth) if step.auth is not None else None
        try:
            # httpx timeouts are per network operation; this bounds the whole exchange.
            async with asyncio.timeout(step.timeout):
                async with client.stream(
                    step.method, url, json=body, auth=auth, timeout=step.timeout
                ) as response:
                    if not 200 <= response.status_code < 300:
                        raise _HttpFailure(f"{step.method} {url}: HTTP {response.status_code}")
                    content = bytearray()
                    async for chunk in response.aiter_bytes():
                        content += chunk
                        if len(content) > _MAX_HTTP_BODY:
                            raise _HttpFailure(f"{step.method} {url}: response too large")
        except TimeoutError:
            raise _HttpFailure(f"{step.method} {url}: timed out after {step.timeout:g}s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _HttpFailure(f"{step.method} {url}: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(bytes(content))
        except (ValueError, RecursionError):
            raise _HttpFailure(f"{step.method} {url}: response is not JSON") from None
        if not isinstance(data, dict):
            raise _HttpFailure(f"{step.method} {url}: response is not a JSON object")
        # Look every field up before assigning any, so a failure leaves no half-applied answer.
        values = {var: _as_variable(_lookup(data, path)) for var, path in step.set.items()}
        self.vars.update(values)

    async def hangup_quietly(self) -> None:
        """Best-effort hang-up after an error: leaving the caller in silence is worse."""
        try:
            if self.host.alive():
                await self.host.hangup()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("flow %s: hang-up after error failed", self.flow.name)

    async def close(self) -> None:
        if self.owned_http is not None:
            await self.owned_http.aclose()


async def run_flow(
    flow: Flow,
    host: FlowHost,
    variables: Mapping[str, str],
    *,
    http: httpx.AsyncClient | None = None,
    max_steps: int = 1000,
    on_step: Callable[[int, str], None] | None = None,
) -> FlowResult:
    """Run ``flow`` on the leg behind ``host`` and report how it ended.

    ``variables`` supplies the built-ins (``caller``, ``callee``, ``call_id``, ``leg_id``) and
    the flow's ``params``; a missing param is the empty string, undeclared names are ignored.
    ``http`` is used for ``http`` steps (a client is created for the run otherwise).
    At most ``max_steps`` steps run (a guard against goto loops). ``on_step(index, action)``
    is called before each step. Never raises except :class:`asyncio.CancelledError`.
    """
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    run = _Run(flow, host, variables, http)
    executed = 0

    def result(outcome: Outcome, error: str | None = None) -> FlowResult:
        return FlowResult(dict(run.vars), outcome, executed, error)

    index = 0
    try:
        while index < len(flow.steps):
            if not host.alive():
                return result("caller-hangup")
            if executed >= max_steps:
                message = f"flow {flow.name}: step limit of {max_steps} reached (a loop?)"
                log.warning("%s", message)
                await run.hangup_quietly()
                return result("error", message)
            step = flow.steps[index]
            executed += 1
            if on_step is not None:
                on_step(index, step.action)
            outcome = await run.execute(index, step)
            if isinstance(outcome, _End):
                return result(outcome.outcome, outcome.error)
            index = outcome
        return result("completed" if host.alive() else "caller-hangup")
    except asyncio.CancelledError:
        raise
    except _MissingVariable as exc:
        message = f"flow {flow.name}, step {index}: variable {exc.name!r} has no value"
        log.warning("%s", message)
        await run.hangup_quietly()
        return result("error", message)
    except _RunError as exc:
        message = f"flow {flow.name}, step {index}: {exc}"
        log.warning("%s", message)
        await run.hangup_quietly()
        return result("error", message)
    except Exception as exc:
        message = f"flow {flow.name}, step {index}: {type(exc).__name__}: {exc}"
        log.exception("flow %s failed at step %d", flow.name, index)
        await run.hangup_quietly()
        return result("error", message)
    finally:
        await run.close()
