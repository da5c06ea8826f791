-- enqueue.lua: appends a PUBLISHed event to the agent's queue unless the queue is full, and journals
-- it as queued, in one round trip (store.rs: Store::enqueue_published, through EnqueueArgs).
--
-- Field names come from the caller (core_events::record), so the script spells none.
--
-- KEYS, in order:
--   KEYS[1] queue: the agent's queue stream
--   KEYS[2] journal: the agent's journal stream
--   KEYS[3] delivery: this delivery's marker (core_events Prefix::delivery): set to the new entry's
--           id; when it is there already, this delivery was queued by an earlier try of the same
--           call, whose reply was lost, and its id is the reply
-- ARGV, in order:
--   ARGV[1] max_queue: the queue length at which the event is not queued
--   ARGV[2] journal_maxlen: the journal's approximate MAXLEN
--   ARGV[3] event_field: the queue entry's event field name
--   ARGV[4] event: the event's name
--   ARGV[5] data_field: the queue entry's data field name
--   ARGV[6] data: the event's data
--   ARGV[7] delivery_ttl: seconds the delivery marker lives
--   ARGV[8] journal_run_field: the journal entry's run field name (its value is the new entry's id)
--   ARGV[9..] journal_fields: the journal entry's other fields, as name/value pairs
-- Reply (store.rs: EnqueueReply):
--   the new queue entry's stream id (a bulk string), or nil (Lua false) when the queue is full.
--
-- A queue or journal that is not a stream (anyone who may write the agent's keys can put a string
-- there) is removed first: they are the agent's own, and an error here would stop its listener.
if redis.call('TYPE', KEYS[3]).ok == 'string' then return redis.call('GET', KEYS[3]) end
for i = 1, 2 do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'none' and t ~= 'stream' then redis.call('DEL', KEYS[i]) end
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('SET', KEYS[3], id, 'EX', tonumber(ARGV[7]))
local j = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', ARGV[8], id}
for i = 9, #ARGV do j[#j + 1] = ARGV[i] end
redis.call(unpack(j))
return id
