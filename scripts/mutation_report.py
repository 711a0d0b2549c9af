"""Summarise the last `make mutate` run: per-module counts from mutmut's mutants/**/*.meta files.

    python scripts/mutation_report.py                    # every mutated module
    python scripts/mutation_report.py 'avbalance.methods.*'  # only the mutants matching a glob

Prints a markdown table (killed / survived / timed-out / other / total / % killed), then the mutants
that were not killed (see one with `.venv/bin/mutmut show <name>`). % killed counts killed mutants
only: a timed-out mutant is listed, not credited.
"""
from __future__ import annotations

import fnmatch
import json
import signal
import sys
from collections import Counter
from pathlib import Path

# mutmut 3's exit-code meanings (mutmut/stats.py)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", 37: "type check", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault", 2: "interrupted", None: "not checked"}


def load(root: Path, pattern: str) -> dict[str, dict[str, str]]:
    """{module: {mutant name: status}} for the mutants matching `pattern`."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted((root / "src").rglob("*.py.meta")):
        module = str(meta.relative_to(root / "src"))[: -len(".py.meta")].replace("/", ".").removesuffix(".__init__")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        picked = {k: STATUS.get(v, "suspicious") for k, v in codes.items() if fnmatch.fnmatch(k, pattern)}
        if picked:
            out[module] = picked
    return out


def table(results: dict[str, dict[str, str]]) -> str:
    lines = ["| module | killed | survived | timed out | other | total | % killed |", "|---|---:|---:|---:|---:|---:|---:|"]
    overall: Counter = Counter()

    def row(name: str, c: Counter) -> str:
        total = sum(c.values())
        other = total - c["killed"] - c["survived"] - c["timeout"]
        pct = 100.0 * c["killed"] / total if total else 0.0
        return f"| {name} | {c['killed']} | {c['survived']} | {c['timeout']} | {other} | {total} | {pct:.1f} |"
    for module, statuses in results.items():
        c = Counter(statuses.values())
        overall += c
        lines.append(row(f"`{module}`", c))
    lines.append(row("**overall**", overall))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    pattern = argv[0] if argv else "*"
    root = Path("mutants")
    results = load(root, pattern)
    if not results:
        print(f"no mutmut results under {root}/ for {pattern!r}: run `make mutate` first")
        return 1
    print(table(results))
    alive = [(k, s) for statuses in results.values() for k, s in statuses.items() if s != "killed"]
    if alive:
        print(f"\nnot killed ({len(alive)}); `.venv/bin/mutmut show <name>` prints the mutation:")
        for k, s in alive:
            print(f"  {s:<12} {k}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    sys.exit(main(sys.argv[1:]))
