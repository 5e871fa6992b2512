-- A nonce answers for one message per author and channel: the same nonce in
-- another channel is another message there, not the first channel's one.
DROP INDEX messages_nonce;
CREATE UNIQUE INDEX messages_nonce ON messages (author_id, channel_id, nonce) WHERE nonce IS NOT NULL;
