"""Do FedAvg, FedProx, FedDyn and SCAFFOLD reach their targets in fewer rounds with FedFTG's server
fine-tuning (10 nodes, half of them a round)? One record per model x method: rounds to 75 / 80 / 85%,
final, last-5 and best accuracy, seconds a round, the server step's share (bench/federated.py).

The BN diagnoses of FTG's fine-tuning (ftg_bn.py, ftg_stats.py in this folder) read a finished run of
this study; their records are the variants diagnosis-bn and diagnosis-stats."""

from __future__ import annotations

from bench.federated import rounds_table, run_methods

QUESTION = "Does FedFTG's server fine-tuning save rounds for FedAvg / FedProx / FedDyn / SCAFFOLD?"
run = run_methods
BASE_VARIANT = True  # the variants are compared with the plain setting, the variant 'base'


def headline(records: list[dict]) -> str:
    final = {r["method"]: r["final_accuracy"] for r in records if r["variant"] == "base" and r.get("method")}
    if "fedavg" not in final or "fedavg+ftg" not in final:
        return ""
    return f"30 rounds: FedAvg {100 * final['fedavg']:.2f}%, FedAvg + FTG {100 * final['fedavg+ftg']:.2f}% (final)"


TABLES = {"rounds": rounds_table}
