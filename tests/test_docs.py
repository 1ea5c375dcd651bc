"""The Markdown files of the repository parse as CommonMark says and point at things that exist.

Every ``*.md`` file of the repository (``README.md``, ``docs/``, ``benchmarks/``, ``data/``, ``tests/``
fixtures, ...; not ``.venv``, ``outputs``, hidden folders or build folders) is parsed with
markdown-it-py's CommonMark parser, and:

1. **Fences close.** Every fenced code block ends on a closing fence line (the opener's marker
   character, at least as many of them, nothing else on the line), and every line that starts
   with three backticks or tildes (indented at most 3 spaces) is the first or the last line of a
   fenced block. The second rule catches the silent case: a line such as ``"``` With --rounds"``
   is not a closing fence under CommonMark (a closing fence takes no text after it), so the block
   runs on and the next fence pairs up wrongly, even though every block still "closes" somewhere.
2. **Relative links resolve.** Every link or image target that is not a URL (``http:``,
   ``https:``, ``mailto:``) or a bare ``#anchor`` names a file or folder relative to the Markdown
   file, once its ``#anchor`` part is dropped.
3. **Backticked repo paths exist.** An inline code span is taken for a repository path when it
   contains a ``/`` or ends in ``.py``, ``.md``, ``.yaml``, ``.json``, ``.sh`` or ``.toml``, and
   consists only of letters, digits, ``_``, ``.``, ``-`` and ``/`` (so no spaces, ``<``, ``*``,
   ``{``, ``$``, ``:`` or ``=``: placeholders, globs, model references such as
   ``testbed:student`` and commands are not paths), contains a letter, does not start with ``-``,
   does not contain ``...``, and does not start with ``outputs/`` or a run folder's own
   sub-folders (``train/``, ``eval/``, ``model/``, ``rollouts/``, ...: paths inside a run, not
   the repository). Such a path must exist relative to the repository root or to the Markdown
   file's folder; a bare file name (no ``/``, e.g. ``gft.yaml`` in a sentence about
   ``stages/paper/<model>/``) must be the name of some file or folder of the repository. Names
   that are legitimately not repository files are listed in ``NOT_FILES`` (hub ids, files every
   run version or run summary holds, paths relative to a benchmark folder); add to it only what
   can never be a repository path. Code blocks are not checked, except:
3b. **The README's file tree.** Every entry of the fenced block under "## File tree" (its path
   built from the indentation, two spaces a level; entries with ``<`` or ``*`` skipped) exists
   (``outputs/`` is git-ignored and exempt).
4. **One figure, one value.** The tiny models' vocabulary size, wherever a Markdown file states
   it (a sentence about the tiny / testbed models giving an ``N-token vocabulary``, an
   ``N-token ... tokenizer`` or ``vocabulary is/of N``), equals ``vocab_size`` in the committed
   ``data/models/*/config.json``. DESIGN.md's "Tiny models for tests" (an exploratory 512-token
   model measured before the testbed models existed) is a different model and is skipped. The
   row counts in ``data/benchmarks/README.md``'s table equal the shipped files' rows.

``test_checks_catch_defects`` runs each check on synthetic Markdown that breaks it, so a check
that stopped finding anything would fail there.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "venv", "outputs", "build", "dist", "node_modules", "__pycache__"}

PATH_SUFFIXES = (".py", ".md", ".yaml", ".json", ".sh", ".toml")
PATH_CHARS = re.compile(r"^[A-Za-z0-9_./-]+$")
# sub-folders of a run (outputs/<run>/...) and of its version folders: not repository paths
RUN_PREFIXES = (
    "outputs/", "sample-teacher/", "sample-self/", "verify/", "build-groups/", "train/", "eval/",
    "summary/", "model/", "rollouts/", "checkpoint/",
)
NOT_FILES = {
    # Hugging Face hub ids (models and datasets)
    "Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B", "Qwen/Qwen2.5-Math-72B-Instruct",
    "AI-MO/NuminaMath-CoT",
    # files of every version folder or run summary (docs/artifacts.md), not of the repository
    "manifest.json", "summary.json", "summary.md", "claims.md",
    # relative to a --benchmark-dir folder, not to the repository
    "tabmwp/test.jsonl",
}

VOCAB_SENTENCE = re.compile(r"\btiny (?:models?|teacher|student)\b|\btestbed\b|data/models", re.IGNORECASE)
VOCAB_FIGURE = re.compile(
    r"(\d[\d,]*)-token (?:byte-level BPE |BPE )?(?:vocabular|tokeni[sz]er)"
    r"|vocabulary (?:is|of) (\d[\d,]*)",
    re.IGNORECASE,
)

PARSER = MarkdownIt("commonmark").enable("table")


def repository_files() -> list[Path]:
    """Every file and folder of the working tree outside the skipped folders (pruned, not walked)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not (d in SKIP_DIRS or d.startswith(".") or d.endswith(".egg-info"))]
        found.extend(Path(folder) / name for name in dirs + files)
    return found


