"""Commerce Layer: `api` (the Protocol and call records, no transport) and `client` (requests),
with its tokens (`oauth`) and its failures mapped to CommerceLayerError (`failures`).

Only `client.py`, `oauth.py` and `failures.py` import requests; the rest of the service names
`CommerceLayerAPI`.
"""

from webhook_app.commercelayer.api import CallRecord, CommerceLayerAPI

__all__ = ["CallRecord", "CommerceLayerAPI"]
