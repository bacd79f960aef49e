"""Duplicate removal and decontamination of problems, in one streaming pass with bounded memory.

- Exact duplicates: same text after normalisation (case, white space, punctuation, and the enumeration
  prefixes scraped problems carry: "Example 3.", "12.", "Problem 4:").
- Near duplicates: MinHash over word 3-gram shingles with LSH banding; a candidate that shares a band is
  confirmed only when the estimated Jaccard similarity reaches the threshold AND both problems contain the
  same numbers. Two problems that differ only in their numbers are different problems with different
  answers; without the number check, templated story problems of ~0.7 true similarity reached the 0.8
  MinHash estimate and distinct problems were thrown away (measured on 50k synthetic rows). Problems too short to have
  `min_shingles` shingles are judged by the exact key alone: for "Compute 61 + 38." one changed number
  already moves Jaccard below any sensible threshold, so MinHash says nothing useful there.
  Memory: one 32-bit signature per kept problem plus one dict entry per band (~0.3 GB for 220k problems).
- Decontamination (`Decontaminator`): a problem sharing any word n-gram (n=8 by default, as open-r1's
  scripts/decontaminate.py does) with an evaluation problem is dropped, and every evaluation source it
  overlaps is named (the stage counts removals per benchmark). Words are the \\w+ runs of the normalised
  text (lower case; LaTeX markup, `$`, braces and operator symbols dropped), so `$x^2+1$` and `x^2 + 1`
  give the same words; open-r1 splits the lower-cased text at white space instead. Measured on the vendored
  benchmarks (each one's problems checked against an index of the other four, where every hit is a false
  one): MATH-500 problems hit 11 times with these words, 41 times with operator symbols as words of their
  own (generic runs such as `f ( x ) = x ^ 2 +` and Asymptote code), 4 times with open-r1's split, which in
  turn found only 71% of MATH-500 problems copied without their `$` signs (these words: 100%). Evaluation
  problems shorter than n words have no n-gram: they must appear whole, operators included (`tokens`), so
  "Compute 9 + 9." does not remove "Compute 9 - 9.". Most false hits that remain are shared boilerplate
  ("... where m and n are relatively prime positive integers. What is m+n?": 12 of AMC 2023's 40 problems
  hit the other four benchmarks): on OpenR1-Math such AIME-style training problems are removed too, the
  safe direction for an evaluation, at the cost of some hard training problems (open-r1 makes the same
  trade).
  N-grams are kept as strings, not 32-bit hashes: with the benchmarks' 74k n-grams, a 100-word training
  problem would collide with one by chance with probability ~1.7e-3 (hundreds of false removals in 220k
  problems). The index of the five benchmarks (1,919 problems) builds in ~0.1 s and a problem is checked
  in ~20-90 us. `python -m data_process.dedup` measures both and the false hits (docs/results.md).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.artifacts import (
    read_jsonl,
    read_parquet_rows,
    read_parquet_schema,
    read_text_lines,
    require_text_columns,
)

_ENUM_PREFIX = re.compile(
    r"^\s*(?:(?:example|problem|exercise|task|question)\s*)?\d+(?:\.\d+)*\s*[.):]\s*", re.I
)
_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
_MERSENNE = (1 << 61) - 1
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def normalize(text: str) -> str:
    text = _ENUM_PREFIX.sub("", text.strip())
    text = text.lower()
    text = re.sub(r"[^\w\s+\-*/=^<>()]", " ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()


def shingles(text: str, n: int = 3) -> set[int]:
    toks = tokens(text)
    return {zlib.crc32(" ".join(toks[i : i + n]).encode()) for i in range(len(toks) - n + 1)}


class NearDuplicateIndex:
    """MinHash-LSH index; `add_if_new(text)` is False when a near duplicate was added before."""

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 64,
        bands: int = 16,
        shingle_size: int = 3,
        min_shingles: int = 5,
        seed: int = 0,
    ):
        if num_perm % bands:
            raise ValueError(f"num_perm {num_perm} must be divisible by bands {bands}")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _MERSENNE, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _MERSENNE, size=num_perm, dtype=np.uint64)
        self.threshold, self.bands, self.rows = threshold, bands, num_perm // bands
        self.shingle_size, self.min_shingles = shingle_size, min_shingles
        self._buckets: dict[int, int] = {}
        self._signatures: list[np.ndarray] = []
        self._numbers: list[int] = []

    def signature(self, shingle_set: set[int]) -> np.ndarray:
        x = np.fromiter(shingle_set, dtype=np.uint64, count=len(shingle_set))
        # (a*x + b) mod p with wrap-around in uint64: a universal-enough hash family for MinHash.
        hashed = (self.a[:, None] * x[None, :] + self.b[:, None]) % np.uint64(_MERSENNE)
        return hashed.min(axis=1).astype(np.uint32)

    def add_if_new(self, text: str) -> bool:
        shingle_set = shingles(text, self.shingle_size)
        if len(shingle_set) < self.min_shingles:
            return True
        sig = self.signature(shingle_set)
        numbers = hash(tuple(sorted(_NUMBER.findall(text))))
        band_keys = [
            hash((band, sig[band * self.rows : (band + 1) * self.rows].tobytes()))
            for band in range(self.bands)
        ]
        for key in band_keys:
            other = self._buckets.get(key)
            if (
                other is not None
                and self._numbers[other] == numbers
                and np.mean(self._signatures[other] == sig) >= self.threshold
            ):
                return False
        index = len(self._signatures)
        self._signatures.append(sig)
        self._numbers.append(numbers)
        for key in band_keys:
            self._buckets.setdefault(key, index)
        return True


class DecontaminationError(ValueError):
    """A decontamination source that cannot be read: the message names the file (and the line or column)."""


def read_eval_prompts(path: str | Path) -> list[str]:
    """Evaluation prompts from a parquet (prompt / problem / question column), JSONL or text file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"decontamination file {path} does not exist")
    columns = ("prompt", "problem", "question", "instruction")
    if path.suffix == ".parquet":
        schema = read_parquet_schema(path, DecontaminationError)
        column = next((c for c in columns if c in schema.names), None)
        if column is None:
            raise DecontaminationError(
                f"{path}: no prompt column; expected one of {list(columns)}, found {schema.names}"
            )
        require_text_columns(path, schema, [column], DecontaminationError)
        rows = read_parquet_rows(path, [column], DecontaminationError)
        return [t for row in rows if isinstance(t := row[column], str) and t]
    if path.suffix in (".jsonl", ".json"):
        texts = []
        for line_no, record in read_jsonl(path, DecontaminationError):
            column = next((c for c in columns if c in record), None)
            if column is None:
                raise DecontaminationError(
                    f"{path}: line {line_no}: no prompt field; expected one of {list(columns)}"
                )
            text = record[column]
            if text is not None and not isinstance(text, str):
                raise DecontaminationError(
                    f"{path}: line {line_no}: field '{column}' is a {type(text).__name__}, not text"
                )
            if text:
                texts.append(text)
        return texts
    return [line for _, line in read_text_lines(path, DecontaminationError) if line.strip()]


