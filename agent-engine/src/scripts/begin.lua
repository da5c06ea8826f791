-- begin.lua: begins a run in one round trip (store.rs: Store::begin_run, through BeginArgs).
--
-- Reads the run's record to decide its attempt (a record still `running` was interrupted; a terminal
-- one means a duplicate entry), writes the fresh `running` record and its journal entry unless told
-- not to start, and returns what the steps need from Redis (module.env, and the secrets when they
-- changed since the agent last learned them).
--
-- The record is written without the event's data: the data may hold a secret's value the agent has
-- not learned yet, so it goes over the wire only once scrubbed with the secrets returned here. The
-- secrets are compared by a digest of their sorted fields and ciphertexts, computed here, so an
-- unchanged set costs nothing but the digest.
--
-- A retry of the script after a lost reply must not count as a new attempt: a `running` record whose
-- `started` is this begin's own (the caller keeps one value across retries) is taken as begun.
--
-- Field names and statuses come from the caller (core_events::record), so the script spells none;
-- the outcome words of its reply are its own (store.rs: BEGIN_ENDED, BEGIN_REFUSED, BEGIN_STARTED).
--
-- KEYS, in order:
--   KEYS[1] record_key: the run's record (a hash)
--   KEYS[2] output_key: the run's output (a string)
--   KEYS[3] journal_key: the agent's journal stream
--   KEYS[4] module_env_key: module.env (a hash; module agents only)
--   KEYS[5] secrets_key: the module's secrets (a hash; module agents only)
-- ARGV, in order:
--   ARGV[1] status_field: the record's status field name
--   ARGV[2] attempt_field: the record's (and journal entry's) attempt field name
--   ARGV[3] started_field: the record's started field name
--   ARGV[4] running_status: the running status
--   ARGV[5] terminal_statuses: the terminal statuses, space-separated
--   ARGV[6] start: `1` to start the run, `0` to only look
--   ARGV[7] max_attempts: the most attempts
--   ARGV[8] record_ttl: the record's TTL, in seconds
--   ARGV[9] journal_maxlen: the journal's approximate MAXLEN
--   ARGV[10] known_digest: the digest of the secrets the agent knows (or ``)
--   ARGV[11] started: this begin's `started` (the same across retries of one begin)
--   ARGV[12] record_len: n, the number of record arguments that follow
--   ARGV[13..12+n] record_fields: the record's fields as name/value pairs, without data and attempt
--   ARGV[13+n..] journal_fields: the journal entry's fields as name/value pairs, without attempt
-- The script adds the attempt to both the record and the journal entry.
--
-- Reply (store.rs: BeginReply), always a table of 7:
--   1 outcome: `ended` (the record holds a terminal status: nothing written), `refused` (not started
--     as asked, or the attempt is over the most: nothing written) or `started` (the `running` record
--     and journal entry are written, or were by this begin before a lost reply)
--   2 attempt: a whole number (for `ended`, the record's; else this begin's)
--   3 the ended status, exactly one of ARGV[5] (for `ended`), else ``
--   4 module.env as a flat list of field/value (empty for `ended` and for node agents)
--   5 the digest of the secrets (`` for `ended` and for node agents)
--   6 the secrets as a flat list of field/ciphertext, or nil (Lua false) when unchanged or for `ended`
--   7 warnings: a list of strings
--
-- Nothing in these keys can stop the script: a run record or output of the wrong type (anyone who
-- may write the agent's keys can put a string there) is removed, as it is the agent's own and about
-- to be written anew, and so is a journal that is not a stream; a module.env or secrets key of the
-- wrong type is read as empty and reported; an `attempt` that is not a small whole number counts as
-- 0; a status that is not exactly one of the terminal statuses (say `done failed`) is not taken as
-- terminal. Each finding but the last is returned as a warning.
local warn = {}
local function owned(key, want)
  local t = redis.call('TYPE', key).ok
  if t ~= 'none' and t ~= want then
    redis.call('DEL', key)
    warn[#warn + 1] = key .. ' held a ' .. t .. ', not a ' .. want .. ': removed'
  end
end
local function readable(key)
  local t = redis.call('TYPE', key).ok
  if t == 'hash' then return redis.call('HGETALL', key) end
  if t ~= 'none' then warn[#warn + 1] = key .. ' is a ' .. t .. ', not a hash: read as empty' end
  return {}
end
local function terminal(s)
  if not s then return false end
  for t in string.gmatch(ARGV[5], '%S+') do
    if t == s then return true end
  end
  return false
end
owned(KEYS[1], 'hash')
owned(KEYS[2], 'string')
owned(KEYS[3], 'stream')
local status = redis.call('HGET', KEYS[1], ARGV[1])
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[2])) or 0
if before ~= before or before < 0 or before > 1000000 then before = 0 end
before = math.floor(before)
if terminal(status) then
  return {'ended', before, status, {}, '', false, warn}
end
local env, digest, secrets = {}, '', false
if #KEYS >= 5 then
  env = readable(KEYS[4])
  local flat = readable(KEYS[5])
  local sorted = {}
  for i = 1, #flat, 2 do sorted[#sorted + 1] = {flat[i], flat[i + 1]} end
  table.sort(sorted, function(a, b) return a[1] < b[1] end)
  local parts = {}
  for _, p in ipairs(sorted) do
    parts[#parts + 1] = #p[1] .. ':' .. p[1] .. #p[2] .. ':' .. p[2]
  end
  digest = redis.sha1hex(table.concat(parts))
  if digest ~= ARGV[10] then secrets = flat end
end
local attempt = 1
if status == ARGV[4] then
  if redis.call('HGET', KEYS[1], ARGV[3]) == ARGV[11] then
    return {'started', before, '', env, digest, secrets, warn}
  end
  attempt = before + 1
end
if ARGV[6] ~= '1' or attempt > tonumber(ARGV[7]) then
  return {'refused', attempt, '', env, digest, secrets, warn}
end
redis.call('DEL', KEYS[1], KEYS[2])
local n = tonumber(ARGV[12])
local h = {'HSET', KEYS[1], ARGV[2], attempt}
for i = 13, 12 + n do h[#h + 1] = ARGV[i] end
redis.call(unpack(h))
redis.call('EXPIRE', KEYS[1], ARGV[8])
local j = {'XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*'}
for i = 13 + n, #ARGV do j[#j + 1] = ARGV[i] end
j[#j + 1] = ARGV[2]
j[#j + 1] = attempt
redis.call(unpack(j))
return {'started', attempt, '', env, digest, secrets, warn}
