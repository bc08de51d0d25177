"""webhook-app: a production webhook receiver for Commerce Layer.

Verified intake, a durable exactly-once event log, a declarative policy and a worker that
flags orders so that their payment source is saved into the customer's wallet.
"""

__version__ = "0.1.0"
