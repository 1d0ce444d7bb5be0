"""Whether what the NER model calls a person is one, by evidence (first-name and surname lists,
titles, a matching address, a line or cell that holds only a name, a name confirmed elsewhere),
and whether an email address or a phone number
is a person's or an organisation's published contact point. Policy words are not people."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from importlib.resources import files

from policyfresh.ingest.pii_markup import Markup

# Zipf frequency (log10 per billion words, `wordfreq`) from which an English word is common:
# "period" 5.2, "grace" 4.6, "discontinued" 3.6, "okafor" 2.6. Chosen on the labelled samples.
COMMON_ZIPF = 4.5
# A first name alone is a person only if rarer than this as a word: "Herbert" yes, "Mark" no.
SINGLE_NAME_ZIPF = 4.0
# Words before a name that say a person follows, beside nameparser's titles ("Officer", "Dr").
CONTEXT_WORDS = frozenset(
    {
        *("contact", "contacts", "signed", "approved", "approver", "supervisor", "customer"),
        *("employee", "colleague", "name", "named", "lead", "coordinator", "liaison"),
        *("welcomes", "led"),
    }
)
ENGLISH_SPEAKING = ("great_britain", "ireland", "usa")  # gender-guesser's country columns
CONTEXT_WINDOW = 4
HONORIFICS = frozenset(("mr", "mrs", "ms", "mx", "miss", "dr", "prof", "sir", "dame", "rev"))
RARE_ZIPF = 3.5  # rarer than this, a word after a title is a name: "okafor" 2.6, "bounty" 3.7
# US census surnames (the `names` package) up to this rank are surnames ("Okafor" is 24,358 and
# rare as a word anyway; past it the list holds "Lunch" and "Jews"); up to the second rank even
# when common as words ("Henry" 133, "Woods" 107; not "Grace" 1,167 or "Press" 11,800).
SURNAME_RANK = 15_000
COMMON_SURNAME_RANK = 1_000  # also for census first names
# Words that make a name-shaped run a place, a building, an award or a document, when in it or
# right after it: "Ronald Reagan Washington National Airport", "Buddy Handbook".
PLACE_WORDS = frozenset(
    {
        *("airport", "building", "center", "centre", "street", "avenue", "station", "hall"),
        *("park", "bridge", "square", "library", "museum", "university", "college", "school"),
        *("institute", "foundation", "hospital", "memorial", "award", "prize", "fellowship"),
        *("handbook", "playbook", "guide", "program", "programme", "fund", "plaza", "road"),
        *("boulevard", "tower", "national", "federal", "international", "county", "act"),
        *("stop", "stops", "line"),
    }
)
PLACE_LOOKAHEAD = 60  # characters after a run searched for its next two words
# An organisation's line: toll-free prefixes, or one of these words just before the number.
TOLL_FREE = re.compile(r"^\D*1?\D*8(?:00|33|44|55|66|77|88)\D")
PHONE_ROLE_WORDS = frozenset(
    {
        *("desk", "line", "helpline", "hotline", "service", "services", "center", "centre"),
        *("unit", "office", "department", "team", "support", "switchboard", "reception"),
        *("branch", "operations", "helpdesk"),
    }
)
PHONE_WINDOW = 80  # characters before a number searched for role words

_TOKEN = re.compile(r"(?<![^\W_])[^\W\d_]+(?:['\u2019\-][^\W\d_]+)*['\u2019]?\.?")
_PREFIX = re.compile(r"(?:Mc|Mac|De|Di|Da|Du|La|Le|Van|Von)(?=[^\W\d_])")
_SUFFIX = re.compile(r"['\u2019]s?\.?$|(?<=[^\W\d_]{2})\.$")  # possessive, or a full stop
_WORD = re.compile(r"[^\W\d_]+")
_CAPITALIZED = re.compile(r"(?<![\w@./#-])[^\W\d_a-z][^\W\d_A-Z]+(?![\w@])")
_LOWER_WORD = re.compile(r"(?<![\w.@/#-])[a-z]+(?![\w@/]|\.\w)")
_NAME_TOKEN = r"[^\W\d_a-z][^\W\d_]*(?:['\u2019-][^\W\d_]+)*\.?"
# A run of 2-3 capitalised words that is all of a cell: between line ends, table bars, tags,
# list markers, bold marks, commas, "&" or " - " ("Jane Roe - 18F", "<td>Ann Lee & Bo Li</td>").
_CELL_RUN = re.compile(
    r"(?:^[ \t]*(?:[-*+][ \t]+|\d+\.[ \t]+)?|[|>,;&(]|\*\*|__|[ \t][-\u2013\u2014])[ \t]*"
    rf"(?:\*\*|__)?(?P<run>{_NAME_TOKEN}(?:[ \t]+{_NAME_TOKEN}){{1,2}})(?:\*\*|__)?[ \t]*"
    r"(?=$|[|<,;&):]|\*\*|__|[ \t][-\u2013\u2014][ \t])",
    re.MULTILINE,
)


def lexicon_versions() -> str:
    """The name and word lists this module reads: part of the PII detector's id."""
    packages = ("gender-guesser", "names", "nameparser", "wordfreq")
    return "-".join(f"{p}{version(p)}" for p in packages)


