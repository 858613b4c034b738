"""``VerifierPool``: the sandbox as a Ray actor, a thin shell around one :class:`ProcessVerifier`.

Ray is imported only when ``VerifierPool`` is first used: the zygote and the workers import the
sandbox package and must stay light (and thread-free).
"""

from __future__ import annotations

from rlvr.sandbox.messages import ScoreRequest, ScoreResult
from rlvr.sandbox.pool import ProcessVerifier


class _VerifierPoolImpl:
    """Ray actor body: owns one ProcessVerifier for the reward terms and, when an environment gives
    the model ``tools`` (``module:function`` specs), a second one that runs their calls."""

    def __init__(self, terms, num_workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 1024, tools: list[str] | None = None, **kwargs):
        from rlvr.runtime.logs import redirect_actor_output

        redirect_actor_output()
        self._v = ProcessVerifier(terms, num_workers=num_workers, timeout_s=timeout_s, memory_mb=memory_mb, **kwargs)
        self._tools = None
        if tools:
            from rlvr.envs.tools import tool_term

            self._tools = ProcessVerifier([tool_term(tools)], num_workers=num_workers, timeout_s=timeout_s, memory_mb=memory_mb, **kwargs)

    def score(self, requests: list[ScoreRequest]) -> tuple[list[ScoreResult], dict]:
        return self._v.score(requests)

    def run_tools(self, calls: list[str]) -> tuple[list[ScoreResult], dict]:
        """Tool calls (`rlvr.envs.tools.ToolCall.to_json`), each in a worker: the result's
        ``outcome`` is ok or the error kind, its ``output`` the text for the model."""
        if self._tools is None:
            raise RuntimeError("this verifier pool was started without tools")
        return self._tools.score([ScoreRequest(c, "") for c in calls])

    def reset(self, log_path: str | None) -> None:
        """For a new run in this process (`cluster.keep_roles`): the workers hold no state between
        items, so only the log file changes."""
        from rlvr.runtime.logs import redirect_actor_output

        redirect_actor_output(log_path)

    def worker_pids(self) -> list[int]:
        return self._v.worker_pids()

    def close(self) -> None:
        self._v.close()
        if self._tools is not None:
            self._tools.close()


def __getattr__(name: str):
    if name == "VerifierPool":
        import ray

        pool = ray.remote(num_cpus=0.1)(_VerifierPoolImpl)
        globals()["VerifierPool"] = pool
        return pool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
