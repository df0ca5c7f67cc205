"""CLI subcommands; each module exposes `register(subparsers)` and sets `run` on its parser."""
from . import archive, demo, evaluate, experiment, export, finetune, pretrain, serve

COMMANDS = (pretrain, finetune, evaluate, export, archive, serve, demo, experiment)
