"""Multi-process runs: starting JAX's distributed runtime, and which process writes.

A run of N processes (on N hosts, or several on one machine) is N copies of the
same command. Each process holds its own devices; `jax.devices()` then lists the
devices of all of them, so `genjax.train.default_mesh()` spans every process and
each step's batch, generated inside the jitted step, is split over all devices.
Every process computes the same replicated metrics and parameters.

Where the processes meet:
- explicit: `--coordinator=HOST:PORT --num_processes=N --process_id=I` on every
  process (HOST:PORT is where process 0 listens; on one machine 127.0.0.1 and
  any free port). JAX also reads the coordinator from JAX_COORDINATOR_ADDRESS
  and the visible devices from JAX_LOCAL_DEVICE_IDS when the flags leave them
  out; it has no environment variable for the process count or index, so those
  two flags are always needed without a cluster.
- detected: with none of these flags, `jax.distributed.initialize()` reads the
  cluster's environment (SLURM, Open MPI, Cloud TPU, Kubernetes jobs).

Who writes: process 0 alone writes what is one file per run (config.json,
metrics.jsonl and TensorBoard events, plots, samples, eval.json); see
`is_writer`. Checkpoints are the exception: every process calls orbax's save
and restore, which are collective (`experiments.checkpoint`). The state is saved
as one host copy (a leaf sharded over several processes is gathered first), so
process 0 writes the data, the metadata and the checksums, and the checkpoint
restores under any number of processes and devices.
"""
import os
from typing import Sequence

import jax

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
LOCAL_DEVICE_IDS_ENV = "JAX_LOCAL_DEVICE_IDS"


def _check_coordinator(coordinator: str) -> None:
    """HOST:PORT with a non-empty host and a port in 1..65535 ([v6]:PORT allowed)."""
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--coordinator={coordinator!r}; expected HOST:PORT with a port in 1..65535 "
                         f"(e.g. 127.0.0.1:12345 for processes on one machine)")


def check_arguments(coordinator: str | None, num_processes: int | None, process_id: int | None,
                    local_device_ids: Sequence[int] | None = None) -> None:
    """Raises ValueError naming the bad value and what was expected when the
    explicit arguments cannot start a run: some given without the others (the
    coordinator may come from JAX_COORDINATOR_ADDRESS instead), a malformed
    coordinator, a process count below 1, a process id outside 0..N-1, or
    repeated or negative device ids. All None is valid: the cluster is detected."""
    explicit = {"--coordinator": coordinator, "--num_processes": num_processes, "--process_id": process_id}
    if all(value is None for value in explicit.values()) and not local_device_ids:
        return
    if coordinator is None:
        coordinator = os.environ.get(COORDINATOR_ENV) or None
        explicit["--coordinator"] = coordinator
    missing = [name for name, value in explicit.items() if value is None]
    if missing:
        given = ", ".join(f"{name}={value}" for name, value in explicit.items() if value is not None)
        raise ValueError(
            f"{' and '.join(missing)} missing (given: {given or 'only --local_device_ids'}); an explicit "
            f"multi-process run needs --coordinator=HOST:PORT (or {COORDINATOR_ENV}), --num_processes=N "
            f"and --process_id=I on every process, or none of them to detect a cluster (SLURM, Open MPI, "
            f"Cloud TPU)")
    _check_coordinator(coordinator)
    if num_processes < 1:
        raise ValueError(f"--num_processes={num_processes}; expected the number of processes, at least 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id}; expected 0..{num_processes - 1} "
                         f"(one of --num_processes={num_processes} processes)")
    ids = list(local_device_ids or ())
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--local_device_ids={','.join(map(str, ids))}; expected distinct device "
                         f"indices >= 0 of this machine")


def initialize(*, coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               initialization_timeout: int = 300) -> None:
    """Starts JAX's distributed runtime (before any other JAX call): with the
    explicit arguments and nothing detected, or, all None, from the cluster's
    environment.

    initialization_timeout: seconds to wait for every process to connect to the
    coordinator before failing (instead of hanging on a process that never starts)."""
    check_arguments(coordinator, num_processes, process_id, local_device_ids)
    explicit = not (coordinator is None and num_processes is None and process_id is None)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
            local_device_ids=list(local_device_ids) if local_device_ids else None,
            # explicit arguments are the whole truth: inside a SLURM job or a
            # Kubernetes pod, detection would otherwise still fill in the devices
            # (one per process) that the arguments left out
            cluster_detection_method="deactivate" if explicit else None,
            initialization_timeout=initialization_timeout)
    except ValueError as err:
        if explicit:
            raise
        raise ValueError(
            f"--distributed found no cluster environment to read the processes from (SLURM, Open MPI, "
            f"Cloud TPU, Kubernetes) ({err}); on one machine or an unmanaged cluster pass "
            f"--coordinator=HOST:PORT --num_processes=N --process_id=I to every process") from None


def is_writer() -> bool:
    """True in the process that writes the run's files: process 0 (the only one of
    a single-process run). The others compute the same values and write nothing
    but their share of each checkpoint."""
    return jax.process_index() == 0
