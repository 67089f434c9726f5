"""The fenced blocks of the documentation (README.md, docs/*.md) and the commands in them, for
tests/test_docs_commands.py.

Runnable blocks: an HTML comment `<!-- runnable: NAME -->` on the line right before a block's opening fence marks
it. The marked blocks of one page with the same NAME are one recipe, run in order from one folder: a `bash` block
is commands, any other block is a file whose first comment line, `# <path>` (anything after a colon is a remark),
says where it goes.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^<!--\s*runnable:\s*([\w-]+)\s*-->\s*$")
SHELL_LANGUAGES = ("bash", "sh", "shell")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    recipe: str | None  # the NAME of its runnable marker

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL_LANGUAGES

    def file_path(self) -> str:
        """A file block's path, from its first comment line `# <path>` or `# <path>: remark` (directives such as
        Hydra's `# @package _global_`, which must come first in a YAML file, are skipped)."""
        lines = [line for line in self.text.splitlines() if not line.startswith("# @")]
        if not lines or not lines[0].startswith("# "):
            raise ValueError(f"{self.where}: a runnable {self.language} block names its file first: `# <path>`")
        return lines[0][2:].split()[0].rstrip(":")


def read_blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("```"):
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].rstrip() == "```"), None)
        if end is None:
            raise ValueError(f"{page.name}:{index + 1}: a code fence that is never closed")
        marker = MARKER.match(lines[index - 1]) if index > 0 else None
        text = "\n".join(lines[index + 1 : end]) + "\n"
        blocks.append(Block(page, index + 1, line[3:].strip(), text, marker.group(1) if marker else None))
        index = end + 1
    return blocks


def strip_comment(line: str) -> str:
    """The line without a shell comment (a `#` at the start or after a blank, outside quotes)."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position]
    return line


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [command for line in joined.splitlines() if (command := strip_comment(line).strip())]


SHELL_OPERATORS = (">", ">>", "2>", "&>", "<", "|", "||", "&&", ";", "&")


def words(command: str) -> list[str]:
    """The words of a command up to its first shell operator (a redirection, a pipe, a list)."""
    tokens = shlex.split(command, comments=True)
    end = next((i for i, token in enumerate(tokens) if token in SHELL_OPERATORS), len(tokens))
    return tokens[:end]


def entry_point(command: str) -> tuple[str, list[str]] | None:
    """("train" / "eval", the arguments after the script) for a train.py / eval.py command (after any launcher such
    as torchrun or srun), or (console script module, its arguments) for `vitcls-<name>` and
    `python -m vitcls.cli.<name>`; None for anything else."""
    tokens = words(command)
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    for position, token in enumerate(tokens):
        if token in ("train.py", "eval.py") or token.endswith(("/train.py", "/eval.py")):
            return Path(token).stem, tokens[position + 1 :]
    if tokens and tokens[0].startswith("vitcls-"):
        return tokens[0].removeprefix("vitcls-"), tokens[1:]
    if tokens[:2] == ["python", "-m"] and len(tokens) > 2 and tokens[2].startswith("vitcls.cli."):
        return tokens[2].removeprefix("vitcls.cli."), tokens[3:]
    return None


def setting_keys(arguments: list[str]) -> set[str]:
    """The keys a Hydra command line sets (`+a.b=1` and `a.b=1` both set `a.b`; `trainer=cpu` sets `trainer`)."""
    return {word.split("=", 1)[0].lstrip("+~") for word in arguments if "=" in word and not word.startswith("-")}


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lstrip("#").strip())  # [text](link) -> text
    text = re.sub(r"[`*]", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
