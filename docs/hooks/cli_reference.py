"""MkDocs hook: the CLI reference (docs/cli.md) rendered from bge-export's own argparse parsers at build time.

docs/cli.md holds the marker ``<!-- cli-reference -->``; this hook replaces it with one section per command:
the parser's ``format_help()`` at a fixed width of 100 columns, so the page is the same on every machine and
always says what ``bge-export COMMAND --help`` says.

The parsers come from ``bge_export.cli.command_parsers()`` (command name -> parser; "build" is the main
``bge-export --model M --target T`` parser). Where that function does not exist yet, the hook falls back to
``bge_export.cli.main_parser()``, ``runtimes.server.build_parser()``, ``runtimes.corpus.build_parser()`` and the
parsers the other ``cmd_*`` functions build. Anything else fails the build: a parser that cannot be built, a
command of ``bge_export.cli.COMMANDS`` without a section, or a missing marker.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

PAGE = "cli.md"
MARKER = "<!-- cli-reference -->"
WIDTH = "100"
log = logging.getLogger("mkdocs.hooks.cli_reference")

# the order of the sections when the parsers come from the fallback
FALLBACK_ORDER = ("build", "inspect", "parity", "bench", "families", "lint", "serve", "embed")

_cache: dict[str, str] = {}


class _Captured(Exception):
    """Raised by the patched parse_args to hand the parser a cmd_* function built back to the hook."""


def _parser_of(command_fn) -> argparse.ArgumentParser:
    """The parser a ``cmd_*(argv)`` function builds, taken at its parse_args call (the command never runs)."""
    original = argparse.ArgumentParser.parse_args

    def grab(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = grab
    try:
        command_fn([])
    except _Captured as got:
        return got.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise PluginError(f"cli_reference: {command_fn.__name__}([]) returned without building an argparse parser")


def _fallback_parsers(cli) -> dict[str, argparse.ArgumentParser]:
    from runtimes.corpus import build_parser as embed_parser
    from runtimes.server import build_parser as serve_parser

    parsers = {"build": cli.main_parser(), "serve": serve_parser(), "embed": embed_parser()}
    for name in FALLBACK_ORDER:
        if name not in parsers:
            parsers[name] = _parser_of(getattr(cli, f"cmd_{name}"))
    return {name: parsers[name] for name in FALLBACK_ORDER}


def collect_parsers() -> tuple[dict[str, argparse.ArgumentParser], str]:
    try:
        from bge_export import cli
    except Exception as exc:  # noqa: BLE001 - any import failure must stop the build, with its cause
        raise PluginError(f"cli_reference: cannot import bge_export.cli ({type(exc).__name__}: {exc}); install the "
                          "project (pip install -e '.[docs]') before building the docs") from exc
    if hasattr(cli, "command_parsers"):
        source = "bge_export.cli.command_parsers()"
        try:
            parsers = dict(cli.command_parsers())
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"cli_reference: {source} failed ({type(exc).__name__}: {exc})") from exc
    else:
        source = "bge_export.cli.main_parser(), runtimes.server / runtimes.corpus build_parser() and the cmd_* parsers"
        try:
            parsers = _fallback_parsers(cli)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"cli_reference: no bge_export.cli.command_parsers(), and the fallback failed "
                              f"({type(exc).__name__}: {exc})") from exc
    if not parsers:
        raise PluginError(f"cli_reference: {source} returned no parsers")
    bad = [name for name, p in parsers.items() if not isinstance(p, argparse.ArgumentParser)]
    if bad:
        raise PluginError(f"cli_reference: {source} returned non-parsers for {', '.join(bad)}")
    missing = [c for c in ("build", *getattr(cli, "COMMANDS", ())) if c not in parsers]
    if missing:
        raise PluginError(f"cli_reference: {source} has no parser for {', '.join(missing)}: the CLI reference "
                          "would miss a command")
    return parsers, source


def _help(parser: argparse.ArgumentParser) -> str:
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "NO_COLOR")}
    os.environ["COLUMNS"] = WIDTH  # argparse's HelpFormatter reads the width from COLUMNS
    os.environ["NO_COLOR"] = "1"  # Python 3.14's argparse colours help text otherwise
    try:
        text = parser.format_help()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if "```" in text:
        raise PluginError(f"cli_reference: the help of {parser.prog!r} contains a code fence")
    return text.rstrip() + "\n"


def render() -> str:
    if "text" in _cache:
        return _cache["text"]
    parsers, source = collect_parsers()
    log.info("cli_reference: %d commands from %s", len(parsers), source)
    parts = []
    for name, parser in parsers.items():
        title = f"`{parser.prog}`" + (" (build a bundle)" if name == "build" else "")
        parts.append(f"## {title} {{ #{name} }}\n\n```text\n{_help(parser)}```\n")
    _cache["text"] = "\n".join(parts)
    return _cache["text"]


def on_config(config, **kwargs):
    # import the project from this checkout even when it is not installed in the environment
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    _cache.clear()  # mkdocs serve: render again after a change
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    if page.file.src_uri != PAGE:
        return markdown
    if markdown.count(MARKER) != 1:
        raise PluginError(f"cli_reference: docs/{PAGE} must hold the marker {MARKER} exactly once")
    return markdown.replace(MARKER, render())
