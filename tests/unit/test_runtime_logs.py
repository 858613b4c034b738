"""Actor logs and error lines: a replacement actor appends to its role's log, a second redirect moves
the output without doubling it, only rlvr's own loggers reach the console as rlvr's."""

import logging
import os
import subprocess
import sys


def test_last_line_and_first_line_skip_blank_lines():
    from rlvr.runtime.faults import first_line, last_line

    e = RuntimeError("\nray::Learner.load()\n  File x\nValueError: bad bytes\n\n")
    assert first_line(e) == "ray::Learner.load()" and last_line(e) == "ValueError: bad bytes"


def _redirect_in_child(tmp_path, body):
    code = f"import sys, logging\nsys.path.insert(0, {os.getcwd()!r})\nfrom rlvr.runtime.logs import redirect_actor_output\n" + body
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=os.getcwd())


def test_a_replacement_actor_appends_to_its_role_s_log(tmp_path):
    """A restarted actor writes to the same logs/<role>-<i>.log: the dead one's lines (why it died) stay."""
    path = tmp_path / "learner-0.log"
    for word in ("first", "second"):
        r = _redirect_in_child(tmp_path, f"redirect_actor_output({str(path)!r}); print({word!r}, flush=True)")
        assert r.returncode == 0, r.stderr
    assert path.read_text().split() == ["first", "second"]


def test_redirecting_again_moves_the_output_without_doubling_lines(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    r = _redirect_in_child(tmp_path, f"redirect_actor_output({str(a)!r}); redirect_actor_output({str(b)!r})\n"
                                     "logging.basicConfig()\nlogging.getLogger('rlvr.x').warning('only once')\nlogging.getLogger().warning('root')")
    assert r.returncode == 0, r.stderr
    assert b.read_text().count("only once") == 1 and r.stderr.count("only once") == 1
    assert "only once" not in a.read_text()


def test_actor_log_env_is_empty_when_verbose_and_names_the_file_otherwise(tmp_path):
    from rlvr.runtime.logs import ACTOR_LOG_ENV, actor_log_env

    assert actor_log_env(tmp_path, "learner", 0, verbose=True) == {}
    assert actor_log_env(tmp_path, "learner", 0, verbose=False) == {ACTOR_LOG_ENV: str(tmp_path.resolve() / "logs" / "learner-0.log")}


def test_console_filter_treats_only_rlvr_and_its_children_as_rlvr():
    from rlvr.runtime.logs import ConsoleFilter

    rec = lambda name: logging.LogRecord(name, logging.INFO, "f", 1, "m", None, None)  # noqa: E731
    f = ConsoleFilter()
    assert f.filter(rec("rlvr")) and f.filter(rec("rlvr.train")) and not f.filter(rec("rlvr_plugin"))