def words(text: str) -> list[str]:
    """The words decontamination compares: \\w+ runs of the normalised text (see the module docstring)."""
    return _WORD.findall(normalize(text))


class Decontaminator:
    """Word n-gram overlap of training problems with named sources of evaluation problems.

    `sources` maps a name (a benchmark, or a user file's path) to its problem texts. Each n-gram maps to a
    bit mask of the sources holding it, so a problem is checked against every source with one dict lookup
    per n-gram, and `overlaps` names all the sources it shares an n-gram with (as open-r1 flags each
    benchmark separately)."""

    def __init__(self, sources: dict[str, list[str]], ngram: int = 8):
        if ngram < 1:
            raise ValueError(f"decontamination n-gram size must be >= 1, got {ngram}")
        self.ngram = ngram
        self.names = list(sources)
        self._ngrams: dict[str, int] = {}
        # Problems under `ngram` words, whole: {text: mask}, and the lengths in tokens of those starting with
        # a token, so a training problem is only cut where one could start ({first token: {lengths}}).
        self._short: dict[str, int] = {}
        self._short_starts: dict[str, set[int]] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.index_seconds: float | None = None  # set by whoever times the build (the stage)
        for bit, (name, texts) in enumerate(sources.items()):
            self.stats[name] = self._add(texts, 1 << bit)

    def _add(self, texts: list[str], mask: int) -> dict[str, int]:
        ngrams_before = len(self._ngrams)
        short = 0
        for text in texts:
            ws = words(text)
            if len(ws) >= self.ngram:
                for gram in self._grams(ws):
                    self._ngrams[gram] = self._ngrams.get(gram, 0) | mask
            elif toks := tokens(text):
                key = " ".join(toks)
                self._short[key] = self._short.get(key, 0) | mask
                self._short_starts.setdefault(toks[0], set()).add(len(toks))
                short += 1
        return {"problems": len(texts), "short": short, "new_ngrams": len(self._ngrams) - ngrams_before}

    def _grams(self, ws: list[str]) -> Iterator[str]:
        n = self.ngram
        return (" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1))

    def __len__(self) -> int:
        return len(self._ngrams) + len(self._short)

    def _mask(self, text: str) -> int:
        mask = 0
        ws = words(text)
        if len(ws) >= self.ngram:
            get = self._ngrams.get
            for gram in self._grams(ws):
                mask |= get(gram, 0)
        if self._short:
            toks = tokens(text)
            for i, tok in enumerate(toks):
                for length in self._short_starts.get(tok, ()):
                    mask |= self._short.get(" ".join(toks[i : i + length]), 0)
        return mask

    def overlaps(self, text: str) -> list[str]:
        """Names of the sources `text` shares an n-gram with (or contains a short problem of), in order."""
        mask = self._mask(text)
        return [name for bit, name in enumerate(self.names) if mask >> bit & 1]

    def is_contaminated(self, text: str) -> bool:
        return self._mask(text) != 0


def cross_benchmark_hits(ngram: int = 8) -> dict[str, dict[str, int]]:
    """Each vendored benchmark's problems checked against an index of the other four: distinct test sets,
    so every hit is a false removal that a training problem of the same style would suffer. Returns
    {benchmark: {"problems": N, "hit": hits}}."""
    from data_process.config import BENCHMARK_DIR, BENCHMARKS

    texts = {name: read_eval_prompts(BENCHMARK_DIR / f"{name}.jsonl") for name in BENCHMARKS}
    out = {}
    for name in BENCHMARKS:
        index = Decontaminator({other: texts[other] for other in BENCHMARKS if other != name}, ngram)
        out[name] = {"problems": len(texts[name]), "hit": sum(index.is_contaminated(t) for t in texts[name])}
    return out


def main() -> None:
    """`python -m data_process.dedup`: the decontamination index's build time, the time to check a
    problem, and the cross-benchmark false hits (see the module docstring)."""
    import time

    from data_process.config import BENCHMARK_DIR, BENCHMARKS

    texts = {name: read_eval_prompts(BENCHMARK_DIR / f"{name}.jsonl") for name in BENCHMARKS}
    builds = []
    for _ in range(5):
        started = time.perf_counter()
        index = Decontaminator(texts)
        builds.append(time.perf_counter() - started)
    problems = [t for ts in texts.values() for t in ts]
    started = time.perf_counter()
    for text in problems:
        index.overlaps(text)
    per_problem = (time.perf_counter() - started) / len(problems)
    print(
        f"index of {len(problems)} benchmark problems: {len(index)} entries, built in "
        f"{min(builds):.3f}-{max(builds):.3f} s (5 builds); a benchmark-length problem checked in "
        f"{per_problem * 1e6:.0f} us"
    )
    for name, hits in cross_benchmark_hits().items():
        print(f"{name}: {hits['hit']} of {hits['problems']} problems hit the other four benchmarks")


if __name__ == "__main__":
    main()
