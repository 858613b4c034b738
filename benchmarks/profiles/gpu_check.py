"""The GPU paths in one command: the learner's forward and backward, the `hf` rollout engine and the
V0 value backend on an accelerator, with a tiny model and a SmolLM2-135M-shaped one.

    # on this box, once: the bundle the device machine needs (it has torch and transformers only)
    make gpu-bundle
    # on the device machine (see docs/benchmarks.md, "GPU paths"), under 8 minutes:
    PYTHONPATH=.gpu_bundle/site:. python -m benchmarks.profiles.gpu_check --device cuda --bundle .gpu_bundle --out $OUT/gpu_check.json
    # the same code on CPU, as the test tests/integration/test_gpu_check.py runs it:
    .venv/bin/python -m benchmarks.profiles.gpu_check --device cpu --models tiny --quick

No weights travel: the device machine reaches no model hub and the carried tree holds 64 MiB, so
each model is built there with random weights from a config (the tests' tiny Llama, and SmolLM2-135M's
own config.json and tokenizer from the bundle). Speed and memory depend on the shapes, not the
values. Per model, printed as JSON (and written to --out):

- `learner`: `rlvr.learner.forward.response_logprobs` (the learner's forward) on a batch shaped like the
  default job's (8 prompts x 4 responses, prompts of 120-200 tokens, responses of 8-64), float32
  weights, SDPA attention: the largest |Δ log-prob| of the shared-prompt and packed paths against
  the per-sequence one (they compute the same numbers), then forward + backward seconds, tokens/s
  and peak memory for each path, in float32 and under bf16 autocast (`model.train_dtype=bfloat16`).
- `engine_hf`: `rlvr.rollout.hf_engine.HFEngine` (the engine takes CUDA whenever it is present) sampling 8
  prompts x n=4 x up to 64 tokens: seconds, new tokens/s, peak memory, every log-prob finite.
- `weight_share` (once): the `ipc` weight sync's two ends, a 64 MB bucket shared by one process and
  opened and summed by another (CUDA IPC on a GPU).
- `value_v0` (once): V0's backbone (Qwen3-Embedding-0.6B's shape with --device cuda, tiny on CPU)
  and adapter at the published dimensions encoding 128 prompts, and, where the `tabpfn` package is
  installed, the whole `V0ValueModel` (context of 64, prediction of 64 more).

A part that fails is recorded with its error and the others still run: the first GPU run is the
first time any of these paths meets CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.common import OUT, ROOT, write_report

TEMPERATURE = 0.7
SMOLLM2_SHAPED = "smollm2-135m-shaped"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float | None]:
    """(median seconds over `repeats` calls after one warm-up, peak accelerator MB)."""
    fn()
    reset_peak(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_mb(device)


def attempt(name: str, fn) -> dict:
    """Run one part; a failure becomes its record (with the traceback's last lines), not the run's end."""
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 (every failure of a first GPU run is a finding to record)
        out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc().splitlines()[-6:]}
        print(f"[gpu_check] {name} failed: {out['error']}", file=sys.stderr)
    out["seconds_total"] = round(time.perf_counter() - start, 2)
    print(f"[gpu_check] {name} done in {out['seconds_total']} s", file=sys.stderr)
    return out


# -- models ------------------------------------------------------------------------------------
def build_models(names: list[str], bundle: Path | None, work: Path) -> dict[str, Path]:
    """Model folders with random weights: `tiny` (the tests' Llama) and SmolLM2-135M's shape."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rlvr.models import build_tiny_model

    folders = {}
    for name in names:
        if name == "tiny":
            folders[name] = build_tiny_model(work / "tiny")
        elif name == SMOLLM2_SHAPED:
            src = (bundle or Path("/nonexistent")) / SMOLLM2_SHAPED
            if not (src / "config.json").is_file():
                raise FileNotFoundError(f"{src}/config.json: write the bundle first (make gpu-bundle) and pass --bundle")
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32)
            model.save_pretrained(work / name)
            AutoTokenizer.from_pretrained(src).save_pretrained(work / name)
            folders[name] = work / name
        else:
            raise ValueError(f"unknown model {name!r}: tiny or {SMOLLM2_SHAPED}")
    return folders


def write_bundle(out: Path) -> None:
    """SmolLM2-135M's config and tokenizer (no weights, a few MB) for the device machine."""
    from rlvr.models import resolve_model_path

    src = Path(resolve_model_path("smollm2-135m"))
    dst = out / SMOLLM2_SHAPED
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf")):
            shutil.copy2(f, dst / f.name)
    print(json.dumps({"bundle": str(dst), "files": sorted(p.name for p in dst.iterdir())}))


# -- the parts ---------------------------------------------------------------------------------
def default_job_shaped(vocab: int, prompts: int = 8, n: int = 4, seed: int = 0):
    """Trajectories shaped like the default job's batch, with ±1 advantages."""
    from rlvr.types import Trajectory

    rng = random.Random(seed)
    out = []
    for _ in range(prompts):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(120, 200))]
        out += [Trajectory(prompt, [rng.randrange(3, vocab) for _ in range(rng.randint(8, 64))], advantage=rng.choice([-1.0, 1.0]))
                for _ in range(n)]
    return out


