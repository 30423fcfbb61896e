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
# PostgreSQL's (Snowball's) English stop words: its 'english' configuration drops these, and
# so do we on SQLite, so both databases weigh a question's words alike.
_STOP_TEXT = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves what which who whom
this that these those am is are was were be been being have has had having do does did
doing a an the and but if or because as until while of at by for with about against
between into through during before after above below to from up down in out on off over
under again further then once here there when where why how all any both each few more
most other some such no nor not only own same so than too very s t can will just don
should now
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
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

    Latin words are kept whole (the database stems them), English stop words dropped; CJK
    runs become bigrams.
    """
    seen: dict[str, None] = {}
    for word in _words(query):
        if word not in STOP_WORDS:
            seen.setdefault(word, None)
    return list(seen)


def _words(query: str) -> Iterator[str]:
    for match in _WORD.finditer(query.lower()):
        word = match.group()
        if CJK_RUN.fullmatch(word):
            yield from bigrams(word)
        else:
            yield word
