"""PERSON precision and recall of `detect_pii` on a hand-labelled sample of bundled and 18F
lines, and how long detection takes over the whole 18F handbook. Prints and saves the figures.

    .venv/bin/python benchmarks/pii_person.py [--out FILE.json] [--no-timing]

The sample (`benchmarks/data/pii_person.jsonl`) is one line of a parsed document per row, as
the detector sees it, with the people's names in it labelled by hand. It was picked to be hard:
the names found in both corpora, and lines the detector flagged that name no one (headings,
table cells, product and team names, links). A name counts as found only if PERSON spans cover
all of it (a leaked surname is a miss); a PERSON span is correct if it overlaps a labelled name.
False negatives are saved by sample line, never by the name itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from ragfresh.parsing import parse_document
from ragfresh.pii import PiiSpan, detect_pii, detector_id

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "benchmarks" / "data" / "pii_person.jsonl"
HANDBOOK = REPO.parent / "shared" / "corpora" / "18f-handbook" / "pages"


def labelled_spans(text: str, names: list[str]) -> list[tuple[int, int]]:
    """Every occurrence of every labelled name."""
    spans = []
    for name in names:
        start = text.find(name)
        while start >= 0:
            spans.append((start, start + len(name)))
            start = text.find(name, start + 1)
    return spans


def covered(start: int, end: int, spans: list[PiiSpan]) -> bool:
    return all(any(s.start <= i < s.end for s in spans) for i in range(start, end))


def score(rows: list[dict]) -> dict:
    """Counts, precision and recall, and what was missed or wrongly flagged."""
    found = missed = right = wrong = 0
    false_positives, false_negatives = [], []
    for number, row in enumerate(rows, start=1):
        text = row["text"]
        names = labelled_spans(text, row["persons"])
        persons = [s for s in detect_pii(text) if s.entity_type == "PERSON"]
        for start, end in names:
            if covered(start, end, persons):
                found += 1
            else:
                missed += 1
                partly = any(s.start < end and s.end > start for s in persons)
                false_negatives.append({"line": number, "source": row["source"], "partly": partly})
        for span in persons:
            if any(span.start < end and span.end > start for start, end in names):
                right += 1
            else:
                wrong += 1
                false_positives.append(
                    {"source": row["source"], "span": text[span.start : span.end]}
                )
    return {
        "samples": len(rows),
        "names": found + missed,
        "names_found": found,
        "person_spans": right + wrong,
        "person_spans_correct": right,
        "precision": round(right / (right + wrong), 3) if right + wrong else None,
        "recall": round(found / (found + missed), 3) if found + missed else None,
        "false_positives": false_positives,
        "false_negatives": false_negatives,
    }


def handbook_timing() -> dict:
    """Seconds `detect_pii` takes over every 18F page's parsed text, the model already loaded."""
    pages = sorted(p for p in HANDBOOK.rglob("*") if p.is_file())
    texts = [parse_document(p.relative_to(HANDBOOK).as_posix(), p.read_bytes()).text for p in pages]
    start = time.perf_counter()
    for text in texts:
        detect_pii(text)
    seconds = time.perf_counter() - start
    return {"pages": len(texts), "characters": sum(map(len, texts)), "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pii_person.json"))
    parser.add_argument("--no-timing", action="store_true", help="skip the 18F timing")
    args = parser.parse_args()
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    start = time.perf_counter()
    detect_pii("")
    load_seconds = time.perf_counter() - start
    figures = {
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "detector": detector_id(),
        "import_and_load_seconds": round(load_seconds, 1),
        **score(rows),
    }
    print(
        f"{figures['detector']}: PERSON precision {figures['precision']} "
        f"({figures['person_spans_correct']}/{figures['person_spans']} spans), recall "
        f"{figures['recall']} ({figures['names_found']}/{figures['names']} names, "
        f"{figures['samples']} lines)"
    )
    for fp in figures["false_positives"]:
        print(f"  false positive  {fp['source']}: {fp['span']!r}")
    for fn in figures["false_negatives"]:
        print(
            f"  missed          sample line {fn['line']} ({fn['source']}), partly: {fn['partly']}"
        )
    if not args.no_timing:
        figures["handbook_detection"] = handbook_timing()
        print("18F handbook:", json.dumps(figures["handbook_detection"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
