"""Run by test_tables_concurrency as a separate process: run a one-row table (a tiny nin, one
epoch on 256 synthetic 16x16 images) into ROOT/runs and ROOT/res, as ``bench reproduce`` does.

    python table_worker.py ROOT TAG WIDTH gate|plain wait|no-wait

Every state the runner reports goes to ROOT/TAG.states (one JSON string a line) and the row's
result to ROOT/TAG.result.json. ``gate``: right after claiming the run folder (the row's lock
held), touch ROOT/TAG.claimed and hold until ROOT/go exists, so a test can start a second
process while this one is inside the row.
"""

import json
import sys
import time
from pathlib import Path

import torch

from netshrink.bench.data import synthetic
from netshrink.bench.engine import DistEnv
from netshrink.bench.tables import Profile, Row, Schedule, Table, runner
from netshrink.bench.tables.runner import RunContext, run_table


def main() -> None:
    root, tag, width = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    gate, wait = sys.argv[4] == "gate", sys.argv[5] == "wait"
    torch.set_num_threads(1)
    one = Schedule(epochs={"full": 1, "quick": 1, "smoke": 1}, lr=0.05, batch_size=64)
    table = Table(name="toy", title="Toy", baseline="float", dataset="synthetic", rows=(
        Row("float", "float", model="nin", model_kwargs={"width": width}, schedule=one),))
    ctx = RunContext(table=table, profile=Profile("smoke", width=1.0, channels_last=False),
                     env=DistEnv(), results_dir=root / "res", runs_dir=root / "runs",
                     train_data=synthetic("train", 256, num_classes=4, size=16),
                     test_data=synthetic("test", 64, num_classes=4, size=16),
                     show_progress=False, wait_for_lock=wait, lock_poll_seconds=0.05)
    if gate:
        claim = runner._claim_run_dir

        def gated_claim(run_dir, h, env):
            claim(run_dir, h, env)
            (root / f"{tag}.claimed").write_text("")
            while not (root / "go").exists():
                time.sleep(0.05)

        runner._claim_run_dir = gated_claim

    def on_row(row, state):
        with open(root / f"{tag}.states", "a") as f:
            f.write(json.dumps(state) + "\n")

    result = run_table(ctx, list(table.rows), on_row=on_row)[0]
    (root / f"{tag}.result.json").write_text(json.dumps(
        {"spec_hash": result["spec_hash"], "date": result["date"]}))


if __name__ == "__main__":
    main()
