"""A light query encoder: the model exported once to ONNX and run with onnxruntime, so a search
from a cold shell needs neither torch nor sentence-transformers (seconds to import). An export
is trusted only once its vectors match the torch model's to a cosine of `MIN_COSINE`."""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
from filelock import FileLock
from tokenizers import Tokenizer

from policyfresh.index.embedding import Embedder
from policyfresh.store.config import Settings
from policyfresh.store.errors import PolicyfreshError

log = logging.getLogger(__name__)

MIN_COSINE = 0.9999
MODEL_FILE = "model.onnx"
VERIFIED_FILE = "verified.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Checked against torch before an export is trusted: short and long questions, odd characters,
# and a text past the token limit, so truncation must match too.
SAMPLES = (
    "What is the overdraft fee?",
    "How many days of annual leave can I carry over into next year?",
    "wire cut-off",
    "Who approves an exception to the sanctions screening policy, and how fast?",
    "Qu'est-ce que la politique de confidentialité? 123-45-6789 ☕",
    " ".join(["The travel card may be used for lodging, airfare and meals."] * 60),
)


def encoder_dir(settings: Settings, model_id: str) -> Path:
    """Where the export of one model lives: one folder per model id, so a new model is exported
    anew and an old export is never used for it."""
    return settings.model_cache / model_id


class OnnxEncoder:
    """The exported model: tokenized as sentence-transformers does, pooled and normalized inside
    the graph, so its output is the sentence embedding itself."""

    def __init__(self, directory: Path, model_id: str, max_tokens: int) -> None:
        self.directory = directory
        self._model_id = model_id
        self.max_tokens = max_tokens

    @property
    def model_id(self) -> str:
        return self._model_id

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        tokenizer.enable_truncation(self.max_tokens)
        tokenizer.enable_padding()
        return tokenizer

    @cached_property
    def _session(self):  # -> onnxruntime.InferenceSession; imported here, on first use
        return _session(self.directory / MODEL_FILE, optimized=True)

    def load(self) -> object:
        return self._session

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Normalized float32 vectors, as `Embedder.encode` gives."""
        out = []
        for start in range(0, len(texts), batch_size):
            encoded = self._tokenizer.encode_batch(texts[start : start + batch_size])
            feed = {
                "input_ids": [e.ids for e in encoded],
                "attention_mask": [e.attention_mask for e in encoded],
                "token_type_ids": [e.type_ids for e in encoded],
            }
            arrays = {name: np.asarray(feed[name], dtype=np.int64) for name in INPUTS}
            out.append(self._session.run(None, arrays)[0])
        if not out:
            return np.empty((0, 0), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


def load_onnx(settings: Settings, embedder: Embedder) -> OnnxEncoder | None:
    """The verified export of this model, ready to encode; None when there is none or it
    cannot be loaded (then the torch model serves and the export is made again)."""
    directory = encoder_dir(settings, embedder.model_id)
    if not (directory / VERIFIED_FILE).exists():
        return None
    encoder = OnnxEncoder(directory, embedder.model_id, embedder.max_tokens)
    try:
        encoder.load()
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        log.warning("cannot load the ONNX encoder in %s (%s); removing it", directory, exc)
        shutil.rmtree(directory, ignore_errors=True)
        return None
    return encoder


def query_encoder(settings: Settings, embedder: Embedder) -> OnnxEncoder | Embedder:
    """The light ONNX encoder of this model when a verified export exists, else the model."""
    return load_onnx(settings, embedder) or embedder


def prepared_encoder(settings: Settings, embedder: Embedder) -> OnnxEncoder | Embedder:
    """The ONNX encoder, exported first if there is none yet; the torch model only when the
    model cannot be exported. For a long-lived process, where the export's seconds pay off."""
    try_export(settings, embedder)
    return query_encoder(settings, embedder)


@dataclass(frozen=True)
class Export:
    directory: Path
    exported: bool  # False: a verified export was already there
    min_cosine: float
    seconds: float
    problem: str | None = None  # why the model could not be exported: searches use torch


class ExportError(PolicyfreshError):
    """The model could not be exported, or its export does not match torch."""


