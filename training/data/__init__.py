"""Data set registry; importing this package registers the built-in data sets."""
from . import folder  # noqa: F401
from . import miniworld  # noqa: F401
from . import real  # noqa: F401
from .recipe import FinetuneRecipe
from .registry import DatasetRequest, build_dataset, finetune_recipe, list_datasets, reference_eps, register_dataset

__all__ = ["DatasetRequest", "FinetuneRecipe", "build_dataset", "finetune_recipe", "list_datasets", "reference_eps", "register_dataset"]
