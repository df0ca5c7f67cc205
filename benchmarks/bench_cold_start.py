"""Server cold start to first answer: launch a server, time until a request for the model gets 200.

Compares Python environments (a full `make venv` one, a lean `pip install .[serve-kserve]` one) on
the same bundle, alternating them run by run so that a busy shared machine slows both alike. Only the
standard library and Pillow: the script itself runs in any of them. `--runtime kserve` (default)
starts `python -m clipshield.handlers.kserve.app --bundle B` and POSTs a v2 infer request; `--runtime torchserve`
starts `<venv>/bin/torchserve` on `--bundle`, a model store holding clipshield.mar (`clipshield
archive --workers 1`) and metrics.yaml, and POSTs the PNG to /predictions/clipshield.

    python benchmarks/bench_cold_start.py --bundle /tmp/bundle --runs 3 \\
        --env full=/work/main/.venv/bin/python:/path/to/checkout --env lean=/tmp/lean/bin/python:
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _kserve(python: str, target: Path, cwd: Path) -> tuple[list[str], str, bytes, str]:
    """(command, URL, body, content type) of a KServe server on the bundle folder `target`."""
    port = _free_port()
    image = base64.b64encode(_png()).decode()
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}]}).encode()
    cmd = [python, "-m", "clipshield.handlers.kserve.app", "--bundle", str(target), "--model-name", "clipshield", "--host-port", str(port)]
    return cmd, f"http://127.0.0.1:{port}/v2/models/clipshield/infer", body, "application/json"


def _torchserve(python: str, target: Path, cwd: Path) -> tuple[list[str], str, bytes, str]:
    """(command, URL, body, content type) of TorchServe on the model store `target` (1 worker, no token)."""
    ports = [_free_port() for _ in range(5)]
    props = cwd / "config.properties"
    props.write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{ports[0]}",
                f"management_address=http://127.0.0.1:{ports[1]}",
                f"metrics_address=http://127.0.0.1:{ports[2]}",
                "grpc_inference_address=127.0.0.1",
                "grpc_management_address=127.0.0.1",
                f"grpc_inference_port={ports[3]}",
                f"grpc_management_port={ports[4]}",
                "disable_token_authorization=true",
                f"model_store={target}",
                "load_models=clipshield=clipshield.mar",
                "default_workers_per_model=1",
                f"metrics_config={target / 'metrics.yaml'}",
                "install_py_dep_per_model=false",
            ]
        )
        + "\n"
    )
    launcher = str(Path(python).parent / "torchserve")
    cmd = [launcher, "--start", "--foreground", "--ncs", "--ts-config", str(props), "--model-store", str(target)]
    return cmd, f"http://127.0.0.1:{ports[0]}/predictions/clipshield", _png(), "image/png"


RUNTIMES = {"kserve": _kserve, "torchserve": _torchserve}


def _answered(url: str, body: bytes, content_type: str) -> bool:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def cold_start(runtime: str, python: str, pythonpath: str, target: Path, timeout_s: float = 300.0) -> float:
    """Seconds from launching the server to the first 200 answer of a request for the model."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TS_CONFIG_FILE")}
    env["PATH"] = f"{Path(python).parent}:{env.get('PATH', '')}"  # TorchServe's launcher finds java and its venv
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    with tempfile.TemporaryDirectory() as tmp:  # not the checkout: a lean venv must use its installed package
        cwd = Path(tmp)
        env.update(LOG_LOCATION=tmp, METRICS_LOCATION=tmp, TMPDIR=tmp)  # TorchServe's pid file stays ours
        cmd, url, body, content_type = RUNTIMES[runtime](python, target, cwd)
        start = time.perf_counter()
        # own process group: the launcher, TorchServe's JVM and its Python workers all stop together
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            while time.perf_counter() - start < timeout_s:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
                if _answered(url, body, content_type):
                    return time.perf_counter() - start
                time.sleep(0.02)
            raise TimeoutError(f"no answer within {timeout_s} s")
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, wait until every member has gone, SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc.poll()  # reap the launcher, so that only live members keep the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (kserve) or model store (torchserve)")
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), default="kserve")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--env", action="append", required=True, help="NAME=PYTHON:PYTHONPATH (PYTHONPATH may be empty)")
    args = parser.parse_args()
    envs = {name: spec.split(":", 1) for name, spec in (e.split("=", 1) for e in args.env)}
    for python, pythonpath in envs.values():  # warm-up: page cache and .pyc files, not timed
        cold_start(args.runtime, python, pythonpath, args.bundle)
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(args.runs):
        for name, (python, pythonpath) in envs.items():
            times[name].append(round(cold_start(args.runtime, python, pythonpath, args.bundle), 2))
    for name, values in times.items():
        print(json.dumps({"runtime": args.runtime, "env": name, "median_s": statistics.median(values), "runs_s": values}))


if __name__ == "__main__":
    main()
