-- wrk script: POST /api/reservations for one seat of the event in $EVENT_ID, as the buyers whose
-- bearer tokens are the lines of $TOKENS_FILE (taken in turn), each request with a fresh
-- Idempotency-Key, so every request is a new reservation (what a buyer's first attempt is).
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
    tokens[#tokens + 1] = line
end
local body = string.format('{"event_id":"%s","section":"Floor","quantity":1}', os.getenv("EVENT_ID"))
local sent = 0
local prefix = tostring(math.random(1, 2 ^ 30)) .. "-" .. tostring(os.time())

function setup(thread)
    thread:set("thread_id", tostring(math.random(1, 2 ^ 30)))
end

request = function()
    sent = sent + 1
    local token = tokens[(sent % #tokens) + 1]
    return wrk.format("POST", "/api/reservations", {
        ["Authorization"] = "Bearer " .. token,
        ["Content-Type"] = "application/json",
        ["Idempotency-Key"] = string.format("lean-%s-%s-%d", prefix, thread_id or "t", sent),
    }, body)
end
