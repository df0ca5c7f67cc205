"""The demo serves its fine-tuned model under a name and version of its own, never as the base model's."""

from __future__ import annotations

import copy

import torch


def test_finetuned_export_named_apart_from_base(miniworld_model):
    from clipshield.cli.commands.demo import BASE_VERSION, _name_served
    from clipshield.models.checkpoint import weights_digest

    base = miniworld_model
    base_name = base.record.name
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        next(tuned.parameters()).add_(1e-3)  # stands in for fine-tuning: other weights
    version = _name_served(tuned, base, "tga-zsr", 150)
    assert tuned.record.name == f"{base_name}+tga-zsr" and base.record.name == base_name
    assert version == f"ft150-{weights_digest(tuned)[:8]}" and version != BASE_VERSION
    assert weights_digest(tuned) != weights_digest(base)
    assert _name_served(base, base, "tga-zsr", 0) == BASE_VERSION and base.record.name == base_name
