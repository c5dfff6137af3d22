"""Jobs: scheduled or immediate operations with named steps, progress, result and history.

``model`` (the record), ``store`` (one JSON file per job under ``<state-dir>/jobs/``),
``runner`` (kinds, scheduling, running, recovery after a restart) and the job kinds
themselves (``mongodb_update``). The API is ``agent.api.jobs``, the CLI ``agent.cli.jobs``.
"""
