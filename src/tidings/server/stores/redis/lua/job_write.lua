-- Applies a batch of job changes, each only against the body it was computed from (the
-- compare-and-set of tidings.server.stores.redis.jobs; it starts with append.lua).
--
-- KEYS: jobs, jobtypes, jobcounts, running, finished, wake, channels, qlimits, qrate; for
--       an idempotent submit (one new job), its jobidem key.
-- ARGV: now, default max_messages, wake MAXLEN, the store's key prefix; then three per
--       job change: its fields as a msgpack array of strings ("" for none; see
--       `parse_change` below), its new body, its event data JSON ("": publish nothing).
--       Redis's cmsgpack reads no msgpack bin, hence the two binary strings apart. The
--       per-job keys are named here from the prefix, as RedisCore.key names them: three
--       arguments per job instead of twenty keep the call cheap for redis-py to encode.
-- Reply: {1, then seq, prev_seq, keep of each job's append (0, 0, 0: none), then a flag
--        per change: 1 when it ended a job with dependents, 2 when it made a job waiting
--        while a parent has ended or is gone (either: its job is marked to be settled,
--        in `jobsettle`), else 0} when written;
--        {0, n} when the n-th job's body differs (nothing written);
--        {2, body} when the idempotency key names a job that exists (nothing written);
--        {3, n, body} when the n-th job would take a unique key that another job (whose
--        body this is) holds (nothing written);
--        {4, n} when leasing the n-th job would pass a limit of its type (nothing written).
local now, default_keep, wake_max, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local JOBS, JOBTYPES, JOBCOUNTS, RUNNING, FINISHED, WAKE, CHANNELS, QLIMITS, QRATE, IDEM =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]

-- One job change, from its fields as `_change_fields` packs them; nil when malformed.
local function parse_change(packed, body, data)
  local ok, fields = pcall(cmsgpack.unpack, packed)
  if not ok or type(fields) ~= 'table' or #fields ~= 19 then
    return nil
  end
  for i = 1, 19 do
    if type(fields[i]) ~= 'string' then
      return nil
    end
  end
  local change = {expected = fields[1], id = fields[2], old_type = fields[3],
                  type = fields[4], status = fields[5], score = fields[6], prio = fields[7],
                  finished = fields[8], created = fields[9], counted = fields[10],
                  count = fields[11], channel = fields[12], event = fields[13],
                  unique = fields[14], unique_op = fields[15], group = fields[16],
                  ends = fields[17], stamp = fields[18], body = body, data = data}
  -- The parents of a new job with parents, or of one made waiting: a JSON array of ids.
  if fields[19] ~= '' then
    local decoded, parents = pcall(cjson.decode, fields[19])
    if not decoded or type(parents) ~= 'table' then
      return nil
    end
    for _, parent in ipairs(parents) do
      if type(parent) ~= 'string' then
        return nil
      end
    end
    change.parents = parents
  end
  for _, number in ipairs({change.score, change.prio, change.finished, change.created,
                           change.stamp}) do
    if number ~= '' and not tonumber(number) then
      return nil
    end
  end
  change.key = prefix .. 'job:' .. change.id
  change.was_running = change.counted == change.old_type .. '\0running'
  change.is_running = change.status == 'running'
  change.was_queued = change.counted == change.old_type .. '\0queued'
  change.becomes_waiting = change.status == 'waiting'
    and change.counted ~= change.old_type .. '\0waiting'
  change.is_queued = change.status == 'queued'

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
-- A job type's limits, as `_pack_limits` writes them in QLIMITS: "concurrency|group
-- concurrency|rate limit|rate per" ("" for none); false when it has none.
local function limits_of(job_type)
  local packed = redis.call('HGET', QLIMITS, job_type)
  if not packed then
    return false
  end
  local parts, n = {}, 0
  for part in string.gmatch(packed .. '|', '([^|]*)|') do
    n = n + 1
    parts[n] = tonumber(part)
  end
  return {concurrency = parts[1], group = parts[2], limit = parts[3], per = parts[4]}
