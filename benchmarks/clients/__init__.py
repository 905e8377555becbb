"""The baseline clients ``bulk`` is measured against, one module each, run as subprocesses.

Every client does the same work per invoice as ``bulk``'s Agiled target: parse the NDJSON
line, look the customer's contact up once (cached), build the same JSON body, POST it with
the same headers (bearer token, Idempotency-Key), read the id from the answer and write
``external_id,id`` to an output file. None of them validates, totals or checkpoints: that is
``bulk``'s own overhead, and the table shows its price.
"""