def learner_part(folder: Path, device: torch.device, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM

    from rlvr.learner.forward import collate, response_logprobs

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").to(device)
    model.train()
    seqs = default_job_shaped(model.config.vocab_size)
    mb = collate(seqs, 0, device)
    paths = {"shared": {"share_prompts": True}, "packed": {"share_prompts": True, "pack_responses": True},
             "per_sequence": {"share_prompts": False}}
    with torch.no_grad():
        logps = {path: response_logprobs(model, mb, TEMPERATURE, **kw)[0] for path, kw in paths.items()}
    out = {"sequences": len(seqs), "prompt_tokens": int(mb.prompt_mask.sum()), "response_tokens": int(mb.mask.sum())}
    for path in ("shared", "packed"):
        out[f"max_abs_logprob_diff_{path}_vs_per_sequence"] = float(((logps[path] - logps["per_sequence"]).abs() * mb.mask).max())
    tokens = out["prompt_tokens"] + out["response_tokens"]
    for precision in ("float32", "bf16_autocast"):
        for path, kw in paths.items():
            def step():
                model.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision != "float32"):
                    logp, _ = response_logprobs(model, mb, TEMPERATURE, **kw)
                loss = -(logp.float() * mb.mask * mb.advantages[:, None]).sum() / mb.mask.sum()
                loss.backward()

            seconds, peak = timed(step, device, repeats)
            out[f"{precision}/{path}"] = {"fwd_bwd_s": seconds, "tokens_per_s": tokens / seconds, "peak_mb": peak}
    return out


def engine_part(folder: Path, device: torch.device, quick: bool) -> dict:
    from rlvr.rollout.engines import EngineConfig, SamplingConfig
    from rlvr.rollout.hf_engine import HFEngine
    from rlvr.types import GenerationRequest

    dtype = "bfloat16" if device.type == "cuda" else "float32"
    engine = HFEngine(EngineConfig(backend="hf", model_path=str(folder), dtype=dtype, max_model_len=1024, kv_cache_gb=0.0, seed=0,
                                   max_num_seqs=64, block_size=32,  # vLLM-only, unused by HF
                                   threads=torch.get_num_threads(), tensor_parallel=1, sleep_mode=False))
    vocab = engine.model.config.vocab_size
    rng = random.Random(1)
    requests = [GenerationRequest(i, [rng.randrange(3, vocab) for _ in range(rng.randint(120, 200))], n=4) for i in range(2 if quick else 8)]
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=16 if quick else 64)
    torch.manual_seed(0)
    reset_peak(torch.device(engine.device))
    synchronize(torch.device(engine.device))
    start = time.perf_counter()
    groups = engine.generate(requests, sampling)
    synchronize(torch.device(engine.device))
    seconds = time.perf_counter() - start
    samples = [s for g in groups for s in g]
    new_tokens = sum(len(s["response_ids"]) for s in samples)
    finite = all(torch.isfinite(torch.tensor(s["logprobs"])).all() and len(s["logprobs"]) == len(s["response_ids"]) for s in samples)
    return {"engine_device": engine.device, "dtype": dtype, "samples": len(samples), "new_tokens": new_tokens, "seconds": seconds,
            "new_tokens_per_s": new_tokens / seconds, "peak_mb": peak_mb(torch.device(engine.device)), "logprobs_finite": bool(finite)}


