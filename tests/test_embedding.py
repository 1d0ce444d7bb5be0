import json
import os
import shutil

import numpy as np

from policyfresh.index.embedding import MODEL_NAME, Embedder, _load_model


def test_model_id_names_the_model_and_hashes_its_files(tmp_path):
    packaged = Embedder()
    assert packaged.model_id.startswith(f"{MODEL_NAME}@") and len(packaged.model_id) > 20
    assert Embedder().model_id == packaged.model_id
    copy = tmp_path / "model"
    shutil.copytree(packaged.path, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    (copy / "model.safetensors").symlink_to(packaged.path / "model.safetensors")
    assert Embedder(copy).model_id == packaged.model_id
    config = (copy / "config.json").read_text().replace('"hidden_act"', '"note": "x", "hidden_act"')
    (copy / "config.json").write_text(config)
    assert Embedder(copy).model_id != packaged.model_id


def test_real_model_embeds_offline_normalized_and_meaningfully(embedder):
    vectors = embedder.encode(
        [
            "What is the overdraft fee?",
            "fee charged when the account is overdrawn",
            "parental leave",
        ]
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert embedder.max_tokens == 256 and embedder.dimensions == 384


def test_the_model_loads_once_per_process(embedder):
    embedder.encode(["a"])
    Embedder().encode(["b"])
    assert _load_model.cache_info().currsize == 1


def test_vectors_come_back_in_input_order(embedder):
    texts = ["short", "a much longer sentence about overdraft fees and their caps", "mid length"]
    forward = embedder.encode(texts)
    backward = embedder.encode(texts[::-1])
    assert np.allclose(forward, backward[::-1], atol=1e-5)
    assert np.allclose(forward[1], embedder.encode([texts[1]])[0], atol=1e-5)


def test_output_size_follows_a_dense_layer(tmp_path):
    packaged = Embedder()
    copy = tmp_path / "model"
    shutil.copytree(packaged.path, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    modules = json.loads((copy / "modules.json").read_text())
    modules.append(
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (copy / "modules.json").write_text(json.dumps(modules))
    (copy / "3_Dense").mkdir()
    (copy / "3_Dense" / "config.json").write_text(
        json.dumps({"in_features": 384, "out_features": 128})
    )
    assert packaged.dimensions == 384 and Embedder(copy).dimensions == 128
