"""Data: sources (folder/csv/multihot -> one table), folds, images, transforms, datamodule."""
