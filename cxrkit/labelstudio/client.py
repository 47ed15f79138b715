"""A small client for the Label Studio REST API (plain requests; no label-studio-sdk).

Authentication. Every call sends the admin's legacy API token (`Authorization: Token <token>`),
the token the ML backend also receives from Label Studio. Label Studio 1.23 disables legacy
tokens per organisation by default; `cxrkit.services.labelstudio_server` creates the organisation with
them enabled, and for a server started otherwise the client, given the admin's e-mail and
password, logs in once with a browser-style session and switches them on
(`POST /api/jwt/settings {"legacy_api_tokens_enabled": true}`).

Projects are referred to by id; tasks are matched to our images by `data.image_id`.
"""
from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from cxrkit.core.labels import parse_label_config
from cxrkit.core.manifest import Box, Record
from cxrkit.labelstudio.queue import queue_field
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.labelstudio.tasks import HEATMAP_FIELD, task_data

DEFAULT_PROJECT = "Chest X-ray pneumonia"
UNCERTAIN_VIEW = "Most uncertain first"
NEEDS_REVIEW_VIEW = "Needs review"
QUEUE_ORDER = "tasks:predictions_score"  # a task's place in the queue (cxrkit.labelstudio.publish), first = 0
TASK_FIELDS = "id,data,total_annotations,cancelled_annotations"  # what a listing needs unless told otherwise
PAGE_SIZE = 5000  # tasks per page when listing those fields: few requests, each page counts the project again
FULL_PAGE_SIZE = 500  # tasks per page with predictions and annotations, which can be large
IMPORT_BATCH = 1000  # tasks per import request: keeps each request well under Label Studio's upload limit
PREDICTION_BATCH = 5000  # predictions per import request (Label Studio's upload limit is 250 MB)
# Columns the workbench's tabs hide from the Data Manager's table (both its views): the heatmap
# overlay would be a thumbnail per row, fetching an image for every task listed, and a broken one
# for every task below the top of the queue, which has none (flows/select.py).
HIDDEN_COLUMNS = (f"tasks:data.{HEATMAP_FIELD}",)
# Two requests do work that grows with the project, so their timeout grows with it: several
# times what they took on 2 cores (BENCHMARKS.md, "A large project": the export 1.5 ms a task,
# deleting a model version 5-7 ms a prediction), over the 120 s that suits every other request,
# which a 100,000-task project's export (147 s) and prune (689 s) outlast. A server that hangs
# still fails, later.
EXPORT_SECONDS_PER_TASK = 0.012
DELETE_SECONDS_PER_PREDICTION = 0.03
ACTION_BATCH = 5000  # task ids per Data Manager action: well under SQLite's limit of variables per query
LEGACY_DISABLED = "legacy token authentication has been disabled"
# While the Postgres under Label Studio restarts, Label Studio answers 500 (its database connection
# refused) for a second or two; 502-504 come from a proxy in front of it. A read, or a PATCH/PUT
# that sets a state (the same state the second time), is safe to send again, so those retry over
# about 15 s before failing; a POST or DELETE does not (a create that reached the database before
# the error would be made twice): its caller fails clearly, and a step that checks what is there
# first tries again whole (the select flow's publication, cxrkit.labelstudio.publish).
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
RETRIED_STATUSES = (500, 502, 503, 504)
RETRIED_METHODS = ("GET", "HEAD", "PUT", "PATCH")

log = logging.getLogger(__name__)


class LabelStudioError(RuntimeError):
    """Label Studio is unreachable or answered with an error; the message is one line."""


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)  # image ids that became new tasks
    skipped: list[str] = field(default_factory=list)  # already in the project (or twice in the batch)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image id, reason)