def value_part(tokenizer_dir: Path, device: torch.device, work: Path, quick: bool) -> dict:
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from rlvr.value.v0 import DynamicQueryAdapter, V0Encoder, write_random_v0

    published = device.type == "cuda"
    rng = random.Random(2)
    prompts = [f"Problem {i}: what is {rng.randint(10, 999)} + {rng.randint(10, 999)}? " + "Explain each step. " * rng.randint(2, 12)
               for i in range(32 if quick else 128)]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = (dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128)
             if published else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    torch.manual_seed(0)
    encoder = V0Encoder(Qwen3Model(Qwen3Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **shape)),
                        DynamicQueryAdapter(shape["hidden_size"])).to(device).eval()
    batch = tok(prompts, padding=True, truncation=True, max_length=2048, return_tensors="pt").to(device)

    def encode():
        with torch.no_grad():
            return encoder(batch["input_ids"], batch["attention_mask"])

    seconds, peak = timed(encode, device, 2)
    out = {"backbone": "Qwen3-Embedding-0.6B shape" if published else "tiny", "prompts": len(prompts),
           "encode_s": seconds, "prompts_per_s": len(prompts) / seconds, "encode_peak_mb": peak,
           "embedding_finite": bool(torch.isfinite(encode()).all())}
    encoder.to("cpu")  # the accelerator's memory for the whole value model next
    reset_peak(device)
    try:
        import tabpfn  # noqa: F401
    except ImportError:
        out["v0_value_model"] = "skipped: the tabpfn package (V0's head) is not installed here"
        return out
    from rlvr.value.v0 import V0ValueModel

    files = write_random_v0(work / "v0", tokenizer_dir, published_size=published)
    model = V0ValueModel(**files, context_size=64, prior_map="none")
    half = len(prompts) // 2
    start = time.perf_counter()
    model.add_context(prompts[:half], [rng.random() for _ in range(half)])
    prior, unc = model.predict(prompts[half:])
    out["v0_value_model"] = {"device": model.device, "context_and_predict_s": time.perf_counter() - start,
                             "prior_in_range": bool(((prior >= 0) & (prior <= 1)).all()), "predictions": len(prior)}
    return out


SHARE_RECEIVER = """
import sys, torch
from rlvr.weight_sync.ipc import open_shared
bucket = open_shared(sys.stdin.buffer.read())
print(bucket.device.type, int(bucket.to(torch.int64).sum()))
"""


def weight_share_part(device: torch.device) -> dict:
    """`cluster.weight_sync=ipc`'s two ends (`rlvr.weight_sync.ipc`): a packed 64 MB bucket on the device,
    opened by another process (CUDA IPC on a GPU, a /dev/shm file on CPU) and summed there."""
    import subprocess

    from rlvr.weight_sync import ipc

    flat = torch.randint(0, 256, (64 * 2**20,), dtype=torch.uint8, device=device)
    start = time.perf_counter()
    bucket = ipc.share(flat)
    try:
        out = subprocess.run([sys.executable, "-c", SHARE_RECEIVER], input=bucket.handle, capture_output=True, timeout=180,
                             env={**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"})
    finally:
        ipc.release([bucket])
    seconds = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(out.stderr.decode()[-800:])
    opened_on, total = out.stdout.decode().split()
    return {"bytes": flat.numel(), "opened_on": opened_on, "sum_equal": total == str(int(flat.to(torch.int64).sum())),
            "seconds_share_open_release": round(seconds, 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--models", default=f"tiny,{SMOLLM2_SHAPED}")
    ap.add_argument("--bundle", type=Path, default=ROOT / ".gpu_bundle")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller engine and value parts (the CPU test)")
    ap.add_argument("--skip-value", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT / "gpu_check.json")
    ap.add_argument("--write-bundle", type=Path, help="write SmolLM2-135M's config and tokenizer here, then stop")
    args = ap.parse_args(argv)
    if args.write_bundle:
        write_bundle(args.write_bundle)
        return {}
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; use --device cpu")
    device = torch.device(args.device)
    start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "models": {}}
    try:
        import transformers

        report["transformers"] = transformers.__version__
        import flash_attn  # noqa: F401

        report["flash_attn"] = "installed; not used: the packed path runs torch SDPA a prompt at a time, where flash_attn_varlen would take one call"
    except ImportError:
        report.setdefault("flash_attn", "not installed")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        names = [m for m in args.models.split(",") if m]
        folders = {}
        for name in names:
            built = attempt(f"{name}: build", lambda name=name: {"folder": build_models([name], args.bundle, work)[name]})
            if "folder" in built:
                folders[name] = built.pop("folder")
            report["models"][name] = {"build": built}
        for name, folder in folders.items():
            report["models"][name]["learner"] = attempt(f"{name}: learner", lambda: learner_part(folder, device, args.repeats))
            report["models"][name]["engine_hf"] = attempt(f"{name}: hf engine", lambda: engine_part(folder, device, args.quick))
        report["weight_share"] = attempt("weight share (ipc)", lambda: weight_share_part(device))
        if not args.skip_value and "tiny" in folders:
            report["value_v0"] = attempt("value v0", lambda: value_part(folders["tiny"], device, work, args.quick))
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
