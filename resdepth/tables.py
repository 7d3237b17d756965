"""Tables as Markdown, CSV or aligned text, and the cells they share: errors in %, durations,
where a run trained."""

from __future__ import annotations

import csv
import io
import math
import re

NUMBER = r"\d+(?:\.\d+)?"  # of a duration's part: 8, 1.5


def markdown(head: list[str], body: list[list[str]]) -> str:
    """A Markdown table, one line per row, ending in a newline."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def csv_text(head: list[str], body: list[list]) -> str:
    """CSV with a header line, lines ending in a newline; None is written as an empty cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(body)
    return buf.getvalue()


def aligned(head: list[str], body: list[list[str]], right: range | set) -> str:
    """Columns padded to their widest cell (`right`: right-aligned), dashes under the head."""
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def error_cell(mean: float, std: float, n: int, *, counts: bool = False,
               best: float = math.nan) -> str:
    """Errors in % as '8.00 ± 1.00' (mean ± sample std), '8.00' (n=1), '-' (none); with counts:
    '8.00 ± 1.00 (n=3)', '8.00 (n=1)', and the lowest when given: '(n=3; best 7.00)'."""
    if n == 0 or math.isnan(mean):
        return "-"
    if n == 1:
        return f"{mean:.2f}" + (" (n=1)" if counts else "")
    cell = f"{mean:.2f} ± {std:.2f}"
    if counts:
        cell += f" (n={n}" + ("" if math.isnan(best) else f"; best {best:.2f}") + ")"
    return cell


def number(value, digits: int = 4) -> str:
    """A CSV number cell: fixed decimals; empty where there is no number (None, nan)."""
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def parse_time(text: str) -> float:
    """Seconds of '90s', '8m', '1h30m' or '2h' (a bare number: minutes); ValueError if none."""
    text = text.strip()
    if text.replace(".", "", 1).isdigit():
        return float(text) * 60
    m = re.fullmatch(rf"(?:({NUMBER})h)?(?:({NUMBER})m)?(?:({NUMBER})s)?", text)
    if not text or not m:
        raise ValueError(text)
    h, mins, s = (float(x or 0) for x in m.groups())
    return h * 3600 + mins * 60 + s


def fmt_time(seconds: float) -> str:
    """'4m05s', '1h12m': a duration for people ('?' when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    h, r = divmod(max(0, round(seconds)), 3600)
    return f"{h}h{r // 60:02d}m" if h else f"{r // 60}m{r % 60:02d}s"


def plural(n, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def where(segment: dict) -> str:
    """'x86_64 (2 cores) in bf16-mixed with 1 CPU thread': one segment of a run, in words."""
    threads = segment.get("threads")
    return (f"{segment.get('device')} in {segment.get('precision')} with "
            + (plural(threads, "CPU thread") if threads else "an unrecorded number of CPU threads"))
