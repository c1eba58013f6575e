"""Writes every figure the README shows from the recorded results (``make readme``).

    python benchmarks/readme_tables.py            # rewrite README.md's generated blocks
    python benchmarks/readme_tables.py --check    # exit 1, naming each block, if README.md differs

Two kinds of generated block:

``<!-- bench:NAME [rows="COL=VAL,COL=VAL;COL=VAL"] -->`` ... ``<!-- /bench:NAME -->``
    ``benchmarks/results/NAME.md`` without its first heading (the README section
    gives the title), provenance lines included. ``rows`` keeps, in every
    markdown table that has those columns, only the rows that match one of the
    ``;``-separated alternatives (each an AND of ``,``-separated ``COL=VAL``).

``<!-- table:NAME -->`` ... ``<!-- /table:NAME -->``
    A table the code itself holds (:data:`CODE_TABLES`), e.g. which
    ``model.generate`` arguments ``mogen.generate`` takes.

``<!-- glance -->`` ... ``<!-- /glance -->``
    The "At a glance" table: each cell is a template over the values named in
    :data:`GLANCE` (a row of a results table, or a regex over a results file).

Nothing between the markers is typed by hand: edit the results (by re-running
the benchmark that writes them) or this script, then run it.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Row:
    """The row of a table in ``results/<stem>.md`` whose cells equal ``match`` (the only one), optionally
    only in the tables under the first heading that starts with ``section``."""

    stem: str
    match: dict
    section: Optional[str] = None


@dataclass(frozen=True)
class Find:
    """The groups of the first match of ``pattern`` in ``results/<stem>.md``."""

    stem: str
    pattern: str


@dataclass(frozen=True)
class Glance:
    """One row of the At-a-glance table. Each cell is a template: ``{name:COLUMN}`` is COLUMN of the
    row ``values[name]`` (a :class:`Row`), ``{name:N}`` group N of ``values[name]`` (a :class:`Find`)."""

    what: str
    mogen: str
    alternative: str
    ratio: str
    values: dict = field(default_factory=dict)


_FUSION = dict(B="8", M="2", vocab="mapped", dtype="float32")
_VALUE = dict(dtype="bfloat16", B="8", k="50")
_SEARCH = "medium: W=4, kappa=4, L=10"

#: Which results feed each cell of the At-a-glance table.
GLANCE: list[Glance] = [
    Glance("K1 fusion, B=8, V=151936, 2 guides, one mapped (fp32)",
           "{k:kernel ms} ms", "eager PyTorch {k:eager ms} ms", "{k:speedup}",
           {"k": Row("fusion_cpu", _FUSION)}),
    Glance("K2 value scores, B=8, H=4096, V=151936, k=50 (bf16)",
           "{k:kernel ms} ms", "full value head {k:eager ms} ms", "{k:speedup} ({k:bytes ratio} fewer bytes)",
           {"k": Row("value_cpu", _VALUE)}),
    Glance("value-guided decode, head {setup:1} wide, batch {setup:2}",
           "top-k 20: {k:tokens/s} tok/s", "full head: {full:tokens/s} tok/s", "{ratio:1}x",
           {"setup": Find("value_decode_cpu", r"head (\d+) x \d+\).*batch (\d+)"),
            "k": Row("value_decode_cpu", {"decoder": "value guide, top_k=20 (K2)"}),
            "full": Row("value_decode_cpu", {"decoder": "value guide, full head"}),
            "ratio": Find("value_decode_cpu", r"top_k=20 vs full head: ([\d.]+)x")}),
    Glance("chunk beam search, {size:1}M base, W=4 kappa=4 L=10",
           "{m:tokens/s} tok/s", "naive re-scoring search {n:tokens/s} tok/s", "{x:1}x",
           {"size": Find("search_cpu", r"medium: base ([\d.]+)M"),
            "m": Row("search_cpu", {"search": "mogen"}, _SEARCH),
            "n": Row("search_cpu", {"search": "naive"}, _SEARCH),
            "x": Find("search_cpu", r"### medium: W=4[^\n]*\n(?:[^\n]*\n)*?mogen / naive tokens/s: ([\d.]+)x")}),
    Glance("merge {h:1} x {h:2} GB {h:3} (linear)",
           "{m:wall s} s, {m:peak RSS MiB} MiB peak ({m:work vs floor} its read-and-write floor)",
           "mergekit {k:wall s} s, {k:peak RSS MiB} MiB", "{x:1}x time, {x:2}x memory",
           {"h": Find("merge_cpu", r"^# Merge benchmark \((\d+) x ([\d.]+) GB (\w+)"),
            "m": Row("merge_cpu", {"run": "mogen linear, K=1"}),
            "k": Row("merge_cpu", {"run": re.compile(r"mergekit ")}),
            "x": Find("merge_cpu", r"mogen vs mergekit: ([\d.]+)x less wall time, ([\d.]+)x less peak RSS")}),
]


class Missing(Exception):
    """A block's source is not in the results (names what is missing)."""


