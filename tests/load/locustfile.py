"""Locust user for clipshield on TorchServe or KServe (`--runtime kserve`, env LOCUST_RUNTIME): a realistic mix of clean and adversarial images,
custom label sets and purification on/off, every request with a timeout and a contract check.

Run by `tests/load/run_loadtest.py` (`make loadtest`); by hand against any server, from the repo
root (it imports `tests.load.contract`), after `python -m tests.load.run_loadtest --payloads-only`:

    locust -f tests/load/locustfile.py --headless --host http://127.0.0.1:8080 -u 8 -r 4 -t 30s \
        --payloads results/loadtest/work/payloads --key-file model_store/.server/key_file.json

Mix (task weights): raw clean PNG 4, raw adversarial PNG 2, multipart with a custom label set and
random purify/top_k 3, multipart with the default labels and an explicit purify 2. Request names
group the statistics by kind (the HTML report and CSV show one row per name).
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import uuid
from pathlib import Path

from locust import HttpUser, events, task
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from tests.load.contract import MANIFEST, Expectation, check_response
from tests.load.oip import INFER_PATH, as_torchserve, infer_body

PREDICT_PATH = "/predictions/clipshield"
_user_ids = itertools.count()


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    """clipshield's options, also settable as LOCUST_* environment variables."""
    parser.add_argument("--payloads", env_var="LOCUST_PAYLOADS", default="results/loadtest/payloads", help="folder with payloads.json")
    parser.add_argument("--key-file", env_var="LOCUST_KEY_FILE", default="", help="TorchServe key_file.json ('' = token auth off)")
    parser.add_argument("--token", env_var="LOCUST_TOKEN", default="", help="inference key itself (wins over --key-file)")
    parser.add_argument("--request-timeout", env_var="LOCUST_REQUEST_TIMEOUT", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--think-ms", env_var="LOCUST_THINK_MS", type=float, default=50.0, help="max think time between requests")
    parser.add_argument("--seed", env_var="LOCUST_SEED", type=int, default=0, help="base seed of the users' choices")
    parser.add_argument(
        "--runtime",
        env_var="LOCUST_RUNTIME",
        choices=("torchserve", "kserve"),
        default="torchserve",
        help="torchserve: /predictions/clipshield; kserve: Open Inference Protocol v2 (same contract)",
    )


@events.quitting.add_listener
def _write_final_stats(environment, **_kw) -> None:
    """Write `<csv>_final_stats.csv` and `<csv>_final_failures.csv` from the final statistics.

    Locust's own CSV writer is a greenlet that rewrites `<csv>_stats.csv` once a second and is not
    run again at shutdown, so that file misses the last second and the drained requests (it showed
    816 of 888 requests in a 10 s run). The runner replaces locust's files with these, so the CSV
    agrees with the HTML report and the printed table.
    """
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("stats", writer.requests_csv), ("failures", writer.failures_csv)):
        with open(f"{prefix}_final_{suffix}.csv", "w", newline="") as fh:
            write(csv.writer(fh))


def _multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request with an `image` part."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image.png"\r\nContent-Type: image/png\r\n\r\n'
    parts.append(head.encode() + image + b"\r\n" + f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ClipshieldUser(HttpUser):
    """One client: picks a request kind by weight, sends it, checks the answer against the contract."""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        folder = Path(opts.payloads)
        manifest = json.loads((folder / MANIFEST).read_text())
        self.images = {
            kind: [(folder / it["file"]).read_bytes() for it in manifest["images"] if it["kind"] == kind]
            for kind in ("clean", "adversarial")
        }
        self.all_images = self.images["clean"] + self.images["adversarial"]
        self.label_sets = {name: tuple(labels) for name, labels in manifest["label_sets"].items()}
        self.timeout = opts.request_timeout
        self.think_s = opts.think_ms / 1000.0
        self.rng = random.Random(opts.seed * 100_003 + next(_user_ids))
        key = opts.token or (json.loads(Path(opts.key_file).read_text())["inference"]["key"] if opts.key_file else "")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.runtime = opts.runtime

    def wait_time(self) -> float:
        return self.rng.uniform(0.0, self.think_s)

    def _post(self, name: str, image: bytes, fields: dict[str, str], expect: Expectation) -> None:
        """One request in the runtime's protocol; the answer is judged as a TorchServe answer either way."""
        if self.runtime == "kserve":
            path, ctype, body = INFER_PATH.format(name="clipshield"), "application/json", json.dumps(infer_body(image, fields)).encode()
        elif fields:
            path, (body, ctype) = PREDICT_PATH, _multipart(fields, image)
        else:
            path, body, ctype = PREDICT_PATH, image, "image/png"
        headers = {"Content-Type": ctype, **self.headers}
        with self.client.post(path, data=body, headers=headers, name=name, timeout=self.timeout, catch_response=True) as resp:
            text = resp.text or ""
            if self.runtime == "kserve" and resp.status_code == 200:
                try:
                    text = json.dumps(as_torchserve(json.loads(text)))
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    text = f"not a v2 answer ({type(exc).__name__}): {text[:150]}"
            problem = check_response(resp.status_code, text, expect)
            if problem:
                resp.failure(problem)
            else:
                resp.success()

    def _raw(self, kind: str) -> None:
        kind = kind if self.images[kind] else "clean"  # a payload set without adversarial images
        self._post(f"raw {kind}", self.rng.choice(self.images[kind]), {}, Expectation())

    @task(4)
    def raw_clean(self) -> None:
        self._raw("clean")

    @task(2)
    def raw_adversarial(self) -> None:
        self._raw("adversarial")

    @task(3)
    def custom_labels(self) -> None:
        name = self.rng.choice(sorted(self.label_sets))
        labels, purify, top_k = self.label_sets[name], self.rng.random() < 0.5, self.rng.randint(1, 5)
        fields = {"labels": json.dumps(list(labels)), "purify": str(purify).lower(), "top_k": str(top_k)}
        self._post(
            f"custom labels purify={str(purify).lower()}",
            self.rng.choice(self.all_images),
            fields,
            Expectation(labels=labels, purify=purify, top_k=top_k),
        )

    @task(2)
    def purify_toggle(self) -> None:
        purify = self.rng.random() < 0.5
        self._post(
            f"default labels purify={str(purify).lower()}",
            self.rng.choice(self.all_images),
            {"purify": str(purify).lower()},
            Expectation(purify=purify),
        )
