"""Datasets, the shared augmentation pipeline, the sample-data generator and dataset checks."""
