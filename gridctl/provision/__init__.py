"""Provisioning: render a profile's templates per node, push them idempotently, verify, roll back.

Modelled on pyinfra: facts are one shell command plus a pure parser
(:mod:`.facts`); the plan of each node is computed without touching it
(:mod:`.plan`), so ``--check`` runs the same code as a real run; only
:mod:`.apply` turns a plan into commands on a node.

- :mod:`.profile`: a profile's manifest (``templates/provision/<name>/profile.yaml``)
- :mod:`.context`: a node's effective settings and its template variables, from the inventory
- :mod:`.render`: rendering every file and manifest string, errors located by file and line
- :mod:`.facts`: one command per node (preflight readings and checksums) and its parser
- :mod:`.plan`: what would change on a node, and the preflight verdict
- :mod:`.scripts`: the remote shell scripts (upload, commit, restore), every value quoted
- :mod:`.verify`: wait, bounded, until the endpoint answers and serves the models
- :mod:`.apply`: one node, end to end; :mod:`.rollout`: batches, max-fail, results
"""
