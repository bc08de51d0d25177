"""Operations an operator runs: `replay` (re-send, re-signed), `whatif` (policy diff),
`reconcile` (feed in orders that never reached us), `registration` (webhooks at Commerce Layer)."""
