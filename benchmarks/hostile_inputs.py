"""Issue 18's hostile and careless inputs, re-run as a user or attacker would, each case sorted into one of:
clear error, handled, SECURITY HOLE, DATA LOSS, TRACEBACK, SILENTLY WRONG (and harness error, for a case this
script could not drive). Prints one line per case and the counts.

Everything happens under a temp folder (HOME included), the UI on 127.0.0.1, trainers on the embedded demo.
Usage: python benchmarks/hostile_inputs.py [--only SUBSTRING] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

OK, HANDLED = "clear error", "handled"
HOLE, LOSS, TB, WRONG = "SECURITY HOLE", "DATA LOSS", "TRACEBACK", "SILENTLY WRONG"
HARNESS = "harness error"

TINY = [
    "training.max_steps=4",
    "training.warmup_steps=0",
    "validation.enabled=false",
    "logging.tensorboard=false",
    "logging.log_every=1",
    "output.checkpoint_every=2",
]


class Ctx:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {
            **os.environ,
            "HOME": str(tmp / "home"),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT / "src"),
        }
        (tmp / "home").mkdir(exist_ok=True)
        self.n = 0

    def fresh(self, name: str) -> Path:
        self.n += 1
        p = self.tmp / f"{self.n:03d}-{name}"
        p.mkdir()
        return p

    def cli(
        self, *args: str, stdin: str | None = None, timeout: float = 300, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flux2_lora.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            input=stdin,
            cwd=cwd or self.tmp,
        )

    def train(
        self, out: Path, *sets: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "flux2_lora.cli", "train", "--preset", "quickstart"]
        for s in (f"output.dir={out}", *TINY, *sets):
            argv += ["--set", s]
        return subprocess.run(
            argv + list(extra),
            capture_output=True,
            text=True,
            timeout=600,
            env={**self.env, **(env or {})},
            cwd=self.tmp,
        )


def has_tb(proc: subprocess.CompletedProcess[str]) -> bool:
    return (
        "Traceback (most recent call last)" in (proc.stderr + proc.stdout)
        or "--- Logging error ---" in proc.stderr
    )


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    if has_tb(proc):
        return TB
    return OK if proc.returncode != 0 else WRONG


def status(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def png_bytes(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- CLI cases


def cloud_package_injection(c: Ctx) -> tuple[str, str]:
    d = c.fresh("cloud")
    out = d / "task.yaml"
    marker = d / "pwned"
    p = c.cli(
        "cloud", "skypilot", "--preset", "quickstart", "--package", f"x$(touch {marker})", "--out", str(out)
    )
    if has_tb(p):
        return TB, p.stderr[-300:]
    if p.returncode != 0:
        return OK, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "refused"
    import yaml

    task = yaml.safe_load(out.read_text())
    stub = d / "bin"
    stub.mkdir()
    for tool in ("python", "python3", "pip", "uv", "flux2-lora", "accelerate", "nvidia-smi"):
        (stub / tool).write_text("#!/bin/sh\nexit 0\n")
        (stub / tool).chmod(0o755)
    env = {"PATH": f"{stub}:/usr/bin:/bin", "HOME": str(d)}
    subprocess.run(["bash", "-c", task.get("setup") or ""], env=env, cwd=d, capture_output=True, timeout=60)
    return (HOLE, "setup ran the injected command") if marker.exists() else (HANDLED, "quoted")


def cloud_newline(c: Ctx) -> tuple[str, str]:
    d = c.fresh("cloud-nl")
    p = c.cli(
        "cloud",
        "skypilot",
        "--preset",
        "quickstart",
        "--package",
        "x\nrm -rf /tmp/nothing",
        "--out",
        str(d / "t.yaml"),
    )
    if has_tb(p):
        return TB, ""
    if p.returncode != 0:
        return OK, p.stderr.strip().splitlines()[-1]
    text = (d / "t.yaml").read_text()
    return (
        (HOLE, "newline in setup")
        if "\nrm -rf" in text.replace("\\n", "\n") and "'x" not in text
        else (HANDLED, "quoted")
    )


def _two_runs(c: Ctx, name: str) -> tuple[Path, Path]:
    d = c.fresh(name)
    runs = []
    for i, loss in enumerate(("NaN", "Infinity")):
        r = d / f"run{i}"
        r.mkdir()
        (r / "config.yaml").write_text("lora:\n  rank: 8\n")
        (r / "status.json").write_text(json.dumps({"state": "finished", "step": 3, "total_steps": 3}))
        lines = [
            {"step": 1, "loss": 1.0},
            {"step": "x", "loss": 0.5},
            f'{{"step": 2, "loss": {loss}}}',
            {"step": 3, "loss": [1]},
        ]
        (r / "metrics.jsonl").write_text(
            "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
        )
        runs.append(r)
    return runs[0], runs[1]


def compare_bad_metrics(c: Ctx) -> tuple[str, str]:
    a, b = _two_runs(c, "cmp")
    p = c.cli("compare", str(a), str(b), "--json")
    if has_tb(p):
        return TB, p.stderr.strip().splitlines()[-1]
    return (HANDLED, "bad lines skipped") if p.returncode == 0 else (OK, p.stderr.strip()[-200:])


def compare_html_non_utf8(c: Ctx) -> tuple[str, str]:
    a, b = _two_runs(c, "cmp-u8")
    weird = a.parent / os.fsdecode(b"caf\xe9-run")
    a.rename(weird)
    p = c.cli("compare", os.fsdecode(bytes(weird)), str(b), "--html", str(a.parent / "r.html"))
    return (
        (TB, p.stderr.strip().splitlines()[-1]) if has_tb(p) else (HANDLED if p.returncode == 0 else OK, "")
    )


def compare_unreadable_config(c: Ctx) -> tuple[str, str]:
    a, b = _two_runs(c, "cmp-cfg")
    (a / "config.yaml").write_text("lora: [unclosed\n")
    p = c.cli("compare", str(a), str(b), "--json")
    if has_tb(p):
        return TB, ""
    if p.returncode != 0:
        return OK, p.stderr.strip()[-200:]
    body = json.loads(p.stdout)
    diff = body.get("differences") or body.get("config_diff") or body.get("diff") or {}
    return (
        (WRONG, f"{len(diff)} fields differ")
        if isinstance(diff, (dict, list)) and len(diff) > 3
        else (HANDLED, "")
    )


def compare_broken_pipe(c: Ctx) -> tuple[str, str]:
    a, b = _two_runs(c, "cmp-pipe")
    p = subprocess.run(
        f"{sys.executable} -m flux2_lora.cli compare {a} {b} --json | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        env=c.env,
        timeout=120,
    )
    return (TB, "BrokenPipeError") if "Traceback" in p.stderr or "BrokenPipe" in p.stderr else (HANDLED, "")


def compare_legend_30(c: Ctx) -> tuple[str, str]:
    try:
        from flux2_lora.experiments import compare_plots as cmp
    except ImportError as e:
        return HARNESS, str(e)
    colours = getattr(cmp, "run_colors", None)
    if colours is None:
        return HARNESS, "no colour helper to inspect (check the curves PNG by eye)"
    got = colours(30)
    return (
        (HANDLED, "30 distinct")
        if len(set(map(str, got))) == 30
        else (WRONG, f"{len(set(map(str, got)))} distinct")
    )


def ui_port_out_of_range(c: Ctx) -> tuple[str, str]:
    p = c.cli("ui", "--port", "99999", "--runs-dir", str(c.fresh("ui-port")), timeout=60)
    return refused(p), (p.stderr.strip().splitlines() or [""])[-1]


def ui_port_in_use(c: Ctx) -> tuple[str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        try:
            p = c.cli("ui", "--port", str(port), "--runs-dir", str(c.fresh("ui-busy")), timeout=60)
        except subprocess.TimeoutExpired:
            return WRONG, "started on another port or hung"
    return refused(p), (p.stderr.strip().splitlines() or [""])[-1]


def ui_runs_dir_file(c: Ctx) -> tuple[str, str]:
    f = c.fresh("ui-file") / "runs"
    f.write_text("not a folder")
    try:
        p = c.cli("ui", "--runs-dir", str(f), "--port", str(free_port()), timeout=60)
    except subprocess.TimeoutExpired:
        return WRONG, "served"
    return refused(p), (p.stderr.strip().splitlines() or [""])[-1]


def ui_runs_dir_home(c: Ctx) -> tuple[str, str]:
    home = Path(c.env["HOME"])
    try:
        p = c.cli("ui", "--runs-dir", str(home), "--port", str(free_port()), timeout=40)
    except subprocess.TimeoutExpired:
        return HOLE, "serves the home folder"
    made = [x for x in ("uploads", "templates") if (home / x).exists()]
    if made:
        return HOLE, f"created {made} in home"
    return refused(p), (p.stderr.strip().splitlines() or [""])[-1]


def ui_runs_dir_root(c: Ctx) -> tuple[str, str]:
    # Not started for real (it would create /uploads): the same check the command runs, called directly.
    from flux2_lora.webui.paths import AppPaths

    try:
        AppPaths.create("/", [])
    except Exception as e:
        return OK, f"{type(e).__name__}: {e}"[:160]
    return HOLE, "AppPaths accepts /"


def sweep_dir_home(c: Ctx) -> tuple[str, str]:
    d = c.fresh("sweep-home")
    spec = d / "spec.yaml"
    spec.write_text("base:\n  presets: [quickstart]\nparameters:\n  lora.rank: {values: [4]}\nmethod: grid\n")
    home = Path(c.env["HOME"])
    p = c.cli("sweep", str(spec), "--dir", str(home), "--gpu", "24", timeout=300)
    wrote = [x.name for x in home.iterdir() if x.name.startswith(("study", "trial-"))]
    if wrote:
        return HOLE, f"wrote {wrote} into home"
    return refused(p), (p.stderr.strip().splitlines() or [""])[-1]


def sweep_spec_error_newlines(c: Ctx) -> tuple[str, str]:
    d = c.fresh("sweep-spec")
    spec = d / "spec.yaml"
    spec.write_text("parameters:\n  lora.rnak: {values: [4]}\n  training.lr: {values: [1]}\n")
    p = c.cli("sweep", str(spec), "--dir", str(d / "sw"), timeout=120)
    if has_tb(p):
        return TB, ""
    if "\\n" in p.stderr:
        return WRONG, "literal \\n in the message"
    return refused(p), (p.stderr.strip().splitlines() or [""])[0]


def estimate_bad_gpu(c: Ctx) -> tuple[str, str]:
    bad = []
    for g in ("-5", "0", "nan", "inf", "banana"):
        p = c.cli("estimate", "--preset", "quickstart", "--gpu", g, "--json")
        if has_tb(p):
            return TB, g
        if p.returncode == 0:
            bad.append(g)
    return (WRONG, f"accepted {bad}") if bad else (OK, "all refused")


def generate_nul_prompt(c: Ctx) -> tuple[str, str]:
    d = c.fresh("gen")
    p = c.cli("generate", "--prompt", "a\x01red\x07square", "--steps", "1", "--out", str(d / "x.png"))
    if has_tb(p):
        return TB, ""
    return (
        (OK, p.stderr.strip().splitlines()[-1])
        if p.returncode != 0
        else (WRONG, "control characters accepted")
    )


# ---------------------------------------------------------------- trainer cases


def stop_during_last_step(c: Ctx) -> tuple[str, str]:
    from flux2_lora.hooks import HOLD_ENV

    out = c.fresh("stop-last") / "run"
    argv = [sys.executable, "-m", "flux2_lora.cli", "train", "--preset", "quickstart"]
    for s in (f"output.dir={out}", *TINY, "output.checkpoint_every=250"):
        argv += ["--set", s]
    proc = subprocess.Popen(
        argv,
        env={**c.env, HOLD_ENV: "step@4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=c.tmp,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (out / ".held-step").exists() and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is not None:
        return HARNESS, "trainer exited before the hold"
    proc.terminate()  # SIGTERM, as a sweep timeout or a service manager would, then let the step end
    (out / ".release-step").write_text("")
    _, err = proc.communicate(timeout=300)
    lora = list(out.glob("*.safetensors"))
    cks = list((out / "checkpoints").glob("checkpoint-*")) if (out / "checkpoints").exists() else []
    if "Traceback" in err:
        return TB, err.strip().splitlines()[-1]
    return (
        (HANDLED, f"lora={bool(lora)} checkpoints={len(cks)}")
        if lora or cks
        else (LOSS, "no LoRA, no checkpoint")
    )


def fresh_run_over_foreign_files(c: Ctx) -> tuple[str, str]:
    out = c.fresh("foreign") / "run"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "mine.bin").write_bytes(b"precious")
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"precious-lora")
    p = c.train(out)
    if has_tb(p):
        return TB, ""
    kept = [f for f in out.rglob("*") if f.is_file() and f.read_bytes() in (b"precious", b"precious-lora")]
    return (
        (HANDLED, f"kept {len(kept)} of 2 (archived or refused)")
        if len(kept) == 2
        else (LOSS, f"kept {len(kept)} of 2")
    )


def refused_resume_keeps_record(c: Ctx) -> tuple[str, str]:
    out = c.fresh("refused-resume") / "run"
    p = c.train(out)
    if p.returncode != 0:
        return HARNESS, p.stderr[-200:]
    before = ((out / "status.json").read_bytes(), (out / "config.yaml").read_bytes())
    p = c.train(out, "lora.rank=16", "lora.alpha=16", "training.max_steps=6", extra=("--resume", "latest"))
    after = ((out / "status.json").read_bytes(), (out / "config.yaml").read_bytes())
    if has_tb(p):
        return TB, ""
    if p.returncode == 0:
        return WRONG, "resumed with another rank"
    return (
        (OK, p.stderr.strip().splitlines()[-1])
        if before == after
        else (LOSS, "status.json/config.yaml rewritten")
    )


def _checkpointed_run(c: Ctx, name: str) -> Path:
    out = c.fresh(name) / "run"
    p = c.train(out)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-300:])
    return out


def meta_step_huge(c: Ctx) -> tuple[str, str]:
    out = _checkpointed_run(c, "meta-huge")
    ck = sorted((out / "checkpoints").glob("checkpoint-*"))[-1]
    meta = json.loads((ck / "meta.json").read_text())
    meta["step"] = 10**30
    (ck / "meta.json").write_text(json.dumps(meta))
    p = c.train(out, "training.max_steps=6", extra=("--resume", str(ck)))
    if has_tb(p):
        return TB, ""
    return (
        (OK, p.stderr.strip().splitlines()[-1])
        if p.returncode != 0
        else (WRONG, f"accepted: {status(out).get('step')}")
    )


def resume_past_max_steps(c: Ctx) -> tuple[str, str]:
    out = _checkpointed_run(c, "past-max")
    p = c.train(out, "training.max_steps=3", extra=("--resume", "latest"))
    if has_tb(p):
        return TB, ""
    st = status(out)
    if "7" in p.stdout + p.stderr and "steps 5" in p.stdout + p.stderr:
        return WRONG, "trained backwards"
    if int(st.get("step") or 0) > int(st.get("total_steps") or 0):
        return WRONG, f"status {st.get('step')}/{st.get('total_steps')}"
    return (OK if p.returncode != 0 else HANDLED), (p.stderr.strip().splitlines() or [""])[-1]


def nan_loss_written(c: Ctx) -> tuple[str, str]:
    out = c.fresh("nan") / "run"
    p = c.train(out, "training.learning_rate=10", "training.max_grad_norm=0", "training.optimizer=sgd")
    if has_tb(p):
        return TB, ""
    text = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
    if "NaN" in text or "Infinity" in text:
        return WRONG, "NaN written to metrics.jsonl"
    return (
        HANDLED,
        f"state {status(out).get('state')}: {status(out).get('reason') or status(out).get('error') or ''}"[
            :120
        ],
    )


def disk_full_at_checkpoint(c: Ctx) -> tuple[str, str]:
    mnt = c.fresh("full") / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        return HARNESS, "cannot mount a small tmpfs here"
    try:
        out = mnt / "run"
        p = c.train(out, "output.checkpoint_every=1", "lora.rank=32", "lora.alpha=32")
        tmp_left = list(out.rglob(".tmp-*"))
        st = status(out)
        if has_tb(p):
            return TB, "traceback on a full disk"
        if tmp_left:
            return WRONG, f"left {tmp_left[0].name}"
        if p.returncode == 0:
            return HANDLED, "fit on the small disk"
        return (
            (OK, p.stderr.strip().splitlines()[-1][:120])
            if st.get("state") == "failed"
            else (WRONG, f"status {st.get('state')}")
        )
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ---------------------------------------------------------------- UI cases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served_ui(c: Ctx, auth: tuple[str, str] | None = None) -> Iterator[tuple[str, Path, Path]]:
    from flux2_lora.webui import monitor
    from flux2_lora.webui.app import launch

    runs, data = c.fresh("ui-runs"), c.fresh("ui-data")
    kwargs: dict[str, Any] = {
        "port": free_port(),
        "data_dirs": [str(data)],
        "max_upload_bytes": 1 << 20,
        "prevent_thread_lock": True,
        "quiet": True,
    }
    if auth:
        kwargs["auth"] = auth
    try:
        app, url = launch(str(runs), **kwargs)
    except TypeError:
        kwargs.pop("auth", None)
        app, url = launch(str(runs), **kwargs)
    try:
        yield url.rstrip("/"), runs, data
    finally:
        monitor.stop_all()
        app.close()


def http_get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host = url.split("//", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def ui_cases(c: Ctx) -> list[tuple[str, str, str]]:
    from gradio_client import Client, handle_file

    results: list[tuple[str, str, str]] = []

    def case(name: str, fn: Callable[[], tuple[str, str]]) -> None:
        try:
            cat, detail = fn()
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            cat, detail = (
                (TB if "Traceback" in text or "AppError" in type(e).__name__ else HARNESS),
                text[:160],
            )
        results.append((name, cat, detail))

    with served_ui(c) as (url, runs, data):
        client = Client(url, verbose=False, download_files=False)
        outside = c.fresh("outside")
        (outside / "secret.png").write_bytes(png_bytes())
        (outside / "secret.txt").write_text("a secret caption")

        def sweep_with(params: dict[str, Any], base_set: dict[str, Any] | None = None) -> tuple[str, str]:
            spec = {
                "base": {
                    "presets": ["quickstart"],
                    "set": {"training.max_steps": 2, "training.warmup_steps": 0, **(base_set or {})},
                },
                "parameters": params,
                "method": "grid",
            }
            r = client.predict(spec, f"sw{c.n}", "24", api_name="/start_sweep")
            c.n += 1
            if r.get("ok"):
                return HOLE, "sweep started with a path outside the allowed folders"
            return OK, r["errors"][0]["field"]

        case(
            "sweep parameter dataset.path outside",
            lambda: sweep_with({"dataset.path": {"values": [str(outside)]}}),
        )
        case(
            "sweep parameter model.path outside",
            lambda: sweep_with({"model.path": {"values": [str(outside)]}}),
        )
        case(
            "sweep parameter eval_folder outside",
            lambda: sweep_with({"validation.eval_folder": {"values": [str(outside)]}}),
        )
        case(
            "sweep base.set eval_folder outside",
            lambda: sweep_with({"lora.rank": {"values": [4]}}, {"validation.eval_folder": str(outside)}),
        )

        def inner_zip() -> tuple[str, str]:
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as zf:
                zf.writestr("a.png", png_bytes())
                zf.writestr("checkpoints/checkpoint-999/meta.json", json.dumps({"step": 999}))
            z = c.fresh("zip") / "outer.zip"
            with zipfile.ZipFile(z, "w") as zf:
                zf.writestr("inner.zip", inner.getvalue())
            up = client.predict(handle_file(str(z)), api_name="/upload_dataset")
            if not up.get("ok"):
                return OK, up.get("message", "")[:120]
            check = client.predict(
                {"dataset": {"path": str(Path(up["dataset_dir"]) / "inner.zip"), "resolution": 64}},
                api_name="/check_dataset",
            )
            return (
                (HOLE, "nested archive accepted")
                if check.get("ok")
                else (OK, str(check.get("message", ""))[:120])
            )

        case("zip inside an uploaded zip", inner_zip)

        def resume_from_upload() -> tuple[str, str]:
            z = c.fresh("zip-ck") / "ck.zip"
            with zipfile.ZipFile(z, "w") as zf:
                zf.writestr("a.png", png_bytes())
                zf.writestr("a.txt", "a red square")
                zf.writestr("checkpoints/checkpoint-999/meta.json", json.dumps({"step": 999}))
            up = client.predict(handle_file(str(z)), api_name="/upload_dataset")
            ck = Path(up["dataset_dir"]) / "checkpoints" / "checkpoint-999"
            from tests.webui.conftest import tiny_run_config

            cfg = tiny_run_config("from-upload")
            r = client.predict(cfg, str(ck), api_name="/start_run")
            return (
                (HOLE, "resume from an uploaded checkpoint accepted")
                if r.get("ok")
                else (OK, str(r.get("errors"))[:120])
            )

        case("resume from a checkpoint inside an upload", resume_from_upload)

        def served_html() -> tuple[str, str]:
            page = runs / "uploads" / "x" / "page.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text("<script>alert(1)</script>")
            code, headers, _ = http_get(url, f"/gradio_api/file={page}")
            if code != 200:
                return OK, f"HTTP {code}"
            disp = headers.get("content-disposition", "")
            if "attachment" in disp and headers.get("x-content-type-options") == "nosniff":
                return HANDLED, "attachment, nosniff"
            return HOLE, f"{headers.get('content-type')} {disp or 'inline'}"

        case("uploaded HTML served", served_html)

        def bad_host() -> tuple[str, str]:
            code, _, _ = http_get(url, "/", {"Host": "evil.example"})
            return (HOLE, f"HTTP {code} for Host: evil.example") if code == 200 else (OK, f"HTTP {code}")

        case("Host header evil.example", bad_host)

        def passwd() -> tuple[str, str]:
            code, _, body = http_get(url, "/gradio_api/file=/etc/passwd")
            return (HOLE, "served /etc/passwd") if code == 200 and b"root:" in body else (OK, f"HTTP {code}")

        case("file=/etc/passwd", passwd)

        for endpoint, args in (
            ("/estimate", ("",)),
            ("/check_dataset", ()),
            ("/start_run", ("",)),
            ("/preflight", ()),
            ("/autotune", ("",)),
        ):
            for bad in (["a", "list"], "a string", 42):

                def typed(
                    endpoint: str = endpoint, bad: Any = bad, args: tuple[Any, ...] = args
                ) -> tuple[str, str]:
                    try:
                        r = client.predict(bad, *args, api_name=endpoint)
                    except Exception as e:
                        return TB, f"{type(e).__name__}"
                    ok = isinstance(r, dict) and r.get("ok")
                    return (WRONG, "accepted") if ok else (OK, str(r)[:100])

                case(f"{endpoint} config={type(bad).__name__}", typed)

        for gpu in ("-5", "inf", "nan", "banana"):

            def gpu_case(gpu: str = gpu) -> tuple[str, str]:
                r = client.predict({"model": {"path": "demo"}}, gpu, api_name="/estimate")
                if not r.get("ok", True) or r.get("errors"):
                    return OK, str(r.get("errors") or r.get("message"))[:100]
                return WRONG, f"estimated against {r.get('gpu') or r.get('device')}"

            case(f"estimate gpu={gpu}", gpu_case)

        def gen_nul() -> tuple[str, str]:
            fake = runs / "fake-run"
            fake.mkdir(exist_ok=True)
            (fake / "pytorch_lora_weights.safetensors").write_bytes(b"{}")
            try:
                r = client.predict(
                    str(fake / "pytorch_lora_weights.safetensors"), "a\x00b", api_name="/generate"
                )
            except Exception as e:
                return TB, type(e).__name__
            text = str(r).lower()
            if isinstance(r, dict) and not r.get("ok") and ("prompt" in text or "control" in text):
                return OK, str(r)[:100]
            return WRONG, f"not refused for the prompt: {str(r)[:80]}"

        case("generate prompt with NUL", gen_nul)

    def throttle() -> tuple[str, str]:
        import base64

        with served_ui(c, auth=("user", "right")) as (url, _, _):
            start = time.time()
            tried = 0
            while time.time() - start < 5 and tried < 200:
                host = url.split("//", 1)[1]
                conn = http.client.HTTPConnection(host, timeout=30)
                body = "username=user&password=wrong"
                conn.request(
                    "POST", "/login", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
                )
                r = conn.getresponse()
                r.read()
                tried += 1
                if r.status == 429:
                    return OK, f"throttled after {tried} tries"
            _ = base64
            return (
                (HOLE, f"{tried} wrong passwords in 5 s")
                if tried >= 50
                else (HANDLED, f"{tried} tries in 5 s")
            )

    case("login brute force", throttle)
    return results


CLI_CASES: list[tuple[str, Callable[[Ctx], tuple[str, str]]]] = [
    ("cloud --package $(…)", cloud_package_injection),
    ("cloud --package newline", cloud_newline),
    ("compare bad metrics lines (x, NaN, list)", compare_bad_metrics),
    ("compare --html non-UTF-8 folder", compare_html_non_utf8),
    ("compare unreadable config.yaml", compare_unreadable_config),
    ("compare --json | head", compare_broken_pipe),
    ("compare 30-run legend colours", compare_legend_30),
    ("ui --port 99999", ui_port_out_of_range),
    ("ui port in use", ui_port_in_use),
    ("ui --runs-dir is a file", ui_runs_dir_file),
    ("ui --runs-dir ~", ui_runs_dir_home),
    ("ui --runs-dir /", ui_runs_dir_root),
    ("sweep --dir ~", sweep_dir_home),
    ("sweep spec error formatting", sweep_spec_error_newlines),
    ("estimate --gpu -5/0/nan/inf/banana", estimate_bad_gpu),
    ("generate control characters", generate_nul_prompt),
    ("SIGTERM during the last step", stop_during_last_step),
    ("fresh run over a LoRA+checkpoints without status", fresh_run_over_foreign_files),
    ("refused resume (other rank)", refused_resume_keeps_record),
    ("checkpoint meta step 10**30", meta_step_huge),
    ("--resume latest past max_steps", resume_past_max_steps),
    ("diverging run (NaN loss)", nan_loss_written),
    ("disk full at a checkpoint", disk_full_at_checkpoint),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ap.add_argument("--no-ui", action="store_true", help="skip the served-UI cases")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    os.environ["FLUX2_LORA_HOME"] = os.environ.get("FLUX2_LORA_HOME") or str(tmp / "flux2-home")
    c = Ctx(tmp)
    c.env["FLUX2_LORA_HOME"] = os.environ["FLUX2_LORA_HOME"]
    results: list[tuple[str, str, str]] = []
    for name, fn in CLI_CASES:
        if args.only and args.only not in name:
            continue
        try:
            cat, detail = fn(c)
        except Exception as e:
            cat, detail = HARNESS, f"{type(e).__name__}: {e}"[:200]
            traceback.print_exc()
        results.append((name, cat, detail))
        print(f"{cat:15s} {name}: {detail}", flush=True)
    if not args.no_ui and (not args.only or "ui:" in args.only):
        for name, cat, detail in ui_cases(c):
            results.append((f"ui: {name}", cat, detail))
            print(f"{cat:15s} ui: {name}: {detail}", flush=True)
    counts = Counter(cat for _, cat, _ in results)
    print("\n" + ", ".join(f"{n} {cat}" for cat, n in counts.most_common()) + f" ({len(results)} cases)")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    bad = sum(counts[k] for k in (HOLE, LOSS, TB, WRONG))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
