"""A scripted read of the user guide (README.md and docs/*.md) as a new user would: every file it names exists,
every command it shows composes with the project's config, every config key it names exists, the README names
the environment before its first script command, the cost table matches the plan, and nothing refers to
documents outside the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from freeenergy.plan import plan_study

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
GUIDE = "\n".join([README, *(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))])
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
TOP_LEVEL_KEYS = (
    "data",
    "model",
    "optim",
    "train",
    "free_energy",
    "downstream",
    "metrics",
    "analysis",
    "calibrate",
    "sweep",
    "shard",
    "paths",
    "launch",
    "hydra",
)
FILE_SUFFIXES = (".json", ".py", ".yaml", ".md", ".csv", ".png", ".pdf", ".pt", ".tsv", ".txt", ".sh", ".toml")
TRACKED_PREFIXES = (
    "conf/",
    "scripts/",
    "src/",
    "docs/",
    "benchmarks/",
    "tests/",
    "results/default/",
    "figures/default/",
    "requirements",
    "pyproject",
    "reproduce.sh",
    "README",
)


def code_blocks(text: str, language: str = "bash") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def commands(text: str) -> list[list[str]]:
    """The commands of the README's bash blocks, continuation lines joined, comments dropped, as tokens."""
    found = []
    for block in code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # VAR=value before the command
                tokens = tokens[1:]
            if tokens:
                found.append(tokens)
    return found


def study_commands() -> list[list[str]]:
    return [
        t for t in commands(GUIDE) if t[0] == "./reproduce.sh" or (t[0] == "python" and t[1].startswith("scripts/"))
    ]


def overrides_of(tokens: list[str]) -> list[str]:
    """A command's Hydra overrides for compose: flags dropped, a multirun sweep reduced to its first value."""
    overrides = []
    for token in tokens:
        if "=" not in token or token.startswith("-"):
            continue
        key, value = token.split("=", 1)
        value = re.sub(r"<[^<>]*>", "x", value)  # a placeholder the reader fills in, such as <run_id>
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return overrides


def compose_with_hydra(overrides: list[str]):
    """The config a script composes: the rank command's when a rank.* key is given (as scripts/rank.py and
    scripts/calibrate_sgld.py do), else the study's."""
    config_name = "rank/default" if any(o.lstrip("+~").startswith("rank.") for o in overrides) else "config"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def test_every_file_the_readme_names_exists():
    named = set(re.findall(r"\]\(([^)#\s]+)\)", GUIDE)) | set(re.findall(r"`([^`\s]+)`", GUIDE))
    for tokens in commands(GUIDE):
        named |= {t for t in tokens if "/" in t and "=" not in t}
    checked = sorted(p for p in named if p.startswith(TRACKED_PREFIXES) and not re.search(r"[<>{}*…]", p))
    missing = [p for p in checked if not (REPO / p.rstrip("/")).exists()]
    assert len(checked) > 20 and not missing, missing


def test_every_script_command_names_a_script_and_every_experiment_exists():
    for tokens in study_commands():
        if tokens[0] == "python":
            assert (REPO / tokens[1]).is_file(), tokens
        elif len(tokens) > 1 and "=" not in tokens[1] and not tokens[1].startswith("-"):
            assert tokens[1] in EXPERIMENTS + ["test", "setup", "smoke"], tokens


@pytest.mark.parametrize("tokens", study_commands(), ids=lambda t: " ".join(t)[:80])
def test_every_readme_command_composes_with_the_config_as_written(tokens):
    overrides = overrides_of(tokens)
    if tokens[0] == "./reproduce.sh" and len(tokens) > 1 and tokens[1] in EXPERIMENTS:
        overrides = [f"experiment={tokens[1]}"] + overrides
    if tokens[0] == "./reproduce.sh" and tokens[1:2] == ["test"]:
        return  # pytest arguments, not overrides
    compose_with_hydra(overrides)


def test_every_config_key_the_readme_names_exists():
    configs = [
        OmegaConf.to_container(compose_with_hydra([f"experiment={e}", f"hydra/launcher={launcher}"]))
        for e in EXPERIMENTS
        for launcher in ("slurm", "joblib")
    ] + [OmegaConf.to_container(compose_with_hydra(["rank.model=resnet18"]))]  # the rank command's config
    keys = set()
    for token in re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)(?:=[^`]*)?`", GUIDE) + [
        o.split("=")[0] for t in study_commands() for o in overrides_of(t)
    ]:
        if token.split(".")[0] in TOP_LEVEL_KEYS and not token.endswith(FILE_SUFFIXES):
            keys.add(token.lstrip("+"))
    unknown = [
        k
        for k in sorted(keys)
        if not any(OmegaConf.select(OmegaConf.create(c), k, default="<none>") != "<none>" for c in configs)
    ]
    assert len(keys) > 20 and not unknown, unknown


def test_the_environment_is_named_before_the_first_script_command():
    first_script = re.search(r"^python scripts/", README, flags=re.M).start()  # the first command line
    assert "source .venv/bin/activate" in README[:first_script]


def test_the_cost_table_matches_the_plan():
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", GUIDE, flags=re.M)
    assert sorted(r[0] for r in rows) == EXPERIMENTS
    for experiment, runs, checkpoints, estimates, finetunings in rows:
        plan = plan_study(compose_config([f"experiment={experiment}"]))
        assert (plan.runs, plan.checkpoints, plan.free_energy_estimates, plan.finetunings) == (
            int(runs),
            int(checkpoints),
            int(estimates),
            int(finetunings),
        ), experiment


@pytest.mark.parametrize(
    "path",
    [
        "README.md",
        "benchmarks/README.md",
        *[str(p.relative_to(REPO)) for p in sorted(REPO.glob("docs/*.md")) + sorted(REPO.glob("conf/**/*.yaml"))],
    ],
)
def test_no_reference_to_documents_outside_the_repository(path):
    text = (REPO / path).read_text()
    for dangling in ("paper.md", "the issue's", "the issue "):
        assert dangling not in text, f"{path} mentions {dangling!r}, which is not in the repository"
