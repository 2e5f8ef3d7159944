"""``flux2-lora cloud skypilot CONFIG``: a SkyPilot task that trains this config on rented GPUs (no torch).

The task (https://docs.skypilot.co): ``setup`` installs this package (from the source tree, synced as the
task's workdir, or a pip spec) with a CUDA build of torch; the dataset (a local folder or .zip, uploaded,
or a bucket URI) and a local model folder are file mounts; the run directory lives in a bucket mounted
with ``MOUNT_CACHED`` (checkpoints are written locally and uploaded behind, and survive the machine);
``run`` is ``flux2-lora train`` with ``--resume auto``, so a managed spot job that SkyPilot restarts after
a preemption continues from the newest checkpoint. Over several nodes, each node's rank and machine 0's
address come from SkyPilot's environment (SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS, SKYPILOT_NUM_NODES,
SKYPILOT_NUM_GPUS_PER_NODE) and go to accelerate's launcher; only machine 0 writes the run directory.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from flux2_lora.cli.common import add_config_args, config_from_args, fail, show
from flux2_lora.cli.schema_flags import add_section_flags, section_overrides

MOUNT = "/flux2-lora"  # everything the task mounts lives under here on the nodes
RUNS = f"{MOUNT}/runs"
GPUS_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,40})(?::([0-9]{1,2}))?$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
REMOTE_RE = re.compile(r"^(s3|gs|r2|az|cos|oci|https)://", re.I)
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cu128"
# The torch index reaches the nodes as an environment variable, which SkyPilot's managed-job controller
# writes as a Python repr inside a shell script: only characters that mean nothing to a shell.
URL_RE = re.compile(r"^https?://[A-Za-z0-9._~:/%+@=-]+$")
MAX_GPUS_PER_NODE = 16


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cloud", help="train on cloud GPUs: write a SkyPilot task for this config")
    kinds = p.add_subparsers(dest="cloud_kind", metavar="KIND")
    sp = kinds.add_parser(
        "skypilot",
        help="write a SkyPilot task (sky launch / sky jobs launch) that trains this config",
        description=(__doc__ or "").split("\n\n", 1)[1],
    )
    add_config_args(sp)
    sp.add_argument(
        "--gpus", default="H100:1", metavar="TYPE[:N]", help="GPUs per node, e.g. H100:8, A100-80GB:4, L4"
    )
    sp.add_argument(
        "--nodes", type=int, metavar="N", help="machines (default: the config's distributed.num_machines)"
    )
    sp.add_argument(
        "--spot",
        action="store_true",
        help="spot instances; launch as a managed job (sky jobs launch) so preemptions resume the run",
    )
    sp.add_argument(
        "--cloud", metavar="NAME", help="restrict to one cloud (aws, gcp, azure, …); default: any"
    )
    sp.add_argument(
        "--bucket",
        metavar="NAME",
        help="bucket for the run directory (created if missing); default: flux2-lora-<run name>",
    )
    sp.add_argument(
        "--store",
        choices=["s3", "gcs", "azure", "r2", "ibm", "oci"],
        help="bucket store (default: the cloud's)",
    )
    sp.add_argument(
        "--package",
        metavar="SPEC",
        help="pip spec of flux2-lora to install, with its extras (default: this source tree, synced as the "
        "task's workdir, with the quantization and optimizers extras)",
    )
    sp.add_argument(
        "--torch-index",
        default=DEFAULT_TORCH_INDEX,
        metavar="URL",
        help="pip index of the CUDA torch build (default: %(default)s)",
    )
    sp.add_argument(
        "--out", default="sky-task.yaml", metavar="FILE", help="task file to write (default: %(default)s)"
    )
    add_section_flags(sp, "distributed", ["strategy"])
    sp.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


class CloudError(ValueError):
    """A setting that cannot become a task, named by flag or field."""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as literal blocks, as people write SkyPilot tasks."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


# The options whose values end up in the task (its scripts, its YAML, its file mounts).
TEXT_OPTIONS = ("gpus", "cloud", "bucket", "store", "package", "torch_index", "out")


def check_one_line(value: object, name: str) -> None:
    """A value placed in a shell script or a task field must be one line: a newline would start a new
    command in ``setup``/``run`` whatever the quoting, and a NUL cuts it short."""
    if isinstance(value, str) and any(c in value for c in "\n\r\0"):
        raise CloudError(f"{name}: {value!r} holds a newline or NUL character; give it on one line")


def run(args: argparse.Namespace) -> int:
    try:
        for option in TEXT_OPTIONS:
            check_one_line(getattr(args, option, None), "--" + option.replace("_", "-"))
        _, per_node = parse_gpus(args.gpus)
    except CloudError as e:
        return fail(str(e), 2)
    # The config as it will train: one process per GPU of a node.
    args.overrides = [*args.overrides, *section_overrides(args), f"distributed.num_processes={per_node}"]
    config = config_from_args(args)
    if config is None:
        return 2
    try:
        task, resolved = build_task(config, args)
    except CloudError as e:
        return fail(str(e), 2)
    out = Path(args.out).expanduser()
    config_file = out.with_name(out.stem + ".config.yaml")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
        task["file_mounts"][f"{MOUNT}/config.yaml"] = str(config_file.resolve())
        text = yaml.dump(task, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
        out.write_text(_header(args) + text, encoding="utf-8")
    except OSError as e:
        return fail(f"--out: cannot write {show(out)}: {e.strerror or e}")
    launch = "sky jobs launch" if args.spot else "sky launch -c flux2-lora"
    secret = " --secret HF_TOKEN" if "secrets" in task else ""
    print(f"wrote {show(out)} and {show(config_file)}; start it with: {launch} {show(out)}{secret}")
    return 0


def _header(args: argparse.Namespace) -> str:
    how = "sky jobs launch (managed: restarted after preemptions)" if args.spot else "sky launch"
    return f"# flux2-lora training task for SkyPilot, written by `flux2-lora cloud skypilot`; start with {how}.\n"


def parse_gpus(text: str) -> tuple[str, int]:
    m = GPUS_RE.match(text.strip())
    if not m:
        raise CloudError(f"--gpus: {text!r} is not TYPE or TYPE:COUNT (e.g. H100:8)")
    count = int(m.group(2) or 1)
    if not 1 <= count <= MAX_GPUS_PER_NODE:
        raise CloudError(f"--gpus: {count} GPUs per node; 1 to {MAX_GPUS_PER_NODE}")
    return m.group(1), count


def _bucket_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    return name if len(name) >= 3 else f"flux2-lora-{name}".strip("-")


def _local_source(path: str, field: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CloudError(f"{field}: {show(p)} does not exist here, so it cannot be uploaded")
    return p.resolve()


def _source_tree() -> Path | None:
    """The repository this package runs from (an editable install or a checkout), if any."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "flux2_lora").is_dir() else None


