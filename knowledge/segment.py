"""Words for the keyword index, in any language: Chinese, Japanese and Korean get split.

SQLite's unicode61 tokenizer and PostgreSQL's parser split on spaces and punctuation, so
"退款政策需要多久" is one "word" to them and a question can only match it whole. The index
therefore stores a copy of each chunk in which every run of CJK characters is replaced by
its overlapping character bigrams ("退款 款政 政策 策需 ..."; a lone character stays as it
is), and questions are segmented the same way. Bigrams need no dictionary, treat every
domain word alike (product names, new terms) and are what Lucene's CJKAnalyzer does;
`bench/kb_segment.py` compares them with jieba's dictionary segmentation on Chinese
documents and questions (figures in README, "Knowledge base").

Text outside CJK runs is left for the database's tokenizer (and its English stemmer).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# Han (incl. extension A and compatibility), kana, Hangul syllables, bopomofo.
_CJK = "\u3040-\u30ff\u3100-\u312f\u31a0-\u31bf\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
CJK_RUN = re.compile(f"[{_CJK}]+")
_WORD = re.compile(rf"[{_CJK}]+|[^\W_]+", re.UNICODE)


def bigrams(run: str) -> list[str]:
    """Overlapping character pairs of one CJK run ("退款政策" -> 退款 款政 政策)."""
    if len(run) < 2:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


def segment(text: str) -> str:
    """`text` with each CJK run replaced by its bigrams, space separated, for indexing."""
    return CJK_RUN.sub(lambda m: " " + " ".join(bigrams(m.group())) + " ", text)


def query_terms(query: str) -> list[str]:
    """The distinct words of a question as the index sees them, in order, lower case.

    Latin words are kept whole (the database stems them); CJK runs become bigrams.
    """
    seen: dict[str, None] = {}
    for word in _words(query):
        seen.setdefault(word, None)
    return list(seen)


def _words(query: str) -> Iterator[str]:
    for match in _WORD.finditer(query.lower()):
        word = match.group()
        if CJK_RUN.fullmatch(word):
            yield from bigrams(word)
        else:
            yield word
