"""`python -m webhook_app` is the same as the `webhook-app` console script."""

from webhook_app.cli import main

raise SystemExit(main())
