"""Label Studio for the workbench.

    server   start/stop the Label Studio process of a workspace (its own venv, offline, 127.0.0.1)
    client   a small HTTP client over its REST API (projects, tasks, predictions, views, export)
    tasks    manifest Record -> task data, shared by the importer and the ML backend
    results  our boxes <-> Label Studio result JSON
    export   snapshots of exports, and the training sets made from their ground truth
    ground_truth  which annotations are ground truth; several readers' consensus
    effort   what radiologists changed in the pre-annotations, per model version shown
"""