def load_lexicons() -> None:
    """Read the name and word lists now (about a second), not inside the first run's scan."""
    _census(), _first_names(), _titles(), _particles(), zipf("the")


@cache
def _census() -> tuple[dict[str, int], dict[str, int]]:
    """The 1990 US census first names (about 5,500) and surnames, by rank, from `names`."""
    folder = files("names")
    first: dict[str, int] = {}
    for kind in ("male", "female"):
        for line in (folder / f"dist.{kind}.first").read_text().splitlines():
            name, *_, rank = line.split()
            first[name.lower()] = min(int(rank), first.get(name.lower(), int(rank)))
    surnames = {}
    for line in (folder / "dist.all.last").read_text().splitlines():
        name, *_, rank = line.split()
        if int(rank) > SURNAME_RANK:
            break
        surnames[name.lower()] = int(rank)
    return first, surnames


def _surname_rank(word: str) -> int:
    """A word's best census surname rank (of its hyphenated parts); past the list, one more."""
    parts = re.split(r"[-\u2019']", _plain(word).lower().rstrip("."))
    return min(
        (_census()[1].get(p, SURNAME_RANK + 1) for p in parts if p), default=SURNAME_RANK + 1
    )


@cache
def is_surname(word: str) -> bool:
    """A census surname, within `SURNAME_RANK`, and within `COMMON_SURNAME_RANK` if common."""
    rank = _surname_rank(word)
    return rank <= SURNAME_RANK and (rank <= COMMON_SURNAME_RANK or zipf(word) < COMMON_ZIPF)


@cache
def is_given_name(word: str) -> bool:
    """A first name by gender-guesser (`is_first_name`) or the census: a rare word, or within
    `COMMON_SURNAME_RANK` there ("Matt" 329, "Will" 503; not "Princess" 1,349)."""
    rank = _census()[0].get(_plain(word).lower().rstrip("."))
    census = rank is not None and (rank <= COMMON_SURNAME_RANK or zipf(word) < COMMON_ZIPF)
    return is_first_name(word) or census


@cache
def _first_names():  # -> gender_guesser.detector.Detector, loaded once (about 0.4 s)
    import gender_guesser.detector

    return gender_guesser.detector.Detector(case_sensitive=False)


@cache
def _titles() -> frozenset[str]:
    from nameparser.config import CONSTANTS

    return frozenset(CONSTANTS.titles) | CONTEXT_WORDS


@cache
def _particles() -> frozenset[str]:
    from nameparser.config import CONSTANTS

    return frozenset(CONSTANTS.prefixes)


@cache
def zipf(word: str) -> float:
    """How common a word is in English (0 for unknown words)."""
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en", wordlist="small")


def _plain(word: str) -> str:
    return unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode()


@cache
def is_first_name(word: str) -> bool:
    """A given name in gender-guesser's list (about 48,000, from many countries), unless it is
    rare as a name (`Lean`, `General`) or a common English word rarely a name in English-speaking
    countries (`The` and `Loan` are Vietnamese names)."""
    detector = _first_names()
    entry = detector.names.get(word.lower()) or detector.names.get(_plain(word).lower())
    if len(word) < 2 or not entry:
        return False
    english = [detector.COUNTRIES.index(c) for c in ENGLISH_SPEAKING]
    strength = max(_strength(f) for f in entry.values())
    in_english = max(_strength(f[i]) for f in entry.values() for i in english)
    return strength >= 2 and (zipf(word) < COMMON_ZIPF or in_english >= 3)


def _strength(frequencies: str) -> int:
    """gender-guesser's frequency code: blank, then 1-9 and A-D, a log scale."""
    return max((int(code, 16) for code in frequencies.replace(" ", "")), default=0)


