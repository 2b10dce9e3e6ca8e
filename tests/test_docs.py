"""The docs cannot rot: every train.py / predict.py / foldvision command in README.md and docs/ is
composed with the real configs (or parsed by the real CLI). The README's main command itself runs
end to end in test_demo.py."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT, compose_cfg
from foldvision.config import compose

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# the scripts and the wheel's console commands that take the same arguments
SCRIPTS = {
    "train.py": "train.py",
    "predict.py": "predict.py",
    "foldvision-train": "train.py",
    "foldvision-predict": "predict.py",
}


def _commands() -> list[tuple[str, list[str]]]:
    """(doc name, tokens) of every foldvision command in a bash block."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():  # join continued lines
                tokens, part = shlex.split(line, comments=True) + ["&&"], []
                for t in tokens:
                    if t != "&&":
                        part.append(t)
                        continue
                    scripts = [i for i, t in enumerate(part) if t in SCRIPTS]
                    if scripts:  # also behind a launcher: srun python train.py, torchrun ... train.py
                        i = scripts[0]
                        out.append((doc.name, ["python", SCRIPTS[part[i]], *part[i + 1 :]]))
                    elif part[:3] == ["python", "-m", "foldvision"] or part[:1] == ["foldvision"]:
                        out.append((doc.name, part))
                    part = []
    return out


def _first_sweep_value(token: str) -> str:
    """`key=a,b` (a sweep) -> `key=a`; commas inside [...] are a list, not a sweep."""
    if "=" not in token:
        return token
    key, value = token.split("=", 1)
    depth, cut = 0, len(value)
    for i, ch in enumerate(value):
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            cut = i
            break
    return f"{key}={value[:cut]}"


COMMANDS = _commands()


def test_docs_have_commands() -> None:
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("doc,tokens", COMMANDS, ids=[f"{d}:{' '.join(c)[:60]}" for d, c in COMMANDS])
def test_doc_command_composes(doc: str, tokens: list[str]) -> None:
    if tokens[0] == "foldvision" or tokens[:3] == ["python", "-m", "foldvision"]:
        from foldvision.cli import build_parser

        args = build_parser().parse_args(tokens[1:] if tokens[0] == "foldvision" else tokens[3:])
        if args.command == "check":
            compose(args.overrides, config_dir=ROOT / args.config_dir if args.config_dir else None)
        return
    script, args = (
        tokens[1],
        [t for t in tokens[2:] if t not in ("-m", "--help") and not t.startswith(("hydra.", "hydra/"))],
    )
    if "--cfg" in args:
        i = args.index("--cfg")
        del args[i : i + 2]
    args = [_first_sweep_value(a) for a in args]
    config_dir = None
    if "--config-dir" in args:  # the user's own config folder (the docs' example lives in docs/examples)
        i = args.index("--config-dir")
        config_dir, args = ROOT / args[i + 1], args[:i] + args[i + 2 :]
    name = "train" if script == "train.py" else "predict"
    cfg = compose(args, name, config_dir) if config_dir else compose_cfg(*args, config_name=name, defaults=False)
    if script == "train.py":  # the composed config builds what training builds first
        from foldvision.data.folds import resolve_strategy
        from foldvision.tasks import create_task

        resolve_strategy(cfg.cv.strategy, create_task(cfg.task).fold_strategy)
        assert cfg.scheduler.name in ("none", "cosine", "step", "plateau", "warmup_exp")
