"""Tools: their JSON schemas, the parsers of the model's tool calls, and the call itself in the sandbox.

A tool is a Python function with type hints and a Google-style docstring (TRL's ``tools=[fn]``),
named in config as ``module:function``. Its schema comes from ``transformers.utils.get_json_schema``
and reaches the model through the chat template's ``tools=`` argument (or, where the template has
no place for tools, a block appended to the system message: `tool_prompt`).

Calls are parsed in the format the model's template uses; `PARSERS` is the registry (``hermes``:
Qwen's and Hermes' ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``). The parsed call
runs in the verifier pool's worker processes through `run_tool`, under the sandbox's deadline and
memory limit; every way it can fail comes back as an error the model reads.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

# What can go wrong with a call, as counted in `env/tool_errors/<kind>`: the parser's, `run_tool`'s
# and the sandbox's (timeout, oom, crash).
TOOL_ERROR_KINDS = ("malformed", "unknown_tool", "bad_arguments", "raised", "timeout", "oom", "crash", "error")


@dataclass
class ToolCall:
    name: str
    arguments: dict

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "arguments": self.arguments})


@dataclass
class MalformedCall:
    """A call the parser could not read; `message` goes back to the model."""

    message: str


def parse_hermes(text: str) -> list[ToolCall | MalformedCall]:
    """Every ``<tool_call>{"name": str, "arguments": {...}}</tool_call>`` in a turn, in order.
    An unclosed tag, bad JSON, or a call without a name or with non-object arguments is malformed;
    so is one Python's json cannot carry (nested past its stack, an integer over 4,300 digits)."""
    calls: list[ToolCall | MalformedCall] = []
    for body in re.findall(r"<tool_call>(.*?)(?:</tool_call>|$)", text, flags=re.S):
        try:
            obj = json.loads(body.strip())
        except json.JSONDecodeError as e:
            calls.append(MalformedCall(f"the tool call is not valid JSON ({e.msg} at character {e.pos})"))
            continue
        except (RecursionError, ValueError) as e:  # model output past the decoder's limits ("[" * 1000, 10**5000): not a call
            calls.append(MalformedCall(_past_limits(e)))
            continue
        args = obj.get("arguments", {}) if isinstance(obj, dict) else None
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except (RecursionError, ValueError):
                args = None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(args, dict):
            calls.append(MalformedCall('a tool call must be {"name": "<tool>", "arguments": {...}}'))
            continue
        call = ToolCall(obj["name"], args)
        try:
            call.to_json()  # encoding recurses deeper than decoding: a call just under the decoder's limit would fail later, in the driver
        except (RecursionError, ValueError) as e:
            calls.append(MalformedCall(_past_limits(e)))
            continue
        try:  # "\ud83d" alone decodes to a lone surrogate: a tool echoing it back broke the tokenizer, and the step
            json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            calls.append(MalformedCall("the tool call holds a lone surrogate escape (half of a UTF-16 pair), which is not text"))
            continue
        calls.append(call)
    return calls


