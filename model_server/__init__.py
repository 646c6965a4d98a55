"""The model server: serves registered model versions over MLflow's scoring protocol.

- ``app``: the HTTP service (``python -m model_server``): routes, and what it answers while nothing serves;
- ``follower``: which version each model should serve, from the registry (the reconcile rules);
- ``pool``: the loaded versions, keyed by (name, version), each a backend; draining and unloading;
- ``backends``: a worker process of ours (mode ``fast``) or ``mlflow models serve`` (mode ``mlflow``);
- ``worker``: the worker process: one version, loaded with its own logged code;
- ``protocol``: MLflow's scoring protocol (request bodies, error bodies), parsed once, here;
- ``wire``: the frames between this service and its workers.
"""
