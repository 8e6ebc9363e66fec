"""train.py with planted faults, for the fault tests (tests/test_faults.py). The faults are chosen by the
environment (comma-separated); everything else (ranks, loader workers, signals, saves, exit) is the real train.py:

    EGOAGENT_FAULT=raise:STEP[:RANK]   the training step after STEP updates raises, on RANK (default: every rank)
    EGOAGENT_FAULT=slow:STEP:SECONDS   that step first sleeps SECONDS (a long step to signal into)
    EGOAGENT_FAULT=pause:STEP:PATH     that step first waits until the file PATH exists (at most 300 s)
    EGOAGENT_FAULT=slowdata:SECONDS    every generated sample takes SECONDS to load (the rank mostly waits for its
                                       loader workers, as with slow video decoding)
    EGOAGENT_FAULT=enospc:STEP         every file write of checkpoint STEP fails with ENOSPC (a full disk, where no
                                       small file system can be mounted)

    python tests/fault_driver.py [train.py arguments]
"""

import errno
import os
import runpy
import sys
import time

import internlm.checkpoint.atomic as atomic
import internlm.data.generated as generated
import internlm.train.trainer as trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plant(kind: str, args: list[str]) -> None:
    if kind in ("raise", "slow", "pause"):
        step, train_step = int(args[0]), trainer.Trainer.train_step

        def planted_step(self, batch):
            if self.progress.step == step and kind == "slow":
                time.sleep(float(args[1]))
            elif self.progress.step == step and kind == "pause":
                deadline = time.time() + 300
                while not os.path.exists(args[1]) and time.time() < deadline:
                    time.sleep(0.05)
            elif self.progress.step == step and (len(args) < 2 or self.ctx.rank == int(args[1])):
                raise ZeroDivisionError(f"planted failure in step {step + 1}")
            return train_step(self, batch)

        trainer.Trainer.train_step = planted_step
    elif kind == "slowdata":
        get = generated.GeneratedSamples.__getitem__

        def slow_get(self, key):
            time.sleep(float(args[0]))
            return get(self, key)

        generated.GeneratedSamples.__getitem__ = slow_get
    elif kind == "enospc":
        folder, replace = os.sep + args[0] + os.sep, atomic._atomic_replace

        def full_disk(path, write):
            if folder in path:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return replace(path, write)

        atomic._atomic_replace = full_disk
    else:
        raise SystemExit(f"EGOAGENT_FAULT: {kind!r}: expected raise, slow, pause, slowdata or enospc")


for fault in os.environ["EGOAGENT_FAULT"].split(","):
    plant(*(lambda kind, *args: (kind, list(args)))(*fault.split(":")))
sys.argv = [os.path.join(REPO, "train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
