"""The commands the documentation shows, as a user would type them (used by
tests/test_doc_commands.py and tests/test_character_recipe.py).

Collected from README.md and docs/*.md (fenced code blocks and inline code spans) and from the
header comments of conf/**/*.yaml: every `python <script>.py ...` whose script is in the
repository and every `make <target> ...`. Line continuations (`\\`) are joined, `# comments`
and trailing `(annotations)` dropped; words in `[...]` are optional (kept unless they are a
generic `key=value ...`). A `make` target is mapped to the script its Makefile recipe runs, with
the recipe's fixed words first and the command line's Hydra overrides after them (the Makefile's
own `HYDRA_ARGS` filter says which `VAR=value` words are not overrides).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHONS = frozenset({"python", "python3", ".venv/bin/python", "$(PY)"})
# a placeholder value: `<run>`, `...`, an all-caps word (PATH, DIR, RUN_DIR)
_ANGLE = re.compile(r"<([^<>=]+)>")
_CAPS = re.compile(r"^[A-Z][A-Z_]*$")
# a word standing for any further arguments: `...`, `<job overrides>`
_ANY_WORDS = re.compile(r"\.\.\.|<[^>=]+>")
# a command inside a comment line after prose ("# Train F:  python train.py ...")
_MID_LINE = re.compile(r"(?:^|\s)((?:python3?|\.venv/bin/python) \S+\.py(?:\s.*)?)$")


@dataclass(frozen=True)
class DocCommand:
    """One documented command: where it is and its words (after `python`/`make`)."""

    file: str  # relative to the repository root
    line: int  # 1-based line where the command starts
    text: str  # as written (continuations joined)
    program: str  # "python" or "make"
    words: tuple[str, ...]  # script/target first for python/make, then the arguments
    optional: tuple[str, ...] = field(default=())  # words shown in [...] (kept ones)
    source: str = "block"  # "block" (fenced block / comment line) or "span" (inline code)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


# --------------------------------------------------------------------------------------------
# parsing
def _words(text: str) -> tuple[list[str], list[str]] | None:
    """Shell words of a command (comments and trailing `(notes)` dropped), split into
    required and optional (`[...]`) words; None when the shell could not split it."""
    try:
        words = _join_angle_placeholders(shlex.split(text, comments=True))
    except ValueError:
        return None
    required: list[str] = []
    optional: list[str] = []
    depth = 0
    for word in words:
        if word.startswith("(") and depth == 0:
            break  # "(make preview)", "(compare its metrics.json ...)": prose after the command
        opens = word.startswith("[")
        if opens:
            depth += 1
            word = word[1:]
        target = optional if depth > 0 else required
        closes = word.endswith("]") and depth > 0 and (opens or "[" not in word)
        if closes:
            word = word[:-1]
            depth -= 1
        if word and not _ANY_WORDS.fullmatch(word):
            target.append(word)
    optional = [w for w in optional if "..." not in w and w != "key=value"]
    return required, optional


def _join_angle_placeholders(words: list[str]) -> list[str]:
    """`<job overrides>` is one placeholder, though the shell splits it in two."""
    joined: list[str] = []
    pending: list[str] = []
    for word in words:
        pending.append(word)
        text = " ".join(pending)
        if text.count("<") <= text.count(">"):
            joined.append(text)
            pending = []
    return joined + pending


def _command(file: str, line: int, text: str, source: str = "block") -> DocCommand | None:
    split = _words(text)
    if split is None:
        return None
    required, optional = split
    if len(required) < 2:
        return None
    program, first = required[0], required[1]
    if program in PYTHONS and first.endswith(".py") and (REPO_ROOT / first).is_file():
        kind = "python"
    elif program == "make" and re.fullmatch(r"[a-z][\w-]*", first):
        kind = "make"
    else:
        return None
    text = " ".join(text.split())
    return DocCommand(file, line, text, kind, tuple(required[1:]), tuple(optional), source)


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join `\\` continuations: (first line number, joined text)."""
    joined: list[tuple[int, str]] = []
    start, parts = None, []
    for number, text in lines:
        stripped = text.rstrip()
        if start is None:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1])
            continue
        parts.append(stripped)
        joined.append((start, " ".join(p.strip() for p in parts)))
        start, parts = None, []
    if parts:
        joined.append((start, " ".join(p.strip() for p in parts)))
    return joined


def _inline_spans(file: str, text: str) -> list[DocCommand]:
    """Commands in `code spans` (they may wrap over lines in markdown prose)."""
    commands = []
    for match in re.finditer(r"`([^`]+)`", text):
        if match.group(1).count("\n") > 2:
            continue
        line = text.count("\n", 0, match.start()) + 1
        command = _command(file, line, " ".join(match.group(1).split()), "span")
        if command is not None:
            commands.append(command)
    return commands


def markdown_commands(path: Path) -> list[DocCommand]:
    file = str(path.relative_to(REPO_ROOT))
    fenced: list[tuple[int, str]] = []
    prose: list[str] = []
    in_fence = False
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text.lstrip().startswith("```"):
            in_fence = not in_fence
            prose.append("")
            continue
        if in_fence:
            fenced.append((number, text))
            prose.append("")
        else:
            prose.append(text)
    commands = [
        command
        for number, text in _logical_lines(fenced)
        if (command := _command(file, number, text)) is not None
    ]
    return commands + _inline_spans(file, "\n".join(prose))


