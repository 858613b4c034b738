"""Environments, tools and the token bookkeeping of multi-turn episodes, without Ray
(tests/integration/test_multiturn.py runs episodes through the real engines and sandbox)."""

import json

import pytest

from rlvr.data import Problem
from rlvr.envs import Step, make_environment
from rlvr.envs.calculator import calculate
from rlvr.envs.tools import MalformedCall, ToolCall, parse_hermes, run_tool, tool_prompt, tool_schemas
from rlvr.generation import ChatTokens, Episode, env_rates
from rlvr.sandbox import ScoreResult
from rlvr.types import Sample

TOOLS = ["tools_for_tests:echo", "tools_for_tests:boom"]


@pytest.mark.parametrize("expression, value", [
    ("23 * 47", "1081"), ("12 + 85 + 30", "127"), ("(2 + 3) * -4", "-20"), ("7 / 2", "3.5"), ("8 / 4", "2"), ("2 ** 10", "1024"), (" 17 % 5 ", "2"),
])
def test_calculate_does_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression", [
    "__import__('os').system('touch /tmp/pwned')", "open('/etc/passwd').read()", "(1).__class__", "x + 1", "[1, 2]", "lambda: 1",
    "9 ** 9 ** 9", "10 ** 40 * 10 ** 40", "1 / 0", "1 +", "'a' * 3", "1" * 300,
    "(-8) ** (1 / 3)", "1e999", "1e999 - 1e999", "(-8) ** 0.5 + 1", "10 ** 31 // 1",  # complex, inf, nan: no result to read back
    "1" * 40,
])
def test_calculate_refuses_what_is_not_small_arithmetic(expression):
    with pytest.raises((ValueError, ZeroDivisionError)):
        calculate(expression)


def test_hermes_parser_reads_calls_and_names_what_is_malformed():
    text = (
        'Let me compute. <tool_call>{"name": "calculate", "arguments": {"expression": "2 + 2"}}</tool_call>'
        '<tool_call>{"name": "echo", "arguments": "{\\"text\\": \\"hi\\"}"}</tool_call>'
        "<tool_call>{not json}</tool_call><tool_call>[1, 2]</tool_call><tool_call>{\"name\": \"x\""
    )
    calls = parse_hermes(text)
    assert calls[0] == ToolCall("calculate", {"expression": "2 + 2"})
    assert calls[1] == ToolCall("echo", {"text": "hi"})  # arguments written as a JSON string
    assert [type(c) for c in calls[2:]] == [MalformedCall] * 3  # bad JSON, not an object, unclosed and cut
    assert "not valid JSON" in calls[2].message
    assert parse_hermes("The answer is \\boxed{4}.") == []


def test_hermes_parser_turns_deep_nesting_into_a_malformed_call():
    """json's decoder recurses per bracket: 1,000 of them (about 500 tokens) overflowed its stack
    in the generator's process, outside any sandbox."""
    deep = "[" * 5000
    nested_args = '{"name": "echo", "arguments": "' + deep + '"}'
    calls = parse_hermes(f"<tool_call>{deep}</tool_call><tool_call>{nested_args}</tool_call>")
    assert [type(c) for c in calls] == [MalformedCall, MalformedCall]
    assert "nested too deeply" in calls[0].message


def test_hermes_parser_turns_what_json_cannot_carry_into_malformed_calls():
    """Python's json refuses integers over 4,300 digits with a ValueError (a runaway of digits, one
    token each), and encodes with more stack than it decodes: either escaped the parser or the
    driver's re-encoding and stopped the step."""
    digits = "1" * 4301
    calls = parse_hermes(f'<tool_call>{{"name": "echo", "arguments": {{"text": {digits}}}}}</tool_call>'
                         f'<tool_call>{{"name": "echo", "arguments": "{{\\"text\\": {digits}}}"}}</tool_call>'
                         '<tool_call>{"name": "echo", "arguments": {"text": "ok"}}</tool_call>')
    assert [type(c) for c in calls] == [MalformedCall, MalformedCall, ToolCall]
    assert "4300 digits" in calls[0].message
    for depth in range(850, 1050, 5):  # around the decoder's limit: every call it reads can be sent on
        nested = '{"name": "echo", "arguments": {"text": ' + "[" * depth + "]" * depth + "}}"
        for c in parse_hermes(f"<tool_call>{nested}</tool_call>"):
            assert isinstance(c, MalformedCall) or json.loads(c.to_json())["name"] == "echo"


