"""The small files of an ablation: JSON written atomically, JSON and metrics read forgivingly."""

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json", "read_metrics", "write_json", "write_text"]


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically: aside, synced, then renamed into place (a reader or a crash sees
    the old file or the new one, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` records by step. A step logged twice (a resumed run logs again the steps
    after its last checkpoint) keeps its last record; a torn last line is skipped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    records: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records[record["step"]] = record
    return [records[step] for step in sorted(records)]
