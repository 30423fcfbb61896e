"""Regenerate the handbook's PDF and DOCX files from the text below.

    python bench/data/make_handbook.py      # needs fpdf2 and python-docx (dev tools only)

The Markdown, text and HTML documents are written by hand in bench/data/handbook/; the
binary formats are generated so that their content stays reviewable here. The generated
files are committed, so the benchmark itself needs neither library. PDFs use fpdf2's core
Helvetica font (a real text layer, Latin-1), so Chinese content lives in the DOCX and the
text formats.
"""

from __future__ import annotations

import datetime
import io
import zipfile
from pathlib import Path

import docx
from fpdf import FPDF

HANDBOOK = Path(__file__).resolve().parent / "handbook"
FIXED_DATE = datetime.datetime(2026, 3, 1, 9, 0, tzinfo=datetime.UTC)

# A document is a title and a list of blocks: ("h", text) heading, ("p", text) paragraph,
# ("ul", [items]) bullets, ("ol", [items]) numbered list, ("page", "") a page break (PDF).
Block = tuple[str, str | list[str]]

LEAVE: list[Block] = [
    (
        "p",
        "This policy covers employees of Fernhollow Labs in Norway and Germany. "
        "Employees in Shanghai: see the Chinese leave rules.",
    ),
    ("h", "Annual leave"),
    (
        "p",
        "Full-time employees have 27 working days of paid annual leave per calendar "
        "year. Part-time employees have the same share of 27 days as their working time.",
    ),
    (
        "p",
        "Up to 5 unused days may be carried over to the next year; carried-over days "
        "must be taken by 31 March, after which they are lost.",
    ),
    (
        "p",
        "Request leave in PeoplePort. Requests for more than 5 consecutive days must be "
        "made at least 3 weeks in advance.",
    ),
    ("h", "Sick leave"),
    (
        "p",
        "You may self-certify sickness for up to 3 calendar days at a time, at most 4 "
        "times in 12 months. Longer absences need a doctor's note from the first day "
        "after the self-certified period. Tell your manager before 09:00 on the first day.",
    ),
    ("page", ""),
    ("h", "Parental leave"),
    (
        "p",
        "Fernhollow tops up the public parental benefit to full salary for 49 weeks. "
        "Tell HR at least 12 weeks before the leave starts.",
    ),
    ("h", "Company days off"),
    (
        "ul",
        [
            "Recharge Day: every office closes on the second Friday of June.",
            "Volunteering: 2 paid days per year for volunteer work of your choice.",
            "Bereavement: 5 paid days on the death of a close family member.",
            "Moving house: 1 paid day per year.",
        ],
    ),
]

CONDUCT: list[Block] = [
    (
        "p",
        "How we behave towards customers, partners and each other. Every employee "
        "confirms this code once a year.",
    ),
    ("h", "Gifts and hospitality"),
    (
        "p",
        "You may accept gifts worth up to EUR 50 per business partner per year. Register "
        "every gift above that value in the Gift Register, and decline gifts of cash or "
        "anything offered during a purchasing decision.",
    ),
    ("h", "Conflicts of interest"),
    (
        "p",
        "Declare possible conflicts of interest (family members at suppliers, shares in "
        "competitors) in PeoplePort. Everyone renews the declaration by 31 January each "
        "year. Side jobs need written approval from your manager and HR.",
    ),
    ("h", "Speaking up"),
    (
        "p",
        "Report misconduct to your manager, to HR, or anonymously through the "
        "whistleblowing service run by Clearline, an independent provider, at "
        "speakup.fernhollow.example. Nobody is punished for a report made in good faith.",
    ),
    ("h", "Media and social media"),
    (
        "p",
        "Only the Communications team speaks for Fernhollow. Send press questions to "
        "Sofie Nakamura-Berg, Communications lead, at press@fernhollow.example.",
    ),
]

REMOTE: list[Block] = [
    (
        "p",
        "Fernhollow Labs works hybrid. This policy says when we meet in the office and "
        "how to work from elsewhere.",
    ),
    ("h", "Office days"),
    (
        "p",
        "Everyone works at least 2 days a week in the office. Tuesday and Thursday are "
        "team days, when whole teams are in.",
    ),
    ("h", "Core hours"),
    (
        "p",
        "Core hours are 10:00 to 15:00 local time: be reachable for meetings then. "
        "Outside core hours, plan your day with your team.",
    ),
    ("h", "Working from abroad"),
    (
        "p",
        "You may work from another country for up to 20 working days per calendar year. "
        "HR must approve it at least 4 weeks in advance (tax and insurance rules), and "
        "countries under sanctions are excluded.",
    ),
    ("h", "Home internet"),
    ("p", "The company reimburses home internet up to NOK 350 per month through Ledgerly."),
]

