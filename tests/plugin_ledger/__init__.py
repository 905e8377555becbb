"""A fifth target, "ledger", written from bulk.targets.base's docstrings alone: its client
adapter (``client``) and its sandbox dialect (``sandbox``), which share nothing but the wire
contract in ``sandbox``'s docstring. tests/test_plugin_target.py registers both through entry
points (``bulk.targets``, ``bulk.sandbox``), as a pip-installed plug-in would, for its tests only.
"""
