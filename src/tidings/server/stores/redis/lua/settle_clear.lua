-- Clears settle marks whose stamp is still the one given (a mark written again since
-- stays).
-- KEYS: jobsettle.  ARGV: job id, stamp, job id, stamp, ...
-- Reply: how many were cleared.
local cleared = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    cleared = cleared + 1
  end
end
return cleared
