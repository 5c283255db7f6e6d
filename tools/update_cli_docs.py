"""Rewrite the flag table of docs/cli.md from the TrainConfig fields (tests/test_docs.py checks they agree).

    python tools/update_cli_docs.py

Only the part between the markers <!-- flags:start --> and <!-- flags:end --> is written;
the text around it is kept.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eva8_utils.main import flag_table  # noqa: E402

START, END = "<!-- flags:start -->\n", "<!-- flags:end -->"
CLI_DOC = ROOT / "docs" / "cli.md"


def render(text: str) -> str:
    """``text`` with the table between the markers replaced by :func:`flag_table`."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + START + "\n" + flag_table() + "\n" + END + tail


if __name__ == "__main__":
    CLI_DOC.write_text(render(CLI_DOC.read_text()))
    print(f"{CLI_DOC.relative_to(ROOT)}: flag table rewritten")
