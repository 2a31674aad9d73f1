-- append(stream key, meta key, channels set key, name, data JSON, event ("" for none),
--        now, default max_messages, idempotency key prefix ("{p}idem:{name}:"),
--        key digest ("" for none), TTL ms)
--
-- Appends one message to a channel: the function every script that writes a channel
-- message starts with (publish.lua, job_write.lua), so a job's event follows the same
-- id, retention and idempotency rules as a publish.
--
-- Returns {seq, prev_seq, keep} for a new message; for a duplicate
--         {seq, prev_seq, keep, 1, fields of the earlier entry (absent when trimmed)}.
local function append(stream, meta, channels, name, data, event, now, default_keep,
                      idem_prefix, digest, ttl)
  redis.call('HSETNX', meta, 'created', now)
  local keep = tonumber(redis.call('HGET', meta, 'max_messages') or default_keep)
  local idem = false
  if digest ~= '' then
    idem = idem_prefix .. redis.call('HGET', meta, 'created') .. ':' .. digest
    local seen = redis.call('GET', idem)
    if seen then
      local seq = tonumber(seen)
      local entry = redis.call('XRANGE', stream, '0-' .. seen, '0-' .. seen)
      if entry[1] then
        return {seq, seq - 1, keep, 1, entry[1][2]}
      end
      return {seq, seq - 1, keep, 1}
    end
  end
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  redis.call('XADD', stream, '0-' .. seq, 'd', data, 'e', event, 't', now)
  redis.call('XTRIM', stream, 'MAXLEN', keep)
  redis.call('ZADD', channels, 0, name)
  if idem then
    redis.call('SET', idem, seq, 'PX', ttl)
  end
  return {seq, seq - 1, keep}
end
