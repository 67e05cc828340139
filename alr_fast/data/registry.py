"""Dataset name -> TrainData for the on-disk datasets (readers and loaders in alr_fast.data)."""

from __future__ import annotations


def build_reader_train_data(cfg, device):
    from alr_fast.data.train_data import reader_train_data

    return reader_train_data(cfg, device)
