"""Data set registry; importing this package registers the built-in data sets."""

from . import folder, miniworld, real, wnid  # noqa: F401  (imported to register their data sets)
from .recipe import FinetuneRecipe
from .registry import DatasetRequest, build_dataset, finetune_recipe, list_datasets, reference_eps, register_dataset

__all__ = ["DatasetRequest", "FinetuneRecipe", "build_dataset", "finetune_recipe", "list_datasets", "reference_eps", "register_dataset"]
