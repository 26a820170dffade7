import os
import pickle

import numpy as np
import pytest
import torch

from sammil_deploy.errors import PatchingError
from sammil_deploy.features.preprocess_ops import PatchTransform
from sammil_deploy.patching.dataset import PatchDataset, make_patch_loader
from sammil_deploy.slide import open_slide

COORDS = np.array([[0, 0], [700, 300], [1500, 2000], [1900, 2600], [100, 2400]])


def _identity(patch):
    return torch.from_numpy(np.ascontiguousarray(patch))


def test_items_are_the_slide_regions_in_order(real_slide_path):
    ds = PatchDataset(real_slide_path, COORDS, 512, 0, _identity)
    assert len(ds) == len(COORDS)
    with open_slide(real_slide_path) as reader:
        for row in (0, 3, 4):
            patch, index = ds[row]
            assert index == row
            expected = reader.read_region(tuple(COORDS[row]), 0, (512, 512))
            np.testing.assert_array_equal(patch.numpy(), expected)
    ds.close()


def test_pickling_drops_the_handle_and_reopens(real_slide_path):
    ds = PatchDataset(real_slide_path, COORDS, 512, 0, PatchTransform(224, "bicubic"))
    first, _ = ds[1]
    assert ds._reader is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._reader is None
    again, _ = clone[1]
    assert torch.equal(first, again)
    assert clone._reader_pid == os.getpid()
    ds.close()
    clone.close()


def test_two_worker_loader_matches_in_process_reads(real_slide_path):
    ds = PatchDataset(real_slide_path, COORDS, 512, 0, PatchTransform(224, "bicubic"))
    serial = [ds[i][0] for i in range(len(ds))]
    loader = make_patch_loader(ds, batch_size=2, num_workers=2, pin_memory=False, persistent=False)
    batches = list(loader)
    rows = torch.cat([r for _, r in batches])
    assert rows.tolist() == list(range(len(COORDS)))
    stacked = torch.cat([b for b, _ in batches])
    assert stacked.dtype == torch.uint8
    assert stacked.shape == (len(COORDS), 3, 224, 224)
    assert torch.equal(stacked, torch.stack(serial))
    ds.close()


def test_bad_inputs_are_refused(real_slide_path):
    with pytest.raises(PatchingError, match=r"\(N, 2\)"):
        PatchDataset(real_slide_path, np.zeros((3, 3)), 512, 0, _identity)
    with pytest.raises(PatchingError, match="patch size"):
        PatchDataset(real_slide_path, COORDS, 0, 0, _identity)
    ds = PatchDataset(real_slide_path, COORDS, 512, 5, _identity)
    with pytest.raises(PatchingError, match="patch level 5"):
        ds[0]
