"""The pipeline's stages and commands: thin layers that read params, call the library, write outputs and track.

One module per `dvc.yaml` stage (`prepare`, `finetune`, `svm`; `report` is a package by job) plus the commands
that use a study or its results (`queue`, `deploy`, `predict`). Each runs through `sonotune <command>` (cli.py).
Nothing under `sonotune` outside this package imports from it: the library knows nothing of stages or files.
"""