def _name_cased(word: str) -> bool:
    """`Okafor`, `Kaplan-Moss`, `McCray`, `O'Neil`, `J.`: not `TTSC`, `FedRAMP` or `max`."""
    return all(_cased_part(part) for part in re.split(r"[-\u2019']", word.rstrip(".")) if part)


def _cased_part(part: str) -> bool:
    if not part[0].isupper():
        return False
    prefix = _PREFIX.match(part)
    rest = part[prefix.end() :] if prefix and part[prefix.end()].isupper() else part
    return rest[1:] == "" or rest[1:].islower()


@dataclass(frozen=True)
class Candidate:
    """A PERSON span trimmed to its name-shaped words."""

    start: int
    end: int
    words: tuple[str, ...]


def name_run(text: str, start: int, end: int) -> Candidate | None:
    """The first run of name-cased words (particles inside allowed) separated by spaces only:
    `Zoom]({%` gives `Zoom`, `Mike Matis - CoE` gives `Mike Matis`, `notes](https://` none."""
    run: list[tuple[int, int, str]] = []
    for match in _TOKEN.finditer(text, start, end):
        word = _SUFFIX.sub("", match[0])
        if run and not re.fullmatch(r"[ \t\u00a0]+", text[run[-1][1] : match.start()]):
            break
        if word and (_name_cased(word) or (run and word.lower() in _particles())):
            run.append((match.start(), match.start() + len(word), word))
            if re.search(r"['\u2019]s?\.?$", match[0]):  # a possessive ends a name
                break
        elif run:
            break
    while run and run[-1][2].lower() in _particles():
        run.pop()
    if not run:
        return None
    return Candidate(run[0][0], run[-1][1], tuple(w for _, _, w in run))


