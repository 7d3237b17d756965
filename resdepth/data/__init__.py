"""Datasets registered by name, decoded once, held on the device as uint8, augmented in batches."""

from .datasets import (DATASETS, check_kind, load, load_cifar, load_fashion_mnist, make_synthetic,
                       register_dataset)
from .image_folder import MAX_DATASET_BYTES, MAX_IMAGE_BYTES, load_image_folder
from .module import DataModule, TrainBatches, crop_flip, random_crop_flip_params
from .splits import DatasetError, Loaded, Loader, Split, in_source_tree, resolve_path

__all__ = ["DATASETS", "DataModule", "DatasetError", "Loaded", "Loader", "MAX_DATASET_BYTES",
           "MAX_IMAGE_BYTES", "Split", "TrainBatches", "check_kind", "crop_flip", "in_source_tree",
           "load", "load_cifar",
           "load_fashion_mnist", "load_image_folder", "make_synthetic", "random_crop_flip_params",
           "register_dataset", "resolve_path"]
