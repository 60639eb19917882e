"""Make the CI's CIFAR-10 subset from a full cifar-10-batches-py folder: the first 1017 images
of each batch file, labels and order kept (how ../shared/datasets was made), so that a runner
with internet access (GitHub Actions) checks the smoke table against the same baseline.

    python .ci/make-cifar-subset.py FULL_ROOT SUBSET_ROOT
"""

import pickle
import shutil
import sys
from pathlib import Path

from netshrink.bench.data.cifar import _unpickle  # the restricted unpickler: numpy types only

KEEP = 1017
FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def main(full: Path, subset: Path) -> None:
    src, dst = full / "cifar-10-batches-py", subset / "cifar-10-batches-py"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "batches.meta", dst / "batches.meta")
    for name in FILES:
        batch = _unpickle(src / name)
        small = {"batch_label": batch["batch_label"], "labels": batch["labels"][:KEEP],
                 "data": batch["data"][:KEEP], "filenames": batch["filenames"][:KEEP]}
        with open(dst / name, "wb") as f:
            pickle.dump(small, f, protocol=2)
    print(f"wrote {len(FILES)} batch files of {KEEP} images to {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