TREE = repository_files()
NAMES = {path.name for path in TREE}
FILES = sorted(path for path in TREE if path.suffix == ".md" and path.is_file())


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def fence_problems(text: str) -> list[str]:
    """Where ``text``'s fenced code blocks do not open and close as the writer meant."""
    lines = text.split("\n")
    problems = []
    bounds = set()
    for token in PARSER.parse(text):
        if token.type != "fence" or token.map is None:
            continue
        start, end = token.map
        bounds.update({start, end - 1})
        marker = token.markup
        last = lines[end - 1].strip() if end - 1 < len(lines) else ""
        closed = end - 1 > start and len(last) >= len(marker) and set(last) == {marker[0]}
        if not closed:
            problems.append(f"line {start + 1}: the fence opened here never closes")
    for number, line in enumerate(lines):
        indent = len(line) - len(line.lstrip(" "))
        if indent <= 3 and line.lstrip(" ").startswith(("```", "~~~")) and number not in bounds:
            problems.append(f"line {number + 1}: {line.strip()[:40]!r} looks like a fence but opens or closes none")
    return problems


def inline_children(tokens):
    """The inline tokens (code spans, links, images) of every block token."""
    return (child for token in tokens for child in token.children or [])


def inline_code(tokens) -> list[str]:
    return [child.content for child in inline_children(tokens) if child.type == "code_inline"]


def link_targets(tokens) -> list[str]:
    attr = {"link_open": "href", "image": "src"}
    targets = [child.attrGet(attr[child.type]) for child in inline_children(tokens) if child.type in attr]
    return [t for t in targets if t]


def looks_like_path(span: str) -> bool:
    if not ("/" in span or span.endswith(PATH_SUFFIXES)):
        return False
    if not PATH_CHARS.match(span) or not re.search(r"[A-Za-z]", span):
        return False
    if span.startswith(("-", "http")) or "..." in span or span.startswith(RUN_PREFIXES):
        return False
    if re.fullmatch(r"\.\w+", span):  # a file extension (`.json`), not a file
        return False
    return span not in NOT_FILES


def path_exists(span: str, folder: Path) -> bool:
    if (ROOT / span).exists() or (folder / span).exists():
        return True
    return "/" not in span and span in NAMES  # a bare file name: a file of that name in the repository


def missing_paths(text: str, folder: Path) -> list[str]:
    tokens = PARSER.parse(text)
    missing = []
    for span in inline_code(tokens):
        if looks_like_path(span) and not path_exists(span, folder):
            missing.append(f"`{span}`")
    for target in link_targets(tokens):
        if re.match(r"^(https?:|mailto:|#)", target):
            continue
        relative = target.split("#", 1)[0]
        if relative and not (folder / relative).exists():
            missing.append(f"({target})")
    return missing


def vocab_figures(text: str) -> list[tuple[int, str]]:
    """(figure, sentence) for each statement of the tiny models' vocabulary size in ``text``."""
    sentences = []
    for block in re.split(r"\n\s*\n|\n(?=#)", text):  # paragraphs and headings, then sentences
        sentences += re.split(r"(?<=[.;])\s+(?=[A-Z*`(])", re.sub(r"\s+", " ", block))
    found = []
    for sentence in sentences:
        if not VOCAB_SENTENCE.search(sentence) or "for tests" in sentence.lower():
            continue
        for match in VOCAB_FIGURE.finditer(sentence):
            figure = match.group(1) or match.group(2)
            found.append((int(figure.replace(",", "")), sentence[:120]))
    return found


def committed_vocab_sizes() -> set[int]:
    configs = sorted((ROOT / "data" / "models").glob("*/config.json"))
    assert configs, "no committed tiny model config in data/models/"
    return {json.loads(c.read_text())["vocab_size"] for c in configs}


