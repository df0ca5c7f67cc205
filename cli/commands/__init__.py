"""CLI subcommands: one module per command, each exposing `register(subparsers)` that sets `run` on its parser.

`COMMANDS` names them with their one-line help, so `clipshield --help` lists every command without importing
any; `clipshield.cli.main` imports only the module of the command being run (tests/unit/test_cli_lazy.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Command:
    """A subcommand: its name (also its module's name under `clipshield.cli.commands`) and one-line help."""

    name: str
    help: str

    def load(self) -> ModuleType:
        """The command's module, imported now (its own imports stay lazy until `run`)."""
        return importlib.import_module(f"{__name__}.{self.name}")


COMMANDS = (
    Command("pretrain", "train the mini-world CLIP from scratch"),
    Command("finetune", "robust fine-tuning (TGA-ZSR, Comp-TGA, TeCoA, PMG-AFT, FARE, FT-Clean, FT-Adv)"),
    Command("evaluate", "clean and robust zero-shot accuracy (PGD, CW, AutoAttack; adaptive attacks on purification)"),
    Command("export", "export the image and text encoders to ONNX (serving bundle)"),
    Command("release", "robustness gate: compare a candidate bundle's card with the model it replaces"),
    Command("archive", "build a TorchServe archive from an export"),
    Command("describe", "default labels, templates, vocabulary and training data of a model, bundle or archive"),
    Command("serve", "start TorchServe on the model store (--stop to stop it)"),
    Command("demo", "run the offline demo on the mini world, from model to HTTP"),
    Command("experiment", "compare methods: the mini-world comparison, or a published paper table"),
)