def test_a_lone_surrogate_in_a_call_is_malformed_and_one_in_an_observation_is_replaced(tokenizer):
    """`"\\ud83d"` decodes to half a UTF-16 pair; a tool that named its argument in its error sent it
    back, and the fast tokenizer refused the observation: the step, and the run, stopped."""
    (call,) = parse_hermes('<tool_call>{"name": "echo", "arguments": {"text": "\\ud83d"}}</tool_call>')
    assert isinstance(call, MalformedCall) and "surrogate" in call.message
    (call,) = parse_hermes('<tool_call>{"name": "echo", "arguments": "{\\"text\\": \\"\\\\ud83d\\"}"}</tool_call>')  # arguments as a JSON string
    assert isinstance(call, MalformedCall) and "surrogate" in call.message
    (ok,) = parse_hermes('<tool_call>{"name": "echo", "arguments": {"text": "\\ud83d\\ude00"}}</tool_call>')  # a whole pair is text
    assert ok.arguments == {"text": "\U0001f600"}
    chat = ChatTokens(tokenizer, [])
    assert chat.observation_ids([1], [{"role": "tool", "content": "no such city: \ud83d"}]) == \
        chat.observation_ids([1], [{"role": "tool", "content": "no such city: ?"}])


def test_run_tool_answers_every_failure_with_a_message_for_the_model():
    def run(name, **arguments):
        return run_tool(ToolCall(name, arguments).to_json(), "", "tool", TOOLS)

    assert run("echo", text="hi") == {"score": 1.0, "outcome": "ok", "output": "hi"}
    unknown = run("rm", path="/")
    assert unknown["outcome"] == "unknown_tool" and "boom, echo" in unknown["output"]
    assert run("echo")["outcome"] == "bad_arguments"  # missing
    assert run("echo", text="a", extra=1)["outcome"] == "bad_arguments"  # unexpected
    wrong_type = run("echo", text=3)
    assert wrong_type["outcome"] == "bad_arguments" and "must be str" in wrong_type["output"]
    raised = run("boom", message="kaput")
    assert raised == {"score": 0.0, "outcome": "raised", "output": "RuntimeError: kaput"}


def test_tool_schemas_come_from_type_hints_and_docstrings():
    (schema,) = tool_schemas(["rlvr.envs.calculator:calculate"])
    assert schema["function"]["name"] == "calculate"
    assert schema["function"]["parameters"]["required"] == ["expression"]
    assert json.dumps(schema) in tool_prompt([schema])
    with pytest.raises(ValueError, match="tools_for_tests:undocumented"):
        tool_schemas(["tools_for_tests:undocumented"])
    with pytest.raises(ValueError, match="cannot import"):
        tool_schemas(["tools_for_tests:missing"])


def test_environments_by_name_or_module_and_their_errors():
    calc = make_environment("calculator", {"system_prompt": "S", "fewshot": [{"role": "user", "content": "q"}]}, ["tools_for_tests:echo"])
    assert calc.tools == ["rlvr.envs.calculator:calculate", "tools_for_tests:echo"]
    first = calc.reset(Problem("t/0", "What is 2 * 3?", "6"), [{"role": "user", "content": "ignored"}])
    assert [m["role"] for m in first] == ["system", "user", "user"] and first[-1]["content"] == "What is 2 * 3?"
    assert make_environment("rlvr.envs.retry:Retry", {"attempts": 2}).attempts == 2
    with pytest.raises(ValueError, match="unknown environment 'chess'"):
        make_environment("chess")
    with pytest.raises(ValueError, match="does not take env.options"):
        make_environment("retry", {"tries": 2})


