-- release_lease: ARGV[3] token. Mirrors LeaseCommand::Release: the lease is freed, its last token
-- and event sequence stay.
local now = clock(ARGV[1])
local token = arg_token(3)
local f = load(KEYS[1])
local r = lease_record(f)
if not r then
  return not_found()
end
if r.token ~= token then
  return rejected(r, 'fenced')
end
local last = str(last_token(f))
local seq = append(f, now, 'lease_released', r.token, r.owner, nil, nil)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'last', last, 'seq', seq)
return {'released'}
