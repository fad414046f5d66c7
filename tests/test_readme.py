"""The README's Python snippets run as written (on the CPU here, on CUDA where there is one).

Every ```python block is executed in order in one namespace, inside a temporary directory; a block
whose first line is ``# needs: <what>`` (a dataset on disk, a GPU) is skipped.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_snippets():
    assert len(BLOCKS) >= 3


@pytest.mark.slow
def test_readme_python_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    ran = 0
    for i, block in enumerate(BLOCKS):
        if block.lstrip().startswith("# needs:"):
            continue
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            pytest.fail(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{block}")
        ran += 1
    assert ran >= 3
