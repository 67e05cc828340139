"""Write the README's demo table from the committed demo run, benchmarks/results/demo/summary.json.

    python scripts/gen_demo_table.py            # rewrites the rows between the demo-table markers in README.md
    python scripts/gen_demo_table.py --check    # exit 1 if README.md's rows differ

tests/test_docs.py checks that README.md's rows are what this script writes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "demo" / "summary.json"
README = ROOT / "README.md"
HEADER_LINES = 2  # the table's header and separator rows, written by hand below the opening marker
BLOCK = re.compile(r"(<!-- demo-table:[^\n]*-->\n(?:[^\n]*\n){%d})(.*?)(<!-- /demo-table -->)" % HEADER_LINES, re.S)


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def rows(summary: dict) -> str:
    out = []
    for name in ("ce", "selc", "alr"):
        m = summary["methods"][name]
        out.append(f"| {name} | {pct(m['last_test_acc'])} | {pct(m['peak_test_acc'])} | "
                   f"{pct(m['refined_label_acc'])} | {pct(m['mislabel_f1'])} | {pct(m['memo_given'])} | "
                   f"{m['train_time_s']:.1f} s |\n")
    return "".join(out)


def readme_rows(text: str) -> str:
    found = BLOCK.search(text)
    if not found:
        raise ValueError(f"{README}: no demo-table block (<!-- demo-table: ... --> header rows ... <!-- /demo-table -->)")
    return found.group(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    want = rows(json.loads(SUMMARY.read_text()))
    text = README.read_text()
    if args.check:
        if readme_rows(text) != want:
            print(f"{README}: the demo table differs from {SUMMARY}; run python scripts/gen_demo_table.py",
                  file=sys.stderr)
            return 1
        return 0
    readme_rows(text)
    README.write_text(BLOCK.sub(lambda m: m.group(1) + want + m.group(3), text))
    print(f"wrote the demo table of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
