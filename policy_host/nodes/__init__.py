"""Serving nodes: what the control node pushes to each (``bundle``, and the
certificates `certs` copies for it, ``certcopy``) and the push itself,
rsync over SSH (``push``). What a node says it serves is asked by
``publish.nodeview``; `apply`'s rule across nodes is ``publish.nodes``."""