def _past_limits(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "the tool call is nested too deeply to read"
    return f"the tool call cannot be read: {str(error)[:120]}"


def parse_none(text: str) -> list[ToolCall | MalformedCall]:
    """No tools: every turn is an answer."""
    return []


PARSERS: dict[str, Callable[[str], list[ToolCall | MalformedCall]]] = {"hermes": parse_hermes, "none": parse_none}
# where a call ends: generation stops there so the model waits for the result instead of inventing it
STOP_AFTER_CALL = {"hermes": ("</tool_call>",), "none": ()}


@functools.lru_cache(maxsize=64)
def load_tool(spec: str) -> Callable:
    """``module:function`` (the function's own name is the tool's name)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"tool {spec!r}: expected 'module:function'")
    try:
        fn = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"tool {spec!r}: cannot import it ({type(e).__name__}: {e})") from e
    if not callable(fn):
        raise ValueError(f"tool {spec!r} is not callable")
    return fn


def tools_from_verl_config(path: str) -> list[str]:
    """The tools of a verl tool-config YAML (``tools: [{class_name, config, tool_schema}]``) that are
    plain functions: ``class_name: pkg.module.function`` becomes ``pkg.module:function``. verl's
    ``BaseTool`` classes (create/execute/release) have no equivalent here and are refused by name;
    the schema is read from the function itself."""
    import os

    import yaml

    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise ValueError(f"env.tool_config: no such file {path!r}")
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    entries = doc.get("tools") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"env.tool_config {path}: expected a 'tools:' list, as verl's tool configs have")
    specs = []
    for i, entry in enumerate(entries):
        name = entry.get("class_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "." not in name:
            raise ValueError(f"env.tool_config {path}: tools[{i}] needs class_name: package.module.function")
        spec = ":".join(name.rsplit(".", 1))
        if inspect.isclass(load_tool(spec)):
            raise ValueError(f"env.tool_config {path}: tools[{i}] {name} is a class (a verl BaseTool); "
                             "rlvr's tools are functions with type hints and a docstring")
        specs.append(spec)
    return specs


def tool_schemas(specs: list[str]) -> list[dict]:
    """The JSON schema of each tool, as chat templates take them (``tools=``). A tool without type
    hints or an ``Args:`` docstring is an error that names it."""
    from transformers.utils import get_json_schema

    schemas, names = [], set()
    for spec in specs:
        try:
            schema = get_json_schema(load_tool(spec))
        except Exception as e:  # noqa: BLE001 - transformers raises its own DocstringParsingException / TypeHintParsingException
            raise ValueError(f"tool {spec!r} needs type hints and a docstring with an Args: section: {e}") from e
        name = schema["function"]["name"]
        if name in names:
            raise ValueError(f"two tools are named {name!r}")
        names.add(name)
        schemas.append(schema)
    return schemas


def tool_prompt(schemas: list[dict]) -> str:
    """The tools as text, for a chat template with no place for them (Hermes' wording, shortened)."""
    lines = "\n".join(json.dumps(s) for s in schemas)
    return (
        f"You can call these tools:\n<tools>\n{lines}\n</tools>\n"
        'To call one, write <tool_call>{"name": <tool name>, "arguments": {<arguments>}}</tool_call> and wait for its result.'
    )


_SIMPLE = {str: str, int: int, float: (int, float), bool: bool}


def _check_arguments(fn: Callable, arguments: dict) -> str | None:
    """Why these arguments do not fit the function's signature (None: they do)."""
    sig = inspect.signature(fn)
    try:
        sig.bind(**arguments)
    except TypeError as e:
        return str(e)
    try:
        hints = typing.get_type_hints(fn)  # the tool's own source (trusted), never the model's text
    except Exception:  # noqa: BLE001 - an unresolvable hint: the tool checks its arguments itself
        hints = {}
    for name, value in arguments.items():
        want = _SIMPLE.get(hints.get(name))
        if want is not None and (not isinstance(value, want) or (want is not bool and isinstance(value, bool))):
            return f"argument {name!r} must be {hints[name].__name__}, got {type(value).__name__}"
    return None


def run_tool(completion: str, answer: str, answer_type: str, tools: list[str]) -> dict[str, Any]:
    """The sandbox side of one call: ``completion`` is the call as JSON (`ToolCall.to_json`), and
    ``tools`` the allowed specs. Returns ``{"score": 1 if it ran else 0, "outcome": ok|<error kind>,
    "output": the result or the error, as text for the model}``. A tool that hangs or exhausts memory
    is stopped by the sandbox, which reports ``timeout`` or ``oom`` instead."""
    call = json.loads(completion)
    by_name = {}
    for spec in tools:
        fn = load_tool(spec)
        by_name[getattr(fn, "__name__", spec)] = fn
    fn = by_name.get(call["name"])
    if fn is None:
        return {"score": 0.0, "outcome": "unknown_tool", "output": f"unknown tool {call['name']!r}; the tools are: {', '.join(sorted(by_name))}"}
    problem = _check_arguments(fn, call["arguments"])
    if problem is not None:
        return {"score": 0.0, "outcome": "bad_arguments", "output": f"bad arguments for {call['name']}: {problem}"}
    try:
        out = fn(**call["arguments"])
    except (MemoryError, RecursionError):
        raise  # the sandbox's to classify (oom), and to retire the worker
    except Exception as e:  # noqa: BLE001 - the tool's error is the model's to read
        return {"score": 0.0, "outcome": "raised", "output": f"{type(e).__name__}: {e}"}
    return {"score": 1.0, "outcome": "ok", "output": out if isinstance(out, str) else json.dumps(out, default=str)}


# the reward term that runs tools in the verifier pool's workers (`VerifierPool(tools=...)`)
def tool_term(tools: list[str]) -> dict:
    return {"fn": "rlvr.envs.tools:run_tool", "kwargs": {"tools": list(tools)}, "correctness": True}
