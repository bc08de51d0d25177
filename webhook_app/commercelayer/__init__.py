"""Commerce Layer: `api` (the Protocol and call records, no transport) and `client` (requests).

Only `client.py` imports requests; the rest of the service names `CommerceLayerAPI`.
"""

from webhook_app.commercelayer.api import CallRecord, CommerceLayerAPI

__all__ = ["CallRecord", "CommerceLayerAPI"]
