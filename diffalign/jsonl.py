"""Reading JSON-lines files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


def jsonl_rows(path: str | Path, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    """``("PATH:LINE", parsed row)`` for every non-blank line (streamed); ``error("PATH:LINE: not valid JSON
    (...)")`` on the first line that does not parse."""
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as decode_error:
                raise error(f"{where}: not valid JSON ({decode_error})") from decode_error
            yield where, row
