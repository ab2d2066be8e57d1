"""A statement laid out as an A4 PDF with fpdf2: title, header, lines grouped by team with subtotals, total,
the statement's sha256 and how to verify the signed bundle. A draft carries DRAFT in its title and a
banner on every page, so a printed draft is never mistaken for a bill.

fpdf2's built-in fonts need no font files on the machine but hold only Latin-1; other characters (a team
named in another script) print as "?" rather than failing the export. The CSV keeps every character.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fpdf import FPDF
from fpdf.enums import XPos, YPos

if TYPE_CHECKING:
    from portfolio.billing.sheets import Sheet

FONT = "Helvetica"
# subject + detail, kind, quantity, unit, unit price, amount (mm; A4 is 210 wide, 15 mm margins)
WIDTHS = (68, 20, 30, 22, 20, 20)
ALIGN = ("LEFT", "LEFT", "RIGHT", "LEFT", "RIGHT", "RIGHT")


def _latin1(text) -> str:
    return str(text).encode("latin-1", "replace").decode("latin-1")


class _Page(FPDF):
    """fpdf2's document with a DRAFT banner in the header of every page of a draft and page numbers."""

    draft = False
    footer_text = ""

    def header(self) -> None:
        if self.draft:
            self.set_font(FONT, "B", 11)
            self.set_text_color(180, 0, 0)
            self.cell(0, 6, "DRAFT - not a closed statement; amounts may still change",
                      align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)  # fmt: skip
            self.set_text_color(0, 0, 0)
            self.ln(2)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, "", 7)
        self.cell(0, 5, _latin1(f"{self.footer_text} - page {self.page_no()}/{{nb}}"), align="C")


def _pair(pdf: FPDF, name: str, value: str) -> None:
    pdf.set_font(FONT, "B", 9)
    pdf.cell(32, 5, _latin1(name))
    pdf.set_font(FONT, "", 9)
    pdf.cell(0, 5, _latin1(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def render(sheet: Sheet, verify_hint: str) -> bytes:
    pdf = _Page(orientation="portrait", unit="mm", format="A4")
    pdf.draft = sheet.draft
    revision = "draft" if sheet.draft else f"revision {sheet.revision}"
    pdf.footer_text = f"{sheet.cost_center} {sheet.label} {revision}"
    pdf.set_title(_latin1(f"Statement {sheet.cost_center} {sheet.label} {revision}"))
    pdf.set_author("Portfolio billing")
    pdf.set_creation_date(sheet.as_of)  # the same statement gives the same bytes whenever it is exported
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.add_page()

    pdf.set_font(FONT, "B", 16)
    title = f"{'DRAFT statement' if sheet.draft else 'Statement'} {sheet.label}"
    pdf.cell(0, 9, _latin1(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    _pair(pdf, "Department", f"{sheet.department.name} ({sheet.cost_center})")
    _pair(pdf, "Month", sheet.label)
    _pair(pdf, "Revision", "draft" if sheet.draft else str(sheet.revision))
    status = "DRAFT (live, computed from the ledger now)" if sheet.draft else sheet.status
    _pair(pdf, "Status", status)
    _pair(pdf, "As of" if sheet.draft else "Closed", sheet.as_of.strftime("%Y-%m-%d %H:%M UTC"))
    _pair(pdf, "Currency", sheet.currency)
    if sheet.partial:
        _pair(pdf, "Partial", "only the lines of the reader's teams; the total is of these lines")
    pdf.ln(3)

    for team, lines, subtotal in sheet.by_team():
        pdf.set_font(FONT, "B", 11)
        pdf.cell(0, 7, _latin1(team), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font(FONT, "", 8)
        with pdf.table(col_widths=WIDTHS, text_align=ALIGN, line_height=4.5, width=sum(WIDTHS),
                       align="LEFT", first_row_as_headings=True) as table:  # fmt: skip
            table.row(["Subject", "Kind", "Quantity", "Unit", "Unit price", "Amount"])
            for line in lines:
                subject = f"{line.subject} ({line.detail})" if line.detail else line.subject
                table.row([_latin1(subject), _latin1(line.kind), str(line.quantity), _latin1(line.unit),
                           str(line.unit_price), str(line.amount)])  # fmt: skip
        pdf.set_font(FONT, "B", 9)
        pdf.cell(sum(WIDTHS[:-1]), 6, _latin1(f"Subtotal {team}"), align="R")
        pdf.cell(WIDTHS[-1], 6, str(subtotal), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(2)
    if not sheet.lines:
        pdf.set_font(FONT, "I", 9)
        pdf.cell(0, 6, "No charges.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    pdf.ln(2)
    pdf.set_font(FONT, "B", 12)
    pdf.cell(sum(WIDTHS[:-1]), 8, _latin1(f"Total ({sheet.currency})"), align="R")
    pdf.cell(WIDTHS[-1], 8, str(sheet.total), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    pdf.set_font(FONT, "", 8)
    pdf.multi_cell(0, 4, f"Statement sha256: {sheet.sha256}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.multi_cell(0, 4, _latin1(verify_hint), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())
