-- wrk script: every request is a PUT (one hit, +1) on a counter nobody has hit yet:
-- /<prefix>-<thread>-<n>/counter. P11 (docs/benchmarks.md): with the merger stopped, such a
-- hit has nothing cached, the case that used to wait for the merger. Pass the prefix after
-- `--`; the write key goes in a header (-H), because new ids from one public client are
-- limited by the new-id budget.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function init(args)
  prefix = args[1] or "fresh"
  n = 0
end

function request()
  n = n + 1
  return wrk.format("PUT", "/" .. prefix .. "-" .. id .. "-" .. n .. "/counter")
end
