"""`python -m commercelayer_sandbox`: the same as `commercelayer-sandbox`."""

from commercelayer_sandbox.cli import main

raise SystemExit(main())
