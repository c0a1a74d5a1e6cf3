"""docs/method.md is the method's reference: the code cites its anchors, never the out-of-repo spec's numbers."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = "docs/method.md"
# "spec" (or "spec section(s)") or "quirk" before a number, or "section-" and a number: a document not in the repo
SPEC_CITATION = re.compile(r"\b[Ss]pec(?:\s+sections?)?\s+\d|\b[Qq]uirk\s+\d|\bsection-\d")
DOC_LINK = re.compile(r"docs/method\.md#([A-Za-z0-9_-]+)")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in names if name.endswith((".py", ".yaml", ".md", ".sh")) and (REPO / name).is_file()]


def anchors() -> set[str]:
    return set(re.findall(r'<a id="([^"]+)"></a>', (REPO / DOC).read_text(encoding="utf-8")))


def test_no_file_cites_the_spec_by_number():
    citations = [f"{path.relative_to(REPO)}:{number}: {match.group(0)}"
                 for path in tracked_text_files()
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 for match in SPEC_CITATION.finditer(line)]
    assert citations == []


def test_every_cited_anchor_exists():
    defined = anchors()
    assert {"cfw", "sft", "aggregation", "departures", *(f"quirk-{n}" for n in range(1, 13))} <= defined
    cited = {(str(path.relative_to(REPO)), anchor) for path in tracked_text_files()
             for anchor in DOC_LINK.findall(path.read_text(encoding="utf-8"))}
    assert len(cited) > 50  # the code cites the doc (a broken pattern would find nothing and pass)
    assert sorted(item for item in cited if item[1] not in defined) == []
    internal = re.findall(r"\]\(#([^)]+)\)", (REPO / DOC).read_text(encoding="utf-8"))
    assert internal and sorted(set(internal) - defined) == []
