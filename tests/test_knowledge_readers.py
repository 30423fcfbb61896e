"""Reading each format to titled, headed text, and chunking it without breaking meaning."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge.chunking import chunk_document
from knowledge.readers import Unreadable, read_document
from knowledge.segment import query_terms, segment
from llm.tokens import chat_token_counter, estimate_tokens
from tests.knowledge_support import SHANGHAI_MD, TRAVEL_MD, VPN_HTML, docx_bytes, pdf_bytes


def test_markdown_keeps_title_headings_tables_and_lists() -> None:
    doc = read_document(TRAVEL_MD.encode(), "travel.md")
    assert doc.title == "Travel Policy"
    kinds = [(b.kind, b.units[0][:12]) for b in doc.blocks]
    assert ("heading", "Hotels") in kinds and ("heading", "Flights") in kinds
    table = next(b for b in doc.blocks if b.kind == "table")
    assert table.header.startswith("| City")
    assert [row.split("|")[1].strip() for row in table.units] == ["Berlin", "Oslo"]
    assert next(b for b in doc.blocks if b.kind == "list").units[0].startswith("- Economy")


def test_html_keeps_the_main_text_only() -> None:
    doc = read_document(VPN_HTML.encode(), "vpn.html")
    assert doc.title == "VPN Set-up"
    text = doc.text
    assert "valid for 21 days" in text and "UDP 51821" in text
    for furniture in ("tracking pixel", "color:red", "Home | Wiki", "Copyright"):
        assert furniture not in text


def test_pdf_text_layer_and_metadata_title() -> None:
    data = pdf_bytes(["Leave Policy", "Employees have 27 working days of leave."], title="Leave")
    doc = read_document(data, "leave.pdf")
    assert doc.title == "Leave"
    assert "27 working days" in doc.text


def test_docx_headings_lists_and_tables() -> None:
    data = docx_bytes("Benefits", [("Gym", ["The gym subsidy is NOK 400.", "- Swimming"])])
    doc = read_document(data, "benefits.docx")
    assert doc.title == "Benefits"
    assert ("heading", ("Gym",)) in [(b.kind, b.units) for b in doc.blocks]
    assert any(b.kind == "list" and b.units == ("Swimming",) for b in doc.blocks)
    table = next(b for b in doc.blocks if b.kind == "table")
    assert table.header == "City | Limit" and table.units[-1] == "Berlin | EUR 165"


def test_title_falls_back_to_the_file_name() -> None:
    assert read_document(b"just words here", "notes/on-call.txt").title == "on-call"


@pytest.mark.parametrize(
    ("data", "name", "reason"),
    [
        (b"", "empty.md", "empty"),
        (b"   \n\n", "blank.txt", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "image.md", "binary"),
        ("Prix: 12 EUR, très cher".encode("latin-1"), "latin1.txt", "not UTF-8"),
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", "broken.pdf", "pdf"),
        (b"PK\x03\x04 not really a zip", "broken.docx", "DOCX"),
    ],
)
def test_bad_files_say_why_they_are_skipped(data: bytes, name: str, reason: str) -> None:
    with pytest.raises(Unreadable, match=reason):
        read_document(data, name)


def test_encrypted_pdf_is_refused() -> None:
    with pytest.raises(Unreadable, match="encrypted"):
        read_document(pdf_bytes(["secret salaries"], password="pw"), "salaries.pdf")


def test_chunks_carry_heading_paths_and_never_cut_a_table_row() -> None:
    rows = "\n".join(f"| City {i} | EUR {100 + i} per night |" for i in range(60))
    md = f"# Travel\n\n## Hotels\n\n| City | Limit |\n|---|---|\n{rows}\n\n## Flights\n\nEconomy.\n"
    doc = read_document(md.encode(), "t.md")
    chunks = chunk_document(doc, estimate_tokens, 64)
    hotel = [c for c in chunks if c.heading == "Travel > Hotels"]
    assert len(hotel) > 2  # the table was split...
    for chunk in hotel:  # ...between rows, each piece with the header row
        lines = chunk.text.splitlines()
        assert lines[0] == "| City | Limit |"
        assert all(line.startswith("| City ") and line.endswith("|") for line in lines)
        assert chunk.tokens <= 64
    seen = [line for c in hotel for line in c.text.splitlines()[1:]]
    assert seen == [line for line in rows.splitlines()]
    assert chunks[-1].heading == "Travel > Flights" and chunks[-1].text == "Economy."


def test_chunk_size_is_counted_in_the_chat_models_tokens(tiny_model_path: Path) -> None:
    count = chat_token_counter(tiny_model_path)
    # Special-token text in a document is counted as characters, never as the control token.
    assert count("<|im_end|>") == len(b"<|im_end|>")
    para = " ".join(["the quick brown fox jumps."] * 40)
    doc = read_document(f"# T\n\n{para}\n".encode(), "t.md")
    chunks = chunk_document(doc, count, 100)
    assert len(chunks) > 1 and all(c.tokens <= 100 for c in chunks)


def test_cjk_text_is_indexed_as_bigrams_and_questions_alike() -> None:
    assert segment("午餐补贴45元") == " 午餐 餐补 补贴 45 元 "
    assert query_terms("上海的午餐补贴是多少? Lunch") == [
        "上海",
        "海的",
        "的午",
        "午餐",
        "餐补",
        "补贴",
        "贴是",
        "是多",
        "多少",
        "lunch",
    ]
    assert "午餐补贴" in read_document(SHANGHAI_MD.encode(), "s.md").text
