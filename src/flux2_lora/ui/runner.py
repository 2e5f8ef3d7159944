"""Starting, watching and stopping training runs for the web UI (pure: no gradio, no torch).

The UI never trains in its own process: it writes the run's config, starts ``flux2-lora train`` as a
subprocess (an argument list, never a shell) and from then on only reads the run directory through
:mod:`flux2_lora.runs`. Clients name runs by their folder name under the runs root, never by a path, so
nothing outside that root can be read, written or served.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import runs
from ..config import TrainConfig
from ..config_io import save_config

LAUNCH_CONFIG = "ui-launch.yaml"  # the config the UI handed to the trainer (the trainer writes config.yaml)
LAUNCH_LOG = "ui-launch.log"  # the trainer's stdout/stderr: shows why a run died before its log existed
UI_DIR = ".ui"  # uploads and generated images; hidden so `flux2-lora runs` and people skip it
TEMPLATES_DIR = "templates"
RESERVED = (UI_DIR, TEMPLATES_DIR)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STOP_GRACE_S = 60.0  # a graceful stop writes a checkpoint first; after this the trainer is killed


class UIError(Exception):
    """A request the UI refuses; ``field`` names the config field it concerns, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Launch:
    """A trainer process this UI started (the run directory is the source of truth; this adds the exit code)."""

    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.time)


