"""Command `sonotune queue`: the study grid on DVC's experiment queue, one experiment per configuration.

One `dvc exp run --queue` per (dataset, backbone, strategy), named `<dataset>-<backbone>-<strategy>`, each
narrowing params.yaml's `study` to itself with `--set-param`, then optionally `dvc queue start -j N`. DVC gives
every queued run its name in `DVC_EXP_NAME`, which tracking tags `dvc_exp`. Queued runs execute in temporary
copies of the repository, so a tracking server is required (`team.require_server_for_queue`).
"""

from __future__ import annotations

from sonotune.config import Params


def grid_experiments(params: Params) -> list[tuple[str, list[str]]]:
    """(experiment name, `-S` overrides) per configuration of the study grid, each narrowing it to itself."""
    study = params.study
    return [
        (f"{dataset}-{backbone}-{strategy}", [
            f"study.datasets=[{dataset}]", f"study.backbones=[{backbone}]", f"study.strategies=[{strategy}]",
        ])
        for dataset in study.datasets
        for backbone in study.backbones
        for strategy in study.strategies
    ]


def queue_commands(params: Params, prefix: str = "") -> list[list[str]]:
    """One `dvc exp run --queue -n NAME -S …` per configuration."""
    commands = []
    for name, overrides in grid_experiments(params):
        command = ["dvc", "exp", "run", "--queue", "--name", f"{prefix}{name}"]
        for override in overrides:
            command += ["--set-param", override]
        commands.append(command)
    return commands
