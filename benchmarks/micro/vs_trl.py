"""rlvr against TRL's GRPOTrainer on identical work, one after the other in one invocation.

    .venv/bin/python -m benchmarks.micro.vs_trl [--precision float32|bfloat16] [--warmup 1] [--steps 5]
                                          [--out benchmarks/out/vs_trl.json] [rlvr key=value ...]

The work: SmolLM2-135M (the embedded default) in `--precision`: float32, or bfloat16 autocast over
float32 weights for both (rlvr `model.train_dtype=bfloat16`, TRL `bf16=True`, its default), the
default job's `data=mix` prompts in the same order (rendered once by rlvr, handed to TRL as plain-text prompts), 8 prompts × 4 completions a
step, at most 64 new tokens, T = 0.7, top-p 1, lr 1e-5, GRPO's clipped loss with ε = 0.2, a
per-sequence token mean (TRL `loss_type="grpo"`, rlvr `seq-mean-token-mean`), no KL term, one
optimizer step per batch, 2 CPU cores. `--warmup` steps are run and not counted. TRL keeps its
default gradient checkpointing; extra `key=value` arguments go to `rlvr train` (for example
`learner.micro_batch_size=8`).

- rlvr: `rlvr train algorithm=grpo ...` as a user runs it (Ray, a vLLM engine, a verifier pool, a
  DeepSpeed learner). Phases from its metrics: generation (`time/generate`), log-prob forward
  (none: with one mini-batch and one epoch π_old is the detached current log-prob), train
  (`time/learn`), the rest of the step (verification, weight sync, bookkeeping).
- TRL 1.16 GRPOTrainer, generating with HF `generate` (TRL's default without a vLLM server), in its
  own venv `benchmarks/.venv-trl` (created on first use; never by CI). Phases: generation
  (`_generate_single_turn`), log-prob forward (no-grad `_get_per_token_logps_and_entropies`: none
  is made when generation and optimization are aligned, as here), train (the rest of the step,
  `on_step_begin` to `on_step_end`: rewards, the loss forward, backward, gradient clipping and the
  optimizer step, the last two of which HF's Trainer runs after `training_step`; before 2026-12-07
  only `training_step` was timed, which left them out of TRL's figures, about 1 % of its step).
- Peak memory: the largest sum of PSS (proportional set size: shared pages counted once) over the
  whole process tree (for rlvr: the driver, Ray's daemons, every actor), sampled every 0.5 s, with
  each process's share at the moment of the peak.

Prints JSON (and writes --out): per framework seconds per step and per phase (mean over the
counted steps), peak PSS, and rlvr ÷ TRL. Targets: step ≤ 0.5×, peak memory ≤ 1× (issue 17); step ≤ 0.45×,
peak memory ≤ 0.9× at the defaults (issue 33).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import OUT, ROOT, write_report

TRL_VENV = ROOT / "benchmarks" / ".venv-trl"
# torch first (a bare torch pulls the CUDA build), then TRL with the transformers rlvr pins (TRL 1.16 needs >= 4.56.2)
TRL_INSTALL = [["torch==2.13.0"], ["trl==1.16.0", "transformers==5.19.0", "math-verify==0.9.0", "psutil"]]
SETTINGS = dict(prompts_per_step=8, n=4, max_tokens=64, temperature=0.7, top_p=1.0, lr=1e-5, clip=0.2)


# ---- the TRL side: runs inside benchmarks/.venv-trl, imports nothing of rlvr -------------------------
def trl_worker(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from math_verify import parse, verify
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    s = spec["settings"]
    torch.manual_seed(0)
    steps: list[dict] = []
    phase = {"generate": 0.0, "logprob": 0.0}

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with a stopwatch around its phases; nothing else changes."""

        def _generate_single_turn(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                phase["generate"] += time.perf_counter() - start

        def _get_per_token_logps_and_entropies(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._get_per_token_logps_and_entropies(*args, **kwargs)
            finally:
                if not torch.is_grad_enabled():
                    phase["logprob"] += time.perf_counter() - start

    class StepTimer(TrainerCallback):
        """A step from its first `training_step` to `on_step_end`: HF's Trainer clips the gradients and
        steps the optimizer after `training_step` returns, so timing `training_step` alone left them out."""

        def on_step_begin(self, *args, **kwargs):
            phase.update(generate=0.0, logprob=0.0, start=time.perf_counter())

        def on_step_end(self, *args, **kwargs):
            total = time.perf_counter() - phase["start"]
            steps.append({"step": total, "generate": phase["generate"], "logprob": phase["logprob"], "train": total - phase["generate"] - phase["logprob"]})

    def correct(completions, answer, **_):
        return [float(bool(verify(parse(a), parse(c)))) for c, a in zip(completions, answer)]

    rows = [{"prompt": p, "answer": a} for p, a in zip(spec["prompts"], spec["answers"])]
    config = GRPOConfig(
        output_dir=spec["out_dir"],
        per_device_train_batch_size=s["prompts_per_step"] * s["n"],
        num_generations=s["n"],
        max_completion_length=s["max_tokens"],
        temperature=s["temperature"],
        top_p=s["top_p"],
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        epsilon=s["clip"],
        loss_type="grpo",
        num_iterations=1,
        shuffle_dataset=False,
        max_steps=spec["total_steps"],
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=s["precision"] == "bfloat16",
        seed=0,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"], padding_side="left")
    trainer = TimedGRPOTrainer(model=model, reward_funcs=correct, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                               callbacks=[StepTimer()])
    trainer.train()
    print(json.dumps({"steps": steps, "threads": torch.get_num_threads()}))


# ---- the driver: runs in rlvr's venv -----------------------------------------------------------------
def process_title(p) -> str:
    """`ray::PolicyLearner` for a Ray actor, `python rlvr.cli` for a Python process, else the binary."""
    cmd = p.cmdline() or [p.name()]
    head = cmd[0].split()[0]
    if head.startswith("ray::"):
        return head.split(".")[0].split("(")[0]
    if Path(head).name.startswith("python"):
        args = iter(cmd[1:])
        for arg in args:
            if arg in ("-m", "-c"):
                return f"python {arg} {next(args, '')}"[:60]
            if not arg.startswith("-"):
                return f"python {Path(arg).name}"
    return Path(head).name


class PeakMemory:
    """The largest sum of PSS over a process and its descendants, sampled every `interval_s`, and
    each process's PSS at that moment (by process title: Ray names its actors `ray::Class`)."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        import psutil

        self.root, self.interval_s, self.peak_mb, self.at_peak = psutil.Process(pid), interval_s, 0.0, {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        while not self.done.wait(self.interval_s):
            shares: dict[str, float] = {}
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            for p in procs:
                try:
                    title = process_title(p)
                    shares[title] = shares.get(title, 0.0) + p.memory_full_info().pss / 2**20
                except psutil.Error:
                    pass  # a process that ended between listing and reading
            if sum(shares.values()) > self.peak_mb:
                self.peak_mb = sum(shares.values())
                self.at_peak = {k: round(v) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}

    def stop(self) -> PeakMemory:
        self.done.set()
        self.thread.join()
        return self


def run_measured(cmd: list[str], log_path: Path, env: dict | None = None) -> tuple[str, PeakMemory, float]:
    """Run `cmd`; its stdout, the peak PSS of its process tree, and wall seconds."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env or dict(os.environ))
        peak = PeakMemory(proc.pid)
        out, _ = proc.communicate()
    peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed (exit {proc.returncode}); see {log_path}")
    return out, peak, time.perf_counter() - start


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        print(f"[vs_trl] creating {TRL_VENV} (TRL 1.16, once)", file=sys.stderr, flush=True)
        subprocess.run(["python3", "-m", "venv", str(TRL_VENV)], check=True)  # the system Python: not inside rlvr's venv
        for pkgs in TRL_INSTALL:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *pkgs], check=True)
    return python


def summarize(steps: list[dict], keys: tuple[str, ...]) -> dict:
    return {k: statistics.mean(s[k] for s in steps) for k in keys}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--trl-worker":
        return trl_worker(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT / "vs_trl.json")
    ap.add_argument("rlvr_overrides", nargs="*", help="extra `rlvr train` overrides, e.g. learner.micro_batch_size=8")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    from omegaconf import OmegaConf

    from rlvr.analysis.plots import load_metrics
    from rlvr.config import compose
    from rlvr.data import PromptStream, load_problems, prompt_renderer
    from rlvr.models import resolve_model_path

    s = {**SETTINGS, "precision": args.precision}
    total = args.warmup + args.steps
    overrides = [
        "algorithm=grpo", "weighting=none", "data=mix", f"trainer.batch_size={s['prompts_per_step']}", f"algorithm.n={s['n']}",
        f"rollout.max_tokens={s['max_tokens']}", f"rollout.temperature={s['temperature']}", f"rollout.top_p={s['top_p']}",
        f"learner.lr={s['lr']}", f"trainer.steps={total}", "trainer.eval_every=0", "eval.at_start=false", "trainer.save_every=0",
        "trainer.progress=false", "resume=never", f"model.train_dtype={args.precision}", *args.rlvr_overrides,
    ]
    cfg = compose(overrides)
    assert cfg.algorithm.eps_low == cfg.algorithm.eps_high == s["clip"] and cfg.algorithm.kl_coef == 0.0
    model_path = resolve_model_path(cfg.model.path, cfg.cache_dir)
    render = prompt_renderer(cfg, model_path)
    stream = PromptStream(load_problems(OmegaConf.to_container(cfg.data.train, resolve=True)), seed=cfg.seed)
    problems = [p for _ in range(total) for p in stream.next(s["prompts_per_step"])]
    trl_python = ensure_trl_venv()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="rlvr-vs-trl-") as tmp:
        tmp = Path(tmp)
        run_dir = tmp / "rlvr-run"
        print("[vs_trl] rlvr ...", file=sys.stderr, flush=True)
        _, rlvr_peak, rlvr_wall = run_measured([sys.executable, "-m", "rlvr.cli", "train", *overrides, f"run_dir={run_dir}"], tmp / "rlvr.log")
        records = [r for r in load_metrics(run_dir) if r["step"] >= 1][args.warmup :]
        rlvr_steps = [
            {
                "step": r["time/step"],
                "generate": r["time/generate"],
                "logprob": 0.0,
                "train": r["time/learn"],
                "other": r["time/step"] - r["time/generate"] - r["time/learn"],
            }
            for r in records
        ]
        spec = {
            "settings": s,
            "prompts": [render(p) for p in problems],
            "answers": [str(p.answer) for p in problems],
            "model_path": model_path,
            "total_steps": total,
            "out_dir": str(tmp / "trl-out"),
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        print("[vs_trl] TRL ...", file=sys.stderr, flush=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PYTHONPATH"] = str(ROOT)  # the checkout (this module), none of rlvr's venv
        out, trl_peak, trl_wall = run_measured([str(trl_python), "-m", __spec__.name, "--trl-worker", str(tmp / "spec.json")], tmp / "trl.log", env)
        trl = json.loads(out.strip().splitlines()[-1])
        trl_steps = trl["steps"][args.warmup :]
        for st in trl_steps:
            st["other"] = 0.0
        if len(trl_steps) != args.steps or len(rlvr_steps) != args.steps:
            raise SystemExit(f"expected {args.steps} counted steps, got rlvr {len(rlvr_steps)}, TRL {len(trl_steps)}; logs in {tmp}")

    keys = ("step", "generate", "logprob", "train", "other")
    rlvr_s, trl_s = summarize(rlvr_steps, keys), summarize(trl_steps, keys)
    report = {
        "settings": {**s, "warmup_steps": args.warmup, "counted_steps": args.steps, "model": cfg.model.path, "rlvr_overrides": args.rlvr_overrides},
        "load_average_before": load_before,
        "rlvr": {"seconds_per_step": rlvr_s, "peak_pss_mb": rlvr_peak.peak_mb, "pss_mb_at_peak": rlvr_peak.at_peak, "wall_s": rlvr_wall, "per_step": rlvr_steps},
        "trl": {"seconds_per_step": trl_s, "peak_pss_mb": trl_peak.peak_mb, "pss_mb_at_peak": trl_peak.at_peak, "wall_s": trl_wall, "torch_threads": trl["threads"], "per_step": trl_steps},
        "rlvr_over_trl": {
            "step": rlvr_s["step"] / trl_s["step"],
            "generate": rlvr_s["generate"] / trl_s["generate"],
            "train": rlvr_s["train"] / trl_s["train"],
            "peak_memory": rlvr_peak.peak_mb / trl_peak.peak_mb,
        },
        # issue 17's targets, then issue 33's (the lean defaults)
        "targets": {"step<=0.5": rlvr_s["step"] / trl_s["step"] <= 0.5, "peak_memory<=1": rlvr_peak.peak_mb <= trl_peak.peak_mb,
                    "step<=0.45": rlvr_s["step"] / trl_s["step"] <= 0.45, "peak_memory<=0.9": rlvr_peak.peak_mb <= 0.9 * trl_peak.peak_mb},
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
