"""MkDocs hooks (``hooks:`` in ``docs/mkdocs.yml``): the generated references, and snippets
read from the repository.

- A page holding ``<!-- groqbatch:config-reference -->`` gets the configuration reference
  there (:mod:`gen_config_ref`, from the job config's pydantic models); one holding
  ``<!-- groqbatch:cli-reference -->`` gets the command-line reference (:mod:`gen_cli_ref`,
  from the click commands). Both are generated at every build, so they cannot go stale.
- ``pymdownx.snippets`` reads files relative to the repository's root, whatever folder the
  build runs from, so a page can show ``configs/quickstart.toml`` as it is
  (``--8<-- "configs/quickstart.toml"``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent


def load(name: str) -> ModuleType:
    """A module of this folder (``gen_config_ref``), which is not a package."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def expand(markdown: str) -> str:
    """``markdown`` with each reference marker replaced by its generated reference."""
    for name, render in (("gen_config_ref", "render_config_reference"),
                         ("gen_cli_ref", "render_cli_reference")):
        module = load(name)
        if module.MARKER in markdown:
            markdown = markdown.replace(module.MARKER, getattr(module, render)())
    return markdown


def on_config(config: Any) -> Any:
    snippets = config["mdx_configs"].setdefault("pymdownx.snippets", {})
    snippets["base_path"] = [str(REPO)]
    snippets["check_paths"] = True
    return config


def on_page_markdown(markdown: str, **_: Any) -> str:
    return expand(markdown)
