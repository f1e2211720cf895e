"""The S3 searches behind the shipped schedules: per model and NFE the best re-scored baseline and searched
schedule, their paired difference, what ships, the screening signals' rank correlation and the search cost.

    python bench/s3_search.py [--models digits,digits-gmm,digits-dit,digits-flow]

Reads each model's ``s3/report.json`` (written by ``samplebench search`` beside the schedules it chose).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from samplebench.search.run import report_table  # noqa: E402
from samplebench.usf.shipped import s3_folder  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="digits,digits-gmm,digits-dit,digits-flow")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    parts = []
    for model in args.models.split(","):
        path = s3_folder(model) / "report.json"
        if not path.exists():
            parts.append(f"### {model}\n\nNo search report ships with {model} yet.")
            continue
        report = json.loads(path.read_text())
        cmd = report.get("command", f"samplebench search --model {model} --out DIR")
        parts.append(f"### {model}\n\n`{cmd}`\n\n" + report_table(report))
    body = ("## S3 searches behind the shipped schedules\n\n`python bench/s3_search.py --models "
            f"{args.models}` (it reads each model's `s3/report.json`). Screening on seeds 500,000+, re-scoring of the "
            "finalists on 5,000 fresh seeds (600,000+), paired 95% bootstrap intervals; a searched schedule ships only "
            "where its interval against the best re-scored baseline lies below zero.\n\n" + "\n\n".join(parts))
    print(body)
    if not args.no_write:
        write_section("s3-search", body)


if __name__ == "__main__":
    main()
