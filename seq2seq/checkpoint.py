"""One self-contained model file: config, tokenizer model(s) and weights (and, for resuming, training state).

Everything inside is a tensor or a plain value (dict, list, str, bytes, int, float, bool, None), so
the file loads with `torch.load(weights_only=True)`: opening a model never runs code from it.
Files are written atomically, so a crash mid-save leaves the previous file as it was. The weights carry
a CRC-32, checked on load: bytes damaged inside a tensor would otherwise load as silent NaN or wrong
weights. Weights that are not all finite are refused too (training never saves them).
"""

from __future__ import annotations

import pickle
import zipfile
import zlib
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import torch

from seq2seq import __version__
from seq2seq.config import Config, ModelConfig, from_dict, to_dict
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.language_model import LanguageModel
from seq2seq.model import Seq2Seq
from seq2seq.textio import atomic_write
from seq2seq.tokenizer import Tokenizer, Tokenizers

FORMAT = "seq2seq-checkpoint"
FORMAT_VERSION = 1


TrainedModel = Seq2Seq | LanguageModel


class Checkpoint(NamedTuple):
    config: Config
    tokenizers: Tokenizers
    model: TrainedModel
    step: int
    info: dict[str, Any]       # plain facts about the run: validation scores, versions, ...
    training: dict[str, Any]   # what resuming needs (optimizer, data position, RNG); empty if absent


def model_class(settings: ModelConfig) -> type[Seq2Seq] | type[LanguageModel]:
    """The model the settings describe: a translation model, or a language model (model.language_model)."""
    return LanguageModel if settings.language_model else Seq2Seq


def build_model(config: Config, tokenizers: Tokenizers) -> TrainedModel:
    return model_class(config.model).from_config(config.model, tokenizers.src.vocab_size, tokenizers.tgt.vocab_size)


def weights_checksum(state: dict[str, torch.Tensor]) -> int:
    """CRC-32 of every weight's name and bytes, in name order (about 25 ms for 50 MB)."""
    crc = 0
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        crc = zlib.crc32(name.encode(), crc)
        if tensor.numel():
            crc = zlib.crc32(tensor.view(torch.uint8).numpy(), crc)
    return crc


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    """Whether every weight is finite; a tensor's sum is checked first, a cheap test that finite weights pass."""
    return all(bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())
               for tensor in state.values() if tensor.is_floating_point())


def save(
    path: str | Path, *, config: Config, tokenizers: Tokenizers, model: TrainedModel, step: int,
    info: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically; a failed write (a full disk) is a DataError and the old file stays whole."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": to_dict(config),
        "tokenizers": {"src": tokenizers.src.model_proto, "tgt": None if tokenizers.joint else tokenizers.tgt.model_proto},
        "model": model.state_dict(),
        "weights_crc32": weights_checksum(model.state_dict()),
        "step": step,
        "info": {"seq2seq": __version__, "torch": version("torch"), **(info or {})},
        "training": training or {},
    }
    with atomic_write(path, binary=True) as file:
        torch.save(payload, file)


def load(path: str | Path) -> Checkpoint:
    """Load a checkpoint without executing anything in it; every failure is one clear CheckpointError."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give the model file inside it (best.pt or last.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        # `save` always writes torch's zip format; anything else (a text file, a truncated file) would reach
        # torch's legacy unpickler, whose errors (KeyError, "weights only load failed") say nothing useful.
        raise CheckpointError(f"{path}: not a seq2seq checkpoint (not a PyTorch zip archive: another kind of file, or truncated)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: it holds objects other than weights and plain values, which could run code when loaded"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as error:
        raise CheckpointError(f"{path}: not a readable seq2seq checkpoint (truncated or corrupt: {_first_line(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a seq2seq checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('format_version')} is not supported "
            f"(this seq2seq reads version {FORMAT_VERSION})"
        )
    try:
        loaded = _unpack(payload)
    except ConfigError as error:
        raise CheckpointError(f"{path}: its config is invalid ({error})") from None
    except (KeyError, TypeError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: incomplete or damaged checkpoint ({_first_line(error)})") from None
    if "weights_crc32" in payload and weights_checksum(payload["model"]) != payload["weights_crc32"]:  # older files have none
        raise CheckpointError(f"{path}: its weights do not match the checksum saved with them: the file is damaged "
                              "(a disk or copy error); use another copy")
    if not _all_finite(payload["model"]):
        raise CheckpointError(f"{path}: holds NaN or infinite weights, which seq2seq never saves: the file is damaged")
    return loaded


def describe(path: str | Path, loaded: Checkpoint) -> dict[str, Any]:
    """What a model file holds, as plain values (`seq2seq info --json`, the server's GET /models): its own record, as saved."""
    tokenizers = loaded.tokenizers
    return {
        "model": str(path),
        "step": loaded.step,
        "parameters": sum(param.numel() for param in loaded.model.parameters()),
        "vocabulary": {"source": tokenizers.src.vocab_size, "target": tokenizers.tgt.vocab_size, "joint": tokenizers.joint,
                       "byte_fallback": tokenizers.src.byte_fallback and tokenizers.tgt.byte_fallback},
        "training_state": bool(loaded.training),
        "info": loaded.info,
        "config": to_dict(loaded.config),
    }


def _first_line(error: BaseException) -> str:
    """torch's messages can run over many lines; the user gets one."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _unpack(payload: dict[str, Any]) -> Checkpoint:
    config = from_dict(payload["config"])
    src = Tokenizer(payload["tokenizers"]["src"])
    tgt = src if payload["tokenizers"]["tgt"] is None else Tokenizer(payload["tokenizers"]["tgt"])
    tokenizers = Tokenizers(src, tgt)
    model = model_class(config.model).from_state(config.model, src.vocab_size, tgt.vocab_size, payload["model"])
    model.eval()
    return Checkpoint(config, tokenizers, model, payload["step"], payload["info"], payload["training"])
