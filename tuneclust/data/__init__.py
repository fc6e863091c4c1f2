"""Datasets as tensors, and batched on-device augmentation."""

from tuneclust.data.registry import DATASETS, DataConfig, DataError, Dataset, load_dataset

__all__ = ["DATASETS", "DataConfig", "DataError", "Dataset", "load_dataset"]