def test_retry_asks_again_until_right_or_out_of_attempts():
    env = make_environment("retry", {"attempts": 3, "turn_penalty": 0.1})
    wrong, right = ScoreResult(0.0, False), ScoreResult(1.0, True)
    assert env.step([], [wrong]).observation == [{"role": "user", "content": "Incorrect, try again."}]
    end = env.step([], [wrong, right])
    assert end.observation is None and end.correct and end.reward == pytest.approx(0.9)
    out = env.step([], [wrong, wrong, wrong])
    assert out.observation is None and not out.correct and out.reward == pytest.approx(-0.2)


def test_unknown_env_keys_and_values_fail_naming_them():
    from rlvr.config import ConfigError, compose, validate

    validate(compose(["env=calculator"]))
    validate(compose(["env=retry", "data=arith"]))
    with pytest.raises(ConfigError, match="env.max_turns"):
        validate(compose(["env=calculator", "env.max_turns=0"]))
    with pytest.raises(ConfigError, match="env.parser"):
        validate(compose(["env=calculator", "env.parser=xml"]))
    with pytest.raises(ConfigError, match="undocumented"):
        validate(compose(["env=calculator", "env.tools=[tools_for_tests:undocumented]"]))
    with pytest.raises(ConfigError, match="unknown environment"):
        validate(compose(["env=retry", "env.name=chess"]))
    # a parser with no tools sent a call to a verifier pool started without tools; tools with no parser never run
    with pytest.raises(ConfigError, match="env.parser: hermes reads tool calls, but env=retry has no tools"):
        validate(compose(["env=retry", "data=arith", "env.parser=hermes"]))
    with pytest.raises(ConfigError, match="env.parser: none reads no tool calls, but env=calculator has tools"):
        validate(compose(["env=calculator", "env.parser=none"]))
    validate(compose(["env=retry", "data=arith", "env.parser=hermes", "env.tools=[rlvr.envs.calculator:calculate]"]))