class PersonJudge:
    """Accepts PERSON candidates of one document by evidence; counts the reasons it rejects."""

    def __init__(self, text: str, markup: Markup) -> None:
        self.text = text
        self.markup = markup
        self.lowercase = set(_LOWER_WORD.findall(text))
        self.rejected: Counter[str] = Counter()

    def common(self, word: str) -> bool:
        """An English word used as one: frequent, or written in lower case in this text."""
        return zipf(word) >= COMMON_ZIPF or word.lower() in self.lowercase

    def passages(self) -> list[tuple[int, int]]:
        """The paragraphs where a PERSON candidate could find evidence: those with an email
        address, or with a name-cased word that is not common (`evidence` finds none for a run
        of common words). The NER model runs on these only."""
        found, start = [], 0
        while start < len(self.text):
            end = self.text.find("\n\n", start)
            end = len(self.text) if end < 0 else end
            words = (_SUFFIX.sub("", m[0]) for m in _TOKEN.finditer(self.text, start, end))
            if "@" in self.text[start:end] or any(
                len(w.rstrip(".")) > 1 and _name_cased(w) and not self.common(w) for w in words
            ):
                found.append((start, end))
            start = end + 2
        return found

    def _rare(self, word: str) -> bool:
        """Rare in English and never in lower case here: on its own, still this name."""
        return zipf(word) < RARE_ZIPF and word.lower() not in self.lowercase

    def _before(self, candidate: Candidate) -> tuple[str, set[str]]:
        """The candidate's line up to it, and the last word there, lower case (or none)."""
        line_start, _ = self.markup.line_of(candidate.start)
        before = self.text[line_start : candidate.start]
        return before, {w.lower() for w in _WORD.findall(before)[-1:]}

    def _context(self, candidate: Candidate) -> bool:
        """An honorific right before the name ("Dr.", "Ms."), a title right before a rare word
        ("Officer Okafor"; a surname: `_titled_surname`), or a title or context word a few
        words before it in its sentence when every word of the name is rare or it ends with a
        surname ("led by Will Slack")."""
        before, last = self._before(candidate)
        if last & HONORIFICS:
            return True
        if last & _titles() and len(candidate.words) == 1:
            return self._rare(candidate.words[0])
        words = _WORD.findall(re.split(r"[.!?;:][*_)\]]*\s", before)[-1])[-CONTEXT_WINDOW:]
        named = all(zipf(w) < RARE_ZIPF for w in candidate.words) or (
            len(candidate.words) >= 2 and is_surname(candidate.words[-1])
        )
        return named and any(w.lower() in _titles() for w in words)

    def _titled_surname(self, candidate: Candidate) -> bool:
        """A census surname right after a title, however common as a word ("President
        Clinton")."""
        return (
            len(candidate.words) == 1
            and bool(self._before(candidate)[1] & _titles())
            and _surname_rank(candidate.words[0]) <= SURNAME_RANK
        )

    def _address_names(self, start: int) -> set[str]:
        """Words of the local parts of email addresses in the paragraph around `start`."""
        para_start = self.text.rfind("\n\n", 0, start) + 1
        para_end = self.text.find("\n\n", start)
        paragraph = self.text[para_start : para_end if para_end >= 0 else len(self.text)]
        locals_ = re.findall(r"([\w.+-]+)@[\w-]+\.[\w.-]+", paragraph)
        return {w for local in locals_ for w in re.findall(r"[a-z]+", _plain(local).lower())}

    def _surname_like(self, word: str) -> bool:
        """A census surname, or a word rare in English and never lower case here ("Okafor")."""
        return is_surname(word) or self._rare(word)

    def _names_a_place(self, candidate: Candidate) -> bool:
        """A place word in the run or in the two words right after it, across a line break
        ("the Ronald Reagan Washington\nNational Airport", "Van Buren stops")."""
        after = self.text[candidate.end : candidate.end + PLACE_LOOKAHEAD].split("\n\n")[0]
        following = re.match(r"(?:[*_]*\s+[^\W\d_]+){0,2}", after)
        words = (*candidate.words, *_WORD.findall(following[0] if following else ""))
        return any(w.lower() in PLACE_WORDS for w in words)

    def evidence(self, candidate: Candidate) -> str | None:
        """Why a candidate is a person, or None."""
        words = [w for w in candidate.words if len(w.rstrip(".")) > 1]
        if not words:
            return None
        if {_plain(w).lower() for w in words} & self._address_names(candidate.start):
            return "address"
        if self._titled_surname(candidate):
            return "title"
        if all(self.common(w) for w in words) or self._names_a_place(candidate):
            return None
        if self._context(candidate):
            return "title or context"
        several = len(candidate.words) >= 2
        if several and is_given_name(words[0]) and self._surname_like(candidate.words[-1]):
            return "first name"
        if len(words) < len(candidate.words) and several:
            return "initial"
        if len(candidate.words) == 1 and is_first_name(words[0]):
            return "first name" if zipf(words[0]) < SINGLE_NAME_ZIPF else None
        return None

    def cell_evidence(self, candidate: Candidate) -> str | None:
        """A cell or line that holds only a 2-3-word run is a name when it is a given name and
        a surname, or when each word is a given name, a surname or rare and most of them are in
        a name list ("Dahianna Salazar Foreman"; not "Proyecto Hunab Ku")."""
        words = candidate.words
        if self._names_a_place(candidate):
            return None
        if is_given_name(words[0]) and is_surname(words[-1]):
            return "name alone in a cell"
        listed = sum(is_given_name(w) or is_surname(w) for w in words)
        if all(self.common(w) for w in words) or 2 * listed < len(words):
            return None
        if all(is_given_name(w) or self._surname_like(w) for w in words):
            return "name alone in a cell"
        return None

    def _template(self, candidate: Candidate) -> str:
        """The rest of a cell run's line, without tags, marks and spaces: "-18F"."""
        start, end = self.markup.line_of(candidate.start)
        rest = self.text[start : candidate.start] + "\0" + self.text[candidate.end : end]
        return re.sub(r"<[^<>]*>|[\s*_]", "", rest)

    def _name_shaped(self) -> list[tuple[int, int]]:
        """Runs the NER model may miss (list items, table cells, HTML): a first name followed
        by name-cased words, and the text of `mailto:` links."""
        found = []
        for match in _CAPITALIZED.finditer(self.text):
            if is_first_name(match[0]):
                line_end = self.text.find("\n", match.end())
                found.append((match.start(), len(self.text) if line_end < 0 else line_end))
        found += [
            (r.inner_start, r.inner_end)
            for r in self.markup.regions
            if r.kind == "link" and self.text.startswith("mailto:", r.inner_end + 2)
        ]
        return found

    def _cells(self) -> list[Candidate]:
        """Runs of 2-3 capitalised words that fill a cell, with name evidence; and runs of rare
        words on a line shaped like one of those ("Magdaline Derosena - 18F" where "Caley Woods
        - 18F" is a name: a staff list)."""
        found, pending = [], []
        for match in _CELL_RUN.finditer(self.text):
            candidate = name_run(self.text, *match.span("run"))
            if (
                not candidate
                or (candidate.start, candidate.end) != match.span("run")
                or self.markup.in_syntax(candidate.start, candidate.end)
            ):
                continue
            if self.cell_evidence(candidate):
                found.append(candidate)
            elif all(self._rare(w) for w in candidate.words) and not self._names_a_place(candidate):
                pending.append(candidate)
        templates = {self._template(c) for c in found} - {"\0"}
        return found + [c for c in pending if self._template(c) in templates]

    def judge(self, spans: list[tuple[int, int]]) -> list[Candidate]:
        """The NER candidates with evidence (the others counted by reason), the name-shaped
        runs and the cells with evidence, then every other place their names appear (a name
        confirmed once is a name throughout the document)."""
        accepted = [c for c in map(self._judged, spans) if c] + self._cells()
        for start, end in self._name_shaped():
            candidate = name_run(self.text, start, end)
            if (
                candidate
                and len(candidate.words) >= 2
                and not self.markup.in_syntax(candidate.start, candidate.end)
                and self.evidence(candidate)
            ):
                accepted.append(candidate)
        return accepted + self._elsewhere(accepted)

    def _judged(self, span: tuple[int, int]) -> Candidate | None:
        candidate = name_run(self.text, *span)
        reason = None
        if candidate is None:
            reason = "not name-shaped"
        elif self.markup.in_syntax(candidate.start, candidate.end):
            reason = "markup"
        elif self.evidence(candidate) is None:
            words = [w for w in candidate.words if len(w.rstrip(".")) > 1]
            if words and all(self.common(w) for w in words):
                reason = "common words"
            elif self.markup.is_structural(candidate.start):
                reason = "heading or table header"
            else:
                reason = "no evidence"
        if reason:
            self.rejected[reason] += 1
            return None
        return candidate

    def _elsewhere(self, accepted: list[Candidate]) -> list[Candidate]:
        """Other occurrences of accepted names and of their uncommon words, outside syntax."""
        names = {self.text[c.start : c.end] for c in accepted}
        names |= {w for c in accepted for w in c.words if len(w) > 2 and self._rare(w)}
        if not names:
            return []
        pattern = re.compile(
            r"(?<![\w@.])(?:" + "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
            + r")(?![\w@]|\.\w)"
        )  # fmt: skip
        taken = {(c.start, c.end) for c in accepted}
        return [
            Candidate(m.start(), m.end(), (m[0],))
            for m in pattern.finditer(self.text)
            if (m.start(), m.end()) not in taken and not self.markup.in_syntax(*m.span())
        ]