end
-- A lease (a job that becomes running) passes only within its type's limits: running
-- jobs per type and per group, and the rate (GCRA: see tidings.server.stores.limits) by
-- Redis's clock (read before any write), so nodes with skewed clocks share one bucket.
local limits, running, group_running, tats = {}, {}, {}, {}
local t_now = nil
for i, change in ipairs(changes) do
  if change.is_running and not change.was_running then
    local job_type = change.type
    local lim = limits[job_type]
    if lim == nil then
      lim = limits_of(job_type)
      limits[job_type] = lim
    end
    if lim then
      if lim.concurrency then
        local n = running[job_type]
        if n == nil then
          n = tonumber(redis.call('HGET', JOBCOUNTS, job_type .. '\0running') or '0')
        end
        if n >= lim.concurrency then
          return {4, i}
        end
        running[job_type] = n + 1
      end
      if lim.group and change.group ~= '' then
        local key = job_type .. '\0' .. change.group
        local n = group_running[key]
        if n == nil then
          n = tonumber(redis.call('HGET', prefix .. 'grun:' .. job_type, change.group) or '0')
        end
        if n >= lim.group then
          return {4, i}
        end
        group_running[key] = n + 1
      end
      if lim.limit and lim.per then
        if t_now == nil then
          local clock = redis.call('TIME')
          t_now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
        end
        local interval = lim.per / lim.limit
        local tat = tats[job_type]
        if tat == nil then
          tat = tonumber(redis.call('HGET', QRATE, job_type) or '0')
        end
        tat = math.max(tat, t_now)
        if tat - t_now > lim.per - interval + 1e-4 then
          return {4, i}
        end
        tats[job_type] = tat + interval
      end
    end
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
    redis.call('ZREM', prefix .. 'waiting', id)
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
  elseif change.status == 'waiting' then
    redis.call('ZADD', prefix .. 'waiting', change.created, id)
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
  -- The queued and running jobs of each group, per type (a group goes at 0).
  if change.group ~= '' and (change.was_queued ~= change.is_queued
                             or change.was_running ~= change.is_running) then
    local counts = {{prefix .. 'gq:' .. change.old_type, change.was_queued, -1},
                    {prefix .. 'grun:' .. change.old_type, change.was_running, -1},
                    {prefix .. 'gq:' .. change.type, change.is_queued, 1},
                    {prefix .. 'grun:' .. change.type, change.is_running, 1}}
    for _, count in ipairs(counts) do
      if count[2] and redis.call('HINCRBY', count[1], change.group, count[3]) <= 0 then
        redis.call('HDEL', count[1], change.group)
      end
    end
  end
  -- The queued jobs of each group by run_at (`gqz:{type}\0{group}`), and the groups of a
  -- type by their earliest queued job (`gheads:{type}`): a lease finds the due jobs of
  -- groups below their limit however many jobs of full groups are queued ahead.
  if change.group ~= '' and (change.was_queued or change.is_queued) then
    local touched = {}
    if change.was_queued then
      touched[change.old_type] = true
      redis.call('ZREM', prefix .. 'gqz:' .. change.old_type .. '\0' .. change.group, id)
    end
    if change.status == 'queued' then
      touched[change.type] = true
      redis.call('ZADD', prefix .. 'gqz:' .. change.type .. '\0' .. change.group,
                 change.score, id)
    end
    for job_type in pairs(touched) do
      local heads = prefix .. 'gheads:' .. job_type
      local first = redis.call('ZRANGE', prefix .. 'gqz:' .. job_type .. '\0' .. change.group,
                               0, 0, 'WITHSCORES')
      if first[2] then
        redis.call('ZADD', heads, first[2], change.group)
      else
        redis.call('ZREM', heads, change.group)
      end
    end
  end
  -- A running job of a type with limits that stops running may let a held job go: the
  -- relays wake the lease requests parked for its type.
  if change.was_running and not change.is_running and change.status ~= 'queued'
     and redis.call('HEXISTS', QLIMITS, change.type) == 1 then
    redis.call('XADD', WAKE, 'MAXLEN', '~', wake_max, '*', 'type', change.type, 'run_at', now)
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
-- Once every job of the batch is written (a parent may follow its child in a batch): a
-- new job goes into the `jobkids` of each of its parents that exists (a parent swept
-- since the submit read it gets no set nobody would delete); the jobs submitted after a
-- job this batch ended, and a job made waiting while a parent has ended or is gone, are
-- marked to be settled (`jobsettle`, by stamp), in this same atomic step.
local SETTLE = prefix .. 'jobsettle'
for _, change in ipairs(changes) do
  local flag = 0
  if change.ends ~= '' and redis.call('EXISTS', prefix .. 'jobkids:' .. change.id) == 1 then
    flag = 1
  end
  if change.parents then
    local due = false
    for _, parent in ipairs(change.parents) do
      if redis.call('EXISTS', prefix .. 'job:' .. parent) == 1 then
        if change.expected == '' then
          redis.call('SADD', prefix .. 'jobkids:' .. parent, change.id)
        end
        if redis.call('ZSCORE', FINISHED, parent) then
          due = true
        end
      else
        due = true
      end
    end
    if due and change.becomes_waiting then
      flag = 2
    end
  end
  if flag ~= 0 then
    redis.call('ZADD', SETTLE, change.stamp, change.id)
  end
  reply[#reply + 1] = flag
end
for job_type, tat in pairs(tats) do
  redis.call('HSET', QRATE, job_type, string.format('%.17g', tat))
end
if IDEM then
  redis.call('SET', IDEM, changes[1].id)
end
return reply
