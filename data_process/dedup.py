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
- Decontamination: a problem sharing any word n-gram (n=8 by default, as open-r1 does) with an evaluation
  prompt is dropped; evaluation prompts shorter than n words must appear whole inside the problem.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

_ENUM_PREFIX = re.compile(
    r"^\s*(?:(?:example|problem|exercise|task|question)\s*)?\d+(?:\.\d+)*\s*[.):]\s*", re.I
)
_TOKEN = re.compile(r"\w+|[^\w\s]")
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


def read_eval_prompts(path: str | Path) -> list[str]:
    """Evaluation prompts from a parquet (prompt / problem / question column), JSONL or text file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"decontamination file {path} does not exist")
    columns = ("prompt", "problem", "question", "instruction")
    if path.suffix == ".parquet":
        names = pq.read_schema(path).names
        column = next((c for c in columns if c in names), None)
        if column is None:
            raise ValueError(f"{path}: no prompt column; expected one of {list(columns)}, found {names}")
        return [t for t in pq.read_table(path, columns=[column]).column(column).to_pylist() if t]
    if path.suffix in (".jsonl", ".json"):
        texts = []
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            column = next((c for c in columns if c in record), None)
            if column is None:
                raise ValueError(f"{path}:{line_no}: no prompt field; expected one of {list(columns)}")
            texts.append(record[column])
        return texts
    return [line for line in path.read_text().splitlines() if line.strip()]


class Decontaminator:
    def __init__(self, eval_texts: list[str], ngram: int = 8):
        self.ngram = ngram
        self._ngrams: set[int] = set()
        self._short: list[str] = []
        for text in eval_texts:
            toks = tokens(text)
            if len(toks) < ngram:
                if toks:
                    self._short.append(" ".join(toks))
            else:
                self._ngrams.update(self._hashes(toks))

    def _hashes(self, toks: list[str]) -> set[int]:
        n = self.ngram
        return {zlib.crc32(" ".join(toks[i : i + n]).encode()) for i in range(len(toks) - n + 1)}

    def __len__(self) -> int:
        return len(self._ngrams) + len(self._short)

    def is_contaminated(self, text: str) -> bool:
        toks = tokens(text)
        if self._ngrams and len(toks) >= self.ngram and not self._ngrams.isdisjoint(self._hashes(toks)):
            return True
        if self._short:
            joined = f" {' '.join(toks)} "
            return any(f" {s} " in joined for s in self._short)
        return False
