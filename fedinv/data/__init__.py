"""Datasets by name, non-IID partitions, and tensor batches."""

from .datasets import DATASETS, DatasetInfo, ImageTensors, load_dataset
from .partition import PARTITIONS, Partition, load_partition, make_partition

__all__ = ["DATASETS", "DatasetInfo", "ImageTensors", "load_dataset",
           "PARTITIONS", "Partition", "load_partition", "make_partition"]
