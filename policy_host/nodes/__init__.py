"""Serving nodes: what the control node pushes to each (``bundle``), the
push itself, rsync over SSH (``push``), and what a node says it serves
(``remote``)."""
