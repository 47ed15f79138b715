"""Several readers in a real Label Studio: shared queues, disagreement, review and gold standards.

Reader accounts are made through Label Studio's own signup form and act with their own API
tokens or in a real browser (Debian's Chromium, as in test_labelstudio_browser.py):

1. Two readers share the queue (params.yaml `select.readers`): the real select flow (cold start)
   gives each a tab with their share, gold tasks mixed in, and Label Studio's own next-task
   endpoint, asked by each reader through their tab, never hands them the same task.
2. Two readers label the same film in the browser and disagree; a real retrain round computes
   their agreement, scores a reader on a gold film (held out of training), and flags the film
   into "Needs review"; the
   reviewer finds it there in the browser and decides; the next round trains on the reviewer's
   labels and the flag is gone.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, replace

import pytest
import requests
import yaml

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
from cxrkit.core.manifest import read_manifest, write_manifest
from cxrkit.core.params import load_params
from cxrkit.labelstudio.client import NEEDS_REVIEW_VIEW, LabelStudio
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.labelstudio.review import gold_images
from cxrkit.pipeline import EFFORT_FILE, LABELS_FILE, project_repo
from cxrkit.pipeline.labels import read_labels
from tests.labelstudio_server import published_queue
from tests.retrain_setup import retrain_environment, tiny_retrain_params
from tests.synthetic_study import ingested_study
from tests.test_labelstudio_browser import (
    WAIT_MS,
    logged_in_page,
    sync_playwright_or_skip,
    wait_for_editor_image,
)

pytestmark = pytest.mark.slow

N_IMAGES, SIZE = 14, 256
TABLE_ROW = "[class*=row-wrapper]"  # one row per task in the Data Manager table


@dataclass
class Account:
    email: str
    password: str
    user_id: int
    client: LabelStudio  # acting with this account's own API token

    @property
    def reader(self) -> str:
        return f"reader-{self.user_id}"


def sign_up(url: str, invite: str, email: str, password: str) -> Account:
    """An account made through Label Studio's signup form with the organisation's invite link, as a
    new radiologist makes one (the workbench's server allows no signup without it)."""
    browser = requests.Session()
    form = f"{url}/user/signup/?token={invite}"
    browser.get(form, timeout=60)
    resp = browser.post(form, allow_redirects=False, timeout=60, headers={"Referer": form},
                        data={"email": email, "password": password,
                              "csrfmiddlewaretoken": browser.cookies.get("csrftoken", "")})
    assert resp.status_code == 302, f"signup of {email} was refused: {resp.text[:400]}"
    token = browser.get(f"{url}/api/current-user/token", timeout=60).json()["token"]
    user_id = browser.get(f"{url}/api/current-user/whoami", timeout=60).json()["id"]
    return Account(email, password, int(user_id), LabelStudio(url, token))


@pytest.fixture(scope="module")
def accounts(labelstudio) -> dict[str, Account]:
    tag = uuid.uuid4().hex[:6]
    invite = LabelStudio.for_server(labelstudio).request("GET", "/api/invite")["token"]
    return {name: sign_up(labelstudio.url, invite, f"{name}-{tag}@example.org", f"pw-{uuid.uuid4().hex}")
            for name in ("reader-a", "reader-b", "reviewer")}


@pytest.fixture(scope="module")
def study(labelstudio_workspace):
    """An ingested synthetic study below Label Studio's document root: (workspace, records with truth)."""
    root = labelstudio_workspace.data_dir / f"review-{uuid.uuid4().hex[:8]}"
    return ingested_study(root, n=N_IMAGES, seed=11, size=SIZE, positive_fraction=0.5, difficulty=0.15,
                          salt="review-test-salt-0123456789", workers=2)


def project_of(ls: LabelStudio, labelstudio_workspace, ws, title: str, readers_per_image: int) -> tuple[int, dict]:
    """A new project with every film of `ws` as a task; returns (project id, image id -> task)."""
    project = ls.ensure_project(f"{title} {uuid.uuid4().hex[:6]}", DEFAULT_CONFIG.read_text(), readers_per_image)
    # Task image URLs are relative to Label Studio's document root, the folder above the workspace.
    served = [replace(r, path=str((ws.data_dir / r.path).relative_to(labelstudio_workspace.data_dir)))
              for r in read_manifest(ws.manifest_path)]
    assert len(ls.import_tasks(project, served, labelstudio_workspace.data_dir).imported) == len(served)
    return project, ls.tasks_by_image(project)


def curated(ws, records, keep: set[str]) -> None:
    """The manifest as a plain folder gives it, but for `keep`: their truth stays, as an importer's curated labels."""
    write_manifest(ws.manifest_path, [replace(r, labeled=True) if r.image_id in keep else
                                      replace(r, labeled=False, boxes=[], impression=None, subtype=None, split="")
                                      for r in records])


def salt_making_gold(records, share: float, wanted: set[str]) -> str:
    """A gold salt under which exactly `wanted` of `records` are gold (a search, the hash being fixed)."""
    for n in range(10_000):
        if set(gold_images(records, share, f"gold-{n}")) == wanted:
            return f"gold-{n}"
    raise AssertionError("no salt found")


def user_id(annotation: dict) -> int:
    who = annotation["completed_by"]
    return int(who["id"] if isinstance(who, dict) else who)


def next_task(account: Account, project: int, view: int) -> int:
    """Label Studio's own choice of the account's next task in a tab (what its labeling stream asks)."""
    return account.client.request("GET", f"/api/projects/{project}/next/", params={"view": view})["id"]


def as_displayed(account: Account, project: int, ls: LabelStudio, view: int) -> int:
    """The next task of the Data Manager's "Label tasks as displayed" in a tab, asked as `account`."""
    data = ls.request("GET", f"/api/dm/views/{view}")["data"]
    return account.client.request("POST", "/api/dm/actions", params={"id": "next_task", "project": project},
                                  json={"filters": data["filters"], "ordering": data["ordering"]})["id"]


def test_two_readers_sharing_the_queue_never_receive_the_same_task(
        labelstudio, labelstudio_workspace, study, accounts, prefect_server, tmp_path):
    from flows.select import select_flow

    ws, records = study
    a, b = accounts["reader-a"], accounts["reader-b"]
    gold_candidates = {r.image_id for r in records[:4]}
    curated(ws, records, gold_candidates)
    ls = LabelStudio.for_server(labelstudio)
    project, tasks = project_of(ls, labelstudio_workspace, ws, "shared queue", readers_per_image=1)
    share = 0.25
    salt = salt_making_gold(read_manifest(ws.manifest_path), share, set(list(gold_candidates)[:2]))
    params = load_params()
    params["select"] |= {"readers": [a.reader, b.reader], "cold_start": "typiclust", "batch_size": 4}
    params["split"] |= {"gold_share": share, "gold_salt": salt}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))

    with retrain_environment(labelstudio, tmp_path / "dvc-remote"):
        state = select_flow(workspace=str(ws.root), project=project, params=str(params_file), return_state=True)
    assert state.is_completed() and state.name == "ColdStart", state
    summary = state.result()
    assert len(summary["ranking"]) == N_IMAGES - 4 and summary["gold_in_queue"] == 2

    # Each reader's tab lists their share of the queue, in queue order: every other task, gold included.
    views = {v["data"]["title"]: v["id"] for v in ls.request("GET", "/api/dm/views", params={"project": project})}
    mine = {acc.reader: [t["data"]["image_id"] for t in ls.list_tasks(project, view=views[f"Queue of {acc.reader}"])]
            for acc in (a, b)}
    order, _ = published_queue(ls, project)
    assert len(order) == N_IMAGES - 4 + 2 and set(order) >= set(gold_images(read_manifest(ws.manifest_path), share, salt))
    assert mine[a.reader] == order[0::2] and mine[b.reader] == order[1::2]
    assert [n for n, i in enumerate(order) if i in gold_candidates] == [2, 6]  # one in four, never on top

    # Label Studio's labeling stream through each reader's tab: different tasks, each the top of
    # its own share; asked again, the same (it is locked to that reader until submitted).
    first_a, first_b = next_task(a, project, views[f"Queue of {a.reader}"]), next_task(b, project, views[f"Queue of {b.reader}"])
    assert first_a != first_b
    assert (first_a, first_b) == (tasks[order[0]]["id"], tasks[order[1]]["id"])
    assert next_task(a, project, views[f"Queue of {a.reader}"]) == first_a
    schema = load_schema()
    a.client.create_annotation(first_a, boxes_to_results([], SIZE, SIZE, schema, schema.normal))
    assert next_task(a, project, views[f"Queue of {a.reader}"]) == tasks[order[2]]["id"]
    # "Label tasks as displayed" from a tab sends the tab's filters and ordering (Label Studio then
    # takes the first unsolved task, without looking at locks): still each reader's own share.
    assert as_displayed(a, project, ls, views[f"Queue of {a.reader}"]) == tasks[order[2]]["id"]
    assert as_displayed(b, project, ls, views[f"Queue of {b.reader}"]) == first_b


