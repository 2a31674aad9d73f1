-- Applies a batch of job changes, each only against the body it was computed from (the
-- compare-and-set of tidings.server.stores.redis.jobs; it starts with append.lua).
--
-- KEYS: jobs, jobtypes, jobcounts, running, finished, wake, channels; for an idempotent
--       submit (one new job), its jobidem key.
-- ARGV: now, default max_messages, wake MAXLEN, the store's key prefix; then three per
--       job change: its fields as a msgpack array of strings ("" for none; see
--       `parse_change` below), its new body, its event data JSON ("": publish nothing).
--       Redis's cmsgpack reads no msgpack bin, hence the two binary strings apart. The
--       per-job keys are named here from the prefix, as RedisCore.key names them: three
--       arguments per job instead of twenty keep the call cheap for redis-py to encode.
-- Reply: {1, then seq, prev_seq, keep of each job's append (0, 0, 0: none)} when written;
--        {0, n} when the n-th job's body differs (nothing written);
--        {2, body} when the idempotency key names a job that exists (nothing written);
--        {3, n, body} when the n-th job would take a unique key that another job (whose
--        body this is) holds (nothing written).
local now, default_keep, wake_max, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local JOBS, JOBTYPES, JOBCOUNTS, RUNNING, FINISHED, WAKE, CHANNELS, IDEM =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- One job change, from its fields as `_change_fields` packs them; nil when malformed.
local function parse_change(packed, body, data)
  local ok, fields = pcall(cmsgpack.unpack, packed)
  if not ok or type(fields) ~= 'table' or #fields ~= 15 then
    return nil
  end
  for i = 1, 15 do
    if type(fields[i]) ~= 'string' then
      return nil
    end
  end
  local change = {expected = fields[1], id = fields[2], old_type = fields[3],
                  type = fields[4], status = fields[5], score = fields[6], prio = fields[7],
                  finished = fields[8], created = fields[9], counted = fields[10],
                  count = fields[11], channel = fields[12], event = fields[13],
                  unique = fields[14], unique_op = fields[15], body = body, data = data}
  for _, number in ipairs({change.score, change.prio, change.finished, change.created}) do
    if number ~= '' and not tonumber(number) then
      return nil
    end
  end
  change.key = prefix .. 'job:' .. change.id
  if change.unique ~= '' then
    change.unique_key = prefix .. 'jobuniq:' .. change.unique
  end
  return change
end

-- Every check before the first write: Redis does not undo a script that fails midway.
if #ARGV < 4 or (#ARGV - 4) % 3 ~= 0 then
  return redis.error_reply('job write script: malformed call')
end
local changes = {}
for i = 5, #ARGV, 3 do
  local change = parse_change(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if not change then
    return redis.error_reply('job write script: malformed job change ' .. #changes + 1)
  end
  changes[#changes + 1] = change
end
if IDEM then
  local known = redis.call('GET', IDEM)
  if known then
    local body = redis.call('GET', prefix .. 'job:' .. known)
    if body then
      return {2, body}
    end
  end
end
local staged = {}
for i, change in ipairs(changes) do
  local current = staged[change.key]
  if current == nil then
    current = redis.call('GET', change.key)
  end
  if change.expected == '' then
    if current then
      return {0, i}
    end
  elseif not current or redis.sha1hex(current) ~= change.expected then
    return {0, i}
  end
  -- A later change of the same job in this batch is compared with this one's body.
  staged[change.key] = change.body
end
-- A job that becomes queued or running takes its unique key (`unique_op` 'claim') unless
-- another job that exists holds it; one that stops being either lets go of it ('release').
local holders = {}
for i, change in ipairs(changes) do
  if change.unique_op == 'claim' then
    local holder = holders[change.unique_key]
    if holder == nil then
      holder = redis.call('GET', change.unique_key)
    end
    if holder and holder ~= change.id then
      local holder_key = prefix .. 'job:' .. holder
      local body = staged[holder_key] or redis.call('GET', holder_key)
      if body then
        return {3, i, body}
      end
    end
    holders[change.unique_key] = change.id
  elseif change.unique_op == 'release' then
    holders[change.unique_key] = false
  end
end

local reply = {1}
for _, change in ipairs(changes) do
  local id = change.id
  local queued, qprio = prefix .. 'queued:' .. change.type, prefix .. 'qprio:' .. change.type
  redis.call('SET', change.key, change.body)
  if change.expected == '' then
    redis.call('ZADD', JOBS, change.created, id)
    redis.call('SADD', JOBTYPES, change.type)
  else
    -- Out of every index it could be in, whatever its old state claims.
    redis.call('ZREM', prefix .. 'queued:' .. change.old_type, id)
    redis.call('ZREM', prefix .. 'qprio:' .. change.old_type, id)
    redis.call('ZREM', RUNNING, id)
    redis.call('ZREM', FINISHED, id)
    if change.type ~= change.old_type then
      redis.call('ZREM', queued, id)
      redis.call('ZREM', qprio, id)
    end
  end
  if change.status == 'queued' then
    redis.call('ZADD', queued, change.score, id)
    if change.prio ~= '' then
      redis.call('ZADD', qprio, change.prio, id)
    end
  elseif change.status == 'running' then
    redis.call('ZADD', RUNNING, change.score, id)
  end
  if change.finished ~= '' then
    redis.call('ZADD', FINISHED, change.finished, id)
  end
  if change.counted ~= change.count then
    if change.counted ~= '' then
      redis.call('HINCRBY', JOBCOUNTS, change.counted, -1)
    end
    redis.call('HINCRBY', JOBCOUNTS, change.count, 1)
  end
  if change.data ~= '' then
    local appended = append(prefix .. 'ch:' .. change.channel, prefix .. 'chm:' .. change.channel,
                            CHANNELS, change.channel, change.data, change.event, now,
                            default_keep, '', '', 0)
    reply[#reply + 1] = appended[1]
    reply[#reply + 1] = appended[2]
    reply[#reply + 1] = appended[3]
  else
    reply[#reply + 1] = 0
    reply[#reply + 1] = 0
    reply[#reply + 1] = 0
  end
  if change.unique_op == 'claim' then
    redis.call('SET', change.unique_key, id)
  elseif change.unique_op == 'release' and redis.call('GET', change.unique_key) == id then
    redis.call('DEL', change.unique_key)
  end
  if change.status == 'queued' then
    redis.call('XADD', WAKE, 'MAXLEN', '~', wake_max, '*', 'type', change.type,
               'run_at', change.score)
  end
end
if IDEM then
  redis.call('SET', IDEM, changes[1].id)
end
return reply
