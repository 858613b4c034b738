"""Assert-style tests, inside the sandbox, as ``python3 -I -S harness.py``: with
``rlvr.rewards.code.STDIO_HARNESS``, the only place model code reaches ``exec``, behind bubblewrap's
walls. Standard library only (the sandbox sees /usr alone).

A verdict the program could forge is no verdict. A program that shares a process with
its test can read the pass token from the harness's frame, answer every ``==`` with an object whose
``__eq__`` says True, or replace ``AssertionError``. So the test runs in this process (trusted: the
test and the prelude come from the dataset) and the program in a forked child that cannot read it:

- this process makes itself non-dumpable before the fork, so the child (same user, no capabilities)
  cannot open its memory or its file descriptors under /proc, nor ptrace it;
- the pass token and the test reach this process on stdin only after the fork, and the child's
  stdin and stdout are /dev/null: the child never holds the token, nor sees the test;
- the test calls the program's functions through ``Remote`` proxies; arguments and results cross
  the pipe as plain data (exact built-in types, tagged JSON) and are rebuilt here, so a value the
  test compares is one this process built. Anything else the program returns stays in the child as
  a ``Remote`` (an instance, a function), compared by identity only;
- names the prelude or the builtins define are theirs (HumanEval's entry point excepted): a program
  cannot replace a helper its test calls (HumanEval/32's ``poly``), nor the ``abs`` in
  ``assert abs(f(x) - y) < 1e-6``. A module the program imported reaches the test only as the real
  module, and only one of ``SAFE_MODULES``; a value named like a standard module never does.

Left to the data: a test that calls a name neither the prelude nor the test itself defines, besides
the function under test (an MBPP row's ``sqrt`` from the program's ``from math import sqrt``), takes
the program's word for it; and an asserts row whose function is named like a builtin is tested
against the builtin.

The price: a test that needs the program to mutate an argument in place, or that passes a function
to the program, fails. A pass is the token, written to the saved stdout after the test returned.
"""

import builtins
import json
import os
import signal
import sys

