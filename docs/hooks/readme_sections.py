"""MkDocs hook: sections of README.md included in the site's pages, so that README.md stays their one source.

README.md marks a section with ``<!-- docs:start NAME -->`` ... ``<!-- docs:end NAME -->``; a page includes it with
the line ``<!-- readme:NAME -->``. README's links into the site (``docs/serving.md``, ``CONTRIBUTING.md``) are
rewritten to the pages' own (``serving.md``, ``contributing.md``); any other relative link stays as written, so
``mkdocs build --strict`` refuses it. A page that names a section README.md does not have fails the build.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

INCLUDE = re.compile(r"^<!-- readme:([a-z][-a-z0-9]*) -->$", re.M)
SECTION = re.compile(r"^<!-- docs:start ([a-z][-a-z0-9]*) -->\n(.*?)^<!-- docs:end \1 -->$", re.M | re.S)
LINKS = ((re.compile(r"\]\(docs/"), "]("), (re.compile(r"\]\(CONTRIBUTING\.md"), "](contributing.md"))

_readme: dict[str, Path] = {}


def on_config(config, **kwargs):
    _readme["path"] = Path(config.config_file_path).resolve().parent / "README.md"
    return config


def sections() -> dict[str, str]:
    path = _readme["path"]
    if not path.is_file():
        raise PluginError(f"readme_sections: {path} is missing")
    text = path.read_text(encoding="utf-8")
    found = {m.group(1): m.group(2) for m in SECTION.finditer(text)}
    for pattern, repl in LINKS:
        found = {k: pattern.sub(repl, v) for k, v in found.items()}
    return found


def on_page_markdown(markdown, page, config, files, **kwargs):
    names = INCLUDE.findall(markdown)
    if not names:
        return markdown
    found = sections()
    missing = [n for n in names if n not in found]
    if missing:
        raise PluginError(f"readme_sections: docs/{page.file.src_uri} includes README section(s) "
                          f"{', '.join(missing)}, which README.md does not mark with <!-- docs:start NAME -->")
    return INCLUDE.sub(lambda m: found[m.group(1)].rstrip("\n"), markdown)