def test_a_users_own_environment_as_the_readme_shows(tmp_path, monkeypatch):
    """`env.name=my_module:MyEnv env.options.level=3`, as the README showed it, failed to compose
    in every form: env=none has no options, and retry's are its own. `env=custom` takes any."""
    from rlvr.config import ConfigError, compose, validate
    from rlvr.envs import environment_from_config

    (tmp_path / "my_env_module.py").write_text(
        "from rlvr.envs.retry import Retry\n"
        "class MyEnv(Retry):\n"
        "    def __init__(self, level=1, **kw):\n"
        "        super().__init__(**kw)\n"
        "        self.level = level\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose(["env=custom", "env.name=my_env_module:MyEnv", "+env.options.level=3"])
    validate(cfg)
    assert environment_from_config(cfg.env).level == 3
    with pytest.raises(ConfigError, match="env.name"):
        validate(compose(["env=custom"]))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_observations_are_tokenized_alone_and_the_model_ids_are_kept(tokenizer):
    chat = ChatTokens(tokenizer, tool_schemas(["rlvr.envs.calculator:calculate"]))
    assert not chat.template_takes_tools  # the tiny model's ChatML template: the tools go into the system message
    prompt = chat.prompt_ids([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 23 * 47?"}])
    text = tokenizer.decode(prompt)
    assert "<tools>" in text and '"calculate"' in text and "Be brief." in text and text.endswith("<|im_start|>assistant\n")

    # The model wrote "1081" as four single-digit tokens, which the tokenizer itself would merge:
    # the episode keeps the engine's ids, and the tool's "5" right after the turn is its own token.
    digits = [tokenizer.convert_tokens_to_ids(d) for d in "1081"]
    assert tokenizer.encode("1081", add_special_tokens=False) != digits
    e = Episode(0, Problem("t/1", "q", "1"), [], prompt)
    turn = digits + [tokenizer.eos_token_id]
    e.add_turn(Sample(0, prompt, turn, "1081", [-0.5] * len(turn), "stop", False, 3))
    observation = [{"role": "tool", "content": "5"}]
    obs = chat.observation_ids(turn, observation)
    e.add_observation(observation, obs)
    assert tokenizer.decode(obs) == "\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n"  # the model wrote <|im_end|> itself
    assert e.response_ids == turn + obs and e.response_ids[:4] == digits
    assert e.loss_mask == [1.0] * len(turn) + [0.0] * len(obs)
    assert e.logprobs == [-0.5] * len(turn) + [0.0] * len(obs)
    # a turn cut at a tool call's closing tag (no end-of-turn token) gets the whole end marker
    assert tokenizer.decode(chat.observation_ids(digits, observation)).startswith("<|im_end|>\n<|im_start|>tool\n")
    e.finish(Step(None, 1.0, True), "done")
    t = e.trajectory("x")
    assert t.num_tokens == len(turn) and t.weight_version == 3 and t.correct and not t.truncated


# Qwen3's template, in its one trait that matters here: the last assistant turn after the last user
# message gets an empty think block, which the same turn loses once a message follows it.
THINKING_TEMPLATE = (
    "{% set ns = namespace(last_user=-1) %}"
    "{% for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m.role == 'assistant' and loop.last and loop.index0 > ns.last_user %}"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ m.content }}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_observations_follow_a_template_that_renders_the_last_assistant_turn_apart(tiny_model):
    """Every episode of a Qwen3-style template raised at its first observation: the observation was
    the diff against the dummy turn rendered last, which such a template renders with a think block."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = THINKING_TEMPLATE
    chat = ChatTokens(tokenizer, [])
    turn = tokenizer.encode("<think>\nok\n</think>\n\n<tool_call>{}</tool_call>", add_special_tokens=False)
    assert tokenizer.decode(chat.observation_ids(turn, [{"role": "tool", "content": "42"}])) == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(chat.observation_ids(turn + [tokenizer.eos_token_id], [{"role": "user", "content": "Try again."}])) == (
        "\n<|im_start|>user\nTry again.<|im_end|>\n<|im_start|>assistant\n")


def test_env_rates_are_means_per_episode_and_shares():
    counts = {"env/episodes": 4, "env/turns": 10, "env/tool_calls": 6, "env/tool_errors/raised": 1, "env/tool_errors/malformed": 2,
              "env/ended/done": 3, "env/ended/max_turns": 1, "env/first_answers_correct": 1}
    assert env_rates(counts) == {
        "env/turns_per_episode": 2.5, "env/tool_calls_per_episode": 1.5, "env/tool_error_rate": 0.5, "env/first_answer_accuracy": 0.25,
        "env/ended_share/done": 0.75, "env/ended_share/max_turns": 0.25,
    }
    assert env_rates({"rollouts": 3}) == {}


def test_a_verl_tool_config_of_functions_gives_their_tools(tmp_path):
    from rlvr.config import compose
    from rlvr.envs import environment_from_config

    config = tmp_path / "tools.yaml"
    config.write_text(
        "tools:\n"
        "  - class_name: tools_for_tests.echo\n"
        "    config: {type: native}\n"
        "    tool_schema: {type: function, function: {name: echo, description: Return the text., parameters: {}}}\n"
    )
    env = environment_from_config(compose(["env=calculator", f"env.tool_config={config}"]).env)
    assert env.tools == ["rlvr.envs.calculator:calculate", "tools_for_tests:echo"]
    config.write_text("tools:\n  - class_name: rlvr.envs.calculator.Calculator\n")
    with pytest.raises(ValueError, match="is a class"):
        environment_from_config(compose(["env=calculator", f"env.tool_config={config}"]).env)


HANGS = """
import re, signal, sys, time
from rlvr.envs import Step, WithDeadline

class Env:
    tools = []

    def reset(self, problem, messages):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # main-thread only, as math-verify's signal.alarm is
        return messages

    def step(self, messages, scores):
        if sys.argv[1] in ("sleep", "two threads"):
            time.sleep(60)  # waiting on something that never comes
        re.match(r"(a+)+$", "a" * 40 + "b")  # a catastrophic regex: it holds the GIL for minutes

env = WithDeadline(Env(), 1.0, "my_envs:Env")
print(env.reset(None, [{"content": "hello"}]), flush=True)
if sys.argv[1] == "two threads":  # an async run: the generator thread's call hangs while the main thread's returns
    import threading

    threading.Thread(target=env.step, args=([], [])).start()
    time.sleep(0.3)
    Env.step = lambda self, messages, scores: Step(None, 0.0, False)
    env.step([], [])
    time.sleep(30)
env.step([], [])
"""


@pytest.mark.parametrize("how", ["sleep", "regex", "two threads"])
def test_an_environment_that_hangs_stops_the_run_with_its_stack(how):
    """reset() and step() run in the trainer's process with no deadline: a step() that never
    returned hung the run (150 s in its step-0 evaluation, no message, no metrics). They stay on the
    caller's thread (an environment may need the main thread), and a call holding the GIL is stopped too."""
    import subprocess
    import sys
    import time

    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", HANGS, how], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30
    assert done.returncode != 0 and done.stdout.strip() == "[{'content': 'hello'}]"
    line = 15 if how == "regex" else 14  # the environment's own line, in its stack
    how = "sleep" if how == "two threads" else how
    assert "Timeout" in done.stderr and f'"<string>", line {line} in step' in done.stderr, done.stderr[-2000:]
    if how == "sleep":  # the GIL free: the run's log says which environment and why
        assert "environment 'my_envs:Env': step() has not returned within 1 s" in done.stderr


def test_an_environment_s_own_error_reaches_the_caller_as_it_was():
    from rlvr.envs import WithDeadline

    with pytest.raises(ZeroDivisionError):
        WithDeadline(type("Raises", (), {"tools": [], "step": lambda self, m, s: 1 / 0})(), 5, "x").step([], [])


def test_an_environment_returning_the_wrong_type_is_named_at_the_call():
    """A SkyRL-style dict from step() ended the run steps later as "'dict' object has no attribute
    'reward'" inside the generator, after every role had started."""
    from rlvr.envs import WithDeadline

    class Env:
        tools: list = []

        def reset(self, problem, messages):
            return {"role": "user", "content": "q"}  # one message, not a list of them

        def step(self, messages, scores):
            return {"observation": None, "reward": 1.0, "done": True}

    env = WithDeadline(Env(), 5, "bad_env:Env")
    with pytest.raises(TypeError, match=r"'bad_env:Env': step\(\) must return rlvr.envs.Step.*got dict"):
        env.step([], [])
    with pytest.raises(TypeError, match=r"'bad_env:Env': reset\(\) must return the episode's messages.*got dict"):
        env.reset(Problem("t/0", "q", "1"), [])
    Env.reset = lambda self, problem, messages: ["2+2?"]  # strings, not messages
    with pytest.raises(TypeError, match=r"reset\(\) must return the episode's messages.*got list"):
        env.reset(Problem("t/0", "q", "1"), [])
    # step()'s own fields: a bare string failed later as list + str, a NaN made its group's advantages NaN
    for step, error in [(Step("Incorrect, try again.", 0.0, False), TypeError), (Step({"role": "user", "content": "again"}, 0.0, False), TypeError),
                        (Step([{"role": "user"}], 0.0, False), TypeError), (Step(None, float("nan"), False), ValueError),
                        (Step(None, float("inf"), True), ValueError), (Step(None, None, True), ValueError)]:
        Env.step = lambda self, messages, scores, out=step: out
        with pytest.raises(error, match=r"'bad_env:Env': step\(\)'s"):
            env.step([], [])
    good = type("Good", (), {"tools": [], "reset": lambda self, p, m: list(m), "step": lambda self, m, s: Step(None, 1.0, True)})()
    again = [{"role": "user", "content": "again"}]
    assert WithDeadline(type("Again", (), {"tools": [], "step": lambda self, m, s: Step(again, 0, False)})(), 5, "x").step([], []).observation == again
    assert WithDeadline(type("Bool", (), {"tools": [], "step": lambda self, m, s: Step(None, True, True)})(), 5, "x").step([], []).reward is True
    assert WithDeadline(good, 5, "x").step([], []) == Step(None, 1.0, True)
    assert WithDeadline(good, 5, "x").reset(Problem("t/0", "q", "1"), [{"role": "user", "content": "q"}]) == [{"role": "user", "content": "q"}]


def test_an_episode_cut_by_its_length_mid_turn_ends_on_max_tokens_not_the_turn_cap(tokenizer):
    """A turn given less than rollout.max_tokens (what was left of env.max_tokens) and cut there was
    counted as ending on the per-turn cap (`env/ended/turn_tokens`)."""
    import torch

    from rlvr.generation import MultiTurn
    from rlvr.rollout.engines import SamplingConfig
    from rlvr.sandbox.messages import ScoreResult

    word = tokenizer.encode("hello", add_special_tokens=False)[0]

    class TenWordsThenEos:  # each turn, cut at the request's max_tokens as vLLM cuts it
        def generate(self, requests, sampling, seed):
            out = []
            for r in requests:
                wanted = [word] * 10 + [tokenizer.eos_token_id]
                ids = wanted[: min(sampling.max_tokens, r.max_tokens or sampling.max_tokens)]
                cut = len(ids) < len(wanted)
                out.append(Sample(r.prompt_index, torch.tensor(r.prompt), torch.tensor(ids), tokenizer.decode(ids),
                                  torch.full((len(ids),), -1.0), "length" if cut else "stop", cut, 0))
            return out

    class WrongVerifier:
        def call(self, method, requests):
            return [ScoreResult(0.0, False) for _ in requests], {}

    class AlwaysAgain:
        tools: list = []

        def reset(self, problem, messages):
            return messages

        def step(self, messages, scores):
            return Step([{"role": "user", "content": "again"}], 0.0, False)

    def ended(max_tokens: int, turn_cap: int) -> dict:
        generator = MultiTurn(TenWordsThenEos(), WrongVerifier(), tokenizer, AlwaysAgain(), lambda p: [{"role": "user", "content": p.question}],
                              max_turns=5, max_tokens=max_tokens, max_model_len=1024, parser="none")
        out = generator.generate([Problem("t/0", "Q?", "1")], [1], SamplingConfig(1.0, 1.0, turn_cap), seed=0)
        assert out.trajectories[0].truncated
        return {k: v for k, v in out.counts.items() if k.startswith("env/ended/")}

    assert ended(max_tokens=40, turn_cap=64) == {"env/ended/max_tokens": 1}  # the second turn got what was left of 40
    assert ended(max_tokens=200, turn_cap=5) == {"env/ended/turn_tokens": 1}  # the first turn, cut at its own cap


# ---- found surviving mutants (2026-12-07) -------------------------------------------------------------


def test_the_calculator_s_binary_operators_by_hand():
    assert calculate("100 - 58") == "42" and calculate("7 // 2") == "3"


def test_a_calculator_episode_is_correct_only_when_its_answer_is():
    from rlvr.envs.calculator import Calculator

    assert Calculator().step([], [ScoreResult(reward=0.0, correct=False)]).correct is False
    assert Calculator().step([], [ScoreResult(reward=1.0, correct=True)]).correct is True


def test_a_tool_call_whose_name_is_not_a_string_is_malformed():
    (call,) = parse_hermes('<tool_call>{"name": ["x"], "arguments": {}}</tool_call>')
    assert isinstance(call, MalformedCall)


def test_a_bool_is_not_an_int_argument():
    from rlvr.envs.tools import _check_arguments

    def f(x: int) -> int:
        return x

    assert _check_arguments(f, {"x": True}) is not None and _check_arguments(f, {"x": 3}) is None


FORKED = """
import logging, os, sys, time
from rlvr.envs import WithDeadline
logging.basicConfig(stream=sys.stdout, format="%(message)s")

class Env:
    tools = []

    def reset(self, seconds, messages):
        time.sleep(seconds)
        return messages

env = WithDeadline(Env(), 0.3, "e")
env.reset(0.0, [])  # the parent's watchdog exists, then waits with nothing pending
time.sleep(0.5)
pid = os.fork()
if pid == 0:
    env.reset(0.0, [])  # the child's first call
    time.sleep(0.5)
    env.reset(0.6, [])  # 0.3 s late: its message is due at 0.3 s
    print("returned", flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_forked_child_s_late_environment_call_is_still_named():
    """A review of the one-watchdog deadline: after a fork the child's notify went to the parent's
    watchdog, absent there, so a late call's message was never logged (faulthandler still exited)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=60)
    assert "environment 'e': reset() has not returned within 0.3 s" in done.stdout, done.stdout + done.stderr
    assert "returned" in done.stdout


def test_a_call_without_arguments_is_a_call_with_none():
    assert parse_hermes('<tool_call>{"name": "ping"}</tool_call>') == [ToolCall("ping", {})]


def test_verl_tool_config_class_name_without_a_dot_names_the_entry(tmp_path):
    from rlvr.envs.tools import tools_from_verl_config

    config = tmp_path / "tools.yaml"
    config.write_text("tools:\n  - class_name: echo\n")
    with pytest.raises(ValueError, match=r"tools\[0\] needs class_name"):
        tools_from_verl_config(str(config))


def test_verl_tool_config_splits_the_function_from_a_dotted_package(tmp_path):
    from rlvr.envs.tools import tools_from_verl_config

    config = tmp_path / "tools.yaml"
    config.write_text("tools:\n  - class_name: rlvr.envs.calculator.calculate\n")
    assert tools_from_verl_config(str(config)) == ["rlvr.envs.calculator:calculate"]


def test_two_tools_with_one_name_are_refused():
    with pytest.raises(ValueError, match="two tools are named 'calculate'"):
        tool_schemas(["rlvr.envs.calculator:calculate", "rlvr.envs.calculator:calculate"])


def test_a_float_argument_takes_an_int():
    out = run_tool(ToolCall("halve", {"x": 3}).to_json(), "", "tool", ["tools_for_tests:halve"])
    assert out == {"score": 1.0, "outcome": "ok", "output": "1.5"}


def test_a_tool_s_recursion_error_is_left_to_the_sandbox():
    with pytest.raises(RecursionError):
        run_tool(ToolCall("deep", {"n": 1}).to_json(), "", "tool", ["tools_for_tests:deep"])


def test_a_tool_s_non_text_result_reaches_the_model_as_json():
    out = run_tool(ToolCall("settings", {"flag": True}).to_json(), "", "tool", ["tools_for_tests:settings"])
    assert json.loads(out["output"]) == {"flag": True, "none": None}


def test_generation_stops_where_a_hermes_call_ends():
    from rlvr.envs.tools import STOP_AFTER_CALL, ToolCall, parse_hermes

    (stop,) = STOP_AFTER_CALL["hermes"]
    assert parse_hermes('<tool_call>{"name": "ping", "arguments": {}}' + stop + " invented result") == [ToolCall("ping", {})]
    assert STOP_AFTER_CALL["none"] == ()


def test_calculator_exponent_limit_is_64():
    assert calculate("2 ** 64") == str(2**64)
    with pytest.raises(ValueError, match="exponent too large"):
        calculate("1 ** 65")


def test_calculator_refuses_an_expression_past_200_characters():
    assert calculate("1" + " " * 199) == "1"
    with pytest.raises(ValueError, match="longer than 200"):
        calculate("1" + " " * 200)


def test_calculator_rounds_to_six_places():
    assert calculate("1 / 3") == "0.333333" and calculate("2 / 8") == "0.25"


def test_calculator_refuses_booleans():
    with pytest.raises(ValueError, match="not arithmetic"):
        calculate("True + 1")


def test_retry_refuses_zero_attempts():
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        make_environment("retry", {"attempts": 0})


def test_a_tool_given_twice_is_kept_once():
    env = make_environment("calculator", {}, ["rlvr.envs.calculator:calculate", "tools_for_tests:echo", "tools_for_tests:echo"])
    assert env.tools == ["rlvr.envs.calculator:calculate", "tools_for_tests:echo"]


def test_an_environment_without_step_is_refused():
    with pytest.raises(ValueError, match=r"has no step\(\) method"):
        make_environment("tools_for_tests:NoStep")
