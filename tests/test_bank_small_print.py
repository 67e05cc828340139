"""SoftLabelBank's small print: which indices a rank may see, the exact error messages."""

import pytest
import torch

from alr_fast.loss.bank import SoftLabelBank
from alr_fast.loss.sharding import Sharding


def test_owns_index_zero_only_on_its_owner():
    labels = torch.tensor([0, 1, 2, 0, 1])
    idx = torch.tensor([-1, 0, 1, 2, 3, 4])
    assert SoftLabelBank(labels, 3, sharding=Sharding(0, 2)).owns(idx).tolist() == [False, True, False, True, False, True]
    assert SoftLabelBank(labels, 3, sharding=Sharding(1, 2)).owns(idx).tolist() == [False, False, True, False, True, False]


def test_reshard_error_messages_name_the_bank():
    labels = torch.tensor([0, 1, 2, 0])
    other = SoftLabelBank(torch.tensor([1, 1, 2, 0]), 3).state_dict()
    with pytest.raises(ValueError, match=r"^SoftLabelBank: the checkpoint's given labels differ from this run's labels$"):
        SoftLabelBank(labels, 3).load_rows_from([other])
    half = SoftLabelBank(labels, 3, sharding=Sharding(0, 2)).state_dict()
    with pytest.raises(ValueError, match=r"^SoftLabelBank: the checkpoint shards cover 2 of this rank's 4 rows$"):
        SoftLabelBank(labels, 3).load_rows_from([half])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "bfloat16"])
def test_init_dtype_and_total_samples(dtype):
    bank = SoftLabelBank(torch.tensor([2, 0, 1, 1, 0]), 3, dtype, sharding=Sharding(1, 2))
    want = torch.bfloat16 if dtype in (torch.bfloat16, "bfloat16") else torch.float32
    assert bank.soft.dtype == want
    assert bank.total_samples == 5 and bank.num_samples == 2  # rows 1 and 3 of 5
    assert bank.global_index.tolist() == [1, 3] and bank.given.tolist() == [0, 1]
    assert bank.soft.float().tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
