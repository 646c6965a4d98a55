"""What every service process of the project shares: JSON logs, starting a service, child processes.

Plumbing, not contract: the gateway, the model server and the local stack use
it; ``steps/`` and ``pyfunc/`` do not.
"""
