"""README's figures are the recorded results: every ``<!-- bench:NAME -->`` block and the At-a-glance
table are what ``benchmarks/readme_tables.py`` writes from ``benchmarks/results/`` (no benchmark runs here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "readme_tables.py"


def check(readme: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)],
                          capture_output=True, text=True, timeout=60)


def test_readme_is_what_the_script_writes():
    r = check(ROOT / "README.md")
    assert r.returncode == 0, f"README.md differs from benchmarks/results; run `make readme`:\n{r.stderr}"


def test_check_names_an_edited_block(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- bench:(\w+)[^>]*-->\n(.*?)<!-- /bench:\1 -->", text, re.S)
    assert block, "README.md has no <!-- bench:NAME --> block"
    figure = re.search(r"\d+\.\d+", block.group(2))
    start = block.start(2) + figure.start()
    broken = tmp_path / "README.md"
    broken.write_text(text[:start] + "9" + text[start:])  # a hand-typed figure
    r = check(broken)
    assert r.returncode == 1 and f"bench:{block.group(1)}" in r.stderr, r.stderr


def test_results_say_where_they_came_from():
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        keys = {m.group(1) for m in re.finditer(r"^(machine|commit|command|date): \S", path.read_text(), re.M)}
        assert keys == {"machine", "commit", "command", "date"}, f"{path.name} lacks {sorted({'machine', 'commit', 'command', 'date'} - keys)}"