def build_task(config: Any, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the SkyPilot task, the run's config as the nodes read it)."""
    from flux2_lora.config.io import to_dict

    gpu, per_node = parse_gpus(args.gpus)
    nodes = args.nodes if args.nodes is not None else config.distributed.num_machines
    if not 1 <= nodes <= 1024:
        raise CloudError(f"--nodes: {nodes}; 1 to 1024")
    check_one_line(config.output.dir, "output.dir")
    if not URL_RE.match(args.torch_index):
        raise CloudError(
            f"--torch-index: {args.torch_index!r} is not an http(s) URL of letters, digits and ._~:/%+@=-"
        )
    run_name = Path(config.output.dir).name or "run"
    bucket = args.bucket or _bucket_name(f"flux2-lora-{run_name}")
    if not BUCKET_RE.match(bucket):
        raise CloudError(f"--bucket: {bucket!r} is not a bucket name (3–63 of a-z, 0-9 and -)")

    data = to_dict(config)
    mounts: dict[str, Any] = {}
    for field, section, key, target in (
        ("dataset.path", "dataset", "path", f"{MOUNT}/dataset"),
        ("validation.eval_folder", "validation", "eval_folder", f"{MOUNT}/eval"),
        ("model.path", "model", "path", f"{MOUNT}/model"),
    ):
        value = str(data[section][key]).strip()
        check_one_line(value, field)
        if not value or value.lower() == "demo":
            continue
        if REMOTE_RE.match(value):
            mounts[target] = value
        elif section == "model" and not Path(value).expanduser().exists() and "/" in value:
            continue  # a hub id: downloaded on the node
        else:
            source = _local_source(value, field)
            target = target + ".zip" if source.suffix.lower() == ".zip" else target
            mounts[target] = str(source)
        data[section][key] = target
    data["output"]["dir"] = f"{RUNS}/{run_name}"
    # One machine as written; the run command passes the node count and rank of each node.
    data["distributed"].update(num_processes=per_node, num_machines=1, machine_rank=0, main_process_ip="")
    data["model"]["device"] = "auto"
    store: dict[str, Any] = {"name": bucket, "mode": "MOUNT_CACHED"}
    if args.store:
        store["store"] = args.store
    mounts[RUNS] = store

    resources: dict[str, Any] = {"accelerators": f"{gpu}:{per_node}", "disk_size": 256}
    if args.spot:
        resources["use_spot"] = True
    if args.cloud:
        resources["cloud"] = args.cloud
    task: dict[str, Any] = {
        "name": _bucket_name(f"flux2-lora-{run_name}"),
        "num_nodes": nodes,
        "resources": resources,
        "envs": {"TORCH_INDEX": args.torch_index},
    }
    if data["model"]["path"] != "demo" and not str(data["model"]["path"]).startswith(MOUNT):
        task["secrets"] = {"HF_TOKEN": None}  # gated hub models: sky launch --secret HF_TOKEN
    package = args.package
    if package is None:
        tree = _source_tree()
        if tree is None:
            version = importlib.metadata.version("flux2-lora")
            package = f"flux2-lora[quantization,optimizers]=={version}"
        else:
            task["workdir"] = str(tree)  # synced to ~/sky_workdir (.gitignore'd files stay here)
            package = ".[quantization,optimizers]"
    # Every value from outside (a flag, a package version) is shlex-quoted: the shell sees it as one word.
    torch_spec = shlex.quote(f"torch=={_torch_version()}")
    task["setup"] = "\n".join(
        [
            "set -e",
            "python -m pip install --upgrade pip",
            f'python -m pip install {torch_spec} --index-url "$TORCH_INDEX"',
            f"python -m pip install {shlex.quote(package)}",
        ]
    )
    task["file_mounts"] = mounts
    task["run"] = "\n".join(
        [
            "set -e",
            'MAIN_IP=$(echo "$SKYPILOT_NODE_IPS" | head -n1)',
            f"flux2-lora train {shlex.quote(MOUNT + '/config.yaml')} --resume auto \\",
            '  --num-processes "$SKYPILOT_NUM_GPUS_PER_NODE" --num-machines "$SKYPILOT_NUM_NODES" \\',
            '  --machine-rank "$SKYPILOT_NODE_RANK" --main-process-ip "$MAIN_IP" --main-process-port 29500',
        ]
    )
    return task, data


def _torch_version() -> str:
    try:
        return importlib.metadata.version("torch").split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return "2.13.0"