def test_markdown_files_found():
    names = ids(FILES)
    assert "README.md" in names and "docs/DESIGN.md" in names and "benchmarks/RESULTS.md" in names


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_fences_close(path: Path):
    assert fence_problems(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_links_and_paths_exist(path: Path):
    assert missing_paths(path.read_text(encoding="utf-8"), path.parent) == []


def file_tree_entries(text: str) -> list[str]:
    """The paths the fenced block under ``## File tree`` lists (indentation: two spaces a level)."""
    heading = re.search(r"^## File tree\s*$", text, re.MULTILINE)
    assert heading, "the README has no '## File tree' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", text[heading.end():], re.MULTILINE | re.DOTALL)
    assert block, "no fenced block under '## File tree'"
    paths, parents = [], []
    for line in block.group(1).splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if not match or len(match.group(1)) >= 16:  # empty, or a description's continuation line
            continue
        level, name = len(match.group(1)) // 2, match.group(2)
        parents = parents[:level]
        path = "".join(parents) + name
        if "<" not in path and "*" not in path:
            paths.append(path)
        if name.endswith("/"):
            parents.append(name)
    return paths


def test_readme_file_tree_exists():
    entries = file_tree_entries((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "gftrepro/cli.py" in entries and "gftrepro/backends/hf.py" in entries
    # outputs/ is git-ignored: a fresh clone has none until the first run
    assert [e for e in entries if not (ROOT / e).exists() and e != "outputs/"] == []


def test_tiny_vocabulary_agrees_with_config():
    sizes = committed_vocab_sizes()
    assert len(sizes) == 1, f"the committed tiny models disagree: {sizes}"
    (size,) = sizes
    stated = []
    for path in FILES:
        for figure, sentence in vocab_figures(path.read_text(encoding="utf-8")):
            stated.append(figure)
            assert figure == size, f"{path.relative_to(ROOT)}: {figure} tokens, config says {size}: {sentence!r}"
    assert stated, "no Markdown file states the tiny models' vocabulary any more: is VOCAB_FIGURE stale?"


def test_benchmark_row_counts_agree_with_files():
    """data/benchmarks/README.md's table gives each shipped file's row count: it must be the file's."""
    folder = ROOT / "data" / "benchmarks"
    rows = re.findall(r"^\| (\w+) \| (\d+) \|", (folder / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert len(rows) >= 10, "the row-count table of data/benchmarks/README.md was not found"
    wrong = {}
    for name, stated in rows:
        with open(folder / name / "test.jsonl", encoding="utf-8") as handle:
            actual = sum(1 for line in handle if line.strip())
        if actual != int(stated):
            wrong[name] = (int(stated), actual)
    assert wrong == {}, "stated rows vs rows in the file"


def test_checks_catch_defects(tmp_path: Path):
    # a closing fence with text after it does not close (the README's old "``` With --rounds" line)
    broken = "```text\nout\n``` With `--rounds R`\nprose\n\n```bash\ngft run\n```\n"
    assert any("looks like a fence" in p for p in fence_problems(broken))
    assert any("never closes" in p for p in fence_problems("intro\n\n```bash\ngft run\n"))
    assert fence_problems("```bash\ngft run\n```\n\n~~~~\n~~~~\n") == []
    # a relative link and a backticked path that do not exist; URLs, anchors, placeholders pass
    (tmp_path / "here.md").write_text("x")
    text = (
        "[a](here.md) [b](here.md#part) [c](https://example.org/x) [d](#top) [e](gone.md)\n\n"
        "`README.md` `docs/` `no/such/file.py` `<run>/summary/claims.md` `testbed:student` "
        "`outputs/default` `--shard-index` `config.json` `gft run`\n"
    )
    assert missing_paths(text, tmp_path) == ["`no/such/file.py`", "(gone.md)"]
    # the vocabulary figure in its three phrasings, and the sentences that are not about it
    text = (
        "The tiny models have a 342-token vocabulary. The testbed models use a 384-token byte-level BPE "
        "tokenizer. The tiny model's vocabulary is 355 tokens. SmolLM2's tokenizer has 49,152 tokens. "
        "**Tiny models for tests:** a 512-token tokenizer."
    )
    assert [f for f, _ in vocab_figures(text)] == [342, 384, 355]
    # the file tree: nesting by indentation, continuation lines and placeholders skipped
    tree = (
        "## File tree\n\n```\npyproject.toml    metadata\ngftrepro/\n  cli.py    the commands\n"
        "                  continued description\n  backends/\n    hf.py   backend\n"
        "  gone.py   a module that went\nstages/\n  paper/<model>/*.yaml  recipes\ndata/models/   models\n```\n"
    )
    assert file_tree_entries(tree) == [
        "pyproject.toml", "gftrepro/", "gftrepro/cli.py", "gftrepro/backends/", "gftrepro/backends/hf.py",
        "gftrepro/gone.py", "stages/", "data/models/",
    ]
