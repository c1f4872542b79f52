-- API keys made with `mailfleet key create`: each bound to a tenant (NULL: every tenant, for
-- operators) and to scopes. Only the SHA-256 of a key is stored; `prefix` (its first
-- characters) is shown in listings so an operator can tell keys apart. A revoked key keeps
-- its row (revoked_at set) so listings show what was revoked and when.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    key_hash    bytea NOT NULL UNIQUE,
    prefix      text NOT NULL,
    name        text NOT NULL DEFAULT '',
    tenant      text,
    scopes      text[] NOT NULL CHECK (scopes <@ ARRAY['send', 'read']::text[] AND cardinality(scopes) > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
