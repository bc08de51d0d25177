"""`python -m webhook_app.sandbox`: the same as `webhook-app sandbox`."""

from webhook_app.sandbox.cli import main

raise SystemExit(main())
