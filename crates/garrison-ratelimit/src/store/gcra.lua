-- GCRA, the same arithmetic as garrison-ratelimit's memory store, in microseconds on the
-- Redis server's clock (so that replicas with skewed clocks agree).
-- KEYS[1]: the key's state (its theoretical arrival time, TAT)
-- ARGV[1]: emission interval, ARGV[2]: tolerance (emission * burst), ARGV[3]: requests wanted,
-- ARGV[4]: tokens of an expired lease given back unspent (0 when none)
-- Returns {granted, remaining, reset, retry_after}, times in microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local back = tonumber(ARGV[4] or '0')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
-- tokens given back undo their part of the TAT; a bucket cannot be fuller than full
if back > 0 then tat = tat - back * emission end
if tat < now then tat = now end
local room = math.floor((tolerance - (tat - now)) / emission)
if room < 0 then room = 0 end
local granted = math.min(room, want)
if granted <= 0 then
  if back > 0 then
    local ttl = math.ceil((tat - now) / 1000)
    if ttl > 0 then
      redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ttl)
    else
      redis.call('DEL', KEYS[1])
    end
  end
  local retry = tat + emission - tolerance - now
  if retry < 1 then retry = 1 end
  return {0, 0, tat - now, retry}
end
local new_tat = tat + granted * emission
local ttl = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {granted, math.floor((tolerance - (new_tat - now)) / emission), new_tat - now, 0}