COMPILE_ERROR, ASSERTION, UNSAFE = 90, 91, 92  # exit statuses, both harnesses'; rlvr.rewards.code imports them
PLAIN = (bool, int, float, str, type(None))
# The only modules the test's side imports for a name the program bound: pure ones, with no code
# run at import beyond their own (importing `unittest.__main__` ran unittest.main, which imported a
# test file the program had written to /tmp, in this process).
SAFE_MODULES = frozenset({
    "array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime", "decimal", "enum", "fractions",
    "functools", "hashlib", "heapq", "itertools", "json", "math", "numbers", "operator", "random", "re", "statistics",
    "string", "textwrap", "typing", "unicodedata",
})
COLLECTIONS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def encode(value, other):
    """Plain data (exact built-in types) as tagged JSON; ``other(value)`` for anything else."""
    kind = type(value)
    if kind in PLAIN:
        return value
    if kind.__name__ in COLLECTIONS and COLLECTIONS[kind.__name__] is kind:
        return {kind.__name__: [encode(v, other) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k, other), encode(v, other)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    return other(value)


def base_value(value, other):
    """A subclass of a built-in type as its base type's value, read by the base type's own methods
    (a Counter as a dict, a namedtuple as a tuple, an IntEnum as an int), as tagged JSON; what
    `LikeRemote` compares. Plain data is itself; anything else ``other(value)``."""
    if isinstance(value, dict):
        return {"dict": [[base_value(k, other), base_value(v, other)] for k, v in dict.items(value)]}
    for name, base in COLLECTIONS.items():
        if isinstance(value, base):
            return {name: [base_value(v, other) for v in base.__iter__(value)]}
    if isinstance(value, bytes):
        return {"bytes": bytes.hex(value)}
    for base, plain in ((int, int.__int__), (float, float.__float__), (str, str.__str__)):
        if isinstance(value, base):
            return plain(value)
    return encode(value, other)


def decode(data, ref, like=None):
    """Inverse of `encode`; ``ref(n)`` gives what ``{"ref": n}`` stands for, ``like(n)`` (else
    ``ref(n)``) what ``{"like": n}`` does."""
    if not isinstance(data, dict):
        return data
    ((kind, body),) = data.items()
    if kind == "ref":
        return ref(body)
    if kind == "like":
        return (like or ref)(body)
    if kind == "bytes":
        return bytes.fromhex(body)
    if kind == "complex":
        return complex(*body)
    built = {decode(k, ref, like): decode(v, ref, like) for k, v in body} if kind == "dict" else COLLECTIONS[kind](decode(v, ref, like) for v in body)
    if len(built) != len(body):  # members the program kept apart (their own __eq__, __hash__) merged here
        raise TypeError(f"the program's {kind} does not hold as plain data: {len(body)} members, {len(built)} here")
    return built


def send(stream, message) -> None:
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def raised(error: BaseException) -> dict:
    try:
        message = str(error)[:500]
    except Exception:  # noqa: BLE001 - the program's own exception class
        message = ""
    return {"raise": type(error).__name__, "message": message}


# -- the program's side (the child) ---------------------------------------------------------------
def serve(program, calls, answers) -> None:
    """Run the program, list its names, then answer the test's requests on its objects."""
    held = []

    def hold(value):
        held.append(value)
        # a subclass of a built-in type (a Counter, a namedtuple, an IntEnum): compared as its base
        # type's value on the test's side, its methods and items still the program's
        like = isinstance(value, (dict, list, tuple, set, frozenset, int, float, str, bytes))
        return {"like" if like else "ref": len(held) - 1}

    def describe(value):
        try:
            return encode(value, hold)
        except Exception:  # noqa: BLE001 - a list that holds itself, a __class__ that lies: held, not sent
            return hold(value)

    namespace = {"__name__": "solution"}
    try:
        exec(program, namespace)
    except SystemExit:
        pass  # a program that ends itself still faces its test
    except BaseException as e:  # noqa: BLE001 - the program failed as it loaded: the test sees why
        send(answers, raised(e))
        return
    names = {}
    for name, value in list(namespace.items()):
        if not name.startswith("__"):
            names[name] = {"module": value.__name__} if type(value) is type(os) else {"value": describe(value)}
    send(answers, {"names": names})
    for line in calls:
        request = json.loads(line)
        try:
            target, op = held[request["ref"]], request["op"]
            args = lambda key: decode(request[key], held.__getitem__)  # noqa: E731
            if op == "call":
                result = target(*args("args"), **args("kwargs"))
            elif op == "getattr":
                result = getattr(target, request["name"])
            elif op == "getitem":
                result = target[args("key")]
            elif op == "len":
                result = len(target)
            elif op == "contains":
                result = args("key") in target
            elif op == "hash":
                result = hash(target)
            elif op == "bool":
                result = bool(target)
            elif op == "plain":
                send(answers, {"value": base_value(target, hold)})
                continue
            else:  # "list"
                result = list(target)
            send(answers, {"value": describe(result)})
        except BaseException as e:  # noqa: BLE001 - the program's error, raised again in the test
            send(answers, raised(e))


# -- the test's side (this process) ---------------------------------------------------------------
class Remote:
    """An object of the program's that is not plain data (a function, a class, an instance): calls,
    attributes, items and iteration are answered by the program's process. ``==`` is identity."""

    __slots__ = ("ref",)
    link = None  # (calls, answers) once the child runs

    def __init__(self, ref: int):
        self.ref = ref

    def _ask(self, op: str, **fields):
        calls, answers = Remote.link
        send(calls, {"op": op, "ref": self.ref, **fields})
        line = answers.readline()
        if not line:
            raise RuntimeError("the program's process ended")
        reply = json.loads(line)
        if "raise" in reply:
            raise program_error(reply)
        return decode(reply["value"], Remote, LikeRemote)

    def __call__(self, *args, **kwargs):
        return self._ask("call", args=encode(list(args), crossing), kwargs=encode(kwargs, crossing))

    def __getattr__(self, name: str):
        return self._ask("getattr", name=name)

    def __getitem__(self, key):
        return self._ask("getitem", key=encode(key, crossing))

    def __len__(self) -> int:
        n = self._ask("len")
        if type(n) is not int:
            raise TypeError("the program's __len__ gave no int")
        return n

    def __iter__(self):
        return iter(self._ask("list"))

    def __repr__(self) -> str:
        return f"<the program's object #{self.ref}>"


class LikeRemote(Remote):
    """The program's instance of a subclass of a built-in type (a Counter, a namedtuple, an
    OrderedDict, an IntEnum). ``==``, ordering, arithmetic, ``str`` and ``format`` use its base
    type's value, rebuilt here from what the program's process reads through the base type's own
    methods, so its own ``__eq__`` never answers; ``hash``, truth, ``len``, ``in``, items, attributes
    and calls are the program's, as for any `Remote` (`Counter.most_common`, a namedtuple's ``.x``,
    a defaultdict's missing key). A right answer returned as a Counter scored 0 when ``==`` was
    identity."""

    __slots__ = ()

    def plain(self):
        return self._ask("plain")

    def __bool__(self) -> bool:
        truth = self._ask("bool")  # the program's own rule, as in Python (an int subclass's is int's)
        if type(truth) is not bool:
            raise TypeError("the program's __bool__ gave no bool")
        return truth

    def __str__(self) -> str:
        return str(self.plain())

    def __format__(self, spec: str) -> str:
        return format(self.plain(), spec)

    def __eq__(self, other):
        return self.plain() == (other.plain() if type(other) is LikeRemote else other)

    def __ne__(self, other):
        return not self == other

    def __lt__(self, other):
        return self.plain() < (other.plain() if type(other) is LikeRemote else other)

    def __le__(self, other):
        return self.plain() <= (other.plain() if type(other) is LikeRemote else other)

    def __gt__(self, other):
        return self.plain() > (other.plain() if type(other) is LikeRemote else other)

    def __ge__(self, other):
        return self.plain() >= (other.plain() if type(other) is LikeRemote else other)

    def __hash__(self) -> int:
        h = self._ask("hash")
        if type(h) is not int:
            raise TypeError("the program's __hash__ gave no int")
        return h

    def __contains__(self, item) -> bool:
        return bool(self._ask("contains", key=encode(item, crossing)) is True)


def _on_plain(name: str, reflected: bool = False):
    """An operator of `LikeRemote` computed on its base type's value (an IntEnum plus 1, a str
    subclass plus "!", abs of a float subclass minus a float), never by the program's own method."""
    def op(self, *other):
        other = tuple(o.plain() if type(o) is LikeRemote else o for o in other)
        if reflected:
            return getattr(other[0], name)(self.plain())
        return getattr(self.plain(), name)(*other)
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow"):
    setattr(LikeRemote, f"__{_name}__", _on_plain(f"__{_name}__"))
    setattr(LikeRemote, f"__r{_name}__", _on_plain(f"__{_name}__", reflected=True))
for _name in ("neg", "pos", "abs", "int", "float", "index", "round"):
    setattr(LikeRemote, f"__{_name}__", _on_plain(f"__{_name}__"))


def crossing(value):
    """What may go to the program besides plain data: its own objects, by reference."""
    if type(value) in (Remote, LikeRemote):
        return {"ref": value.ref}
    raise TypeError(f"the test passes a {type(value).__name__} to the program: only plain data and the program's own objects cross")


def program_error(reply: dict) -> Exception:
    """The program's exception, as the built-in class of that name where there is one."""
    name, message = reply.get("raise"), str(reply.get("message", ""))
    kind = getattr(builtins, name, None) if isinstance(name, str) else None
    # StopIteration raised into the test ends a map() or zip() it runs inside: `all(map(f, xs))` was True
    if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, (StopIteration, StopAsyncIteration)):
        try:
            return kind(message)
        except Exception:  # noqa: BLE001 - a class whose constructor wants more
            pass
    return RuntimeError(f"the program raised {name}: {message}")


