"""The local stack: the tracking server, the model server and the gateway as processes on this machine.

``python -m stack up|down|status`` (``make up``/``make down``); each service runs
under :mod:`stack.watchdog`, the local stand-in for compose's restart policy.
"""
