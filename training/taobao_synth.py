"""A SYNTHETIC file in the Taobao UserBehavior CSV format, for tests and the committed sample run.

This is *not* Taobao data.  The real file (Tianchi dataset 649, ~100M rows) is
not shipped with the repository; this writer produces a small file with the
same columns (``user_id,item_id,category_id,behavior_type,timestamp``, no
header, epoch seconds), the same sort order (by user, then time), the same
documented span (2017-11-25 .. 2017-12-03, China time) plus a few rows outside
it (the real file has some), and a rough version of its behaviour mix (pv ≫
cart > fav > buy).  Users have a few favourite categories, browse in sessions,
revisit items, and buy mostly what they carted or faved, so a sequence model
has something to find, but any number measured on it says nothing about
Taobao.
"""

from __future__ import annotations

import os

import numpy as np

#: 2017-11-25 00:00:00 China time (UTC+8) and the end of 2017-12-03, epoch seconds.
SYNTH_START_S = 1_511_539_200
SYNTH_END_S = 1_512_316_799


def write_synthetic_taobao(
    path: str | os.PathLike[str],
    n_users: int = 300,
    seed: int = 0,
    n_items: int = 4000,
    n_categories: int = 60,
    events_per_user: float = 40.0,
    out_of_range_rate: float = 0.003,
) -> int:
    """Write the file; return the number of rows written (out-of-range rows included).

    ``out_of_range_rate`` of the rows get a timestamp outside the documented
    days (a 1970-ish value, a day before, or a day after), as the real file has.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 649]))
    item_cat = rng.integers(0, n_categories, size=n_items)
    pop = 1.0 / (rng.permutation(n_items) + 1.0) ** 0.9
    by_cat = [np.flatnonzero(item_cat == c) for c in range(n_categories)]
    cat_pop = [pop[ix] / pop[ix].sum() if ix.size else ix for ix in by_cat]
    rows = 0
    with open(path, "w", encoding="utf-8") as fh:
        for u in range(n_users):
            user_id = 1 + u * 7 + int(rng.integers(0, 7))  # sparse, increasing ids like the real file
            n = max(3, int(rng.lognormal(np.log(events_per_user), 0.7)))
            favs = rng.choice(n_categories, size=int(rng.integers(1, 5)), replace=False)
            weights = rng.dirichlet(np.full(favs.size, 0.7))
            t = SYNTH_START_S + int(rng.integers(0, 86_400))
            seen: list[int] = []
            saved: list[int] = []
            lines: list[tuple[int, int, int, str]] = []
            cat = int(favs[0])
            for _ in range(n):
                if rng.random() < 0.15:  # new session: hours later, maybe another favourite category
                    t += int(rng.exponential(8 * 3600))
                    cat = int(rng.choice(favs, p=weights)) if rng.random() < 0.85 else int(rng.integers(n_categories))
                else:
                    t += int(rng.exponential(90)) + 1
                if saved and rng.random() < 0.08:
                    item = saved[int(rng.integers(len(saved)))]
                elif seen and rng.random() < 0.2:
                    item = seen[int(rng.integers(max(0, len(seen) - 10), len(seen)))]
                elif by_cat[cat].size:
                    item = int(rng.choice(by_cat[cat], p=cat_pop[cat]))
                else:
                    item = int(rng.integers(n_items))
                behavior = "pv"
                r = rng.random()
                if item in saved and r < 0.12:
                    behavior = "buy"
                elif r < 0.055:
                    behavior = "cart"
                elif r < 0.085:
                    behavior = "fav"
                elif r < 0.09:
                    behavior = "buy"
                if behavior in ("cart", "fav"):
                    saved.append(item)
                seen.append(item)
                lines.append((t, item, int(item_cat[item]), behavior))
            for ts, item, c, behavior in lines:
                if ts > SYNTH_END_S:
                    break  # the user's activity stops at the end of the span
                if rng.random() < out_of_range_rate:
                    ts = int(rng.choice([ts % 1_000_000, SYNTH_START_S - 3600, SYNTH_END_S + 86_400]))
                fh.write(f"{user_id},{item + 1},{c + 1000},{behavior},{ts}\n")
                rows += 1
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m training.taobao_synth OUT.csv [--users N] [--seed S]``: write a synthetic file."""
    import argparse

    p = argparse.ArgumentParser(description="write a SYNTHETIC file in the Taobao UserBehavior CSV format")
    p.add_argument("out")
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--events-per-user", type=float, default=40.0)
    args = p.parse_args(argv)
    n = write_synthetic_taobao(args.out, n_users=args.users, seed=args.seed, events_per_user=args.events_per_user)
    print(f"wrote {n} synthetic rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
