"""The operator's side of the daemon: ``surface`` (the component that runs the
rest), ``control`` (the root-only control API), ``client`` (its client, for the
CLI), ``metrics`` (Prometheus) and ``http`` (the small server both are served by).

Kept empty so that the CLI's client does not load the server side.
"""
