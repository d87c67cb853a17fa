"""The README's examples run as printed (issue 16, item 7): each ```python block of its
"Connect" section runs against a fresh server (the README's address replaced by the server's),
and what it prints must equal the ```text block that follows it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
README_URI = "mongodb://127.0.0.1:27017/"


def snippets(language: str) -> list[tuple[str, str]]:
    """(code, expected output) for each `language` block of the Connect section."""
    text = README.read_text()
    section = text.split("## Connect", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    pairs = []
    for (lang, code), following in zip(blocks, blocks[1:]):
        if lang == language:
            assert following[0] == "text", f"a {language} block is not followed by its output"
            pairs.append((code, following[1]))
    return pairs


def test_the_python_examples_print_what_the_readme_says(server, tmp_path):
    pairs = snippets("python")
    assert pairs, "no python example in the README's Connect section"
    for i, (code, expected) in enumerate(pairs):
        assert README_URI in code
        script = tmp_path / f"example{i}.py"
        script.write_text(code.replace(README_URI, server.uri))
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout == expected
