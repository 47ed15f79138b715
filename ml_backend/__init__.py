"""The Label Studio ML backend: pre-annotates chest X-rays with the registry's current model.

    model.py          CxrModel, the LabelStudioMLBase subclass: predict / process_event / fit
    images.py         a task's image URL -> pixels (workspace folder or Label Studio upload)
    current_model.py  the serving model version, hot-swapped when the registry promotes another
    retrain.py        counts new annotations and starts the Prefect retrain deployment
    _wsgi.py          the Flask app gunicorn serves: routes, basic auth, body size limit
    gunicorn.conf.py  workers, threads, timeouts, header limits
"""
