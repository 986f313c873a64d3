-- The conversation history of a chat run read by its conversation's own index entries
-- (model::history::recent; docs/benchmarks.md "channels (session 8)").
--
-- Why: the history read filters a project's conversation_events and outbound replies by
-- conversation, channel and time, newest first, and no index led with the conversation: every
-- LLM run started from a chat with `history_events` read every event and reply its project had
-- ever stored. With these two indexes each side is a backward index scan of the
-- conversation's entries, stopped by the LIMIT.
--
-- Cost: one more B-tree entry per stored event and per reply. Building them on an existing
-- installation holds a write lock on the two tables for the build (seconds per million rows);
-- see docs/operations.md "Upgrade".
CREATE INDEX conversation_events_by_conversation
    ON conversation_events (project_id, conversation, received_at);
CREATE INDEX outbound_replies_by_conversation
    ON outbound_messages (project_id, conversation, created_at) WHERE kind = 'reply';
