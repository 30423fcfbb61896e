"""Documents in every format for the knowledge-base tests, made with the formats' libraries.

A PDF with a text layer is written with pypdf (a page, a Helvetica font and a content
stream that shows each line); DOCX with python-docx.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from knowledge.base import KnowledgeBase
from knowledge.config import CollectionRule, KnowledgeSettings, SourceSettings


def pdf_bytes(lines: Sequence[str], *, title: str = "", password: str = "") -> bytes:
    from pypdf import PdfWriter
    from pypdf.generic import (
        ArrayObject,
        DecodedStreamObject,
        DictionaryObject,
        NameObject,
    )

    writer = PdfWriter()
    page = writer.add_blank_page(width=612, height=792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops += [f"({escaped}) Tj", "T*"]
    ops.append("ET")
    stream = DecodedStreamObject()
    stream.set_data("\n".join(ops).encode("latin-1"))
    page[NameObject("/Contents")] = ArrayObject([writer._add_object(stream)])
    if title:
        writer.add_metadata({"/Title": title})
    if password:
        writer.encrypt(password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_bytes(title: str, sections: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(title, level=1)
    for heading, paragraphs in sections:
        document.add_heading(heading, level=2)
        for text in paragraphs:
            if text.startswith("- "):
                document.add_paragraph(text[2:], style="List Bullet")
            else:
                document.add_paragraph(text)
    table = document.add_table(rows=3, cols=2)
    for r, row in enumerate([("City", "Limit"), ("Oslo", "NOK 1850"), ("Berlin", "EUR 165")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def write(root: Path, relative: str, content: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def settings(
    *sources: tuple[Path, str],
    rules: Sequence[CollectionRule] = (),
    **changes: object,
) -> KnowledgeSettings:
    values: dict[str, object] = {
        "sources": [
            SourceSettings(path=str(p), collection=c, url_prefix=f"https://wiki.example/{c}/")
            for p, c in sources
        ],
        "collections": list(rules),
        "embedding_model": "",
    }
    values.update(changes)
    return KnowledgeSettings(**values)


async def locations(kb: KnowledgeBase, query: str, **kwargs: Any) -> list[str]:
    return [p.location for p in await kb.retrieve(query, **kwargs)]


TRAVEL_MD = """# Travel Policy

Every trip is booked through TripNest.

## Hotels

| City | Limit per night |
|------|-----------------|
| Berlin | EUR 165 |
| Oslo | NOK 1850 |

## Flights

- Economy class for flights shorter than 6 hours.
- Premium economy for longer flights.
"""

SHANGHAI_MD = """# 上海办公室指南

## 午餐补贴

每个工作日发放午餐补贴 45 元，随当月工资一起发放。

## 门禁卡

门禁卡丢失后补办需要支付 50 元工本费。
"""

VPN_HTML = """<html><head><title>VPN Set-up</title><style>.x{color:red}</style>
<script>var secret = "tracking pixel";</script></head>
<body><nav>Home | Wiki | Search</nav>
<main><h1>VPN</h1><p>Every VPN configuration is valid for 21 days.</p>
<h2>Endpoints</h2><ul><li>Oslo: vpn-osl, UDP 51820</li><li>Shanghai: vpn-sha, UDP 51821</li></ul>
</main><footer>Copyright Fernhollow</footer></body></html>
"""
