-- What the reconciliation with the platform's bill joins on (DESIGN §11): the workspace the call ran in
-- (`X-DashScope-WorkSpace`, NULL = the default workspace) and the console's ID of its key (`[[api_key]]`
-- `key_id`, NULL when not configured). Existing rows stay valid: both are NULL for them (the reconciliation maps
-- their key fingerprints through today's `[[api_key]]` tables).
ALTER TABLE usage_ledger ADD COLUMN workspace text, ADD COLUMN api_key_id text;
