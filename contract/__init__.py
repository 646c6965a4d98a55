"""The contract the project's packages share, and the only thing they share.

``steps/`` (what ``mlflow run`` executes), ``gateway/`` (the REST API),
``model_server/`` and ``stack/`` all import this package and never each other;
it imports none of them, nor ``pyfunc/`` (what is logged with a model). It holds
the parameters of the entry points and their parsing, the error types, the
names of tags and defaults, the settings every service reads, and the one
alias/stage policy of the registry. The import rules are checked in CI by
import-linter (``.importlinter``).
"""
