"""Model folders: where built-in models live, and how a folder is built once and published whole."""

from pathlib import Path


def _write_model(tmp: Path) -> None:
    (tmp / "config.json").write_text("{}")
    (tmp / "model.safetensors").write_bytes(b"")


def test_publish_folder_makes_missing_parents(tmp_path):
    from rlvr.models import publish_folder

    out = tmp_path / "a" / "b" / "model"
    assert publish_folder(_write_model, out) == out and (out / "config.json").is_file()


def test_publish_folder_keeps_the_copy_of_a_process_that_finished_first(tmp_path):
    """Two processes building one model folder: the loser's rename fails and it uses the winner's copy."""
    from rlvr.models import publish_folder

    out = tmp_path / "model"

    def build_while_another_finishes(tmp: Path) -> None:
        _write_model(tmp)
        out.mkdir()
        (out / "config.json").write_text('{"winner": 1}')
        (out / "model.safetensors").write_bytes(b"")

    assert publish_folder(build_while_another_finishes, out) == out
    assert (out / "config.json").read_text() == '{"winner": 1}'
    assert not list(tmp_path.glob("model.tmp-*"))


def test_model_location_and_resolve_follow_the_cache_dir_the_env_and_the_home(tmp_path, monkeypatch, tiny_model):
    import shutil

    from rlvr.models import default_cache_dir, model_location, resolve_model_path

    assert model_location("tiny-random", tmp_path / "c") == (tmp_path / "c" / "models" / "tiny-random").resolve()
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert model_location("smollm2-135m") == (tmp_path / "env" / "models" / "smollm2-135m-instruct").resolve()
    shutil.copytree(tiny_model, tmp_path / "home" / "m")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_model_path("~/m") == str(tmp_path / "home" / "m")


def test_publish_folder_does_not_rebuild_a_folder_that_holds_a_config(tmp_path):
    """`smollm2-135m` is converted once (~20 s), not at every resolve (kills dropping the early return:
    the rebuilt copy was then thrown away when its rename failed, so only the time showed it)."""
    from rlvr.models import publish_folder

    out = tmp_path / "model"
    publish_folder(_write_model, out)

    def must_not_run(tmp):
        raise AssertionError("rebuilt a built folder")

    assert publish_folder(must_not_run, out) == out


def test_the_tiny_model_ties_its_head_to_its_embedding(tmp_path):
    """The LoRA tests' refusal of a tied head relies on it (kills tie_word_embeddings=True -> False, which the
    suite saw only once the cached model was rebuilt)."""
    from transformers import AutoModelForCausalLM

    from rlvr.models import build_tiny_model

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