def results_text(stem: str) -> str:
    path = RESULTS / f"{stem}.md"
    if not path.exists():
        raise Missing(f"{path.relative_to(ROOT)} does not exist")
    return path.read_text()


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(lines: list[str]) -> list[tuple[int, int, Optional[str]]]:
    """(first line, end line, heading above) of every markdown table (header, separator, rows)."""
    out, i, heading = [], 0, None
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        if (lines[i].startswith("|") and i + 1 < len(lines)
                and re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*", lines[i + 1].strip())):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append((i, j, heading))
            i = j
        else:
            i += 1
    return out


def _matches(cell: str, want: Union[str, re.Pattern]) -> bool:
    return bool(want.match(cell)) if isinstance(want, re.Pattern) else cell == want


def lookup_row(src: Row) -> dict:
    lines = results_text(src.stem).splitlines()
    found = []
    for start, end, heading in tables(lines):
        if src.section is not None and not (heading or "").startswith(src.section):
            continue
        cols = _cells(lines[start])
        if not all(k in cols for k in src.match):
            continue
        for ln in lines[start + 2:end]:
            row = dict(zip(cols, _cells(ln)))
            if all(_matches(row[k], v) for k, v in src.match.items()):
                found.append(row)
    if len(found) != 1:
        raise Missing(f"results/{src.stem}.md: {len(found)} rows match {src.match}"
                      + (f" under '{src.section}'" if src.section else ""))
    return found[0]


def lookup_find(src: Find) -> tuple:
    m = re.search(src.pattern, results_text(src.stem), re.M)
    if m is None:
        raise Missing(f"results/{src.stem}.md: nothing matches {src.pattern!r}")
    return (m.group(0),) + m.groups()


def fill(template: str, values: dict) -> str:
    def one(m: re.Match) -> str:
        name, key = m.group(1), m.group(2)
        v = values[name]
        return v[int(key)] if isinstance(v, tuple) else v[key]

    return re.sub(r"\{(\w+):([^}]+)\}", one, template)


# ---------------------------------------------------------------- blocks


def provenance_of(stem: str) -> dict:
    """The provenance lines (``machine:``, ``commit:`` ...) of a results file, by key."""
    out = {}
    for ln in results_text(stem).splitlines():
        m = re.match(r"(machine|commit|command|date): (.*)", ln)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    return out


def glance_block() -> list[str]:
    rows, stems = [], []
    for g in GLANCE:
        values, mine = {}, []
        for name, src in g.values.items():
            values[name] = lookup_row(src) if isinstance(src, Row) else lookup_find(src)
            mine += [src.stem] if src.stem not in mine else []
        stems += [s for s in mine if s not in stems]
        what = fill(g.what, values) + " (" + ", ".join(f"[{s}](benchmarks/results/{s}.md)" for s in mine) + ")"
        rows.append("| " + " | ".join([what, fill(g.mogen, values), fill(g.alternative, values),
                                       fill(g.ratio, values)]) + " |")
    machines = []
    for s in stems:
        m = provenance_of(s).get("machine", "not recorded")
        if m not in machines:
            machines.append(m)
    return (["Every figure below is read from the results file named in its row by `benchmarks/readme_tables.py` "
             "(`make readme`); each file names the machine, commit and command that produced it, and its table is "
             "under [Benchmarks](#benchmarks). Measured on:", ""]
            + [f"- {m}" for m in machines]
            + ["", "| what | mogen | alternative, same run | ratio |", "|---|---|---|---|"] + rows)


def bench_block(name: str, attrs: dict) -> list[str]:
    lines = results_text(name).rstrip("\n").splitlines()
    unknown = set(attrs) - {"rows"}
    if unknown:
        raise Missing(f"bench:{name}: unknown option(s) {sorted(unknown)}")
    if lines and lines[0].startswith("#"):
        lines = lines[1:]
    if "rows" in attrs:
        alts = [dict(kv.split("=", 1) for kv in alt.split(",")) for alt in attrs["rows"].split(";")]
        drop = set()
        for start, end, _ in tables(lines):
            cols = _cells(lines[start])
            if not all(k in cols for alt in alts for k in alt):
                continue
            for i in range(start + 2, end):
                row = dict(zip(cols, _cells(lines[i])))
                if not any(all(row[k] == v for k, v in alt.items()) for alt in alts):
                    drop.add(i)
        lines = [ln for i, ln in enumerate(lines) if i not in drop]
    while lines and not lines[0].strip():
        lines = lines[1:]
    if "rows" in attrs:
        lines = [f"Rows {attrs['rows']} of `benchmarks/results/{name}.md` (the whole table is there).", ""] + lines
    return lines


#: ``<!-- table:NAME -->`` blocks: tables the code itself knows (written from the code, not from results).
CODE_TABLES = {"generate_args": ("mogen.decoding.argument_support", "support_markdown", "generate"),
               "search_args": ("mogen.decoding.argument_support", "support_markdown", "search")}


def code_block(name: str) -> list[str]:
    import importlib

    if name not in CODE_TABLES:
        raise Missing(f"no code table {name!r} (known: {sorted(CODE_TABLES)})")
    module, function, *args = CODE_TABLES[name]
    return getattr(importlib.import_module(module), function)(*args).rstrip("\n").split("\n")


_BLOCK = re.compile(r"^<!-- ((bench|table):(\w+)((?: \w+=\"[^\"]*\")*)|glance) -->\n(.*?)"
                    r"^<!-- /(?:(?:bench|table):\3|glance) -->$", re.M | re.S)


def generate(readme: str) -> tuple[str, list[str], list[str]]:
    """(README with every block regenerated, names of the blocks that changed, errors)."""
    changed, errors = [], []

    def one(m: re.Match) -> str:
        kind, name = m.group(2), m.group(3)
        label = f"{kind}:{name}" if kind else "glance"
        try:
            if kind == "bench":
                attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(4) or ""))
                body = bench_block(name, attrs)
            elif kind == "table":
                body = code_block(name)
            else:
                body = glance_block()
        except Missing as exc:
            errors.append(f"{label}: {exc}")
            return m.group(0)
        text = "\n".join(body) + "\n"
        if text != m.group(5):
            changed.append(label)
        return m.group(0)[: m.start(5) - m.start(0)] + text + m.group(0)[m.end(5) - m.start(0):]

    out = _BLOCK.sub(one, readme)
    opened = re.findall(r"^<!-- (?:(?:bench|table):(\w+)[^>]*|glance) -->$", readme, re.M)
    if len(opened) != len(_BLOCK.findall(readme)):
        errors.append("a <!-- bench:NAME -->, <!-- table:NAME --> or <!-- glance --> marker has no matching "
                      "closing marker")
    return out, changed, errors


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if README.md differs")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    readme = args.readme.read_text()
    out, changed, errors = generate(readme)
    for e in errors:
        print(f"readme_tables: {e}", file=sys.stderr)
    if args.check:
        for name in changed:
            print(f"readme_tables: {args.readme.name} block {name} differs from benchmarks/results "
                  "(run `make readme`)", file=sys.stderr)
        return 1 if changed or errors else 0
    if out != readme:
        args.readme.write_text(out)
    print(f"readme_tables: {len(changed)} block(s) rewritten" + (f": {', '.join(changed)}" if changed else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
