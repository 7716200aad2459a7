"""The README, `docs/` and `results/` hold together: every relative link and #anchor resolves (anchors as GitHub
and MkDocs both make them from headings), every `ablate ...` command quoted in the README and `docs/` names a
subcommand that exists with options it knows (the parser is inspected, nothing is run), every `make` target
quoted exists, and no page names a folder of one machine. Seconds, no torch."""

from __future__ import annotations

import argparse
import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

from ablate.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = sorted((ROOT / "results").rglob("*.md"))
PAGES = [README, *DOCS, *RESULTS]
COMMAND_PAGES = PAGES
README_MAX_LINES = 260

FENCE = re.compile(r"^(\s*)(```|~~~)(.*)$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "text", "sh-session"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def parts(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(fenced code blocks as (language, text), the lines outside them)."""
    blocks, prose, current, lang = [], [], None, ""
    for line in path.read_text().splitlines():
        m = FENCE.match(line)
        if current is None and m:
            current, lang = [], m.group(3).strip().split(" ")[0].lower()
        elif current is not None and m and m.group(3).strip() == "":
            blocks.append((lang, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
        else:
            prose.append(line)
    assert current is None, f"{rel(path)}: a code fence is not closed"
    return blocks, prose


def github_slug(text: str) -> str:
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def mkdocs_slug(text: str) -> str:  # markdown.extensions.toc.slugify, as MkDocs uses it
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def heading_text(raw: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", raw)  # a link: its text
    text = re.sub(r"`([^`]*)`", r"\1", text)
    return re.sub(r"[*_]{2}([^*_]+)[*_]{2}", r"\1", text).strip()


@cache
def anchors(path: Path) -> tuple[set[str], set[str]]:
    """The anchors of a page's headings: (GitHub's, MkDocs')."""
    _, prose = parts(path)
    gh, mk = set(), set()
    for line in prose:
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            text = heading_text(m.group(2))
            gh.add(github_slug(text))
            mk.add(mkdocs_slug(text))
    return gh, mk


def links(path: Path) -> list[str]:
    _, prose = parts(path)
    text = CODE_SPAN.sub("", "\n".join(prose))
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_and_anchor_resolves(page):
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if path.startswith("/"):
            problems.append(f"{target}: an absolute link (it breaks on GitHub and in the site)")
            continue
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if not dest.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{target}: an anchor into a file that is not Markdown")
                continue
            gh, mk = anchors(dest)
            # the anchor must exist as GitHub renders the page and as the MkDocs site does
            if anchor not in gh or anchor not in mk:
                problems.append(f"{target}: no heading with anchor #{anchor} in {rel(dest)}")
    assert not problems, f"{rel(page)}:\n  " + "\n  ".join(problems)


# ---- commands -------------------------------------------------------------------------------------------
@cache
def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **action.choices}


def quoted_commands(path: Path) -> list[str]:
    """The text after each `ablate` in the page's shell code blocks and inline code spans."""
    blocks, prose = parts(path)
    texts = []
    for lang, text in blocks:
        if lang in SHELL_LANGS:
            text = re.sub(r"\\\n\s*", " ", text)  # line continuations
            texts += [re.sub(r"(^|\s)#.*$", "", line).removeprefix("$ ") for line in text.splitlines()]
    for line in prose:
        texts += [m.group(2) for m in CODE_SPAN.finditer(line)]
    out = []
    for text in texts:
        for segment in re.split(r"&&|;|\s\|\s", text):
            m = re.search(r"(?:^|[\s(])ablate\s+(\S.*)$", segment.strip())
            if m:
                out.append(m.group(1).strip())
    return out


def check_command(rest: str) -> list[str]:
    """Problems with one quoted `ablate REST`: an unknown subcommand, or an option its parser does not know."""
    parsers = subparsers()
    tokens = rest.replace("\\|", "|").split()
    first = tokens[0].strip("[]()`")
    if first.startswith("-"):
        names, options = [""], tokens
    elif re.fullmatch(r"[A-Z_]+|\.\.\.", first):  # a placeholder: `ablate COMMAND --help`
        return []
    else:
        names, options = first.split("|"), tokens[1:]
    problems = [f"ablate {rest}: no subcommand {n!r}" for n in names if n not in parsers]
    for token in options:
        for alt in token.strip("[](){},.`").split("|"):
            opt = alt.strip("[](){},.`").split("=")[0]
            if not re.fullmatch(r"--?[A-Za-z][\w-]*", opt):
                continue
            problems += [f"ablate {rest}: `ablate {n}` has no option {opt}" for n in names
                         if n in parsers and opt not in parsers[n]._option_string_actions]
    return problems


def test_commands_are_found_in_the_pages():
    # the README quotes the commands of its table and code blocks; the check would pass vacuously otherwise
    found = quoted_commands(README)
    assert len(found) >= 20 and any(c.startswith("export ") for c in found)


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=rel)
def test_every_quoted_ablate_command_parses(page):
    problems = [p for rest in quoted_commands(page) for p in check_command(rest)]
    assert not problems, f"{rel(page)}:\n  " + "\n  ".join(problems)


def test_the_command_check_catches_what_it_should():
    # an unknown subcommand and an unknown option are caught; placeholders and alternatives are understood
    assert check_command("frobnicate STUDY")
    assert check_command("run STUDY --wrokers 2")
    assert not check_command("run STUDY [--workers N]")
    assert not check_command("train|evaluate --skip-bad-rows")
    assert not check_command("evaluate CKPT --data D [--tta flip\\|authors]")
    assert not check_command("COMMAND --help")


@pytest.mark.parametrize("page", [README, *DOCS], ids=rel)
def test_every_quoted_make_target_exists(page):
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    blocks, prose = parts(page)
    texts = [t for lang, t in blocks if lang in SHELL_LANGS]
    texts += [m.group(2) for line in prose for m in CODE_SPAN.finditer(line)]
    quoted = {m.group(1) for t in texts for m in re.finditer(r"(?:^|\s)make ([\w-]+)", t)}
    assert quoted <= targets, f"{rel(page)}: no Makefile target {sorted(quoted - targets)}"


# ---- the README and the pages -------------------------------------------------------------------------
def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; the guides go to docs/, the numbers to results/"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_no_page_names_a_folder_of_one_machine(page):
    text = page.read_text()
    found = re.findall(r"(?<![\w.])/(?:work|home|Users|root|tmp|mnt|scratch)/[\w.-]+", text)
    assert not found, f"{rel(page)}: {found}"


def test_every_docs_page_is_in_the_site_and_the_map():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav) -> set[str]:
        out = set()
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out |= pages(value) if isinstance(value, list) else {value}
        return out

    nav = pages(config["nav"])
    # every page of docs/ and results/ is in the site's navigation (strict MkDocs would warn otherwise)
    assert {p.name for p in DOCS} <= nav
    assert {f"results/{rel(p).removeprefix('results/')}" for p in RESULTS} <= nav
    # and every guide is in the README's map of the documentation
    linked = {Path(t).name for t in links(README) if t.startswith("docs/")}
    assert {p.name for p in DOCS} - {"index.md", "api.md"} <= linked
