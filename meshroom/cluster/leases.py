"""Room leases and node registrations in Redis, as Lua scripts run atomically there.

Keys (``P`` is the configured prefix):

- ``P:node:<id>`` — a node's registration, renewed every ``node_ttl / 4`` and gone
  ``node_ttl`` after the node last renewed it (crash, pause, lost Redis).
- ``P:room:<meeting>`` — ``<node>|<epoch>``: the node that runs the room. A claim
  takes it over only if it is missing or its node's registration is gone.
- ``P:epoch:<meeting>`` — the room's last epoch; every takeover gets a larger one.
- ``P:boot`` — when this Redis (its data set) was first used by meshroom; a Redis
  that lost its data (restart without persistence) gets a new one, and for
  ``node_ttl`` after that no room without a record may be claimed: the nodes that
  ran rooms before the restart re-assert their leases first (or fence themselves).

Each script reads Redis's own clock (``TIME``), never a node's, for what it
compares; epochs are floored at the server's clock in milliseconds so that they
keep increasing across a Redis that lost its data.
"""

from __future__ import annotations

# Redis's clock, in milliseconds: what every comparison of times in a script uses.
_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: room, epoch, boot. ARGV: node id, room ttl ms, node key prefix, node ttl ms.
# Returns the room's value after the call ("<node>|<epoch>"), or "" while a fresh
# Redis waits for the previous owners to re-assert.
CLAIM = (
    _NOW_MS
    + """
local now = now_ms()
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner = string.match(cur, '^(.*)|%d+$')
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return cur
  end
  if owner and redis.call('EXISTS', ARGV[3] .. owner) == 1 then
    return cur
  end
else
  local boot = redis.call('GET', KEYS[3])
  if not boot then
    redis.call('SET', KEYS[3], now)
    boot = now
  end
  if now - tonumber(boot) < tonumber(ARGV[4]) then
    return ''
  end
end
local epoch = redis.call('INCR', KEYS[2])
if epoch < now then
  epoch = now
  redis.call('SET', KEYS[2], epoch)
end
local value = ARGV[1] .. '|' .. epoch
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""
)

# KEYS: node, boot, then for each held room: its room key and its epoch key.
# ARGV: registration JSON, node ttl ms, room ttl ms, then each room's held value.
# Renews the registration and every lease still held; re-asserts a lease whose
# record a fresh Redis lost (while ``boot`` is younger than node_ttl). Returns
# {recovering, lost...}: 1 while no room without a record may be claimed yet, then the
# 1-based positions (among the held rooms) of leases that are lost.
RENEW = (
    _NOW_MS
    + """
local now = now_ms()
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local boot = redis.call('GET', KEYS[2])
if not boot then
  redis.call('SET', KEYS[2], now)
  boot = now
end
local young = now - tonumber(boot) < tonumber(ARGV[2])
local lost = {young and 1 or 0}
local rooms = (#KEYS - 2) / 2
for i = 1, rooms do
  local room_key, epoch_key, held = KEYS[1 + 2 * i], KEYS[2 + 2 * i], ARGV[3 + i]
  local cur = redis.call('GET', room_key)
  if cur == held then
    redis.call('PEXPIRE', room_key, ARGV[3])
  elseif (not cur) and young then
    redis.call('SET', room_key, held, 'PX', ARGV[3])
    local epoch = tonumber(string.match(held, '|(%d+)$'))
    local last = tonumber(redis.call('GET', epoch_key) or '0')
    if last < epoch then
      redis.call('SET', epoch_key, epoch)
    end
  else
    table.insert(lost, i)
  end
end
return lost
"""
)

# KEYS: room. ARGV: held value. Deletes the lease only if it is still this one.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def split_lease(value: str) -> tuple[str, int]:
    """``"<node>|<epoch>"`` → (node, epoch)."""
    node, _, epoch = value.rpartition("|")
    return node, int(epoch)