class LabelStudio:
    def __init__(
        self, url: str, token: str, username: str | None = None, password: str | None = None, timeout: float = 120.0
    ):
        self.url = url.rstrip("/")
        self.token = token
        self.username = username
        self.password = password
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    @classmethod
    def for_server(cls, info) -> "LabelStudio":
        """A client for a `server.ServerInfo` (the workspace's server and admin login)."""
        creds = info.credentials
        return cls(info.url, creds.token, creds.username, creds.password)

    # --- HTTP ---------------------------------------------------------------

    def request(self, method: str, path: str, timeout: float | None = None, **kwargs) -> Any:
        """JSON of `method path`; LabelStudioError with status and Label Studio's own message on
        failure, or saying it did not answer within `timeout` seconds (default: the client's).
        A GET, HEAD, PUT or PATCH answered 500/502/503/504 is sent again after RETRY_DELAYS."""
        resp = self._send(method, path, timeout=timeout, **kwargs)
        if resp.status_code == 401 and LEGACY_DISABLED in resp.text and self.password:
            self.enable_legacy_tokens()
            resp = self._send(method, path, timeout=timeout, **kwargs)
        tries = 1
        if method.upper() in RETRIED_METHODS:
            for delay in RETRY_DELAYS:
                if resp.status_code not in RETRIED_STATUSES:
                    break
                log.warning("%s %s: HTTP %s from Label Studio (%s); trying again in %g s", method, path,
                            resp.status_code, _error_text(resp)[:200], delay)
                time.sleep(delay)
                resp = self._send(method, path, timeout=timeout, **kwargs)
                tries += 1
        if resp.status_code >= 400:
            after = f" after {tries} tries" if tries > 1 else ""
            raise LabelStudioError(f"{method} {path} failed{after}: HTTP {resp.status_code}: {_error_text(resp)}")
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.content

    def _send(self, method: str, path: str, session: requests.Session | None = None, timeout: float | None = None,
              **kwargs) -> requests.Response:
        timeout = timeout or self.timeout
        try:
            return (session or self.session).request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.ConnectionError:
            # The usual cause is a server that is not running; a urllib3 traceback would hide that.
            raise LabelStudioError(
                f"cannot connect to Label Studio at {self.url} (is it running? `cxr labelstudio start`)"
            ) from None
        except requests.Timeout:
            raise LabelStudioError(
                f"{method} {path}: Label Studio at {self.url} did not answer within {timeout:g} s "
                f"(overloaded or hung? its log: <workspace>/labelstudio/server.log)"
            ) from None

    def enable_legacy_tokens(self) -> None:
        """Log in as the admin (session + CSRF, as the browser does) and enable legacy API tokens."""
        browser = requests.Session()
        login = f"{self.url}/user/login/"
        self._send("GET", "/user/login/", session=browser)
        resp = self._send(
            "POST", "/user/login/", session=browser, allow_redirects=False, headers={"Referer": login},
            data={"email": self.username, "password": self.password,
                  "csrfmiddlewaretoken": browser.cookies.get("csrftoken", "")},
        )  # fmt: skip
        if resp.status_code != 302:  # a failed login re-renders the form (200)
            raise LabelStudioError(f"cannot log in to Label Studio at {self.url} as {self.username}: wrong password?")
        headers = {"X-CSRFToken": browser.cookies.get("csrftoken", ""), "Referer": login}
        current = self._send("GET", "/api/jwt/settings", session=browser).json()
        resp = self._send(
            "POST", "/api/jwt/settings", session=browser, headers=headers,
            json={"api_tokens_enabled": current.get("api_tokens_enabled", True), "legacy_api_tokens_enabled": True},
        )  # fmt: skip
        if resp.status_code >= 400:
            raise LabelStudioError(f"enabling legacy API tokens failed: HTTP {resp.status_code}: {_error_text(resp)}")

    # --- projects -------------------------------------------------------------

    def projects(self) -> list[dict]:
        found, page = [], 1
        while True:
            body = self.request("GET", "/api/projects", params={"page": page, "page_size": 100})
            found += body["results"]
            if not body.get("next"):
                return found
            page += 1

    def project(self, project: int) -> dict:
        return self.request("GET", f"/api/projects/{project}")

    def ensure_project(self, title: str, label_config_xml: str, readers_per_image: int = 1) -> int:
        """The id of the project called `title`, created or updated to this label config, each task
        given to `readers_per_image` readers (Label Studio's overlap: `maximum_annotations` on every
        task; params.yaml retrain.readers_per_image, which the ground truth follows).

        The config is checked for the tags the workbench needs before anything is sent.
        """
        parse_label_config(label_config_xml)  # LabelConfigError: nothing has changed yet
        if int(readers_per_image) < 1:
            raise ValueError(f"readers_per_image must be >= 1, got {readers_per_image}")
        overlap = {"maximum_annotations": int(readers_per_image), "overlap_cohort_percentage": 100}
        existing = [p for p in self.projects() if p["title"] == title]
        if not existing:
            return self.request("POST", "/api/projects",
                                json={"title": title, "label_config": label_config_xml, **overlap})["id"]
        project = existing[0]
        if project["label_config"].strip() != label_config_xml.strip():  # Label Studio strips the text it stores
            # Label Studio refuses a config that would orphan existing annotations (HTTP 400).
            self.request("PATCH", f"/api/projects/{project['id']}", json={"label_config": label_config_xml})
        if any(project.get(k) != v for k, v in overlap.items()):
            self.request("PATCH", f"/api/projects/{project['id']}", json=overlap)
        return project["id"]

    def ensure_local_storage(self, project: int, folder: Path) -> None:
        """Let the project read images under `folder` through local-files serving.

        Label Studio serves /data/local-files/ only below the path of a Local Files storage of a
        project the user may see. We never sync the storage: tasks come from import_tasks.
        """
        folder = Path(folder).resolve()
        storages = self.request("GET", "/api/storages/localfiles", params={"project": project})
        if any(Path(s["path"]) == folder for s in storages):
            return
        self.request(
            "POST", "/api/storages/localfiles",
            json={"project": project, "path": str(folder), "title": f"images: {folder.name}",
                  "use_blob_urls": True, "regex_filter": r".*\.png$"},
        )  # fmt: skip

    # --- tasks ----------------------------------------------------------------

    def list_tasks(self, project: int, view: int | None = None, full: bool = False,
                   limit: int | None = None) -> list[dict]:
        """The project's tasks (id, data, total and cancelled annotations; `full`: every field,
        predictions and annotations too), in the view's order if given, the first `limit` if given.

        Without `full` Label Studio neither loads nor sends predictions and annotations, which
        grow with every model version pushed and every reader."""
        params = {"project": project, **({"fields": "all"} if full else {"include": TASK_FIELDS})}
        if view is not None:
            params["view"] = view
        size = FULL_PAGE_SIZE if full else PAGE_SIZE
        found, page = [], 1
        while True:
            want = size if limit is None else min(size, limit - len(found))
            body = self.request("GET", "/api/tasks", params={**params, "page": page, "page_size": want})
            found += body["tasks"]
            if not body["tasks"] or len(found) >= body["total"] or (limit is not None and len(found) >= limit):
                return found
            page += 1

    def tasks_by_image(self, project: int, full: bool = False) -> dict[str, dict]:
        return {t["data"]["image_id"]: t for t in self.list_tasks(project, full=full) if t["data"].get("image_id")}

    def import_tasks(self, project: int, records: list[Record], data_dir: Path) -> ImportReport:
        """Add a task per record whose image is not in the project yet (matched on image id).

        A record whose PNG is missing under `data_dir` is reported and left out; the rest go in.
        """
        data_dir = Path(data_dir).resolve()
        report = ImportReport()
        have = set(self.tasks_by_image(project))
        new = []
        for rec in records:
            if rec.image_id in have:
                report.skipped.append(rec.image_id)
            elif not (data_dir / rec.path).is_file():
                report.failed.append((rec.image_id, f"image file missing: {data_dir / rec.path}"))
            else:
                have.add(rec.image_id)
                new.append(rec)
        for folder in sorted({(data_dir / rec.path).parent for rec in new}):
            self.ensure_local_storage(project, folder)
        for start in range(0, len(new), IMPORT_BATCH):
            batch = new[start : start + IMPORT_BATCH]
            self.request("POST", f"/api/projects/{project}/import", json=[{"data": task_data(r)} for r in batch])
            report.imported += [r.image_id for r in batch]
        return report

    def create_annotation(self, task_id: int, result: list[dict]) -> dict:
        return self.request("POST", f"/api/tasks/{task_id}/annotations", json={"result": result})

    # --- predictions and the queue ---------------------------------------------

    def push_predictions(
        self, project: int, predictions: dict[str, tuple[list[Box], str | None]], model_version: str
    ) -> int:
        """Store the model's boxes and impression per image as predictions of `model_version`.

        Predictions this version already has on these images are replaced; other versions and
        all annotations stay. The project then shows this version as pre-annotations.
        Returns the number of predictions created. (The select flow publishes its queue with
        cxrkit.labelstudio.publish instead, in a few requests however many tasks there are.)
        """
        if not model_version:
            # An empty version would make Label Studio delete every version's predictions.
            raise ValueError("model_version must be a non-empty string")
        schema = parse_label_config(self.project(project)["label_config"])
        tasks = self.tasks_by_image(project)
        unknown = sorted(set(predictions) - set(tasks))
        if unknown:
            raise LabelStudioError(f"{len(unknown)} image(s) are not tasks of project {project}: {unknown[:5]}")
        payload = []
        for image_id, (boxes, impression) in predictions.items():
            task = tasks[image_id]
            result = boxes_to_results(boxes, task["data"]["width"], task["data"]["height"], schema, impression)
            item = {"task": task["id"], "result": result, "model_version": model_version}
            scores = [b.score for b in boxes if b.score is not None]
            if scores:  # the prediction's score: its boxes' mean confidence
                item["score"] = sum(scores) / len(scores)
            payload.append(item)

        self._delete_predictions(project, model_version, {tasks[i]["id"] for i in predictions})
        created = self.import_predictions(project, payload)
        self.set_model_version(project, model_version)
        return created

    def import_predictions(self, project: int, items: list[dict]) -> int:
        """Create predictions ({task, result, model_version, score?} each) in requests of
        PREDICTION_BATCH. Label Studio drops an item it finds invalid and only logs it, so a count
        short of what was sent is an error here."""
        created = 0
        for start in range(0, len(items), PREDICTION_BATCH):
            batch = items[start: start + PREDICTION_BATCH]
            made = self.request("POST", f"/api/projects/{project}/import/predictions", json=batch)["created"]
            if made != len(batch):
                raise LabelStudioError(f"Label Studio created {made} of {len(batch)} predictions in project {project}: "
                                       "it drops a prediction whose result does not fit the label config, or whose "
                                       "score is outside [0, 1]; its log names them")
            created += made
        return created

    def model_versions(self, project: int) -> dict[str, int]:
        """The project's prediction labels (model versions) and how many predictions each has,
        latest first; the project's current one is listed even with none."""
        return self.request("GET", f"/api/projects/{project}/model-versions/")

    def set_model_version(self, project: int, model_version: str) -> None:
        """Show `model_version`'s predictions as the project's pre-annotations (and order by their scores)."""
        self.request("PATCH", f"/api/projects/{project}", json={"model_version": model_version})

    def delete_model_version(self, project: int, model_version: str, predictions: int | None = None) -> int:
        """Delete every prediction of `model_version` in one request, given time for `predictions`
        of them (default: as many as it has). Deleting the project's current version leaves it
        with none (Label Studio then averages every version's scores)."""
        if not model_version:
            raise ValueError("model_version must be a non-empty string: an empty one deletes every version")
        if predictions is None:
            predictions = self.model_versions(project).get(model_version, 0)
        return self.request("DELETE", f"/api/projects/{project}/model-versions", json={"model_version": model_version},
                            timeout=self.timeout + DELETE_SECONDS_PER_PREDICTION * predictions)

    def predictions(self, project: int) -> list[dict]:
        """Every prediction of the project, all model versions (id, task, model_version, result, ...)."""
        return self.request("GET", "/api/predictions", params={"project": project})

    def _delete_predictions(self, project: int, model_version: str, task_ids: set[int]) -> None:
        old = [p for p in self.predictions(project) if p["model_version"] == model_version]
        if all(p["task"] in task_ids for p in old):
            # The whole version is being replaced: one request instead of one per prediction.
            if old:
                self.delete_model_version(project, model_version, len(old))
            return
        for p in old:
            if p["task"] in task_ids:
                self.request("DELETE", f"/api/predictions/{p['id']}")

    def set_data_field(self, project: int, task_ids: list[int], name: str, value: str | float) -> None:
        """Set data[`name`] = `value` on these tasks with the Data Manager's action "add_data_field"
        (one database update per ACTION_BATCH tasks; hidden from the Data Manager's menu unless
        experimental features are on, but served by its API)."""
        kind = "String" if isinstance(value, str) else "Number"
        for start in range(0, len(task_ids), ACTION_BATCH):
            self.request(
                "POST", "/api/dm/actions", params={"id": "add_data_field", "project": project},
                json={"selectedItems": {"all": False, "included": task_ids[start: start + ACTION_BATCH]},
                      "value_name": name, "value_type": kind, "value": value},
            )  # fmt: skip

    def views(self, project: int) -> list[dict]:
        """The project's Data Manager tabs (id, data with title, ordering, filters)."""
        return self.request("GET", "/api/dm/views", params={"project": project})

    def find_view(self, project: int, title: str) -> int | None:
        """The id of the tab called `title`, None when there is none."""
        return next((v["id"] for v in self.views(project) if v["data"].get("title") == title), None)

    def ensure_view(self, project: int, title: str = UNCERTAIN_VIEW, ordering: str = QUEUE_ORDER,
                    filters: dict | None = None) -> int:
        """The id of the Data Manager tab `title`, created or updated to sort by `ordering` (by
        default the queue's order, cxrkit.labelstudio.publish; a data field is sorted as a number:
        Label Studio sorts it as text unless the tab says it holds numbers, and on Postgres
        "1e-06" > "0.93" as text) and, when given, to show only the tasks `filters` selects (the
        Data Manager's filter JSON). The tab hides HIDDEN_COLUMNS (hidden_columns)."""
        column = ordering.lstrip("-+")
        wanted = {"ordering": [ordering],
                  **({"columnsDisplayType": {column: "Number"}} if column.startswith("tasks:data.") else {}),
                  **({"filters": filters} if filters else {})}
        for view in self.views(project):
            if view["data"].get("title") == title:
                wanted["hiddenColumns"] = self.hidden_columns(project, view["data"].get("hiddenColumns"), column)
                if any(view["data"].get(k) != v for k, v in wanted.items()):
                    data = {**view["data"], **wanted}
                    self.request("PATCH", f"/api/dm/views/{view['id']}", json={"project": project, "data": data})
                return view["id"]
        wanted["hiddenColumns"] = self.hidden_columns(project, None, column)
        body = {"project": project, "data": {"title": title, **wanted}}
        return self.request("POST", "/api/dm/views", json=body)["id"]

    def hidden_columns(self, project: int, hidden: dict | None, ordering: str) -> dict[str, list[str]]:
        """A tab's `hiddenColumns` (column ids hidden in the Data Manager's "explore" table and its
        "labeling" side list) with HIDDEN_COLUMNS added to both. A tab without any starts from
        what Label Studio's Data Manager hides by default (each column's `visibility_defaults`,
        as /api/dm/columns lists them; a tab made through the API without hiddenColumns shows
        every column), except the column the tab sorts by (`ordering`: the queue's place, the
        prediction score). Columns a user hid or showed stay so, but for HIDDEN_COLUMNS."""
        if not hidden:
            hidden = {"explore": [], "labeling": []}
            for col in self.request("GET", "/api/dm/columns", params={"project": project})["columns"]:
                if col.get("children"):
                    continue  # a group ("data"), not a column
                name = f"{col.get('target', 'tasks')}:{'data.' if col.get('parent') == 'data' else ''}{col['id']}"
                for mode, shown in (col.get("visibility_defaults") or {}).items():
                    if not shown and mode in hidden and name != ordering:
                        hidden[mode].append(name)
        return {mode: list(hidden.get(mode) or []) + [c for c in HIDDEN_COLUMNS if c not in (hidden.get(mode) or [])]
                for mode in ("explore", "labeling")}

    def ensure_review_view(self, project: int) -> int:
        """The Data Manager tab "Needs review": the tasks flag_for_review marked, in queue order."""
        only_flagged = {"conjunction": "and", "items": [
            {"filter": "filter:tasks:data.needs_review", "operator": "equal", "type": "Boolean", "value": True}]}
        return self.ensure_view(project, NEEDS_REVIEW_VIEW, filters=only_flagged)

    def ensure_reader_views(self, project: int, readers: list[str]) -> dict[str, int]:
        """reader id -> the id of their tab "Queue of <reader>": the tasks cxrkit.labelstudio.publish
        put in their queue, in queue order."""
        views = {}
        for reader in readers:
            mine = {"conjunction": "and", "items": [{"filter": "filter:tasks:data.queue", "operator": "contains",
                                                     "type": "String", "value": queue_field([reader])}]}
            views[reader] = self.ensure_view(project, f"Queue of {reader}", filters=mine)
        return views

    def flag_for_review(self, tasks: list[dict], reasons: dict[str, str]) -> int:
        """Mark the tasks whose image is in `reasons` as needing review (data `needs_review`: true
        and `review_reason`) and unmark every other one. `tasks` are the project's tasks as listed
        or exported (id and data): a task whose flag changes is read again and written with its
        data as it is now (a PATCH replaces the whole data, and a select run may have written the
        queue since). Returns how many tasks changed."""

        def flagged(data: dict) -> dict:
            data = dict(data)
            reason = reasons.get(data.get("image_id"))
            if reason:
                data.update(needs_review=True, review_reason=reason)
            else:
                data.pop("needs_review", None)
                data.pop("review_reason", None)
            return data

        changed = 0
        for task in tasks:
            data = task.get("data") or {}
            if flagged(data) == data:
                continue
            now = self.request("GET", f"/api/tasks/{task['id']}")["data"] or {}
            if flagged(now) != now:
                self.request("PATCH", f"/api/tasks/{task['id']}", json={"data": flagged(now)})
                changed += 1
        return changed

    # --- users ------------------------------------------------------------------

    def users(self) -> list[dict]:
        """The organisation's users: id, email, first and last name (for `cxr labelstudio readers`)."""
        return [{k: u.get(k) for k in ("id", "email", "first_name", "last_name")}
                for u in self.request("GET", "/api/users")]

    # --- the ML backend ---------------------------------------------------------

    def connect_ml_backend(self, project: int, url: str, user: str, password: str,
                           title: str = "cxr ML backend") -> dict:
        """Connect the ML backend at `url` to the project with HTTP basic auth (or update the
        connection to that URL). Label Studio calls its /health and /setup before accepting.

        Label Studio also creates a webhook to `url/webhook` for the backend, without any login;
        it gets the same basic-auth header here, or the backend would refuse every event."""
        body = {"project": project, "url": url, "title": title, "auth_method": "BASIC_AUTH",
                "basic_auth_user": user, "basic_auth_pass": password, "is_interactive": False}
        existing = [b for b in self.request("GET", "/api/ml", params={"project": project})
                    if b["url"].rstrip("/") == url.rstrip("/")]  # fmt: skip
        if existing:
            backend = self.request("PATCH", f"/api/ml/{existing[0]['id']}", json=body)
        else:
            backend = self.request("POST", "/api/ml", json=body)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        hook_url = url.rstrip("/") + "/webhook"
        hooks = [h for h in self.request("GET", "/api/webhooks/", params={"project": project}) if h["url"] == hook_url]
        hook = {"project": project, "url": hook_url, "send_payload": True, "send_for_all_actions": True,
                "headers": {"Authorization": f"Basic {token}"}, "is_active": True}
        if hooks:
            self.request("PATCH", f"/api/webhooks/{hooks[0]['id']}/", json=hook)
        else:
            self.request("POST", "/api/webhooks/", json=hook)
        return backend

    def request_predictions(self, project: int, task_ids: list[int], chunk: int = 32) -> int:
        """Ask Label Studio to get predictions from the project's ML backend for these tasks
        (the Data Manager action "Retrieve predictions"), `chunk` tasks per call so that each
        call stays well inside Label Studio's 100 s prediction timeout. Label Studio skips
        tasks that already have a prediction of the backend's current version."""
        for start in range(0, len(task_ids), chunk):
            self.request(
                "POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                json={"selectedItems": {"all": False, "included": task_ids[start: start + chunk]}},
            )  # fmt: skip
        return len(task_ids)

    # --- export ---------------------------------------------------------------

    def export_snapshot(self, project: int) -> list[dict]:
        """The project's JSON export: every task with its annotations (ids, timestamps), drafts and
        predictions, given time for the project's number of tasks."""
        tasks = int(self.project(project).get("task_number") or 0)
        return self.request(
            "GET", f"/api/projects/{project}/export", params={"exportType": "JSON", "download_all_tasks": "true"},
            timeout=self.timeout + EXPORT_SECONDS_PER_TASK * tasks,
        )


def _error_text(resp: requests.Response) -> str:
    """Label Studio's own explanation, on one line."""
    try:
        body = resp.json()
    except ValueError:
        return " ".join(resp.text.split())[:300] or resp.reason
    if isinstance(body, dict):
        parts = [str(body.get("detail", ""))] if body.get("detail") else []
        if body.get("validation_errors"):
            parts.append(json.dumps(body["validation_errors"]))
        if parts:
            return " ".join(" ".join(parts).split())[:500]
    return json.dumps(body)[:500]