def person_words(text: str, persons: list[Candidate]) -> set[str]:
    """Lower-case, unaccented words of the accepted names."""
    return {_plain(w).lower() for c in persons for w in _WORD.findall(text[c.start : c.end])}


def _segments_into_words(letters: str) -> bool:
    """`itservicedesk` is `it service desk`: pieces of common words (one of 4+ letters) or
    acronyms of up to 3 letters; `jdoe` and `okafor` are not."""
    best: list[int | None] = [0] + [None] * len(letters)  # longest common word so far
    for end in range(1, len(letters) + 1):
        for begin in range(max(0, end - 20), end):
            if best[begin] is None:
                continue
            piece = letters[begin:end]
            if len(piece) <= 3 or (zipf(piece) >= 3.0 and not is_first_name(piece)):
                longest = max(best[begin] or 0, len(piece) if len(piece) > 3 else 0)
                best[end] = max(best[end] or 0, longest)
    return (best[-1] or 0) >= 4


def is_personal_address(address: str, names: set[str]) -> bool:
    """A person's own address (`maria.okafor@`, `jdoe@`), not a role's (`privacy-office@`,
    `legal-support@`, `itservicedesk@`): a name in the local part, or no role words in it."""
    local = _plain(address.split("@", 1)[0]).lower()
    pieces = re.findall(r"[a-z]+", local)
    if any(p in names or (len(p) > 2 and is_first_name(p)) for p in pieces):
        return True
    return not any(_segments_into_words(p) for p in pieces) and not re.search(r"\d", local)


def is_public_phone(text: str, start: int, persons: list[Candidate]) -> bool:
    """An organisation's number (toll-free, or after "help desk", "service line"...) with no
    person named in its paragraph; a number next to a person's name is theirs."""
    para_start = text.rfind("\n\n", 0, start) + 1
    para_end = text.find("\n\n", start)
    para_end = len(text) if para_end < 0 else para_end
    if any(para_start <= c.start < para_end for c in persons):
        return False
    number = text[start : start + 20]
    before = _WORD.findall(text[max(para_start, start - PHONE_WINDOW) : start].lower())
    return bool(TOLL_FREE.match(number)) or bool(set(before) & PHONE_ROLE_WORDS)
