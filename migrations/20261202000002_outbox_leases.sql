-- Backend replicas share the outbox: each channel's pending events are sent
-- by the replica holding the channel's lease (backend-shim/src/lease.rs). A
-- lease that is not renewed before expires_at is free for another replica.
CREATE TABLE outbox_leases (
    channel_id BIGINT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
