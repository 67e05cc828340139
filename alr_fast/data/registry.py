"""Dataset name -> TrainData for the on-disk datasets (readers in alr_fast.data)."""

from __future__ import annotations


def build_reader_train_data(cfg, device):
    raise NotImplementedError(
        f"data.dataset={cfg.data.dataset!r}: only the embedded datasets ('mnist5k', 'digits') are wired into the "
        "trainer in this version"
    )
