"""The command line's parts, behind :mod:`bulk.cli` (which keeps the entry points).

``parser``: every command's arguments and help; ``settings``: arguments to settings, and the
usage checks made before anything starts; ``console``: the exit codes and what is said on
stderr; ``upload``, ``sandbox``, ``offline``: the commands' handlers. Only these modules and
:mod:`bulk.cli` print.
"""
