import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from policyfresh.quality.golden import load_golden
from policyfresh.serve import query_encoder
from policyfresh.serve.query_encoder import (
    MIN_COSINE,
    ExportError,
    OnnxEncoder,
    encoder_dir,
    export_onnx,
    load_onnx,
)
from tests.conftest import BUNDLED_GOLDEN


@pytest.fixture
def own_cache(settings, tmp_path):
    """Settings whose model cache is empty, so this test exports for itself."""
    return dataclasses.replace(settings, model_cache_dir=tmp_path / "models")


def test_the_export_matches_torch_on_questions_it_was_not_verified_with(own_cache, embedder):
    export = export_onnx(own_cache, embedder)
    assert export.exported and export.min_cosine >= MIN_COSINE
    assert export.directory == encoder_dir(own_cache, embedder.model_id)
    questions = [c.user_question for c in load_golden(BUNDLED_GOLDEN).cases]
    onnx = load_onnx(own_cache, embedder)
    assert isinstance(onnx, OnnxEncoder) and onnx.model_id == embedder.model_id
    cosines = np.sum(onnx.encode(questions) * embedder.encode(questions), axis=1)
    assert len(questions) > 50 and cosines.min() >= MIN_COSINE
    again = export_onnx(own_cache, embedder)
    assert not again.exported and again.directory == export.directory


def test_without_an_export_or_with_a_broken_one_the_torch_model_serves(own_cache, embedder):
    assert query_encoder.query_encoder(own_cache, embedder) is embedder
    export = export_onnx(own_cache, embedder)
    (export.directory / "model.onnx").write_bytes(b"not a model")
    assert query_encoder.query_encoder(own_cache, embedder) is embedder
    assert not export.directory.exists(), "a broken export is removed, to be made again"
    assert export_onnx(own_cache, embedder).exported


def test_an_export_that_differs_from_torch_is_never_trusted(own_cache, embedder, monkeypatch):
    monkeypatch.setattr(query_encoder, "MIN_COSINE", 1.5)  # no export can reach it
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(own_cache, embedder)
    assert load_onnx(own_cache, embedder) is None
    left = [p.name for p in own_cache.model_cache.iterdir() if p.suffix != ".lock"]
    assert left == [f".{embedder.model_id}.refused"], "nothing half-made is left behind"


def test_a_refused_export_is_not_tried_again_until_its_verdict_is_deleted(
    own_cache, embedder, monkeypatch
):
    monkeypatch.setattr(query_encoder, "MIN_COSINE", 1.5)
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(own_cache, embedder)
    monkeypatch.setattr(query_encoder, "_export_once", lambda *_: pytest.fail("tried again"))
    refused = query_encoder.try_export(own_cache, embedder)
    assert not refused.exported and "differs from torch" in refused.problem
    assert "to try again" in refused.problem
    monkeypatch.undo()
    (own_cache.model_cache / f".{embedder.model_id}.refused").unlink()
    assert export_onnx(own_cache, embedder).exported


def test_encoding_with_the_export_imports_no_torch(settings, embedder):
    export_onnx(settings, embedder)
    probe = (
        "import sys; from policyfresh.store.config import Settings; "
        "from policyfresh.index.embedding import Embedder; "
        "from policyfresh.serve.query_encoder import load_onnx; "
        "print(load_onnx(Settings.load(), Embedder()).encode(['a question']).shape, "
        "'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(1,", "384)", "False"]


EXPORTER = """
import sys
from policyfresh.store.config import Settings
from policyfresh.index.embedding import Embedder
from policyfresh.serve.query_encoder import export_onnx
print(export_onnx(Settings.load(), Embedder()).exported)
"""


def test_two_processes_sharing_a_model_cache_export_once(settings, tmp_path):
    """Two machines' refreshes may share `POLICYFRESH_MODEL_CACHE`: one exports, the other waits
    and finds the export (they raced on one staging folder and one of them failed)."""
    env = {"POLICYFRESH_MODEL_CACHE": str(tmp_path / "shared-models")}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", EXPORTER],
            env={**os.environ, **env, "POLICYFRESH_HOME": str(tmp_path / home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for home in ("a", "b")
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sorted(out.strip() for out, _ in outputs) == ["False", "True"]
