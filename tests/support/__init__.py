"""Per-target test support: how each sandbox's state maps back to input records.

Each module ``support/<target>.py`` provides:

- ``invoices(state) -> list[dict]``: one dict per invoice the sandbox stored, with
  ``external_id`` (our id, however the API keeps it), ``id`` (the API's id, as in id_map.csv),
  ``currency``, ``gross`` (the API's total, or None when it reports none) and ``titles``.
- ``refusable(record: dict) -> dict``: a copy of a valid record that bulk's own validation
  accepts but this API refuses with a 4xx.
- ``EXTRA_ARGS``: extra ``bulk upload`` arguments the target needs against its sandbox.
- ``audited(state) -> list[dict]``: each stored invoice with ``external_id``, ``id``, ``customer_id``,
  ``status`` and ``items``; ``record_items(doc)`` and ``record_status(doc)``: what the raw input
  record ``doc`` (a dict) must become by this target's mapping (items as tuples, see the modules).
"""
