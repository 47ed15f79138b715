"""Label Studio for the workbench.

(The Label Studio server process itself is started by cxrkit.services.labelstudio_server.)

    client   a small HTTP client over its REST API (projects, tasks, predictions, views, export)
    tasks    manifest Record -> task data, shared by the importer and the ML backend
    results  our boxes <-> Label Studio result JSON
    export   snapshots of exports, and the training sets made from their ground truth
    ground_truth  which annotations are ground truth; several readers' consensus
    effort   what radiologists changed in the pre-annotations, per model version shown
    queue    the labeling queue's order: gold tasks mixed in, shared among readers
    publish  that queue into Label Studio as predictions, in a few requests
    review   which images a reviewer should see, and how well each reader reads
"""
