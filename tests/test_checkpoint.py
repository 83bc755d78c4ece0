"""A model file is self-contained, loads without running code, and every bad file is one CheckpointError."""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
from pathlib import Path

import pytest
import torch

from seq2seq import checkpoint
from seq2seq.config import Config, ModelConfig, SearchConfig, TokenizerConfig
from seq2seq.errors import CheckpointError
from seq2seq.tokenizer import Tokenizers, train_tokenizers
from seq2seq.translation import translate

CONFIG = Config(
    tokenizer=TokenizerConfig(vocab_size=80),
    model=ModelConfig(emb_dim=16, hidden_dim=32, layers=2, attention="luong-general", layer_dropout=0.1),
)


class CreatesAFile:
    """Unpickling this calls open(path, "w"): a stand-in for a model file that runs code when loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def trained_like_model(config: Config, tokenizers: Tokenizers, seed: int = 0):
    """A model with seeded, wide weights, so its translations are far from ties."""
    torch.manual_seed(seed)
    model = checkpoint.build_model(config, tokenizers)
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.5, 0.5)
    return model.eval()


def all_translations(model, tokenizers: Tokenizers, lines: list[str], search: SearchConfig) -> list[list[tuple]]:
    found = translate(model, tokenizers, lines, search, nbest=search.beam_size)
    return [[(t.text, t.tokens, round(t.score, 4)) for t in nbest] for nbest in found]


@pytest.fixture
def saved(tmp_path: Path, tokenizers: Tokenizers):
    model = trained_like_model(CONFIG, tokenizers)
    path = tmp_path / "model.pt"
    checkpoint.save(path, config=CONFIG, tokenizers=tokenizers, model=model, step=123, info={"valid_bleu": 1.5})
    return path, model


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_loaded_model_translates_exactly_like_the_saved_one(saved, tokenizers: Tokenizers, corpus, beam_size: int) -> None:
    path, model = saved
    lines = corpus[0][:12] + [""]
    search = SearchConfig(beam_size=beam_size)

    loaded = checkpoint.load(path)

    before = all_translations(model, tokenizers, lines, search)
    assert all_translations(loaded.model, loaded.tokenizers, lines, search) == before


def test_a_loaded_checkpoint_carries_config_step_info_and_weights(saved, tokenizers: Tokenizers) -> None:
    path, model = saved

    loaded = checkpoint.load(path)

    assert loaded.config == CONFIG
    assert loaded.step == 123
    assert loaded.info["valid_bleu"] == 1.5 and "torch" in loaded.info
    assert loaded.training == {}
    assert loaded.tokenizers.joint
    assert loaded.tokenizers.src.model_proto == tokenizers.src.model_proto
    assert not loaded.model.training, "a loaded model is ready to translate (eval mode)"
    saved_weights, loaded_weights = model.state_dict(), loaded.model.state_dict()
    assert saved_weights.keys() == loaded_weights.keys()
    assert all(torch.equal(saved_weights[name], loaded_weights[name]) for name in saved_weights)


def test_loading_draws_no_random_weights_and_leaves_none_unset(saved) -> None:
    """The model is built without initialisation (the weights come from the file), which a cold start would pay for."""
    path, _ = saved
    generator_state = torch.random.get_rng_state()

    model = checkpoint.load(path).model

    assert torch.equal(torch.random.get_rng_state(), generator_state)
    assert {(param.device.type, param.dtype) for param in model.parameters()} == {("cpu", torch.float32)}


def test_a_tied_output_layer_is_still_one_parameter_after_loading(tmp_path: Path, tokenizers: Tokenizers) -> None:
    """Two copies would be trained apart on resuming, and the optimizer would hold the weights twice."""
    config = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, emb_dim=32, tie_output=True))
    model = trained_like_model(config, tokenizers)
    path = tmp_path / "tied.pt"
    checkpoint.save(path, config=config, tokenizers=tokenizers, model=model, step=1)

    loaded = checkpoint.load(path).model

    assert loaded.out.weight is loaded.tgt_embed.weight
    assert len(list(loaded.parameters())) == len(list(model.parameters()))
    assert torch.equal(loaded.out.weight, model.out.weight)


def test_separate_tokenizers_travel_separately(tmp_path: Path, corpus) -> None:
    config = dataclasses.replace(CONFIG, tokenizer=TokenizerConfig(vocab_size=60, joint=False))
    tokenizers = train_tokenizers(corpus[0], corpus[1], config.tokenizer)
    path = tmp_path / "model.pt"
    checkpoint.save(path, config=config, tokenizers=tokenizers, model=trained_like_model(config, tokenizers), step=1)

    loaded = checkpoint.load(path).tokenizers

    assert not loaded.joint
    assert loaded.src.model_proto == tokenizers.src.model_proto
    assert loaded.tgt.model_proto == tokenizers.tgt.model_proto


def test_the_file_holds_only_weights_and_plain_values(saved) -> None:
    path, _ = saved
    payload = torch.load(path, weights_only=True)  # what `load` does; raises if anything else were inside
    assert payload["format"] == checkpoint.FORMAT


def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "created-by-unpickling"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "payload": CreatesAFile(target)}, path)

    # the file is live: a plain unpickler would create the target
    torch.load(path, weights_only=False)["payload"].close()
    assert target.exists()
    target.unlink()

    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(path)
    assert not target.exists()


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_a_truncated_file_is_a_checkpoint_error(saved, tmp_path: Path, keep: float) -> None:
    path, _ = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * keep)])

    with pytest.raises(CheckpointError, match=re.escape(str(cut))):
        checkpoint.load(cut)


def test_a_file_missing_its_last_byte_is_a_checkpoint_error(saved, tmp_path: Path) -> None:
    path, _ = saved
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CheckpointError):
        checkpoint.load(cut)


@pytest.mark.parametrize(
    "content",
    [b"hello world\nthis is a text file\n", b"abc\n", b"x", b"{}", b"0.5 1 2\n", b"\x89PNG\r\n\x1a\n\x00\x00"],
    ids=["text", "short-text", "one-letter", "json", "numbers", "png-header"],
)
def test_a_file_that_is_not_a_checkpoint_is_a_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.pt"
    path.write_bytes(content)

    with pytest.raises(CheckpointError, match="not a seq2seq checkpoint"):
        checkpoint.load(path)


def test_a_torch_file_of_something_else_is_not_a_seq2seq_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a seq2seq checkpoint"):
        checkpoint.load(path)


def test_a_checkpoint_whose_pickle_is_corrupt_is_a_checkpoint_error(saved, tmp_path: Path) -> None:
    path, _ = saved
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("/data.pkl"):
                data = b"h\x65."  # a memo lookup that was never stored
            target.writestr(item, data)

    with pytest.raises(CheckpointError, match="not a readable seq2seq checkpoint"):
        checkpoint.load(broken)


def _resaved(path: Path, copy: Path, change) -> Path:
    """`path`'s payload, changed in place by `change`, saved again as `copy`."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, copy)
    return copy