def judge(program) -> None:
    import ctypes

    if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0: /proc/<this>/mem and fd closed to the child
        os._exit(UNSAFE)
    # This process is the namespace's pid 1, which takes only the signals it has a handler for:
    # without Python's SIGINT handler, the child cannot raise KeyboardInterrupt in the test (a test
    # catching BaseException passed that way).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report = os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 1)  # the test's prints, and the child's, go nowhere
    calls_r, calls_w = os.pipe()
    answers_r, answers_w = os.pipe()
    if os.fork() == 0:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.dup2(null, 0)
        for fd in (report, null, calls_w, answers_r):
            os.close(fd)
        serve(program, os.fdopen(calls_r, "rb"), os.fdopen(answers_w, "wb"))
        os._exit(0)
    for fd in (calls_r, answers_w):
        os.close(fd)
    os.chdir("/")  # not the child's writable /tmp
    token = sys.stdin.buffer.readline().strip()
    task = json.loads(sys.stdin.buffer.read())
    Remote.link = (os.fdopen(calls_w, "wb"), os.fdopen(answers_r, "rb"))
    namespace = {"__name__": "__main__"}
    exec(compile(task["prelude"], "prelude.py", "exec"), namespace)
    line = Remote.link[1].readline()
    loaded = json.loads(line) if line else {"raise": "SystemExit", "message": "the program's process ended"}
    if "raise" in loaded:
        raise program_error(loaded)
    entry_point = task.get("entry_point")
    for name, description in loaded["names"].items():
        if name != entry_point and (name in namespace or hasattr(builtins, name)):
            continue  # the prelude's helpers and the test's abs, len, sorted stay the real ones
        module = description.get("module")
        if module is not None or name in sys.stdlib_module_names:
            # a module, or a value named like one (a `class math` whose isclose says True): the real
            # module, a safe one only, or nothing
            if module == name and module in SAFE_MODULES:
                namespace[name] = __import__(module)
            continue
        namespace[name] = decode(description["value"], Remote, LikeRemote)
    if entry_point and entry_point not in loaded["names"]:
        raise NameError(f"the program defines no {entry_point}")  # not the builtin of that name, nor the prelude's stub
    try:
        exec(compile(task["test"], "test.py", "exec"), namespace)
    except AssertionError:
        os._exit(ASSERTION)
    os.write(report, token)
    os._exit(0)


if __name__ == "__main__":  # in the sandbox only: rlvr.rewards.code imports this module for its exit statuses
    builtins.exit = builtins.quit = sys.exit  # `-S` leaves them out, and programs end with them
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # a right answer of 5,000 digits (factorial(2000)) crosses as JSON too
    try:
        compiled = compile(open("/sandbox/program.py").read(), "program.py", "exec")
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError):
        os._exit(COMPILE_ERROR)
    judge(compiled)
