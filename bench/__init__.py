"""fedinv's experiments, as data: one folder per study in experiments/, one runner for all of them.

    python -m bench list                                  the studies and their variants
    python -m bench run experiments/oneshot --variants alpha-0.5 --seeds 0,1,2
    python -m bench table experiments/oneshot             the study's tables from its records
    python -m bench docs [--check]                        regenerate (or check) every generated table

The shared pieces: `records` (the one record format and the resume rule), `machine` (which machine
measured), `tables` (the one table printer), `study` (a study's folder, configs and runner), `docs`
(tables generated into Markdown pages), `setting` / `federated` (what the one-shot and the multi-round studies share), `compare` (multi-round
run folders round by round).
"""