class RunManager:
    def __init__(self, runs_root: str | Path, *, python: str = sys.executable) -> None:
        self.root = Path(runs_root).expanduser().resolve()
        self.python = python
        self._launches: dict[str, Launch] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------- paths
    @property
    def ui_dir(self) -> Path:
        return self.root / UI_DIR

    @property
    def uploads_dir(self) -> Path:
        return self.ui_dir / "uploads"

    @property
    def generated_dir(self) -> Path:
        return self.ui_dir / "generated"

    @property
    def templates_dir(self) -> Path:
        return self.root / TEMPLATES_DIR

    def ensure_dirs(self) -> None:
        for d in (self.root, self.uploads_dir, self.generated_dir, self.templates_dir):
            d.mkdir(parents=True, exist_ok=True)

    def run_dir_for(self, output_dir: str) -> Path:
        """The run directory for ``output.dir``: a folder directly under the runs root, or UIError."""
        p = Path(output_dir).expanduser()
        if p.is_absolute():
            resolved = p.resolve()
        else:
            # Presets and the CLI say "runs/<name>"; in the UI that means <name> under its runs root,
            # wherever that root is.
            parts = p.parts[1:] if p.parts[:1] in (("runs",), (self.root.name,)) else p.parts
            resolved = (self.root.joinpath(*parts) if parts else self.root).resolve()
        if resolved.parent != self.root or resolved.name in RESERVED or not NAME_RE.match(resolved.name):
            raise UIError(
                f"the web UI trains in a folder directly under its runs directory {self.root}: give a "
                f"name such as 'my-lora' (or runs/my-lora); {output_dir!r} is not one",
                "output.dir",
            )
        return resolved

    def run_dir(self, name: str) -> Path:
        """A run named by the client: a plain folder name under the root, nothing else."""
        name = (name or "").strip()
        if not NAME_RE.match(name) or name in RESERVED:
            raise UIError(f"no run named {name!r}")
        path = self.root / name
        if not path.is_dir():
            raise UIError(f"no run named {name!r} under {self.root}")
        return path

    def _suggest(self, name: str) -> str:
        candidate, n = name, 1
        while (self.root / candidate).exists():
            n += 1
            candidate = f"{name}-{n}"
        return f"runs/{candidate}"  # how a form value names it (see run_dir_for)

    def inside(self, path: str | Path) -> bool:
        """Whether a file may be served: it lies under the runs root (uploads and images included)."""
        try:
            return Path(path).resolve().is_relative_to(self.root)
        except (OSError, ValueError):
            return False

    # ------------------------------------------------------------------------------------- start
    def is_busy(self, run_dir: Path) -> bool:
        launch = self._launches.get(run_dir.name)
        return (launch is not None and launch.proc.poll() is None) or runs.is_locked(run_dir)

    def start(self, config: TrainConfig, *, resume: str | None = None, num_processes: int = 1) -> str:
        """Launch the trainer for ``config``; return the run name. UIError names the field at fault."""
        if not 1 <= num_processes <= 64:
            raise UIError("processes must be between 1 and 64")
        run_dir = self.run_dir_for(config.output.dir)
        with self._lock:  # two clicks must not start two trainers in one directory
            if self.is_busy(run_dir):
                raise UIError(
                    f"{run_dir} is in use by a running trainer; stop it first or choose another directory",
                    "output.dir",
                )
            if resume is None and (run_dir / runs.STATUS_FILE).exists():
                status = runs.read_status(run_dir)
                state = f"a {status.state} run at step {status.step}" if status else "a run"
                raise UIError(
                    f"{run_dir} already holds {state}; resume it from the monitor, or choose a new "
                    f"directory such as {self._suggest(run_dir.name)}",
                    "output.dir",
                )
            if resume is not None:
                self._check_resume(run_dir, resume)
            run_dir.mkdir(parents=True, exist_ok=True)
            config = config.model_copy(deep=True)
            config.output.dir = str(run_dir)  # absolute: the trainer's cwd must not matter
            launch_cfg = run_dir / LAUNCH_CONFIG
            save_config(config, launch_cfg)
            cmd = [self.python, "-m", "flux2_lora.cli", "train", f"--config={launch_cfg}"]
            if resume is not None:
                cmd.append(f"--resume={resume}")
            if num_processes > 1:
                cmd.append(f"--num-processes={num_processes}")
            with open(run_dir / LAUNCH_LOG, "ab") as log:
                log.write(f"$ {' '.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    # Its own session: a Ctrl-C in the UI's terminal must not kill training mid-step.
                    start_new_session=True,
                )
            self._launches[run_dir.name] = Launch(proc)
        return run_dir.name

    def _check_resume(self, run_dir: Path, resume: str) -> None:
        if resume == "latest":
            if runs.latest_checkpoint(run_dir) is None:
                raise UIError(f"{run_dir.name} has no complete checkpoint to resume from")
            return
        names = {p.name: p for p in runs.list_checkpoints(run_dir)}
        if Path(resume).name not in names or Path(resume).resolve() != names[Path(resume).name].resolve():
            raise UIError(f"{resume!r} is not a checkpoint of {run_dir.name} (known: {', '.join(names)})")

    def resume(self, name: str, checkpoint: str = "latest", num_processes: int = 1) -> str:
        """Continue a run from one of its checkpoints with the config it ran with."""
        from ..config_io import load_config

        run_dir = self.run_dir(name)
        cfg_file = run_dir / runs.CONFIG_FILE
        if not cfg_file.is_file():
            raise UIError(f"{name} has no {runs.CONFIG_FILE} to resume with")
        config, _ = load_config(file=cfg_file)
        config.output.dir = str(run_dir)
        target = "latest" if checkpoint in ("", "latest") else str(run_dir / runs.CHECKPOINTS_DIR / checkpoint)
        return self.start(config, resume=target, num_processes=num_processes)

    # ------------------------------------------------------------------------------------- stop
    def stop(self, name: str, grace_s: float = STOP_GRACE_S) -> str:
        """Ask the trainer to checkpoint and exit; kill it if it has not within ``grace_s``."""
        run_dir = self.run_dir(name)
        status = runs.read_status(run_dir)
        if not self.is_busy(run_dir) or (status is not None and status.is_final):
            return f"{name} is not running"
        runs.request_stop(run_dir)

        def _enforce() -> None:
            deadline = time.time() + grace_s
            while time.time() < deadline:
                if not runs.is_locked(run_dir):
                    return
                time.sleep(0.5)
            runs.force_stop(run_dir)

        threading.Thread(target=_enforce, name=f"stop-{name}", daemon=True).start()
        return f"stop requested: {name} saves a checkpoint and exits (killed after {grace_s:.0f} s otherwise)"

    # ------------------------------------------------------------------------------------- read
    def poll(self, name: str, *, log_lines: int = 40) -> dict[str, Any]:
        """Everything the monitor shows about one run, read from its directory."""
        run_dir = self.run_dir(name)
        status = runs.read_status(run_dir)
        launch = self._launches.get(name)
        code = launch.proc.poll() if launch else None
        if status is None:
            # No status.json yet: the trainer is importing, or died before it could write one.
            if launch is not None and code is None:
                status = runs.RunStatus(state="starting", message="starting the trainer process")
            elif launch is not None:
                status = runs.RunStatus(
                    state="failed",
                    message=f"the trainer exited with code {code} before starting",
                    error=self.launch_log(name, 12),
                )
            else:
                status = runs.RunStatus(state="unknown", message="no status.json in this folder")
        elif status.state == "failed" and code is not None and not status.error:
            status.error = self.launch_log(name, 12)
        metrics = runs.read_jsonl(run_dir / runs.METRICS_FILE)
        log = runs.log_tail(run_dir, log_lines) or self.launch_log(name, log_lines)
        lora = run_dir / runs.LORA_FILE
        return {
            "name": name,
            "path": str(run_dir),
            "status": status.to_dict(),
            "exit_code": code,
            "metrics": metrics,
            "samples": self.samples(name),
            "log": log,
            "lora": str(lora) if lora.is_file() else None,
            "checkpoints": [p.name for p in runs.list_checkpoints(run_dir)],
        }

    def launch_log(self, name: str, lines: int = 40) -> str:
        path = self.root / name / LAUNCH_LOG
        if not path.is_file():
            return ""
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 32 * 1024))
            text = f.read().decode("utf-8", errors="replace")
        # tqdm redraws with carriage returns; keep the last state of each line.
        return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines()[-lines:])

    def samples(self, name: str) -> list[dict[str, Any]]:
        """Validation images with their step and prompt; entries pointing outside the run are dropped."""
        run_dir = self.run_dir(name)
        out = []
        for rec in runs.read_jsonl(run_dir / runs.SAMPLES_INDEX):
            file = rec.get("file")
            if not isinstance(file, str):
                continue
            path = (run_dir / file).resolve()
            if path.is_relative_to(run_dir.resolve()) and path.is_file():
                out.append({"step": rec.get("step"), "prompt": rec.get("prompt", ""), "path": str(path)})
        return out

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run under the root, newest first, with its state and LoRA file."""
        rows: list[dict[str, Any]] = []
        seen = set()
        for run_dir in runs.iter_runs(self.root):
            if run_dir == self.root or run_dir.name in RESERVED:
                continue
            s = runs.summarize(run_dir)
            seen.add(run_dir.name)
            st = s.status
            rows.append(
                {
                    "name": run_dir.name,
                    "state": st.state if st else "unknown",
                    "step": st.step if st else 0,
                    "total_steps": st.total_steps if st else 0,
                    "updated_at": (st.updated_at or st.started_at or 0.0) if st else 0.0,
                    "lora": str(s.lora) if s.lora else None,
                    "checkpoints": [p.name for p in s.checkpoints],
                }
            )
        for name, launch in self._launches.items():  # started a moment ago, no status.json yet
            if name not in seen and (self.root / name).is_dir():
                rows.append(
                    {
                        "name": name,
                        "state": "starting" if launch.proc.poll() is None else "failed",
                        "step": 0,
                        "total_steps": 0,
                        "updated_at": launch.started,
                        "lora": None,
                        "checkpoints": [],
                    }
                )
        return sorted(rows, key=lambda r: r["updated_at"], reverse=True)

    def lora_file(self, name: str) -> Path:
        path = self.run_dir(name) / runs.LORA_FILE
        if not path.is_file():
            raise UIError(f"{name} has no LoRA file yet (it is written when training finishes)")
        return path

    def run_config(self, name: str) -> TrainConfig | None:
        from ..config_io import ConfigError, load_config

        path = self.run_dir(name) / runs.CONFIG_FILE
        if not path.is_file():
            path = self.run_dir(name) / LAUNCH_CONFIG
        try:
            return load_config(file=path)[0] if path.is_file() else None
        except ConfigError:
            return None

    def shutdown(self) -> None:
        """Reap finished children (running trainers are left alone: they own their run directories)."""
        for launch in self._launches.values():
            launch.proc.poll()
