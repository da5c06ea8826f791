-- enqueue.lua: appends a PUBLISHed event to the agent's queue unless the queue is full, and journals
-- it as queued, in one round trip (store.rs: Store::enqueue_published, through EnqueueArgs).
--
-- Field names come from the caller (core_events::record), so the script spells none.
--
-- KEYS, in order:
--   KEYS[1] queue: the agent's queue stream
--   KEYS[2] journal: the agent's journal stream
-- ARGV, in order:
--   ARGV[1] max_queue: the queue length at which the event is not queued
--   ARGV[2] journal_maxlen: the journal's approximate MAXLEN
--   ARGV[3] event_field: the queue entry's event field name
--   ARGV[4] event: the event's name
--   ARGV[5] data_field: the queue entry's data field name
--   ARGV[6] data: the event's data
--   ARGV[7] journal_run_field: the journal entry's run field name (its value is the new entry's id)
--   ARGV[8..] journal_fields: the journal entry's other fields, as name/value pairs
-- Reply (store.rs: EnqueueReply):
--   the new queue entry's stream id (a bulk string), or nil (Lua false) when the queue is full.
--
-- A queue or journal that is not a stream (anyone who may write the agent's keys can put a string
-- there) is removed first: they are the agent's own, and an error here would stop its listener.
for _, key in ipairs(KEYS) do
  local t = redis.call('TYPE', key).ok
  if t ~= 'none' and t ~= 'stream' then redis.call('DEL', key) end
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local j = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', ARGV[7], id}
for i = 8, #ARGV do j[#j + 1] = ARGV[i] end
redis.call(unpack(j))
return id
