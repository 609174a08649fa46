"""The documentation site (``docs/``) against the code it documents.

Every config key reachable from :class:`jobs.JobSpec` has a description and a row in the
generated configuration reference; every command and option of ``groqbatch`` has help and a
place in the generated command-line reference; every page of the nav exists; the examples the
pages show load as they are. The site itself is built by ``.ci/run`` (``mkdocs build
--strict``); these checks need no MkDocs.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
import types
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from jobs import JobSpec
from pipeline.api import job_from_dict
from pipeline.cli import main
from pipeline.emulator import load_scenario

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = DOCS / "src"


def docs_module(name: str) -> ModuleType:
    """``docs/hooks.py``, which loads the generators beside it (``docs/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("groqbatch_docs_hooks", DOCS / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks if name == "hooks" else hooks.load(name)


# -- the config models, walked independently of the generator -----------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple):
        for arg in typing.get_args(annotation):
            found += _models_in(arg)
    return found


def every_config_key(model: type[BaseModel] = JobSpec, prefix: str = "") -> dict[str, FieldInfo]:
    """Dotted path → field, for every key of every table a job config may hold."""
    keys: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        keys.setdefault(path, field)
        array = typing.get_origin(field.annotation) in (list, tuple)
        for sub in _models_in(field.annotation):
            for sub_path, sub_field in every_config_key(sub, f"{path}[]." if array else f"{path}.").items():
                keys.setdefault(sub_path, sub_field)
    return keys


def test_the_walk_reaches_every_table() -> None:
    keys = every_config_key()
    for path in ("name", "input.on_duplicate_id", "prompt.response_format.schema",
                 "policy.fallback.max_attempts", "policy.budget.max_dollars",
                 "local.throughput_lines_per_s", "local.scenario", "output.path",
                 "evaluate.scorers[].function", "evaluate.scorers[].tolerance"):
        assert path in keys, path
    assert len(keys) > 60


def test_every_config_key_has_a_description() -> None:
    undocumented = [path for path, field in every_config_key().items()
                    if not (field.description or "").strip()]
    assert not undocumented, f"add Field(description=...) to: {', '.join(undocumented)}"
    too_short = [path for path, field in every_config_key().items()
                 if len((field.description or "").split()) < 4]
    assert not too_short, f"describe these for a user, in a sentence: {', '.join(too_short)}"


def test_a_key_without_a_description_is_caught() -> None:
    class Bare(BaseModel):
        documented: int = 1
        nested: JobSpec | None = None

    keys = every_config_key(Bare)
    assert keys["documented"].description is None
    assert "nested.policy.fallback.concurrency" in keys


def test_the_configuration_reference_lists_every_key() -> None:
    reference = docs_module("gen_config_ref").render_config_reference()
    for path in every_config_key():
        assert f'id="{path.replace("[]", "")}"' in reference, f"{path} has no row"
        assert f"<code>{path}</code>" in reference.replace("<wbr>", ""), f"{path} is not named"
    for field in every_config_key().values():
        assert _flat(field.description or "") in _flat(reference)


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\\|", "|"))


def _row(reference: str, path: str) -> str:
    return next(line for line in reference.splitlines() if f'id="{path}"' in line)


def test_the_configuration_reference_gives_type_and_default() -> None:
    reference = docs_module("gen_config_ref").render_config_reference()
    assert "| integer (≥ 1, ≤ 20) | `3` |" in _row(reference, "policy.fallback.max_attempts")
    assert '| "batch" \\| "sync" | `"batch"` |' in _row(reference, "policy.mode")
    assert "| number (> 0) | `100.0` |" in _row(reference, "local.throughput_lines_per_s")
    assert "| string | required |" in _row(reference, "input.path")
    assert "*Only with `kind = \"regex\"`.*" in _row(reference, "evaluate.scorers.pattern")
    assert "### `[[evaluate.scorers]]`" in reference
    assert "### `[policy.fallback]`" in reference


# -- the command line ----------------------------------------------------------------------


def every_command(group: click.Group = main, prefix: str = "groqbatch") -> dict[str, click.Command]:
    commands: dict[str, click.Command] = {prefix: group}
    context = click.Context(group, info_name=prefix)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        if isinstance(command, click.Group):
            commands.update(every_command(command, f"{prefix} {name}"))
        else:
            commands[f"{prefix} {name}"] = command
    return commands


def test_every_command_and_option_has_help() -> None:
    commands = every_command()
    assert {"groqbatch run", "groqbatch serve", "groqbatch adapters pack"} <= set(commands)
    missing = []
    for path, command in commands.items():
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip():
                missing.append(f"{path} {param.opts[0]}")
    assert not missing, f"give these help text: {', '.join(missing)}"


def test_the_cli_reference_lists_every_command_and_option() -> None:
    reference = docs_module("gen_cli_ref").render_cli_reference()
    sections = dict(re.findall(r"^## `([^`]+)`\n(.*?)(?=^## `|\Z)", reference, re.M | re.S))
    for path, command in every_command().items():
        assert path in sections, f"`{path}` is not in the CLI reference"
        assert f"Usage: {path}" in sections[path]
        first_line = (command.help or "").strip().splitlines()[0]
        assert first_line in sections[path]
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for opt in param.opts:
                    assert opt in sections[path], f"{path} {opt} is not in the CLI reference"


# -- the site ------------------------------------------------------------------------------


class _SiteLoader(yaml.SafeLoader):
    """mkdocs.yml may hold ``!!python/name:`` tags; reading the nav needs none of them."""


_SiteLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)


def _nav_files(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    site = yaml.load((DOCS / "mkdocs.yml").read_text(), Loader=_SiteLoader)
    assert site["docs_dir"] == "src"
    assert site["theme"]["name"] == "material"
    in_nav = _nav_files(site["nav"])
    assert {"configuration.md", "cli.md", "local-server.md", "recipes/enrichment.md"} <= set(in_nav)
    for page in in_nav:
        assert (PAGES / page).is_file(), f"the nav names {page}, which does not exist"
    pages = {p.relative_to(PAGES).as_posix() for p in PAGES.rglob("*.md")}
    assert pages - set(in_nav) == set(), "add these pages to the nav in docs/mkdocs.yml"


def test_the_reference_pages_are_generated_into_place() -> None:
    hooks = docs_module("hooks")
    config_page = (PAGES / "configuration.md").read_text()
    cli_page = (PAGES / "cli.md").read_text()
    assert hooks.load("gen_config_ref").MARKER in config_page
    assert hooks.load("gen_cli_ref").MARKER in cli_page
    built_config, built_cli = hooks.expand(config_page), hooks.expand(cli_page)
    assert "<!-- groqbatch:" not in built_config + built_cli
    assert 'id="local.scenario"' in built_config
    assert "## `groqbatch adapters upload`" in built_cli


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def test_the_fault_scenario_on_the_local_server_page_loads(tmp_path: Path) -> None:
    (block,) = [b for b in _blocks((PAGES / "local-server.md").read_text(), "toml")
                if b.startswith("seed =")]
    scenario_file = tmp_path / "faults.toml"
    scenario_file.write_text(block)
    scenario = load_scenario(scenario_file)
    assert scenario.seed == 7
    assert scenario.flex_capacity == 4


@pytest.mark.parametrize("page", ["docs/src/configuration.md", "README.md"])
def test_the_example_config_loads(page: str) -> None:
    blocks = [b for b in _blocks((ROOT / page).read_text(), "toml") if b.startswith("name =")]
    assert blocks, f"{page} shows no job config"
    for block in blocks:
        spec = job_from_dict(tomllib.loads(block), base_dir=ROOT / "configs")
        assert spec.input_path.is_file()
