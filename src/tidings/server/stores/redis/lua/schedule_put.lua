-- Creates or replaces a schedule (stores/redis/schedules.py) only if the stored one is
-- still the one the caller read (a compare-and-set), refusing a new one past the cap and
-- one new to its owner past the owner's cap.
-- KEYS: {p}sched (hash: name -> msgpack body), {p}scheddue (names by next_run_at),
--       {p}schednames (names, all scores 0: ordered by name), {p}schedowner (hash: name ->
--       owner, for the schedules that have one).
-- ARGV: name, body, next_run_at, cap, SHA-1 (hex) of the body read ('': none was),
--       owner ('': none), the owner's cap ('': none).
-- Reply: 1 when written, 0 when the stored body is not the one read, -1 when new and the
-- cap is reached, -2 when new to its owner and the owner's cap is reached (nothing
-- written but on 1).
local name, owner = ARGV[1], ARGV[6]
local stored = redis.call('HGET', KEYS[1], name)
if not stored then
  if ARGV[5] ~= '' then
    return 0
  end
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    return -1
  end
elseif ARGV[5] == '' or redis.sha1hex(stored) ~= ARGV[5] then
  return 0
end
if owner ~= '' and ARGV[7] ~= '' and redis.call('HGET', KEYS[4], name) ~= owner then
  local owned = 0
  for _, other in ipairs(redis.call('HVALS', KEYS[4])) do
    if other == owner then
      owned = owned + 1
    end
  end
  if owned >= tonumber(ARGV[7]) then
    return -2
  end
end
redis.call('HSET', KEYS[1], name, ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], name)
redis.call('ZADD', KEYS[3], 0, name)
if owner ~= '' then
  redis.call('HSET', KEYS[4], name, owner)
else
  redis.call('HDEL', KEYS[4], name)
end
return 1
