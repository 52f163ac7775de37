-- claim: ARGV[3] owner, ARGV[4] ttl µs, ARGV[5] hard ttl µs, ARGV[6] '1' to start at once,
-- ARGV[7] request id, ARGV[8] fingerprint or '' for none.
-- Mirrors sentinel_core::execution::transition for ExecutionCommand::Claim. The common cases were
-- answered by lua/fast/claim.lua before this; this part handles every case.
local now = clock(ARGV[1])
local owner, start, rid, fp = ARGV[3], ARGV[6] == '1', ARGV[7], ARGV[8]
local f = load(KEYS[1])
local r = execution(f)

local function grant()
  local ttl = arg_num(4, 'ttl')
  local hard_ttl = arg_num(5, 'hard ttl')
  local token = str(next_token(last_token(f), now))
  local state = 'claimed'
  if start then
    state = 'executing'
  end
  local t = str(now)
  local created = t
  if r then
    field(r, 'created')
    created = r.created
  end
  local lease = str(plus(now, ttl))
  local hard = str(plus(now, hard_ttl))
  local seq = append(f, now, 'claimed', token, owner, state, nil)
  redis.call('HSET', KEYS[1], 'state', state, 'owner', owner, 'token', token, 'rid', rid,
    'lease', lease, 'hard', hard, 'ttl', ARGV[4], 'hard_ttl', ARGV[5],
    'created', created, 'updated', t, 'last', token, 'seq', seq,
    'c', compact(state, fp, token, lease, seq, rid, nil, nil))
  if fp ~= '' then
    redis.call('HSET', KEYS[1], 'fp', fp)
    if f.result ~= nil then
      redis.call('HDEL', KEYS[1], 'result')
    end
  elseif f.result ~= nil or f.fp ~= nil then
    redis.call('HDEL', KEYS[1], 'result', 'fp')
  end
  changed(seq)
  return {'acquired', token, lease, hard}
end

if not r then
  return grant()
end
if (r.fp or '') ~= fp then
  return reject('fingerprint_mismatch', r.state, r.token, r.fp)
end
local state = r.state
if state == 'completed' then
  -- Without its result the reply is one field short, and the store reports the record corrupt.
  return {'completed', r.token, result_of(r)}
end
if state == 'reconciling' then
  return {'reconciling', r.owner, r.token}
end
-- claimed or executing
local live = alive(r, now)
local own = r.rid == rid
if own and live then
  -- A retry of the call that was granted this token: hand it back.
  field(r, 'hard')
  return {'acquired', r.token, r.lease, r.hard}
end
if state == 'executing' and own then
  -- A retry of our own expired claim: its reply never arrived, so nothing ran under that token.
  return grant()
end
if state == 'claimed' and not live then
  return grant()
end
if live then
  return {'busy', state, r.owner, r.token, r.lease, f.seq or ''}
end
return {'uncertain', r.owner, r.token, r.lease}
