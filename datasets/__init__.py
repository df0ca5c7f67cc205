"""Data set registry; importing this package registers the built-in data sets."""

from clipshield.datasets import folder, miniworld_sets as miniworld, real, wnid  # noqa: F401  (imported to register their data sets)
from clipshield.datasets.recipe import FinetuneRecipe
from clipshield.datasets.registry import DatasetRequest, build_dataset, finetune_recipe, list_datasets, reference_eps, register_dataset

__all__ = ["DatasetRequest", "FinetuneRecipe", "build_dataset", "finetune_recipe", "list_datasets", "reference_eps", "register_dataset"]
