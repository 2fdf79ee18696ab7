"""One table from several learning-curve JSONs (``dupn validate --curve``): a screen of variants.

Each curve was scored on the validation users only; the table lists, per file and checkpoint, the
command that produced it, the four validation metrics with their user-bootstrap SE, and the CTR
training loss over the 20 steps up to the checkpoint. Runs stopped before their last checkpoint
show the checkpoints they reached.

    python -m training.screen_report OUT.md CURVE.json [CURVE.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from training.metrics import FOUR_TASKS, METRIC_OF


def _command(res: dict[str, Any]) -> str:
    return str(res["commands"][-1]).replace("|", "\\|")


def screen_rows(paths: list[Path]) -> list[str]:
    """Markdown rows: file, model, step, metrics, CTR train loss, command."""
    lines = []
    for path in paths:
        res = json.loads(path.read_text())
        for row in res["rows"]:
            cells = [f"{row[METRIC_OF[t]]:.4f} ± {row[METRIC_OF[t] + '_se']:.4f}" for t in FOUR_TASKS]
            loss = row.get("train_loss_last20", {}).get("ctr", float("nan"))
            lines.append(
                f"| {path.stem} | {row['model']} | {row['step']} | " + " | ".join(cells) + f" | {loss:.4f} | "
                f"`{_command(res)}` |"
            )
    return lines


def write_screen(out: Path, paths: list[Path], intro: str = "") -> Path:
    head = "| file | model | step | " + " | ".join(METRIC_OF[t] for t in FOUR_TASKS)
    lines = [
        "# A screen of training and model variants on the validation users",
        "",
        intro,
        "",
        head + " | CTR train loss (last 20 steps) | command |",
        "|" + "---|" * (len(FOUR_TASKS) + 5),
        *screen_rows(paths),
        "",
    ]
    out.write_text("\n".join(lines))
    return out


if __name__ == "__main__":  # pragma: no cover - a command, exercised by hand
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    print(write_screen(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