def submit_impression(page, labelstudio, project: int, task_id: int, impression: str, ls: LabelStudio,
                      expected_annotations: int) -> None:
    """Start labeling from the project's Data Manager (Label Studio's stream gives this reader the one
    task left for them, with a fresh annotation over the model's box), keep the box, choose the
    impression, submit; wait until it is stored."""
    page.goto(f"{labelstudio.url}/projects/{project}/data")
    page.get_by_role("button", name=re.compile(r"^Label (All )?Tasks")).first.click()
    wait_for_editor_image(page)
    page.locator(f"input[name='{impression}']").check()
    page.get_by_test_id("bottombar-submit-button").click()  # the stream's Submit (beside it: a dropdown)
    deadline = time.monotonic() + WAIT_MS / 1000
    while len(ls.request("GET", f"/api/tasks/{task_id}/annotations")) < expected_annotations:
        assert time.monotonic() < deadline, f"the annotation of task {task_id} was not stored"
        time.sleep(0.5)


def test_readers_disagree_the_reviewer_decides_and_the_retrain_learns_the_review(
        labelstudio, labelstudio_workspace, study, accounts, prefect_server, tmp_path):
    sync_playwright = sync_playwright_or_skip()
    from flows.retrain import retrain_flow

    ws, records = study
    schema = load_schema()
    a, b, reviewer = accounts["reader-a"], accounts["reader-b"], accounts["reviewer"]
    positives = [r for r in records if r.boxes]
    disputed, gold = positives[0], positives[1]
    curated(ws, records, {gold.image_id})  # the one film with curated labels: gold below
    ls = LabelStudio.for_server(labelstudio)
    project, tasks = project_of(ls, labelstudio_workspace, ws, "review flow", readers_per_image=2)
    # Colleagues' earlier labels, so that a model can train: every other film read by two accounts
    # (the admin's and the reviewer's, whose reading is final), so Label Studio counts it done
    # (its overlap counts distinct annotators; the project asks for 2).
    done = [r for r in records if r.image_id not in {disputed.image_id, gold.image_id}]
    for rec in done:
        result = boxes_to_results(rec.boxes, rec.width, rec.height, schema, rec.impression)
        ls.create_annotation(tasks[rec.image_id]["id"], result)
        reviewer.client.create_annotation(tasks[rec.image_id]["id"], result)
    shown = replace(disputed.boxes[0], subtype=None, score=0.6)
    ls.push_predictions(project, {disputed.image_id: ([shown], None)}, "review-model-1")
    # Reader A reads the gold film wrong (its curated truth is pneumonia with a box); the reviewer's
    # reading completes it. The disputed film is then the one task left in both readers' streams.
    a.client.create_annotation(tasks[gold.image_id]["id"], boxes_to_results([], SIZE, SIZE, schema, schema.normal))
    reviewer.client.create_annotation(tasks[gold.image_id]["id"], boxes_to_results([], SIZE, SIZE, schema, schema.normal))

    params = tiny_retrain_params(split_salt="review-test")
    params["retrain"]["readers_per_image"] = 2
    params["review"] |= {"reviewers": [reviewer.reader]}
    params["split"] |= {"gold_share": 0.5,
                        "gold_salt": salt_making_gold(read_manifest(ws.manifest_path), 0.5, {gold.image_id})}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    disputed_task = tasks[disputed.image_id]["id"]

    with sync_playwright() as pw:
        # Both readers open the film in their own browser, keep the model's box, and disagree.
        for account, impression, n in ((a, schema.pneumonia, 1), (b, schema.normal, 2)):
            with logged_in_page(pw, labelstudio, tmp_path / f"profile-{account.reader}",
                                (account.email, account.password)) as page:
                submit_impression(page, labelstudio, project, disputed_task, impression, ls, n)
        stored = ls.request("GET", f"/api/tasks/{disputed_task}/annotations")
        assert sorted(user_id(x) for x in stored) == sorted([a.user_id, b.user_id])

        # Round 1: the consensus trains; the disagreement is measured and flagged for review.
        with retrain_environment(labelstudio, tmp_path / "dvc-remote"):
            state = retrain_flow(workspace=str(ws.root), project=project, params=str(params_file), select=False,
                                 return_state=True)
        assert state.is_completed() and state.name == "Retrained", state.message
        readers = json.loads(project_repo.git(ws.root, "show", f"round-1:{EFFORT_FILE}").stdout)["readers"]
        assert (readers["images"], readers["impression_unanimous"], readers["needs_review"]) == (1, 0.0, 1)
        assert readers["box_agreement"] == pytest.approx(1.0)  # both kept the model's box
        assert readers["by_reader"][a.reader]["gold"] == {"images": 1, "impression_correct": 0.0, "box_agreement": 0.0}
        assert readers["by_reader"][b.reader]["with_final"]["images"] == 1
        labels = {item.image_id: item for item in read_labels(ws.root / LABELS_FILE)}
        assert gold.image_id not in labels  # what reader A said of the gold film is no training data
        assert [r["reader"] for r in labels[disputed.image_id].readers] == sorted([a.reader, b.reader],
                                                                                 key=lambda r: int(r.split("-")[1]))
        flagged = ls.request("GET", f"/api/tasks/{disputed_task}")["data"]
        assert flagged["needs_review"] is True and flagged["review_reason"] == "2 readers: impressions differ"
        views = {v["data"]["title"]: v["id"] for v in ls.request("GET", "/api/dm/views", params={"project": project})}
        assert [t["id"] for t in ls.list_tasks(project, view=views[NEEDS_REVIEW_VIEW])] == [disputed_task]

        # The reviewer finds it in "Needs review" (the only row) and decides: pneumonia, the box
        # where the opacity is, a subtype.
        with logged_in_page(pw, labelstudio, tmp_path / "profile-reviewer", (reviewer.email, reviewer.password)) as page:
            page.goto(f"{labelstudio.url}/projects/{project}/data?tab={views[NEEDS_REVIEW_VIEW]}")
            rows = page.locator(TABLE_ROW)
            rows.first.wait_for()
            assert [int(rows.nth(i).inner_text().split()[0]) for i in range(rows.count())] == [disputed_task]
    decided = replace(disputed.boxes[0], x=disputed.boxes[0].x + 8, subtype="Viral", score=None)
    reviewer.client.create_annotation(disputed_task, boxes_to_results([decided], SIZE, SIZE, schema, schema.pneumonia))

    # Round 2 trains on the reviewer's labels; the flag is cleared and the tab is empty.
    with retrain_environment(labelstudio, tmp_path / "dvc-remote"):
        state = retrain_flow(workspace=str(ws.root), project=project, params=str(params_file), select=False,
                             return_state=True)
    assert state.is_completed() and state.name == "Retrained", state.message
    labels = {item.image_id: item for item in read_labels(ws.root / LABELS_FILE)}
    (box,) = labels[disputed.image_id].boxes
    assert (box.x, box.subtype, labels[disputed.image_id].impression) == (pytest.approx(decided.x, abs=0.5), "Viral",
                                                                          schema.pneumonia)
    prepared = {r.image_id: r for name in ("train", "val")
                for r in read_manifest(ws.root / "pipeline" / "prepared" / f"{name}.jsonl")}
    assert [b.x for b in prepared[disputed.image_id].boxes] == [box.x]
    assert gold.image_id not in prepared  # a test of the readers, held out of training and validation
    assert json.loads((ws.root / "metrics" / "prepare.json").read_text())["gold_held_out"] == 1
    assert "needs_review" not in ls.request("GET", f"/api/tasks/{disputed_task}")["data"]
    assert ls.list_tasks(project, view=views[NEEDS_REVIEW_VIEW]) == []
    effort = json.loads(project_repo.git(ws.root, "show", f"round-2:{EFFORT_FILE}").stdout)
    assert effort["readers"]["needs_review"] == 0
