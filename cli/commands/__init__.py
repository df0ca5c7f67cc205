"""CLI subcommands; each module exposes `register(subparsers)` and sets `run` on its parser."""

from clipshield.cli.commands import archive, demo, evaluate, experiment, export, finetune, pretrain, release, serve

COMMANDS = (pretrain, finetune, evaluate, export, release, archive, serve, demo, experiment)
