"""``flux2-lora queue add|list|cancel|run``: a training queue on disk beside the runs (flux2_lora.job_queue)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flux2_lora.cli.common import add_config_args, config_from_args, fail, print_findings, show


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "queue", help="queue training runs; a worker runs them one after the other (one per GPU)"
    )
    qs = p.add_subparsers(dest="queue_cmd", required=True, metavar="add|list|cancel|run")
    add = qs.add_parser("add", help="queue a config (checked as `train` checks it)")
    add_config_args(add)
    add.add_argument(
        "--runs-dir", default="runs", help="the runs folder whose queue it joins (default: runs)"
    )
    add.add_argument("--gpu", help="GPU class the verdict is about (default: the local GPU)")
    ls = qs.add_parser("list", help="the queue's jobs, oldest first")
    ls.add_argument("--runs-dir", default="runs")
    ls.add_argument("--json", action="store_true")
    cancel = qs.add_parser("cancel", help="cancel a queued job, or stop a running one (it checkpoints)")
    cancel.add_argument("job_id")
    cancel.add_argument("--runs-dir", default="runs")
    work = qs.add_parser("run", help="run the queued jobs (until the queue is empty, or --wait for more)")
    work.add_argument("--runs-dir", default="runs")
    work.add_argument("--gpus", default="", help="CUDA device ids, one job on each at a time (e.g. 0,1)")
    work.add_argument("--wait", action="store_true", help="keep waiting for new jobs when the queue is empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flux2_lora.job_queue import Queue, QueueError

    queue = Queue(Path(args.runs_dir).expanduser().resolve())
    try:
        if args.queue_cmd == "add":
            return _add(args, queue)
        if args.queue_cmd == "list":
            return _list(args, queue)
        if args.queue_cmd == "cancel":
            job = queue.cancel(args.job_id)
            state = getattr(job.state, "value", job.state)
            print(
                f"job {job.id}: "
                + ("stop requested (it checkpoints, then ends)" if state == "running" else state)
            )
            return 0
        return _work(args, queue)
    except QueueError as e:
        return fail(str(e), 2)
    except OSError as e:
        return fail(f"{show(queue.dir)}: {e.strerror or e}")


def _add(args: argparse.Namespace, queue: object) -> int:
    from flux2_lora.assess import assess, dataset_facts
    from flux2_lora.config.io import to_yaml, with_updates
    from flux2_lora.job_queue import JobState, Queue

    assert isinstance(queue, Queue)
    config = config_from_args(args)
    if config is None:
        return 2
    a = assess(config, gpu=args.gpu, dataset=dataset_facts(config), recommendations=False)
    print_findings(a)
    if not a.ok:
        return 2
    for b in a.blockers:
        print(f"warning: {b}", file=sys.stderr)
    # Absolute paths: the worker may run from another folder, or after a restart.
    run_dir = Path(config.output.dir).expanduser().resolve()
    updates: dict[str, str] = {"output.dir": str(run_dir)}
    data = Path(config.dataset.path).expanduser()
    if not data.is_absolute() and data.exists():
        updates["dataset.path"] = str(data.resolve())
    config = with_updates(config, updates)
    for job in queue.jobs():
        if job.state in (JobState.QUEUED, JobState.RUNNING) and Path(job.run_dir) == run_dir:
            return fail(
                f"output.dir {show(run_dir)} is already the output of job {job.id} ({job.state}); "
                "give this run another output.dir",
                2,
            )
    job = queue.add(to_yaml(config), run_dir)
    print(f"queued job {job.id} → {show(run_dir)}")
    return 0


def _list(args: argparse.Namespace, queue: object) -> int:
    from flux2_lora.job_queue import Queue

    assert isinstance(queue, Queue)
    jobs = queue.jobs()
    for p in queue.problems:
        print(f"warning: {show(p)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"worker": queue.worker_alive(), "jobs": [j.to_dict() for j in jobs]}, indent=1))
        return 0
    if not jobs:
        print(f"the queue of {show(queue.root)} is empty")
        return 0
    print(f"{'JOB':22} {'STATE':10} {'GPU':4} {'ADDED':19}  RUN / MESSAGE")
    for j in jobs:
        added = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.added_at))
        state = getattr(j.state, "value", j.state)
        print(f"{j.id:22} {state:10} {j.gpu or '-':4} {added}  {show(j.run_dir)}")
        if j.message:
            print(f"{'':22} {show(j.message)}")
    print("worker: " + ("running" if queue.worker_alive() else "none (flux2-lora queue run starts one)"))
    return 0


def _work(args: argparse.Namespace, queue: object) -> int:
    import signal
    import threading

    from flux2_lora.job_queue import Queue, fits_by_memory, gpu_inventory, run_worker

    assert isinstance(queue, Queue)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if any(not g.isdigit() for g in gpus):
        return fail(f"--gpus {show(args.gpus)}: give CUDA device ids such as 0,1", 2)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return run_worker(
        queue,
        gpus=gpus,
        fits=fits_by_memory(gpu_inventory()) if gpus else None,
        until_empty=not args.wait,
        should_stop=stop.is_set,
    )
