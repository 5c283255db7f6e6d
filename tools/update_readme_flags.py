"""Rewrite the README's flag table from the TrainConfig fields (the test checks they agree).

    python tools/update_readme_flags.py
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eva8_utils.main import flag_table  # noqa: E402

START, END = "<!-- flags:start -->\n", "<!-- flags:end -->"
readme = (ROOT / "README.md").read_text()
head, rest = readme.split(START, 1)
_, tail = rest.split(END, 1)
(ROOT / "README.md").write_text(head + START + "\n" + flag_table() + "\n" + END + tail)
print("README.md: flag table rewritten")
