"""Running a sweep's points on Ray: a local instance on this machine's cores, or an existing cluster.

Why Ray core tasks and not Ray Tune: a sweep point must stay an ordinary run directory, made and resumed by
the same runner as `agentlab run`. With core tasks one point is one call of `agentlab.sweep.run_point` in a
worker, writing only its own run directory: resume is the runner's resume from our checkpoints, and the
manifest (written by the driver alone) is the one record of the sweep. Tune's `Tuner` would wrap each run in
a trial with a directory, checkpoint and result files of its own (`tune.report`, `Tuner.restore` from its
experiment state), a second record to keep in step with ours, and it earns that cost with search algorithms
and early-stopping schedulers that a fixed grid × seeds does not use. What a sweep needs from Ray, core tasks
give directly: resources per task (`num_cpus`, fractional `num_gpus`), placement on any node of a cluster,
`ray.wait` to record each result as it arrives, `ray.cancel` on Ctrl-C, and a `RayError` (not a hang) when a
worker dies.

    with RayExecutor(address=None, num_cpus=None, cpus_per_run=1, gpus_per_run=0) as ex:
        ex.run(jobs, on_done)        # on_done(job, outcome) in the driver, as results arrive

`address=None` starts a local instance with `num_cpus` logical CPUs (default: this machine's cores), its
temporary files in a fresh folder that is removed at shutdown; "auto" or "ray://host:10001" joins a running
cluster (paths in the jobs must then be the same on every node). If Ray is already initialised in this process
(tests share one instance), the executor uses it and leaves it running.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from typing import Any, Sequence

from agentlab.errors import UserError
from agentlab.extras import require
from agentlab.sweep import OnDone, PointJob, RunFn, cpu_count, run_point

# The local instance's shared-memory object store: results are small dicts, so Ray's default (30% of RAM) is
# far more than a sweep uses; 128 MiB keeps the footprint small on a shared machine (Ray's minimum is 75 MiB).
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20


class RayExecutor:
    """Points as Ray tasks, as many at once as the cluster's resources allow."""

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None, cpus_per_run: float = 1.0,
                 gpus_per_run: float = 0.0, threads: int | None = None) -> None:
        if cpus_per_run <= 0:
            raise UserError(f"--cpus-per-run={cpus_per_run} is not allowed: a number > 0 (fractions allowed)")
        if gpus_per_run < 0:
            raise UserError(f"--gpus-per-run={gpus_per_run} is not allowed: a number >= 0 (fractions such as 0.25 allowed)")
        if num_cpus is not None and num_cpus < 1:
            raise UserError(f"--ray-cpus={num_cpus} is not allowed: an integer >= 1")
        if num_cpus is not None and address:
            raise UserError("--ray-cpus sizes a local Ray instance; a cluster joined with --address has its own resources")
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_run, self.gpus_per_run = float(cpus_per_run), float(gpus_per_run)
        self.threads = threads or max(1, int(cpus_per_run))  # PyTorch threads in each run: its CPU share
        self.startup_s = 0.0
        self._owned = False
        self._tmp: str | None = None

    def __enter__(self) -> "RayExecutor":
        self.ray = require("ray", extra="ray", feature="`agentlab sweep` on Ray (or run the points here with --executor local)")
        t0 = time.perf_counter()
        if self.ray.is_initialized():
            self._owned = False
        elif self.address:
            try:
                self.ray.init(address=self.address)  # the cluster's own settings: a joiner may not pass resources
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"--address {self.address!r}: cannot join a Ray cluster there ({e}); start one with "
                                f"`ray start --head` on its head node, or leave --address out for a local instance") from None
            self._owned = True
        else:
            self._tmp = tempfile.mkdtemp(prefix="agentlab-ray-")  # short: Ray's socket paths must fit 107 bytes
            self.ray.init(address="local", num_cpus=self.num_cpus or cpu_count(), include_dashboard=False,
                          object_store_memory=LOCAL_OBJECT_STORE_BYTES, _temp_dir=self._tmp)
            self._owned = True
        self.startup_s = time.perf_counter() - t0
        try:
            self._check_resources()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owned:
            self.ray.shutdown()
            self._owned = False
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _check_resources(self) -> None:
        have = self.ray.cluster_resources()
        cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
        wanted = [(self.cpus_per_run, cpus, "--cpus-per-run", "CPUs"), (self.gpus_per_run, gpus, "--gpus-per-run", "GPUs")]
        for need, total, flag, what in wanted:
            if need > total:
                msg = f"{flag}={need:g} asks more than the Ray cluster's {total:g} {what}"
                if self.address:  # an autoscaling cluster may add nodes later: say so, do not refuse
                    print(f"agentlab: warning: {msg} now; runs wait until a node with them joins", file=sys.stderr)
                else:
                    raise UserError(f"{msg}; lower it" + (" or give --ray-cpus" if what == "CPUs" else ""))

    @property
    def slots(self) -> int:
        """How many runs fit at once on the resources Ray sees now."""
        have = self.ray.cluster_resources()
        n = int(have.get("CPU", 0.0) // self.cpus_per_run)
        if self.gpus_per_run:
            n = min(n, int(have.get("GPU", 0.0) // self.gpus_per_run))
        return max(n, 1)

    def run(self, jobs: Sequence[PointJob], on_done: OnDone, fn: RunFn = run_point) -> None:
        ray = self.ray
        # max_retries=0: a point whose worker died is recorded as failed; running the sweep again resumes it.
        remote = ray.remote(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0)(fn)
        pending = {remote.remote(job): job for job in jobs}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        out = {"status": "failed", "message": _ray_message(e), "agents": {}, "seconds": None}
                    on_done(job, out)
        except BaseException:
            for ref in pending:  # stop the runs still going: each keeps its last checkpoint
                ray.cancel(ref, force=True)
            raise


def _ray_message(e: Exception) -> str:
    """The first lines of a Ray error, named by its type (a worker that died says so)."""
    cause = getattr(e, "cause", None)
    if cause is not None and not isinstance(cause, type(e)):
        return f"{type(cause).__name__}: {cause}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: " + " ".join(line.strip() for line in text[:3])
