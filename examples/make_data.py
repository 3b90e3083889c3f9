"""Write the synthetic inputs that examples/run.yaml explains (no downloads).

A 40^3 NIfTI volume with two bright blobs (1.5 mm voxels, so the affine is not the
identity) and a region mask around one of them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).parent


def main(size: int = 40) -> None:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
    volume = 0.1 * rng.standard_normal((size,) * 3)
    mask = np.zeros((size,) * 3, dtype=np.uint8)
    for centre, radius in (((12, 14, 20), 6), ((28, 26, 18), 8)):
        inside = ((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(0) <= radius**2
        volume[inside] += 1.0
        if radius == 8:
            mask[inside] = 1
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    out = HERE / "data"
    out.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), out / "volume.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), out / "region.nii.gz")


if __name__ == "__main__":
    main()
