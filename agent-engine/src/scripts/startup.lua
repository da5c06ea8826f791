-- startup.lua: queues the startup event once in the agent's life: the marker and the queue entry are
-- set together (store.rs: Store::enqueue_startup, through StartupArgs).
--
-- Field names come from the caller (core_events::record), so the script spells none.
--
-- KEYS, in order:
--   KEYS[1] queue: the agent's queue stream
--   KEYS[2] marker: the startup marker (set once, never expires)
-- ARGV, in order:
--   ARGV[1] marker_value: what the marker is set to (the time it was set)
--   ARGV[2..] entry_fields: the queue entry's fields, as name/value pairs
-- Reply (store.rs: StartupReply):
--   the new queue entry's stream id (a bulk string), or nil (Lua false) when the marker was set
--   before (the startup event was queued once already; nothing is written).
if redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  local c = {'XADD', KEYS[1], '*'}
  for i = 2, #ARGV do c[#c + 1] = ARGV[i] end
  return redis.call(unpack(c))
end
return false
