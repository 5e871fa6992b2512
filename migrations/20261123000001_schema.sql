-- Otako's schema. Ids are bigint in the database and decimal strings on every wire.

CREATE TABLE users (
    id               BIGSERIAL PRIMARY KEY,
    username         TEXT NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9_]{2,32}$'),
    -- Tokens carry the generation they were issued under; bumping it revokes them all.
    token_generation INTEGER NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE channels (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    created_by BIGINT NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE channel_members (
    channel_id BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, user_id)
);
-- READY lists a user's channels: look them up by user.
CREATE INDEX channel_members_by_user ON channel_members (user_id, channel_id);

CREATE TABLE messages (
    id         BIGSERIAL PRIMARY KEY,
    channel_id BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    author_id  BIGINT NOT NULL REFERENCES users (id),
    content    TEXT NOT NULL,
    nonce      TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    edited_at  TIMESTAMPTZ,
    -- Soft delete: the gateway must still be able to check that a deleted
    -- message belonged to the channel its delete event names.
    deleted_at TIMESTAMPTZ
);
CREATE INDEX messages_by_channel ON messages (channel_id, id DESC) WHERE deleted_at IS NULL;
-- The same nonce from the same author returns the first message.
CREATE UNIQUE INDEX messages_nonce ON messages (author_id, nonce) WHERE nonce IS NOT NULL;

-- The outbox: every write commits its event here in the same transaction.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    event_type   TEXT NOT NULL,
    channel_id   BIGINT NOT NULL,
    data         JSONB NOT NULL,
    -- W3C traceparent of the write, so dispatch continues the request's trace.
    traceparent  TEXT,
    status       TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dropped')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);
CREATE INDEX outbox_pending ON outbox (channel_id, id) WHERE status = 'pending';