def yaml_header_commands(path: Path) -> list[DocCommand]:
    """Commands in the leading comment block of a config file: comment lines that are (or end
    in) a `python <script>.py` / `make` command, with continuations, and code spans."""
    file = str(path.relative_to(REPO_ROOT))
    header: list[tuple[int, str]] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.startswith("#"):
            break
        header.append((number, text[1:]))
    in_command: list[tuple[int, str]] = []
    continuing = False
    for number, text in header:
        body = text.strip()
        if not continuing:
            match = _MID_LINE.search(body)
            if body.startswith("make "):
                pass
            elif match and body[: match.start(1)].count("`") % 2 == 0:
                body = match.group(1)
            else:
                continue
        in_command.append((number, body))
        continuing = body.endswith("\\")
    commands = [
        command
        for number, text in _logical_lines(in_command)
        if (command := _command(file, number, text)) is not None
    ]
    seen = {(c.line, c.words) for c in commands}
    spans = _inline_spans(file, "\n".join(text for _, text in header))
    return commands + [s for s in spans if (s.line, s.words) not in seen]


def doc_files() -> list[Path]:
    files = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    return [f for f in files if f.is_file()]


def all_doc_commands() -> list[DocCommand]:
    commands: list[DocCommand] = []
    for path in doc_files():
        commands += markdown_commands(path)
    for path in sorted((REPO_ROOT / "conf").rglob("*.yaml")):
        commands += yaml_header_commands(path)
    return commands


# --------------------------------------------------------------------------------------------
# the Makefile
@dataclass(frozen=True)
class MakeTarget:
    name: str
    recipe: tuple[str, ...]
    script: str | None  # the Python script the recipe runs with the Hydra overrides
    fixed: tuple[str, ...]  # the recipe's own words after the script


def make_targets() -> dict[str, MakeTarget]:
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    targets: dict[str, MakeTarget] = {}
    name, recipe = None, []

    def close() -> None:
        if name is not None:
            targets[name] = _target(name, tuple(recipe))

    for line in text.splitlines():
        match = re.match(r"^([a-z][\w-]*):(?!=)", line)
        if match:
            close()
            name, recipe = match.group(1), []
        elif line.startswith("\t") and name is not None:
            recipe.append(line.strip())
        elif line.strip() and not line.startswith("\t"):
            close()
            name, recipe = None, []
    close()
    return targets


def _target(name: str, recipe: tuple[str, ...]) -> MakeTarget:
    for line in recipe:
        # $(HYDRA_ARGS): key=value words and ARGS; $(ARGS) alone: a script's own options
        if "$(HYDRA_ARGS)" not in line and "$(ARGS)" not in line:
            continue
        words = line.replace("$(HYDRA_ARGS)", " ").replace("$(ARGS)", " ").split()
        for i, word in enumerate(words):
            if word.endswith(".py") and (i == 0 or words[i - 1] in PYTHONS):
                return MakeTarget(name, recipe, word, tuple(words[i + 1 :]))
    return MakeTarget(name, recipe, None, ())


def make_variables_not_overrides() -> set[str]:
    """`VAR` names whose `VAR=value` words the Makefile keeps out of the Hydra overrides."""
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^HYDRA_ARGS\s*=\s*\$\(filter-out ([^,]+),", text, re.MULTILINE)
    names = set(re.findall(r"([A-Z_]+)=%", match.group(1))) if match else set()
    return names


def make_variables() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Z_]+)\s*[?:]?=", text, re.MULTILINE))


# --------------------------------------------------------------------------------------------
# entry points
def hydra_config_name(script: str) -> str | None:
    """The `config_name` of the script's `@hydra.main`, or None for a script without Hydra."""
    source = (REPO_ROOT / script).read_text(encoding="utf-8")
    if "@hydra.main" not in source:
        return None
    match = re.search(r"config_name\s*=\s*[\"']([\w/]+)[\"']", source)
    return match.group(1) if match else None


def is_placeholder(value: str) -> bool:
    """`<run>`, `...`, an all-caps word (PATH, DIR, X): a value the reader fills in."""
    return bool(_ANGLE.fullmatch(value)) or value == "..." or bool(_CAPS.match(value))


def substitute(word: str, fixtures: dict[str, str]) -> str:
    """A `key=value` word with its placeholders replaced by fixture values.

    `<name>` -> fixtures[name] (spaces as underscores; unknown names: `<run>`'s value);
    `...` or an all-caps value (PATH, DIR) -> fixtures[key] or a folder under fixtures["root"];
    an absolute path (`/data/my_character`) -> the same path under fixtures["root"].
    """
    key, sep, value = word.partition("=")
    if not sep:
        return word
    bare_key = key.lstrip("+~")
    if value == "..." or _CAPS.match(value):
        value = fixtures.get(bare_key, f"{fixtures['root']}/{bare_key.replace('.', '_')}")
    value = _ANGLE.sub(lambda m: fixtures.get(m.group(1).replace(" ", "_"), fixtures["run"]), value)
    if value.startswith("/") and not value.startswith(fixtures["root"]):
        value = fixtures["root"] + value
    return f"{key}={value}"
