-- Records a worker seen (stores/redis/workers.py): a refresh keeps its first_seen, its
-- last_seen never moves back; then forgets the workers last seen before ARGV[5] and,
-- past ARGV[6] workers, the least recently seen.
-- KEYS: {p}workers (ids by last_seen), {p}workerfirst (ids by first_seen),
--       {p}workerinfo (hash: id -> msgpack description).
-- ARGV: id, first_seen, last_seen, description, forget_before, cap, user ('' anonymous).
-- Reply: 1 when recorded, 0 when the store holds a later word of this worker, or a
-- record of this id by another user seen since forget_before (not theirs to take).
local id = ARGV[1]
local known = redis.call('ZSCORE', KEYS[1], id)
if known and tonumber(known) > tonumber(ARGV[3]) then
  return 0
end
-- A record seen since forget_before is refreshed; an older one is replaced whole.
local live = known and tonumber(known) >= tonumber(ARGV[5])
if live then
  local body = redis.call('HGET', KEYS[3], id)
  -- The description is msgpack [name, types, concurrency, user].
  if body and (cmsgpack.unpack(body)[4] or '') ~= ARGV[7] then
    return 0
  end
  redis.call('ZADD', KEYS[2], 'NX', ARGV[2], id)
else
  redis.call('ZADD', KEYS[2], ARGV[2], id)
end
redis.call('ZADD', KEYS[1], ARGV[3], id)
redis.call('HSET', KEYS[3], id, ARGV[4])

local function forget(ids)
  if #ids > 0 then
    redis.call('ZREM', KEYS[1], unpack(ids))
    redis.call('ZREM', KEYS[2], unpack(ids))
    redis.call('HDEL', KEYS[3], unpack(ids))
  end
  return #ids
end

-- In rounds of 100: unpack() takes a bounded number of values.
while forget(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5], 'LIMIT', 0, 100)) > 0 do
end
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[6])
while extra > 0 do
  extra = extra - forget(redis.call('ZRANGE', KEYS[1], 0, math.min(extra, 100) - 1))
end
return 1
