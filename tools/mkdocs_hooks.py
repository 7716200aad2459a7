"""MkDocs hooks for `make docs`: the site also holds `results/` (the measured numbers live beside the
docs, not inside them, so that both read on GitHub unbuilt).

The Markdown links stay relative and correct on GitHub (`docs/x.md` links `../results/y.md`, and
`results/y.md` links `../docs/x.md`); for the site, `results/` is added as if it were `docs/results/`, and
those links are rewritten to match."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "results"


def on_files(files: Files, config) -> Files:
    for path in sorted((ROOT / RESULTS).rglob("*")):
        if path.is_file() and path.suffix in (".md", ".csv"):
            files.append(File(path.relative_to(ROOT).as_posix(), str(ROOT), config["site_dir"],
                              config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri.startswith(f"{RESULTS}/"):
        return re.sub(r"\]\(((?:\.\./)+)docs/", r"](\1", markdown)  # results/x.md: ../docs/y.md -> ../y.md
    return re.sub(r"\]\(\.\./results/", f"]({RESULTS}/", markdown)  # docs/x.md: ../results/y.md -> results/y.md
