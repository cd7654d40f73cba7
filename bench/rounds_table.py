"""A Markdown table from bench/rounds.py's JSON: per model and seed, each method's rounds to
75 / 80 / 85% beside its base optimizer's (the method's part before "+": `fedavg` for `fedavg+ftg`
and `fedavg+ftg@ema`), the share of rounds the server step saves, final and last-5 accuracy and
the server step's share of a round. Seeds stay apart: they may have run on different machines.

    python bench/rounds_table.py docs/bench-rounds-reference.json
"""

from __future__ import annotations

import json

import click

TARGETS = (75, 80, 85)


def base_of(method: str) -> str:
    """The base optimizer of `method` (`fedavg+ftg@ema` -> `fedavg`)."""
    return method.split("@")[0].split("+")[0]


def saving(rounds: int | None, base: int | None) -> str:
    """Rounds saved against the base, as a share of the base's rounds ("-25%" = 25% more rounds)."""
    if rounds is None:
        return "never" if base is not None else "-"
    if base is None:
        return "base never"
    return f"{100 * (base - rounds) / base:+.0f}%"


def server_cell(share: float | None) -> str:
    if share is None:
        return "-"
    return f"{100 * share:.0f}%" if share >= 0.01 else "< 1%"


def per_seed(entry: dict) -> dict[int, dict]:
    """seed -> that seed's figures (an entry of one seed may hold them at its top level)."""
    rows = entry.get("per_seed") or [entry]
    return dict(zip(entry["seeds"], rows))


def rows(results: dict) -> list[list[str]]:
    out = []
    for model, methods in results.items():
        if model == "setting":
            continue
        seeds = {m: per_seed(e) for m, e in methods.items()}
        for method in sorted(methods, key=lambda m: (base_of(m), "+" in m, m)):
            for seed, r in sorted(seeds[method].items()):
                base = seeds.get(base_of(method), {}).get(seed) if "+" in method else None
                reached = [r[f"rounds_to_{t}"] for t in TARGETS]
                cells = [str(v) if v is not None else "-" for v in reached]
                saved = ("" if base is None else
                         " / ".join(saving(v, base[f"rounds_to_{t}"]) for v, t in zip(reached, TARGETS)))
                share = r.get("server_share")
                out.append([model, str(seed), method, *cells, saved, f"{100 * r['final_accuracy']:.2f}",
                            f"{100 * r['last5_accuracy']:.2f}", server_cell(share)])
    return out


@click.command()
@click.argument("path", default="docs/bench-rounds-reference.json", type=click.Path(exists=True, dir_okay=False))
def main(path: str) -> None:
    """Print the table of PATH (bench/rounds.py --json-out; default docs/bench-rounds-reference.json)."""
    print("| model | seed | method | rounds to 75% | to 80% | to 85% | fewer rounds than its base (75 / 80 / 85) "
          "| final | last 5 | server share |")
    print("|" + "---|" * 10)
    for row in rows(json.loads(open(path).read())):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