def _without_out_bias(weights: dict) -> dict:
    return {name: tensor for name, tensor in weights.items() if name != "out.bias"}


@pytest.mark.parametrize(
    "damage",
    [_without_out_bias, lambda weights: {**weights, "out.bias": torch.zeros(3)}, lambda weights: "weights"],
    ids=["a-weight-missing", "a-weight-misshapen", "not-a-dict"],
)
def test_damaged_weights_are_a_checkpoint_error_naming_the_file(saved, tmp_path: Path, damage) -> None:
    path, _ = saved
    damaged = _resaved(path, tmp_path / "damaged.pt", lambda payload: payload.update(model=damage(payload["model"])))

    with pytest.raises(CheckpointError, match=f"{re.escape(str(damaged))}: incomplete or damaged checkpoint"):
        checkpoint.load(damaged)


def test_another_format_version_is_refused_naming_the_version(saved, tmp_path: Path) -> None:
    path, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = checkpoint.FORMAT_VERSION + 1
    newer = tmp_path / "newer.pt"
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    newer.write_bytes(buffer.getvalue())

    with pytest.raises(CheckpointError, match=rf"version {checkpoint.FORMAT_VERSION + 1}"):
        checkpoint.load(newer)


def test_a_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model file"):
        checkpoint.load(tmp_path / "absent.pt")


def test_saving_over_a_checkpoint_replaces_it_whole(saved, tokenizers: Tokenizers) -> None:
    path, _ = saved
    other = trained_like_model(CONFIG, tokenizers, seed=1)
    checkpoint.save(path, config=CONFIG, tokenizers=tokenizers, model=other, step=124)

    loaded = checkpoint.load(path)

    assert loaded.step == 124
    assert torch.equal(loaded.model.out.weight, other.out.weight)
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file is left behind"


def test_bytes_damaged_inside_the_weights_are_refused_by_the_checksum(saved, tmp_path: Path) -> None:
    """The zip and its pickle stay readable; only a tensor's bytes change, which would load as other weights."""
    path, _ = saved
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(damaged, "w") as target:
        largest = max((item for item in source.infolist() if "/data/" in item.filename), key=lambda item: item.file_size)
        for item in source.infolist():
            data = source.read(item)
            if item is largest:
                data = data[:100] + bytes(8) + data[108:]
            target.writestr(item, data)

    with pytest.raises(CheckpointError, match=f"^{re.escape(str(damaged))}: its weights do not match the checksum"):
        checkpoint.load(damaged)


def test_non_finite_weights_are_refused_even_with_a_matching_checksum(saved, tmp_path: Path) -> None:
    path, _ = saved

    def poison(payload: dict) -> None:
        payload["model"]["out.bias"][3] = float("nan")
        payload["weights_crc32"] = checkpoint.weights_checksum(payload["model"])

    crafted = _resaved(path, tmp_path / "nan.pt", poison)

    with pytest.raises(CheckpointError, match="holds NaN or infinite weights"):
        checkpoint.load(crafted)


def test_a_file_saved_before_checksums_still_loads(saved, tmp_path: Path) -> None:
    path, model = saved
    older = _resaved(path, tmp_path / "older.pt", lambda payload: payload.pop("weights_crc32"))
    assert torch.equal(checkpoint.load(older).model.out.bias, model.out.bias)


def _before_adaptation(payload: dict) -> None:
    """A config as saved before fine-tuning, accumulation, weight averaging and subword sampling existed."""
    for key in ("init_from", "accumulate", "ema_decay"):
        payload["config"]["train"].pop(key)
    payload["config"]["tokenizer"].pop("sampling_alpha")


def test_a_file_saved_before_the_adaptation_settings_loads_with_them_off(saved, tmp_path: Path) -> None:
    path, model = saved
    older = checkpoint.load(_resaved(path, tmp_path / "older.pt", _before_adaptation))
    assert (older.config.train.init_from, older.config.train.accumulate, older.config.train.ema_decay,
            older.config.tokenizer.sampling_alpha) == (None, 1, 0.0, 0.0)
    assert torch.equal(older.model.out.bias, model.out.bias)
