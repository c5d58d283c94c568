"""Regenerate the committed CI subset of AIConfigurator's measured kernel tables.

    python benchmarks/make_aic_subset.py            # writes tests/data/aic/<system>_trtllm.csv.gz

Needs the aiconfigurator-core wheel (pip install 'moesim[aic]'). Per system and kernel class the
rows are the converted rows of :func:`moesim.calibrate.aic.read_rows` (default version choice)
whose shape_keys rank lowest by sha256('subset:<shape_key>'), at most ``--per-class`` of them:
the same wheel gives the same files, byte for byte. Column ``heldout`` says whether the shipped
profile's fit (``calibrate --from aiconfigurator``, the whole import) held the row's shape out.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYSTEMS = ("h100_sxm", "h200_sxm")
FRAMEWORK = "trtllm"
PER_CLASS = 1500


def rank(key: str) -> int:
    return int(hashlib.sha256(f"subset:{key}".encode()).hexdigest()[:16], 16)


def subset(df, per_class: int):
    import pandas as pd

    parts = []
    for _, part in df.groupby("kernel_class", sort=True):
        keys = sorted(set(part["shape_key"]), key=lambda k: (rank(k), k))[:per_class]
        parts.append(part[part["shape_key"].isin(set(keys))].sort_values("shape_key"))
    out = pd.concat(parts, ignore_index=True)
    return out.dropna(axis=1, how="all")


def main(argv: list[str] | None = None) -> int:
    from moesim.calibrate.aic import heldout_keys, model_rows, read_rows, write_rows_csv

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "aic")
    ap.add_argument("--per-class", type=int, default=PER_CLASS)
    args = ap.parse_args(argv)
    for system in SYSTEMS:
        df, prov = read_rows(system, FRAMEWORK)
        # Which rows the shipped profile's fit held out (the split of the whole import, by the
        # rule calibrate --from aiconfigurator uses): the accuracy test scores only those.
        fit_df, _ = model_rows(df)
        held = heldout_keys(fit_df)
        out_keys = {(c, k) for c, keys in held.items() for k in keys}
        fit_class = dict(zip(fit_df["kernel_class"], fit_df["fit_class"], strict=False))
        df["heldout"] = [
            (fit_class.get(c, c), k) in out_keys
            for c, k in zip(df["kernel_class"], df["shape_key"], strict=True)
        ]
        rows = subset(df, args.per_class)
        path = write_rows_csv(rows, args.out / f"{system}_{FRAMEWORK}.csv.gz")
        counts = rows["kernel_class"].value_counts().sort_index()
        print(f"{path.relative_to(ROOT)}: {len(rows)} rows, {path.stat().st_size:,} bytes")
        for cls, n in counts.items():
            print(f"  {cls:18s} {n:5d} of {int((df['kernel_class'] == cls).sum()):7d}")
        for entry in prov["tables"].values():
            print(f"  {entry['file']} ({entry['rows_read']} rows read)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
