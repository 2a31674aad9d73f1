-- Lists the workers last seen at or after ARGV[1], most recently seen first
-- (stores/redis/workers.py), read in one step.
-- KEYS: {p}workers, {p}workerfirst, {p}workerinfo (as in worker_record.lua).
-- Reply: id, last_seen, first_seen, description, for each worker in turn (first_seen or
-- description false when missing).
local seen = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[1], 'WITHSCORES')
local out = {}
for i = 1, #seen, 2 do
  local id = seen[i]
  out[#out + 1] = id
  out[#out + 1] = seen[i + 1]
  out[#out + 1] = redis.call('ZSCORE', KEYS[2], id) or false
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or false
end
return out
