"""Summarise the last `make mutate` run: per-module counts from mutmut's mutants/**/*.meta files.

    python scripts/mutation_report.py                    # every mutated module
    python scripts/mutation_report.py 'avbalance.methods.*'  # only the mutants matching a glob
    python scripts/mutation_report.py --show                 # + each live mutant's changed line

Prints a markdown table (killed / survived / timed-out / other / total / % killed), then the mutants
that were not killed: first those judged equivalent in scripts/mutation_equivalent.yaml (name:
reason; a judgement holds for the mutant's function as it is at the commit named in
results/mutation.md), then the untriaged ones. % killed counts killed mutants only: a timed-out or
equivalent mutant is listed, not credited.
"""
from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import signal
import sys
from collections import Counter
from pathlib import Path

import yaml

EQUIVALENT = Path(__file__).with_name("mutation_equivalent.yaml")

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


def changed_line(name: str) -> str:
    """The mutated line of `name`, as `mutmut show` prints it ('-old' / '+new' -> '+new')."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], capture_output=True, text=True).stdout
    plus = [ln[1:].strip() for ln in out.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return plus[0] if plus else "?"


def judged_equivalent() -> dict[tuple[str, str], str]:
    """{(function, mutated line): reason} from mutation_equivalent.yaml."""
    entries = yaml.safe_load(EQUIVALENT.read_text()) or [] if EQUIVALENT.exists() else []
    return {(e["function"], " ".join(e["line"].split())): e["reason"] for e in entries}


def main(argv: list[str]) -> int:
    show = "--show" in argv
    argv = [a for a in argv if a != "--show"]
    pattern = argv[0] if argv else "*"
    root = Path("mutants")
    results = load(root, pattern)
    if not results:
        print(f"no mutmut results under {root}/ for {pattern!r}: run `make mutate` first")
        return 1
    print(table(results))
    equivalent = judged_equivalent()
    alive = [(k, s) for statuses in results.values() for k, s in statuses.items() if s != "killed"]
    judged, untriaged = [], []
    for k, s in alive:  # a survivor is matched by its function and its mutated line, not by its number
        line = changed_line(k) if s == "survived" and equivalent else ""
        reason = equivalent.get((re.sub(r"__mutmut_\d+$", "", k), " ".join(line.split())))
        (judged if reason else untriaged).append((k, s, line, reason))
    if judged:
        print(f"\nequivalent ({len(judged)}; reasons in {EQUIVALENT.name}):")
        for k, s, line, reason in judged:
            print(f"- {s} `{k}`: {reason}" + (f"  `{line}`" if show else ""))
    if untriaged:
        print(f"\nnot killed and not judged ({len(untriaged)}); `.venv/bin/mutmut show <name>` prints the mutation:")
        for k, s, line, _ in untriaged:
            print(f"- {s} `{k}`" + (f"  `{line or changed_line(k)}`" if show else ""))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    sys.exit(main(sys.argv[1:]))
