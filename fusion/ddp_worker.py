"""One rank of a DDP fit started by :mod:`clinfuse.fusion.ddp_launch`: ``python -m clinfuse.fusion.ddp_worker
<folder>``, with ``LOCAL_RANK`` / ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set.

It reads the job the calling process pickled into ``folder``, trains with a ``DDPStrategy`` over Lightning's
``LightningEnvironment`` (which, with ``LOCAL_RANK`` set, launches nothing), and reports back into the same
folder: rank 0 the fitted state (written atomically), any rank its exception or the interruption that
stopped it. It exits when the calling process is gone.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import threading
import time
import traceback
from pathlib import Path

from .ddp_launch import ERROR, INTERRUPTED, JOB, RESULT


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _watch_parent(parent: int, folder: Path, rank: int) -> None:
    """Exit when the calling process died (killed without the chance to stop the workers)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            if rank == 0:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
            os._exit(1)


def main(folder: Path) -> int:
    rank = int(os.environ["RANK"])
    envelope = pickle.loads((folder / JOB).read_bytes())
    threading.Thread(target=_watch_parent, args=(int(envelope["parent"]), folder, rank), daemon=True).start()
    from .interrupts import TrainingInterrupted
    from .model import FusionModel
    from .training import fit_model

    try:
        for module in envelope["plugins"]:  # the user's registered components, as in the calling process
            importlib.import_module(module)
        job = pickle.loads(envelope["job"])
        model = FusionModel(**job["params"])
        run = fit_model(model, job["cohort"], job["validation"], resume=bool(job["resume"]))
        if rank == 0:
            import io

            import torch

            buffer = io.BytesIO()
            torch.save(run.state, buffer)
            _write_atomic(folder / RESULT, buffer.getvalue())
        return 0
    except TrainingInterrupted as exc:
        _write_atomic(folder / INTERRUPTED.format(rank=rank),
                      pickle.dumps({"signum": exc.signum, "epochs_done": exc.epochs_done}))
        return exc.exit_code
    except BaseException as exc:
        text = traceback.format_exc()
        try:
            report = pickle.dumps({"exception": exc, "traceback": text})
            pickle.loads(report)  # an exception that cannot be rebuilt there travels as text only
        except Exception:
            report = pickle.dumps({"exception": None, "traceback": text})
        _write_atomic(folder / ERROR.format(rank=rank), report)  # the caller raises it with this text
        return 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
