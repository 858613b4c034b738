"""The learner's forward + backward in this checkout against the same file at another commit, in one process.

    .venv/bin/python -m benchmarks.micro.forward_ab --against REV [--repeats 5] [--sequences 32] [key=value ...]

Loads `rlvr/learner/forward.py` as of REV (`git show`) beside this checkout's, builds one batch shaped
like the default job's (`learner_profile.default_job_batch`, cut into micro-batches as the job's
config cuts them; `learner.micro_batch_size=16` unless overridden), and times the forward and the
backward of all its micro-batches under the learner's bf16 autocast with each version, alternating
which goes first every repeat, on the same model in the same process. So the ratio is as fair as
this noisy box allows: both versions see the same load. Prints JSON (and writes --out): each
version's median seconds and padding share, and ours ÷ theirs.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import OUT, ROOT, write_report

FORWARD = "rlvr/learner/forward.py"


def forward_at(rev: str, folder: Path):
    """`rlvr.learner.forward` as of `rev`, as a module of its own (its imports are this checkout's)."""
    path = folder / f"forward_{rev.replace('/', '_')}.py"
    path.write_text(subprocess.run(["git", "show", f"{rev}:{FORWARD}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    name = f"forward_at_{abs(hash(rev))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="a git revision whose rlvr/learner/forward.py to compare with")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--out", type=Path, default=OUT / "forward_ab.json")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. learner.micro_batch_size=8")
    args = ap.parse_args(argv)

    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM

    from benchmarks.profiles.learner_profile import default_job_batch
    from rlvr.learner import forward as ours

    _, learner_cfg, _, _, batch = default_job_batch(args.sequences, ["learner.micro_batch_size=16", *args.overrides])
    torch.set_num_threads(learner_cfg.threads)
    micro = [seqs for mini in batch for seqs in mini.micro_batches]
    model = AutoModelForCausalLM.from_pretrained(learner_cfg.model_path, dtype=getattr(torch, learner_cfg.dtype), attn_implementation="sdpa")
    model.train()
    autocast = learner_cfg.train_dtype == "bfloat16"

    with tempfile.TemporaryDirectory() as tmp:
        versions = {"ours": ours, "theirs": forward_at(args.against, Path(tmp))}
    # each version's own layout of the same micro-batches, collated once, outside the timing
    collated = {name: [module.collate(seqs, 0, torch.device("cpu")) for seqs in micro] for name, module in versions.items()}

    def step(name: str) -> float:
        module = versions[name]
        if hasattr(module, "_segment_attention"):  # both may register the same attention name: the one timed holds it
            AttentionInterface.register(module.SEGMENTED, module._segment_attention)
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        for mb in collated[name]:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logp, _ = module.response_logprobs(model, mb, 1.0, learner_cfg.share_prompts, learner_cfg.pack_responses, learner_cfg.head_chunk)
            (-(logp * mb.mask * mb.advantages[:, None]).sum() / mb.mask.sum()).backward()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in versions}
    for name in versions:
        step(name)  # warm-up: first-call allocations
    for r in range(args.repeats):
        for name in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
            times[name].append(step(name))
    padding = {name: ours.padding_share([module.positions(mb, learner_cfg.pack_responses) for mb in collated[name]]) for name, module in versions.items()}

    report = {"against": args.against, "micro_batch_sizes": [len(m) for m in micro], "packed": learner_cfg.pack_responses,
              "seconds": {k: statistics.median(v) for k, v in times.items()}, "all_seconds": times, "padding_share": padding}
    report["ours_over_theirs"] = report["seconds"]["ours"] / report["seconds"]["theirs"]
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
