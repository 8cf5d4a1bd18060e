"""What the offline CLI tests share: a small events CSV and the one error line a refusal
prints."""

from __future__ import annotations

from pathlib import Path

HEADER = "user_id,item_id,timestamp"


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def grid_csv(path: Path, users: int = 4, items: int = 4) -> Path:
    """Every user with every item, at distinct times: enough for any split."""
    return write_csv(path, [f"u{u},{i},{10 * u + i}" for u in range(users)
                            for i in range(items)])


def one_error_line(err: str) -> str:
    """The single line of ``err`` besides logging and load reports; no traceback."""
    lines = [line for line in err.splitlines()
             if line and " INFO " not in line and "rows loaded" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
