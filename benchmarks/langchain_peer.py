"""The peer of `benchmarks/refresh.py`: LangChain's indexing API (full cleanup, an in-memory
record manager and vector store) over the same pages with the same model and batch size, in a
process of its own so that its peak memory is its own. Prints its figures as JSON.

    .venv/bin/python benchmarks/langchain_peer.py PAGES EDITED_PAGE AFTER_FILE

Runs a full build, a no-op and one real edit (AFTER_FILE copied over PAGES/EDITED_PAGE).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.indexing import InMemoryRecordManager, index
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_text_splitters import MarkdownTextSplitter
from transformers import AutoTokenizer

from policyfresh.index.embedding import Embedder, default_model_path

BATCH_SIZE = 64  # as `Embedder.encode` and the plain `encode` of refresh.py


class SameModel(Embeddings):
    """The sentence-transformers model policyfresh embeds with, as LangChain embeddings."""

    def __init__(self) -> None:
        self.model = Embedder().load()
        self.texts = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts += len(texts)
        return self.model.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def documents(pages: Path, splitter: MarkdownTextSplitter) -> list[Document]:
    """Every page split to the model's limit, each piece with its page as source."""
    return splitter.split_documents(
        Document(page_content=path.read_text(encoding="utf-8"), metadata={"source": str(path)})
        for path in sorted(pages.rglob("*.md"))
    )


def timed_index(pages: Path, splitter, manager, store, model: SameModel) -> dict:
    """One `index` call in full cleanup mode, timed from reading the pages; its counts."""
    before, started = model.texts, time.perf_counter()
    counts = index(documents(pages, splitter), manager, store, cleanup="full",
                   source_id_key="source", batch_size=BATCH_SIZE, key_encoder="sha256")  # fmt: skip
    return {"seconds": round(time.perf_counter() - started, 2), "texts": model.texts - before,
            **counts}  # fmt: skip


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    pages, edited, after = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    model = SameModel()
    model.embed_query("warm up")
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    splitter = MarkdownTextSplitter.from_huggingface_tokenizer(
        tokenizer, chunk_size=Embedder().max_tokens, chunk_overlap=0
    )
    manager = InMemoryRecordManager(namespace="handbook")
    manager.create_schema()
    store = InMemoryVectorStore(model)
    figures = {"full_build": timed_index(pages, splitter, manager, store, model)}
    figures["peak_rss_mb_after_build"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    figures["noop"] = timed_index(pages, splitter, manager, store, model)
    shutil.copy(after, pages / edited)
    figures["one_real_edit"] = timed_index(pages, splitter, manager, store, model)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
