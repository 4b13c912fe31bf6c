"""The three calls `best` makes to an `mlflow server`, over its REST API with urllib: no MLflow import.

`RestClient` has the signatures of the `MlflowClient` methods `reading.SearchReader` uses (`search_runs`,
`get_experiment_by_name`, `search_experiments`) and sends the requests MLflow's own REST store sends
(`POST /api/2.0/mlflow/runs/search` with the same filter, order and page size), so the server answers the same
runs in the same order; only the parsing is ours, and only of the fields the queries read. Credentials as
MLflow's client finds them: MLFLOW_TRACKING_USERNAME/PASSWORD (or ~/.mlflow/credentials) as basic auth, else
MLFLOW_TRACKING_TOKEN as a bearer token; MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH for
TLS; MLFLOW_HTTP_REQUEST_TIMEOUT. Any failure (refused, an error status, a reply of another shape) raises
`Unavailable`, and the caller asks the MLflow client, which retries and reports as MLflow does.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.results.reading import Data, Info, LiteRun, Page, Unavailable, metric_value

API = "/api/2.0/mlflow"
DEFAULT_TIMEOUT = 120.0  # seconds: MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT default


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str
    lifecycle_stage: str


def _credentials() -> tuple[str | None, str | None]:
    """(username, password) from the environment, else from ~/.mlflow/credentials, as MLflow reads them."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    path = Path.home() / ".mlflow" / "credentials"
    if (user and password) or not path.is_file():
        return user, password
    config = configparser.ConfigParser()
    config.read(path)
    section = config["mlflow"] if config.has_section("mlflow") else {}
    return user or section.get("mlflow_tracking_username"), password or section.get("mlflow_tracking_password")


class RestClient:
    """Read-only calls to the tracking server at `host` (the tracking URI, any path prefix kept)."""

    def __init__(self, host: str, headers: dict[str, str], context: ssl.SSLContext | None, timeout: float) -> None:
        self.host, self.headers, self.context, self.timeout = host.rstrip("/"), headers, context, timeout

    @classmethod
    def open(cls, uri: str) -> RestClient | None:
        """A client for `uri` with the credentials MLflow would send; None for a URI it does not understand."""
        parts = urllib.parse.urlsplit(uri)
        if not parts.hostname or "@" in parts.netloc or parts.query or parts.fragment:
            return None
        headers = {"Content-Type": "application/json", "User-Agent": "ticket-search"}
        user, password = _credentials()
        if user and password:
            headers["Authorization"] = "Basic " + base64.standard_b64encode(f"{user}:{password}".encode()).decode()
        elif token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {token}"
        context = None
        if parts.scheme == "https":
            if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
                context = ssl._create_unverified_context()  # noqa: S323 - the user asked for it, as MLflow allows
            else:
                context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
        try:
            timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or DEFAULT_TIMEOUT)
        except ValueError:
            return None
        return cls(uri, headers, context, timeout)

    def call(self, endpoint: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None,
             missing_ok: bool = False) -> dict[str, Any] | None:
        """The JSON reply of GET (no body) or POST `endpoint`; None for a 404 when `missing_ok`."""
        url = f"{self.host}{API}{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=self.headers, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as reply:
                doc = json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as e:
            if missing_ok and e.code == 404 and _error_code(e) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise Unavailable(f"{endpoint}: HTTP {e.code}") from e
        except (OSError, ValueError) as e:  # refused, timed out, TLS, not JSON
            raise Unavailable(f"{endpoint}: {type(e).__name__}: {e}") from e
        if not isinstance(doc, dict):
            raise Unavailable(f"{endpoint}: a reply of another shape")
        return doc

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        doc = self.call("/experiments/get-by-name", query={"experiment_name": name}, missing_ok=True)
        return None if doc is None else _experiment(doc.get("experiment"))

    def search_experiments(self, max_results: int, page_token: str | None = None) -> Page:
        body: dict[str, Any] = {"max_results": max_results, "view_type": "ACTIVE_ONLY"}
        if page_token:
            body["page_token"] = page_token
        doc = self.call("/experiments/search", body) or {}
        return Page([_experiment(e) for e in doc.get("experiments", [])], doc.get("next_page_token") or None)

    def search_runs(self, experiment_ids: list[str], filter_string: str = "", max_results: int = 1000,
                    order_by: list[str] | None = None, page_token: str | None = None) -> Page:
        body: dict[str, Any] = {"experiment_ids": [str(e) for e in experiment_ids], "filter": filter_string,
                                "run_view_type": "ACTIVE_ONLY", "max_results": max_results,
                                "order_by": list(order_by or [])}
        if page_token:
            body["page_token"] = page_token
        doc = self.call("/runs/search", body) or {}
        try:
            return Page([_run(r) for r in doc.get("runs", [])], doc.get("next_page_token") or None)
        except (KeyError, TypeError, ValueError) as e:
            raise Unavailable(f"/runs/search: a run of another shape ({type(e).__name__}: {e})") from e


def _error_code(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read() or b"{}").get("error_code", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _experiment(doc: Any) -> Experiment:
    try:
        return Experiment(str(doc["experiment_id"]), str(doc["name"]), str(doc.get("lifecycle_stage", "active")))
    except (KeyError, TypeError) as e:
        raise Unavailable(f"an experiment of another shape ({e})") from e


def _run(doc: dict[str, Any]) -> LiteRun:
    """A run's JSON as the server writes it (protobuf JSON: NaN and infinities as strings)."""
    info, data = doc["info"], doc.get("data", {})
    start = info.get("start_time")
    return LiteRun(Info(str(info["run_id"]), str(info["experiment_id"]), None if start is None else int(start)),
                   Data(metrics={m["key"]: metric_value(m.get("value", 0.0)) for m in data.get("metrics", [])},
                        params={p["key"]: p.get("value", "") for p in data.get("params", [])},
                        tags={t["key"]: t.get("value", "") for t in data.get("tags", [])}))