def export_onnx(settings: Settings, embedder: Embedder) -> Export:
    """Export the model to ONNX once per model id, verify it against torch on `SAMPLES`, and
    only then move it where `load_onnx` finds it. Processes sharing the model cache export
    one at a time: the next finds the export."""
    directory = encoder_dir(settings, embedder.model_id)
    directory.parent.mkdir(parents=True, exist_ok=True)
    refused = directory.with_name(f".{directory.name}.refused")
    with FileLock(directory.with_name(f".{directory.name}.lock")):
        if refused.exists():  # an export costs seconds: a model refused once is not retried
            raise ExportError(f"{refused.read_text().strip()} (delete {refused} to try again)")
        try:
            return _export_once(embedder, directory)
        except ExportError as exc:
            refused.write_text(f"{exc}\n")
            raise


def try_export(settings: Settings, embedder: Embedder) -> Export:
    """`export_onnx`, with a model that cannot be exported reported in `problem` rather than
    raised: searches then use torch."""
    try:
        return export_onnx(settings, embedder)
    except ExportError as exc:
        log.warning("%s; questions are encoded with torch", exc)
        directory = encoder_dir(settings, embedder.model_id)
        return Export(directory, False, float("nan"), 0.0, problem=str(exc))


def _export_once(embedder: Embedder, directory: Path) -> Export:
    started = time.perf_counter()
    verified = directory / VERIFIED_FILE
    if verified.exists():
        known = json.loads(verified.read_text())
        return Export(directory, False, known["min_cosine"], 0.0)
    staging = directory.with_name(f".{directory.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _export(embedder, staging / "traced.onnx")
        _session(staging / "traced.onnx", optimized=False, save_to=staging / MODEL_FILE)
        (staging / "traced.onnx").unlink()
        shutil.copy2(embedder.path / "tokenizer.json", staging / "tokenizer.json")
        candidate = OnnxEncoder(staging, embedder.model_id, embedder.max_tokens)
        expected, exported = embedder.encode(list(SAMPLES)), candidate.encode(list(SAMPLES))
        if exported.shape != expected.shape:
            raise ExportError(
                f"the ONNX export of {embedder.model_id} gives vectors of {exported.shape[1]} "
                f"numbers, the model {expected.shape[1]}"
            )
        cosines = np.sum(exported * expected, axis=1)
        min_cosine = float(cosines.min())
        if min_cosine < MIN_COSINE:
            raise ExportError(
                f"the ONNX export of {embedder.model_id} differs from torch: cosine "
                f"{min_cosine:.6f} < {MIN_COSINE}"
            )
        record = {
            "model_id": embedder.model_id,
            "min_cosine": min_cosine,
            "samples": len(SAMPLES),
            "verified_at": datetime.now(tz=UTC).isoformat(),
        }
        (staging / VERIFIED_FILE).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - started
    log.info("exported %s to %s in %.1fs (cosine >= %.6f)", embedder.model_id, directory,
             seconds, min_cosine)  # fmt: skip
    return Export(directory, True, min_cosine, seconds)


def _session(model: Path, optimized: bool, save_to: Path | None = None):
    """An onnxruntime session on the CPU. The graph is optimized once, when exported, and saved
    (`save_to`) for this machine, so a cold search does not spend a fifth of a second on it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are noise in every output
    if optimized:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_to:
        options.optimized_model_filepath = str(save_to)
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _export(embedder: Embedder, target: Path) -> None:
    """Trace the whole sentence-transformers pipeline (transformer, pooling, normalization)
    into one ONNX graph with a dynamic batch and sequence length."""
    import torch

    model = embedder.load()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            features = {"input_ids": input_ids, "attention_mask": attention_mask,
                        "token_type_ids": token_type_ids}  # fmt: skip
            return self.model(features)["sentence_embedding"]

    example = torch.ones((2, 8), dtype=torch.long)
    dynamic = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings are about code paths not taken
            torch.onnx.export(
                SentenceEmbedding().eval(),
                (example, example, torch.zeros_like(example)),
                str(target),
                input_names=list(INPUTS),
                output_names=["sentence_embedding"],
                dynamic_axes={**dynamic, "sentence_embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,  # the dynamo exporter needs onnxscript; the tracer does this well
            )
    except Exception as exc:  # torch raises many kinds here; the message says which
        raise ExportError(f"cannot export {embedder.model_id} to ONNX: {exc}") from exc