ON_CALL: list[Block] = [
    (
        "p",
        "Engineers of production services share the on-call duty. This handbook says "
        "how the rota works, how fast to respond and whom to escalate to.",
    ),
    ("h", "Rota"),
    (
        "p",
        "Shifts last one week. Hand-over is every Tuesday at 10:00 CET, in the "
        "#oncall-handover channel. Swaps are recorded in PagerBell, the paging tool.",
    ),
    ("h", "Allowance"),
    (
        "p",
        "Primary on-call receives an allowance of NOK 2,400 per week; secondary on-call "
        "receives NOK 1,200 per week. A night call-out between 23:00 and 07:00 lasting "
        "more than 1 hour gives half a day off in lieu.",
    ),
    ("h", "Response times"),
    (
        "p",
        "Acknowledge a SEV1 page within 15 minutes and a SEV2 page within 60 minutes. "
        "SEV3 issues wait for working hours.",
    ),
    ("h", "Escalation"),
    (
        "p",
        "If a page is not acknowledged within 10 minutes, PagerBell escalates it to the "
        "next step of this list, in order:",
    ),
    (
        "ol",
        [
            "Primary on-call engineer",
            "Secondary on-call engineer",
            "Team lead of the affected service",
            "Head of Reliability, Ingrid Solberg",
            "CTO, Matthias Krüger",
        ],
    ),
    ("h", "After an incident"),
    (
        "p",
        "Every SEV1 and SEV2 gets a blameless incident review within 5 working days, "
        "written with the template Blameless Review v3.",
    ),
]

BENEFITS: list[Block] = [
    ("p", "What Fernhollow Labs offers besides salary. Ask HR (hr@fernhollow.example)."),
    ("h", "Pension"),
    ("p", "In Norway the company pays 7% of salary into your pension, on salary up to 12 G."),
    ("h", "Health and fitness"),
    (
        "p",
        "Health insurance: Fjordhelse Premium for every employee in Norway and Germany. "
        "Gym subsidy: NOK 400 per month, claimed in Ledgerly.",
    ),
    ("h", "Learning budget"),
    (
        "p",
        "Each employee has a learning budget of EUR 1,200 per year for conferences, "
        "courses and books. Unused budget does not carry over.",
    ),
    ("h", "Referral bonus"),
    ("p", "Recommend someone we hire and you receive NOK 25,000 once they pass probation."),
    ("h", "Company cabin"),
    (
        "p",
        "The company cabin Hytta in Hemsedal can be booked for up to 4 nights per "
        "employee per year in PeoplePort.",
    ),
]

CN_EXPENSES: list[Block] = [
    ("p", "本指南适用于芬霍罗上海公司员工的费用报销。"),
    ("h", "发票"),
    (
        "p",
        "报销必须提供增值税电子普通发票，抬头为“芬霍罗信息技术（上海）有限公司”，"
        "税号为 91310104MA1FR2X73K。抬头或税号错误的发票不能报销。",
    ),
    ("h", "提交时间"),
    ("p", "请在 Ledgerly 中提交报销，费用发生后 30 天内提交。"),
    ("p", "报销款在每月 25 日随工资一起发放。"),
    ("h", "交通与出差"),
    (
        "ul",
        [
            "加班到晚上 21:00 以后可以报销打车费，每次上限 120 元。",
            "国内出差乘坐高铁二等座。",
            "国内出差餐费标准为每天 150 元。",
        ],
    ),
]

DOCUMENTS: dict[str, tuple[str, list[Block]]] = {
    "people/leave-policy.pdf": ("Leave Policy", LEAVE),
    "people/code-of-conduct.pdf": ("Code of Conduct", CONDUCT),
    "people/remote-work.pdf": ("Remote and Hybrid Work", REMOTE),
    "engineering/on-call.docx": ("On-call Handbook", ON_CALL),
    "people/benefits.docx": ("Employee Benefits", BENEFITS),
    "finance/中国报销指南.docx": ("中国员工报销指南", CN_EXPENSES),
}


def write_pdf(path: Path, title: str, blocks: list[Block]) -> None:
    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_author("Fernhollow Labs")
    pdf.set_creation_date(FIXED_DATE)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
    for kind, content in blocks:
        if kind == "page":
            pdf.add_page()
        elif kind == "h":
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", 14)
            pdf.multi_cell(0, 8, str(content), new_x="LMARGIN", new_y="NEXT")
        elif kind == "p":
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 6, str(content), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        else:
            pdf.set_font("Helvetica", "", 11)
            for number, item in enumerate(content, 1):
                mark = f"{number}." if kind == "ol" else "-"
                pdf.multi_cell(0, 6, f"{mark} {item}", new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    pdf.output(str(path))


def write_docx(path: Path, title: str, blocks: list[Block]) -> None:
    document = docx.Document()
    document.core_properties.title = title
    document.core_properties.author = "Fernhollow Labs"
    document.core_properties.created = FIXED_DATE
    document.core_properties.modified = FIXED_DATE
    document.add_heading(title, level=1)
    for kind, content in blocks:
        if kind == "page":
            continue
        if kind == "h":
            document.add_heading(str(content), level=2)
        elif kind == "p":
            document.add_paragraph(str(content))
        else:
            style = "List Number" if kind == "ol" else "List Bullet"
            for item in content:
                document.add_paragraph(item, style=style)
    buffer = io.BytesIO()
    document.save(buffer)
    path.write_bytes(_fixed_zip_dates(buffer.getvalue()))


def _fixed_zip_dates(data: bytes) -> bytes:
    """The same DOCX with every zip entry dated FIXED_DATE: regenerating changes no byte."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            fixed = zipfile.ZipInfo(item.filename, date_time=FIXED_DATE.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(fixed, src.read(item.filename))
    return out.getvalue()


def main() -> None:
    for relative, (title, blocks) in DOCUMENTS.items():
        path = HANDBOOK / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (write_pdf if path.suffix == ".pdf" else write_docx)(path, title, blocks)
        print(f"wrote {path.relative_to(HANDBOOK.parent)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
